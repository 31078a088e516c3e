# tests/integration/server_lib.sh — a running nhid for integration tests (sourced
# after lib.sh): a full dev-style deployment, a free loopback port, clients as agents.

NHICTL=$BIN/nhictl
NHID=${NHID:-$BIN/nhid}
AGENT=$BIN/nhi-agent
ADMIN_SECRET=test-admin-secret-0123456789

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# backup_file DIR AGENTS_JSONL OUT SERIAL: an identity backup of those agents, made in the
# token of the deployment in DIR; says what nhictl said when it fails
backup_file() {
	local out
	rm -f "$3"
	out=$("$NHICTL" backup create --agents "$2" --out "$3" --token nhid-dev --pin-file "$1/user.pin" \
		--serial "$4" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
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
	backup_file "$d" "$d/test-agents.jsonl" "$d/identities.nhib" 2 || exit 1
	PORT=$(free_port)
	local hash
	hash=$(printf '%s' "$ADMIN_SECRET" | "$NHID" --hash-admin-token) || exit 1
	NHI_PORT=$PORT NHI_ADMIN_HASH=$hash "$NHI_ROOT/scripts/dev-config.sh" "$d" >/dev/null
}

# deploy_in_t: a deployment in $T/d as $D (exported with $PORT for bash -c checks), cwd $T
deploy_in_t() {
	D=$T/d
	setup_deployment "$D"
	export D PORT
	cd "$T" || exit 1
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

exited() { # pid: gone, or a zombie waiting to be reaped
	local st
	st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)
	[ -z "$st" ] || [ "$st" = Z ]
}

stop_nhid() { # sets NHID_RC and NHID_STOP_MS (SIGTERM to exit); bounded: 60 s, then kill -9
	local t0
	t0=$(date +%s%N)
	kill -TERM "$NHID_PID"
	if ! wait_for 60 exited "$NHID_PID"; then
		not_ok "nhid (pid $NHID_PID) did not exit within 60 s of SIGTERM; killed"
		kill -KILL "$NHID_PID" 2>/dev/null
	fi
	wait "$NHID_PID"
	NHID_RC=$?
	NHID_STOP_MS=$((($(date +%s%N) - t0) / 1000000))
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

# --- signed updates (run from the test's working directory) ---
# make_custodians N: tokens cust1..N, each with a P-256 key "signer" (PIN file c$i.pin), c$i.pub
make_custodians() {
	local i
	for i in $(seq "$1"); do
		pinfile c$i.pin "custodian-$i-pin"
		pinfile so$i.pin "so-$i-pin"
		"$NHICTL" hsm-init --label cust$i --so-pin-file so$i.pin --pin-file c$i.pin >/dev/null || exit 1
		"$NHICTL" key create --token cust$i --key signer --pin-file c$i.pin >c$i.pub 2>/dev/null || exit 1
	done
}
# make_bundle N M [bundle create args...]: b1.json signed by custodians 1..M of 1..N; $BPIN its pin,
# $BEXP its expires_at
make_bundle() {
	local n=$1 m=$2 i signers=(); shift 2
	for i in $(seq "$n"); do signers+=(--signer c$i.pub); done
	rm -f b1.json
	BEXP=$(($(date +%s) + 365 * 86400))
	"$NHICTL" bundle create --version 1 --expires-at "$BEXP" --ca "$D/ca.crt" \
		--jwks "$D/jwks.json" "${signers[@]}" --threshold "$m" "$@" -o b1.json >/dev/null || exit 1
	for i in $(seq "$m"); do
		"$NHICTL" bundle sign --token cust$i --key signer --pin-file c$i.pin b1.json >/dev/null || exit 1
	done
	BPIN=$("$NHICTL" bundle fingerprint b1.json)
}
# updates_on: b1.json installed in $D/state, $D/incoming watched; $D/nhid-up.conf scans every second
updates_on() {
	"$NHICTL" update init --state-dir "$D/state" --bundle b1.json --pin "$BPIN" >/dev/null || exit 1
	mkdir -p -m 700 "$D/incoming"
	cp "$D/nhid.conf" "$D/nhid-up.conf"
	printf 'updates_dir = %s\nupdate_scan_s = 1\n' "$D/incoming" >>"$D/nhid-up.conf"
}
# sign FILE custodian... : each custodian signs the package
sign() {
	local f=$1 i; shift
	for i in "$@"; do "$NHICTL" update sign --token cust$i --key signer --pin-file c$i.pin "$f" >/dev/null || return 1; done
}
# pkg OUT KIND VERSION BODY [custodian...]: a package valid for a day, signed (default: custodian 1)
pkg() {
	local out=$1 kind=$2 v=$3 body=$4; shift 4
	rm -f "$out"
	"$NHICTL" update create --kind "$kind" --version "$v" --id "$(basename "$out" .json)" --body "$body" \
		--expires-in 86400 -o "$out" >/dev/null && sign "$out" "${@:-1}"
}
# drop PKG: into the watched directory the way an operator must (hidden name, then rename)
drop() { cp "$1" "$D/incoming/.$(basename "$1").part" && mv "$D/incoming/.$(basename "$1").part" "$D/incoming/$(basename "$1")"; }
