#!/usr/bin/env bash
# bench/server.sh [SECONDS] — nhid beside nginx on this machine, same run, loopback only.
# nginx is Debian's, started here with an EC P-256 certificate and mTLS (client
# certificate required) and stopped by pid. Measures full handshakes/s (openssl s_time
# -new with a client certificate), keep-alive requests/s and p50/p99 at 50 connections
# (ab -k -E), token issuance (audit on, durable) and resolve; prints ratios.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${1:-5}
# 100000 requests per case: the first request on each of ab's 50 connections waits for
# ab's own 50 handshakes, made one after another on its single thread (10-50 ms each).
# At 30000 requests those 50 were a sixth of the token case's slowest 1% and moved its
# p99 from 9 to 10 ms; at 100000 the figures are of keep-alive requests (docs/architecture.md)
REQS=${BENCH_REQUESTS:-100000}
T=$(mktemp -d "${TMPDIR:-/tmp}/nhi-bench-srv-XXXXXX")
pids=()
cleanup() { # SIGTERM, up to 10 s for the drain (nhid waits 2 s for requests in flight), then SIGKILL
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null
	done
	wait 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_https() { for _ in $(seq 100); do curl -sk --max-time 1 --cert "$1" "https://127.0.0.1:$2/v1/health" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

D=$T/dev
NHICTL=$ROOT/build/rel/nhictl "$ROOT/scripts/dev-deploy.sh" "$D" >"$T/deploy.log" 2>&1 || { cat "$T/deploy.log"; exit 1; }
export SOFTHSM2_CONF=$D/softhsm2.conf
NPORT=$(free_port); GPORT=$(free_port)
NHI_PORT=$NPORT "$ROOT/scripts/dev-config.sh" "$D" >/dev/null
cat "$D/agents/demo-agent.crt" "$D/agents/demo-agent.key" >"$T/demo.pem"
cat "$D/agents/inference-gw.crt" "$D/agents/inference-gw.key" >"$T/gw.pem"
printf '{"aud":"inference"}' >"$T/tok.json"

# nginx: same certificate type (EC P-256 from a CA of the same shape), key in a file
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/ngx-ca.key" -subj /CN=ngx-ca \
	-days 2 -out "$T/ngx-ca.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/ngx.key" -subj /CN=localhost \
	-out "$T/ngx.csr" 2>/dev/null
openssl x509 -req -in "$T/ngx.csr" -CA "$T/ngx-ca.crt" -CAkey "$T/ngx-ca.key" -days 2 -out "$T/ngx.crt" \
	-extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') 2>/dev/null
mkdir -p "$T/ngx"
cat >"$T/nginx.conf" <<CONF
worker_processes 2;
pid $T/nginx.pid;
error_log $T/ngx/error.log;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $T/ngx; proxy_temp_path $T/ngx; fastcgi_temp_path $T/ngx; uwsgi_temp_path $T/ngx; scgi_temp_path $T/ngx;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$GPORT ssl;
    ssl_certificate $T/ngx.crt; ssl_certificate_key $T/ngx.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384;
    ssl_client_certificate $D/ca.crt; ssl_verify_client on;
    ssl_session_cache shared:S:10m;
    location /v1/health { default_type application/json; return 200 '{"status":"ok"}\n'; }
  }
}
CONF
nginx -c "$T/nginx.conf" -p "$T" >"$T/nginx.out" 2>&1 &
pids+=($!)
"$ROOT/build/rel/nhid" --config "$D/nhid.conf" >"$T/nhid.log" 2>&1 &
pids+=($!)
wait_https "$T/demo.pem" "$NPORT" || { echo "nhid did not start"; cat "$T/nhid.log"; exit 1; }
wait_https "$T/demo.pem" "$GPORT" || { echo "nginx did not start"; cat "$T/nginx.out" "$T/ngx/error.log"; exit 1; }

s_time() { # port -> full handshakes/s (TLS 1.3, client cert, new session each time)
	openssl s_time -connect "127.0.0.1:$1" -new -time "$SECS" -cert "$D/agents/demo-agent.crt" \
		-key "$D/agents/demo-agent.key" 2>/dev/null | awk '/connections in .* real seconds/ {print $1/$4; exit}'
}
ab_run() { # label pem url [ab args] -> "rps p50 p99"
	local pem=$1 url=$2; shift 2
	ab -q -k -n "$REQS" -c 50 -E "$pem" "$@" "$url" 2>/dev/null | awk '
		/^Requests per second/ {rps=$4} /^Failed requests/ {f=$3} /^Non-2xx/ {n=$3}
		/^  50%/ {p50=$2} /^  99%/ {p99=$2} END {printf "%s %s %s %s\n", rps, p50, p99, f+n}'
}

hs_nhid=$(s_time "$NPORT"); hs_ngx=$(s_time "$GPORT")
read -r st_rps st_50 st_99 st_f < <(ab_run "$T/gw.pem" "https://127.0.0.1:$GPORT/v1/health")
read -r nh_rps nh_50 nh_99 nh_f < <(ab_run "$T/demo.pem" "https://127.0.0.1:$NPORT/v1/health")
# raw C_Sign is measured right before and right after the token run and averaged: on a
# shared VM the machine's speed drifts within a minute, and the ratio is only fair when
# both sides see the same machine
hsm_before=$("$ROOT/build/rel/bench/bench_hsm" 2 2>/dev/null | grep '^BENCH')
read -r tk_rps tk_50 tk_99 tk_f < <(ab_run "$T/demo.pem" "https://127.0.0.1:$NPORT/v1/tokens" -p "$T/tok.json" -T application/json)
hsm_after=$("$ROOT/build/rel/bench/bench_hsm" 2 2>/dev/null | grep '^BENCH')
TOKEN=$(curl -s --cacert "$D/ca.crt" --cert "$T/demo.pem" "https://127.0.0.1:$NPORT/v1/tokens" -d '{"aud":"inference","ttl":900}' |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
printf '{"token":"%s"}' "$TOKEN" >"$T/res.json"
read -r rs_rps rs_50 rs_99 rs_f < <(ab_run "$T/gw.pem" "https://127.0.0.1:$NPORT/v1/resolve" -p "$T/res.json" -T application/json)
audit_line=$(curl -s --cacert "$D/ca.crt" --cert "$T/demo.pem" "https://127.0.0.1:$NPORT/v1/metrics" |
	awk '/^nhid_audit_records_total/ {r=$2} /^nhid_audit_fsyncs_total/ {f=$2} /^nhid_audit_batch_max/ {m=$2}
	     END {if (f > 0) printf "audit: %d records in %d fsyncs (%.1f per fsync, at most %d)", r, f, r / f, m}')
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1==k {print $2}'; }
mean() { python3 -c "import sys; v=[float(x) for x in sys.argv[1:] if x]; print(round(sum(v)/len(v)) if v else 0)" "$@"; }
raw_b=$(field "$hsm_before" raw_csign_2t) raw_a=$(field "$hsm_after" raw_csign_2t)
raw=$(mean "$raw_b" "$raw_a")           # the token object, as the issue defines raw C_Sign
raw_copy=$(mean "$(field "$hsm_before" raw_copy_2t)" "$(field "$hsm_after" raw_copy_2t)") # nhid's session copy

ratio() { python3 -c "import sys; a,b=float(sys.argv[1] or 0),float(sys.argv[2] or 0); print(f'{a/b:.2f}x' if b else 'n/a')" "$1" "$2"; }
echo "nhid vs nginx ($(nginx -v 2>&1 | sed 's/.*\///')), loopback, 50 keep-alive connections, $REQS requests per case"
printf '  %-40s %12s %8s %8s %8s\n' "" "per second" "p50 ms" "p99 ms" "failed"
printf '  %-40s %12.0f\n' "full handshakes, nginx (key in file)" "${hs_ngx:-0}"
printf '  %-40s %12.0f   ratio %s (target >= 0.80x)\n' "full handshakes, nhid (key in token)" "${hs_nhid:-0}" "$(ratio "$hs_nhid" "$hs_ngx")"
printf '  %-40s %12.0f %8s %8s %8s\n' "nginx static 200" "$st_rps" "$st_50" "$st_99" "$st_f"
printf '  %-40s %12.0f %8s %8s %8s\n' "nhid GET /v1/health" "$nh_rps" "$nh_50" "$nh_99" "$nh_f"
printf '  %-40s %12.0f %8s %8s %8s   ratio to raw C_Sign %s (target >= 0.60x, >= 12000/s)\n' \
	"nhid POST /v1/tokens (audit durable)" "$tk_rps" "$tk_50" "$tk_99" "$tk_f" "$(ratio "$tk_rps" "$raw")"
printf '  %-40s %12.0f %8s %8s %8s   ratio to nginx static %s (target >= 0.40x)\n' \
	"nhid POST /v1/resolve (audit durable)" "$rs_rps" "$rs_50" "$rs_99" "$rs_f" "$(ratio "$rs_rps" "$st_rps")"
printf '  %-40s %12.0f   (before %s, after the token run %s)\n' "raw SoftHSM2 C_Sign, 2 threads" "${raw:-0}" "${raw_b:-?}" "${raw_a:-?}"
printf '  %-40s %12.0f   tokens/s to it: %s\n' "raw C_Sign on a session copy, 2 threads" "${raw_copy:-0}" \
	"$(ratio "$tk_rps" "$raw_copy")"
echo "  $audit_line"
echo "BENCH handshakes_nhid=$hs_nhid handshakes_nginx=$hs_ngx tokens=$tk_rps resolve=$rs_rps nginx_static=$st_rps raw_csign=$raw raw_copy=$raw_copy"
