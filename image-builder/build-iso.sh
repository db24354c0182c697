#!/bin/bash
# Builds the QuantumOS live ISO of a variant (image-builder/variants/iso/ by
# default): a hybrid BIOS + UEFI image (grub-mkrescue) that boots a live
# system (live-boot, squashfs) with QuantumOS installed from its .debs.
#
#   1. a flat apt repository of the .debs of `make deb` (dpkg-scanpackages)
#   2. mmdebstrap --variant=minbase of the variant's packages plus
#      QUANTUMOS_PACKAGES from that repository (apt resolves them as on a
#      user's machine), into a directory
#   3. the variant's files and unit states, identity, and what makes the tree
#      reproducible (shadow dates, logs, caches, machine-id, apt sources)
#   4. mksquashfs -comp zstd of the tree, times clamped to SOURCE_DATE_EPOCH
#   5. grub-mkrescue (under faketime: it stamps times of its own) of
#      live/filesystem.squashfs, live/vmlinuz, live/initrd.img, grub.cfg
#
# The result is cached by the sha256 of every input (this script, the
# variant, the files it installs, the .debs, the suite, mirror, tool
# versions, SOURCE_DATE_EPOCH) under
#   $QUANTUM_CACHE/iso/<hash>/  <ISO_NAME>, iso.env (read by tests/vm),
#                               inputs.txt, build.log
# and $QUANTUM_CACHE/iso/current -> <hash>.
#
# The frozen mirror: the Debian packages a build downloads are kept as a flat
# apt repository under $QUANTUM_CACHE/iso-mirror/<key>/, the key being what
# decides which packages apt picks (suite, package list, Recommends, the
# relations of the QuantumOS packages). A later build with the same key
# installs from that repository alone: offline, with exactly the same
# package versions however the archive has moved on, and its Packages index
# is one of the ISO's hashed inputs. QUANTUM_ISO_MIRROR says what to do:
#   auto      the frozen mirror when there is one, else the network (and
#             freeze what it downloaded) (default)
#   refresh   the network, replacing the frozen mirror (security updates)
#   frozen    the frozen mirror only; fail if there is none (offline builds)
#
# usage: build-iso.sh [build|path|check] [--variant NAME] [--out DIR] [--no-cache]
#   build       build (or find in the cache) the ISO (default)
#   path        print the directory of the current ISO, build nothing
#   check       build twice, in two fresh temporary directories, without the
#               cache (the second from the frozen mirror), and compare the
#               sha256 of the two ISOs; on a mismatch run diffoscope
#               (installed on demand) and fail
#   --out DIR   build into DIR (must not exist or be empty), not the cache
#   --no-cache  build even when the cache has the hash (with --out, implied)
# environment: QUANTUM_CACHE (default <repo>/.cache), QUANTUM_DEB_DIR (the
#   .debs; default $QUANTUM_CACHE/deb), QUANTUM_MIRROR and
#   QUANTUM_SECURITY_MIRROR (default: the mirrors this machine's apt uses),
#   QUANTUM_ISO_MIRROR (auto, refresh or frozen; see above),
#   SOURCE_DATE_EPOCH (default: the time of the last git commit).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/image-builder/build-iso.sh"
CACHE=${QUANTUM_CACHE:-$REPO/.cache}
DEB_DIR=${QUANTUM_DEB_DIR:-$CACHE/deb}
VARIANT=iso
ACTION=build
OUT=""
NO_CACHE=0
# Bump when the recipe below changes in a way its inputs do not show.
ISO_RECIPE=iso-v1

while [ $# -gt 0 ]; do
    case "$1" in
        build|path|check) ACTION=$1 ;;
        --variant) VARIANT=${2:?--variant needs a name}; shift ;;
        --variant=*) VARIANT=${1#--variant=} ;;
        --out) OUT=${2:?--out needs a directory}; shift ;;
        --out=*) OUT=${1#--out=} ;;
        --no-cache) NO_CACHE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-iso.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

VARIANT_DIR="$REPO/image-builder/variants/$VARIANT"
ISOS="$CACHE/iso"
STARTED=$(date +%s)

stage() { printf '==> build-iso[%s] %4ss: %s\n' "$VARIANT" "$(( $(date +%s) - STARTED ))" "$*"; }
note() { printf '    note: %s\n' "$*"; }
die() { printf 'build-iso.sh: error: %s\n' "$*" >&2; exit 1; }

data_lines() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^[[:space:]]*$/d' "$1"; }
conf() { data_lines "$VARIANT_DIR/image.conf" | sed -n "s/^$1=//p" | tail -n1; }

[ -d "$VARIANT_DIR" ] || die "no variant '$VARIANT' (expected $VARIANT_DIR)"
for f in packages cmdline image.conf files units; do
    [ -f "$VARIANT_DIR/$f" ] || die "variant '$VARIANT' has no $f ($VARIANT_DIR/$f)"
done

if [ "$ACTION" = path ]; then
    [ -e "$ISOS/current/iso.env" ] || die "no ISO built yet in $ISOS (run: make iso)"
    readlink -f "$ISOS/current"
    exit 0
fi

# ----------------------------------------------------------------- check ---
# Two complete builds in two different directories, bypassing the cache:
# what differs between them is what the recipe fails to pin down.
if [ "$ACTION" = check ]; then
    [ -z "$OUT" ] || die "check builds into temporary directories of its own; drop --out"
    CHECK_ROOT=$(mktemp -d "${TMPDIR:-/var/tmp}/quantumos-iso-check.XXXXXX")
    stage "reproducibility check: two builds under $CHECK_ROOT"
    for n in 1 2; do
        # Different depths too, so that a path leaking into the image shows.
        dir="$CHECK_ROOT/build-$n"
        [ "$n" = 2 ] && dir="$CHECK_ROOT/second/build-$n"
        stage "build $n of 2 in $dir"
        # The second build always installs from the frozen mirror, which the
        # first one made if there was none: then the check also shows that
        # a build from the network and one from its frozen packages agree.
        mode=${QUANTUM_ISO_MIRROR:-auto}
        [ "$n" = 1 ] || mode=frozen
        QUANTUM_ISO_MIRROR=$mode bash "$SELF" build --variant "$VARIANT" --out "$dir"
    done
    iso=$(conf ISO_NAME); iso=${iso:-quantumos-amd64.iso}
    a="$CHECK_ROOT/build-1/$iso" b="$CHECK_ROOT/second/build-2/$iso"
    sum_a=$(sha256sum "$a" | cut -c1-64)
    sum_b=$(sha256sum "$b" | cut -c1-64)
    echo "    build 1: $sum_a  $a"
    echo "    build 2: $sum_b  $b"
    if [ "$sum_a" = "$sum_b" ]; then
        stage "identical: sha256 $sum_a (both builds, $(du -h "$a" | cut -f1))"
        rm -rf "$CHECK_ROOT"
        exit 0
    fi
    stage "DIFFERENT: the two builds are not bit-for-bit identical"
    if ! command -v diffoscope >/dev/null; then
        stage "installing diffoscope (apt, only for this report)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            diffoscope squashfs-tools xorriso >/dev/null ||
            die "cannot install diffoscope; the ISOs are kept in $CHECK_ROOT"
    fi
    # The squashfs first: it holds nearly everything, and diffoscope on the
    # whole ISO takes much longer to say the same thing.
    report="$CHECK_ROOT/diffoscope.txt"
    stage "diffoscope of the two root file systems (squashfs) -> $report"
    diffoscope --text "$report" --max-report-size 2000000 --exclude-directory-metadata=no \
        "$CHECK_ROOT/build-1/work/filesystem.squashfs" \
        "$CHECK_ROOT/second/build-2/work/filesystem.squashfs" >/dev/null 2>&1 || true
    if [ ! -s "$report" ]; then
        stage "the squashfs images are identical: diffoscope of the ISOs -> $report"
        diffoscope --text "$report" --max-report-size 2000000 "$a" "$b" >/dev/null 2>&1 || true
    fi
    echo "    what differs (first lines of $report):"
    grep -E '^(│ )*(├──|--- |\+\+\+ )' "$report" | head -n 40 | sed 's/^/    /' || true
    die "the ISO is not reproducible: $sum_a != $sum_b (report: $report; builds kept in $CHECK_ROOT)"
fi

# ----------------------------------------------------------------- build ---

[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap, file ownership in the image)"
for tool in mmdebstrap mksquashfs grub-mkrescue xorriso mformat faketime dpkg-scanpackages systemctl sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh (make deps)"
done
[ -d /usr/lib/grub/i386-pc ] || die "/usr/lib/grub/i386-pc is missing (package grub-pc-bin): run make deps"
[ -d /usr/lib/grub/x86_64-efi ] || die "/usr/lib/grub/x86_64-efi is missing (package grub-efi-amd64-bin): run make deps"

# Every timestamp in the image comes from the commit, not from the clock.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null) ||
        die "SOURCE_DATE_EPOCH is not set and $REPO has no git commit to take it from"
fi
export SOURCE_DATE_EPOCH
export TZ=UTC LC_ALL=C.UTF-8

SUITE=$(conf SUITE); SUITE=${SUITE:-bookworm}
HOSTNAME_=$(conf HOSTNAME); HOSTNAME_=${HOSTNAME_:-quantumos}
QUANTUMOS_PACKAGES=$(conf QUANTUMOS_PACKAGES); QUANTUMOS_PACKAGES=${QUANTUMOS_PACKAGES:-quantumos}
# "none": the same system without QuantumOS (the boot-time baseline of
# bench/iso.sh, variant iso-baseline).
[ "$QUANTUMOS_PACKAGES" != none ] || QUANTUMOS_PACKAGES=""
RECOMMENDS=$(conf RECOMMENDS); RECOMMENDS=${RECOMMENDS:-no}
CATALOG_PACKAGES=$(conf CATALOG_PACKAGES); CATALOG_PACKAGES=${CATALOG_PACKAGES:-no}
CELLS_PACKAGES="$REPO/packaging/cells/packages.list"
APT_MIRROR=$(conf APT_MIRROR); APT_MIRROR=${APT_MIRROR:-http://deb.debian.org/debian}
APT_SECURITY_MIRROR=$(conf APT_SECURITY_MIRROR); APT_SECURITY_MIRROR=${APT_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
VOLUME_ID=$(conf VOLUME_ID); VOLUME_ID=${VOLUME_ID:-QUANTUMOS}
ISO_NAME=$(conf ISO_NAME); ISO_NAME=${ISO_NAME:-quantumos-amd64.iso}
GRUB_TIMEOUT=$(conf GRUB_TIMEOUT); GRUB_TIMEOUT=${GRUB_TIMEOUT:-2}
LIVE_ROOT_LOGIN=$(conf LIVE_ROOT_LOGIN); LIVE_ROOT_LOGIN=${LIVE_ROOT_LOGIN:-locked}
TEST_FW_CFG=$(conf TEST_FW_CFG)
LIVE_USER=$(conf LIVE_USER)

# The URI that this machine's apt uses for SUITE (see build-rootfs.sh).
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

# The .debs QuantumOS is installed from: all but the debug symbols.
mapfile -t DEBS < <(find "$DEB_DIR" -maxdepth 1 -name '*.deb' ! -name '*-dbgsym_*' 2>/dev/null | LC_ALL=C sort)
[ "${#DEBS[@]}" -gt 0 ] || die "no .deb in $DEB_DIR: run \`make deb\` (or set QUANTUM_DEB_DIR)"

src_path() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$REPO/$1"; fi; }

# CATALOG_PACKAGES=yes adds what the catalog's cells run (the Recommends of
# quantumos-cells, which apt installs by default, and postgresql).
catalog_packages() { [ "$CATALOG_PACKAGES" != yes ] || data_lines "$CELLS_PACKAGES"; }
PACKAGES=$( { data_lines "$VARIANT_DIR/packages"; catalog_packages; printf '%s\n' $QUANTUMOS_PACKAGES; } |
    awk '{ print $1 }' | LC_ALL=C sort -u | paste -sd, -)
recommends=false
[ "$RECOMMENDS" = yes ] && recommends=true

# ------------------------------------------------------- frozen mirror ---
MIRROR_MODE=${QUANTUM_ISO_MIRROR:-auto}
case "$MIRROR_MODE" in auto|refresh|frozen) ;; *) die "QUANTUM_ISO_MIRROR=$MIRROR_MODE (expected auto, refresh or frozen)" ;; esac
mirror_key() {
    echo "suite $SUITE"
    echo "arch amd64"
    echo "packages $PACKAGES"
    echo "recommends $recommends"
    local f
    for f in "${DEBS[@]}"; do
        dpkg-deb -f "$f" Package Pre-Depends Depends Recommends | tr '\n' ' '
        echo
    done
}
MIRRORS="$CACHE/iso-mirror"
FROZEN="$MIRRORS/$(mirror_key | sha256sum | cut -c1-16)"
# The frozen mirror's Release file: mmdebstrap finds the essential packages
# by suite (?archive/?codename), which a flat repository has only from here.
frozen_release() {
    {
        echo "Origin: Debian"
        echo "Label: Debian packages frozen by build-iso.sh"
        echo "Suite: $SUITE"
        echo "Codename: $SUITE"
        echo "Architectures: amd64 all"
        echo "SHA256:"
        printf ' %s %s Packages\n' "$(sha256sum "$1/Packages" | cut -c1-64)" "$(stat -c %s "$1/Packages")"
    } >"$1/Release.tmp"
    mv "$1/Release.tmp" "$1/Release"
}
FREEZE=0
if [ "$MIRROR_MODE" = refresh ] || { [ "$MIRROR_MODE" = auto ] && ! [ -f "$FROZEN/Packages" ]; }; then
    FREEZE=1
elif ! [ -f "$FROZEN/Packages" ]; then
    die "QUANTUM_ISO_MIRROR=frozen, but there is no frozen mirror for these packages ($FROZEN): build once with the network"
elif ! [ -f "$FROZEN/Release" ]; then
    frozen_release "$FROZEN"
fi

iso_inputs() {
    echo "recipe $ISO_RECIPE"
    echo "script $(sha256sum "$SELF" | cut -c1-64)"
    echo "variant $VARIANT"
    echo "suite $SUITE"
    echo "arch amd64"
    # The Debian packages by the index of the frozen mirror. A build from
    # the network knows it only once it has frozen what it downloaded, and
    # then takes the hash this gives (see "froze" below); until then the
    # mirror's URL stands in.
    if [ "$FREEZE" = 0 ] || [ "${FROZEN_NOW:-0}" = 1 ]; then
        echo "frozen-mirror $(sha256sum "$FROZEN/Packages" | cut -c1-64)"
    else
        echo "mirror $MIRROR"
        echo "security-mirror $SECURITY_MIRROR"
    fi
    echo "source-date-epoch $SOURCE_DATE_EPOCH"
    echo "mmdebstrap $(mmdebstrap --version | awk '{ print $2 }')"
    echo "mksquashfs $(mksquashfs -version 2>/dev/null | head -n1 | awk '{ print $3 }')"
    echo "grub $(grub-mkrescue --version | awk '{ print $3 }')"
    echo "xorriso $(xorriso -version 2>/dev/null | sed -n 's/^xorriso version *: *//p' | head -n1)"
    local f
    # -L: a variant may link another's files (iso-baseline links iso's).
    (cd "$VARIANT_DIR" && find -L . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum) | sed 's/^/variant-file /'
    local src dest mode
    while read -r src dest mode; do
        [ -f "$(src_path "$src")" ] || die "$VARIANT_DIR/files: $src does not exist"
        echo "file $src $dest $mode $(sha256sum "$(src_path "$src")" | cut -c1-64)"
    done < <(data_lines "$VARIANT_DIR/files")
    for f in "${DEBS[@]}"; do
        echo "deb $(basename "$f") $(sha256sum "$f" | cut -c1-64)"
    done
    [ "$CATALOG_PACKAGES" != yes ] || echo "cells-packages $(sha256sum "$CELLS_PACKAGES" | cut -c1-64)"
    # Hooks may be links to another variant's (not seen by the find above).
    for f in $(rootfs_hooks); do
        echo "rootfs-hook $(basename "$f") $(sha256sum "$f" | cut -c1-64)"
    done
}

# The variant's customize hooks (rootfs-hooks/*, run by mmdebstrap in name
# order with the root directory as $1), as in build-rootfs.sh.
rootfs_hooks() {
    local hook
    for hook in "$VARIANT_DIR"/rootfs-hooks/*; do
        [ -f "$hook" ] && [ -x "$hook" ] && echo "$hook"
    done
    return 0
}

INPUTS=$(iso_inputs)
ISO_HASH=$(printf '%s\n' "$INPUTS" | sha256sum | cut -c1-64)

# Where this build goes: the cache (renamed into place when complete) or --out.
if [ -n "$OUT" ]; then
    NO_CACHE=1
    mkdir -p "$OUT"
    OUT=$(cd "$OUT" && pwd)
    [ -z "$(ls -A "$OUT")" ] || die "--out $OUT is not empty"
    DEST=$OUT
    BUILD=$OUT
else
    mkdir -p "$ISOS"
    DEST="$ISOS/$ISO_HASH"
    if [ "$NO_CACHE" -eq 0 ] && [ -f "$DEST/iso.env" ]; then
        ln -sfn "$ISO_HASH" "$ISOS/.current.tmp" && mv -T "$ISOS/.current.tmp" "$ISOS/current"
        stage "ISO $ISO_HASH is cached: $DEST/$ISO_NAME ($(du -h "$DEST/$ISO_NAME" | cut -f1))"
        exit 0
    fi
    # One cached build at a time (the check's builds use their own dirs).
    exec 9>"$ISOS/.build.lock"
    flock 9
    BUILD="$DEST.tmp"
    # Leftovers of failed builds (of this or older inputs): ~1-2 GB each.
    rm -rf "$ISOS"/*.tmp
    mkdir -p "$BUILD"
fi

WORK="$BUILD/work"
ROOT="$WORK/root"
STAGE_DIR="$WORK/iso"
LOG="$BUILD/build.log"
mkdir -p "$WORK" "$STAGE_DIR/live" "$STAGE_DIR/boot/grub"
# The repository of .debs is bind-mounted into the chroot at its own path,
# and the mount point stays behind: under /run, whose contents are dropped
# below, it leaves no trace of where this build ran (a path under the build
# directory left var/tmp/... or work/... in the image).
LOCAL_REPO=$(mktemp -d /run/quantumos-iso-repo.XXXXXX)
# A failed mmdebstrap leaves its hook's bind mounts of the repositories in
# the chroot.
cleanup_repos() {
    local repo
    for repo in "$LOCAL_REPO" ${FROZEN_LINK:+"$FROZEN_LINK"}; do
        ! mountpoint -q "$ROOT$repo" 2>/dev/null || umount "$ROOT$repo" || true
    done
    rm -rf "$LOCAL_REPO"
    [ -z "${FROZEN_LINK:-}" ] || rm -f "$FROZEN_LINK"
}
trap cleanup_repos EXIT
printf '%s\n' "$INPUTS" >"$BUILD/inputs.txt"
: >"$LOG"

# Runs a command with its output in the build log; on failure shows the end.
logged() {
    local what=$1; shift
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        die "$what failed (full log: $LOG)"
    fi
}

stage "ISO $ISO_HASH (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, $(date -u -d "@$SOURCE_DATE_EPOCH" '+%F %T') UTC) in $BUILD"

# ------------------------------------------------ 1. local apt repository ---
stage "local apt repository of ${#DEBS[@]} packages from $DEB_DIR"
cp "${DEBS[@]}" "$LOCAL_REPO/"
(cd "$LOCAL_REPO" && dpkg-scanpackages --multiversion . 2>>"$LOG" >Packages) ||
    die "dpkg-scanpackages failed in $LOCAL_REPO (log: $LOG)"

# ---------------------------------------------------------- 2. mmdebstrap ---
if [ "$FREEZE" = 1 ]; then
    debian_sources=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main")
    # Keep every downloaded .deb (essential ones included) and the
    # archive's indexes (priorities, sections) for the freeze.
    keep=(--skip=cleanup/apt/cache,cleanup/apt/lists,essential/unlink)
    stage "mmdebstrap $SUITE from $MIRROR + the local repository (log: $LOG)"
else
    # Under /run, like the local repository, so that the bind mount's point
    # in the chroot does not name the cache's path.
    FROZEN_LINK=$(mktemp -u /run/quantumos-iso-mirror.XXXXXX)
    ln -s "$FROZEN" "$FROZEN_LINK"
    debian_sources=("deb [trusted=yes] file://$FROZEN_LINK ./")
    keep=()
    stage "mmdebstrap $SUITE from the frozen mirror $FROZEN (offline) + the local repository (log: $LOG)"
fi
stage "packages: ${PACKAGES//,/ }"
hooks=()
for hook in $(rootfs_hooks); do
    hooks+=(--customize-hook="$hook")
done
t0=$(date +%s)
logged mmdebstrap mmdebstrap \
    --variant=minbase \
    --arch=amd64 \
    --format=directory \
    --include="$PACKAGES" \
    --aptopt="APT::Install-Recommends \"$recommends\"" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
    "${hooks[@]}" \
    "${keep[@]}" \
    "$SUITE" "$ROOT" \
    "${debian_sources[@]}" \
    "deb [trusted=yes] file://$LOCAL_REPO ./"
stage "mmdebstrap done in $(( $(date +%s) - t0 )) s ($(du -sm "$ROOT" | cut -f1) MiB)"
# The automount hook unmounts the repository; mmdebstrap's cleanup of /run
# usually takes the mount point with it.
for repo in "$LOCAL_REPO" ${FROZEN_LINK:+"$FROZEN_LINK"}; do
    if [ -e "$ROOT$repo" ]; then
        rmdir "$ROOT$repo" || die "$ROOT$repo: the repository is still mounted or not empty"
    fi
done
if [ "$FREEZE" = 1 ]; then
    # The Debian packages just downloaded become the frozen mirror (the
    # QuantumOS ones came from the local repository and are not among them).
    mkdir -p "$MIRRORS"
    freezing=$(mktemp -d "$MIRRORS/.freezing.XXXXXX")
    find "$ROOT/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec mv -t "$freezing" {} +
    # Priority and Section as the archive has them, not as each .deb says:
    # they differ (the archive's overrides), and mmdebstrap picks minbase's
    # packages by priority, so apt would mark other packages as automatic.
    awk '/^Package:/ { p = $2 } /^Priority:/ { pr = $2 } /^Section:/ { s = $2 }
         /^$/ { if (p != "" && pr != "" && s != "") print p, pr, s; p = pr = s = "" }' \
        "$ROOT"/var/lib/apt/lists/*_Packages | LC_ALL=C sort -u -k1,1 >"$WORK/override"
    [ -s "$WORK/override" ] || die "no package index of the archive in $ROOT/var/lib/apt/lists (log: $LOG)"
    (cd "$freezing" && dpkg-scanpackages --multiversion . "$WORK/override" 2>>"$LOG" >Packages) ||
        die "dpkg-scanpackages failed in $freezing (log: $LOG)"
    frozen_release "$freezing"
    rm -rf "$FROZEN"
    mv -T "$freezing" "$FROZEN"
    stage "froze $(grep -c '^Package:' "$FROZEN/Packages") Debian packages ($(du -sh "$FROZEN" | cut -f1)) as $FROZEN"
    # From here on this build is the one a build from the frozen mirror
    # would be (the same packages, installed the same way): it takes that
    # build's hash, in the cache and inside the ISO, so the next `make iso`
    # finds it.
    FROZEN_NOW=1
    INPUTS=$(iso_inputs)
    ISO_HASH=$(printf '%s\n' "$INPUTS" | sha256sum | cut -c1-64)
    printf '%s\n' "$INPUTS" >"$BUILD/inputs.txt"
    [ -n "$OUT" ] || DEST="$ISOS/$ISO_HASH"
    stage "the ISO is $ISO_HASH (inputs with the frozen mirror)"
fi
for p in $QUANTUMOS_PACKAGES; do
    chroot "$ROOT" dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed ||
        die "$p is not installed in $ROOT (log: $LOG)"
done

# ----------------------------------------------------------- 3. compose ---
stage "project files"
while read -r src dest mode; do
    install -D -m "$mode" -o root -g root "$(src_path "$src")" "$ROOT$dest$(basename "$src")"
    echo "    $src -> $dest"
done < <(data_lines "$VARIANT_DIR/files")

stage "unit states"
while read -r action unit; do
    if ! [ -e "$ROOT/usr/lib/systemd/system/$unit" ] && ! [ -e "$ROOT/lib/systemd/system/$unit" ] &&
        ! [ -e "$ROOT/etc/systemd/system/$unit" ]; then
        note "not installed, skipped: $action $unit"
        continue
    fi
    systemctl --root="$ROOT" --quiet "$action" "$unit"
    echo "    $action $unit"
done < <(data_lines "$VARIANT_DIR/units")
if [ -n "$QUANTUMOS_PACKAGES" ]; then
    systemctl --root="$ROOT" --quiet is-enabled quantumd.service ||
        die "quantumd.service is not enabled in the image (its package should enable it)"
fi

stage "identity, apt sources, logins (root: $LIVE_ROOT_LOGIN, user: ${LIVE_USER:-none})"
echo "$HOSTNAME_" >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    "$HOSTNAME_" >"$ROOT/etc/hosts"
# Each boot gets its own machine id (an empty file: not a "first boot").
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
# The build host's resolver has no business in the image; the live system
# has no network configured anyway.
rm -f "$ROOT/etc/resolv.conf"
: >"$ROOT/etc/resolv.conf"
# The public archive, whatever mirror built the image; one fixed file name.
rm -f "$ROOT"/etc/apt/sources.list.d/*
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $APT_MIRROR $SUITE main
deb $APT_MIRROR $SUITE-updates main
deb $APT_SECURITY_MIRROR $SUITE-security main
EOF
case "$LIVE_ROOT_LOGIN" in
    # An empty password field, not a hash: nothing random in the image.
    empty-password) sed -i 's/^root:[^:]*:/root::/' "$ROOT/etc/shadow" ;;
    locked) sed -i 's/^root:[^:]*:/root:*:/' "$ROOT/etc/shadow" ;;
    *) die "$VARIANT_DIR/image.conf: LIVE_ROOT_LOGIN=$LIVE_ROOT_LOGIN (expected empty-password or locked)" ;;
esac
if [ -n "$LIVE_USER" ]; then
    # The live session's user: in group quantum (which polkit lets manage
    # cells), and logged in like root on the console (empty password;
    # quantumos-install locks it on the installed system).
    chroot "$ROOT" getent group quantum >/dev/null ||
        die "group quantum does not exist in the image (quantumos-daemon's sysusers.d should create it)"
    chroot "$ROOT" useradd --create-home --shell /bin/bash --gid quantum "$LIVE_USER" ||
        die "useradd $LIVE_USER failed in the image"
    sed -i "s/^$LIVE_USER:[^:]*:/$LIVE_USER::/" "$ROOT/etc/shadow"
    echo "    live user $LIVE_USER (group quantum)"
fi

stage "reproducibility: dates, logs and caches of the build"
# Accounts created during the build carry the build day as their last
# password change.
days=$(( SOURCE_DATE_EPOCH / 86400 ))
awk -F: -v OFS=: -v d="$days" '$3 != "" { $3 = d } { print }' "$ROOT/etc/shadow" >"$ROOT/etc/shadow.new"
cat "$ROOT/etc/shadow.new" >"$ROOT/etc/shadow" && rm -f "$ROOT/etc/shadow.new"
rm -f "$ROOT"/etc/{passwd,group,shadow,gshadow,subuid,subgid}-
# Logs of the build (dates, durations) and caches regenerated on demand.
find "$ROOT/var/log" -type f -exec truncate -s 0 {} +
rm -f "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old
rm -f "$ROOT/var/cache/ldconfig/aux-cache" "$ROOT/var/lib/systemd/catalog/database"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb
# ssl-cert (for postgresql) made a snakeoil key pair at install: random,
# and a private key every copy of the ISO would share. Nothing here uses it
# (no system-wide cluster); `make-ssl-cert generate-default-snakeoil` makes
# one for a machine that wants it.
rm -f "$ROOT/etc/ssl/private/ssl-cert-snakeoil.key" "$ROOT/etc/ssl/certs/ssl-cert-snakeoil.pem"
find "$ROOT/etc/ssl/certs" -maxdepth 1 -xtype l -delete
rm -rf "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/run/* 2>/dev/null || true
# Python bytecode (py3compile at install time) stays: it is the same from
# build to build (iso-check), and without it every python cell compiles the
# standard library it imports at each start (seconds under TCG).

stage "kernel and initramfs"
KERNEL=$(ls -1 "$ROOT"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1)
[ -n "$KERNEL" ] || die "the image has no /boot/vmlinuz-* (is linux-image-amd64 in $VARIANT_DIR/packages?)"
KVER=${KERNEL##*/vmlinuz-}
[ -f "$ROOT/boot/initrd.img-$KVER" ] || die "the image has no /boot/initrd.img-$KVER"
chroot "$ROOT" lsinitramfs "/boot/initrd.img-$KVER" >"$WORK/initrd.list" 2>>"$LOG" ||
    die "lsinitramfs /boot/initrd.img-$KVER failed in $ROOT (log: $LOG)"
grep -q '^usr/lib/live/boot/' "$WORK/initrd.list" ||
    die "the initramfs /boot/initrd.img-$KVER has no live-boot scripts (is live-boot in $VARIANT_DIR/packages?)"
cp "$KERNEL" "$STAGE_DIR/live/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$STAGE_DIR/live/initrd.img"
echo "    kernel $KVER, initrd $(du -h "$STAGE_DIR/live/initrd.img" | cut -f1)"

# ---------------------------------------------------------- 4. squashfs ---
stage "squashfs (zstd) of the root file system"
t0=$(date +%s)
# mksquashfs refuses SOURCE_DATE_EPOCH together with the explicit options;
# the options say the same thing and also set every inode's time.
logged mksquashfs env -u SOURCE_DATE_EPOCH mksquashfs "$ROOT" "$WORK/filesystem.squashfs" \
    -comp zstd -b 1M -noappend -no-progress \
    -mkfs-time "$SOURCE_DATE_EPOCH" -all-time "$SOURCE_DATE_EPOCH" \
    -wildcards -e 'proc/*' 'sys/*' 'dev/*' 'run/*' 'tmp/*'
stage "squashfs done in $(( $(date +%s) - t0 )) s: $(du -h "$WORK/filesystem.squashfs" | cut -f1)"
# A hard link, not a copy: the check's diffoscope compares the squashfs.
ln "$WORK/filesystem.squashfs" "$STAGE_DIR/live/filesystem.squashfs"

# ------------------------------------------------------ 5. grub-mkrescue ---
stage "grub.cfg and grub-mkrescue (BIOS + UEFI, under faketime)"
CMDLINE=$(data_lines "$VARIANT_DIR/cmdline" | tr '\n' ' ' | sed 's/ *$//')
cat >"$STAGE_DIR/boot/grub/grub.cfg" <<EOF
# QuantumOS live ISO (image-builder/build-iso.sh, variant $VARIANT)
set default=0
set timeout=$GRUB_TIMEOUT
# Whatever framebuffer the firmware offers (UEFI machines have no text mode).
insmod all_video
# The menu on the serial line as well as the screen (VMs, servers).
if serial --unit=0 --speed=115200; then
    terminal_input --append serial
    terminal_output --append serial
fi
menuentry "QuantumOS live" {
    linux /live/vmlinuz $CMDLINE
    initrd /live/initrd.img
}
menuentry "QuantumOS live (load into RAM)" {
    linux /live/vmlinuz $CMDLINE toram
    initrd /live/initrd.img
}
EOF
mkdir -p "$STAGE_DIR/.disk"
echo "QuantumOS $SUITE amd64 (ISO $ISO_HASH)" >"$STAGE_DIR/.disk/info"
find "$STAGE_DIR" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
# Frozen clock (no '@'): grub-mkrescue and mformat stamp the EFI image, the
# ISO's volume dates and its UUID with the current time.
FAKE_TIME=$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S')
t0=$(date +%s)
logged grub-mkrescue faketime -f "$FAKE_TIME" grub-mkrescue \
    --output="$BUILD/$ISO_NAME.tmp" \
    --locales= --fonts= --themes= \
    "$STAGE_DIR" -- -volid "$VOLUME_ID"
mv "$BUILD/$ISO_NAME.tmp" "$BUILD/$ISO_NAME"
stage "grub-mkrescue done in $(( $(date +%s) - t0 )) s"

MEMORY=$(conf VM_MEMORY_MIB)
CPUS=$(conf VM_CPUS)
cat >"$BUILD/iso.env" <<EOF
# Written by image-builder/build-iso.sh; read by tests/vm (quantum-vmtest).
# Paths are relative to this file's directory.
VARIANT=$VARIANT
ISO_HASH=$ISO_HASH
ISO=$ISO_NAME
KERNEL_VERSION=$KVER
SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH
TEST_FW_CFG=$TEST_FW_CFG
VM_MEMORY_MIB=${MEMORY:-2048}
VM_CPUS=${CPUS:-2}
EOF
SUM=$(sha256sum "$BUILD/$ISO_NAME" | cut -c1-64)
echo "$SUM  $ISO_NAME" >"$BUILD/SHA256SUMS"

if [ "$NO_CACHE" -eq 1 ] && [ -n "$OUT" ]; then
    # --out keeps the work tree for a diffoscope of the squashfs; the root
    # directory itself is large and not needed for that.
    rm -rf "$ROOT"
else
    rm -rf "$WORK"
    if [ "$BUILD" != "$DEST" ]; then
        rm -rf "$DEST"
        mv "$BUILD" "$DEST"
    fi
    previous=$(readlink "$ISOS/current" 2>/dev/null || true)
    ln -sfn "$ISO_HASH" "$ISOS/.current.tmp" && mv -T "$ISOS/.current.tmp" "$ISOS/current"
    # Keeps the new ISO and the one before it.
    for old in "$ISOS"/*/; do
        old=$(basename "$old")
        case "$old" in "$ISO_HASH"|"$previous"|current) continue ;; esac
        note "pruning old ISO $old"
        rm -rf "${ISOS:?}/$old"
    done
fi
stage "done: $DEST/$ISO_NAME ($(du -h "$DEST/$ISO_NAME" | cut -f1), sha256 $SUM) in $(( $(date +%s) - STARTED )) s"
