#!/usr/bin/env python3
"""trickle.py PORT CA CERT KEY N TOKEN_FILE: one mTLS connection, N pipelined POST
/v1/resolve (audited: each reply waits for its record to be durable) written in small
bursts a fraction of a millisecond apart, replies read in between (one thread). New
bytes keep arriving while replies are pending and while finished ones hand over to the
next buffered request: the interleavings where evhttp's state and the bufferevent's
queued read callback disagree (docs/architecture.md, "Replies that wait for the audit
log"). Prints 'responses=R ok=K' and exits 0 only if all N came back 200, in order, on
the one connection. Bounded: 60 s."""
import select, socket, ssl, sys, time

port, ca, cert, key, n, token_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
token = open(token_file).read().strip()
body = ('{"token":"%s"}' % token).encode()
req = (b"POST /v1/resolve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
       % (len(body), body))
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.check_hostname = False
raw = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
s = ctx.wrap_socket(raw)  # handshake blocking, then one thread, non-blocking: an SSL object is not thread-safe
s.setblocking(False)
deadline = time.time() + 55
out, buf = b"", b""
sent = got = ok = 0
burst, closed = 1, False


def parse():
    global buf, got, ok
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = buf[:head_end].decode(errors="replace")
        length = 0
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        if len(buf) < head_end + 4 + length:
            return
        ok += head.startswith("HTTP/1.1 200")
        got += 1
        buf = buf[head_end + 4 + length:]


while got < n and time.time() < deadline and not closed:
    if not out and sent < n:
        k = min(burst, n - sent)
        out = req * k
        sent += k
        burst = burst % 7 + 1
    if out:
        # an odd burst goes out in two writes: a request's rest arrives in a later read
        piece = out[:40] if burst % 2 == 1 and len(out) > 40 else out
        try:
            w = s.send(piece)
            out = out[w:]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
    r, _, _ = select.select([s], [], [], 0.0003)
    while True:
        try:
            chunk = s.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            break
        except (ssl.SSLError, OSError):
            chunk = b""
        if not chunk:
            closed = True
            break
        buf += chunk
        parse()
print("responses=%d ok=%d%s" % (got, ok, " (nhid closed the connection)" if closed else ""))
sys.exit(0 if got == n and ok == n else 1)
