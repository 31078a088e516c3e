#!/usr/bin/env python3
"""keepalive.py PORT CA CERT KEY STEP...: one mTLS keep-alive connection to nhid, and
steps run in order on it. A step is one of
  req:METHOD:PATH:STATUS[:BODY]  a request on the connection; the reply must have STATUS
                                 (a body's error code is printed, for the log)
  sh:COMMAND                     a shell command (another client, a reload, a file);
                                 it must exit 0
  sleep:SECONDS
Fails if nhid ever closes the connection or a second one is opened: every request
must travel on the first. Prints one line per step. Bounded: 10 s per request."""
import http.client, ssl, subprocess, sys, time

port, ca, cert, key, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.check_hostname = False
conn = http.client.HTTPSConnection("127.0.0.1", int(port), context=ctx, timeout=10)
conn.connect()
first = conn.sock
for step in steps:
    kind, _, rest = step.partition(":")
    if kind == "sh":
        rc = subprocess.run(["bash", "-c", rest], timeout=60).returncode
        print("sh rc=%d: %s" % (rc, rest[:80]))
        if rc != 0:
            sys.exit(1)
    elif kind == "sleep":
        time.sleep(float(rest))
    elif kind == "req":
        method, path, status, *body = rest.split(":", 3)
        data = body[0].encode() if body else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        print("%s %s -> %d %s" % (method, path, r.status, text[:160].strip()))
        if conn.sock is not first or r.getheader("Connection", "").lower() == "close":
            print("the connection was not kept: every step must use the first one")
            sys.exit(1)
        if r.status != int(status):
            print("expected %s" % status)
            sys.exit(1)
    else:
        print("unknown step %r" % step)
        sys.exit(2)
print("ok: %d steps on one connection" % len(steps))
