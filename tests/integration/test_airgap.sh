#!/usr/bin/env bash
# `nhictl airgap check`: PASS on a healthy dev deployment (in a fresh network namespace
# with only loopback when `ip netns` works), FAIL naming the cause for a default route,
# a loose PIN file, a missing key label, an extractable key, an expired or mismatched
# server certificate; exit codes 0/1/2.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
cd "$T"

setup_deployment "$T/dev"
D=$T/dev
conf_with() { # NAME sed-expression: a copy of nhid.conf with one change, mode 0600
	(umask 077; sed "$2" "$D/nhid.conf" >"$T/$1.conf")
}
has_default_route() {
	awk 'NR > 1 && $2 == "00000000" && $8 == "00000000" { f = 1 } END { exit !f }' /proc/net/route
}
ROUTE_FLAG=()
has_default_route && ROUTE_FLAG=(--allow-default-route)

check "usage: no subcommand is exit 2" bash -c "'$NHICTL' airgap; [ \$? = 2 ]"
check "usage: missing --config is exit 2" bash -c "'$NHICTL' airgap check; [ \$? = 2 ]"

"$NHICTL" airgap check --config "$D/nhid.conf" "${ROUTE_FLAG[@]}" >pass.out 2>&1
rc=$?
check "healthy deployment: PASS, exit 0 ${ROUTE_FLAG[*]}" bash -c "[ $rc = 0 ] && tail -1 pass.out | grep -qx PASS"
[ $rc = 0 ] || sed 's/^/#   /' pass.out
check "[n/N] lines 1..9 in order" bash -c "[ \"\$(grep -o '^\[[0-9]/9\]' pass.out | tr -d '\n')\" = '[1/9][2/9][3/9][4/9][5/9][6/9][7/9][8/9][9/9]' ]"
check "no trust bundle installed is reported, not failed" grep -q 'signed updates are not initialised' pass.out
check "every expected key is reported sensitive and non-extractable" \
	bash -c "[ \$(grep -c 'present, sensitive, not extractable' pass.out) -ge 5 ]"
check "the server certificate is matched with the token's TLS key" grep -q "server certificate is for token key 'nhid-tls'" pass.out
check "DNS is reported from resolv.conf, not queried" grep -q 'no query is sent' pass.out
check "nothing listens on nhid's port while nhid is down (reported, not a failure)" grep -q 'nhid is not running' pass.out

if has_default_route; then
	check_fails "a default route is a FAIL without --allow-default-route" "default route(s) present: an air-gapped host needs none" \
		"$NHICTL" airgap check --config "$D/nhid.conf"
else
	ok "# SKIP this host has no default route to refuse"
fi

# --- negative cases: each FAIL names its cause ---
chmod 640 "$D/user.pin"
check_fails "a group-readable PIN file: FAIL naming chmod 600" "chmod 600 $D/user.pin" \
	"$NHICTL" airgap check --config "$D/nhid.conf" "${ROUTE_FLAG[@]}"
chmod 600 "$D/user.pin"
chmod 644 "$D/nhid.conf"
check_fails "a world-readable config: FAIL" "readable by group or others" \
	"$NHICTL" airgap check --config "$D/nhid.conf" "${ROUTE_FLAG[@]}"
chmod 600 "$D/nhid.conf"

conf_with nokey 's/^token_keys .*/token_keys = nhid-token-1, nhid-token-gone/'
check_fails "a configured key label missing from the token: FAIL naming it" "token (retired) key 'nhid-token-gone' is not in the token" \
	"$NHICTL" airgap check --config "$T/nokey.conf" "${ROUTE_FLAG[@]}"
check_fails "a missing wrap key label: FAIL naming it" "backup wrap key 'nhid-wrap-x' is not in the token" \
	"$NHICTL" airgap check --config "$D/nhid.conf" --wrap-key nhid-wrap-x "${ROUTE_FLAG[@]}"

if pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label nhid-dev --login --pin "$(cat "$D/user.pin")" \
	--keygen --key-type AES:32 --label leaky-audit --extractable >/dev/null 2>&1; then
	conf_with leaky 's/^audit_key .*/audit_key = leaky-audit/'
	check_fails "an extractable, non-sensitive key: FAIL saying it can leave the token" "'leaky-audit' is NOT sensitive and EXTRACTABLE" \
		"$NHICTL" airgap check --config "$T/leaky.conf" "${ROUTE_FLAG[@]}"
else
	ok "# SKIP pkcs11-tool cannot make an extractable key here"
fi

conf_with expired "s|^cert_file .*|cert_file = $D/agents/expired-agent.crt|"
check_fails "an expired server certificate: FAIL naming expiry" "server certificate $D/agents/expired-agent.crt has expired" \
	"$NHICTL" airgap check --config "$T/expired.conf" "${ROUTE_FLAG[@]}"
conf_with wrongcert "s|^cert_file .*|cert_file = $D/agents/demo-agent.crt|"
check_fails "a certificate for another key: FAIL naming the TLS key" "is not for key 'nhid-tls' in the token" \
	"$NHICTL" airgap check --config "$T/wrongcert.conf" "${ROUTE_FLAG[@]}"
conf_with badtoken 's/^hsm_token .*/hsm_token = no-such-token/'
check_fails "an unreachable token: FAIL naming it" "no PKCS#11 token matches 'no-such-token'" \
	"$NHICTL" airgap check --config "$T/badtoken.conf" "${ROUTE_FLAG[@]}"

# --- with nhid running: its listener is recognised ---
start_nhid "$D/nhid.conf" 2>"$T/nhid.err"
"$NHICTL" airgap check --config "$D/nhid.conf" "${ROUTE_FLAG[@]}" >running.out 2>&1
check "nhid running: PASS and its socket is found on the configured address" \
	bash -c "tail -1 running.out | grep -qx PASS && grep -q '127.0.0.1:$PORT listening (nhid.s configured address)' running.out"
stop_nhid

# --- a fresh network namespace with only loopback: PASS with no flag at all ---
NS=nhi-ag-$$
if ip netns add "$NS" 2>/dev/null; then
	ip netns exec "$NS" ip link set lo up
	ip netns exec "$NS" "$NHICTL" airgap check --config "$D/nhid.conf" >ns.out 2>&1
	rc=$?
	check "fresh network namespace (loopback only): PASS without --allow-default-route" \
		bash -c "[ $rc = 0 ] && grep -q 'no default route' ns.out && tail -1 ns.out | grep -qx PASS"
	[ $rc = 0 ] || sed 's/^/#   /' ns.out
	ip netns del "$NS"
else
	ok "# SKIP ip netns add failed (not root or no CAP_SYS_ADMIN): network-namespace run not done"
fi
# a trust bundle that does not verify fails the check, naming the file
(umask 077; printf '{"payload":"e30","signatures":[]}\n' >"$D/state/trust-bundle.json")
check_fails "an unverifiable trust bundle is a FAIL naming it" "trust-bundle.json" \
	"$NHICTL" airgap check --config "$D/nhid.conf" "${ROUTE_FLAG[@]}"
rm -f "$D/state/trust-bundle.json"
finish
