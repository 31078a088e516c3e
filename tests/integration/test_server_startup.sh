#!/usr/bin/env bash
# nhid refuses to start when the deployment contract is broken, naming cause and fix,
# and leaves nothing behind (no listener, no audit records beyond its refusal).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
cd "$T"
setup_deployment "$T/dev"
D=$T/dev
run_nhid() { timeout 60 "$NHID" "$@"; }

check_fails "--workers (multi-process mode) is refused" "threads = N" run_nhid --config "$D/nhid.conf" --workers 4
check_fails "a config without --config is a usage error" "usage" run_nhid
check_fails "--config without a file says so (not 'unknown argument')" "--config needs a FILE" run_nhid --config
check_fails "--config given twice is refused, not the last one taken" "--config is given twice" \
	run_nhid --config "$D/nhid.conf" --config "$D/nhid.conf" --check
# --hash-admin-token: a secret longer than the buffer is refused, not hashed in part
check_fails "--hash-admin-token refuses a 512-byte token (its first 511 bytes would never match)" \
	"the admin token is longer than 511 bytes" bash -c "head -c 512 /dev/zero | tr '\\0' a | '$NHID' --hash-admin-token"
check "--hash-admin-token takes a 511-byte token with its newline" \
	bash -c "{ head -c 511 /dev/zero | tr '\\0' a; echo; } | '$NHID' --hash-admin-token | grep -q '^scrypt:16384:8:1:'"
check_fails "--hash-admin-token refuses a token ending in a space (evhttp trims it off every request)" \
	"no Authorization header can carry" bash -c "printf 'aaaaaaaaaaaaaaaaaaaa \\n' | '$NHID' --hash-admin-token"
cat >bad-hash.conf <<EOF2
$(grep -v '^admin_token_hash' "$D/nhid.conf")
admin_token_hash = scrypt:garbage
EOF2
chmod 600 bad-hash.conf
check_fails "a malformed admin_token_hash is refused at startup, naming the key" "config key 'admin_token_hash'" \
	run_nhid --config bad-hash.conf --check
chmod 644 "$D/nhid.conf"
check_fails "a config readable by others is refused" "chmod 600 $D/nhid.conf" run_nhid --config "$D/nhid.conf"
chmod 600 "$D/nhid.conf"
chmod 640 "$D/user.pin"
check_fails "a PIN file readable by the group is refused" "chmod 600 $D/user.pin" run_nhid --config "$D/nhid.conf"
chmod 600 "$D/user.pin"
# the PIN and config files are checked as they are read: an empty PIN (once a crash at
# start), a symlink (O_NOFOLLOW at start, so --check must refuse it too)
(umask 077; : >empty.pin)
sed "s|^hsm_pin_file .*|hsm_pin_file = $T/empty.pin|" "$D/nhid.conf" >bad.conf; chmod 600 bad.conf
check_fails "--check refuses an empty PIN file" "secret file $T/empty.pin is empty" run_nhid --config bad.conf --check
check_fails "an empty PIN file is refused at start, not a crash" "secret file $T/empty.pin is empty" \
	run_nhid --config bad.conf
ln -s "$D/user.pin" pin.link
sed "s|^hsm_pin_file .*|hsm_pin_file = $T/pin.link|" "$D/nhid.conf" >bad.conf
check_fails "--check refuses a symlinked PIN file, as the start does" "a symlink" run_nhid --config bad.conf --check
check_fails "nhictl refuses an empty PIN file" "is empty" timeout 60 "$NHICTL" key pubkey --pin-file empty.pin \
	--token nhid-dev --key nhid-tls
cp "$D/nhid.conf" good.conf; ln -s good.conf conf.link
check_fails "a symlinked config is refused before it is read" "a symlink" run_nhid --config conf.link --check
sed 's/^threads .*/threads = 0/' "$D/nhid.conf" >bad.conf; chmod 600 bad.conf
check_fails "an out-of-range limit names its key" "'threads'" run_nhid --config bad.conf
sed 's/^listen .*/listen = localhost:8443/' "$D/nhid.conf" >bad.conf
check_fails "a host name in listen is refused (no name resolution)" "names are not resolved" run_nhid --config bad.conf
sed "s|^backup .*|backup = $T/missing.nhib|" "$D/nhid.conf" >bad.conf
check_fails "a missing identity backup is refused" "missing.nhib" run_nhid --config bad.conf
head -c 1000 "$D/identities.nhib" >trunc.nhib
sed "s|^backup .*|backup = $T/trunc.nhib|" "$D/nhid.conf" >bad.conf
check_fails "a truncated identity backup is refused" "identity backup" run_nhid --config bad.conf
sed "s|^state_dir .*|state_dir = $T/nowhere|" "$D/nhid.conf" >bad.conf
check_fails "a missing state directory is refused" "state_dir $T/nowhere" run_nhid --config bad.conf
sed 's/^hsm_token .*/hsm_token = no-such-token/' "$D/nhid.conf" >bad.conf
check_fails "an unknown token is refused, listing the tokens present" "nhid-dev" run_nhid --config bad.conf
sed 's/^tls_key .*/tls_key = nhid-root/' "$D/nhid.conf" >bad.conf
check_fails "a certificate that does not match the TLS key is refused" "does not match key 'nhid-root'" run_nhid --config bad.conf
printf 'colour = blue\n' >>bad.conf
check_fails "an unknown config key is refused" "unknown config key 'colour'" run_nhid --config bad.conf
# what the config parser would take from outside the reviewed file (common/conf.c scan_text)
(umask 000; printf '[nhid]\nlisten = 0.0.0.0:18446\n' >inc.conf); chmod 666 inc.conf
{ cat "$D/nhid.conf"; printf '\r.include %s\n' "$T/inc.conf"; } >bad.conf
check_fails "a .include behind a carriage return is refused" "carriage return not followed by a newline" \
	run_nhid --config bad.conf --check
{ cat "$D/nhid.conf"; printf 'threads = 64\nthreads = 3\n'; } | grep -v '^threads .*= 2' >bad.conf
check_fails "a key given twice is refused, naming both lines" "config key 'threads' is given twice (lines" \
	run_nhid --config bad.conf --check
sed 's|^issuer .*|issuer = $ENV::HOME|' "$D/nhid.conf" >bad.conf
check_fails "\$ENV:: in a value is refused, not expanded" "'\$' is not allowed in a config" run_nhid --config bad.conf --check
# the port held by another listener, one that allows sharing as nhid itself once did
# (SO_REUSEPORT): nhid refuses instead of taking a share of that listener's connections
python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("bound", flush=True); time.sleep(60)' "$PORT" >holder.out 2>&1 &
HOLDER=$!; _pids+=("$HOLDER")
wait_for 10 grep -q bound holder.out
check_fails "a port another listener holds is refused, even one that allows SO_REUSEPORT" \
	"cannot listen on 127.0.0.1:$PORT" run_nhid --config "$D/nhid.conf"
kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
check "--check accepts the good config" run_nhid --config "$D/nhid.conf" --check
# the state directory on a network filesystem is refused: a FUSE/NFS mount is not
# available to an unprivileged test, so the statfs magic table is unit-tested in
# tests/unit/test_server.c; here the refusal message for a local dir is absent
check "a local state directory passes the network-filesystem check" bash -c "! run_nhid --config '$D/nhid.conf' --check 2>&1 | grep -q 'network filesystem'"
# a worker thread that cannot start (test builds: NHI_TEST_FAIL_WORKER_START) stops the
# one that did and exits naming the cause; the signal thread, waiting for a signal, once
# kept nhid hanging there with the cause never printed
check_fails "a worker thread that cannot start makes nhid exit, naming it (not hang)" \
	"cannot start worker thread 1" env NHI_TEST_FAIL_WORKER_START=1 timeout -s KILL 20 "$NHID" --config "$D/nhid.conf"
# a worker loop whose listener fails to switch back on tries again (server.c
# apply_accept): the first switch-on fails (test builds), when the probe's connection
# closes; without the retry the other loop stops accepting at its next connection and
# no loop accepts at all
NHI_TEST_FAIL_ACCEPT_ENABLE=1 start_bg "$NHID" --config "$D/nhid.conf" 2>retry.log
NHID_PID=$BG_PID
wait_for 60 curl -s --max-time 2 --cacert "$D/ca.crt" --cert "$D/agents/demo-agent.crt" \
	--key "$D/agents/demo-agent.key" "https://127.0.0.1:$PORT/v1/health"
check "a listener that failed to switch on is tried again: 6 connections opened one after another are all answered" \
	timeout 60 python3 -c 'import http.client, ssl, sys
port, d = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=d + "/ca.crt"); ctx.check_hostname = False
ctx.load_cert_chain(d + "/agents/demo-agent.crt", d + "/agents/demo-agent.key")
held = []
for i in range(6):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    c.request("GET", "/v1/health"); r = c.getresponse()
    assert r.status == 200 and b"ok" in r.read(), i
    held.append(c)' "$PORT" "$D"
check "the failed switch is logged once, and its recovery" \
	bash -c 'test "$(grep -c "cannot switch its listener on; trying again" retry.log)" = 1 && grep -q "listener switched on after failing" retry.log'
# an idle keep-alive connection holds the drain open until the grace ends it (server.c
# grace_cb: the timer made with the loop, not at stop)
python3 -c 'import http.client, ssl, sys, time
port, d = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=d + "/ca.crt"); ctx.check_hostname = False
ctx.load_cert_chain(d + "/agents/demo-agent.crt", d + "/agents/demo-agent.key")
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
c.request("GET", "/v1/health"); c.getresponse().read()
print("held", flush=True); time.sleep(30)' "$PORT" "$D" >idle.out 2>&1 &
IDLE=$!; _pids+=("$IDLE")
if ! wait_for 10 grep -q held idle.out; then
	not_ok "the idle client did not connect: $(head -c 300 idle.out)"
fi
stop_nhid
kill "$IDLE" 2>/dev/null; wait "$IDLE" 2>/dev/null
check "nhid stops cleanly after the retry (status $NHID_RC)" test "$NHID_RC" = 0
check "an idle keep-alive connection is given the 2 s drain grace, then SIGTERM exits (took ${NHID_STOP_MS} ms)" \
	test "$NHID_STOP_MS" -ge 1800 -a "$NHID_STOP_MS" -lt 6000
export -f run_nhid; export NHID
finish
