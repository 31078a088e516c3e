#!/usr/bin/env bash
# Token-signing-key rotation through the diode (issue #6 item 4): a token-keys package
# carries a new key wrapped under nhid-wrap; nhid unwraps it into the token as a
# non-extractable key and publishes its kid in /v1/jwks at once, while the previous key
# keeps signing until sign_after; then new tokens carry the new kid and the old tokens
# still verify; a restart keeps all of it; a later package retires the old key (its
# tokens then fail kid_unknown). Refused with nothing left behind: a wrapped key that is
# not the public key it claims, a label of another nhid key, revoking the signing key.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/server_lib.sh"
deploy_in_t
UPIN=$(cat "$D/user.pin")

make_custodians 1
make_bundle 1 1
updates_on

newkey() { pkcs11-tool --module $MOD --token-label nhid-dev --login --pin "$UPIN" --keypairgen \
	--key-type EC:prime256v1 --label "$1" --extractable --sensitive >/dev/null 2>&1; }
has_label() { pkcs11-tool --module $MOD --token-label nhid-dev --login --pin "$UPIN" --list-objects 2>/dev/null | grep -q "label: *$1\$"; }
kids() { curl_as demo-agent /v1/jwks | python3 -c 'import json,sys; print(" ".join(k["kid"] for k in json.load(sys.stdin)["keys"]))'; }
new_token() { curl_as demo-agent /v1/tokens -d '{"aud":"inference"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'; }
kid_of() { python3 -c 'import base64,json,sys; h=sys.argv[1].split(".")[0]; h+="="*(-len(h)%4); print(json.loads(base64.urlsafe_b64decode(h))["kid"])' "$1"; }
resolve() { local t=$1; shift; curl_as_raw inference-gw /v1/resolve -d "{\"token\":\"$t\"}" "$@"; }
export -f kids new_token kid_of resolve has_label
export UPIN MOD

start_nhid "$D/nhid-up.conf"
K1=$(kids)
T1=$(new_token)
check "before: one token key published, and it signs" test "$(kid_of "$T1")" = "$K1"

# --- the token-keys body: new key wrapped in the ceremony token ---
newkey tok-src
tkargs=(rotation token-keys --config "$D/ceremony.conf" --pin-file "$D/user.pin" --new tok-src --new-label nhid-token-2)
check_fails "a bad --signing is refused, naming it" "--signing nhid-token-9 is neither" \
	"$NHICTL" "${tkargs[@]}" --keep nhid-token-1 --signing nhid-token-9 --out bad1.body
check_fails "--previous that is not kept is refused" "--previous nhid-token-9 must also be given with --keep" \
	"$NHICTL" "${tkargs[@]}" --keep nhid-token-1 --previous nhid-token-9 --sign-in 20 --out bad2.body
echo taken >taken.body
check_fails "an existing --out is refused" "--out taken.body already exists" \
	"$NHICTL" "${tkargs[@]}" --keep nhid-token-1 --previous nhid-token-1 --sign-in 20 --out taken.body
check "... and after all three the extractable key is still in the token, no body written" \
	bash -c "has_label tok-src && [ ! -e bad1.body ] && [ ! -e bad2.body ] && [ \"\$(cat taken.body)\" = taken ]"
check "nhictl rotation token-keys: the new key wrapped under nhid-wrap, nhid-token-1 signing for 20 more s" \
	"$NHICTL" rotation token-keys --config "$D/ceremony.conf" --pin-file "$D/user.pin" --new tok-src \
	--new-label nhid-token-2 --keep nhid-token-1 --previous nhid-token-1 --sign-in 20 --out tk1.body
check "the extractable source key is gone from the token" bash -c "! has_label tok-src"
check_fails "--previous without a time is a usage error" "--previous goes with" \
	"$NHICTL" rotation token-keys --keep nhid-token-1 --previous nhid-token-1 --signing nhid-token-1 --out x.body

# --- refused packages leave nothing behind ---
python3 - tk1.body bad-pub.body <<'PY'
import json, subprocess, sys
b = json.load(open(sys.argv[1]))
other = subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout"], capture_output=True).stdout
pub = subprocess.run(["openssl", "ec", "-pubout"], input=other, capture_output=True).stdout.decode()
b["keys"][1]["public_key_pem"] = pub
b["keys"][1]["label"] = "nhid-token-x"
b["signing_key"] = "nhid-token-x"
json.dump(b, open(sys.argv[2], "w"))
PY
pkg bad-pub.json token-keys 1 bad-pub.body
drop bad-pub.json
check "a wrapped key that is not the public key it names is rejected" wait_for 20 test -e "$D/state/rejected/bad-pub.json"
check "... saying so" grep -q "does not match public_key_pem" "$D/state/rejected/bad-pub.json.reason"
check "... and the key it unwrapped is removed from the token" bash -c "! has_label nhid-token-x"
echo '{"keys":[{"label":"nhid-token-1"},{"label":"nhid-tls"}],"signing_key":"nhid-token-1"}' >bad-label.body
pkg bad-label.json token-keys 1 bad-label.body
drop bad-label.json
check "a body naming the TLS key as a token key is rejected" wait_for 20 test -e "$D/state/rejected/bad-label.json"
check "... naming it" grep -q "'nhid-tls' is one of nhid's TLS" "$D/state/rejected/bad-label.json.reason"
check "nothing changed: still one key published" test "$(kids)" = "$K1"

# --- the rotation ---
pkg tk1.json token-keys 1 tk1.body
drop tk1.json
check "the token-keys package is applied" wait_for 20 test -e "$D/state/applied/tk1.json"
check "at once, /v1/jwks publishes both kids" wait_for 5 bash -c '[ $(kids | wc -w) = 2 ]'
K2=$(kids | tr " " "\n" | grep -vxF -e "$K1") # -e: a kid (base64url) may begin with "-"
check "... while the previous key still signs (before sign_after)" bash -c "[ \"\$(kid_of \$(new_token))\" = '$K1' ]"
access_of() { pkcs11-tool --module $MOD --token-label nhid-dev --login --pin "$UPIN" --list-objects --type privkey 2>/dev/null |
	awk -v l="$1" '$1=="label:" {on=($2==l)} on && /Access:/ {print; exit}'; }
export -f access_of
check "the new key is in the token, sensitive and not extractable" bash -c \
	'a=$(access_of nhid-token-2); echo "$a"; echo "$a" | grep -q sensitive && ! echo "$a" | grep -qE "(^|[ ,:])extractable"'
check "after sign_after new tokens carry the new kid" wait_for 30 bash -c "[ \"\$(kid_of \$(new_token))\" = '$K2' ]"
T2=$(new_token)
check "a token of the old key still resolves" bash -c "resolve '$T1' | grep -q '\"sub\":\"demo-agent\"'"
check "a token of the new key resolves" bash -c "resolve '$T2' | grep -q '\"sub\":\"demo-agent\"'"
curl_as demo-agent /v1/jwks >jwks2.json
(umask 077; printf '%s\n' "$T2" >t2.tok)
check "nhictl token verify (offline, the served JWKS) accepts the new token" \
	"$NHICTL" token verify --jwks jwks2.json --iss https://nhid.local --aud inference --token-file t2.tok

# --- revoking the key that signs is refused ---
printf '{"kids":["%s"]}' "$K2" >rev.body
pkg rev.json revocation 1 rev.body
drop rev.json
check "a revocation of the signing key's kid is rejected" wait_for 20 test -e "$D/state/rejected/rev.json"
check "... naming the fix" grep -q "rotate the token keys first" "$D/state/rejected/rev.json.reason"

# --- restart: the applied keys stay in service ---
stop_nhid
start_nhid "$D/nhid-up.conf"
check "after a restart both kids are published" test "$(kids | wc -w)" = 2
check "... and the new key signs" bash -c "[ \"\$(kid_of \$(new_token))\" = '$K2' ]"

# --- retire the old key ---
check "nhictl rotation token-keys: retire nhid-token-1" \
	"$NHICTL" rotation token-keys --keep nhid-token-2 --signing nhid-token-2 --out tk2.body
pkg tk2.json token-keys 2 tk2.body
drop tk2.json
check "the retiring package is applied" wait_for 20 test -e "$D/state/applied/tk2.json"
check "only the new kid is published" wait_for 5 bash -c "[ \"\$(kids)\" = '$K2' ]"
check_fails "a token of the retired key no longer resolves (kid_unknown)" "kid_unknown" resolve "$T1" --fail-with-body
check "tokens of the new key still resolve" bash -c "resolve '$T2' | grep -q '\"sub\":\"demo-agent\"'"
# nhictl airgap check looks at the token keys nhid uses: the committed package's, not config token_keys
# (its other steps depend on this host's network; only the key lines count)
"$NHICTL" airgap check --config "$D/nhid-up.conf" --allow-default-route >airgap.out 2>&1
check "airgap check names the committed token-keys package it checks" \
	grep -qF "token keys of the committed token-keys package (version 2), not config token_keys" airgap.out
check "... checks the signing key in force, nhid-token-2" \
	grep -qE "token signing +'nhid-token-2': present, sensitive, not extractable" airgap.out
check "... and not the retired config key nhid-token-1" bash -c "! grep -q \"'nhid-token-1'\" airgap.out"
stop_nhid
check "the audit log verifies" "$NHICTL" audit verify "$D/state/audit.jsonl" --pubkey "$D/audit.pub.pem"
check "token_keys_rotated is audited with the kids" grep -q "\"event\":\"token_keys_rotated\".*\"kid\":\"$K2\"" "$D/state/audit.jsonl"
# a signing_keys purpose naming the token key in force (the committed package's, not config token_keys)
cp "$D/nhid-up.conf" sign-tk.conf
echo "signing_keys = export:nhid-token-2:admin" >>sign-tk.conf
check_fails "signing_keys naming the token key in force (nhid-token-2, of the committed package) stops startup" \
	"is a token key in force" timeout 20 "$NHID" --config sign-tk.conf
finish
