#!/usr/bin/env bash
# nhid crashing while its watcher applies a cert-rotation package (issue #6: "kill -9
# during apply at many points, then restart: state is old-or-new and the audit chain
# verifies"). Each round starts from the same pristine deployment (state_dir, audit log
# and the SoftHSM2 token directory restored), drops one signed rotation package into
# updates_dir and crashes nhid during its apply: an `_exit` injected at every step of
# the apply (NHI_TEST_UPDATE_CRASH_AT=1..7, test builds: the library's five steps, then
# after nhid's update_applied record and after its mark in update-state.json), then `kill -9` with keep-alive
# clients connected: at the moment the apply creates the new key's first and second
# object in the token, and at 4 random moments spread over the apply. After each crash:
# the audit chain verifies; nhid restarts; `openssl s_client` sees the old or the new
# certificate, as update-state.json says; the watcher finishes the package exactly once
# (committed v1, applied/, one key in the token, nothing rejected) and the audit log
# agrees (update_applied once before the rotation took effect, or once marked recovered at
# the restart when the crash came between the commit and that record; see audited);
# tokens still issue and resolve; nhid stops cleanly (no sanitizer report)
# and the audit chain verifies again. docs/updates.md "Apply: state_dir and crash safety".
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
deploy_in_t
STEPS=7      # the steps of an apply: nhi_update_apply_file (server/update.c crash points 1-5),
             # then nhid's record and mark (server/watcher.c applied_cb, 6 and 7)
KILLS=4      # kill -9 rounds at random moments of the apply (and two at token writes)

# --- two custodians (threshold 2), a pinned trust bundle, updates on (server_lib.sh) ---
make_custodians 2
make_bundle 2 2
updates_on
CONF=$D/nhid-up.conf

# --- helpers ---
NLOG=$T/nhid-setup.log # nhid's stderr, one file per round
# up [VAR=value...]: start nhid on $CONF (env as given), wait until it serves; 1 if it dies or stays silent
up() {
	local i
	start_bg env "$@" "$NHID" --config "$CONF" 2>>"$NLOG"
	NHID_PID=$BG_PID
	for i in $(seq 300); do
		kill -0 "$NHID_PID" 2>/dev/null || break
		curl_as demo-agent /v1/health >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	kill -9 "$NHID_PID" 2>/dev/null
	wait "$NHID_PID" 2>/dev/null
	reaped "$NHID_PID"
	return 1
}
# reaped PID: a child we waited for leaves lib.sh's cleanup list (its pid may be reused)
reaped() {
	local p keep=()
	for p in "${_pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	_pids=("${keep[@]}")
}
# wait_exit PID SECONDS: bounded wait for a child of ours; its exit status in $EXIT_RC
wait_exit() {
	local i
	for i in $(seq $(($2 * 10))); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$1" 2>/dev/null; then EXIT_RC=timeout; return 1; fi
	wait "$1" 2>/dev/null
	EXIT_RC=$?
	reaped "$1"
}
# down: SIGTERM, bounded; $NHID_RC is its exit status (kill -9 after 30 s: "timeout")
down() {
	kill -TERM "$NHID_PID" 2>/dev/null
	if wait_exit "$NHID_PID" 30; then
		NHID_RC=$EXIT_RC
	else
		kill -9 "$NHID_PID" 2>/dev/null
		wait "$NHID_PID" 2>/dev/null
		reaped "$NHID_PID"
		NHID_RC=timeout
	fi
}
fpname() { case $1 in "$OLDFP") echo old ;; "$NEWFP") echo new ;; *) echo "another (${1:-none})" ;; esac; }
served_fp() {
	timeout 10 openssl s_client -connect 127.0.0.1:$PORT -CAfile "$D/ca.crt" -cert "$D/agents/admin.crt" \
		-key "$D/agents/admin.key" </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256 | cut -d= -f2
}
# rot_state MEMBER: that member of update-state.json's cert-rotation entry (python-free:
# polled often), committed: its version (0: none)
rot_state() {
	tr -d ' \t\n' 2>/dev/null <"$D/state/update-state.json" | grep -o '"cert-rotation":{[^}]*}' |
		grep -o "\"$1\":[^,}]*" | cut -d: -f2 | tr -d '"'
}
committed() { local v; v=$(rot_state version); echo "${v:-0}"; }
# state_whole: update-state.json, when there is one, is one complete JSON document
state_whole() {
	python3 - "$D/state/update-state.json" <<'PY'
import json, os, sys
if os.path.exists(sys.argv[1]):
    json.load(open(sys.argv[1]))
PY
}
UPIN=$(cat "$D/user.pin")
objects() { # number of objects in nhid's token
	pkcs11-tool --module $MOD --token-label nhid-dev --login --pin "$UPIN" --list-objects 2>/dev/null | grep -c "Object;"
}
privkeys() { # number of private keys labelled $1 in nhid's token
	pkcs11-tool --module $MOD --token-label nhid-dev --login --pin "$UPIN" --list-objects --type privkey 2>/dev/null |
		grep -c "label: *$1\$"
}
# a fresh token issues and resolves, and so does the one issued before any crash
token_ok() {
	local tok t
	tok=$(curl_as demo-agent /v1/tokens -d '{"aud":"inference"}' | tr -d ' \n' | grep -o '"token":"[^"]*"' | cut -d'"' -f4)
	[ -n "$tok" ] || { echo "no token issued"; return 1; }
	for t in "$tok" "$TOK0"; do
		curl_as inference-gw /v1/resolve -d "{\"token\":\"$t\"}" | tr -d ' \n' >"$T/resolve.out" || { cat "$T/resolve.out"; return 1; }
		grep -q '"sub":"demo-agent"' "$T/resolve.out" && grep -q '"id":"demo-agent"' "$T/resolve.out" ||
			{ echo "resolve: $(cat "$T/resolve.out")"; return 1; }
	done
}
# the package went through exactly once: committed v1 naming this package, the body
# installed, the package in applied/ (once, not rejected), the key once in the token;
# says what is missing otherwise
applied_once() {
	local v n
	[ -z "$(ls -A "$D/state/rejected" 2>/dev/null)" ] ||
		{ echo "rejected/: $(ls -A "$D/state/rejected")"; cat "$D/state/rejected/"*.reason; return 1; }
	v=$(committed)
	[ "$v" = 1 ] || { echo "update-state.json names cert-rotation v$v"; return 1; }
	[ "$(rot_state package_sha256)" = "$PKGSHA" ] ||
		{ echo "update-state.json names another package:"; cat "$D/state/update-state.json"; return 1; }
	[ -z "$(ls -A "$D/incoming")" ] || { echo "left in updates_dir: $(ls -A "$D/incoming")"; nlog_lines; return 1; }
	cmp -s rot1.json "$D/state/applied/rot1.json" || { echo "applied/rot1.json is missing or differs"; return 1; }
	grep -q "^applied: cert-rotation version 1 " "$D/state/applied/rot1.json.reason" ||
		{ echo "applied/rot1.json.reason: $(cat "$D/state/applied/rot1.json.reason" 2>&1)"; return 1; }
	[ ! -e "$D/state/applied/rot1.json.1" ] || { echo "moved to applied/ twice"; return 1; }
	cmp -s rot.body "$D/state/bodies/cert-rotation-1" || { echo "bodies/cert-rotation-1 is missing or differs"; return 1; }
	n=$(privkeys nhid-tls-2)
	[ "$n" = 1 ] || { echo "$n private keys labelled nhid-tls-2 in the token"; return 1; }
}
# within SECONDS cmd...: retry cmd until it succeeds, for at most SECONDS of wall time
# (lib.sh's wait_for counts tries, too long when one try is an s_client handshake)
within() {
	local end=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -ge "$end" ] && return 1
		sleep 0.1
	done
}
# settled: bounded wait for applied_once (a rejection ends it), then say why not
settled() {
	within 20 eval 'applied_once || [ -n "$(ls -A "$D/state/rejected" 2>/dev/null)" ]'
	applied_once
}
serves() { [ "$(served_fp)" = "$1" ]; }
# audited V0 [K]: the audit log and update-state.json agree about the package. It is never
# in service off the record: update_applied is durable before the rotation takes effect
# (before tls_rotated), and a commit whose record a crash prevented (V0=1) is recorded at the
# restart, marked recovered, before it is served. At most one of each; both only when nhid
# died between the record and update-state.json saying so (K=6). Nothing left "recorded":false.
# K (the step rounds) says which: 1-2 before the commit, 3-5 after it and before the record,
# 6 after the record, 7 after the mark. Says what is wrong otherwise.
audited() {
	local v0=$1 k=${2:-} all n r f want_n want_r
	all=$(grep '"event":"update_applied"' "$D/state/audit.jsonl" | grep "\"package_sha256\":\"$PKGSHA\"")
	r=$(grep -c '"recovered":true' <<<"$all")
	n=$(($(grep -c . <<<"$all") - r))
	f=$(grep '"event":"update_found_committed"' "$D/state/audit.jsonl" | grep -c '"file":"rot1.json"')
	case $k in
	1 | 2) want_n=1 want_r=0 ;;
	3 | 4 | 5) want_n=0 want_r=1 ;;
	6) want_n=1 want_r=1 ;;
	7) want_n=1 want_r=0 ;;
	*) want_n=any want_r=any ;;
	esac
	if [ "$n" -gt 1 ] || [ "$r" -gt 1 ] || [ $((n + r)) -lt 1 ] || { [ "$v0" = 0 ] && [ "$r" != 0 ]; } ||
		{ [ "$want_n" != any ] && { [ "$n" != "$want_n" ] || [ "$r" != "$want_r" ]; }; }; then
		echo "update_applied for rot1.json: $n by the apply, $r recovered (want ${want_n}, ${want_r}; v$v0 at the crash); the log has: $(grep -o '"event":"[a-z_]*"' "$D/state/audit.jsonl" |
			cut -d'"' -f4 | uniq -c | tr -s ' \n' ' ')"
		return 1
	fi
	# found committed in updates_dir (K=3, 4: died before the move): moved and said so, once
	if { [ "$k" = 3 ] || [ "$k" = 4 ]; } && [ "$f" != 1 ]; then echo "$f update_found_committed records for rot1.json"; return 1; fi
	[ "$f" -le 1 ] || { echo "$f update_found_committed records for rot1.json"; return 1; }
	if grep -q '"recorded"' "$D/state/update-state.json"; then
		echo "update-state.json still says not recorded:"; cat "$D/state/update-state.json"; return 1
	fi
	# the apply's own record comes before the change it announces
	python3 - "$D/state/audit.jsonl" "$PKGSHA" <<'PY' || return 1
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
rec = [r["seq"] for r in recs if r["event"] == "update_applied" and r.get("package_sha256") == sys.argv[2]
       and not r.get("recovered")]
rot = [r["seq"] for r in recs if r["event"] == "tls_rotated" and r.get("tls_key") == "nhid-tls-2"]
if rec and rot and rot[0] < rec[0]:
    sys.exit(f"tls_rotated (seq {rot[0]}) before the package's update_applied (seq {rec[0]})")
PY
}
nlog_lines() { sed 's/^/nhid: /' "$NLOG" | tail -12; }
log_tail() { nlog_lines | sed 's/^/#   /'; }

# --- the deployment runs; a valid rotation package is prepared ---
OLDFP=$(openssl x509 -in "$D/server.crt" -noout -fingerprint -sha256 | cut -d= -f2)
if ! up; then not_ok "nhid starts with updates on"; log_tail; exit 1; fi
check "before: s_client sees the ceremony's certificate" test "$(served_fp)" = "$OLDFP"
TOK0=$(curl_as demo-agent /v1/tokens -d '{"aud":"inference","ttl":900}' | tr -d ' \n' | grep -o '"token":"[^"]*"' | cut -d'"' -f4)
check "before: demo-agent gets a token" test -n "$TOK0"
pkcs11-tool --module $MOD --token-label nhid-dev --login --pin "$UPIN" --keypairgen \
	--key-type EC:prime256v1 --label rot-src --extractable --sensitive >/dev/null 2>&1
check "nhictl rotation make: new server cert + key wrapped under nhid-wrap" \
	"$NHICTL" rotation make --config "$D/ceremony.conf" --pin-file "$D/user.pin" --key rot-src \
	--key-label nhid-tls-2 --san-dns localhost --san-ip 127.0.0.1 --out rot.body
pkg rot1.json cert-rotation 1 rot.body 1 2
check "the rotation package carries both custodians' signatures" \
	bash -c "'$NHICTL' update verify --state-dir '$D/state' rot1.json | grep -q '\"signers\":2'"
# what update-state.json records for it: SHA-256 of the signed payload bytes
PKGSHA=$(python3 -c '
import base64, hashlib, json
p = json.load(open("rot1.json"))["payload"]
print(hashlib.sha256(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))).hexdigest())')
python3 -c 'import json;print(json.load(open("rot.body"))["cert_chain_pem"],end="")' >rot.crt
NEWFP=$(openssl x509 -in rot.crt -noout -fingerprint -sha256 | cut -d= -f2)
check "the new certificate differs from the old one" test -n "$NEWFP" -a "$NEWFP" != "$OLDFP"
down
check "nhid stops cleanly before the snapshot (rc $NHID_RC)" test "$NHID_RC" = 0
nothing_yet() { [ "$(committed)" = 0 ] && [ "$(privkeys nhid-tls-2)" = 0 ]; }
check "nothing is applied yet and nhid-tls-2 is not in the token" nothing_yet
# the pristine deployment every round starts from: config, state_dir, audit log, tokens
SNAP=$T/snap
cp -a "$D" "$SNAP"
echo "# the pristine token holds $(objects) objects; an apply adds 2 (nhid-tls-2 private and public)"

# after_crash LABEL V0: (d) the audit chain, restart, (b) cert vs commit, (c) exactly once,
# (e) tokens, a clean stop and (d) the audit chain again
#   V0 = the version committed when nhid died. With HIDDEN=1 the package (if still in
#   updates_dir) is renamed to a dot name before the restart, so the certificate seen
#   first depends on the commit alone; it is renamed back afterwards and the watcher resumes.
after_crash() {
	local label=$1 v0=$2 fp s1 s2 hidden=0 want
	check "$label: right after the crash the audit chain verifies (an unsigned tail is allowed)" \
		"$NHICTL" audit verify "$D/state/audit.jsonl" --pubkey "$D/audit.pub.pem"
	if [ "${HIDDEN:-0}" = 1 ] && [ -e "$D/incoming/rot1.json" ]; then
		mv "$D/incoming/rot1.json" "$D/incoming/.rot1.json.part"
		hidden=1
	fi
	if ! up; then
		not_ok "$label: nhid restarts after the crash"
		log_tail
		return
	fi
	ok "$label: nhid restarts after the crash"
	s1=$(committed); fp=$(served_fp); s2=$(committed)
	if [ "$hidden" = 1 ] || [ "$v0" = 1 ]; then
		# nothing can change the commit meanwhile: the certificate is exactly what it names
		[ "$s2" = 1 ] && want=$NEWFP || want=$OLDFP
		check "$label: s_client sees the $(fpname "$want") certificate, as update-state.json (v$s2) says (saw: $(fpname "$fp"))" \
			test "$fp" = "$want"
	else
		# the watcher may be re-applying right now: the new certificate only once committed
		check "$label: s_client sees the old or the new certificate, the new one only once committed (v$s1, $(fpname "$fp"), v$s2)" \
			bash -c "{ [ '$fp' = '$OLDFP' ] || [ '$fp' = '$NEWFP' ]; } && { [ '$fp' != '$NEWFP' ] || [ '$s2' = 1 ]; }"
	fi
	[ "$hidden" = 1 ] && mv "$D/incoming/.rot1.json.part" "$D/incoming/rot1.json"
	check "$label: the watcher finishes the package exactly once (v1, applied/, body, one key, nothing rejected)" \
		settled
	check "$label: then s_client sees the new certificate" within 5 serves "$NEWFP"
	check "$label: tokens issue and resolve (a fresh one and one issued before the crash)" token_ok
	check "$label: the audit log agrees with the state (update_applied once, or recovered once at the restart)" \
		audited "$v0" "${K:-}"
	down
	check "$label: nhid stops cleanly after the recovery (rc $NHID_RC, no sanitizer report)" \
		bash -c "[ '$NHID_RC' = 0 ] && ! grep -q Sanitizer '$NLOG'"
	check "$label: after the recovery the audit chain verifies" "$NHICTL" audit verify "$D/state/audit.jsonl" --pubkey "$D/audit.pub.pem"
}

fresh() { rm -rf "$D" && cp -a "$SNAP" "$D"; }
# where the package is: still in updates_dir, moved to applied/ (or lost)
where() { if [ -e "$D/incoming/rot1.json" ]; then echo updates_dir; elif [ -e "$D/state/applied/rot1.json" ]; then echo applied/; else echo nowhere; fi; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# --- _exit at every step of the apply ---
t_first=1000 t_last=1500 # drop -> death at step 1 and at the last step: the kill -9 rounds use them
for k in $(seq $STEPS); do
	fresh
	NLOG=$T/nhid-step$k.log
	if ! up NHI_TEST_UPDATE_CRASH_AT=$k; then not_ok "step $k: nhid starts on the pristine copy"; log_tail; continue; fi
	t0=$(now_ms)
	drop rot1.json
	wait_exit "$NHID_PID" 30 || { kill -9 "$NHID_PID"; wait "$NHID_PID" 2>/dev/null; reaped "$NHID_PID"; }
	dt=$(($(now_ms) - t0))
	[ "$k" = 1 ] && t_first=$dt
	[ "$k" = "$STEPS" ] && t_last=$dt
	v0=$(committed)
	w=$(where)
	[ "$k" -ge 3 ] && want=1 || want=0 # steps 1-2 before the commit (step 3), 3-5 after
	[ "$k" -ge 5 ] && wantw=applied/ || wantw=updates_dir # moved at step 5, recorded at 6, marked at 7
	check "step $k: nhid died in the apply $dt ms after the drop (rc $EXIT_RC, want 86) leaving v$v0 committed (want v$want), the package in $w (want $wantw)" \
		eval 'test "$EXIT_RC" = 86 -a "$v0" = "$want" -a "$w" = "$wantw" && state_whole'
	HIDDEN=1 K=$k after_crash "step $k" "$v0"
done

# --- kill -9 while keep-alive clients are connected: at the moment the apply creates its
# first / second new object in the token (C_UnwrapKey's private key, then the public
# object made from the certificate's point), and at moments spread from a little before
# the end of prepare (where step 1 dies) to a little after the last step ---
cat >killer.py <<'PY'
# killer.py PID TOKENS_DIR N SECONDS READY: kill -9 PID the moment the Nth new object file
# appears in a token under TOKENS_DIR (SoftHSM2's file store: one file per object, created
# empty, then rewritten once per attribute set); bounded by SECONDS; READY is touched
# once watching
import os, signal, sys, time
pid, root, n, secs, ready = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def objects():
    out = set()
    for d in os.listdir(root):
        try:
            out.update(d + "/" + f for f in os.listdir(os.path.join(root, d))
                       if f.endswith(".object") and f != "token.object")
        except (FileNotFoundError, NotADirectoryError):
            pass
    return out
base, new = objects(), []
open(ready, "w").close()
t0 = time.monotonic()
while time.monotonic() - t0 < secs:
    new += sorted(objects() - base - set(new))
    if len(new) >= n:
        os.kill(pid, signal.SIGKILL)
        print(f"as new token object {n} appeared, {time.monotonic() - t0:.3f} s after watching began")
        sys.exit(0)
    time.sleep(0.0001)
print(f"no kill: {len(new)} new token object(s) in {secs} s")
sys.exit(1)
PY
# kill_round LABEL at MS | object N: start nhid, clients, drop, kill -9 (MS after the drop,
# or when the Nth new token object appears), then after_crash
kill_round() {
	local label=$1 how=$2 arg=$3 lp kp krc=0 nrc v0 w how_txt load_ms
	fresh
	NLOG=$T/nhid-${label// /}.log
	if ! up; then not_ok "$label: nhid starts on the pristine copy"; log_tail; return; fi
	[ "$how" = at ] && load_ms=$((arg + 300)) || load_ms=$((t_last + 300))
	python3 "$NHI_ROOT/tests/integration/load.py" --port "$PORT" --dir "$D" --agent inference-gw \
		--seconds "$((load_ms / 1000)).$(printf '%03d' $((load_ms % 1000)))" --clients 2 >"$T/load.out" 2>&1 &
	lp=$!
	_pids+=("$lp")
	if [ "$how" = object ]; then
		rm -f "$T/killer.ready"
		python3 killer.py "$NHID_PID" "$D/tokens" "$arg" 20 "$T/killer.ready" >"$T/killer.out" 2>&1 &
		kp=$!
		_pids+=("$kp")
		wait_for 10 test -e "$T/killer.ready"
	fi
	drop rot1.json # as soon as after up, like the step rounds: the same phase of the 1 s scan
	{ # (stderr: no "Killed" job notice)
		if [ "$how" = object ]; then
			wait_exit "$kp" 25
			krc=$EXIT_RC
			how_txt="kill -9 $(cat "$T/killer.out")"
		else
			sleep "$((arg / 1000)).$(printf '%03d' $((arg % 1000)))"
			how_txt="kill -9 $arg ms after the drop"
		fi
		kill -9 "$NHID_PID"
		wait_exit "$NHID_PID" 10
		nrc=$EXIT_RC
	} 2>/dev/null
	wait_exit "$lp" 15 || { kill "$lp"; wait "$lp"; reaped "$lp"; } 2>/dev/null
	v0=$(committed)
	w=$(where)
	echo "# $label: the keep-alive clients until the kill: $(head -1 "$T/load.out")"
	# uncommitted: still in updates_dir; committed: in either place (moved after the commit)
	check "$label: $how_txt (rc $nrc) left v$v0 (old or new), the package in $w, $(privkeys nhid-tls-2) nhid-tls-2 key(s), $(objects) objects in the token" \
		eval "[ '$krc' = 0 ] && [ '$nrc' = 137 ] && state_whole && { { [ '$v0' = 0 ] && [ '$w' = updates_dir ]; } || { [ '$v0' = 1 ] && [ '$w' != nowhere ]; }; }"
	after_crash "$label" "$v0"
}
kill_round "token object 1 created" object 1
kill_round "token object 2 created" object 2
# the random moments: from t_first - 700 ms (prepare, with the unwrap in it) to t_last + 300 ms
# (the clients slow the apply down)
from=$((t_first > 700 ? t_first - 700 : 0))
span=$((t_last + 300 - from))
[ "$span" -lt 500 ] && span=500
[ "$span" -gt 3000 ] && span=3000
echo "# kill -9 moments spread over $from..$((from + span)) ms after the drop (step 1 died at $t_first ms, step $STEPS at $t_last ms)"
slot=$((span / KILLS))
for r in $(seq $KILLS); do
	kill_round "kill $r" at $((from + (r - 1) * slot + RANDOM % slot))
done
finish
