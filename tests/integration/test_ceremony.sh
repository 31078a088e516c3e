#!/usr/bin/env bash
# Ceremony and enrollment against a real SoftHSM2 token, checked with pkcs11-tool
# and openssl; every refusal leaves nothing behind.
. "$(dirname "$0")/lib.sh"
NHICTL=$BIN/nhictl
cd "$T"
pinfile user.pin 3141-5926
pinfile so.pin 2718-2818
check "hsm-init creates a token from 0600 PIN files" "$NHICTL" hsm-init --label cer --so-pin-file so.pin --pin-file user.pin
check_fails "hsm-init refuses a second token with the same label" "already exists" \
	"$NHICTL" hsm-init --label cer --so-pin-file so.pin --pin-file user.pin

conf() { # conf FILE OUTDIR [extra lines]: an extra line replaces the default of its key (one key, one line)
	local f=$1 o=$2 d l skip; shift 2
	{ printf '[ceremony]\n'
	  while IFS= read -r d; do
		skip=; for l in "$@"; do [ "${l%% *}" = "${d%% *}" ] && skip=1; done
		[ -n "$skip" ] || printf '%s\n' "$d"
	  done < <(printf 'token = %s\nout_dir = %s\nprofiles = %s\ntrust_domain = nhid.test\n' "${TOKEN:-cer}" "$o" \
			"${PROFILES:-$NHI_ROOT/openssl.cnf}"
		   printf 'organization = Test\nroot_cn = test root\nserver_cn = nhid\nserver_dns = localhost\nserver_ip = 127.0.0.1\n')
	  for l in "$@"; do printf '%s\n' "$l"; done; } >"$f"
}
objects() { pkcs11-tool --module $MOD --token-label "${1:-cer}" --login --pin 3141-5926 --list-objects 2>/dev/null; }
# the checks below call it from `bash -c` too: without the export there it is "command not found",
# and `! objects | grep -q nhid-` passed whatever the token held
export -f objects; export MOD

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
{ cat "$NHI_ROOT/openssl.cnf"; echo '.include /etc/ssl/openssl.cnf'; } >incl.cnf
PROFILES=$T/incl.cnf conf bad7.conf out-bad
check_fails "a profiles file with an .include is refused, naming it" "profiles file $T/incl.cnf: line" \
	"$NHICTL" ceremony --config bad7.conf --pin-file user.pin
{ cat "$NHI_ROOT/openssl.cnf"; echo 'x = $ENV::HOME'; } >dollar.cnf
PROFILES=$T/dollar.cnf conf bad8.conf out-bad
check_fails "a profiles file with a \$ expansion is refused" "'\$' is not allowed" \
	"$NHICTL" ceremony --config bad8.conf --pin-file user.pin
sed 's/^max_days   = 365$/max_days   = 365abc/' "$NHI_ROOT/openssl.cnf" >junkdays.cnf
PROFILES=$T/junkdays.cnf conf bad10.conf out-bad
check_fails "a profile max_days with trailing junk is refused before the token is touched, naming it" \
	"[nhi_profile_agent] max_days '365abc' is not a whole number of days" \
	"$NHICTL" ceremony --config bad10.conf --pin-file user.pin
conf bad9.conf out-bad "$(printf 'organization = Te\377st')"
check_fails "an organization that is not UTF-8 is refused before the token is touched" \
	"config key 'organization' must be 1-64 printable characters in UTF-8" "$NHICTL" ceremony --config bad9.conf --pin-file user.pin
conf good.conf "$T/out"
cp user.pin loose.pin; chmod 644 loose.pin
check_fails "a PIN file readable by others is refused" "chmod 600" "$NHICTL" ceremony --config good.conf --pin-file loose.pin
pinfile wrong.pin 0000
check_fails "a wrong PIN is refused by name" "CKR_PIN_INCORRECT" "$NHICTL" ceremony --config good.conf --pin-file wrong.pin
check "nothing was created by the refused runs" bash -c "! objects | grep -q nhid- && [ ! -e out-bad ]"

# --- anything already at an output path is refused in preflight, before the token is opened ---
# lstat, not stat/access: a dangling symlink is an entry too (it used to pass preflight,
# and the run failed at the last step, after the keys were made)
mkdir out-link && ln -s nowhere out-link/jwks.json
conf link.conf "$T/out-link"
check_fails "a dangling symlink at an output path is refused, naming it and the fix" \
	"$T/out-link/jwks.json already exists (a symlink to nowhere): a ceremony never overwrites its outputs; move it away or pick another out_dir" \
	"$NHICTL" ceremony --config link.conf --pin-file user.pin
cp last.out link.out
check "... before the token is opened or any key made" \
	bash -c "! grep -q 'opened\|generating\|rolling back' link.out && ! objects | grep -q nhid- && [ \"\$(ls -A out-link)\" = jwks.json ]"
ln -s nowhere-dir out-dangle
conf dangle.conf "$T/out-dangle"
check_fails "an out_dir that is a dangling symlink is refused, naming it" \
	"out_dir $T/out-dangle is a symlink to nowhere: remove it or point out_dir at a directory" \
	"$NHICTL" ceremony --config dangle.conf --pin-file user.pin
cp last.out dangle.out
check "... before the token is opened, and nothing is created" \
	bash -c "! grep -q 'opened' dangle.out && [ ! -e nowhere-dir ] && ! objects | grep -q nhid-"

# --- a failure after keys exist rolls the run back ---
grep -v -A2 '^\[nhi_profile_server\]' "$NHI_ROOT/openssl.cnf" | grep -v '^extensions = v3_server' >noserver.cnf
PROFILES=$T/noserver.cnf conf rollback.conf "$T/out-rb"
check_fails "ceremony failing at the server certificate stops with a clear error" "nhi_profile_server" \
	"$NHICTL" ceremony --config rollback.conf --pin-file user.pin
check "the failed run destroyed its keys and removed the out_dir it created" bash -c "! objects | grep -q nhid- && [ ! -e out-rb ]"
mkdir out-rb-kept
PROFILES=$T/noserver.cnf conf rollback2.conf "$T/out-rb-kept"
check_fails "a failing run into an out_dir that already existed stops" "nhi_profile_server" \
	"$NHICTL" ceremony --config rollback2.conf --pin-file user.pin
check "... and leaves that out_dir (not its own) in place, empty" bash -c "! objects | grep -q nhid- && [ -d out-rb-kept ] && [ -z \"\$(ls -A out-rb-kept)\" ]"

# --- the real ceremony ---
check "ceremony on a fresh token" bash -c "'$NHICTL' ceremony --config good.conf --pin-file user.pin >cer.out"
check "ceremony prints numbered steps and fingerprints" bash -c "grep -q '^\[9/9\]' cer.out && grep -q 'SPKI SHA-256 [0-9a-f]\{64\}' cer.out"
check "without update_signers: no trust bundle, no bundle record, 9 steps as before" \
	bash -c "[ ! -e out/trust-bundle-v1.json ] && ! grep -q '\"type\":\"bundle\"' out/transcript.jsonl && ! grep -q '/10\]' cer.out && ! grep -qi 'trust bundle' cer.out"
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
check_fails "a second ceremony into the same out_dir refuses before the token is opened, naming ca.crt" \
	"$T/out/ca.crt already exists: a ceremony never overwrites its outputs" "$NHICTL" ceremony --config good.conf --pin-file user.pin
conf good2.conf "$T/out2"
check_fails "a second ceremony on the same token refuses" "already holds key(s) nhid-root" \
	"$NHICTL" ceremony --config good2.conf --pin-file user.pin
check "... and creates no out_dir" test ! -e out2
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
# the signature record is the one line no signature covers: each of its fields is checked
sed '$s/"signed_sha256":"[0-9a-f]*"/"signed_sha256":"'"$(printf '%064d' 0)"'"/' out/transcript.jsonl >sigdigest.jsonl
check_fails "an edited signed_sha256 in the signature record fails" "line 11: signed_sha256 is not the SHA-256" \
	"$NHICTL" ceremony verify sigdigest.jsonl --ca out/ca.crt
sed '$s/"alg":"ES256","key":"nhid-root"/"alg":"ES256","key":"nhid-tls"/' out/transcript.jsonl >sigkey.jsonl
check_fails "another key named in the signature record fails" "names key 'nhid-tls', not nhid-root" \
	"$NHICTL" ceremony verify sigkey.jsonl --ca out/ca.crt
sed '$s/"sig":/"witnesses":"all three","sig":/' out/transcript.jsonl >sigextra.jsonl
check_fails "a claim added to the signature record fails" "field 'witnesses' nhictl never writes" \
	"$NHICTL" ceremony verify sigextra.jsonl --ca out/ca.crt
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
# without --pin-file the PIN is typed at the terminal (/dev/tty), with echo off
PTY_PIN="python3 $NHI_ROOT/tests/integration/pty_pin.py"
check "enroll without --pin-file asks on the terminal with echo off (the PIN is not shown) and enrolls" bash -c \
	"$PTY_PIN 3141-5926 '$NHICTL' enroll tty-agent --config good.conf >tty.out; rc=\$?; cat tty.out
	 [ \$rc = 0 ] && grep -q 'enrolled tty-agent' tty.out && [ -s out/agents/tty-agent.crt ]"
check "... Ctrl-D at the prompt is refused as an empty PIN, and nothing is enrolled" bash -c \
	"$PTY_PIN '' '$NHICTL' enroll tty-agent2 --config good.conf >tty2.out; rc=\$?; cat tty2.out
	 [ \$rc != 0 ] && [ \$rc -lt 97 ] && grep -q 'empty PIN' tty2.out && [ ! -e out/agents/tty-agent2.crt ]"
check_fails "an invalid agent name is refused" "is not valid" "$NHICTL" enroll "../evil" --config good.conf --pin-file user.pin
# 4294967297 is 1 in a 32-bit int: it must be refused, not become a 1-day certificate
check_fails "--days beyond the range is refused, not wrapped" "must be a whole number from 1 to" \
	"$NHICTL" enroll wrap-agent --days 4294967297 --config good.conf --pin-file user.pin
# an out_dir whose ca.crt is another root's: refused before anything is written
mkdir -p foreign && cp other.crt foreign/ca.crt
conf foreign.conf "$T/foreign"
check_fails "enroll against a ca.crt that is not the token's root is refused, naming it" \
	"foreign/ca.crt does not belong to the root key" "$NHICTL" enroll stray --config foreign.conf --pin-file user.pin
check "... and writes no key or certificate, and leaves no agents/ directory it created" \
	bash -c "! ls foreign/agents/stray.* 2>/dev/null | grep -q . && [ ! -e foreign/agents ]"
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

# a certificate never outlives its root: the config refuses it, enroll cuts it to the root's notAfter
pinfile so4.pin 2718-2818
"$NHICTL" hsm-init --label cers --so-pin-file so4.pin --pin-file user.pin >/dev/null
TOKEN=cers conf short.conf "$T/outs" 'root_days = 30' 'server_days = 365' 'agent_days = 30'
check_fails "server_days beyond root_days is refused before the token is touched" \
	"config key 'server_days' is 365, beyond root_days 30" "$NHICTL" ceremony --config short.conf --pin-file user.pin
check "... and nothing was created" bash -c "! objects cers | grep -q nhid- && [ ! -e outs ]"
TOKEN=cers conf short.conf "$T/outs" 'root_days = 2' 'server_days = 1' 'agent_days = 1'
check "ceremony with a 2-day root" bash -c "'$NHICTL' ceremony --config short.conf --pin-file user.pin >short.out"
check "enroll --days 30 under a 2-day root is cut to the root's notAfter, and says so" bash -c \
	"'$NHICTL' enroll short-agent --days 30 --config short.conf --pin-file user.pin | grep -q 'cut to the root' &&
	 [ \"\$(openssl x509 -in outs/agents/short-agent.crt -noout -enddate)\" = \"\$(openssl x509 -in outs/ca.crt -noout -enddate)\" ] &&
	 openssl verify -CAfile outs/ca.crt -purpose sslclient outs/agents/short-agent.crt"

# --- trust bundle v1 made by the ceremony (update_signers) ---
# two custodians, one token each, as in the update runbook (docs/updates.md)
for i in 1 2; do
	pinfile c$i.pin "custodian-$i-pin"
	"$NHICTL" hsm-init --label cust$i --so-pin-file so.pin --pin-file c$i.pin >/dev/null
	pkcs11-tool --module $MOD --token-label cust$i --login --pin "custodian-$i-pin" \
		--keypairgen --key-type EC:prime256v1 --label signer >/dev/null 2>&1
	"$NHICTL" update pubkey --token cust$i --key signer --pin-file c$i.pin >c$i.pub
done
check "custodians' public keys exported" bash -c "grep -q 'BEGIN PUBLIC KEY' c1.pub && grep -q 'BEGIN PUBLIC KEY' c2.pub"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out m.key 2>/dev/null && openssl pkey -in m.key -pubout -out m.pub
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp256k1 2>/dev/null | openssl pkey -pubout -out k1.pub
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 2>/dev/null | openssl pkey -pubout -out p384.pub
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | openssl pkey -pubout -out rsa.pub
printf -- '-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n' >garbage.pub
cp c1.pub c1-copy.pub
check "hsm-init creates the bundle ceremony's token" "$NHICTL" hsm-init --label cerb --so-pin-file so.pin --pin-file user.pin
bconf() { TOKEN=cerb conf "$@"; }
nothing_made() { ! objects cerb | grep -q nhid- && [ ! -e "$T/outb" ]; }
refused() { # refused "description" "expected text" config-lines...
	local d=$1 want=$2; shift 2
	bconf bb.conf "$T/outb" "$@"
	check_fails "$d" "$want" "$NHICTL" ceremony --config bb.conf --pin-file user.pin
	check "... and nothing was created (no key in the token, no out_dir)" nothing_made
}
refused "update_threshold without update_signers is refused" \
	"config key 'update_threshold' is set without update_signers" 'update_threshold = 1'
refused "update_signers without update_threshold is refused" \
	"config key 'update_threshold' is required with update_signers" 'update_signers = c1.pub, c2.pub'
refused "update_threshold 0 is refused" "config key 'update_threshold' must be a whole number from 1" \
	'update_signers = c1.pub, c2.pub' 'update_threshold = 0'
refused "update_threshold above the number of signers is refused" \
	"config key 'update_threshold' is 3 but update_signers lists 2 key(s)" 'update_signers = c1.pub, c2.pub' 'update_threshold = 3'
refused "a missing signer file is refused, naming the key and the file" \
	"config key 'update_signers': cannot open nosuch.pub" 'update_signers = c1.pub, nosuch.pub' 'update_threshold = 1'
refused "a garbage key file is refused, naming it" \
	"config key 'update_signers': garbage.pub is not a PEM public key" 'update_signers = c1.pub, garbage.pub' 'update_threshold = 1'
refused "a secp256k1 key is refused (P-256 only)" \
	"config key 'update_signers': k1.pub is not an EC P-256 key" 'update_signers = c1.pub, k1.pub' 'update_threshold = 1'
refused "a P-384 key is refused (P-256 only)" \
	"p384.pub is not an EC P-256 key" 'update_signers = p384.pub' 'update_threshold = 1'
refused "an RSA key is refused (P-256 only)" "rsa.pub is not an EC P-256 key" 'update_signers = rsa.pub' 'update_threshold = 1'
refused "a signer file listed twice is refused" "config key 'update_signers' lists 'c1.pub' twice" \
	'update_signers = c1.pub, c2.pub, c1.pub' 'update_threshold = 2'
refused "the same signer key under two file names is refused" \
	"c1-copy.pub holds the same key as c1.pub" 'update_signers = c1.pub, c1-copy.pub' 'update_threshold = 1'
refused "an empty update_signers is refused" "config key 'update_signers' lists no file" 'update_signers = ,' 'update_threshold = 1'
refused "bundle_days without update_signers is refused" "config key 'bundle_days' is set without update_signers" 'bundle_days = 30'
refused "manifest_keys without update_signers is refused" "config key 'manifest_keys' is set without update_signers" 'manifest_keys = m.pub'
refused "bundle_days 0 is refused" "config key 'bundle_days' must be a whole number from 1" \
	'update_signers = c1.pub' 'update_threshold = 1' 'bundle_days = 0'
refused "bundle_days beyond root_days is refused" "config key 'bundle_days' is 400, beyond root_days 365" \
	'update_signers = c1.pub' 'update_threshold = 1' 'root_days = 365' 'bundle_days = 400'
refused "a bad manifest key file is refused, naming the key" "config key 'manifest_keys': garbage.pub is not a PEM public key" \
	'update_signers = c1.pub' 'update_threshold = 1' 'manifest_keys = garbage.pub'
refused "a bad peer key file is refused, naming the key" "config key 'peer_keys': cannot open nosuch.pub" \
	'update_signers = c1.pub' 'update_threshold = 1' 'peer_keys = nosuch.pub'

bconf bundle.conf "$T/outb" 'update_signers = c1.pub, c2.pub' 'update_threshold = 2' 'bundle_days = 30' 'manifest_keys = m.pub'
check "ceremony with two update signers" bash -c "'$NHICTL' ceremony --config bundle.conf --pin-file user.pin >cerb.out"
check "it counts 10 steps, the bundle being step 8" bash -c "grep -q '^\[8/10\] trust bundle v1 for 2 update signer(s), threshold 2, valid 30 days' cerb.out && grep -q '^\[10/10\] wrote 6 files' cerb.out && ! grep -q '/9\]' cerb.out"
check "it writes trust-bundle-v1.json" test -s outb/trust-bundle-v1.json
PIN=$(sed -n 's/^ *fingerprint (the pin) \([0-9a-f]\{64\}\)$/\1/p' cerb.out)
check "the printed pin equals 'nhictl bundle fingerprint'" bash -c "[ -n '$PIN' ] && [ \"\$('$NHICTL' bundle fingerprint outb/trust-bundle-v1.json)\" = '$PIN' ] && grep -A1 '^Trust bundle v1 fingerprint' cerb.out | grep -qx '  $PIN'"
check "transcript verifies offline" "$NHICTL" ceremony verify outb/transcript.jsonl --ca outb/ca.crt
# kids computed here from the PEM files (RFC 7638), independently of nhictl
python3 - outb c1.pub c2.pub m.pub >bundle-check.out 2>&1 <<'PY'
import base64, hashlib, json, subprocess, sys
out, pubs = sys.argv[1], sys.argv[2:]
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def kid(path):
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", path, "-outform", "DER"], capture_output=True, check=True).stdout
    pt = der[-65:]; assert pt[0] == 4
    jwk = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (b64(pt[1:33]), b64(pt[33:]))
    return b64(hashlib.sha256(jwk.encode()).digest())
doc = json.load(open(out + "/trust-bundle-v1.json"))
raw = doc["payload"]; payload = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)); p = json.loads(payload)
recs = [json.loads(l) for l in open(out + "/transcript.jsonl")]
b = [r for r in recs if r["type"] == "bundle"]
assert len(b) == 1, "one bundle record"
b = b[0]
signers = [kid(pubs[0]), kid(pubs[1])]
assert doc["signatures"] == [], "unsigned"
assert p["version"] == 1 and p["threshold"] == 2, p
assert [s["kid"] for s in p["update_signers"]] == signers, "signers in the bundle"
assert [s["kid"] for s in p["manifest_keys"]] == [kid(pubs[2])] and p["peer_keys"] == [], "manifest/peer keys"
assert p["ca_certs"] == [open(out + "/ca.crt").read()], "the root certificate"
assert p["jwks"] == json.load(open(out + "/jwks.json")), "the JWKS"
assert b["fingerprint"] == hashlib.sha256(payload).hexdigest(), "fingerprint = SHA-256 of the payload"
assert b["sha256"] == hashlib.sha256(open(out + "/trust-bundle-v1.json", "rb").read()).hexdigest(), "file hash"
assert b["version"] == 1 and b["threshold"] == 2 and b["update_signers"] == signers, b
assert b["manifest_keys"] == [kid(pubs[2])] and b["peer_keys"] == [], b
assert b["expires_at"] == p["expires_at"], "expiry"
print(b["fingerprint"])
PY
check "the bundle holds ca.crt, jwks.json, the signers (RFC 7638 kids), threshold 2 and the manifest key, unsigned" \
	bash -c "[ \"\$(tail -1 bundle-check.out)\" = '$PIN' ] || { cat bundle-check.out; false; }"
check "the transcript's bundle record carries the pin, version, threshold and signer kids" \
	bash -c "grep '\"type\":\"bundle\"' outb/transcript.jsonl | grep -q '\"fingerprint\":\"$PIN\",\"version\":1,.*\"threshold\":2'"
check "the bundle expires in bundle_days (30)" bash -c "exp=\$(grep -o '\"expires_at\":[0-9]*' outb/transcript.jsonl | cut -d: -f2); now=\$(date +%s); [ \$((exp - now)) -gt \$((30 * 86400 - 300)) ] && [ \$((exp - now)) -le \$((30 * 86400)) ]"
check "a tampered bundle record fails transcript verification" bash -c "sed 's/\"threshold\":2,\"update_signers\"/\"threshold\":1,\"update_signers\"/' outb/transcript.jsonl >tb.jsonl && ! cmp -s tb.jsonl outb/transcript.jsonl && ! '$NHICTL' ceremony verify tb.jsonl --ca outb/ca.crt"
check_fails "the unsigned bundle is refused by bundle verify" "self_threshold" "$NHICTL" bundle verify --pin "$PIN" outb/trust-bundle-v1.json
cp outb/trust-bundle-v1.json b1.json
check "custodian 1 signs the bundle offline" "$NHICTL" bundle sign --token cust1 --key signer --pin-file c1.pin b1.json
check "signing leaves the pin unchanged" bash -c "[ \"\$('$NHICTL' bundle fingerprint b1.json)\" = '$PIN' ]"
check_fails "with one signature of two, bundle verify refuses (threshold)" "1 valid signature(s) by its own update signers, 2 required" \
	"$NHICTL" bundle verify --pin "$PIN" b1.json
mkdir -m 700 st
check_fails "with one signature of two, update init refuses" "self_threshold" \
	"$NHICTL" update init --state-dir st --bundle b1.json --pin "$PIN"
check "custodian 2 signs the bundle offline" "$NHICTL" bundle sign --token cust2 --key signer --pin-file c2.pin b1.json
check "bundle verify with the printed pin accepts it" "$NHICTL" bundle verify --pin "$PIN" b1.json
check_fails "bundle verify with another pin refuses it" "(pin)" "$NHICTL" bundle verify --pin "$(printf '%064d' 0)" b1.json
check_fails "update init with another pin refuses it" "(pin)" "$NHICTL" update init --state-dir st --bundle b1.json --pin "$(printf '%064d' 0)"
check "update init installs it with the printed pin" "$NHICTL" update init --state-dir st --bundle b1.json --pin "$PIN"
check "the installed bundle is the signed one, byte for byte" cmp st/trust-bundle.json b1.json
check_fails "a second ceremony on the bundle token refuses before touching the bundle" "outb/ca.crt already exists" \
	"$NHICTL" ceremony --config bundle.conf --pin-file user.pin
bconf bundle2.conf "$T/outb2" 'update_signers = c1.pub, c2.pub' 'update_threshold = 2' 'bundle_days = 30' 'manifest_keys = m.pub'
check_fails "... and into another out_dir, refuses by the keys in the token" "already holds key(s) nhid-root" \
	"$NHICTL" ceremony --config bundle2.conf --pin-file user.pin
check "the refused second ceremony left the bundle and transcript intact" \
	bash -c "'$NHICTL' ceremony verify outb/transcript.jsonl --ca outb/ca.crt && [ \"\$('$NHICTL' bundle fingerprint outb/trust-bundle-v1.json)\" = '$PIN' ]"

# a failure after the keys were made rolls the bundle run back too
pinfile so3.pin 2718-2818
"$NHICTL" hsm-init --label cerc --so-pin-file so3.pin --pin-file user.pin >/dev/null
TOKEN=cerc PROFILES=$T/noserver.cnf conf rbb.conf "$T/outc" 'update_signers = c1.pub' 'update_threshold = 1'
check_fails "a bundle ceremony failing at the server certificate stops with a clear error" "nhi_profile_server" \
	"$NHICTL" ceremony --config rbb.conf --pin-file user.pin
check "... destroyed its keys and left no out_dir (no trust bundle)" bash -c "! objects cerc | grep -q nhid- && [ ! -e outc ]"
finish
