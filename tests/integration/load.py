#!/usr/bin/env python3
"""Bounded keep-alive load against nhid for integration tests (loopback only).

Each client keeps one TLS connection (client certificate) and posts /v1/tokens in a
loop for --seconds. Prints "failed=N ok=N" and, with --acked FILE, appends the jti of
every token whose response arrived (acknowledged) so a test can look for it in the
audit log after a crash.
"""
import argparse, base64, http.client, json, ssl, sys, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--dir", required=True)
ap.add_argument("--agent", default="demo-agent")
ap.add_argument("--seconds", type=float, default=5)
ap.add_argument("--clients", type=int, default=4)
ap.add_argument("--acked")
ap.add_argument("--max-requests", type=int, default=200000)
a = ap.parse_args()

ctx = ssl.create_default_context(cafile=f"{a.dir}/ca.crt")
ctx.load_cert_chain(f"{a.dir}/agents/{a.agent}.crt", f"{a.dir}/agents/{a.agent}.key")
lock = threading.Lock()
stats = {"ok": 0, "failed": 0, "errors": []}
acked = open(a.acked, "a", buffering=1) if a.acked else None
deadline = time.monotonic() + a.seconds
body = json.dumps({"aud": "inference"})

def jti_of(tok):
    p = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["jti"]

def client():
    conn = None
    n = 0
    while time.monotonic() < deadline and n < a.max_requests // a.clients:
        n += 1
        try:
            if conn is None:
                conn = http.client.HTTPSConnection("127.0.0.1", a.port, context=ctx, timeout=10)
            conn.request("POST", "/v1/tokens", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"status {r.status}: {data[:200]!r}")
            tok = json.loads(data)["token"]
            with lock:
                stats["ok"] += 1
                if acked:
                    acked.write(jti_of(tok) + "\n")
            if r.getheader("Connection", "").lower() == "close":
                conn.close(); conn = None
        except Exception as e:  # a failure is counted, then a fresh connection
            with lock:
                stats["failed"] += 1
                if len(stats["errors"]) < 5:
                    stats["errors"].append(repr(e))
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)

threads = [threading.Thread(target=client) for _ in range(a.clients)]
for t in threads: t.start()
for t in threads: t.join()
print(f"failed={stats['failed']} ok={stats['ok']}")
for e in stats["errors"]:
    print("error:", e)
