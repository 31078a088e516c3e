#!/usr/bin/env bash
# The remote/shared HSM path: SoftHSM2 exported by `p11-kit server` on a unix socket,
# used through p11-kit-client.so by nhictl (ceremony, token signing) under the no-egress
# filter, which allows AF_UNIX only.
. "$(dirname "$0")/lib.sh"
cd "$T"
NHICTL=$BIN/nhictl
CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
[ -e "$CLIENT" ] || CLIENT=$(find /usr/lib -name p11-kit-client.so | head -1)
export XDG_RUNTIME_DIR=$T
pinfile user.pin 4242-4242
pinfile so.pin 2424-2424
"$NHICTL" hsm-init --label remote --so-pin-file so.pin --pin-file user.pin >/dev/null
serve() { # token label -> exports P11_KIT_SERVER_ADDRESS, remembers the pid
	p11-kit server --provider /usr/lib/softhsm/libsofthsm2.so -n "$T/$1.sock" "pkcs11:token=$1" >"$T/$1.env" || return 1
	eval "$(cat "$T/$1.env")"
	_pids+=("$P11_KIT_SERVER_PID")
}
check "p11-kit server exports the SoftHSM2 token on a unix socket" serve remote
cat >remote.conf <<CONF
[ceremony]
token = pkcs11:token=remote
module = $CLIENT
out_dir = $T/out
profiles = $NHI_ROOT/openssl.cnf
trust_domain = nhid.test
organization = Remote
root_cn = remote root
server_cn = nhid
server_dns = localhost
CONF
check "the ceremony runs through p11-kit-client.so" "$NHICTL" ceremony --config remote.conf --pin-file user.pin
check "its transcript verifies" "$NHICTL" ceremony verify out/transcript.jsonl --ca out/ca.crt
check "keys made through the client module are in the token, non-extractable" \
	bash -c "pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label remote --login --pin 4242-4242 --list-objects 2>/dev/null | grep -c 'never extract' | grep -qv '^[0-4]$'"

# token signing through the client module, verified offline against the JWKS it exports
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout a.key -subj /CN=a -days 1 -out a.crt 2>/dev/null
check "nhictl token issue signs through p11-kit-client.so" bash -c "'$NHICTL' token issue --hsm-token pkcs11:token=remote \
	--module '$CLIENT' --pin-file user.pin --key nhid-token-1 --iss https://nhid.test --sub demo --aud inference --cert a.crt >tok.txt"
check "the JWKS exported through the client verifies that token" bash -c "'$NHICTL' token jwks --hsm-token pkcs11:token=remote \
	--module '$CLIENT' --pin-file user.pin --key nhid-token-1 >jwks.json && '$NHICTL' token verify --jwks jwks.json \
	--iss https://nhid.test --aud inference --cert a.crt - <tok.txt"
# Debian 12's p11-kit (0.24) relays only some mechanisms over its RPC (ECDSA, AES-ECB,
# RSA...): AES key wrap and AES-GCM, which backup import needs inside the token, are not
# among them. The refusal must say so plainly (docs/operations.md).
printf '{"id":"a","roles":["agent"],"audiences":["inference"],"cert_pem_file":"%s/a.crt"}\n' "$T" >agents.jsonl
check_fails "backup creation through p11-kit 0.24's client names the missing mechanism" "CKR_MECHANISM_INVALID" \
	"$NHICTL" backup create --agents agents.jsonl --out b.nhib --token pkcs11:token=remote --module "$CLIENT" --pin-file user.pin
check "and leaves no backup file behind" test ! -e b.nhib
finish
