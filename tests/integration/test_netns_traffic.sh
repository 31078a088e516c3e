#!/usr/bin/env bash
# A full run sends nothing but loopback traffic, measured. nhid and every client run in
# a network namespace (NS) whose loopback is up and which ALSO has a veth interface with
# an address (10.255.0.2/30) and a default route via its peer (10.255.0.1), the peer end
# living in a second namespace (PEER) we create too — nothing here touches the host's
# network. Anything that tried to leave would go out on veth0, so its packet counters
# are the measurement (IPv6 is disabled on both ends before they come up, so no DAD or
# router solicitation noise). Measured window: nhid startup (no-egress filter
# installed), tokens (curl and nhi-agent), resolve, SIGHUP reload, admin reload, a
# custodian-signed update package verified and applied with `nhictl update apply`, and
# `nhictl airgap check`, which must FAIL on the namespace's default route (naming it)
# and PASS with --allow-default-route. Then nhid is restarted with the test-build
# egress probe aimed at the peer itself (10.255.0.1:9): refused, counters still flat.
# Active negative control last: an unfiltered process sends one SYN to 10.255.0.1:9
# and the counters must move, proving the measurement can see egress.
# shellcheck disable=SC2154  # the s0_* .. s3_* counters are assigned by snap (eval)
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
cd "$T"

NS=nhi-tx-$$
PEER=nhi-txpeer-$$
IF=veth0
PIF=veth1
ns_cleanup() {
	ip netns del "$NS" 2>/dev/null
	ip netns del "$PEER" 2>/dev/null
}
# lib.sh's cleanup kills our pids (nhid runs in NS) first, then the namespaces go
trap 'cleanup; ns_cleanup' EXIT
trap 'exit 130' INT TERM HUP

if ! ip netns add "$NS" 2>"$T/netns.err"; then
	ok "# SKIP ip netns add failed (not root or no CAP_NET_ADMIN/CAP_SYS_ADMIN): $(head -1 "$T/netns.err")"
	exit 0
fi
if ! { ip netns add "$PEER" && ip -n "$NS" link add "$IF" type veth peer name "$PIF" netns "$PEER"; } 2>"$T/netns.err"; then
	ok "# SKIP cannot create a veth pair between namespaces: $(head -1 "$T/netns.err")"
	exit 0
fi
in_ns() { ip netns exec "$NS" "$@"; }
in_peer() { ip netns exec "$PEER" "$@"; }
# IPv6 off on both ends before they come up: no DAD, no router solicitation
in_ns sysctl -qw "net.ipv6.conf.$IF.disable_ipv6=1" && in_peer sysctl -qw "net.ipv6.conf.$PIF.disable_ipv6=1" &&
	in_ns ip link set lo up && in_peer ip link set lo up &&
	in_ns ip addr add 10.255.0.2/30 dev "$IF" && in_peer ip addr add 10.255.0.1/30 dev "$PIF" &&
	in_peer ip link set "$PIF" up && in_ns ip link set "$IF" up &&
	in_ns ip route add default via 10.255.0.1 dev "$IF" ||
	{ not_ok "namespace network setup failed"; finish; }
check "the namespace has a default route via the peer on $IF" \
	bash -c "ip -n '$NS' route show default | grep -q 'default via 10.255.0.1 dev $IF'"
wait_for 10 bash -c "ip -n '$NS' link show '$IF' | grep -q 'state UP'"
check "the peer is reachable through $IF (the path egress would take is live)" \
	bash -c "ip -n '$NS' route get 10.255.0.1 | grep -q 'dev $IF'"

# counters: tx of every non-loopback interface in NS (summed), lo tx, peer rx
ctr() { in_ns cat "/sys/class/net/$1/statistics/$2"; }
nonlo_tx() { # packets|bytes: sum over every interface of NS except lo (veth0 and any tunnel devices)
	in_ns sh -c "s=0; for d in /sys/class/net/*; do [ \"\${d##*/}\" = lo ] && continue; s=\$((s + \$(cat \$d/statistics/tx_$1))); done; echo \$s"
}
snap() { # snap NAME: record all counters as NAME_*
	eval "$1_tx=$(nonlo_tx packets) $1_txb=$(nonlo_tx bytes) $1_if=$(ctr "$IF" tx_packets)"
	eval "$1_lo=$(ctr lo tx_packets) $1_peer=$(in_peer cat "/sys/class/net/$PIF/statistics/rx_packets")"
}
report() { # report FROM TO
	local f=$1 t=$2
	eval "echo \"# counters $f -> $t: non-lo tx_packets \$${f}_tx -> \$${t}_tx, tx_bytes \$${f}_txb -> \$${t}_txb; \
$IF tx_packets \$${f}_if -> \$${t}_if; peer $PIF rx_packets \$${f}_peer -> \$${t}_peer; lo tx_packets \$${f}_lo -> \$${t}_lo\""
}

# --- preparation (host side: a deployment, two custodian tokens with their keys) ---
setup_deployment "$T/dev"
D=$T/dev
for i in 1 2; do
	pinfile c$i.pin "custodian-$i-pin"
	pinfile so$i.pin "so-$i-pin"
	"$NHICTL" hsm-init --label cust$i --so-pin-file so$i.pin --pin-file c$i.pin >/dev/null &&
		pkcs11-tool --module $MOD --token-label cust$i --login --pin "custodian-$i-pin" \
			--keypairgen --key-type EC:prime256v1 --label signer >/dev/null 2>&1 ||
		{ not_ok "custodian $i token setup failed"; finish; }
done
NOW=$(date +%s)
# start from settled counters: the link just came up
sleep 1
snap s0

# === measured window: everything below runs inside NS ===
start_bg ip netns exec "$NS" "$NHID" --config "$D/nhid.conf" 2>"$T/nhid.err"
NHID_PID=$BG_PID
in_ns_health() {
	in_ns curl -s --max-time 2 --cacert "$D/ca.crt" --cert "$D/agents/demo-agent.crt" \
		--key "$D/agents/demo-agent.key" "https://127.0.0.1:$PORT/v1/health"
}
wait_for 60 in_ns_health || { not_ok "nhid did not come up in $NS on 127.0.0.1:$PORT"; sed 's/^/#   /' "$T/nhid.err" | tail -20; finish; }
check "nhid runs inside $NS (its network namespace is NS's, not the host's)" \
	test "$(readlink /proc/$NHID_PID/ns/net)" = "$(in_ns readlink /proc/self/ns/net)"
check "nhid installed its no-egress filter (audit: sandbox_installed; Seccomp: 2)" \
	bash -c "grep -q '\"event\":\"sandbox_installed\"' '$D/state/audit.jsonl' && grep -q '^Seccomp:[[:space:]]*2' /proc/$NHID_PID/status"

in_ns bash -c "curl_as demo-agent /v1/tokens -d '{\"aud\":\"inference\"}'" >tok.json 2>&1
check "token issued (curl in $NS)" grep -q '"token":"ey' tok.json
TOKEN=$(python3 -c 'import json; print(json.load(open("tok.json"))["token"])' 2>/dev/null)
check "token resolved by inference-gw" \
	in_ns bash -c "curl_as inference-gw /v1/resolve -d '{\"token\":\"$TOKEN\"}' | grep -q '\"sub\":\"demo-agent\"'"
check "token issued to nhi-agent (mbedTLS)" in_ns bash -c "agent_as demo-agent token --aud inference | grep -q '^ey'"
kill -HUP "$NHID_PID"
check "SIGHUP reload (audit: reload)" wait_for 10 bash -c "[ \$(grep -c '\"event\":\"reload\"' '$D/state/audit.jsonl') -ge 1 ]"
check "admin reload (POST /v1/admin/reload with the admin role and bearer token)" \
	in_ns bash -c "curl_as admin /v1/admin/reload -X POST -H 'Authorization: Bearer $ADMIN_SECRET' | grep -q reloaded"
check "the admin reload is audited (2 reload records)" wait_for 10 bash -c "[ \$(grep -c '\"event\":\"reload\"' '$D/state/audit.jsonl') -ge 2 ]"
check "a token after both reloads" in_ns bash -c "curl_as demo-agent /v1/tokens -d '{\"aud\":\"inference\"}' | grep -q '\"token\":\"ey'"

# signed update: trust bundle (2 custodians, threshold 2), a revocation package signed
# by both, verified and applied — every nhictl step in NS
U=$T/upd
mkdir -p "$U/state" "$U/incoming"
echo '{"keys":[]}' >"$U/jwks.json"
update_flow() {
	set -e
	for i in 1 2; do "$NHICTL" update pubkey --token cust$i --key signer --pin-file "$T/c$i.pin" >"$U/c$i.pub"; done
	"$NHICTL" bundle create --version 1 --expires-at $((NOW + 86400 * 365)) --ca "$D/ca.crt" --jwks "$U/jwks.json" \
		--signer "$U/c1.pub" --signer "$U/c2.pub" --threshold 2 -o "$U/b1.json" >/dev/null
	for i in 1 2; do "$NHICTL" bundle sign --token cust$i --key signer --pin-file "$T/c$i.pin" "$U/b1.json" >/dev/null; done
	local pin
	pin=$("$NHICTL" bundle fingerprint "$U/b1.json")
	"$NHICTL" update init --state-dir "$U/state" --bundle "$U/b1.json" --pin "$pin" >/dev/null
	printf '{"agents":["revoked-agent"]}\n' >"$U/body"
	"$NHICTL" update create --kind revocation --version 1 --id rev-1 --body "$U/body" --expires-in 86400 \
		-o "$U/incoming/rev-1.json" >/dev/null
	for i in 1 2; do "$NHICTL" update sign --token cust$i --key signer --pin-file "$T/c$i.pin" "$U/incoming/rev-1.json" >/dev/null; done
	"$NHICTL" update verify --state-dir "$U/state" "$U/incoming/rev-1.json"
	"$NHICTL" update apply --state-dir "$U/state" "$U/incoming/rev-1.json"
}
export -f update_flow
export T U NOW NHICTL
check "signed update: bundle signed 2-of-2, package signed, verified and applied (nhictl update apply)" \
	in_ns bash -c update_flow
check "the update was applied (applied/ record, body installed)" \
	bash -c "grep -q 'applied: revocation version 1' '$U/state/applied/rev-1.json.reason' && cmp -s '$U/body' '$U/state/bodies/revocation-1'"

in_ns "$NHICTL" airgap check --config "$D/nhid.conf" >ag-fail.out 2>&1
rc=$?
check "airgap check in $NS FAILs on the default route (exit 1)" \
	bash -c "[ $rc = 1 ] && grep -q 'default route(s) present: an air-gapped host needs none' ag-fail.out && tail -1 ag-fail.out | grep -q '^FAIL'"
check "airgap check reports the route it found (via 10.255.0.1 dev $IF)" grep -q "IPv4 default route via 10.255.0.1 dev $IF" ag-fail.out
[ $rc = 1 ] || sed 's/^/#   /' ag-fail.out
in_ns "$NHICTL" airgap check --config "$D/nhid.conf" --allow-default-route >ag-pass.out 2>&1
rc=$?
check "airgap check --allow-default-route in $NS with nhid running: PASS" \
	bash -c "[ $rc = 0 ] && grep -q 'accepted (--allow-default-route)' ag-pass.out && tail -1 ag-pass.out | grep -qx PASS"
[ $rc = 0 ] || sed 's/^/#   /' ag-pass.out

stop_nhid
check "nhid stopped cleanly (exit 0, LeakSanitizer included)" test "$NHID_RC" = 0
check "no sanitizer report from nhid" bash -c "! grep -q 'Sanitizer' '$T/nhid.err'"
sleep 1
snap s1
report s0 s1
check "full run: no packet left on any non-loopback interface (tx_packets $s0_tx -> $s1_tx)" test "$s1_tx" -eq "$s0_tx"
check "full run: no byte left either (tx_bytes $s0_txb -> $s1_txb)" test "$s1_txb" -eq "$s0_txb"
check "full run: the peer received nothing ($PIF rx_packets $s0_peer -> $s1_peer)" test "$s1_peer" -eq "$s0_peer"
check "full run: loopback carried the traffic (lo tx_packets $s0_lo -> $s1_lo)" test "$s1_lo" -gt "$s0_lo"

# --- nhid's own egress probe aimed at the peer: refused, nothing on the wire ---
export NHI_TESTING_EGRESS_PROBE=10.255.0.1:9
start_bg ip netns exec "$NS" "$NHID" --config "$D/nhid.conf" 2>"$T/nhid2.err"
unset NHI_TESTING_EGRESS_PROBE
NHID_PID=$BG_PID
wait_for 60 in_ns_health || { not_ok "nhid (with the probe) did not come up in $NS"; sed 's/^/#   /' "$T/nhid2.err" | tail -20; finish; }
check "nhid's probe to 10.255.0.1:9 (reachable through $IF) was refused by the kernel" \
	grep -q "test egress probe to 10.255.0.1:9 refused by the kernel: Operation not permitted" "$T/nhid2.err"
check "a token after the refused probe" in_ns bash -c "curl_as demo-agent /v1/tokens -d '{\"aud\":\"inference\"}' | grep -q '\"token\":\"ey'"
stop_nhid
check "nhid (probe run) stopped cleanly" test "$NHID_RC" = 0
sleep 1
snap s2
report s1 s2
check "probe run: still no packet on any non-loopback interface (tx_packets $s1_tx -> $s2_tx)" test "$s2_tx" -eq "$s1_tx"
check "probe run: the peer still received nothing ($PIF rx_packets $s1_peer -> $s2_peer)" test "$s2_peer" -eq "$s1_peer"

# --- active negative control: an unfiltered process sends one SYN to the peer ---
in_ns timeout 5 python3 - >ctl.out 2>&1 <<'PY'
import socket
s = socket.socket(); s.settimeout(3)
try:
    s.connect(("10.255.0.1", 9)); print("connected")
except OSError as e:
    print("refused as expected:", e)
PY
sleep 1
snap s3
report s2 s3
sed 's/^/# control: /' ctl.out
check "control: one unfiltered connect to 10.255.0.1:9 is seen on $IF (tx_packets $s2_tx -> $s3_tx)" test "$s3_tx" -gt "$s2_tx"
check "control: and arrives at the peer ($PIF rx_packets $s2_peer -> $s3_peer)" test "$s3_peer" -gt "$s2_peer"
finish
