#!/usr/bin/env bash
# scripts/bundle.sh — `make bundle`: the offline release bundle (docs/airgap.md).
#
#   RELEASE_KEY=/path/release.key.pem scripts/bundle.sh
#
# Produces build/bundle/nhid-<version>/ and build/bundle/nhid-<version>.tar:
#   bin/          nhid, nhictl, nhi-agent (release build)
#   debs/         the .deb closure of their runtime dependencies (+ softhsm2, p11-kit,
#                 openssl) as apt resolves it for an empty system, minus what every
#                 minimal Debian 12 has (Priority required or important); debs/PACKAGES
#   etc/          openssl.cnf; systemd/nhid.service
#   doc/          docs/*.md
#   install.sh    verifies MANIFEST.sha256 against the release public key and installs
#                 with `dpkg -i` of debs/ only (no network)
#   MANIFEST.sha256, MANIFEST.sha256.sig (signed with RELEASE_KEY: Ed25519 or EC P-256),
#   release.pub.pem (informational: install.sh trusts only the key the operator passes)
#
# Environment: RELEASE_KEY (required, a PEM private key file, 0600), BUNDLE_OUT
# (default build/bundle), BUNDLE_DEB_CACHE (default build/bundle/debcache: reused, so
# only new packages are downloaded), BUNDLE_BIN_DIR (prebuilt release binaries;
# default: `make all` into build/rel), BUNDLE_VERSION (default: git describe).
# The only network use is `apt-get download` from the configured Debian archive, on
# the build host.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
die() { echo "bundle: $*" >&2; exit 1; }

: "${RELEASE_KEY:?bundle: set RELEASE_KEY to the release signing key (PEM, Ed25519 or EC P-256; docs/airgap.md)}"
[ -f "$RELEASE_KEY" ] || die "RELEASE_KEY $RELEASE_KEY: no such file"
[ -z "$(find "$RELEASE_KEY" -perm /077)" ] || die "RELEASE_KEY $RELEASE_KEY is readable by group or others: chmod 600 $RELEASE_KEY"
KEYTYPE=$(openssl pkey -in "$RELEASE_KEY" -noout -text 2>/dev/null | head -1) || die "RELEASE_KEY is not a PEM private key openssl can read"
case "$KEYTYPE" in
	*ED25519*) SIGALG=ed25519 ;;
	*"Private-Key: (256 bit"*) SIGALG=p256 ;;
	*) die "RELEASE_KEY must be Ed25519 or EC P-256 (got: $KEYTYPE)" ;;
esac
VERSION=${BUNDLE_VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
OUT=${BUNDLE_OUT:-$ROOT/build/bundle}
CACHE=${BUNDLE_DEB_CACHE:-$OUT/debcache}
B=$OUT/nhid-$VERSION

[ "$(. /etc/os-release; echo "$ID $VERSION_ID")" = "debian 12" ] ||
	echo "bundle: warning: this build host is not Debian 12; the debs must match the target" >&2

# --- 1. release binaries ---
if [ -z "${BUNDLE_BIN_DIR:-}" ]; then
	make --no-print-directory all >/dev/null
	BUNDLE_BIN_DIR=$ROOT/build/rel
fi
for p in nhid nhictl nhi-agent; do [ -x "$BUNDLE_BIN_DIR/$p" ] || die "$BUNDLE_BIN_DIR/$p missing: build it (make all)"; done
rm -rf "$B"
mkdir -p "$B/bin" "$B/debs" "$B/etc/systemd" "$B/doc" "$CACHE"
install -m 0755 "$BUNDLE_BIN_DIR"/{nhid,nhictl,nhi-agent} "$B/bin/"
strip --strip-debug "$B"/bin/*

# --- 2. runtime packages: whatever ships the shared libraries the binaries load ---
mapfile -t libs < <(for p in "$B"/bin/*; do ldd "$p" | awk '/=> \//{print $3}'; done | sort -u)
pkgs=(softhsm2 p11-kit openssl)
for l in "${libs[@]}"; do
	r=$(realpath "$l")
	owner=$(dpkg -S "$r" 2>/dev/null || dpkg -S "${r#/usr}" 2>/dev/null) || die "no package owns $r"
	pkgs+=("${owner%%:*}")
done
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sed 's/:.*//' | sort -u)
# closure: apt's own resolver run against an EMPTY dpkg status (what a bare system would
# need, alternatives chosen the way apt chooses them, Recommends off), then minus Priority
# required/important: debootstrap puts those on every Debian 12 system.
mapfile -t resolved < <(apt-get -s -o Dir::State::status=/dev/null install --no-install-recommends "${pkgs[@]}" 2>/dev/null |
	awk '/^Inst /{gsub(/[()]/, "", $3); print $2"="$3}')
[ ${#resolved[@]} -gt 0 ] || die "apt could not resolve ${pkgs[*]}: run apt-get update on the build host"
want=()
for w in "${resolved[@]}"; do
	p=${w%%=*} v=${w#*=}
	prio=$(apt-cache show "$p=$v" 2>/dev/null | awk -F': ' '/^Priority:/{print $2; exit}')
	case "$prio" in required|important) continue ;; esac
	have=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
	[ -z "$have" ] || [ "$have" = "$v" ] ||
		echo "bundle: note: $p: shipping $v, this build host has $have (upgrade the build host to build against what ships)" >&2
	want+=("$w")
done
missing=()
for w in "${want[@]}"; do
	p=${w%%=*} v=${w#*=}
	compgen -G "$CACHE/${p}_${v//:/%3a}_*.deb" >/dev/null || missing+=("$w")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "bundle: downloading ${#missing[@]} package(s) into $CACHE"
	(cd "$CACHE" && timeout 900 apt-get download -q "${missing[@]}" >/dev/null 2>"$CACHE/download.err") ||
		die "apt-get download failed: $(tail -3 "$CACHE/download.err") (is the Debian archive reachable from this build host?)"
fi
for w in "${want[@]}"; do
	p=${w%%=*} v=${w#*=}
	cp "$(compgen -G "$CACHE/${p}_${v//:/%3a}_*.deb" | head -1)" "$B/debs/"
done
printf '%s\n' "${want[@]}" >"$B/debs/PACKAGES"

# --- 3. configuration, docs, unit, installer ---
install -m 0644 openssl.cnf "$B/etc/openssl.cnf"
install -m 0644 dist/nhid.service "$B/etc/systemd/nhid.service"
install -m 0644 docs/*.md "$B/doc/"
install -m 0755 dist/install.sh "$B/install.sh"
echo "$VERSION" >"$B/VERSION"

# --- 4. manifest, signed ---
(cd "$B" && find . -type f ! -name MANIFEST.sha256 ! -name MANIFEST.sha256.sig ! -name release.pub.pem -printf '%P\n' |
	LC_ALL=C sort | xargs -d '\n' sha256sum >MANIFEST.sha256)
openssl pkey -in "$RELEASE_KEY" -pubout -out "$B/release.pub.pem"
if [ "$SIGALG" = ed25519 ]; then
	openssl pkeyutl -sign -inkey "$RELEASE_KEY" -rawin -in "$B/MANIFEST.sha256" -out "$B/MANIFEST.sha256.sig"
else
	openssl dgst -sha256 -sign "$RELEASE_KEY" -out "$B/MANIFEST.sha256.sig" "$B/MANIFEST.sha256"
fi
tar -C "$OUT" --sort=name --owner=0 --group=0 --numeric-owner -cf "$OUT/nhid-$VERSION.tar" "nhid-$VERSION"
echo "bundle: $B ($(wc -l <"$B/MANIFEST.sha256") files, ${#want[@]} debs) and $OUT/nhid-$VERSION.tar"
echo "bundle: release key fingerprint (SHA-256 of the public key DER):" \
	"$(openssl pkey -pubin -in "$B/release.pub.pem" -outform DER | sha256sum | cut -d' ' -f1)"
