#!/usr/bin/env bash
# scripts/dev-run.sh — start nhid in the foreground on 127.0.0.1:8443 with the dev
# deployment (var/dev/). Ctrl-C (SIGINT) or SIGTERM stops it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV=$ROOT/var/dev
export SOFTHSM2_CONF=$DEV/softhsm2.conf
if [ ! -x "$ROOT/build/rel/nhid" ] || [ ! -f "$DEV/nhid.conf" ]; then
	cat <<MSG
The dev deployment is ready in $DEV:
  token     nhid-dev (SoftHSM2, SOFTHSM2_CONF=$DEV/softhsm2.conf), PIN in $DEV/user.pin
  trust     $DEV/ca.crt   server cert $DEV/server.crt   transcript $DEV/transcript.jsonl
  agents    $DEV/agents/{demo-agent,inference-gw,admin}.{crt,key}
The server (nhid) is not built yet: it arrives with the server issue.
MSG
	exit 0
fi
echo "starting nhid on https://127.0.0.1:8443 (Ctrl-C stops it)"
exec "$ROOT/build/rel/nhid" --config "$DEV/nhid.conf"
