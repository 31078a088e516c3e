#!/usr/bin/env bash
# nhi-agent (the mbedTLS client CLI) against real TLS peers on 127.0.0.1:
#   - `openssl s_server -WWW` (client certificate required) for health/jwks and for
#     every handshake refusal: untrusted server, wrong name, untrusted client cert;
#   - a small Python HTTPS server (OpenSSL underneath, HTTP/1.1 keep-alive, client cert
#     required) standing in for nhid's JSON API: token, resolve, 403/401 refusals.
# Certificates are made here with the openssl CLI. The lead's end-to-end tests run the
# same CLI against the real nhid.
. "$(dirname "$0")/lib.sh"
AGENT=$BIN/nhi-agent
cd "$T"

# --- a test PKI ---
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null && chmod 600 "$1"; }
mkca() { ec "$1.key" && openssl req -x509 -new -key "$1.key" -subj "/CN=$1" -days 3 -out "$1.crt" \
	-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null; }
leaf() { # leaf NAME CA EXTENSIONS
	ec "$1.key" && openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr" 2>/dev/null &&
	printf '%b' "$3" >"$1.ext" &&
	openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days 2 \
		-extfile "$1.ext" -out "$1.crt" 2>/dev/null
}
SRV='extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n'
CLI='extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n'
pki() {
	mkca ca && mkca other &&
	leaf srv ca "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n$SRV" &&
	leaf wrongname ca "subjectAltName=DNS:wrong.example,IP:10.9.9.9\n$SRV" &&
	leaf demo ca "subjectAltName=URI:spiffe://nhid.test/agent/demo\n$CLI" &&
	leaf stranger other "subjectAltName=URI:spiffe://nhid.test/agent/stranger\n$CLI" &&
	mkdir -p www/v1 && printf '{"status":"ok"}' >www/v1/health &&
	printf '{"keys":[{"kty":"EC","crv":"P-256","kid":"k1"}]}' >www/v1/jwks
}
check "test PKI created with the openssl CLI" pki

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# s_server_up NAME CERT KEY : start `openssl s_server -WWW` on a free port; sets PORT_<NAME>
s_server_up() {
	local name=$1 cert=$2 key=$3 port i
	for i in 1 2 3 4 5; do
		port=$(free_port)
		: >"ss-$name.log"
		start_bg bash -c "cd '$T/www' && exec openssl s_server -accept 127.0.0.1:$port -cert '$T/$cert' \
			-key '$T/$key' -CAfile '$T/ca.crt' -Verify 1 -verify_return_error -WWW" \
			>"ss-$name.log" 2>&1 </dev/null
		if wait_for 10 grep -q ACCEPT "ss-$name.log"; then
			printf -v "PORT_$name" '%s' "$port"
			return 0
		fi
		kill "$BG_PID" 2>/dev/null
	done
	return 1
}

# the JSON API stand-in: logs each request body to api.log
cat >api.py <<'EOF'
import http.server, json, ssl, sys
TOKEN = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJkZW1vIiwiYXVkIjoiaW5mZXJlbmNlIn0.c2ln"
port, d = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/v1/health": self.send_json(200, {"status": "ok"})
        elif self.path == "/v1/jwks": self.send_json(200, {"keys": []})
        else: self.send_json(404, {"error": "not_found", "detail": "no route " + self.path})
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n))
        peer = dict(x[0] for x in self.connection.getpeercert()["subject"])["commonName"]
        with open(d + "/api.log", "a") as f:
            f.write(json.dumps({"path": self.path, "peer": peer, "body": req}) + "\n")
        if self.path == "/v1/tokens":
            if req.get("aud") != "inference":
                return self.send_json(403, {"error": "forbidden",
                    "detail": "audience '%s' is not allowed for agent %s" % (req.get("aud"), peer)})
            return self.send_json(200, {"token": TOKEN, "expires_at": 1900000000})
        if self.path == "/v1/resolve":
            if req.get("token") != TOKEN:
                return self.send_json(401, {"error": "invalid_token", "detail": "signature does not verify"})
            return self.send_json(200, {"agent": {"id": peer, "status": "active"},
                                        "claims": {"sub": peer, "aud": "inference"}})
        self.send_json(404, {"error": "not_found", "detail": "no route " + self.path})
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(d + "/srv.crt", d + "/srv.key")
ctx.load_verify_locations(d + "/ca.crt")
ctx.verify_mode = ssl.CERT_REQUIRED
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("LISTENING", flush=True)
srv.serve_forever()
EOF
TOKEN=eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJkZW1vIiwiYXVkIjoiaW5mZXJlbmNlIn0.c2ln
api_up() {
	local i port
	for i in 1 2 3 4 5; do
		port=$(free_port)
		start_bg python3 api.py "$port" "$T" >api.out 2>&1 </dev/null
		if wait_for 10 grep -q LISTENING api.out; then API_PORT=$port; return 0; fi
		kill "$BG_PID" 2>/dev/null
	done
	return 1
}

check "openssl s_server (good certificate) is up" s_server_up good srv.crt srv.key
check "openssl s_server (certificate for other names) is up" s_server_up wrong wrongname.crt wrongname.key
check "python HTTPS API stand-in is up" api_up

ID=(--ca ca.crt --cert demo.crt --key demo.key)
A_GOOD=(--server "https://127.0.0.1:${PORT_good:-1}" "${ID[@]}")
A_API=(--server "https://127.0.0.1:${API_PORT:-1}" "${ID[@]}")

# run CMD...: stdout to run.out, stderr to run.err, status in RC
run() { "$@" >run.out 2>run.err; RC=$?; }
# expect RC "description" "text on stderr or -" CMD...
expect() {
	local want=$1 d=$2 text=$3; shift 3
	run "$@"
	if [ "$RC" -ne "$want" ]; then
		not_ok "$d (exit $RC, want $want)"; sed 's/^/#   /' run.err | head -5
	elif [ "$text" != - ] && ! grep -qF -- "$text" run.err; then
		not_ok "$d (stderr does not mention '$text')"; sed 's/^/#   /' run.err | head -5
	else
		ok "$d"
	fi
}

# --- against openssl s_server ---
expect 0 "health through s_server (IP 127.0.0.1 matched against the IP SAN)" - "$AGENT" "${A_GOOD[@]}" health
check "health prints ok" grep -qx ok run.out
expect 0 "jwks through s_server" - "$AGENT" "${A_GOOD[@]}" jwks
check "jwks prints the key set" grep -qF '"kid":"k1"' run.out
expect 0 "--servername localhost verifies the DNS SAN" - "$AGENT" "${A_GOOD[@]}" --servername localhost health
expect 0 "--server https://localhost:PORT resolves and verifies" - \
	"$AGENT" --server "https://localhost:${PORT_good:-1}" "${ID[@]}" health
expect 1 "a server certificate not from --ca is refused, naming the mbedTLS reason" \
	"not correctly signed by the trusted CA" "$AGENT" "${A_GOOD[@]}" --ca other.crt health
expect 1 "a server certificate without our IP is refused" "does not carry an iPAddress SAN 127.0.0.1" \
	"$AGENT" --server "https://127.0.0.1:${PORT_wrong:-1}" "${ID[@]}" health
expect 1 "a server certificate without our DNS name is refused" "does not carry the DNS name localhost" \
	"$AGENT" --server "https://127.0.0.1:${PORT_wrong:-1}" "${ID[@]}" --servername localhost health
expect 1 "--servername another address is refused" "iPAddress SAN 10.1.2.3" \
	"$AGENT" "${A_GOOD[@]}" --servername 10.1.2.3 health
expect 1 "a client certificate the server does not trust fails the handshake" "refused" \
	"$AGENT" "${A_GOOD[@]}" --cert stranger.crt --key stranger.key health
check "nothing was printed on stdout by the refusals" test ! -s run.out

# --- against the JSON API stand-in ---
expect 0 "token --aud inference prints a token" - "$AGENT" "${A_API[@]}" token --aud inference
check "stdout is exactly the token" grep -qxF "$TOKEN" run.out
check "nothing on stderr" test ! -s run.err
expect 0 "token --ttl 60 is sent to the server" - "$AGENT" "${A_API[@]}" token --aud inference --ttl 60
check "the server saw aud, ttl and the client certificate" \
	grep -qF '{"path": "/v1/tokens", "peer": "demo", "body": {"aud": "inference", "ttl": 60}}' api.log
expect 1 "a refused audience prints the status, error and detail" \
	"HTTP 403 forbidden: audience 'billing' is not allowed for agent demo" \
	"$AGENT" "${A_API[@]}" token --aud billing
check "a refused token request prints nothing on stdout" test ! -s run.out
expect 0 "resolve TOKEN prints the agent and claims" - "$AGENT" "${A_API[@]}" resolve "$TOKEN"
check "resolve output is the JSON answer" grep -qF '"agent":{"id":"demo","status":"active"}' run.out
run "$AGENT" "${A_API[@]}" resolve - <<<"$TOKEN"
check "resolve - reads the token from stdin" grep -qF '"claims":{"sub":"demo"' run.out
# stdin that is not one token: refused by the agent, naming why, before any request
N_API=$(wc -l <api.log)
printf '%s\nsecond line\n' "$TOKEN" >two.in; printf ' \n\t\n' >blank.in
head -c 9000 /dev/zero | tr '\0' a >long.in
expect 1 "resolve - with a second line on stdin is refused" "stdin holds more than one token" \
	"$AGENT" "${A_API[@]}" resolve - <two.in
expect 1 "resolve - with only whitespace on stdin is refused" "no token on stdin" \
	"$AGENT" "${A_API[@]}" resolve - <blank.in
expect 1 "resolve - with 9000 bytes on stdin is refused" "longer than 8190 bytes" \
	"$AGENT" "${A_API[@]}" resolve - <long.in
check "... and none of the three sent a request" test "$(wc -l <api.log)" = "$N_API"
BAD=${TOKEN%.*}.AAAA
expect 1 "an invalid token is refused with the server's reason" "HTTP 401 invalid_token: signature does not verify" \
	"$AGENT" "${A_API[@]}" resolve "$BAD"
check "the token is never echoed on stderr" bash -c "! grep -qF '$BAD' run.err && ! grep -qF 'eyJ' run.err"
expect 1 "a malformed token is refused before any request" "not a compact JWS" \
	"$AGENT" "${A_API[@]}" resolve "not a token"

# --- files, usage, reachability ---
cp demo.key loose.key; chmod 644 loose.key
expect 1 "a key file readable by others is refused" "chmod 600" \
	"$AGENT" "${A_API[@]}" --key loose.key health
expect 1 "a key that does not match the certificate is refused" "does not match certificate" \
	"$AGENT" "${A_API[@]}" --key stranger.key health
expect 1 "a missing CA file is named" "missing.crt" "$AGENT" "${A_API[@]}" --ca missing.crt health
expect 2 "no command is a usage error" "no command" "$AGENT" "${ID[@]}"
expect 2 "an unknown command is a usage error" "unknown command" "$AGENT" "${ID[@]}" fly
expect 2 "token without --aud is a usage error" "--aud" "$AGENT" "${ID[@]}" token
expect 2 "a bad --ttl is a usage error" "--ttl" "$AGENT" "${ID[@]}" token --aud x --ttl 1x
expect 2 "--aud on another command is a usage error" "belong to the token command" "$AGENT" "${ID[@]}" health --aud x
expect 2 "an http:// URL is a usage error" "https://" "$AGENT" --server http://127.0.0.1:1 "${ID[@]}" health
expect 2 "a URL with a path is a usage error" "path" "$AGENT" --server https://127.0.0.1:1/v1 "${ID[@]}" health
expect 2 "missing --key is a usage error" "--key" "$AGENT" --ca ca.crt --cert demo.crt health
expect 0 "--help prints usage" - "$AGENT" --help
NOPORT=$(free_port)
expect 1 "a closed port is reported with a hint" "is nhid running" \
	"$AGENT" --server "https://127.0.0.1:$NOPORT" "${ID[@]}" health

# a listener that accepts TCP but never speaks TLS: bounded by --timeout
SILENT_PORT=$(free_port)
start_bg python3 -c "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',$SILENT_PORT)); s.listen(8); print('LISTENING', flush=True); time.sleep(60)" >silent.out 2>&1
wait_for 10 grep -q LISTENING silent.out
start=$(date +%s)
expect 1 "a server that never answers times out (--timeout 1)" "timed out" \
	timeout 20 "$AGENT" --server "https://127.0.0.1:$SILENT_PORT" "${ID[@]}" --timeout 1 health
check "and within a few seconds" test $(( $(date +%s) - start )) -le 5

finish
