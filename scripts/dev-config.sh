#!/usr/bin/env bash
# scripts/dev-config.sh DIR — write DIR/nhid.conf (mode 0600) for a deployment made by
# dev-deploy.sh. NHI_PORT (default 8443) and NHI_ADMIN_HASH (from
# `nhid --hash-admin-token`, optional) adjust it.
set -euo pipefail
D=$(cd "$1" && pwd)
mkdir -p "$D/state"
chmod 700 "$D/state"
umask 077
{
cat <<CONF
# nhid dev config (scripts/dev-config.sh). Review every line before production use.
[nhid]
listen              = 127.0.0.1:${NHI_PORT:-8443}
threads             = 2
hsm_token           = nhid-dev
hsm_pin_file        = $D/user.pin
trust_domain        = nhid.local
ca_file             = $D/ca.crt
cert_file           = $D/server.crt
tls_key             = nhid-tls
token_keys          = nhid-token-1
issuer              = https://nhid.local
audiences           = inference
token_ttl_default_s = 300
token_ttl_max_s     = 900
leeway_s            = 30
backup              = $D/identities.nhib
backup_sign_key     = nhid-root
state_dir           = $D/state
audit_log           = $D/state/audit.jsonl
audit_key           = nhid-audit
audit_checkpoint_records = 1000
audit_checkpoint_s  = 10
max_connections     = 1024
body_max_bytes      = 16384
header_max_bytes    = 8192
header_max_count    = 64
idle_timeout_s      = 30
requests_per_connection = 10000
CONF
[ -n "${NHI_ADMIN_HASH:-}" ] && echo "admin_token_hash    = $NHI_ADMIN_HASH"
} >"$D/nhid.conf"
echo "wrote $D/nhid.conf"
