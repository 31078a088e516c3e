#!/usr/bin/env bash
# No egress, enforced: the ASan nhid installs its seccomp filter after startup; its
# test-build-only probe (NHI_TESTING_EGRESS_PROBE) then tries an outbound TCP connect
# to a listener we run on loopback. The kernel must refuse the socket (EPERM), the
# listener must see no connection, the attempt must be audited, and nhid must go on
# serving (HSM signing, TLS, audit durability, reload) under the filter.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
cd "$T"

setup_deployment "$T/dev"
D=$T/dev

# a loopback listener that counts the connections it accepts (bounded: 120 s)
cat >listener.py <<'PY'
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16); s.settimeout(0.2)
open(sys.argv[1] + ".port", "w").write(str(s.getsockname()[1]))
n, end = 0, time.time() + 120
open(sys.argv[1], "w").write("0")
while time.time() < end:
    try:
        c, _ = s.accept(); c.close(); n += 1
        open(sys.argv[1], "w").write(str(n))
    except socket.timeout:
        pass
PY
start_bg python3 listener.py "$T/conns"
LISTENER_PID=$BG_PID
wait_for 10 test -s "$T/conns.port" || { not_ok "the counting listener did not start"; finish; }
LPORT=$(cat "$T/conns.port")
# the listener is reachable without the filter: the probe would get through if not refused
python3 -c "import socket; socket.create_connection(('127.0.0.1', $LPORT), 2).close()"
check "control: an unfiltered process reaches the listener (1 connection counted)" \
	wait_for 5 grep -qx 1 "$T/conns"

export NHI_TESTING_EGRESS_PROBE=127.0.0.1:$LPORT
start_nhid "$D/nhid.conf" 2>"$T/nhid.err"
unset NHI_TESTING_EGRESS_PROBE
check "nhid came up with the probe set (the probe was refused, so startup went on)" kill -0 "$NHID_PID"
check "nhid says the kernel refused the probe" grep -q "test egress probe to 127.0.0.1:$LPORT refused by the kernel: Operation not permitted" "$T/nhid.err"
sleep 0.5
check "the listener counted no connection from nhid" grep -qx 1 "$T/conns"
check "the audit log records the blocked attempt (socket, EPERM)" \
	bash -c "grep '\"event\":\"egress_attempt_blocked\"' '$D/state/audit.jsonl' | grep '\"syscall\":\"socket\"' | grep -q '\"errno\":\"EPERM\"'"
check "the audit log records the installed sandbox policy, connect() refused in it" grep -q '"event":"sandbox_installed".*connect(): EPERM' "$D/state/audit.jsonl"
check "the audit log has no egress_attempt_not_blocked" bash -c "! grep -q egress_attempt_not_blocked '$D/state/audit.jsonl'"

# the filter is on every thread of the running process
check "/proc: nhid runs with seccomp mode 2 (filter) on every thread" \
	bash -c "for f in /proc/$NHID_PID/task/*/status; do grep -q '^Seccomp:[[:space:]]*2' \$f || exit 1; done"
check "/proc: no_new_privs is set" grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$NHID_PID/status"

# --- still serving under the filter: token (HSM signature), resolve, TLS, audit ---
curl_as demo-agent /v1/tokens -d '{"aud":"inference"}' >tok.json
check "demo-agent gets a token under the filter (signed in the HSM)" grep -q '"token":"ey' tok.json
TOKEN=$(python3 -c 'import json; print(json.load(open("tok.json"))["token"])' 2>/dev/null)
check "inference-gw resolves it under the filter" \
	bash -c "curl_as inference-gw /v1/resolve -d '{\"token\":\"$TOKEN\"}' | grep -q '\"sub\":\"demo-agent\"'"
check "nhi-agent (mbedTLS) fetches a token under the filter" bash -c "agent_as demo-agent token --aud inference | grep -q '^ey'"
kill -HUP "$NHID_PID"
check "SIGHUP reload works under the filter (backup re-imported, certificates reloaded)" \
	wait_for 10 grep -q '"event":"reload"' "$D/state/audit.jsonl"
check "tokens still issued after the reload" bash -c "curl_as demo-agent /v1/tokens -d '{\"aud\":\"inference\"}' | grep -q '\"token\":\"ey'"
check "still no connection reached the listener" grep -qx 1 "$T/conns"

stop_nhid
check "SIGTERM: clean exit 0 under the filter (LeakSanitizer's exit check ran too)" test "$NHID_RC" = 0
check "no sanitizer report from nhid" bash -c "! grep -q 'Sanitizer' '$T/nhid.err'"
check "the audit log verifies (chain and signed checkpoints)" "$BIN/nhictl" audit verify "$D/state/audit.jsonl" --pubkey "$D/audit.pub.pem"
kill "$LISTENER_PID" 2>/dev/null
finish
