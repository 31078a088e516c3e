#!/usr/bin/env bash
# Signed updates, trust bundle rotation and model manifests with nhictl against real
# SoftHSM2 tokens: four custodians, each with their own token and key. Threshold
# refusals, every rejection reason, apply into a state dir, crash safety (an _exit
# injected at every step of apply, and kill -9 at random moments), a 3-bundle root
# rotation chain and a skipped version.
. "$(dirname "$0")/lib.sh"
NHICTL=$BIN/nhictl
cd "$T"
NOW=$(date +%s)
DAY=86400

# --- four custodians, one token each ---
for i in 1 2 3 4; do
	pinfile c$i.pin "custodian-$i-pin"
	pinfile so$i.pin "so-$i-pin"
	"$NHICTL" hsm-init --label cust$i --so-pin-file so$i.pin --pin-file c$i.pin >/dev/null
	pkcs11-tool --module $MOD --token-label cust$i --login --pin "custodian-$i-pin" \
		--keypairgen --key-type EC:prime256v1 --label signer >/dev/null 2>&1
done
for i in 1 2 3 4; do
	check "custodian $i exports its public key from its token" \
		bash -c "'$NHICTL' update pubkey --token cust$i --key signer --pin-file c$i.pin >c$i.pub && grep -q 'BEGIN PUBLIC KEY' c$i.pub"
done
sign() { # sign TYPE FILE custodian...
	local t=$1 f=$2; shift 2
	for i in "$@"; do "$NHICTL" "$t" sign --token cust$i --key signer --pin-file c$i.pin "$f" >/dev/null || return 1; done
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 30 \
	-subj "/CN=update test root" >/dev/null 2>&1
echo '{"keys":[]}' >jwks.json

# --- trust bundle v1 (signers 1,2,3; threshold 2; manifest key = custodian 4) ---
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp256k1 2>/dev/null | openssl pkey -pubout -out k1.pub
check_fails "a secp256k1 signer key (256 bits, not P-256) is refused, naming the file" "k1.pub is not an EC P-256 key" \
	"$NHICTL" bundle create --version 1 --expires-at $((NOW + DAY)) --ca ca.crt --jwks jwks.json --signer c1.pub \
	--signer k1.pub --threshold 1 -o k1-bundle.json
check "... and writes nothing" test ! -e k1-bundle.json
check "bundle create v1" "$NHICTL" bundle create --version 1 --expires-at $((NOW + 365 * DAY)) --ca ca.crt \
	--jwks jwks.json --signer c1.pub --signer c2.pub --signer c3.pub --threshold 2 --manifest-key c4.pub -o b1.json
PIN=$("$NHICTL" bundle fingerprint b1.json)
check_fails "an unsigned bundle does not verify" "self_threshold" "$NHICTL" bundle verify --pin "$PIN" b1.json
sign bundle b1.json 1
check_fails "a bundle signed by 1 of threshold 2 does not verify" "1 valid signature(s) by its own" \
	"$NHICTL" bundle verify --pin "$PIN" b1.json
sign bundle b1.json 2
check "bundle v1 verifies from its pinned fingerprint" "$NHICTL" bundle verify --pin "$PIN" b1.json
check_fails "a wrong pin is refused" "(pin)" "$NHICTL" bundle verify --pin "$(printf '0%.0s' {1..64})" b1.json
check "signing leaves no temp file behind" bash -c "! ls | grep -q '\.tmp\.'"

# --- state dir ---
mkdir -p state incoming
check "update init installs the pinned bundle" "$NHICTL" update init --state-dir state --bundle b1.json --pin "$PIN"
check_fails "update init refuses to replace it" "already exists" \
	"$NHICTL" update init --state-dir state --bundle b1.json --pin "$PIN"

mk() { # mk OUT KIND VERSION ID [extra create args]
	local out=$1 kind=$2 v=$3 id=$4; shift 4
	# a body nhid accepts: a revocation set (the others are only stored, or held for nhid)
	printf '{"agents":["agent-of-%s-v%s"]}\n' "$kind" "$v" >body.$id
	rm -f "$out"
	"$NHICTL" update create --kind "$kind" --version "$v" --id "$id" --body body.$id --expires-in $DAY -o "$out" "$@" >/dev/null
}

# --- threshold ---
mk p1.json revocation 1 rev-1
check_fails "an unsigned package is refused (threshold)" "(threshold): 0 valid" "$NHICTL" update verify --state-dir state p1.json
sign update p1.json 1
check_fails "M-1 signatures are refused" "(threshold): 1 valid" "$NHICTL" update verify --state-dir state p1.json
sign update p1.json 1
check "re-signing with the same key replaces its signature" test "$(grep -c keyid p1.json)" -eq 1
python3 - p1.json p1dup.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["signatures"] = d["signatures"] * 3
json.dump(d, open(sys.argv[2], "w"))
PY
check_fails "M copies of one key's signature are refused" "(threshold): 1 valid" "$NHICTL" update verify --state-dir state p1dup.json
cp p1.json p1x.json
sign update p1x.json 4
check_fails "a signer outside the bundle is ignored" "(threshold): 1 valid" "$NHICTL" update verify --state-dir state p1x.json
sign update p1.json 3
check "M distinct signatures are accepted" bash -c "'$NHICTL' update verify --state-dir state p1.json | grep -q '\"signers\":2'"
# update verify with a bundle file given by hand: only from a pin, as manifest verify (below)
"$NHICTL" bundle create --version 1 --expires-at $((NOW + 365 * DAY)) --ca ca.crt --jwks jwks.json \
	--signer c4.pub --threshold 1 -o forged-u.json >/dev/null
sign bundle forged-u.json 4
check_fails "update verify refuses a --bundle file without a pin (a forged bundle's own signer accepted p1x)" \
	"--bundle needs --pin" "$NHICTL" update verify --bundle forged-u.json p1x.json
check_fails "... with the site's pin the forged bundle is refused (pin)" "(pin)" \
	"$NHICTL" update verify --pin "$PIN" --bundle forged-u.json p1x.json
check_fails "... a pin that is not 64 lower-case hex digits is refused, naming the form" "64 lower-case hex" \
	"$NHICTL" update verify --pin "${PIN^^}" --bundle b1.json p1.json
check_fails "... --pin with --state-dir is refused" "--pin goes with --bundle" \
	"$NHICTL" update verify --state-dir state --pin "$PIN" p1.json
check "update verify accepts p1 from the pinned bundle v1 file" \
	bash -c "'$NHICTL' update verify --pin '$PIN' --bundle b1.json p1.json | grep -q '\"signers\":2'"
python3 - p1.json ptamper.json <<'PY'
import base64, json, sys
d = json.load(open(sys.argv[1])); p = d["payload"]
raw = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
raw["body"] = base64.urlsafe_b64encode(b"revoke everyone\n").decode().rstrip("=")
d["payload"] = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")
json.dump(d, open(sys.argv[2], "w"))
PY
check_fails "a tampered body is refused (its signatures no longer verify)" "(threshold): 0 valid" \
	"$NHICTL" update verify --state-dir state ptamper.json

# --- apply ---
cp p1dup.json incoming/
check_fails "apply: copies of one signature go to rejected/" "[threshold]" "$NHICTL" update apply --state-dir state incoming/p1dup.json
check "the rejected package has a .reason naming the cause" grep -q "rejected: threshold" state/rejected/p1dup.json.reason
cp p1.json incoming/
check "apply: M distinct signatures are applied" "$NHICTL" update apply --state-dir state incoming/p1.json
check "the applied package is in applied/ with its record" \
	bash -c "[ -f state/applied/p1.json ] && grep -q 'applied: revocation version 1' state/applied/p1.json.reason && [ ! -e incoming/p1.json ]"
check "the body is installed" cmp body.rev-1 state/bodies/revocation-1
cp p1dup.json incoming/
check "the committed payload again, whatever its signatures, is found committed and only moved" bash -c \
	"'$NHICTL' update apply --state-dir state incoming/p1dup.json && grep -q 'found committed' state/applied/p1dup.json.reason"

mk p1b.json revocation 1 rev-1b; sign update p1b.json 1 2; cp p1b.json incoming/
check_fails "a replayed version is refused" "(replayed)" "$NHICTL" update apply --state-dir state incoming/p1b.json
mk p2.json revocation 2 rev-2; sign update p2.json 2 3
mk p0.json revocation 1 rev-0; sign update p0.json 2 3
cp p2.json incoming/; "$NHICTL" update apply --state-dir state incoming/p2.json >/dev/null
cp p0.json incoming/
check_fails "an older version is refused" "(rollback)" "$NHICTL" update apply --state-dir state incoming/p0.json
mk pexp.json revocation 3 rev-exp --created-at $((NOW - 3 * DAY)); sign update pexp.json 1 2
cp pexp.json incoming/
check_fails "an expired package is refused" "(expired)" "$NHICTL" update apply --state-dir state incoming/pexp.json
check_fails "an unknown kind cannot be created" "unknown update kind 'firmware'" \
	"$NHICTL" update create --kind firmware --version 1 --id x --body body.rev-1 --expires-in 60 -o never.json
check_fails "... and the error lists every kind, token-keys too" \
	"(known: cert-rotation, trust-bundle, revocation, identity-backup, model-manifest, token-keys)" \
	"$NHICTL" update create --kind firmware --version 1 --id x --body body.rev-1 --expires-in 60 -o never.json
check "update --help lists every kind" bash -c \
	"'$NHICTL' update --help | grep -qF 'KIND: cert-rotation, trust-bundle, revocation, identity-backup, model-manifest, token-keys.'"
check_fails "a version out of range is named with its range, nothing written" "--version '0' must be a whole number from 1 to" \
	"$NHICTL" update create --kind revocation --version 0 --id x --body body.rev-1 --expires-in 60 -o never.json
check_fails "a time with trailing bytes is refused, naming it" "--expires-in '60s' must be a whole number" \
	"$NHICTL" update create --kind revocation --version 1 --id x --body body.rev-1 --expires-in 60s -o never.json
check "... and neither wrote a package" test ! -e never.json
python3 - <<'PY'
import base64, hashlib, json
body = b"x"
p = {"id": "fw", "kind": "firmware", "version": 1, "created_at": 1, "expires_at": 4102444800,
     "body": base64.urlsafe_b64encode(body).decode().rstrip("="), "body_sha256": hashlib.sha256(body).hexdigest()}
d = {"payload": base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("="), "signatures": []}
json.dump(d, open("pkind.json", "w"))
PY
sign update pkind.json 1 2
cp pkind.json incoming/
check_fails "a signed package of an unknown kind is refused" "(kind_unknown)" "$NHICTL" update apply --state-dir state incoming/pkind.json
check_fails "the clock set back beyond the skew is refused, saying so" "set the clock forward" \
	"$NHICTL" update verify --state-dir state --now $((NOW - DAY)) p2.json
# --- offline apply commits only what nhid would accept ---
mkb() { # mkb OUT KIND VERSION ID BODY: a package of BODY signed by custodians 1 and 2
	printf '%s' "$5" >body.$4
	rm -f "$1"
	"$NHICTL" update create --kind "$2" --version "$3" --id "$4" --body body.$4 --expires-in $DAY -o "$1" >/dev/null
	sign update "$1" 1 2
}
mkb incoming/pbogus.json revocation 3 rev-bogus '{"bogus":1}'
check_fails "apply: a revocation body nhid refuses is refused with nhid's message" \
	"revocation: unknown member 'bogus'" "$NHICTL" update apply --state-dir state incoming/pbogus.json
check "... it is in rejected/ as prepare_failed, nothing committed" bash -c \
	"grep -q 'rejected: prepare_failed' state/rejected/pbogus.json.reason && [ ! -e state/bodies/revocation-3 ]"
mkb incoming/pkids.json revocation 3 rev-kids "{\"kids\":[\"$(printf 'k%.0s' {1..43})\"]}"
check_fails "apply: a revocation that revokes kids is left to nhid (only it knows its signing kids)" \
	"let nhid apply it" "$NHICTL" update apply --state-dir state incoming/pkids.json
check "... left in place, neither moved nor committed" bash -c \
	"[ -f incoming/pkids.json ] && [ ! -e state/rejected/pkids.json ] && [ ! -e state/bodies/revocation-3 ]"
rm incoming/pkids.json
mkb incoming/pcr.json cert-rotation 1 cr-1 '{"cert_chain_pem":"x","wrapped_key_b64":"x","key_label":"tls-2"}'
mkb incoming/ptk.json token-keys 1 tk-1 '{"keys":[{"label":"tok-1"}],"signing_key":"tok-1"}'
"$NHICTL" update scan --state-dir state --incoming incoming >scan.out 2>&1; rc=$?
check "scan: cert-rotation and token-keys need nhid's token: refused, left in place, nothing committed" bash -c \
	"[ $rc -eq 1 ] && grep -q 'cert-rotation packages need nhid.s token' scan.out \
	 && grep -q 'token-keys packages need nhid.s token' scan.out && grep -q '0 applied, 0 rejected, 2 failed' scan.out \
	 && [ -f incoming/pcr.json ] && [ -f incoming/ptk.json ] && [ ! -e state/bodies/cert-rotation-1 ]"
rm incoming/pcr.json incoming/ptk.json
mkb incoming/pcrbad.json cert-rotation 1 cr-bad '{"bogus":1}'
check_fails "apply: a cert-rotation body nhid refuses is refused with nhid's message" \
	"cert-rotation: unknown member 'bogus'" "$NHICTL" update apply --state-dir state incoming/pcrbad.json
check "refusals left the state at revocation v2" \
	python3 -c "import json;s=json.load(open('state/update-state.json'));assert s['kinds']['revocation']['version']==2"

# --- crash safety: _exit at every step of apply, then resume ---
ver() { python3 -c "import json,sys
try: print(json.load(open('$1/update-state.json'))['kinds']['revocation']['version'])
except FileNotFoundError: print(0)"; }
mk p3.json revocation 3 rev-3; sign update p3.json 1 3
for k in 1 2 3 4 5; do
	rm -rf cs; cp -a state cs; mkdir -p cs/in; cp p3.json cs/in/
	NHI_TEST_UPDATE_CRASH_AT=$k "$NHICTL" update apply --state-dir cs cs/in/p3.json >/dev/null 2>&1; rc=$?
	v=$(ver cs)
	check "crash at step $k: apply died (rc=$rc) and the state is old or new (v$v)" \
		bash -c "[ $rc -eq 86 ] && { [ $v -eq 2 ] || [ $v -eq 3 ]; }"
	"$NHICTL" update scan --state-dir cs --incoming cs/in >cs.out 2>&1
	check "crash at step $k: a restart finishes cleanly (v3 applied once, nothing left in incoming)" \
		bash -c "[ \$(python3 -c \"import json;print(json.load(open('cs/update-state.json'))['kinds']['revocation']['version'])\") -eq 3 ] \
			&& [ -z \"\$(ls cs/in)\" ] && [ -f cs/applied/p3.json ] && [ ! -e cs/applied/p3.json.1 ] && [ ! -e cs/rejected/p3.json ]"
done
bad=0
for r in $(seq 1 12); do
	rm -rf ks; cp -a state ks; mkdir -p ks/in; cp p3.json ks/in/
	"$NHICTL" update apply --state-dir ks ks/in/p3.json >/dev/null 2>&1 &
	pid=$!
	sleep "0.$((RANDOM % 40))"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
	v=$(ver ks)
	{ [ "$v" -eq 2 ] || [ "$v" -eq 3 ]; } || bad=$((bad + 1))
	"$NHICTL" update scan --state-dir ks --incoming ks/in >/dev/null 2>&1
	[ "$(ver ks)" -eq 3 ] && [ -z "$(ls ks/in)" ] && [ ! -e ks/rejected/p3.json ] || bad=$((bad + 1))
done
check "kill -9 at 12 random moments: old-or-new every time, and every restart completes" test $bad -eq 0

# --- root rotation: v1 -> v2 -> v3 ---
check "bundle create v2 (signers 2,3,4)" "$NHICTL" bundle create --version 2 --expires-at $((NOW + 365 * DAY)) \
	--ca ca.crt --jwks jwks.json --signer c2.pub --signer c3.pub --signer c4.pub --threshold 2 --manifest-key c4.pub -o b2.json
cp b2.json b2own.json; sign bundle b2own.json 3 4
check_fails "v2 signed only by its own new keys is refused (prev_threshold)" "(prev_threshold)" \
	"$NHICTL" bundle verify --pin "$PIN" b1.json b2own.json
sign bundle b2.json 1 2 4
check "chain v1 -> v2 verifies" "$NHICTL" bundle verify --pin "$PIN" b1.json b2.json
check "bundle create v3 (signer 4 alone)" "$NHICTL" bundle create --version 3 --expires-at $((NOW + 365 * DAY)) \
	--ca ca.crt --jwks jwks.json --signer c4.pub --threshold 1 -o b3.json
sign bundle b3.json 2 3 4
check "root rotation chain of 3 bundles verifies" bash -c "'$NHICTL' bundle verify --pin '$PIN' b1.json b2.json b3.json | grep -q 'v3 verified from the pinned v1'"
check_fails "a skipped version (v1 -> v3) does not verify" "never skipped" "$NHICTL" bundle verify --pin "$PIN" b1.json b3.json
check_fails "a chain not starting at the pin does not verify" "(pin)" "$NHICTL" bundle verify --pin "$PIN" b2.json b3.json

# --- the trust-bundle kind through the state dir ---
"$NHICTL" update create --kind trust-bundle --version 3 --id tb-3 --body b3.json --expires-in $DAY -o tb3.json >/dev/null
sign update tb3.json 1 2; cp tb3.json incoming/
check_fails "a trust-bundle package skipping a version is refused" "(bundle_chain)" \
	"$NHICTL" update apply --state-dir state incoming/tb3.json
"$NHICTL" update create --kind trust-bundle --version 2 --id tb-2 --body b2.json --expires-in $DAY -o tb2.json >/dev/null
sign update tb2.json 1 2; cp tb2.json incoming/
rm -rf tbc; cp -a state tbc; mkdir -p tbc/in; cp tb2.json tbc/in/
NHI_TEST_UPDATE_CRASH_AT=3 "$NHICTL" update apply --state-dir tbc tbc/in/tb2.json >/dev/null 2>&1
# tb2 is signed by 1,2; bundle v2's signers are 2,3,4 with threshold 2: under v2 it has 1 signature
"$NHICTL" update scan --state-dir tbc --incoming tbc/in >tbc.out 2>&1; rc=$?
check "a trust-bundle package committed before a crash is recognised under the bundle it installed, not rejected" \
	bash -c "[ $rc -eq 0 ] && grep -q '1 applied, 0 rejected' tbc.out && [ -f tbc/applied/tb2.json ] \
		&& grep -q 'found committed' tbc/applied/tb2.json.reason && [ ! -e tbc/rejected/tb2.json ]"
check "a trust-bundle package for v2 is applied" "$NHICTL" update apply --state-dir state incoming/tb2.json
mk p4.json revocation 4 rev-4; sign update p4.json 1 2; cp p4.json incoming/
check_fails "after rotation, a retired custodian's signature no longer counts" "(threshold): 1 valid" \
	"$NHICTL" update apply --state-dir state incoming/p4.json

# --- manifests ---
mkdir -p model/sub; printf 'weights' >model/w.bin; printf '{}' >model/config.json; printf 'tok' >model/sub/tok
check "manifest sign hashes the directory and signs in the token" \
	"$NHICTL" manifest sign --name llm --token cust4 --key signer --pin-file c4.pin -o model.manifest model
check "manifest verify accepts the unchanged directory" "$NHICTL" manifest verify --manifest model.manifest --state-dir state model
printf 'Weights' >model/w.bin; rm model/config.json; printf 'x' >model/sub/new
"$NHICTL" manifest verify --manifest model.manifest --state-dir state model >mv.out 2>&1; rc=$?
check "manifest verify names each file that differs, is missing or is extra" \
	bash -c "[ $rc -eq 1 ] && grep -qx 'differs w.bin' mv.out && grep -qx 'missing config.json' mv.out && grep -qx 'extra sub/new' mv.out"
ln -s /etc/passwd model/link
check_fails "a symlink in the model directory is refused, never followed" "is a symlink" \
	"$NHICTL" manifest verify --manifest model.manifest --state-dir state model
rm model/link
"$NHICTL" manifest sign --name llm --token cust1 --key signer --pin-file c1.pin -o wrongkey.manifest model >/dev/null
check_fails "a manifest not signed by a manifest key of the bundle is refused" "no valid signature" \
	"$NHICTL" manifest verify --manifest wrongkey.manifest --state-dir state model

# --- manifest verify with a bundle file given by hand: only against a pin ---
# An attacker's bundle: their own update signer and manifest key (custodian 1's, for the test), self-signed.
"$NHICTL" bundle create --version 1 --expires-at $((NOW + 365 * DAY)) --ca ca.crt --jwks jwks.json \
	--signer c1.pub --threshold 1 --manifest-key c1.pub -o forged.json >/dev/null
sign bundle forged.json 1
check_fails "manifest verify refuses a --bundle file without a pin (a forged bundle's own manifest key verified it)" \
	"--bundle needs --pin" "$NHICTL" manifest verify --manifest wrongkey.manifest --bundle forged.json model
check_fails "... and with the site's pin, the forged bundle is refused (pin)" "(pin)" \
	"$NHICTL" manifest verify --manifest wrongkey.manifest --bundle forged.json --pin "$PIN" model
"$NHICTL" bundle create --version 2 --expires-at $((NOW + 365 * DAY)) --ca ca.crt --jwks jwks.json \
	--signer c1.pub --threshold 1 --manifest-key c1.pub -o forged2.json >/dev/null
sign bundle forged2.json 1
check_fails "... and a forged v2 after the genuine v1 is refused (prev_threshold)" "(prev_threshold)" \
	"$NHICTL" manifest verify --manifest wrongkey.manifest --pin "$PIN" --bundle b1.json --bundle forged2.json model
check_fails "... a pin that is not 64 lower-case hex digits is refused, naming the form" "64 lower-case hex" \
	"$NHICTL" manifest verify --manifest wrongkey.manifest --bundle forged.json --pin "${PIN^^}" model
check_fails "... --pin with --state-dir is refused" "--pin goes with --bundle" \
	"$NHICTL" manifest verify --manifest wrongkey.manifest --state-dir state --pin "$PIN" model
"$NHICTL" manifest sign --name llm --token cust4 --key signer --pin-file c4.pin -o now.manifest model >/dev/null
check "manifest verify accepts the chain v1 -> v2 from the pin of v1" \
	"$NHICTL" manifest verify --manifest now.manifest --pin "$PIN" --bundle b1.json --bundle b2.json model
check "manifest verify accepts bundle v2 alone pinned by its own fingerprint" \
	"$NHICTL" manifest verify --manifest now.manifest --pin "$("$NHICTL" bundle fingerprint b2.json)" --bundle b2.json model
check_fails "... and, from the pin, still refuses a manifest no manifest key of the bundle signed" "no valid signature" \
	"$NHICTL" manifest verify --manifest wrongkey.manifest --pin "$PIN" --bundle b1.json --bundle b2.json model
finish
