#!/usr/bin/env bash
# tests/integration/test_backup.sh — `nhictl backup create|inspect|verify` against a
# real SoftHSM2 token: keys made with pkcs11-tool (part A), then the dev deployment
# made by scripts/dev-deploy.sh with the agents template tests/fixtures/dev-agents.jsonl
# (part B: the thumbprints in the backup are those of the enrolled certificates).
. "$(dirname "$0")/lib.sh"
NHICTL=$BIN/nhictl

# ---- part A: a token with the two ceremony keys the backup uses ------------------------
pinfile "$T/user.pin" 1234-it-user
pinfile "$T/so.pin" 5678-it-so
check "token initialised" "$NHICTL" hsm-init --label it-backup --so-pin-file "$T/so.pin" --pin-file "$T/user.pin"
# tests only: pkcs11-tool takes the PIN on its command line
p11() { pkcs11-tool --module "$MOD" --token-label it-backup --login --pin 1234-it-user "$@"; }
check "root key (EC P-256)" p11 --keypairgen --key-type EC:prime256v1 --label nhid-root --id 01 --usage-sign
check "wrap key (AES-256)" p11 --keygen --key-type AES:32 --label nhid-wrap --id 02 --usage-wrap --sensitive
check "another EC key" p11 --keypairgen --key-type EC:prime256v1 --label other-root --id 03 --usage-sign
TOK=(--token it-backup --pin-file "$T/user.pin")

tp() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
cat >"$T/agents.jsonl" <<EOF
{"id":"demo-agent","audiences":["inference"],"cert_sha256":"$(tp demo)","attributes":{"team":"ml"}}
{"id":"inference-gw","roles":["resolver"],"cert_sha256":["$(tp gw)"]}
{"id":"admin","roles":["admin"],"cert_sha256":"$(tp admin)","not_after":"2099-01-01T00:00:00Z"}
{"id":"old-agent","status":"revoked","cert_sha256":"$(tp old)"}
EOF

check "create a backup" "$NHICTL" backup create "${TOK[@]}" --agents "$T/agents.jsonl" --out "$T/b1.nhib" --serial 5
check "the backup file exists and is not empty" test -s "$T/b1.nhib"
check_fails "create refuses to overwrite" "exists" \
	"$NHICTL" backup create "${TOK[@]}" --agents "$T/agents.jsonl" --out "$T/b1.nhib" --serial 6

check "inspect prints the header without a key" bash -c "
	'$NHICTL' backup inspect '$T/b1.nhib' >'$T/inspect.out' &&
	grep -q 'serial         5' '$T/inspect.out' && grep -q 'agents         4' '$T/inspect.out' &&
	grep -q 'NOT verified' '$T/inspect.out' && grep -q 'signed by      nhid-root' '$T/inspect.out'"
check "verify: full import, and the records are there" bash -c "
	'$NHICTL' backup verify '$T/b1.nhib' ${TOK[*]} --agent demo-agent --agent inference-gw >'$T/verify.out' &&
	grep -q ': OK' '$T/verify.out' && grep -q 'cert_sha256    $(tp demo)' '$T/verify.out' &&
	grep -q 'roles          resolver' '$T/verify.out' && grep -q '{\"team\":\"ml\"}' '$T/verify.out'"
check_fails "verify names an unknown agent" "no agent 'nobody'" \
	"$NHICTL" backup verify "$T/b1.nhib" "${TOK[@]}" --agent nobody

# bad JSONL: every bad line listed with its number, nothing written
cat >"$T/bad.jsonl" <<EOF
{"id":"ok-agent","cert_sha256":"$(tp ok)"}
{"id":"no cert"}
{"id":"x","cert_sha256":"$(tp x)","status":"sleeping"}
not json at all
{"id":"ok-agent","cert_sha256":"$(tp ok2)"}
EOF
check_fails "bad JSONL: line 2 reported" "line 2: " \
	"$NHICTL" backup create "${TOK[@]}" --agents "$T/bad.jsonl" --out "$T/bad.nhib"
check_fails "bad JSONL: line 3 reported" "line 3: \"status\" must be" \
	"$NHICTL" backup create "${TOK[@]}" --agents "$T/bad.jsonl" --out "$T/bad.nhib"
check_fails "bad JSONL: line 4 reported" "line 4: not JSON" \
	"$NHICTL" backup create "${TOK[@]}" --agents "$T/bad.jsonl" --out "$T/bad.nhib"
check_fails "bad JSONL: duplicate id on line 5" "line 5: duplicate agent id 'ok-agent'" \
	"$NHICTL" backup create "${TOK[@]}" --agents "$T/bad.jsonl" --out "$T/bad.nhib"
check "bad JSONL: nothing written" test ! -e "$T/bad.nhib"

# damaged files: each refused with its cause
flip() { # FILE OFFSET: flip the low bit of one byte in place
	local b
	b=$(od -An -tu1 -j"$2" -N1 "$1" | tr -d ' ')
	printf "$(printf '\\%03o' $((b ^ 1)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
size=$(stat -c %s "$T/b1.nhib")
cp "$T/b1.nhib" "$T/ct.nhib" && flip "$T/ct.nhib" 400
check_fails "flipped ciphertext bit" "signature does not verify" "$NHICTL" backup verify "$T/ct.nhib" "${TOK[@]}"
cp "$T/b1.nhib" "$T/sig.nhib" && flip "$T/sig.nhib" $((size - 10))
check_fails "flipped signature bit" "signature does not verify" "$NHICTL" backup verify "$T/sig.nhib" "${TOK[@]}"
cp "$T/b1.nhib" "$T/hdr.nhib" && flip "$T/hdr.nhib" 20
check_fails "flipped header bit" "signature does not verify" "$NHICTL" backup verify "$T/hdr.nhib" "${TOK[@]}"
cp "$T/b1.nhib" "$T/magic.nhib" && flip "$T/magic.nhib" 0
check_fails "wrong magic (inspect)" "bad magic" "$NHICTL" backup inspect "$T/magic.nhib"
check_fails "wrong magic (verify)" "bad magic" "$NHICTL" backup verify "$T/magic.nhib" "${TOK[@]}"
cp "$T/b1.nhib" "$T/ver.nhib" && printf '\x07' | dd of="$T/ver.nhib" bs=1 seek=9 conv=notrunc status=none
check_fails "unknown format version" "format version 7 is not supported" "$NHICTL" backup inspect "$T/ver.nhib"
head -c $((size - 1)) "$T/b1.nhib" >"$T/trunc.nhib"
check_fails "truncated by one byte" "truncated" "$NHICTL" backup verify "$T/trunc.nhib" "${TOK[@]}"
head -c 200 "$T/b1.nhib" >"$T/short.nhib"
check_fails "truncated inside the header" "shorter than its 320-byte header" "$NHICTL" backup inspect "$T/short.nhib"
: >"$T/empty.nhib"
check_fails "empty file" "empty" "$NHICTL" backup verify "$T/empty.nhib" "${TOK[@]}"
check_fails "not a backup" "bad magic" "$NHICTL" backup inspect "$T/agents.jsonl"
check_fails "verify against another signing key" "made for another ceremony" \
	"$NHICTL" backup verify "$T/b1.nhib" "${TOK[@]}" --sign-key other-root
check_fails "create with a wrap key that is not AES" "not an AES-256 key" \
	"$NHICTL" backup create "${TOK[@]}" --agents "$T/agents.jsonl" --out "$T/x.nhib" --wrap-key nhid-root
check_fails "create with a missing signing key" "no signing key 'nhid-nope'" \
	"$NHICTL" backup create "${TOK[@]}" --agents "$T/agents.jsonl" --out "$T/x.nhib" --sign-key nhid-nope

# token and PIN handling
pinfile "$T/wrong.pin" not-the-pin
check_fails "wrong PIN" "CKR_PIN_INCORRECT" "$NHICTL" backup verify "$T/b1.nhib" --token it-backup --pin-file "$T/wrong.pin"
cp "$T/user.pin" "$T/loose.pin" && chmod 644 "$T/loose.pin"
check_fails "PIN file readable by others" "chmod 600" \
	"$NHICTL" backup verify "$T/b1.nhib" --token it-backup --pin-file "$T/loose.pin"
check_fails "both --token and --config" "exactly one of --config" \
	"$NHICTL" backup verify "$T/b1.nhib" "${TOK[@]}" --config /dev/null
check_fails "unknown token" "no-such-token" "$NHICTL" backup verify "$T/b1.nhib" --token no-such-token --pin-file "$T/user.pin"
check_fails "unknown action" "unknown action 'restore'" "$NHICTL" backup restore
check_fails "bad --serial" "--serial must be a positive integer" \
	"$NHICTL" backup create "${TOK[@]}" --agents "$T/agents.jsonl" --out "$T/x.nhib" --serial -3
check "no output left behind by failed creates" test ! -e "$T/x.nhib"

# ---- part B: the dev deployment's backup holds its enrolled agents ----------------------
DEV=$T/dev
if NHICTL="$NHICTL" bash "$NHI_ROOT/scripts/dev-deploy.sh" "$DEV" >"$T/dev.out" 2>&1; then
	ok "dev deployment (ceremony + enrolled agents) made"
	export SOFTHSM2_CONF=$DEV/softhsm2.conf
	check "backup of the dev agents from the template" "$NHICTL" backup create --config "$DEV/ceremony.conf" \
		--pin-file "$DEV/user.pin" --agents "$NHI_ROOT/tests/fixtures/dev-agents.jsonl" --certs-dir "$DEV" \
		--out "$T/dev.nhib"
	"$NHICTL" backup verify "$T/dev.nhib" --config "$DEV/ceremony.conf" --pin-file "$DEV/user.pin" \
		--agent demo-agent --agent inference-gw --agent admin >"$T/dev-verify.out" 2>&1
	check "dev backup verifies" grep -q ': OK' "$T/dev-verify.out"
	for a in demo-agent inference-gw admin; do
		want=$(openssl x509 -in "$DEV/agents/$a.crt" -outform DER | sha256sum | cut -d' ' -f1)
		check "dev backup: $a bound to its enrolled certificate" \
			bash -c "sed -n '/^agent $a\$/,/^agent /p' '$T/dev-verify.out' | grep -q 'cert_sha256    $want'"
	done
	check "dev backup: demo-agent may ask for audience inference" \
		bash -c "sed -n '/^agent demo-agent\$/,/^agent /p' '$T/dev-verify.out' | grep -q 'audiences      inference'"
	check "dev backup: inference-gw has role resolver" \
		bash -c "sed -n '/^agent inference-gw\$/,/^agent /p' '$T/dev-verify.out' | grep -q 'roles          resolver'"
	check "dev backup: admin has role admin" \
		bash -c "sed -n '/^agent admin\$/,/^agent /p' '$T/dev-verify.out' | grep -q 'roles          admin'"
	# and the backup `make run` itself made (scripts/dev-backup.sh)
	if [ -f "$DEV/identities.nhib" ]; then
		"$NHICTL" backup verify "$DEV/identities.nhib" --config "$DEV/ceremony.conf" --pin-file "$DEV/user.pin" \
			--agent demo-agent --agent inference-gw --agent admin >"$T/run-verify.out" 2>&1
		check "make run's backup verifies and holds demo-agent, inference-gw, admin" \
			bash -c "grep -q ': OK' '$T/run-verify.out' && grep -c '^agent ' '$T/run-verify.out' | grep -qx 3"
		check "make run's backup: demo-agent may ask for inference, inference-gw resolves, admin is admin" \
			bash -c "sed -n '/^agent demo-agent\$/,/^agent /p' '$T/run-verify.out' | grep -q 'audiences .*inference' &&
				sed -n '/^agent inference-gw\$/,/^agent /p' '$T/run-verify.out' | grep -q 'roles .*resolver' &&
				sed -n '/^agent admin\$/,/^agent /p' '$T/run-verify.out' | grep -q 'roles .*admin'"
	fi
else
	not_ok "dev deployment (scripts/dev-deploy.sh) failed"
	sed 's/^/#   /' "$T/dev.out" | tail -20
fi
finish
