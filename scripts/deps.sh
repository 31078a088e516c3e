#!/usr/bin/env bash
# scripts/deps.sh [run|check|fuzz|bench|bundle] — make sure the Debian packages a target
# needs are installed. As root it installs what is missing (non-interactive); as
# anyone else it prints the exact apt-get line and fails.
set -euo pipefail
what=${1:-check}

build=(gcc make pkg-config libssl-dev openssl libp11-kit-dev p11-kit softhsm2 opensc
       libjwt-dev libjansson-dev libsqlite3-dev sqlite3 libevent-dev libmbedtls-dev
       libseccomp-dev libhttp-parser-dev)
case "$what" in
  run)    pkgs=("${build[@]}" curl) ;;
  check)  pkgs=("${build[@]}" libcmocka-dev valgrind curl python3 python3-jwt
               python3-jwcrypto nodejs npm gnutls-bin) ;;
  fuzz)   pkgs=("${build[@]}" clang libclang-rt-14-dev) ;;
  bench)  pkgs=("${build[@]}" nginx apache2-utils curl) ;;
  *)      echo "deps.sh: unknown target '$what'" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  # nodejs may come from another packaging of Node; a working node binary is enough
  if [ "$p" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
  if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then continue; fi
  st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  case "$st" in ii*) ;; *) missing+=("$p") ;; esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
else
  echo "deps: missing Debian packages. Install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
