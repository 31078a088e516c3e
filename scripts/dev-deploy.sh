#!/usr/bin/env bash
# scripts/dev-deploy.sh [DIR] — the local dev deployment used by `make run`:
# a SoftHSM2 token, PIN files, the ceremony outputs (ca.crt, server.crt, jwks.json,
# transcript) and enrolled agents, under var/dev/ (or DIR). A complete deployment is
# reused as it is; a half-made one (no .complete marker) is removed and made again.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV=${1:-$ROOT/var/dev}
NHICTL=${NHICTL:-$ROOT/build/rel/nhictl}
AGENTS=(demo-agent inference-gw admin)

if [ -f "$DEV/.complete" ]; then
	echo "dev deployment: reusing $DEV"
	exit 0
fi
if [ -e "$DEV" ]; then
	echo "dev deployment: $DEV is incomplete (no .complete marker): removing it and starting over"
	rm -rf "$DEV"
fi
mkdir -p "$DEV/tokens"
chmod 700 "$DEV"
umask 077
cat >"$DEV/softhsm2.conf" <<CONF
directories.tokendir = $DEV/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF=$DEV/softhsm2.conf
# random PINs, straight into 0600 files: never on a command line
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEV/user.pin"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEV/so.pin"
"$NHICTL" hsm-init --label nhid-dev --so-pin-file "$DEV/so.pin" --pin-file "$DEV/user.pin"

umask 022
cat >"$DEV/ceremony.conf" <<CONF
# dev ceremony: one token, loopback names only
[ceremony]
token        = nhid-dev
out_dir      = $DEV
profiles     = $ROOT/openssl.cnf
trust_domain = nhid.local
organization = nhid dev
root_cn      = nhid dev root CA
server_cn    = nhid
server_dns   = localhost
server_ip    = 127.0.0.1, ::1
root_days    = 3650
server_days  = 365
agent_days   = 90
CONF
"$NHICTL" ceremony --config "$DEV/ceremony.conf" --pin-file "$DEV/user.pin"
for a in "${AGENTS[@]}"; do
	"$NHICTL" enroll "$a" --config "$DEV/ceremony.conf" --pin-file "$DEV/user.pin"
done
NHICTL=$NHICTL "$ROOT/scripts/dev-backup.sh" "$DEV"
"$ROOT/scripts/dev-config.sh" "$DEV"
touch "$DEV/.complete"
echo "dev deployment ready in $DEV"
