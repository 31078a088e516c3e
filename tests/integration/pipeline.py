#!/usr/bin/env python3
"""pipeline.py PORT CA CERT KEY N TOKEN_FILE: one mTLS connection, N pipelined requests
(alternately GET /v1/metrics, ~13 KB each, and an audited POST /v1/resolve), written at
once and not read for a while, so nhid's socket fills and its writes must wait for
EPOLLOUT; then every response is read and checked. Prints 'responses=R ok=K' and exits
0 only if all N came back 200 in order with complete bodies. Bounded: 60 s."""
import socket, ssl, sys, time

port, ca, cert, key, n, token_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
token = open(token_file).read().strip()
body = ('{"token":"%s"}' % token).encode()
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.check_hostname = False
raw = socket.create_connection(("127.0.0.1", int(port)), timeout=60)
s = ctx.wrap_socket(raw)
reqs, kinds = [], []
for i in range(n):
    if i % 2 == 0:
        reqs.append(b"GET /v1/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        kinds.append("metrics")
    else:
        reqs.append(b"POST /v1/resolve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body))
        kinds.append("resolve")
s.sendall(b"".join(reqs))
time.sleep(1.5)  # let nhid fill its send buffer
deadline = time.time() + 55
buf, got, ok = b"", 0, 0
while got < n and time.time() < deadline:
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    if b"\r\n\r\n" not in buf:
        break
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = 0
    for l in lines[1:]:
        k, _, v = l.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(buf) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    payload, buf = buf[:length], buf[length:]
    want = b"nhid_requests_total" if kinds[got] == "metrics" else b'"claims"'
    if lines[0].startswith(b"HTTP/1.1 200") and len(payload) == length and want in payload:
        ok += 1
    got += 1
print("responses=%d ok=%d" % (got, ok))
sys.exit(0 if got == n and ok == n else 1)
