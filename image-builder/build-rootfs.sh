#!/bin/bash
# Builds the QuantumOS guest image of a variant (image-builder/variants/NAME/)
# in two cached steps:
#
#   rootfs  mmdebstrap --variant=minbase of the variant's package list (plus
#           packaging/cells/packages.list), kept as a tarball under
#           $QUANTUM_CACHE/rootfs/<sha256 of its inputs>/rootfs.tar
#   image   that rootfs + the project's files (binaries, packaging/, the test
#           agent), users and unit states, kept under
#           $QUANTUM_CACHE/image/<variant>/<sha256 of rootfs hash + files>/ as
#             tree/        the composed root directory (systemd-nspawn -D)
#             disk.raw     an ext4 image of tree/ (QEMU, virtio, root=/dev/vda)
#             vmlinuz, initrd.img, cmdline   for QEMU -kernel/-initrd/-append
#             image.env    what the test harness reads (paths relative to it)
#           and $QUANTUM_CACHE/image/<variant>/current -> <hash>
#
# Both steps are skipped when their hash is already in the cache, so a second
# run costs seconds; neither step needs the cache to be warm.
#
# usage: build-rootfs.sh [rootfs|image|path] [--variant NAME]
#   rootfs  build (or find) the rootfs tarball only
#   image   build (or find) the rootfs, then compose the image (default)
#   path    print the directory of the current image, build nothing
# environment: QUANTUM_CACHE (default: <repo>/.cache), QUANTUM_MIRROR and
#   QUANTUM_SECURITY_MIRROR (default: the mirrors this machine's apt uses),
#   SOURCE_DATE_EPOCH (default: a fixed date, so it does not change the hash),
#   QUANTUM_KERNEL_DEBS (a variant with KERNEL=quantumos in its image.conf:
#   the directory kernel/build-debs.sh fills, which `make image` passes).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/image-builder/build-rootfs.sh"
CACHE=${QUANTUM_CACHE:-$REPO/.cache}
VARIANT=test-guest
ACTION=image
# Bump when the rootfs recipe below changes in a way its inputs do not show.
ROOTFS_RECIPE=rootfs-v1

while [ $# -gt 0 ]; do
    case "$1" in
        rootfs|image|path) ACTION=$1 ;;
        --variant) VARIANT=${2:?--variant needs a name}; shift ;;
        --variant=*) VARIANT=${1#--variant=} ;;
        -h|--help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-rootfs.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

VARIANT_DIR="$REPO/image-builder/variants/$VARIANT"
CELLS_PACKAGES="$REPO/packaging/cells/packages.list"
IMAGES="$CACHE/image/$VARIANT"

stage() { printf '==> build-rootfs[%s]: %s\n' "$VARIANT" "$*"; }
note() { printf '    note: %s\n' "$*"; }
die() { printf 'build-rootfs.sh: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

# Lines of a declarative file without comments and blank lines.
data_lines() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^[[:space:]]*$/d' "$1"; }
conf() { data_lines "$VARIANT_DIR/image.conf" | sed -n "s/^$1=//p" | tail -n1; }

[ -d "$VARIANT_DIR" ] || die "no variant '$VARIANT' (expected $VARIANT_DIR)"

# A variant may take its root file system from another one (ROOTFS_FROM=NAME
# in its image.conf): that variant's packages, initramfs modules and rootfs
# hooks, so that the rootfs is built and cached once for both. The image step
# still composes this variant's own files, units, users and command line.
ROOTFS_VARIANT=$(conf ROOTFS_FROM); ROOTFS_VARIANT=${ROOTFS_VARIANT:-$VARIANT}
ROOTFS_VARIANT_DIR="$REPO/image-builder/variants/$ROOTFS_VARIANT"
[ -d "$ROOTFS_VARIANT_DIR" ] || die "$VARIANT_DIR/image.conf: ROOTFS_FROM=$ROOTFS_VARIANT names no variant"

if [ "$ACTION" = path ]; then
    [ -e "$IMAGES/current/image.env" ] || die "no image built for '$VARIANT' yet (run: make image)"
    readlink -f "$IMAGES/current"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap, file ownership in the image)"
for tool in mmdebstrap mkfs.ext4 systemctl systemd-sysusers sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh (make deps)"
done

SUITE=$(conf SUITE); SUITE=${SUITE:-bookworm}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1747699200}

# The URI that this machine's apt uses for SUITE, so the guest comes from the
# same mirror (a local one, a snapshot or deb.debian.org).
apt_uri() {
    local suite=$1 uri=""
    if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
        uri=$(awk -v want="$suite" '
            function flush() { if (u != "" && (" " s " ") ~ (" " want " ")) { print u; found = 1; exit } u = ""; s = "" }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { $1 = ""; s = $0; gsub(/^ +| +$/, "", s) }
            END { if (!found) flush() }
        ' /etc/apt/sources.list.d/*.sources | head -n1)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk -v want="$suite" '$1 == "deb" {
                for (i = 2; i < NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i + 1) == want) print $i; break } }' \
            /etc/apt/sources.list | head -n1)
    fi
    printf '%s\n' "$uri"
}

MIRROR=${QUANTUM_MIRROR:-$(apt_uri "$SUITE")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${QUANTUM_SECURITY_MIRROR:-$(apt_uri "$SUITE-security")}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

mkdir -p "$CACHE/rootfs" "$IMAGES"
# One build at a time per cache (a second `make image` waits for the first).
exec 9>"$CACHE/.build.lock"
flock 9

# ---------------------------------------------------------------- rootfs ---

package_list() {
    {
        data_lines "$ROOTFS_VARIANT_DIR/packages"
        if [ -f "$CELLS_PACKAGES" ]; then data_lines "$CELLS_PACKAGES"; fi
    } | awk '{ print $1 }' | LC_ALL=C sort -u
}

rootfs_inputs() {
    echo "recipe $ROOTFS_RECIPE"
    echo "variant $ROOTFS_VARIANT"
    echo "suite $SUITE"
    echo "arch amd64"
    echo "mirror $MIRROR"
    echo "security-mirror $SECURITY_MIRROR"
    echo "source-date-epoch $SOURCE_DATE_EPOCH"
    echo "mmdebstrap $(mmdebstrap --version | awk '{ print $2 }')"
    package_list | sed 's/^/package /'
    if [ -f "$ROOTFS_VARIANT_DIR/initramfs-modules" ]; then
        data_lines "$ROOTFS_VARIANT_DIR/initramfs-modules" | sed 's/^/initramfs-module /'
    fi
    local hook
    for hook in $(rootfs_hooks); do
        echo "rootfs-hook $(basename "$hook") $(sha256sum "$hook" | cut -c1-64)"
    done
}

# The variant's customize hooks (rootfs-hooks/*, run by mmdebstrap in name
# order with the root directory as $1), for what a package list cannot say.
rootfs_hooks() {
    local hook
    for hook in "$ROOTFS_VARIANT_DIR"/rootfs-hooks/*; do
        [ -f "$hook" ] && [ -x "$hook" ] && echo "$hook"
    done
    return 0
}

ROOTFS_HASH=$(rootfs_inputs | sha256sum | cut -c1-64)
ROOTFS_DIR="$CACHE/rootfs/$ROOTFS_HASH"
ROOTFS_TAR="$ROOTFS_DIR/rootfs.tar"

build_rootfs() {
    if [ -f "$ROOTFS_TAR" ]; then
        stage "rootfs $ROOTFS_HASH is cached ($ROOTFS_TAR)"
        return
    fi
    [ -f "$CELLS_PACKAGES" ] || note "no $CELLS_PACKAGES yet: only the variant's packages"
    local started tmp packages
    started=$(now)
    tmp="$ROOTFS_DIR.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    rootfs_inputs >"$tmp/inputs.txt"
    packages=$(package_list | paste -sd, -)
    stage "building rootfs $ROOTFS_HASH with mmdebstrap ($SUITE from $MIRROR; log: $tmp/mmdebstrap.log)"
    stage "packages: ${packages//,/ }"

    local -a hooks=()
    if [ -f "$ROOTFS_VARIANT_DIR/initramfs-modules" ]; then
        # Before the kernel is installed, so its initramfs is built once and
        # small: only the modules listed (MODULES=list).
        hooks+=(--essential-hook="mkdir -p \"\$1/etc/initramfs-tools/conf.d\" \"\$1/usr/share/initramfs-tools/modules.d\"")
        hooks+=(--essential-hook="echo MODULES=list > \"\$1/etc/initramfs-tools/conf.d/quantumos\"")
        hooks+=(--essential-hook="sed -e 's/#.*//' -e '/^[[:space:]]*\$/d' '$ROOTFS_VARIANT_DIR/initramfs-modules' > \"\$1/usr/share/initramfs-tools/modules.d/quantumos\"")
    fi

    local hook
    for hook in $(rootfs_hooks); do
        hooks+=(--customize-hook="$hook")
    done

    if ! mmdebstrap \
        --variant=minbase \
        --arch=amd64 \
        --format=tar \
        --include="$packages" \
        --aptopt='APT::Install-Recommends "false"' \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        "${hooks[@]}" \
        "$SUITE" "$tmp/rootfs.tar" \
        "deb $MIRROR $SUITE main" \
        "deb $MIRROR $SUITE-updates main" \
        "deb $SECURITY_MIRROR $SUITE-security main" \
        >"$tmp/mmdebstrap.log" 2>&1
    then
        tail -n 40 "$tmp/mmdebstrap.log" >&2
        die "mmdebstrap failed (full log: $tmp/mmdebstrap.log)"
    fi
    rm -rf "$ROOTFS_DIR"
    mv "$tmp" "$ROOTFS_DIR"
    stage "rootfs built in $(( $(now) - started )) s: $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
    prune_rootfs
}

# Keeps the two newest rootfs tarballs; a rootfs is 300-700 MB.
prune_rootfs() {
    local old
    for old in $(ls -1td "$CACHE"/rootfs/*/ 2>/dev/null | tail -n +3); do
        old=${old%/}
        [ "$old" = "$ROOTFS_DIR" ] && continue
        note "pruning old rootfs $(basename "$old")"
        rm -rf "$old"
    done
}

build_rootfs
[ "$ACTION" = rootfs ] && exit 0

# ----------------------------------------------------------------- image ---

# Expands the `files` rules into lines "KIND SOURCE DESTINATION MODE" for the
# sources that exist (KIND file or dir), and notes the rules matching nothing.
# Build outputs (`target/...`) are looked up where cargo put them:
# $CARGO_TARGET_DIR when set; fetched data (`cache/...`, e.g. the intent
# model from `make model`) under $QUANTUM_CACHE. Both are required: an image
# without quantumd or its model would boot and fail tests for a less obvious
# reason.
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

# The file a source names: absolute as given, else relative to the repository.
src_path() {
    if [[ "$1" == /* ]]; then echo "$1"; else echo "$REPO/$1"; fi
}

# Fails (in the calling shell) when a build output the variant installs is
# missing.
require_build_outputs() {
    local src dest mode
    while read -r src dest mode; do
        case "$src" in
            target/*)
                compgen -G "$TARGET_DIR/${src#target/}" >/dev/null ||
                    die "build output $TARGET_DIR/${src#target/} is missing: run \`cargo build --release -p quantumd -p quantumctl -p quantum-cell\` (make image does)"
                ;;
            cache/*)
                compgen -G "$CACHE/${src#cache/}" >/dev/null ||
                    die "$CACHE/${src#cache/} is missing: run \`make model\` (make image does)"
                ;;
        esac
    done < <(data_lines "$VARIANT_DIR/files")
}

resolve_files() {
    local src dest mode path matched base
    while read -r src dest mode; do
        matched=0
        base=$REPO
        if [[ "$src" == target/* ]]; then
            base=$(dirname "$TARGET_DIR")/$(basename "$TARGET_DIR")
            src=${src#target/}
        elif [[ "$src" == cache/* ]]; then
            base=$(cd "$CACHE" && pwd)
            src=${src#cache/}
        fi
        if [[ "$src" == */ ]]; then
            for path in "$base"/${src%/}; do
                [ -d "$path" ] || continue
                matched=1
                echo "dir ${path#"$REPO"/} $dest $mode"
            done
        else
            for path in "$base"/$src; do
                [ -f "$path" ] || continue
                matched=1
                echo "file ${path#"$REPO"/} $dest $mode"
            done
        fi
        [ "$matched" -eq 1 ] || echo "missing $src $dest $mode"
    done < <(data_lines "$VARIANT_DIR/files")
}

# KERNEL=quantumos in image.conf: the image boots the QuantumOS kernel
# (kernel/), installed from its packages, instead of the rootfs's Debian one.
KERNEL_FROM=$(conf KERNEL)
case "$KERNEL_FROM" in
    "" | debian) KERNEL_FROM=debian ;;
    quantumos)
        [ -n "${QUANTUM_KERNEL_DEBS:-}" ] ||
            die "variant $VARIANT boots the QuantumOS kernel: set QUANTUM_KERNEL_DEBS to kernel/build-debs.sh's output (make image does)"
        compgen -G "$QUANTUM_KERNEL_DEBS/linux-image-*.deb" >/dev/null &&
            compgen -G "$QUANTUM_KERNEL_DEBS/quantumos-kernel_*.deb" >/dev/null ||
            die "QUANTUM_KERNEL_DEBS=$QUANTUM_KERNEL_DEBS has no linux-image-*.deb and quantumos-kernel_*.deb (make kernel-debs builds them)"
        ;;
    *) die "$VARIANT_DIR/image.conf: KERNEL=$KERNEL_FROM: expected debian or quantumos" ;;
esac

kernel_debs() { ls -1 "$QUANTUM_KERNEL_DEBS"/*.deb | LC_ALL=C sort; }

image_inputs() {
    echo "rootfs $ROOTFS_HASH"
    if [ "$KERNEL_FROM" = quantumos ]; then
        local deb
        while read -r deb; do
            echo "kernel-deb $(basename "$deb") $(sha256sum "$deb" | cut -c1-64)"
        done < <(kernel_debs)
    fi
    echo "compose-script $(sha256sum "$SELF" | cut -c1-64)"
    local f
    for f in files units users cmdline image.conf; do
        [ -f "$VARIANT_DIR/$f" ] && echo "variant-$f $(sha256sum "$VARIANT_DIR/$f" | cut -c1-64)"
    done
    local kind src dest mode
    while read -r kind src dest mode; do
        case "$kind" in
            file) echo "file $src $dest $mode $(sha256sum "$(src_path "$src")" | cut -c1-64)" ;;
            dir)
                (cd "$(src_path "$src")" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum) |
                    sha256sum | cut -c1-64 | sed "s|^|dir $src $dest |"
                ;;
            missing) echo "missing $src" ;;
        esac
    done < <(resolve_files)
}

require_build_outputs
IMAGE_HASH=$(image_inputs | sha256sum | cut -c1-64)
IMAGE_DIR="$IMAGES/$IMAGE_HASH"

point_current() {
    ln -sfn "$IMAGE_HASH" "$IMAGES/.current.tmp"
    mv -T "$IMAGES/.current.tmp" "$IMAGES/current"
}

if [ -f "$IMAGE_DIR/image.env" ]; then
    point_current
    stage "image $IMAGE_HASH is cached ($IMAGE_DIR)"
    exit 0
fi

started=$(now)
TMP_IMAGE="$IMAGE_DIR.tmp"
TREE="$TMP_IMAGE/tree"
rm -rf "$TMP_IMAGE"
mkdir -p "$TREE"
image_inputs >"$TMP_IMAGE/inputs.txt"

stage "composing image $IMAGE_HASH from rootfs $ROOTFS_HASH"
tar -C "$TREE" --numeric-owner --xattrs --xattrs-include='*' -xpf "$ROOTFS_TAR"

stage "installing project files"
while read -r kind src dest mode; do
    case "$kind" in
        file)
            install -D -m "$mode" -o root -g root "$(src_path "$src")" "$TREE$dest$(basename "$src")"
            echo "    $src -> $dest"
            ;;
        dir)
            mkdir -p "$TREE$dest"
            cp -r --no-preserve=ownership "$(src_path "$src")" "$TREE$dest"
            chmod -R u=rwX,go=rX "$TREE$dest$(basename "$src")"
            echo "    $src/ -> $dest"
            ;;
        missing) note "skipped $src (nothing there yet)" ;;
    esac
done < <(resolve_files)

stage "system identity"
HOSTNAME_=$(conf HOSTNAME); HOSTNAME_=${HOSTNAME_:-quantumos}
echo "$HOSTNAME_" >"$TREE/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    "$HOSTNAME_" >"$TREE/etc/hosts"
# Every boot gets its own machine id (an empty file, not a missing one, so
# that boots are not "first boots").
: >"$TREE/etc/machine-id"
rm -f "$TREE/var/lib/dbus/machine-id"

stage "system users (sysusers.d) and login users"
systemd-sysusers --root="$TREE" >/dev/null
while read -r user groups; do
    primary=${groups%%,*}
    chroot "$TREE" groupadd -f "$primary"
    for g in ${groups//,/ }; do chroot "$TREE" groupadd -f "$g"; done
    if ! chroot "$TREE" id "$user" >/dev/null 2>&1; then
        chroot "$TREE" useradd --create-home --shell /bin/bash \
            --gid "$primary" --groups "$groups" "$user"
    fi
    # No password: the user is logged in on the serial console automatically
    # and cannot log in any other way.
    chroot "$TREE" passwd --lock "$user" >/dev/null
    echo "    $user (groups: $groups)"
done < <(data_lines "$VARIANT_DIR/users")

stage "unit states"
while read -r action unit; do
    if ! [ -e "$TREE/usr/lib/systemd/system/$unit" ] && ! [ -e "$TREE/lib/systemd/system/$unit" ] &&
        ! [ -e "$TREE/etc/systemd/system/$unit" ]; then
        note "not installed, skipped: $action $unit"
        continue
    fi
    systemctl --root="$TREE" --quiet "$action" "$unit"
    echo "    $action $unit"
done < <(data_lines "$VARIANT_DIR/units")

if [ "$KERNEL_FROM" = quantumos ]; then
    stage "the QuantumOS kernel and modules (dpkg -i in the tree)"
    mkdir -p "$TREE/tmp/quantumos-kernel"
    while read -r deb; do cp "$deb" "$TREE/tmp/quantumos-kernel/"; done < <(kernel_debs)
    # The kernel's postinst runs the rootfs's kernel hooks as a real install
    # would (initramfs-tools makes an initrd the ISO or a bootloader may use;
    # QEMU boots this kernel without one).
    chroot "$TREE" sh -c 'dpkg -i /tmp/quantumos-kernel/*.deb' >"$TMP_IMAGE/kernel-install.log" 2>&1 ||
        die "installing the kernel packages failed: $(tail -n 20 "$TMP_IMAGE/kernel-install.log")"
    rm -rf "$TREE/tmp/quantumos-kernel"
    chroot "$TREE" dpkg-query -W -f '    ${Package} ${Version}\n' quantumos-kernel quantumos-kmod 'linux-image-*-quantumos'
fi

stage "kernel and initramfs for QEMU"
if [ "$KERNEL_FROM" = quantumos ]; then
    KVER=$(cd "$TREE/lib/modules" && ls -1d *-quantumos | sort -V | tail -n1)
    KERNEL=$TREE/boot/vmlinuz-$KVER
    [ -f "$KERNEL" ] || die "the QuantumOS kernel package left no $KERNEL"
    INITRD=
else
    KERNEL=$(ls -1 "$TREE"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1)
    [ -n "$KERNEL" ] || die "the rootfs has no /boot/vmlinuz-* (is linux-image-amd64 in the package list?)"
    KVER=${KERNEL##*/vmlinuz-}
    [ -f "$TREE/boot/initrd.img-$KVER" ] || die "the rootfs has no /boot/initrd.img-$KVER"
    INITRD=initrd.img
    cp "$TREE/boot/initrd.img-$KVER" "$TMP_IMAGE/initrd.img"
fi
cp "$KERNEL" "$TMP_IMAGE/vmlinuz"
data_lines "$VARIANT_DIR/cmdline" | tr '\n' ' ' | sed 's/ *$//' >"$TMP_IMAGE/cmdline"
echo "    kernel $KVER, initrd ${INITRD:+$(du -h "$TMP_IMAGE/$INITRD" | cut -f1)}${INITRD:-none (booted directly)}, cmdline: $(cat "$TMP_IMAGE/cmdline")"

DISK_MIB=$(conf DISK_SIZE_MIB); DISK_MIB=${DISK_MIB:-4096}
TREE_MIB=$(du -sm "$TREE" | cut -f1)
[ "$TREE_MIB" -lt $((DISK_MIB * 3 / 4)) ] ||
    die "the tree ($TREE_MIB MiB) does not fit well in DISK_SIZE_MIB=$DISK_MIB: raise it in $VARIANT_DIR/image.conf"
# The image file is sparse: it takes about the tree's size on the host.
# Say so plainly rather than let mkfs.ext4 fail half-way with ENOSPC.
FREE_MIB=$(df -Pm "$TMP_IMAGE" | awk 'NR == 2 { print $4 }')
[ "$FREE_MIB" -gt $((TREE_MIB + 512)) ] ||
    die "no room for the disk image: it needs about $((TREE_MIB + 512)) MiB on $(df -P "$TMP_IMAGE" | awk 'NR == 2 { print $6 }'), $FREE_MIB MiB are free (point QUANTUM_CACHE elsewhere or free some space)"
stage "ext4 disk image: $DISK_MIB MiB, $TREE_MIB MiB used (mkfs.ext4 -d)"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -d "$TREE" -L quantumos-root \
    -U 5154554d-0000-4000-8000-000000000001 -E root_owner=0:0 \
    "$TMP_IMAGE/disk.raw" "${DISK_MIB}M" >/dev/null

MEMORY=$(conf VM_MEMORY_MIB)
CPUS=$(conf VM_CPUS)
cat >"$TMP_IMAGE/image.env" <<EOF
# Written by image-builder/build-rootfs.sh; read by tests/vm (quantum-vmtest).
# Paths are relative to this file's directory.
VARIANT=$VARIANT
IMAGE_HASH=$IMAGE_HASH
ROOTFS_HASH=$ROOTFS_HASH
KERNEL_VERSION=$KVER
KERNEL=vmlinuz
INITRD=$INITRD
CMDLINE_FILE=cmdline
DISK=disk.raw
TREE=tree
VM_MEMORY_MIB=${MEMORY:-2560}
VM_CPUS=${CPUS:-2}
EOF

rm -rf "$IMAGE_DIR"
mv "$TMP_IMAGE" "$IMAGE_DIR"
previous=$(readlink "$IMAGES/current" 2>/dev/null || true)
point_current
stage "image built in $(( $(now) - started )) s: $IMAGE_DIR"

# Keeps the new image and the one before it; each is ~1.5 GB (tree + disk).
for old in "$IMAGES"/*/; do
    old=$(basename "$old")
    case "$old" in "$IMAGE_HASH"|"$previous"|current) continue ;; esac
    note "pruning old image $old"
    rm -rf "${IMAGES:?}/$old"
done
