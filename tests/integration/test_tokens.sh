#!/usr/bin/env bash
# tests/integration/test_tokens.sh — nhictl token issue/jwks/verify against a real
# SoftHSM2 token, and interop both ways with jose (npm), python3-jwcrypto and
# python3-jwt (Debian, /usr/bin/python3): our tokens verify with their libraries
# using our JWKS; tokens they sign with a key we are given (as a JWKS) verify with
# ours; RFC 7638 kids agree. Forged tokens (alg none, HS256 keyed with our public
# key PEM) are refused with their reason.
. "$NHI_ROOT/tests/integration/lib.sh"
NHICTL=$BIN/nhictl
INTEROP=$NHI_ROOT/tests/interop
PY=/usr/bin/python3
ISS=https://nhid.test
P11=/usr/lib/softhsm/libsofthsm2.so

echo "# token tests in $T"
pinfile "$T/so.pin" 87654321
pinfile "$T/user.pin" 12345678

# ---- setup: token, two ES256 keys, two agent certificates ----------------------
check "hsm-init makes the token" "$NHICTL" hsm-init --label it-tokens --so-pin-file "$T/so.pin" --pin-file "$T/user.pin"
for k in nhid-token-1 nhid-token-2; do
	# PIN on argv: acceptable in tests only (the product reads PIN files)
	check "keygen $k (EC P-256, in the token)" pkcs11-tool --module "$P11" --token-label it-tokens --login \
		--pin 12345678 --keypairgen --key-type EC:prime256v1 --label "$k"
done
for a in agent other; do
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/$a.key" \
		-out "$T/$a.pem" -subj "/CN=$a" -days 1 >/dev/null 2>&1
done
X5T=$(openssl x509 -in "$T/agent.pem" -outform DER | openssl dgst -sha256 -binary | basenc --base64url | tr -d '=')
HSM=(--hsm-token it-tokens --pin-file "$T/user.pin")

# ---- JWKS and issuance ------------------------------------------------------------
check "jwks of both keys" bash -c "'$NHICTL' token jwks ${HSM[*]} --key nhid-token-2 --key nhid-token-1 >'$T/both.jwks'"
check "jwks of the new key only" bash -c "'$NHICTL' token jwks ${HSM[*]} --key nhid-token-2 >'$T/new.jwks'"
check "jwks of the old key only" bash -c "'$NHICTL' token jwks ${HSM[*]} --key nhid-token-1 >'$T/old.jwks'"
check "jwks members are the RFC 7517 profile" $PY -c "
import json,sys
ks=json.load(open('$T/both.jwks'))['keys']
assert len(ks)==2
for k in ks: assert sorted(k)==['alg','crv','kid','kty','use','x','y'] and k['alg']=='ES256' and k['use']=='sig', k"
check_fails "jwks refuses a missing key" "no-such-key" "$NHICTL" token jwks "${HSM[@]}" --key no-such-key

issue() { # out-file key [extra args...]
	local out=$1 key=$2; shift 2
	"$NHICTL" token issue "${HSM[@]}" --key "$key" --iss "$ISS" --sub agent-7 --aud gateway --role infer \
		--role resolve --cert "$T/agent.pem" "$@" >"$out"
}
check "issue with nhid-token-1 (signed in the HSM)" issue "$T/old.tok" nhid-token-1
check "issue with nhid-token-2" issue "$T/new.tok" nhid-token-2
check "issued token is three base64url parts" grep -qE '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{86}$' "$T/new.tok"
check_fails "issue refuses a missing certificate" "required" "$NHICTL" token issue "${HSM[@]}" --iss "$ISS" \
	--sub a --aud gateway
check_fails "issue refuses a wrong PIN" "[pin]" bash -c "
	printf 'wrong\n' >'$T/bad.pin'; chmod 600 '$T/bad.pin'
	'$NHICTL' token issue --hsm-token it-tokens --pin-file '$T/bad.pin' --iss '$ISS' --sub a --aud gateway \
		--cert '$T/agent.pem'"

# ---- our verifier -------------------------------------------------------------------
verify() { # jwks token-file [extra args...]
	local jwks=$1 tok=$2; shift 2
	"$NHICTL" token verify --jwks "$jwks" --iss "$ISS" --aud gateway "$@" - <"$tok"
}
verify_file() { # token-file: the same with --token-file
	"$NHICTL" token verify --jwks "$T/both.jwks" --iss "$ISS" --aud gateway --token-file "$1"
}
check "verify: current key" verify "$T/both.jwks" "$T/new.tok" --cert "$T/agent.pem"
check "verify: retired-but-trusted key" verify "$T/both.jwks" "$T/old.tok" --cert "$T/agent.pem"
check "verify prints the claims" bash -c "'$NHICTL' token verify --jwks '$T/both.jwks' --iss '$ISS' --aud gateway \
	- <'$T/new.tok' | $PY -c 'import json,sys; c=json.load(sys.stdin); assert c[\"sub\"]==\"agent-7\" and c[\"roles\"]==[\"infer\",\"resolve\"] and c[\"cnf\"][\"x5t#S256\"]==\"$X5T\", c'"
check_fails "verify: removed key" "(kid_unknown)" verify "$T/new.jwks" "$T/old.tok"
check_fails "verify: cnf mismatch with another agent's cert" "(cnf_mismatch)" verify "$T/both.jwks" "$T/new.tok" \
	--cert "$T/other.pem"
check_fails "verify: wrong audience" "(aud)" "$NHICTL" token verify --jwks "$T/both.jwks" --iss "$ISS" --aud admin - \
	<"$T/new.tok"
check_fails "verify: wrong issuer" "(iss)" "$NHICTL" token verify --jwks "$T/both.jwks" --iss https://evil --aud gateway \
	- <"$T/new.tok"
NOW=$(date +%s)
check "issue a token in the past (--now)" issue "$T/past.tok" nhid-token-2 --now $((NOW - 1000))
check_fails "verify: expired" "(expired)" verify "$T/both.jwks" "$T/past.tok"
check "issue a long-lived token (--ttl 3600 --ttl-max 3600)" issue "$T/long.tok" nhid-token-2 --ttl 3600 --ttl-max 3600
check_fails "verify: lifetime above the 900 s default cap" "(lifetime)" verify "$T/both.jwks" "$T/long.tok"
check "verify: lifetime accepted with --max-lifetime 3600" verify "$T/both.jwks" "$T/long.tok" --max-lifetime 3600
check "issue a future token (--now +600)" issue "$T/future.tok" nhid-token-2 --now $((NOW + 600))
check_fails "verify: not yet valid" "(not_yet_valid)" verify "$T/both.jwks" "$T/future.tok"
check_fails "verify: payload tampered" "(signature)" bash -c "
	IFS=. read -r h p s <'$T/new.tok'
	p2=\$(printf '%s' \"\$p\" | basenc --base64url -d 2>/dev/null | sed 's/agent-7/agent-0/' | basenc --base64url -w0 | tr -d =)
	printf '%s.%s.%s\n' \"\$h\" \"\$p2\" \"\$s\" | '$NHICTL' token verify --jwks '$T/both.jwks' --iss '$ISS' --aud gateway -"
check_fails "verify: 1 MB token on stdin" "(too_large)" bash -c "
	head -c 1048576 /dev/zero | tr '\\0' A | '$NHICTL' token verify --jwks '$T/both.jwks' --iss '$ISS' --aud gateway -"
check_fails "verify: extra segment" "(segments)" bash -c "
	printf '%s.e30\n' \"\$(cat '$T/new.tok')\" | '$NHICTL' token verify --jwks '$T/both.jwks' --iss '$ISS' --aud gateway -"
check_fails "verify: usage without --jwks" "required" "$NHICTL" token verify --iss "$ISS" --aud gateway -
# jansson quotes the bytes near a JSON error: an unsigned header must not put an escape
# sequence on the operator's terminal (docs/tokens.md: token text only as printable ASCII)
check_fails "verify: a header with ESC in its JSON error" "(json)" bash -c "
	printf '%s.e30.AA\n' \"\$(printf '{\"alg\":\"ES256\",\"x\":\"\\\\\\033[2J\"}' | basenc --base64url -w0 | tr -d =)\" |
	'$NHICTL' token verify --jwks '$T/both.jwks' --iss '$ISS' --aud gateway -"
cp "$T/last.out" "$T/esc.out"
check "... and the message shows it as printable ASCII" bash -c "! LC_ALL=C grep -q '[^ -~]' '$T/esc.out'"

# a bearer token is never taken from argv (every user of the host can read it), and not echoed
check_fails "verify: a token in argv is refused" "pass it on stdin as '-'" \
	"$NHICTL" token verify --jwks "$T/both.jwks" --iss "$ISS" --aud gateway "$(cat "$T/new.tok")"
check "... as a usage error (exit 2) that does not echo it" bash -c "
	'$NHICTL' token verify --jwks '$T/both.jwks' --iss '$ISS' --aud gateway \"\$(cat '$T/new.tok')\" >'$T/argv.out' 2>&1
	[ \$? -eq 2 ] && ! grep -qF \"\$(cat '$T/new.tok')\" '$T/argv.out'"
(umask 077; cp "$T/new.tok" "$T/private.tok")
check "verify: --token-file reads a private file" verify_file "$T/private.tok"
cp "$T/new.tok" "$T/open.tok"; chmod 644 "$T/open.tok"
check_fails "verify: --token-file refuses a file others can read" "chmod 600" verify_file "$T/open.tok"
check_fails "verify: --token-file and - together are refused" "not both" bash -c "
	'$NHICTL' token verify --jwks '$T/both.jwks' --iss '$ISS' --aud gateway --token-file '$T/private.tok' - <'$T/new.tok'"
# the command docs/api.md gives offline verifiers works as written
cmd=$(grep -o 'nhictl token verify --jwks FILE --iss ISSUER --aud AUDIENCE - <TOKEN_FILE' "$NHI_ROOT/docs/api.md" | head -1)
check "docs/api.md names a verify command" test -n "$cmd"
run=$(printf '%s' "$cmd" | sed "s|^nhictl|'$NHICTL'|; s|--jwks FILE|--jwks both.jwks|; s|--iss ISSUER|--iss '$ISS'|;
	s|--aud AUDIENCE|--aud gateway|; s|<TOKEN_FILE|<new.tok|")
check "... and it verifies a token" bash -c "cd '$T' && $run | grep -q '\"sub\": \"agent-7\"'"
check_fails "verify: a JWKS carrying a private key is refused" "private key material" bash -c "
	$PY -c \"import json; d=json.load(open('$T/both.jwks')); d['keys'][0]['d']=d['keys'][0]['x']; json.dump(d,open('$T/priv.jwks','w'))\"
	'$NHICTL' token verify --jwks '$T/priv.jwks' --iss '$ISS' --aud gateway - <'$T/new.tok'"

# ---- forged tokens ---------------------------------------------------------------------
for kind in none hs256-pem hs256-pem-nonl; do
	check_fails "forged $kind token refused" "(alg)" bash -c "
		$PY '$INTEROP/py_peer.py' forge $kind '$T/both.jwks' '$ISS' gateway root '$X5T' >'$T/forged.tok' &&
		'$NHICTL' token verify --jwks '$T/both.jwks' --iss '$ISS' --aud gateway - <'$T/forged.tok'"
done

# ---- interop: their libraries verify ours ----------------------------------------------
if [ ! -d "$INTEROP/node_modules/jose" ]; then
	# node_modules is not in git; the npm registry is reachable wherever tests run
	check "npm ci installs jose (package-lock.json)" bash -c "cd '$INTEROP' && npm ci --no-audit --no-fund"
fi
for tok in new old; do
	check "jose verifies our $tok-key token with our JWKS" node "$INTEROP/jose_peer.mjs" verify "$T/both.jwks" \
		"$T/$tok.tok" "$ISS" gateway
	check "jwcrypto verifies our $tok-key token" $PY "$INTEROP/py_peer.py" verify-jwcrypto "$T/both.jwks" \
		"$T/$tok.tok" "$ISS" gateway
	check "pyjwt verifies our $tok-key token" $PY "$INTEROP/py_peer.py" verify-pyjwt "$T/both.jwks" "$T/$tok.tok" \
		"$ISS" gateway
done
check "jose: our kids are its RFC 7638 thumbprints" node "$INTEROP/jose_peer.mjs" thumbprints "$T/both.jwks"
check "jwcrypto (and by hand): our kids are RFC 7638 thumbprints" $PY "$INTEROP/py_peer.py" thumbprints "$T/both.jwks"
check_fails "jose refuses our token for another audience" "jose:" node "$INTEROP/jose_peer.mjs" verify \
	"$T/both.jwks" "$T/new.tok" "$ISS" admin

# ---- interop: ours verifies theirs -------------------------------------------------------
for peer in jose jwcrypto pyjwt; do
	case $peer in
	jose) sign=(node "$INTEROP/jose_peer.mjs" sign) ;;
	*) sign=($PY "$INTEROP/py_peer.py" "sign-$peer") ;;
	esac
	check "$peer signs a token with its own P-256 key" bash -c "$(printf '%q ' "${sign[@]}") '$T' '$ISS' gateway agent-9 '$X5T' >'$T/$peer.tok'"
	check "our verifier accepts the $peer token (its key given as a JWKS)" verify "$T/$peer.jwks" "$T/$peer.tok" \
		--cert "$T/agent.pem"
	check_fails "the $peer token is refused against our own JWKS" "(kid_unknown)" verify "$T/both.jwks" "$T/$peer.tok"
	check_fails "the $peer token is refused with another agent's cert" "(cnf_mismatch)" verify "$T/$peer.jwks" \
		"$T/$peer.tok" --cert "$T/other.pem"
done

finish
