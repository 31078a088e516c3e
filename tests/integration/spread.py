#!/usr/bin/env python3
"""spread.py PORT CA CERT KEY N: N mTLS connections to nhid opened at once, as a load
generator does (every TCP connect first, so all wait in the listen backlog together),
each then handshaken and kept open with one request answered on it. Then one more
connection reads /v1/metrics: nhid_worker_connections must show the N+1 spread over
the worker loops with at most one connection between the busiest and the idlest.
Bounded: 10 s per socket operation, 5 s for the counts to settle."""
import http.client, socket, ssl, sys, time

port, ca, cert, key, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.check_hostname = False


def https(raw):
    """an HTTP/1.1 connection over the TLS socket made from `raw`, connected already"""
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    c.sock = ctx.wrap_socket(raw)
    return c


def ask(c, path):
    c.request("GET", path)
    r = c.getresponse()
    body = r.read().decode()
    if r.status != 200:
        raise SystemExit("%s: %d %s" % (path, r.status, body[:160]))
    return body


raw = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
conns = [https(s) for s in raw]
for c in conns:
    ask(c, "/v1/health")
probe = https(socket.create_connection(("127.0.0.1", port), timeout=10))
deadline = time.time() + 5
while True:
    counts = [int(l.split()[-1]) for l in ask(probe, "/v1/metrics").splitlines()
              if l.startswith("nhid_worker_connections{")]
    if sum(counts) == n + 1 or time.time() > deadline:
        break
    time.sleep(0.1)
print("connections per worker loop:", counts)
if len(counts) < 2:
    raise SystemExit("need at least two worker loops, got %d" % len(counts))
if sum(counts) != n + 1:
    raise SystemExit("the loops count %d connections, %d are open" % (sum(counts), n + 1))
if max(counts) - min(counts) > 1:
    raise SystemExit("uneven: %d on the busiest loop, %d on the idlest" % (max(counts), min(counts)))
