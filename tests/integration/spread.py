#!/usr/bin/env python3
"""spread.py PORT CA CERT KEY N: N mTLS connections to nhid opened at once, as a load
generator does (every TCP connect first, so all wait in the listen backlog together),
each then handshaken and kept open with one request answered on it. Then one more
connection reads /v1/metrics: nhid_worker_connections must show the N+1 spread over
the worker loops with at most one connection between the busiest and the idlest.
Bounded: 10 s per socket operation, 5 s for the counts to settle."""
import socket, ssl, sys, time

port, ca, cert, key, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.check_hostname = False


def ask(s, path):
    s.sendall(("GET %s HTTP/1.1\r\nHost: nhid\r\n\r\n" % path).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("nhid closed a connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit("%s: %s" % (path, head.split(b"\r\n")[0].decode()))
    return body.decode()


raw = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
conns = [ctx.wrap_socket(s) for s in raw]
for c in conns:
    ask(c, "/v1/health")
probe = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
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
