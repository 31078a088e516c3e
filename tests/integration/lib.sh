# tests/integration/lib.sh — sourced by every integration test.
# Gives: a private temp dir ($T), a SoftHSM2 config in it, TAP helpers, pid-based
# cleanup of anything started with `start_bg`, and bounded waits.
set -uo pipefail
: "${NHI_ROOT:?run through tests/run.sh or make check}"
BIN=${NHI_BIN:-$NHI_ROOT/build/test}
T=$(mktemp -d "${TMPDIR:-/tmp}/nhi-it-XXXXXX")
export SOFTHSM2_CONF=$T/softhsm2.conf
MOD=/usr/lib/softhsm/libsofthsm2.so # Debian's SoftHSM2 PKCS#11 module, for pkcs11-tool
mkdir -p "$T/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$T" >"$SOFTHSM2_CONF"
_n=0 _fail=0 _pids=()

cleanup() {
	local p
	for p in "${_pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${_pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null
	done
	rm -rf "$T"
}
trap cleanup EXIT

# start_bg CMD... : run in background, remember its pid in $BG_PID
start_bg() { "$@" & BG_PID=$!; _pids+=("$BG_PID"); }

ok()     { _n=$((_n + 1)); echo "ok $_n - $*"; }
not_ok() { _n=$((_n + 1)); _fail=$((_fail + 1)); echo "not ok $_n - $*"; }

# check "description" cmd...   : passes when cmd exits 0
check() { local d=$1; shift; if "$@" >"$T/last.out" 2>&1; then ok "$d"; else not_ok "$d"; sed 's/^/#   /' "$T/last.out" | head -20; fi; }
# check_fails "description" "expected text" cmd... : passes when cmd exits non-zero AND prints the text
check_fails() {
	local d=$1 want=$2; shift 2
	if "$@" >"$T/last.out" 2>&1; then not_ok "$d (unexpectedly succeeded)"; sed 's/^/#   /' "$T/last.out" | head -20
	elif grep -qF -- "$want" "$T/last.out"; then ok "$d"
	else not_ok "$d (error did not mention '$want')"; sed 's/^/#   /' "$T/last.out" | head -20; fi
}
# wait_for SECONDS cmd... : retry until cmd succeeds, bounded
wait_for() { local s=$1; shift; local i; for i in $(seq $((s * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
# pins: write a 0600 PIN file
pinfile() { (umask 077; printf '%s\n' "$2" >"$1"); }
finish() { [ "$_fail" -eq 0 ]; exit $?; }
