#!/bin/bash
# ISO build benchmark: the time of a cold `make iso` build
# (image-builder/build-iso.sh into a fresh directory, bypassing the cache;
# the .debs of `make deb` already built) against the obvious alternative, a
# plain `mmdebstrap` of the same package list (the same local repository of
# .debs) followed by `mksquashfs -comp zstd`: the ratio says what the ISO
# recipe (composition, reproducibility fixes, grub-mkrescue, checks) costs on
# top. Goal: <= 1.2x. Also: the warm (cached) `make iso`, the ISO's size,
# and the boot time to quantumd READY against the same ISO without the
# QuantumOS packages (variant iso-baseline) to multi-user.target, both under
# QEMU with SeaBIOS (goal <= 1.1x).
#
# usage: bench/iso.sh          (root; ~20 min on 2 cores)
# environment: QUANTUM_CACHE, QUANTUM_DEB_DIR, QUANTUM_MIRROR as for
#   build-iso.sh; BENCH_ISO_KEEP=1 keeps the work directory;
#   BENCH_ISO_BOOTS (default 2) boots of each ISO.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${QUANTUM_CACHE:-$REPO/.cache}
DEB_DIR=${QUANTUM_DEB_DIR:-$CACHE/deb}
VARIANT_DIR=$REPO/image-builder/variants/iso
BUILD_ISO=$REPO/image-builder/build-iso.sh

die() { printf 'bench/iso.sh: error: %s\n' "$*" >&2; exit 1; }
stage() { printf '==> bench-iso: %s\n' "$*"; }
data_lines() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^[[:space:]]*$/d' "$1"; }
conf() { data_lines "$VARIANT_DIR/image.conf" | sed -n "s/^$1=//p" | tail -n1; }
now_ms() { date +%s%3N; }

[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap)"
for tool in mmdebstrap mksquashfs dpkg-scanpackages; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh"
done
compgen -G "$DEB_DIR/quantumos_*.deb" >/dev/null || die "no quantumos .debs in $DEB_DIR: run make deb"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/quantumos-bench-iso.XXXXXX")
if [ "${BENCH_ISO_KEEP:-0}" != 1 ]; then
    trap 'rm -rf "$WORK"' EXIT
fi
BOOTS=${BENCH_ISO_BOOTS:-2}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct)}

# The mirror build-iso.sh would use (the first bookworm URI of this
# machine's apt), so that both sides download from the same place.
SUITE=$(conf SUITE); SUITE=${SUITE:-bookworm}
MIRROR=${QUANTUM_MIRROR:-$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

stage "1/4 cold ISO build (build-iso.sh --out, no cache)"
t0=$(now_ms)
# From the network, as the plain side below (a build from the frozen mirror
# would not download at all).
QUANTUM_ISO_MIRROR=refresh bash "$BUILD_ISO" build --out "$WORK/iso" >"$WORK/iso.log" 2>&1 || { tail -n 30 "$WORK/iso.log" >&2; die "the ISO build failed (log: $WORK/iso.log)"; }
iso_ms=$(( $(now_ms) - t0 ))
ISO_NAME=$(conf ISO_NAME); ISO_NAME=${ISO_NAME:-quantumos-amd64.iso}
iso_bytes=$(stat -c %s "$WORK/iso/$ISO_NAME")
squash_bytes=$(stat -c %s "$WORK/iso/work/filesystem.squashfs")
rm -rf "$WORK/iso/work"

stage "2/4 plain mmdebstrap + mksquashfs -comp zstd of the same packages"
mkdir -p "$WORK/plain/repo"
t0=$(now_ms)
find "$DEB_DIR" -maxdepth 1 -name '*.deb' ! -name '*-dbgsym_*' -exec cp {} "$WORK/plain/repo/" \;
(cd "$WORK/plain/repo" && dpkg-scanpackages --multiversion . >Packages 2>/dev/null)
catalog_packages() { [ "$(conf CATALOG_PACKAGES)" != yes ] || data_lines "$REPO/packaging/cells/packages.list"; }
PACKAGES=$( { data_lines "$VARIANT_DIR/packages"; catalog_packages; conf QUANTUMOS_PACKAGES | tr ' ' '\n'; } |
    awk 'NF { print $1 }' | LC_ALL=C sort -u | paste -sd, -)
mmdebstrap --variant=minbase --arch=amd64 --format=directory --include="$PACKAGES" \
    --aptopt='APT::Install-Recommends "false"' \
    --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
    "$SUITE" "$WORK/plain/root" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb [trusted=yes] file://$WORK/plain/repo ./" >"$WORK/plain.log" 2>&1 ||
    { tail -n 30 "$WORK/plain.log" >&2; die "plain mmdebstrap failed (log: $WORK/plain.log)"; }
mksquashfs "$WORK/plain/root" "$WORK/plain/filesystem.squashfs" -comp zstd -noappend -no-progress \
    >>"$WORK/plain.log" 2>&1 || die "plain mksquashfs failed (log: $WORK/plain.log)"
plain_ms=$(( $(now_ms) - t0 ))
plain_squash_bytes=$(stat -c %s "$WORK/plain/filesystem.squashfs")
rm -rf "$WORK/plain"

stage "3/4 warm make iso (cached)"
bash "$BUILD_ISO" build >"$WORK/warm-fill.log" 2>&1 || die "build-iso.sh build failed (log: $WORK/warm-fill.log)"
t0=$(now_ms)
bash "$BUILD_ISO" build >"$WORK/warm.log" 2>&1 || die "build-iso.sh build failed (log: $WORK/warm.log)"
warm_ms=$(( $(now_ms) - t0 ))

stage "4/4 boot time: the ISO vs the same ISO without QuantumOS (variant iso-baseline), $BOOTS boots each"
bash "$BUILD_ISO" build --variant iso-baseline --out "$WORK/baseline" >"$WORK/baseline.log" 2>&1 ||
    { tail -n 30 "$WORK/baseline.log" >&2; die "the baseline ISO build failed (log: $WORK/baseline.log)"; }
rm -rf "$WORK/baseline/work"
boots=$(cd "$REPO" && cargo run -q --release -p quantum-vmtest --bin quantum-bench -- \
    --iso "$WORK/iso" --baseline-iso "$WORK/baseline" --boots "$BOOTS") ||
    die "the boot benchmark failed"

ratio=$(awk -v a="$iso_ms" -v b="$plain_ms" 'BEGIN { printf "%.2f", a / b }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r <= 1.2) ? "met" : "NOT met" }')
echo
echo "ISO build benchmark ($(nproc) cores, $(date -u +%F))"
printf '  %-46s %8.1f s\n' "make iso, cold (build-iso.sh --out)" "$(awk -v m="$iso_ms" 'BEGIN { print m / 1000 }')"
printf '  %-46s %8.1f s\n' "plain mmdebstrap + mksquashfs (same packages)" "$(awk -v m="$plain_ms" 'BEGIN { print m / 1000 }')"
printf '  %-46s %8s x   (goal <= 1.2x: %s)\n' "ratio" "$ratio" "$verdict"
printf '  %-46s %8.1f s\n' "make iso, warm (cached)" "$(awk -v m="$warm_ms" 'BEGIN { print m / 1000 }')"
printf '  %-46s %8d MiB\n' "ISO size" "$(( iso_bytes / 1048576 ))"
printf '  %-46s %8d MiB  (plain: %d MiB)\n' "squashfs in it" "$(( squash_bytes / 1048576 ))" "$(( plain_squash_bytes / 1048576 ))"
echo "$boots" | sed 's/^/  /'
