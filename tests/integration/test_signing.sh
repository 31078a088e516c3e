#!/usr/bin/env bash
# The signing service and manifest verification over real mTLS (issue #6 item 5):
# `nhictl key create`; POST /v1/sign with a purpose key in the token, checked by
# `openssl dgst -verify` outside nhid; POST /v1/verify for this server's key and for a
# replication peer's key from the trust bundle (made and signed with openssl, never
# by nhid), domain separation between purposes, revoked and unknown kids; the role
# policy; POST /v1/manifests/verify naming each file that differs, is missing or is
# extra; bad requests; config refusals; audit records carry hashes, never payloads.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
deploy_in_t

# --- agents with the service roles, in a newer backup ---
for a in replicator model-loader; do
	"$NHICTL" enroll "$a" --config "$D/ceremony.conf" --pin-file "$D/user.pin" >/dev/null || exit 1
done
cat >>"$D/test-agents.jsonl" <<EOF
{"id":"replicator","roles":["replicator"],"audiences":[],"cert_pem_file":"$D/agents/replicator.crt"}
{"id":"model-loader","roles":["manifest-verifier"],"audiences":[],"cert_pem_file":"$D/agents/model-loader.crt"}
EOF
backup_file "$D" "$D/test-agents.jsonl" "$D/identities.nhib" 3 || exit 1

# --- nhictl key create ---
check "key create makes a P-256 key in the token and prints its public key" \
	bash -c "'$NHICTL' key create --token nhid-dev --key nhid-sign-replication --pin-file '$D/user.pin' >repl.pub 2>create.err && grep -q 'BEGIN PUBLIC KEY' repl.pub && grep -q 'kid ' create.err"
check "... and the key is not extractable (CKA_EXTRACTABLE false in pkcs11-tool's listing)" \
	bash -c "pkcs11-tool --module $MOD --token-label nhid-dev --login --pin \$(cat '$D/user.pin') --list-objects --type privkey 2>/dev/null | grep -A8 'nhid-sign-replication' | grep -q 'Access:.*sensitive.*never extractable'"
check_fails "key create refuses a label in use" "nhid-sign-replication" \
	"$NHICTL" key create --token nhid-dev --key nhid-sign-replication --pin-file "$D/user.pin"
"$NHICTL" key create --token nhid-dev --key nhid-sign-export --pin-file "$D/user.pin" >export.pub 2>/dev/null
check "key pubkey prints the same public key" bash -c "'$NHICTL' key pubkey --token nhid-dev --key nhid-sign-replication --pin-file '$D/user.pin' | cmp - repl.pub"

# --- the bundle: custodians, a replication peer's key (software, another site), a manifest key ---
make_custodians 1
"$NHICTL" key create --token cust1 --key models --pin-file c1.pin >models.pub 2>/dev/null
"$NHICTL" key create --token cust1 --key rogue --pin-file c1.pin >/dev/null 2>&1
openssl ecparam -name prime256v1 -genkey -noout -out peer.key 2>/dev/null
openssl ec -in peer.key -pubout -out peer.pub 2>/dev/null
make_bundle 1 1 --peer peer.pub --manifest-key models.pub
updates_on
PEER_KID=$(python3 - b1.json <<'PY'
import base64, json, sys
doc = json.load(open(sys.argv[1]))
p = doc["payload"]; p += "=" * (-len(p) % 4)
print(json.loads(base64.urlsafe_b64decode(p))["peer_keys"][0]["kid"])
PY
)

# --- config refusals ---
cp "$D/nhid.conf" bad.conf
echo "signing_keys = replication:nhid-token-1:replicator" >>bad.conf
check_fails "signing_keys naming the token-signing key is refused" "one of nhid's own keys" "$NHID" --config bad.conf --check
cp "$D/nhid.conf" bad.conf
echo "signing_keys = replication:nhid-sign-replication:replicator, other:nhid-sign-replication:replicator" >>bad.conf
check_fails "one key for two purposes is refused" "serves two purposes" "$NHID" --config bad.conf --check
cp "$D/nhid.conf" bad.conf
echo "signing_keys = Replication:nhid-sign-replication:replicator" >>bad.conf
check_fails "a malformed purpose is refused, naming it" "purpose 'Replication'" "$NHID" --config bad.conf --check
cp "$D/nhid.conf" bad.conf
echo "signing_keys = replication:nhid-sign-nothere:replicator" >>bad.conf
check_fails "a signing key missing from the token stops startup and names the fix" "nhictl key create --label nhid-sign-nothere" \
	"$NHID" --config bad.conf

cp "$D/nhid-up.conf" "$D/nhid-sign.conf"
cat >>"$D/nhid-sign.conf" <<EOF
signing_keys = replication:nhid-sign-replication:replicator, export:nhid-sign-export:replicator:resolver
EOF
start_nhid "$D/nhid-sign.conf"

b64() { printf '%s' "$1" | base64 -w0 | tr '+/' '-_' | tr -d '='; }
# raw R||S (base64url) <-> DER, pure python: the crypto is openssl's
raw2der() { python3 -c '
import base64,sys
s=sys.argv[1]; s+="="*(-len(s)%4); r=base64.urlsafe_b64decode(s)
def i(b):
    b=b.lstrip(b"\0") or b"\0"
    if b[0]&0x80: b=b"\0"+b
    return b"\x02"+bytes([len(b)])+b
q=i(r[:32])+i(r[32:]); sys.stdout.buffer.write(b"\x30"+bytes([len(q)])+q)' "$1"; }
der2raw() { python3 -c '
import base64,sys
d=open(sys.argv[1],"rb").read(); p=2; out=b""
for _ in range(2):
    n=d[p+1]; v=d[p+2:p+2+n]; p+=2+n; out+=v.lstrip(b"\0").rjust(32,b"\0")
print(base64.urlsafe_b64encode(out).decode().rstrip("="))' "$1"; }
signing_input() { printf 'nhid-sign-v1\0%s\0%s' "$1" "$2"; } # purpose payload

# --- POST /v1/sign ---
MSG='replicate: shard 7 of 12, epoch 4411'
check "replicator signs a payload with the replication key" \
	bash -c "curl_as replicator /v1/sign -d '{\"key\":\"replication\",\"payload\":\"$(b64 "$MSG")\"}' >sign.json && grep -q '\"alg\":\"ES256\"' sign.json"
SIG=$(python3 -c 'import json;print(json.load(open("sign.json"))["sig"])')
KID=$(python3 -c 'import json;print(json.load(open("sign.json"))["kid"])')
raw2der "$SIG" >sig.der
signing_input replication "$MSG" >input.bin
check "openssl verifies the signature with the key's public key over 'nhid-sign-v1\\0replication\\0payload'" \
	openssl dgst -sha256 -verify repl.pub -signature sig.der input.bin
signing_input export "$MSG" >input-export.bin
check "... and not as the same bytes for another purpose (domain separation)" \
	bash -c "! openssl dgst -sha256 -verify repl.pub -signature sig.der input-export.bin"
check_fails "a caller without the role is refused (403)" '"error":"forbidden"' \
	curl_as demo-agent /v1/sign -d "{\"key\":\"replication\",\"payload\":\"$(b64 x)\"}"
check_fails "an unknown purpose is 400 unknown_key" '"error":"unknown_key"' \
	curl_as replicator /v1/sign -d "{\"key\":\"nope\",\"payload\":\"$(b64 x)\"}"
check_fails "payload that is not base64url is 400 naming it" "'payload' must be a base64url string" \
	curl_as replicator /v1/sign -d '{"key":"replication","payload":"a+b/"}'
check_fails "an unknown member is 400" "unknown member 'extra'" \
	curl_as replicator /v1/sign -d "{\"key\":\"replication\",\"payload\":\"\",\"extra\":1}"
check "an empty payload is signed (the purpose still binds it)" \
	bash -c "curl_as replicator /v1/sign -d '{\"key\":\"replication\",\"payload\":\"\"}' | grep -q '\"sig\"'"

# --- POST /v1/verify: this server's key ---
vbody() { printf '{"key":"%s","payload":"%s","sig":"%s"%s}' "$1" "$(b64 "$2")" "$3" "${4:+,\"kid\":\"$4\"}"; }
check "verify accepts the signature (signer local)" \
	bash -c "curl_as replicator /v1/verify -d '$(vbody replication "$MSG" "$SIG")' | grep -q '\"valid\":true.*\"signer\":\"local\"'"
check "... also when the kid is named" \
	bash -c "curl_as replicator /v1/verify -d '$(vbody replication "$MSG" "$SIG" "$KID")' | grep -q '\"valid\":true'"
check_fails "a changed payload is 422 signature_mismatch" '"reason":"signature_mismatch"' \
	curl_as replicator /v1/verify -d "$(vbody replication "$MSG!" "$SIG")"
check_fails "the replication signature does not verify for purpose export" '"error":"invalid_signature"' \
	curl_as inference-gw /v1/verify -d "$(vbody export "$MSG" "$SIG")"
check_fails "a sig of the wrong length is 400" "64 bytes R||S" \
	curl_as replicator /v1/verify -d "{\"key\":\"replication\",\"payload\":\"\",\"sig\":\"$(b64 short)\"}"
check_fails "the verify role is enforced per key (export: resolver only)" "the 'resolver' role is required to verify" \
	curl_as replicator /v1/verify -d "$(vbody export "$MSG" "$SIG")"

# --- a replication peer's signature (another site's key, from the trust bundle) ---
PMSG='peer epoch 4412 committed'
signing_input replication "$PMSG" >peer-input.bin
openssl dgst -sha256 -sign peer.key -out peer.der peer-input.bin
PSIG=$(der2raw peer.der)
check "a peer's signature verifies by its kid from the trust bundle (signer peer)" \
	bash -c "curl_as replicator /v1/verify -d '$(vbody replication "$PMSG" "$PSIG" "$PEER_KID")' | grep -q '\"signer\":\"peer\"'"
check_fails "... without the kid it is checked against the local key and refused" '"reason":"signature_mismatch"' \
	curl_as replicator /v1/verify -d "$(vbody replication "$PMSG" "$PSIG")"
check_fails "a kid in neither the server nor the bundle is 422 unknown_kid" '"reason":"unknown_kid"' \
	curl_as replicator /v1/verify -d "$(vbody replication "$PMSG" "$PSIG" "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")"

# --- revoking the peer's kid through a signed revocation package ---
printf '{"kids":["%s"]}' "$PEER_KID" >rev.json
pkg rev-1.json revocation 1 rev.json
drop rev-1.json
check "the revocation package is applied" wait_for 20 test -e "$D/state/applied/rev-1.json"
check_fails "the revoked peer kid no longer verifies (422 kid_revoked)" '"reason":"kid_revoked"' \
	curl_as replicator /v1/verify -d "$(vbody replication "$PMSG" "$PSIG" "$PEER_KID")"

# --- POST /v1/manifests/verify ---
mkdir -p model/shards
head -c 100000 /dev/urandom >model/shards/a.bin
head -c 5000 /dev/urandom >model/shards/b.bin
echo '{"arch":"demo"}' >model/config.json
"$NHICTL" manifest sign --name demo-model -o m.json --token cust1 --key models --pin-file c1.pin model >/dev/null
"$NHICTL" manifest sign --name demo-model -o rogue.json --token cust1 --key rogue --pin-file c1.pin model >/dev/null
# the caller's list of what it loads: made here with python's hashlib, in its own order
listing() { python3 - "$1" <<'PY'
import hashlib, json, os, sys
root = sys.argv[1]; out = []
for d, _, fs in os.walk(root):
    for f in fs:
        p = os.path.join(d, f); b = open(p, "rb").read()
        out.append({"sha256": hashlib.sha256(b).hexdigest(), "size": len(b), "path": os.path.relpath(p, root)})
print(json.dumps(out[::-1]))
PY
}
mbody() { printf '{"manifest":%s,"files":%s}' "$(cat "$1")" "$2"; }
mbody m.json "$(listing model)" >req-ok.json
check "the files match the signed manifest (200, valid)" \
	bash -c "curl_as model-loader /v1/manifests/verify --data-binary @req-ok.json | grep -q '\"valid\":true,\"files\":3'"
echo tampered >>model/shards/b.bin
rm model/config.json
echo extra >model/shards/c.bin
mbody m.json "$(listing model)" >req-bad.json
check_fails "a changed file is named in differs" '"differs":["shards/b.bin"]' \
	curl_as model-loader /v1/manifests/verify --data-binary @req-bad.json
check_fails "... a missing one in missing" '"missing":["config.json"]' \
	curl_as model-loader /v1/manifests/verify --data-binary @req-bad.json
check_fails "... an extra one in extra" '"extra":["shards/c.bin"]' \
	curl_as model-loader /v1/manifests/verify --data-binary @req-bad.json
mbody rogue.json "$(python3 -c 'import json,sys; print(json.dumps(json.load(open("req-ok.json"))["files"]))')" >req-rogue.json
check_fails "a manifest signed by a key outside the bundle is 422 invalid_signature" '"error":"invalid_signature"' \
	curl_as model-loader /v1/manifests/verify --data-binary @req-rogue.json
check_fails "a path given twice is 400" "is given twice" curl_as model-loader /v1/manifests/verify -d \
	"$(mbody m.json '[{"path":"a","size":1,"sha256":"'"$(printf '%064d' 0)"'"},{"path":"a","size":1,"sha256":"'"$(printf '%064d' 0)"'"}]')"
check_fails "a path with .. is 400" "not a clean relative path" curl_as model-loader /v1/manifests/verify -d \
	"$(mbody m.json '[{"path":"../etc/passwd","size":1,"sha256":"'"$(printf '%064d' 0)"'"}]')"
check_fails "manifests/verify needs the manifest-verifier role" "the 'manifest-verifier' role is required" \
	curl_as replicator /v1/manifests/verify --data-binary @req-ok.json
check_fails "GET on /v1/sign is 405" '"error":"method_not_allowed"' curl_as replicator /v1/sign

# --- metrics and audit ---
check "metrics count the sign, verify and manifest_verify routes" bash -c \
	"curl_as admin /v1/metrics | grep -q 'route=\"sign\"' && curl_as admin /v1/metrics | grep -q 'route=\"manifest_verify\"'"
stop_nhid
check "nhid stopped cleanly" test "$NHID_RC" -eq 0
check "the audit log verifies" "$NHICTL" audit verify "$D/state/audit.jsonl" --pubkey "$D/audit.pub.pem"
check "payload_signed records carry the payload's SHA-256 and the key" bash -c \
	"grep '\"payload_signed\"' '$D/state/audit.jsonl' | grep -q \"\\\"payload_sha256\\\":\\\"$(printf '%s' "$MSG" | sha256sum | cut -c1-64)\\\"\""
check "no payload, signature or peer message appears in the audit log" bash -c \
	"! grep -qF -e '$(b64 "$MSG")' -e '$SIG' -e 'shard 7 of 12' -e '$PSIG' '$D/state/audit.jsonl'"
check "refusals are audited with their reason" bash -c \
	"grep -q '\"signature_refused\".*\"reason\":\"kid_revoked\"' '$D/state/audit.jsonl' && grep -q '\"manifest_refused\".*\"reason\":\"mismatch\"' '$D/state/audit.jsonl'"
finish
