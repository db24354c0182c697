#!/bin/bash
# Installs, on a Debian bookworm machine, everything the test tiers need:
# container and VM tooling (mmdebstrap, systemd-nspawn, QEMU from
# bookworm-backports, OVMF), eBPF build and benchmark dependencies (bpftool,
# perf, hackbench), btrfs tools, the TPM emulator, and what `make deb` needs
# (dpkg-dev, debhelper, lintian), what `make iso` needs (squashfs-tools,
# xorriso, mtools, GRUB for BIOS and UEFI, faketime), and what the desktop
# assistant builds against and `make test-desktop` runs it in (GTK 4,
# libadwaita, sway, grim, wtype).
#
# Idempotent and cheap when everything is present: it asks dpkg first and only
# touches apt when something is missing. Must run as root (CI runs it on a
# fresh clone as root).
set -euo pipefail

stage() { printf '==> install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

# Packages taken from bookworm itself.
BASE_PACKAGES=(
    dbus mmdebstrap systemd-container e2fsprogs busybox-static
    ovmf
    clang libelf-dev zlib1g-dev pkg-config bpftool linux-perf rt-tests
    btrfs-progs libbtrfsutil-dev libclang-dev
    # quantumd reads cells' output with sd-journal (quantumctl logs)
    libsystemd-dev
    swtpm swtpm-tools tpm2-tools libtss2-dev
    lintian
    # make deb: dpkg-buildpackage, dpkg-scanpackages and dh (debhelper 13.11
    # provides dh-sequence-installsysusers)
    dpkg-dev debhelper
    # make iso: squashfs, hybrid BIOS + UEFI ISO (grub-mkrescue), a frozen
    # clock for reproducible grub-mkrescue output
    squashfs-tools xorriso mtools dosfstools grub-common grub-pc-bin grub-efi-amd64-bin faketime
    # desktop/ (a workspace member: `cargo build --workspace` and clippy need
    # these), and its test: sway with a headless output, grim for the
    # screenshots, wtype to type as a person would, desktop-file-validate for
    # its .desktop file; the icon theme and the font libadwaita expects, so
    # that screenshots look as on a desktop
    libgtk-4-dev libadwaita-1-dev sway grim wtype desktop-file-utils adwaita-icon-theme fonts-cantarell
    # quantum-cluster: the etcd client's gRPC code is generated at build
    # time (protoc and the well-known .proto files); the cluster tests run
    # three etcd members (Debian's etcd 3.4)
    protobuf-compiler libprotobuf-dev etcd-server
)
# Packages that must come from bookworm-backports: bookworm's own QEMU 7.2
# would downgrade (remove) the machine's newer qemu-utils.
BACKPORTS_PACKAGES=(qemu-system-x86)

BACKPORTS_SOURCE=/etc/apt/sources.list.d/quantumos-bookworm-backports.sources

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

# A QEMU from backports carries "~bpo12" in its version.
qemu_from_backports() {
    is_installed qemu-system-x86 &&
        dpkg-query -W -f='${Version}' qemu-system-x86 | grep -q 'bpo'
}

missing_base() {
    local p
    for p in "${BASE_PACKAGES[@]}"; do
        is_installed "$p" || printf '%s\n' "$p"
    done
}

# The Debian mirror this machine already uses, so that backports come from
# the same place (a local mirror, a snapshot, or deb.debian.org).
debian_mirror() {
    local uri=""
    if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
        uri=$(awk '
            /^[[:space:]]*#/ { next }
            /^$/ { if (u != "" && s ~ /(^|[[:space:]])bookworm([[:space:]]|$)/) { print u; exit } u = ""; s = ""; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { $1 = ""; s = $0 }
            END { if (u != "" && s ~ /(^|[[:space:]])bookworm([[:space:]]|$)/) print u }
        ' /etc/apt/sources.list.d/*.sources | head -n1)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 ~ / bookworm / {
                for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list | head -n1)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

[ "$(id -u)" -eq 0 ] || die "must run as root"
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] ||
    stage "warning: this is ${PRETTY_NAME:-an unknown system}, not Debian bookworm; trying anyway"

stage "checking installed packages"
mapfile -t MISSING < <(missing_base)
NEED_QEMU=0
qemu_from_backports || NEED_QEMU=1

if [ "${#MISSING[@]}" -eq 0 ] && [ "$NEED_QEMU" -eq 0 ]; then
    stage "everything is already installed ($(dpkg-query -W -f='qemu-system-x86 ${Version}' qemu-system-x86))"
    exit 0
fi
[ "${#MISSING[@]}" -eq 0 ] || stage "missing: ${MISSING[*]}"
[ "$NEED_QEMU" -eq 0 ] || stage "missing: qemu-system-x86 from bookworm-backports"

if grep -rqsE '(^|[[:space:]])bookworm-backports([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
    stage "bookworm-backports is already in apt's sources"
else
    MIRROR=$(debian_mirror)
    stage "adding bookworm-backports from $MIRROR ($BACKPORTS_SOURCE)"
    cat >"$BACKPORTS_SOURCE" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

stage "apt-get update"
apt-get update -q

if [ "${#MISSING[@]}" -gt 0 ]; then
    stage "installing from bookworm: ${MISSING[*]}"
    # Packages' services are not started here (etcd-server's init script
    # would start a member on 2379 on this machine): policy-rc.d says no
    # for the length of the install, unless the machine already has one.
    POLICY=/usr/sbin/policy-rc.d
    OWN_POLICY=0
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        OWN_POLICY=1
        trap 'rm -f "$POLICY"' EXIT
    fi
    apt-get install -y -q --no-install-recommends "${MISSING[@]}"
    if [ "$OWN_POLICY" -eq 1 ]; then
        rm -f "$POLICY"
        trap - EXIT
    fi
fi

if [ "$NEED_QEMU" -eq 1 ]; then
    stage "installing from bookworm-backports: ${BACKPORTS_PACKAGES[*]}"
    apt-get install -y -q --no-install-recommends -t bookworm-backports "${BACKPORTS_PACKAGES[@]}"
fi

stage "checking the result"
mapfile -t STILL_MISSING < <(missing_base)
[ "${#STILL_MISSING[@]}" -eq 0 ] || die "still missing after install: ${STILL_MISSING[*]}"
qemu_from_backports || die "qemu-system-x86 is not the bookworm-backports build"
stage "done: $(qemu-system-x86_64 --version | head -n1)"
