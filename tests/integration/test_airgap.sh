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
# a server certificate issued by an intermediate CA: the intermediates in cert_file are
# served (nhi_tls_chain_parse) and the check builds the path through them, as a client does
X=$T/ich; mkdir -p "$X"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$X/root.key" -subj /CN=ich-root -days 2 \
	-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out "$X/root.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$X/int.key" -subj /CN=ich-int -out "$X/int.csr" 2>/dev/null
openssl x509 -req -in "$X/int.csr" -CA "$X/root.crt" -CAkey "$X/root.key" -days 2 -out "$X/int.crt" \
	-extfile <(printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n') 2>/dev/null
# the leaf carries the token's TLS public key (taken from the dev server certificate)
openssl x509 -in "$D/server.crt" -noout -pubkey >"$X/tls.pub"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$X/throw.key" -subj /CN=nhid -out "$X/leaf.csr" 2>/dev/null
openssl x509 -req -in "$X/leaf.csr" -CA "$X/int.crt" -CAkey "$X/int.key" -days 2 -force_pubkey "$X/tls.pub" -out "$X/leaf.crt" \
	-extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n') 2>/dev/null
cat "$X/leaf.crt" "$X/int.crt" >"$X/chain.crt"
conf_with ichain "s|^cert_file .*|cert_file = $X/chain.crt|; s|^ca_file .*|ca_file = $X/root.crt|"
"$NHICTL" airgap check --config "$T/ichain.conf" "${ROUTE_FLAG[@]}" >ichain.out 2>&1
rc=$?
check "a chain through an intermediate CA in cert_file: PASS, the intermediate named" \
	bash -c "[ $rc = 0 ] && grep -q 'server certificate chains to the CA (1 intermediate certificate served)' ichain.out &&
		grep -q \"server certificate is for token key 'nhid-tls'\" ichain.out"
[ $rc = 0 ] || sed 's/^/#   /' ichain.out
conf_with ileaf "s|^cert_file .*|cert_file = $X/leaf.crt|; s|^ca_file .*|ca_file = $X/root.crt|"
check_fails "the same leaf without its intermediate: FAIL naming the missing issuer" \
	"server certificate does not verify against ca_file $X/root.crt: unable to get local issuer certificate" \
	"$NHICTL" airgap check --config "$T/ileaf.conf" "${ROUTE_FLAG[@]}"
# a server certificate that chains but is for another key (throw.key, not the token's)
openssl x509 -req -in "$X/leaf.csr" -CA "$X/int.crt" -CAkey "$X/int.key" -days 2 -out "$X/other.crt" \
	-extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') 2>/dev/null
cat "$X/other.crt" "$X/int.crt" >"$X/other-chain.crt"
conf_with wrongcert "s|^cert_file .*|cert_file = $X/other-chain.crt|; s|^ca_file .*|ca_file = $X/root.crt|"
check_fails "a certificate for another key: FAIL naming the TLS key" "is not for key 'nhid-tls' in the token" \
	"$NHICTL" airgap check --config "$T/wrongcert.conf" "${ROUTE_FLAG[@]}"
conf_with clientcert "s|^cert_file .*|cert_file = $D/agents/demo-agent.crt|"
check_fails "a client certificate as cert_file: FAIL, not a TLS server certificate" \
	"server certificate does not verify against ca_file $D/ca.crt: unsuitable certificate purpose" \
	"$NHICTL" airgap check --config "$T/clientcert.conf" "${ROUTE_FLAG[@]}"
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
