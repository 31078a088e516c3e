#!/usr/bin/env bash
# The offline release bundle: scripts/bundle.sh with an Ed25519 release key (prebuilt
# release binaries from NHI_REL_BIN; debs from a reused cache so the test stays fast
# after the first run), then install.sh in a network namespace with no route:
# signature + manifest verified, `dpkg --dry-run -i` accepts the debs; tampered,
# extra-file and wrong-key bundles are refused.
. "$(dirname "$0")/lib.sh"
cd "$T"
REL_BIN=${NHI_REL_BIN:-$NHI_ROOT/build/rel}
CACHE=${NHI_DEB_CACHE:-$NHI_ROOT/build/bundle/debcache}
[ -x "$REL_BIN/nhid" ] || { ok "# SKIP no release binaries in $REL_BIN (make all)"; finish; }
# the first run downloads the debs from the Debian archive: only when asked, or when a
# previous run left them in the cache
if [ "${NHI_TEST_BUNDLE:-0}" != 1 ] && ! compgen -G "$CACHE/*.deb" >/dev/null; then
	ok "# SKIP set NHI_TEST_BUNDLE=1 to run (fetches ~26 debs from the Debian archive once into $CACHE)"
	finish
fi
(umask 077; openssl genpkey -algorithm ed25519 -out release.key 2>/dev/null; openssl genpkey -algorithm ed25519 -out other.key 2>/dev/null)
openssl pkey -in release.key -pubout -out release.pub
openssl pkey -in other.key -pubout -out other.pub
(umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out p256.key 2>/dev/null)
openssl pkey -in p256.key -pubout -out p256.pub

if ! RELEASE_KEY=$T/release.key BUNDLE_OUT=$T/out BUNDLE_BIN_DIR=$REL_BIN BUNDLE_DEB_CACHE=$CACHE BUNDLE_VERSION=t1 \
	timeout 900 "$NHI_ROOT/scripts/bundle.sh" >bundle.out 2>&1; then
	if grep -q 'apt-get download failed\|could not resolve' bundle.out; then ok "# SKIP no Debian archive reachable to fetch the debs"; finish; fi
	not_ok "bundle.sh failed"; sed 's/^/#   /' bundle.out; finish
fi
B=$T/out/nhid-t1
ok "bundle.sh built $B"
check "bundle has binaries, debs, unit, openssl.cnf, docs, install.sh, signed manifest" bash -c \
	"cd '$B' && test -x bin/nhid -a -x bin/nhictl -a -x bin/nhi-agent -a -f etc/systemd/nhid.service -a -f etc/openssl.cnf -a -f doc/airgap.md -a -x install.sh -a -s MANIFEST.sha256 -a -s MANIFEST.sha256.sig && ls debs/*.deb >/dev/null"
check "the debs include softhsm2, p11-kit and the libraries nhid links" bash -c \
	"cd '$B/debs' && ls softhsm2_*.deb libsofthsm2_*.deb p11-kit_*.deb libevent-openssl-*.deb libseccomp2_*.deb libjansson4_*.deb >/dev/null"
check "no Priority: required package is shipped (e.g. dpkg, coreutils)" bash -c "! ls '$B'/debs/dpkg_*.deb '$B'/debs/coreutils_*.deb 2>/dev/null | grep -q ."
check "the tarball lists the manifest" bash -c "tar -tf '$T/out/nhid-t1.tar' | grep -q 'nhid-t1/MANIFEST.sha256$'"
check "a second run reuses the deb cache (no download)" bash -c \
	"RELEASE_KEY='$T/release.key' BUNDLE_OUT='$T/out2' BUNDLE_BIN_DIR='$REL_BIN' BUNDLE_DEB_CACHE='$CACHE' BUNDLE_VERSION=t1 '$NHI_ROOT/scripts/bundle.sh' 2>&1 | grep -vq downloading"

# run install.sh with no route when we can make a network namespace
NS=nhi-bundle-$$ IN=()
if ip netns add "$NS" 2>/dev/null; then IN=(ip netns exec "$NS"); ok "install checks run in network namespace $NS (loopback down, no route)"
else ok "# SKIP ip netns add failed: install checks run in the host namespace"; fi
check "install.sh --dry-run: signature, manifest and dpkg --dry-run -i pass offline" \
	bash -c "${IN[*]} '$B/install.sh' --pubkey '$T/release.pub' --dry-run 2>&1 | tee dry.out | grep -q 'dry run: nothing changed'"
check "the dry run verified the signature and every file" bash -c "grep -q 'manifest signature verified' dry.out && grep -q 'files match the manifest' dry.out"
check_fails "install.sh without --pubkey refuses" "--pubkey FILE is required" "${IN[@]}" "$B/install.sh" --dry-run
check_fails "a different release key is refused" "signature does NOT verify" "${IN[@]}" "$B/install.sh" --pubkey "$T/other.pub" --dry-run
cp -a "$B" "$T/tampered"; echo '#' >>"$T/tampered/etc/systemd/nhid.service"
check_fails "a tampered file is refused" "does not match MANIFEST.sha256" "${IN[@]}" "$T/tampered/install.sh" --pubkey "$T/release.pub" --dry-run
cp -a "$B" "$T/extra"; touch "$T/extra/debs/evil_1.0_amd64.deb"
check_fails "an unlisted file is refused" "files not in the manifest: debs/evil_1.0_amd64.deb" "${IN[@]}" "$T/extra/install.sh" --pubkey "$T/release.pub" --dry-run
cp -a "$B" "$T/resigned"; echo "0000  bin/x" >>"$T/resigned/MANIFEST.sha256"
check_fails "an edited manifest is refused" "signature does NOT verify" "${IN[@]}" "$T/resigned/install.sh" --pubkey "$T/release.pub" --dry-run
if RELEASE_KEY=$T/p256.key BUNDLE_OUT=$T/outp BUNDLE_BIN_DIR=$REL_BIN BUNDLE_DEB_CACHE=$CACHE BUNDLE_VERSION=p "$NHI_ROOT/scripts/bundle.sh" >p.out 2>&1; then
	check "a P-256 release key works too" bash -c "${IN[*]} '$T/outp/nhid-p/install.sh' --pubkey '$T/p256.pub' --dry-run >/dev/null 2>&1"
else not_ok "bundle with a P-256 key"; sed 's/^/#   /' p.out; fi
chmod 644 release.key
check_fails "a group-readable release key is refused by bundle.sh" "chmod 600" \
	env RELEASE_KEY="$T/release.key" BUNDLE_OUT="$T/out3" BUNDLE_BIN_DIR="$REL_BIN" BUNDLE_DEB_CACHE="$CACHE" "$NHI_ROOT/scripts/bundle.sh"
[ ${#IN[@]} -gt 0 ] && ip netns del "$NS"
finish
