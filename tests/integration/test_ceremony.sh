#!/usr/bin/env bash
# Ceremony and enrollment against a real SoftHSM2 token, checked with pkcs11-tool
# and openssl; every refusal leaves nothing behind.
. "$(dirname "$0")/lib.sh"
NHICTL=$BIN/nhictl
MOD=/usr/lib/softhsm/libsofthsm2.so
cd "$T"
pinfile user.pin 3141-5926
pinfile so.pin 2718-2818
check "hsm-init creates a token from 0600 PIN files" "$NHICTL" hsm-init --label cer --so-pin-file so.pin --pin-file user.pin
check_fails "hsm-init refuses a second token with the same label" "already exists" \
	"$NHICTL" hsm-init --label cer --so-pin-file so.pin --pin-file user.pin

conf() { # conf FILE OUTDIR [extra lines]
	local f=$1 o=$2; shift 2
	{ printf '[ceremony]\ntoken = cer\nout_dir = %s\nprofiles = %s\ntrust_domain = nhid.test\n' "$o" "${PROFILES:-$NHI_ROOT/openssl.cnf}"
	  printf 'organization = Test\nroot_cn = test root\nserver_cn = nhid\nserver_dns = localhost\nserver_ip = 127.0.0.1\n'
	  for l in "$@"; do printf '%s\n' "$l"; done; } >"$f"
}
objects() { pkcs11-tool --module $MOD --token-label cer --login --pin 3141-5926 --list-objects 2>/dev/null; }

# --- bad configs are refused before the token is touched ---
conf bad1.conf out-bad 'colour = blue'
check_fails "unknown config key is named" "unknown config key 'colour'" "$NHICTL" ceremony --config bad1.conf --pin-file user.pin
printf '[ceremony]\ntoken = cer\n' >bad2.conf
check_fails "missing required key is named" "'out_dir' is required" "$NHICTL" ceremony --config bad2.conf --pin-file user.pin
conf bad3.conf out-bad '.include /etc/ssl/openssl.cnf'
check_fails "include directives are refused" "directives such as .include" "$NHICTL" ceremony --config bad3.conf --pin-file user.pin
conf bad4.conf out-bad 'root_days = 99999'
check_fails "validity over the compiled cap is refused" "root_days" "$NHICTL" ceremony --config bad4.conf --pin-file user.pin
sed 's/trust_domain = nhid.test/trust_domain = Bad Domain/' bad1.conf | grep -v colour >bad5.conf
check_fails "invalid trust domain is refused" "trust_domain 'Bad Domain' is not valid" "$NHICTL" ceremony --config bad5.conf --pin-file user.pin
conf bad6.conf out-bad 'server_ip = 300.1.1.1'
check_fails "invalid server IP is refused" "'300.1.1.1' is not an IPv4 or IPv6 address" "$NHICTL" ceremony --config bad6.conf --pin-file user.pin
conf good.conf "$T/out"
cp user.pin loose.pin; chmod 644 loose.pin
check_fails "a PIN file readable by others is refused" "chmod 600" "$NHICTL" ceremony --config good.conf --pin-file loose.pin
pinfile wrong.pin 0000
check_fails "a wrong PIN is refused by name" "CKR_PIN_INCORRECT" "$NHICTL" ceremony --config good.conf --pin-file wrong.pin
check "nothing was created by the refused runs" bash -c "! objects | grep -q nhid- && [ ! -e out-bad ]"

# --- a failure after keys exist rolls the run back ---
grep -v -A2 '^\[nhi_profile_server\]' "$NHI_ROOT/openssl.cnf" | grep -v '^extensions = v3_server' >noserver.cnf
PROFILES=$T/noserver.cnf conf rollback.conf "$T/out-rb"
check_fails "ceremony failing at the server certificate stops with a clear error" "nhi_profile_server" \
	"$NHICTL" ceremony --config rollback.conf --pin-file user.pin
check "the failed run destroyed its keys and wrote no files" bash -c "! objects | grep -q nhid- && [ -z \"\$(ls -A out-rb 2>/dev/null)\" ]"

# --- the real ceremony ---
check "ceremony on a fresh token" bash -c "'$NHICTL' ceremony --config good.conf --pin-file user.pin >cer.out"
check "ceremony prints numbered steps and fingerprints" bash -c "grep -q '^\[9/9\]' cer.out && grep -q 'SPKI SHA-256 [0-9a-f]\{64\}' cer.out"
objects >objects.txt
for l in nhid-root nhid-tls nhid-token-1 nhid-audit nhid-wrap; do
	check "pkcs11-tool lists key $l" grep -q "label:      $l" objects.txt
done
check "private keys are sensitive and never extractable (pkcs11-tool)" \
	bash -c "[ \$(grep -c 'Access:.*sensitive.*never extract' objects.txt) -ge 5 ]"
check "openssl verify accepts the server certificate (sslserver)" openssl verify -CAfile out/ca.crt -purpose sslserver out/server.crt
check "root certificate is a CA with pathlen 0" bash -c "openssl x509 -in out/ca.crt -noout -ext basicConstraints | grep -q 'CA:TRUE, pathlen:0'"
check "server certificate carries the configured SANs" bash -c "openssl x509 -in out/server.crt -noout -ext subjectAltName | grep -q 'DNS:localhost, IP Address:127.0.0.1'"
check "transcript verifies offline" "$NHICTL" ceremony verify out/transcript.jsonl --ca out/ca.crt
check_fails "a second ceremony on the same token refuses" "already holds key(s) nhid-root" \
	"$NHICTL" ceremony --config good.conf --pin-file user.pin
check "the refused second ceremony left the first one's files intact" "$NHICTL" ceremony verify out/transcript.jsonl --ca out/ca.crt

# --- transcript tampering ---
sed '3s/"kind":"EC P-256"/"kind":"EC P-384"/' out/transcript.jsonl >tampered.jsonl
check_fails "an edited record fails verification naming its successor" "line 4: prev does not match" \
	"$NHICTL" ceremony verify tampered.jsonl --ca out/ca.crt
head -n -1 out/transcript.jsonl >unsigned.jsonl
check_fails "a transcript without its signature record fails" "no signature record" "$NHICTL" ceremony verify unsigned.jsonl --ca out/ca.crt
sed '$d' out/transcript.jsonl >dropped.jsonl; sed -n '3d;p' out/transcript.jsonl >dropped.jsonl
check_fails "a removed record fails" "seq is not" "$NHICTL" ceremony verify dropped.jsonl --ca out/ca.crt
head -c -20 out/transcript.jsonl >trunc.jsonl
check_fails "a truncated transcript fails" "truncated" "$NHICTL" ceremony verify trunc.jsonl --ca out/ca.crt
python3 - out/transcript.jsonl resigned.jsonl <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
last = json.loads(lines[-1]); s = last["sig"]
last["sig"] = ("A" if s[0] != "A" else "B") + s[1:]
open(sys.argv[2], "w").write("\n".join(lines[:-1] + [json.dumps(last, separators=(",", ":"))]) + "\n")
PY
check_fails "a forged signature fails" "does not verify" "$NHICTL" ceremony verify resigned.jsonl --ca out/ca.crt
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other.key -subj /CN=other -days 1 -out other.crt 2>/dev/null
check_fails "verification against another root fails" "given root certificate is" "$NHICTL" ceremony verify out/transcript.jsonl --ca other.crt

# --- enrollment ---
check "enroll makes an agent key and certificate" "$NHICTL" enroll demo-agent --config good.conf --pin-file user.pin
check "agent key file is mode 0600" bash -c "[ \$(stat -c %a out/agents/demo-agent.key) = 600 ]"
check "openssl verify accepts the agent certificate (sslclient)" openssl verify -CAfile out/ca.crt -purpose sslclient out/agents/demo-agent.crt
check "agent certificate carries the SPIFFE URI SAN" bash -c "openssl x509 -in out/agents/demo-agent.crt -noout -ext subjectAltName | grep -q 'URI:spiffe://nhid.test/agent/demo-agent'"
check "agent certificate is not good for TLS servers" bash -c "! openssl verify -CAfile out/ca.crt -purpose sslserver out/agents/demo-agent.crt"
check "agent key matches its certificate" bash -c "[ \"\$(openssl pkey -in out/agents/demo-agent.key -pubout)\" = \"\$(openssl x509 -in out/agents/demo-agent.crt -noout -pubkey)\" ]"
check_fails "enrolling the same name twice is refused" "already exists" "$NHICTL" enroll demo-agent --config good.conf --pin-file user.pin
check_fails "an invalid agent name is refused" "is not valid" "$NHICTL" enroll "../evil" --config good.conf --pin-file user.pin
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout csr.key -subj /CN=ignored -out good.csr 2>/dev/null
check "enroll certifies a CSR" "$NHICTL" enroll csr-agent --csr good.csr --config good.conf --pin-file user.pin
check "the CSR path writes no private key" test ! -e out/agents/csr-agent.key
check "the CSR certificate verifies and holds the CSR's key" bash -c "openssl verify -CAfile out/ca.crt out/agents/csr-agent.crt && [ \"\$(openssl pkey -in csr.key -pubout)\" = \"\$(openssl x509 -in out/agents/csr-agent.crt -noout -pubkey)\" ]"
openssl req -in good.csr -outform DER -out csr.der
python3 -c "import sys; d=bytearray(open('csr.der','rb').read()); d[-5]^=1; open('bad.der','wb').write(d)"
openssl req -inform DER -in bad.der -out bad.csr 2>/dev/null
check_fails "a CSR whose signature does not verify is refused" "does not verify" "$NHICTL" enroll bad-csr --csr bad.csr --config good.conf --pin-file user.pin
openssl req -new -newkey rsa:2048 -nodes -keyout rsa.key -subj /CN=rsa -out rsa.csr 2>/dev/null
check_fails "a non-P-256 CSR is refused" "must be EC P-256" "$NHICTL" enroll rsa-agent --csr rsa.csr --config good.conf --pin-file user.pin
check "no certificate was written for refused CSRs" bash -c "[ ! -e out/agents/bad-csr.crt ] && [ ! -e out/agents/rsa-agent.crt ]"
finish
