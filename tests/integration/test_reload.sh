#!/usr/bin/env bash
# A reload is all or nothing, and the identity rollback rules hold across a restart:
# - a reload whose certificate chain cannot be read changes nothing (the newer backup
#   waiting at `backup` is not swapped in), is audited, and its message says so, both
#   by SIGHUP and by POST /v1/admin/reload;
# - a backup whose high-water mark cannot be written is not swapped in, and audited;
# - a malformed high-water mark refuses startup and reload, naming the file;
# - after a restart, a backup that reuses the last accepted serial with other content
#   is refused as a reload refuses it (state_dir/backup.serial keeps the digest).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
deploy_in_t

serial() { curl_as admin /v1/metrics | awk '/^nhid_identity_backup_serial /{print $2}'; }
token_for() { curl_as "$1" /v1/tokens -d '{"aud":"inference"}'; }
admin_reload() { curl_as_raw admin /v1/admin/reload -X POST -H "Authorization: Bearer $ADMIN_SECRET" "$@"; }
export -f serial token_for admin_reload; export ADMIN_SECRET
make_backup() { # out serial demo-agent-status
	sed "s/{\"id\":\"demo-agent\",/{\"id\":\"demo-agent\",\"status\":\"$3\",/" "$D/test-agents.jsonl" >"agents-$2-$3.jsonl"
	backup_file "$D" "agents-$2-$3.jsonl" "$1" "$2"
}
make_backup b5s.nhib 5 suspended || exit 1
make_backup b6s.nhib 6 suspended || exit 1
make_backup b7.nhib 7 active || exit 1
make_backup b7s.nhib 7 suspended || exit 1
MARK=$D/state/backup.serial
AUDIT=$D/state/audit.jsonl

start_nhid "$D/nhid.conf" 2>nhid.err
check "serial 2 in service, demo-agent gets tokens" bash -c '[ "$(serial)" = 2 ] && token_for demo-agent >/dev/null'
check "the high-water mark holds serial, digest and created_at of the loaded backup" \
	grep -qE '^2 [0-9a-f]{64} [0-9]+$' "$MARK"

# --- certificates unreadable: nothing changes, although a newer backup waits ---
cp "$D/server.crt" server.crt.good
cp b5s.nhib "$D/identities.nhib"
echo garbage >"$D/server.crt"
kill -HUP "$NHID_PID"
check "SIGHUP with an unreadable certificate chain fails, saying nothing was changed" \
	wait_for 15 grep -q 'reload failed: .*server.crt.*nothing was changed' nhid.err
check "... serial 2 stays in service (the waiting serial 5 was not swapped in)" test "$(serial)" = 2
check "... demo-agent (suspended in serial 5) still gets tokens" token_for demo-agent
check "... the failure is audited with its step" grep -q '"event":"reload_failed".*"step":"certificates"' "$AUDIT"
check_fails "admin reload fails the same way, 500 naming the cause" "nothing was changed" admin_reload --fail-with-body
check "... serial 2 still" test "$(serial)" = 2
cp server.crt.good "$D/server.crt"
check "with the chain restored, admin reload succeeds" bash -c 'admin_reload --fail-with-body | grep -q reloaded'
# RFC 7235 §2.1: the auth-scheme is case-insensitive, and 1*SP may follow it
check "admin reload takes 'bearer' in lower case, two spaces before the token" bash -c \
	'curl_as_raw admin /v1/admin/reload -X POST -H "Authorization: bearer  $ADMIN_SECRET" --fail-with-body | grep -q reloaded'
check_fails "... a wrong token is still refused" "forbidden" \
	curl_as_raw admin /v1/admin/reload -X POST -H "Authorization: bearer ${ADMIN_SECRET}x" --fail-with-body
check_fails "... another scheme is refused" "forbidden" \
	curl_as_raw admin /v1/admin/reload -X POST -H "Authorization: Basic $ADMIN_SECRET" --fail-with-body
check "... serial 5 in service, demo-agent refused as suspended" bash -c \
	'[ "$(serial)" = 5 ] && ! token_for demo-agent 2>/dev/null | grep -q token'

# --- the high-water mark cannot be written: the backup is not swapped in ---
if chattr +i "$MARK" 2>/dev/null; then
	cp b6s.nhib "$D/identities.nhib"
	admin_reload >mark.out 2>&1
	chattr -i "$MARK"
	check "a backup whose high-water mark cannot be written is refused (500 naming the mark)" \
		grep -q 'backup.serial.*nothing was changed' mark.out
	check "... serial 5 stays in service" test "$(serial)" = 5
	check "... and the failure is audited" grep -q '"event":"backup_import_failed".*backup.serial' "$AUDIT"
	check "... the mark still says serial 5" grep -q '^5 ' "$MARK"
else
	ok "# SKIP the filesystem of \$T cannot make the mark immutable (chattr)"
fi

# --- a malformed mark: reload and startup refuse, naming it ---
cp "$MARK" mark.good
printf 'seven\n' >"$MARK"
check_fails "a reload with a malformed high-water mark is refused, naming the file" "backup.serial is not the high-water mark" \
	admin_reload --fail-with-body
check "... serial 5 stays" test "$(serial)" = 5
stop_nhid
check_fails "startup with a malformed high-water mark is refused, naming the file" "backup.serial is not the high-water mark" \
	timeout 60 "$NHID" --config "$D/nhid.conf"
cp mark.good "$MARK"

# --- the rollback rules across a restart ---
cp b7.nhib "$D/identities.nhib"
start_nhid "$D/nhid.conf" 2>>nhid.err
check "serial 7 loaded at startup" test "$(serial)" = 7
stop_nhid
cp b7s.nhib "$D/identities.nhib"
check_fails "after a restart, a backup reusing the last accepted serial 7 with other content is refused" \
	"reuses the last accepted serial 7 with different content" timeout 60 "$NHID" --config "$D/nhid.conf"
cp "$T/last.out" restart.out
check "... its message says how to go back on purpose" grep -q 'make a new backup of them with a higher serial' restart.out
cp b7.nhib "$D/identities.nhib"
start_nhid "$D/nhid.conf" 2>>nhid.err
check "the accepted serial 7 itself starts again" test "$(serial)" = 7
stop_nhid
check "nhid stopped cleanly" test "$NHID_RC" = 0
check "the audit log verifies" "$NHICTL" audit verify "$AUDIT" --pubkey "$D/audit.pub.pem"
finish
