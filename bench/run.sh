#!/usr/bin/env bash
# bench/run.sh — every benchmark, in one run on this machine; each prints its own
# table. Reference figures from `openssl speed` are measured here too, not quoted.
set -uo pipefail
cd "$(dirname "$0")/.."
export TMPDIR=$(mktemp -d /tmp/nhi-bench-XXXXXX)
trap 'rm -rf "$TMPDIR"' EXIT
SECS=${BENCH_SECONDS:-3}
echo "== machine: $(nproc) cores, $(uname -r), $(openssl version)"
echo "== openssl speed ecdsap256 (reference, ${SECS}s)"
openssl speed -seconds "$SECS" ecdsap256 2>/dev/null | grep -E '^ *256 bits ecdsa' | \
	awk '{printf "  openssl sign %s/s  verify %s/s\n", $(NF-1), $NF}'
rc=0
for b in build/rel/bench/bench_*; do
	[ -x "$b" ] || continue
	echo "== $(basename "$b")"
	"$b" "$SECS" || { echo "  $(basename "$b") FAILED"; rc=1; }
done
for b in bench/*.sh; do
	[ -x "$b" ] || continue
	echo "== $(basename "$b")"
	"$b" "$SECS" || { echo "  $(basename "$b") FAILED"; rc=1; }
done
exit $rc
