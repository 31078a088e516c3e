#!/usr/bin/env bash
# nhid applying signed updates from its watched directory: startup refusal without a
# trust bundle, GET /v1/trust-bundle byte for byte, a revocation taking effect within
# a few scan periods (and surviving a restart), under-signed and malformed packages
# rejected with reasons and nothing changed, a cert rotation under keep-alive load
# with zero failed requests, the new certificate seen by `openssl s_client` and kept
# across a restart, and bad rotations (no chain, key/cert mismatch) leaving no key. An
# update's update_applied record is durable before it is in service (read at once when
# the revocation is seen in force, with that record slowed down); one whose record fails
# stays out of service until a restart records it (recovered), then serves it.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
deploy_in_t
NOW=$(date +%s)
DAY=86400

# --- two custodians (threshold 2), one token each, next to the deployment's ---
make_custodians 2
make_bundle 2 2

# --- updates off: no bundle served ---
start_nhid "$D/nhid.conf"
check_fails "updates off: GET /v1/trust-bundle is 404 no_trust_bundle" '"error":"no_trust_bundle"' \
	curl_as demo-agent /v1/trust-bundle
stop_nhid

# --- updates on without a bundle: refuses to start, naming the fix ---
mkdir -m 700 "$D/incoming"
cp "$D/nhid.conf" "$D/nhid-up.conf"
printf 'updates_dir = %s\nupdate_scan_s = 1\n' "$D/incoming" >>"$D/nhid-up.conf"
check_fails "updates_dir without a trust bundle in state_dir: refuses to start and names the fix" \
	"nhictl update init --state-dir" "$NHID" --config "$D/nhid-up.conf"
check "... and leaves nothing behind (no sanitizer report)" bash -c "! grep -q Sanitizer '$T/last.out'"
cp "$D/nhid.conf" "$D/nhid-bad.conf"
printf 'updates_dir = %s\n' "$D/state" >>"$D/nhid-bad.conf"
check_fails "updates_dir = state_dir is refused" "must not be state_dir" "$NHID" --config "$D/nhid-bad.conf" --check
check "update init installs the pinned bundle" "$NHICTL" update init --state-dir "$D/state" --bundle b1.json --pin "$BPIN"

# test builds: every update_applied record takes 300 ms longer to be durable (a slow
# disk), so an update in service before its record is caught below, not once in a while
NHI_TEST_UPDATE_RECORD_DELAY_MS=300 start_nhid "$D/nhid-up.conf"
check "GET /v1/trust-bundle serves the bundle byte for byte" bash -c "curl_as demo-agent /v1/trust-bundle >tb.json && cmp tb.json b1.json"
check "demo-agent gets a token before the revocation" curl_as demo-agent /v1/tokens -d '{"aud":"inference"}'
TOK=$(curl_as demo-agent /v1/tokens -d '{"aud":"inference"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')

# --- revocation ---
echo '{"agents":["demo-agent"]}' >rev1.body
pkg rev1.json revocation 1 rev1.body 1 2
drop rev1.json
refused() { [ "$(curl_as_raw demo-agent /v1/tokens -d '{"aud":"inference"}' -o /dev/null -w '%{http_code}')" = 403 ]; }
applied_rec() { grep '"event":"update_applied"' "$D/state/audit.jsonl" | grep '"kind":"revocation"' | grep '"signers":2' | grep -q package_sha256; }
# the moment the revocation is seen in force, its update_applied record is read at once:
# it is durable before the revocation takes effect (watcher.c applied_cb)
REC_AT_REFUSAL=none
for _ in $(seq 100); do
	if refused; then applied_rec && REC_AT_REFUSAL=yes || REC_AT_REFUSAL=no; break; fi
	sleep 0.1
done
check "a revocation package: demo-agent refused (403) within a few scan periods" test "$REC_AT_REFUSAL" != none
check "the refusal says agent_not_active and names the revocation" \
	bash -c "curl_as_raw demo-agent /v1/tokens -d '{\"aud\":\"inference\"}' | grep -q 'agent_not_active.*revoked by revocation package version 1'"
check "demo-agent's earlier token no longer resolves (401 revoked)" \
	bash -c "curl_as_raw inference-gw /v1/resolve -d '{\"token\":\"$TOK\"}' | grep -q '\"detail\":\"revoked\"'"
check "the package moved to applied/" bash -c "[ -f '$D/state/applied/rev1.json' ] && [ ! -e '$D/incoming/rev1.json' ]"
check "the audit log has the applied package (kind, version, signers, sha256) when the revocation is first seen in force" \
	test "$REC_AT_REFUSAL" = yes
check "... once, not marked recovered, and update-state.json says it is recorded" bash -c \
	"[ \$(grep '\"event\":\"update_applied\"' '$D/state/audit.jsonl' | grep -c '\"kind\":\"revocation\"') = 1 ] &&
	 ! grep '\"event\":\"update_applied\"' '$D/state/audit.jsonl' | grep -q '\"recovered\"' &&
	 ! grep -q recorded '$D/state/update-state.json'"
check "other agents are not affected" curl_as inference-gw /v1/tokens -d '{"aud":"inference"}'

# --- refusals: nothing changes ---
echo '{"agents":[]}' >rev2.body
pkg rev2.json revocation 2 rev2.body 1
drop rev2.json
check "an under-signed package goes to rejected/ with a .reason naming threshold" \
	wait_for 10 grep -q "threshold" "$D/state/rejected/rev2.json.reason"
check "the rejection is audited" bash -c "grep '\"event\":\"update_rejected\"' '$D/state/audit.jsonl' | grep -q rev2.json"
echo '{"agents":["x"],"colour":"blue"}' >rev3.body
pkg rev3.json revocation 2 rev3.body 1 2
drop rev3.json
check "a malformed revocation body is rejected (prepare_failed) naming the member" \
	wait_for 10 grep -q "unknown member 'colour'" "$D/state/rejected/rev3.json.reason"
check "after both refusals demo-agent is still revoked" refused
echo 'not a package' >garbage.json
drop garbage.json
check "a file that is no package is rejected" wait_for 10 test -f "$D/state/rejected/garbage.json"
check "... audited with kind unknown (not cert-rotation) and its reason" bash -c \
	"grep '\"event\":\"update_rejected\"' '$D/state/audit.jsonl' | grep garbage.json | grep '\"kind\":\"unknown\"' \
	 | grep -q '\"reason\":\"format\"'"
check "... and counted under kind unknown, not cert-rotation" bash -c "curl_as admin /v1/metrics >m0.txt && \
	grep -q 'nhid_updates_total{kind=\"unknown\",result=\"rejected\"} 1' m0.txt && \
	grep -q 'nhid_updates_total{kind=\"cert-rotation\",result=\"rejected\"} 0' m0.txt"

# --- cert rotation under keep-alive load ---
UPIN=$(cat "$D/user.pin")
newkey() { pkcs11-tool --module $MOD --token-label nhid-dev --login --pin "$UPIN" --keypairgen \
	--key-type EC:prime256v1 --label "$1" --extractable --sensitive >/dev/null 2>&1; }
newkey rot-src
check "nhictl rotation make: new server cert + key wrapped under nhid-wrap" \
	"$NHICTL" rotation make --config "$D/ceremony.conf" --pin-file "$D/user.pin" --key rot-src \
	--key-label nhid-tls-2 --san-dns localhost --san-ip 127.0.0.1 --out rot.body
check "the extractable source key is gone from the token" \
	bash -c "! pkcs11-tool --module $MOD --token-label nhid-dev --login --pin '$UPIN' --list-objects 2>/dev/null | grep -q rot-src"
python3 -c 'import json;print(json.load(open("rot.body"))["cert_chain_pem"],end="")' >rot.crt
NEWFP=$(openssl x509 -in rot.crt -noout -fingerprint -sha256 | cut -d= -f2)
OLDFP=$(openssl x509 -in "$D/server.crt" -noout -fingerprint -sha256 | cut -d= -f2)
served_fp() { openssl s_client -connect 127.0.0.1:$PORT -CAfile "$D/ca.crt" -cert "$D/agents/admin.crt" \
	-key "$D/agents/admin.key" </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256 | cut -d= -f2; }
check "before: s_client sees the ceremony's certificate" test "$(served_fp)" = "$OLDFP"
pkg rot1.json cert-rotation 1 rot.body 1 2
python3 "$NHI_ROOT/tests/integration/load.py" --port "$PORT" --dir "$D" --agent inference-gw --seconds 8 \
	--clients 4 >load.out 2>&1 &
LOADPID=$!
sleep 2
drop rot1.json
wait $LOADPID
check "rotation under keep-alive load: zero failed requests ($(head -1 load.out))" \
	bash -c "grep -q '^failed=0 ok=[1-9]' load.out"
check "the rotation package was applied" wait_for 10 test -f "$D/state/applied/rot1.json"
check "after: s_client sees the new certificate" test "$(served_fp)" = "$NEWFP"
check "the rotation is audited (tls_rotated with the new key label)" \
	bash -c "grep '\"event\":\"tls_rotated\"' '$D/state/audit.jsonl' | grep -q nhid-tls-2"
check "clients verifying against ca.crt keep working" curl_as admin /v1/health
# nhictl airgap check looks at what nhid serves: the rotated chain and key, not cert_file
# (its other steps depend on this host's network; only the certificate and key lines count)
"$NHICTL" airgap check --config "$D/nhid-up.conf" --allow-default-route >airgap.out 2>&1
check "airgap check checks the committed cert-rotation nhid serves, not cert_file" \
	grep -qF "serving the committed cert-rotation (version 1, key 'nhid-tls-2'), not cert_file" airgap.out
check "... its certificate is current and for token key nhid-tls-2" bash -c \
	"grep -q 'server certificate the rotated certificate chain (cert-rotation version 1) valid' airgap.out && grep -qF \"server certificate is for token key 'nhid-tls-2'\" airgap.out"
check "... and the rotated key's flags are checked" grep -qE "TLS \(rotated\) +'nhid-tls-2': present, sensitive, not extractable" airgap.out

# --- bad rotations: no chain, key of another certificate ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout stray.key -out stray.crt -days 5 \
	-subj "/CN=localhost" >/dev/null 2>&1
python3 - <<'PY'
import json
b = json.load(open("rot.body")); b["cert_chain_pem"] = open("stray.crt").read(); b["key_label"] = "nhid-tls-x"
json.dump(b, open("nochain.body", "w"))
PY
pkg rot2.json cert-rotation 2 nochain.body 1 2
drop rot2.json
check "a certificate that does not chain to ca_file is rejected, naming why" \
	wait_for 10 grep -q "does not verify against ca_file" "$D/state/rejected/rot2.json.reason"
newkey rot-a
newkey rot-b
"$NHICTL" rotation make --config "$D/ceremony.conf" --pin-file "$D/user.pin" --key rot-a --key-label nhid-tls-y \
	--out a.body >/dev/null
"$NHICTL" rotation make --config "$D/ceremony.conf" --pin-file "$D/user.pin" --key rot-b --key-label nhid-tls-y \
	--out b.body >/dev/null
python3 - <<'PY'
import json
a = json.load(open("a.body")); b = json.load(open("b.body"))
a["wrapped_key_b64"] = b["wrapped_key_b64"]
json.dump(a, open("mismatch.body", "w"))
PY
pkg rot3.json cert-rotation 2 mismatch.body 1 2
drop rot3.json
check "a key that is not the certificate's is rejected, naming why" \
	wait_for 15 grep -q "does not match the certificate's public key" "$D/state/rejected/rot3.json.reason"
check "... and the unwrapped key was removed from the token (nothing half-applied)" \
	bash -c "! pkcs11-tool --module $MOD --token-label nhid-dev --login --pin '$UPIN' --list-objects 2>/dev/null | grep -q nhid-tls-y"
check "after the refusals the rotated certificate is still served" test "$(served_fp)" = "$NEWFP"

# --- restart: the committed state is what starts ---
stop_nhid
check "nhid stopped cleanly" test "$NHID_RC" -eq 0
start_nhid "$D/nhid-up.conf"
check "after a restart: still the new certificate" test "$(served_fp)" = "$NEWFP"
check "after a restart: demo-agent still revoked" refused
check "after a restart: the trust bundle is served" bash -c "curl_as admin /v1/trust-bundle | cmp - b1.json"

# --- a trust bundle v2 through the diode (the same custodians): served, counted, its expiry shown ---
B2EXP=$(($(date +%s) + 200 * 86400))
"$NHICTL" bundle create --version 2 --expires-at "$B2EXP" --ca "$D/ca.crt" --jwks "$D/jwks.json" \
	--signer c1.pub --signer c2.pub --threshold 2 -o b2.json >/dev/null || exit 1
for i in 1 2; do "$NHICTL" bundle sign --token cust$i --key signer --pin-file c$i.pin b2.json >/dev/null || exit 1; done
pkg tb2.json trust-bundle 2 b2.json 1 2
drop tb2.json
check "a trust-bundle v2 package is applied while nhid runs" wait_for 15 test -e "$D/state/applied/tb2.json"
check "... GET /v1/trust-bundle serves v2 byte for byte" wait_for 5 bash -c "curl_as admin /v1/trust-bundle | cmp -s - b2.json"
check "... /v1/metrics shows nhid_trust_bundle_version 2 and v2's expires_at ($B2EXP)" bash -c \
	"curl_as admin /v1/metrics >m2.txt && grep -qx 'nhid_trust_bundle_version 2' m2.txt && grep -qx 'nhid_trust_bundle_expires_at $B2EXP' m2.txt"
stop_nhid
check "nhid stopped cleanly after the restart (no sanitizer report)" test "$NHID_RC" -eq 0

# --- an update whose update_applied record cannot be written stays out of service ---
# (test builds: NHI_TEST_UPDATE_RECORD_FAIL fails that record as a failed audit log would)
NHI_TEST_UPDATE_RECORD_FAIL=1 start_nhid "$D/nhid-up.conf"
echo '{"agents":[]}' >rev4.body
pkg rev4.json revocation 2 rev4.body 1 2
drop rev4.json
not_in_force_rec() { grep '"event":"update_not_in_force"' "$D/state/audit.jsonl" | grep '"file":"rev4.json"' | grep -q 'audit log unusable'; }
check "a revocation lifting demo-agent's whose record cannot be written: update_not_in_force, naming the cause" \
	wait_for 10 not_in_force_rec
check "... committed (applied/, update-state.json says not recorded), with no update_applied record" bash -c \
	"[ -f '$D/state/applied/rev4.json' ] && grep -q '\"recorded\": false' '$D/state/update-state.json' &&
	 ! grep '\"event\":\"update_applied\"' '$D/state/audit.jsonl' | grep '\"kind\":\"revocation\"' | grep -q '\"version\":2'"
check "... and not in service: demo-agent is still refused" refused
stop_nhid
check "nhid stopped cleanly (rc $NHID_RC)" test "$NHID_RC" -eq 0
start_nhid "$D/nhid-up.conf"
check "after a restart: the committed revocation v2 recorded once, marked recovered, right after startup" \
	python3 - "$D/state/audit.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
at = [i for i, r in enumerate(recs) if r["event"] == "update_applied" and r.get("kind") == "revocation"
      and r.get("version") == 2]
assert len(at) == 1 and recs[at[0]].get("recovered") is True, [recs[i] for i in at]
assert recs[at[0] - 1]["event"] == "startup", recs[at[0] - 1]
PY
check "... then in service: demo-agent gets a token again" curl_as demo-agent /v1/tokens -d '{"aud":"inference"}'
check "... and update-state.json says it is recorded" bash -c "! grep -q recorded '$D/state/update-state.json'"
stop_nhid
check "nhid stopped cleanly after the recovery (no sanitizer report)" test "$NHID_RC" -eq 0

# --- a signing_keys purpose naming the TLS key in force (the committed rotation's, not config tls_key) ---
cp "$D/nhid-up.conf" sign-tls.conf
echo "signing_keys = export:nhid-tls-2:admin" >>sign-tls.conf
check_fails "signing_keys naming the TLS key in force (nhid-tls-2, of the committed rotation) stops startup" \
	"is the TLS key in force" timeout 20 "$NHID" --config sign-tls.conf
check "the audit log verifies" "$NHICTL" audit verify "$D/state/audit.jsonl" --pubkey "$D/audit.pub.pem"
finish
