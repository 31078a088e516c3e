#!/usr/bin/env bash
# nhid applying identity-backup packages from its watched directory (issue #6 item 2):
# a newer backup carried as a signed update replaces the identities in service (a new
# agent gets tokens, a suspended one is refused) without a restart; it stays in service
# across a restart although the config's `backup` file is older; a newer file at
# `backup` still wins on reload; refused: a version that is not the backup's serial, a
# corrupted backup, a backup older than one loaded — each with its reason and nothing
# changed. The audit log verifies.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
deploy_in_t

make_custodians 1
make_bundle 1 1
updates_on

"$NHICTL" enroll newcomer --config "$D/ceremony.conf" --pin-file "$D/user.pin" >/dev/null || exit 1
# backup SERIAL with demo-agent's status and whether newcomer is in it
make_backup() { # out serial demo-status with-newcomer
	sed "s/\"id\":\"demo-agent\",/\"id\":\"demo-agent\",\"status\":\"$3\",/" "$D/test-agents.jsonl" >agents-$2.jsonl
	[ "$4" = yes ] && echo "{\"id\":\"newcomer\",\"roles\":[\"agent\"],\"audiences\":[\"inference\"],\"cert_pem_file\":\"$D/agents/newcomer.crt\"}" >>agents-$2.jsonl
	backup_file "$D" agents-$2.jsonl "$1" "$2"
}
token_for() { curl_as "$1" /v1/tokens -d '{"aud":"inference"}'; }
serial() { curl_as admin /v1/metrics | awk '/^nhid_identity_backup_serial /{print $2}'; }
export -f token_for serial

make_backup b3.nhib 3 suspended yes
make_backup b4.nhib 4 active yes
make_backup b5.nhib 5 active yes

start_nhid "$D/nhid-up.conf"
check "before: backup serial 2 in service" test "$(serial)" = 2
check_fails "before: newcomer is not enrolled" '"error":"not_enrolled"' token_for newcomer

# --- refused: the version is not the backup's serial ---
pkg wrongver.json identity-backup 7 b3.nhib
drop wrongver.json
check "a package whose version is not the backup's serial is rejected" wait_for 20 test -e "$D/state/rejected/wrongver.json"
check "... with a reason naming both numbers" grep -q "version (7) must be the backup's serial (3)" "$D/state/rejected/wrongver.json.reason"

# --- refused: a corrupted backup (the package itself is well signed) ---
cp b3.nhib corrupt.nhib
printf '\xff' | dd of=corrupt.nhib bs=1 seek=$(($(stat -c %s corrupt.nhib) - 100)) conv=notrunc 2>/dev/null
pkg corrupt.json identity-backup 3 corrupt.nhib
drop corrupt.json
check "a package carrying a corrupted backup is rejected (prepare_failed)" wait_for 20 test -e "$D/state/rejected/corrupt.json"
check "... naming the backup check that failed" grep -q "identity-backup: serial 3" "$D/state/rejected/corrupt.json.reason"
check "... and serial 2 stays in service" test "$(serial)" = 2
check "... demo-agent still gets tokens" token_for demo-agent

# --- applied: serial 3 (demo-agent suspended, newcomer added) ---
pkg ib3.json identity-backup 3 b3.nhib
drop ib3.json
check "the identity-backup package (serial 3) is applied" wait_for 20 test -e "$D/state/applied/ib3.json"
check "serial 3 is in service without a restart" wait_for 10 bash -c '[ "$(serial)" = 3 ]'
check "newcomer now gets a token" token_for newcomer
check_fails "demo-agent, suspended in serial 3, is refused" '"error":"agent_not_active"' token_for demo-agent
check "metrics count the identity-backup packages (1 applied, 2 rejected) and the bundle version" bash -c \
	"curl_as admin /v1/metrics >m.txt && grep -q 'nhid_updates_total{kind=\"identity-backup\",result=\"applied\"} 1' m.txt && grep -q 'nhid_updates_total{kind=\"identity-backup\",result=\"rejected\"} 2' m.txt && grep -q '^nhid_trust_bundle_version 1' m.txt"
check "... and the bundle's expires_at ($BEXP), the figure to alert on" grep -qx "nhid_trust_bundle_expires_at $BEXP" m.txt
check "the audit log says where the backup came from" grep -q '"event":"backup_loaded".*"source":"update".*"serial":3' "$D/state/audit.jsonl"

# --- a restart keeps it although the config's backup file is serial 2 ---
stop_nhid
start_nhid "$D/nhid-up.conf"
check "after a restart serial 3 (the applied package) is loaded, not the older file" test "$(serial)" = 3
check "newcomer still gets a token" token_for newcomer

# --- a newer file at `backup` still wins on reload ---
cp b5.nhib "$D/identities.nhib"
kill -HUP "$NHID_PID"
check "SIGHUP loads the newer file at backup (serial 5)" wait_for 15 bash -c '[ "$(serial)" = 5 ]'
check "demo-agent (active in 5) gets tokens again" token_for demo-agent

# --- refused: serial 4 is older than serial 5, loaded from the file ---
pkg ib4.json identity-backup 4 b4.nhib
drop ib4.json
check "a package older than the backup in service is rejected" wait_for 20 test -e "$D/state/rejected/ib4.json"
check "... as a rollback" grep -qi "rollback\|older" "$D/state/rejected/ib4.json.reason"
check "... and serial 5 stays" test "$(serial)" = 5
stop_nhid
start_nhid "$D/nhid-up.conf"
check "after a restart serial 5 (the file, newer than the applied package) is loaded" test "$(serial)" = 5
stop_nhid
check "the audit log verifies" "$NHICTL" audit verify "$D/state/audit.jsonl" --pubkey "$D/audit.pub.pem"
check "every decision is audited (2 rejected packages with reasons, 1 applied)" bash -c \
	"[ \$(grep -c '\"event\":\"update_rejected\"' '$D/state/audit.jsonl') -ge 3 ] && grep -q '\"event\":\"update_applied\".*\"kind\":\"identity-backup\"' '$D/state/audit.jsonl'"
finish
