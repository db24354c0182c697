#!/bin/bash
# The QuantumOS kernel as Debian packages, in one directory an image (or apt)
# installs from:
#
#   linux-image-<release>_<kver>-1_amd64.deb   the kernel (kernel/build.sh's
#                                               bindeb-pkg output, copied)
#   quantumos-kmod_<version>_amd64.deb          the Rust modules (steppps.ko),
#                                               loaded at boot (modules-load.d),
#                                               and quantumd's drop-in that
#                                               lets it read /dev/steppps
#   quantumos-kernel_<version>_amd64.deb        the metapackage: both, exactly
#
# usage: kernel/build-debs.sh KERNEL_DIR STEPPPS_KO OUT_DIR
#   KERNEL_DIR  a kernel/build.sh output directory
#   STEPPPS_KO  steppps.ko built against it (make kmod)
#   OUT_DIR     replaced by the three packages
#
# <version> is the project's (debian/changelog) plus the kernel's, e.g.
# 0.1.0+6.12.57: a module only loads into the kernel it was built against,
# so each kernel gets its own quantumos-kmod. The packages are reproducible:
# file dates are the kernel source's release date, owners root.
set -euo pipefail

stage() { printf '==> kernel-debs: %s\n' "$*" >&2; }
die() { printf 'kernel-debs: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 3 ] || die "usage: $0 KERNEL_DIR STEPPPS_KO OUT_DIR"
KDIR=$1 KO=$2 OUT=$3
ROOT=$(cd "$(dirname "$0")/.." && pwd)

[ -f "$KDIR/done" ] || die "$KDIR is not a finished kernel build (run make kernel)"
[ -f "$KO" ] || die "no module at $KO (run make kmod)"
RELEASE=$(cat "$KDIR/linux/include/config/kernel.release")
KVER=${RELEASE%-quantumos}
IMAGE_DEB=$(ls -1 "$KDIR"/linux-image-"$RELEASE"_*.deb 2>/dev/null | grep -v -- '-dbg_' | head -n1)
[ -n "$IMAGE_DEB" ] || die "$KDIR has no linux-image-${RELEASE}_*.deb (bindeb-pkg)"
IMAGE_DEB_VERSION=$(dpkg-deb -f "$IMAGE_DEB" Version)
PROJECT_VERSION=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version)
VERSION=$PROJECT_VERSION+$KVER
# The same date as the kernel build (kernel/build.sh), for the same reason.
EPOCH=$(date -u -d "$(zcat /usr/share/doc/linux-source-6.12/changelog.Debian.gz | sed -n 's/^ -- .*>  //p' | head -n1)" +%s)
# A module loads only into the kernel it was built for: its vermagic must
# name this release.
modinfo -F vermagic "$KO" | grep -q "^$RELEASE " ||
    die "$KO was built for '$(modinfo -F vermagic "$KO")', not $RELEASE"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# control file fields common to both packages
common() {
    cat <<EOF
Version: $VERSION
Architecture: amd64
Maintainer: QuantumOS developers <dev@quantumos.invalid>
Section: kernel
Priority: optional
Homepage: https://quantumos.invalid/
EOF
}

copyright() {
    install -d "$1/usr/share/doc/$2"
    cat >"$1/usr/share/doc/$2/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: QuantumOS

Files: *
Copyright: QuantumOS developers
License: GPL-2.0-only
 On Debian systems the full text of the GNU General Public License version 2
 is in /usr/share/common-licenses/GPL-2.
EOF
}

pack() {
    local dir=$1 name=$2
    find "$dir" -exec touch -h -d "@$EPOCH" {} +
    SOURCE_DATE_EPOCH=$EPOCH dpkg-deb --root-owner-group -Zxz --build "$dir" \
        "$WORK/out/${name}_${VERSION}_amd64.deb" >/dev/null
    stage "built ${name}_${VERSION}_amd64.deb"
}

mkdir -p "$WORK/out"

# quantumos-kmod
P=$WORK/quantumos-kmod
install -D -m 0644 "$KO" "$P/lib/modules/$RELEASE/updates/steppps.ko"
install -D -m 0644 /dev/stdin "$P/usr/lib/modules-load.d/quantumos-steppps.conf" <<'EOF'
# Installed by quantumos-kmod: quantumd reads node figures from /dev/steppps.
steppps
EOF
install -D -m 0644 "$ROOT/kmod/steppps/systemd/quantumd-steppps.conf" \
    "$P/usr/lib/systemd/system/quantumd.service.d/steppps.conf"
copyright "$P" quantumos-kmod
install -d "$P/DEBIAN"
{
    echo "Package: quantumos-kmod"
    common
    echo "Depends: linux-image-$RELEASE (= $IMAGE_DEB_VERSION), kmod"
    echo "Description: QuantumOS kernel modules written in Rust"
    echo " steppps exposes node figures (memory, CPUs, load, pressure) on"
    echo " /dev/steppps for quantumd, with poll() for changes. Loaded at boot;"
    echo " quantumd reads it when it is there and says so in its log."
} >"$P/DEBIAN/control"
# depmod for the one release the module is for; modules-load.d is read at
# the next boot (or `modprobe steppps` now).
for script in postinst postrm; do
    cat >"$P/DEBIAN/$script" <<EOF
#!/bin/sh
set -e
if [ -d /lib/modules/$RELEASE ]; then
    depmod -a $RELEASE
fi
EOF
    chmod 0755 "$P/DEBIAN/$script"
done
pack "$P" quantumos-kmod

# quantumos-kernel
P=$WORK/quantumos-kernel
copyright "$P" quantumos-kernel
install -d "$P/DEBIAN"
{
    echo "Package: quantumos-kernel"
    common
    echo "Depends: linux-image-$RELEASE (= $IMAGE_DEB_VERSION), quantumos-kmod (= $VERSION)"
    echo "Description: the QuantumOS kernel (Linux $KVER LTS with Rust) and its modules"
    echo " Linux $KVER with CONFIG_RUST, BTF for quantumd's eBPF programs, cgroup v2"
    echo " controllers, virtio and TPM 2.0 built in (no initramfs needed in a VM),"
    echo " and quantumos-kmod's Rust modules."
} >"$P/DEBIAN/control"
pack "$P" quantumos-kernel

cp "$IMAGE_DEB" "$WORK/out/"
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
mv "$WORK/out" "$OUT"
stage "$OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
