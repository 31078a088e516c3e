#!/usr/bin/env bash
# scripts/dev-backup.sh DIR — the dev identity backup: demo-agent (audience inference),
# inference-gw (role resolver), admin (role admin), matching DIR/agents/*.crt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
D=$(cd "$1" && pwd)
NHICTL=${NHICTL:-$ROOT/build/rel/nhictl}
export SOFTHSM2_CONF=${SOFTHSM2_CONF:-$D/softhsm2.conf}
cat >"$D/agents.jsonl" <<JSONL
{"id":"demo-agent","roles":["agent"],"audiences":["inference"],"cert_pem_file":"agents/demo-agent.crt","attributes":{"site":"dev"}}
{"id":"inference-gw","roles":["resolver"],"audiences":["inference"],"cert_pem_file":"agents/inference-gw.crt"}
{"id":"admin","roles":["admin"],"audiences":[],"cert_pem_file":"agents/admin.crt"}
JSONL
"$NHICTL" backup create --agents "$D/agents.jsonl" --out "$D/identities.nhib" --config "$D/ceremony.conf" \
	--pin-file "$D/user.pin" --serial 1
