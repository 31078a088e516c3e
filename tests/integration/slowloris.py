#!/usr/bin/env python3
"""slowloris.py PORT CA CERT KEY MODE N BOUND: N connections that each send a byte
every 0.5 s and never finish, then a client that wants to be served.
  MODE handshake: the bytes are a ClientHello's (no certificate is ever presented)
  MODE request:   a full mTLS handshake, then the bytes of a request head
With N = max_connections, the client is refused at first (every slot is held: checked,
so the test sees the attack work); nhid must then close every trickling connection
within BOUND seconds of its opening (server.c deadline_cb), after which the client is
served. Without a deadline, evhttp's read timeout restarts with every byte and the
slots stay held. Prints when each connection was closed."""
import socket, ssl, sys, time

port, ca, cert, key, mode, n, bound = sys.argv[1:8]
port, n, bound = int(port), int(n), float(bound)
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.check_hostname = False


def served():
    """a fresh client's GET /v1/health: its status line, or why it failed"""
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="x")
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line = s.recv(4096).split(b"\r\n")[0].decode()
        s.close()
        return line
    except (OSError, ssl.SSLError) as e:
        return "failed: %r" % e


# a TLS record header announcing 16 KiB of handshake: nhid waits for all of it
hello = bytes.fromhex("160301") + b"\x40\x00" + bytes.fromhex("010003fc0303") + b"\x00" * 20000
head = b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nX-Trickle: " + b"a" * 20000
t0 = time.time()
socks = []
for _ in range(n):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    socks.append(raw if mode == "handshake" else ctx.wrap_socket(raw, server_hostname="x"))
time.sleep(0.5)
first = served()
print("with %d trickling connections (%s) open, a client: %s" % (n, mode, first))
if first.startswith("HTTP/1.1 200"):
    sys.exit("the trickling connections did not hold every slot: set max_connections to %d" % n)
closed = [None] * n
i = 0
while None in closed and time.time() - t0 < bound + 5:
    for k, s in enumerate(socks):
        if closed[k] is not None:
            continue
        try:
            s.send((hello if mode == "handshake" else head)[i:i + 1])
            s.settimeout(0.01)
            if s.recv(4096) == b"":
                closed[k] = time.time() - t0
        except socket.timeout:
            pass
        except (OSError, ssl.SSLError):
            closed[k] = time.time() - t0
    i += 1
    time.sleep(0.5)
print("closed by nhid after (s):", ["%.1f" % c if c is not None else "open" for c in closed])
if None in closed or max(closed) > bound:
    sys.exit("a trickling connection was held past %.0f s" % bound)
last = served()
print("then a client:", last)
sys.exit(0 if last.startswith("HTTP/1.1 200") else 1)
