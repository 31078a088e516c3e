#!/usr/bin/env bash
# install.sh — install an nhid offline release bundle on an air-gapped Debian 12 host.
#
#   ./install.sh --pubkey /media/keys/release.pub.pem [--dry-run]
#
# 1. verifies MANIFEST.sha256's signature with the release public key YOU pass (got
#    out of band; the release.pub.pem inside the bundle proves nothing on its own),
# 2. checks every file against the manifest and refuses unlisted files,
# 3. installs the shipped .debs with `dpkg -i` (no apt, no network), the binaries to
#    /usr/bin, openssl.cnf to /etc/nhid/, the unit to /etc/systemd/system/, docs to
#    /usr/share/doc/nhid/, and creates the system user `nhid`.
# It enables nothing: run the ceremony first (docs/airgap.md). --dry-run verifies,
# runs `dpkg --dry-run -i`, and prints what it would do.
set -euo pipefail
cd "$(dirname "$0")"
die() { echo "install: $*" >&2; exit 1; }
PUBKEY= DRY=0
while [ $# -gt 0 ]; do
	case "$1" in
		--pubkey) PUBKEY=${2:-}; shift 2 ;;
		--dry-run) DRY=1; shift ;;
		-h|--help) sed -n '2,14p' "$0"; exit 0 ;;
		*) die "unknown argument $1 (see --help)" ;;
	esac
done
[ -n "$PUBKEY" ] || die "--pubkey FILE is required: the release public key obtained out of band (not the bundle's own copy)"
[ -f "$PUBKEY" ] || die "--pubkey $PUBKEY: no such file"
command -v openssl >/dev/null || die "openssl is needed to verify the signature: install it from the Debian 12 media, or verify MANIFEST.sha256.sig on the transfer host (docs/airgap.md)"
[ -f MANIFEST.sha256 ] && [ -f MANIFEST.sha256.sig ] || die "MANIFEST.sha256 or its signature is missing: the bundle is incomplete"

# --- 1. the signature ---
kt=$(openssl pkey -pubin -in "$PUBKEY" -noout -text 2>/dev/null | head -1) || die "--pubkey $PUBKEY is not a PEM public key"
fp=$(openssl pkey -pubin -in "$PUBKEY" -outform DER | sha256sum | cut -d' ' -f1)
case "$kt" in
	*ED25519*) openssl pkeyutl -verify -pubin -inkey "$PUBKEY" -rawin -in MANIFEST.sha256 -sigfile MANIFEST.sha256.sig >/dev/null 2>&1 ;;
	*) openssl dgst -sha256 -verify "$PUBKEY" -signature MANIFEST.sha256.sig MANIFEST.sha256 >/dev/null 2>&1 ;;
esac || die "MANIFEST.sha256 signature does NOT verify with $PUBKEY (fingerprint $fp): wrong key or a tampered bundle; do not install"
echo "install: manifest signature verified (release key $fp)"

# --- 2. every file, and nothing else ---
sha256sum --strict --quiet -c MANIFEST.sha256 || die "a file does not match MANIFEST.sha256: the bundle was altered in transit; do not install"
extra=$(comm -13 <(awk '{print $2}' MANIFEST.sha256 | LC_ALL=C sort) \
	<(find . -type f ! -name MANIFEST.sha256 ! -name MANIFEST.sha256.sig ! -name release.pub.pem -printf '%P\n' | LC_ALL=C sort))
[ -z "$extra" ] || die "files not in the manifest: $(echo "$extra" | tr '\n' ' ')- remove them or use an untouched bundle"
echo "install: $(wc -l <MANIFEST.sha256) files match the manifest"

# --- 3. install ---
run() { if [ "$DRY" = 1 ]; then echo "  would run: $*"; else "$@"; fi; }
[ "$DRY" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (or with --dry-run)"
shopt -s nullglob
debs=()
# a shipped package already installed at the same or a newer version is left alone:
# dpkg -i would otherwise downgrade it (libc6, libssl3 point releases)
for d in debs/*.deb; do
	p=$(dpkg-deb -f "$d" Package) v=$(dpkg-deb -f "$d" Version)
	have=$(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null | awk '$3 == "installed" {print $4}')
	if [ -n "$have" ] && dpkg --compare-versions "$have" ge "$v"; then
		echo "install: $p $have already installed (bundle has $v): kept"
	else
		debs+=("$d")
	fi
done
if [ ${#debs[@]} -gt 0 ]; then
	if [ "$DRY" = 1 ]; then
		dpkg --dry-run -i "${debs[@]}" >/dev/null || die "dpkg --dry-run -i refuses the shipped packages (see above)"
		echo "install: dpkg --dry-run -i accepts ${#debs[@]} package(s)"
	else
		dpkg -i "${debs[@]}" || die "dpkg -i failed: fix what dpkg names (all dependencies are in debs/; no network is used)"
	fi
fi
getent passwd nhid >/dev/null || run useradd --system --user-group --home-dir /var/lib/nhid --shell /usr/sbin/nologin nhid
run install -m 0755 bin/nhid bin/nhictl bin/nhi-agent /usr/bin/
run install -d -m 0750 /etc/nhid
run install -d -m 0700 /var/lib/nhid
run install -m 0644 etc/openssl.cnf /etc/nhid/openssl.cnf
run install -m 0644 etc/systemd/nhid.service /etc/systemd/system/nhid.service
run install -d -m 0755 /usr/share/doc/nhid
run install -m 0644 doc/*.md /usr/share/doc/nhid/
if [ -d /run/systemd/system ]; then run systemctl daemon-reload; fi
echo "install: done$([ "$DRY" = 1 ] && echo ' (dry run: nothing changed)'). Next: the ceremony (/usr/share/doc/nhid/airgap.md)"
