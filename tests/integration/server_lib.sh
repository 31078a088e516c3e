# tests/integration/server_lib.sh — a running nhid for integration tests (sourced
# after lib.sh): a full dev-style deployment, a free loopback port, clients as agents.

NHICTL=$BIN/nhictl
NHID=${NHID:-$BIN/nhid}
AGENT=$BIN/nhi-agent
ADMIN_SECRET=test-admin-secret-0123456789

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# setup_deployment DIR: ceremony + agents (incl. suspended/revoked/unenrolled) + backup + nhid.conf
setup_deployment() {
	local d=$1
	NHICTL=$NHICTL "$NHI_ROOT/scripts/dev-deploy.sh" "$d" >"$T/deploy.out" 2>&1 || { cat "$T/deploy.out"; exit 1; }
	export SOFTHSM2_CONF=$d/softhsm2.conf
	for a in suspended-agent revoked-agent stranger; do
		"$NHICTL" enroll "$a" --config "$d/ceremony.conf" --pin-file "$d/user.pin" >/dev/null || exit 1
	done
	# an enrolled agent whose certificate expired yesterday (test builds of nhictl only)
	"$NHICTL" enroll expired-agent --days 30 --testing-backdate-days 1 --config "$d/ceremony.conf" \
		--pin-file "$d/user.pin" >/dev/null || exit 1
	cat >"$d/test-agents.jsonl" <<EOF
{"id":"demo-agent","roles":["agent"],"audiences":["inference"],"cert_pem_file":"$d/agents/demo-agent.crt"}
{"id":"inference-gw","roles":["resolver"],"audiences":["inference"],"cert_pem_file":"$d/agents/inference-gw.crt"}
{"id":"admin","roles":["admin"],"audiences":[],"cert_pem_file":"$d/agents/admin.crt"}
{"id":"suspended-agent","status":"suspended","roles":["agent"],"audiences":["inference"],"cert_pem_file":"$d/agents/suspended-agent.crt"}
{"id":"expired-agent","roles":["agent"],"audiences":["inference"],"cert_pem_file":"$d/agents/expired-agent.crt"}
{"id":"revoked-agent","status":"revoked","roles":["agent"],"audiences":["inference"],"cert_pem_file":"$d/agents/revoked-agent.crt"}
EOF
	rm -f "$d/identities.nhib"
	"$NHICTL" backup create --agents "$d/test-agents.jsonl" --out "$d/identities.nhib" \
		--token nhid-dev --pin-file "$d/user.pin" --serial 2 >"$T/backup.out" 2>&1 || { cat "$T/backup.out"; exit 1; }
	PORT=$(free_port)
	local hash
	hash=$(printf '%s' "$ADMIN_SECRET" | "$NHID" --hash-admin-token) || exit 1
	NHI_PORT=$PORT NHI_ADMIN_HASH=$hash "$NHI_ROOT/scripts/dev-config.sh" "$d" >/dev/null
}

start_nhid() {
	local conf=$1
	start_bg "$NHID" --config "$conf"
	NHID_PID=$BG_PID
	if ! wait_for 60 curl -s --max-time 2 --cacert "$D/ca.crt" --cert "$D/agents/demo-agent.crt" \
		--key "$D/agents/demo-agent.key" "https://127.0.0.1:$PORT/v1/health"; then
		not_ok "nhid did not come up on port $PORT"
		exit 1
	fi
}

stop_nhid() {
	kill -TERM "$NHID_PID"
	wait "$NHID_PID"
	NHID_RC=$?
}

curl_as_raw() { # agent path [curl args...]
	local a=$1 p=$2; shift 2
	curl -sS --max-time 10 --cacert "$D/ca.crt" --cert "$D/agents/$a.crt" --key "$D/agents/$a.key" \
		"https://127.0.0.1:$PORT$p" "$@"
}
curl_as() { curl_as_raw "$@" --fail-with-body; }
# prints the body and fails when the status is not 2xx (for check_fails)
curl_as_fail() { curl_as_raw "$@" --fail-with-body; }
agent_as() { # agent args...
	local a=$1; shift
	"$AGENT" --server "https://127.0.0.1:$PORT" --ca "$D/ca.crt" --cert "$D/agents/$a.crt" --key "$D/agents/$a.key" "$@"
}
export -f curl_as_raw curl_as curl_as_fail agent_as
export D PORT AGENT

# load_loop SECONDS: token requests over keep-alive from 4 clients; prints failed=N ok=N
load_loop() {
	python3 "$NHI_ROOT/tests/integration/load.py" --port "$PORT" --dir "$D" --seconds "$1" --clients 4
}
