#!/bin/bash
# Builds the QuantumOS kernel: Linux 6.12 LTS from Debian's linux-source-6.12
# with kernel/quantumos.config on top of allnoconfig, CONFIG_RUST=y, built with
# the toolchain ../shared/PLATFORM.md names (Debian rustc-web 1.96, clang/lld
# 22, bindgen-cli 0.73.2).
#
#   kernel/build.sh              build (or find in the cache) and print the
#                                output directory on the last line
#   kernel/build.sh config       only generate and check the .config (seconds)
#   kernel/build.sh print-dir    print the output directory for the current
#                                inputs, build nothing
#
# The output lives in ${QUANTUM_KERNEL_CACHE:-$QUANTUM_CACHE/kernel}/<hash>
# (QUANTUM_CACHE defaults to .cache; .ci/run points QUANTUM_KERNEL_CACHE at a
# machine-level directory so that CI runs on fresh clones share one build),
# where <hash> is
# the sha256 of the fragment, this script, the linux-source version and the
# rustc/clang/bindgen/pahole versions; a cache hit is a no-op. The last build's
# directory is also reachable as <that directory>/current. It holds:
#   bzImage, System.map, config   the kernel, its symbols and configuration
#   linux/                        the built tree (modules_prepare'd, with
#                                 Module.symvers): the KDIR for kmod/
#   linux-image-<release>_*.deb   `make bindeb-pkg`: the kernel as a package,
#   linux-headers-<release>_*.deb and its headers (<release> is
#                                 6.12.N-quantumos); also a linux-libc-dev
#                                 deb, which nothing should install
#   inputs                        what the hash was computed from
#   build-seconds                 how long the cold build took
#
# Only the two most recent builds are kept; builds are serialised by a lock
# in that directory, so two checkouts sharing a cache wait in turn.
#
# Reproducible inputs: the build timestamp is the linux-source package's own
# release date (not the caller's clock or SOURCE_DATE_EPOCH, so the cache key
# covers it), user and host are fixed, and the build happens at a path derived
# from the hash. Builds run under `nice -n 19` with KERNEL_JOBS (default 2)
# jobs so other work on the machine is not starved.
#
# Must run as root when a package is missing (it installs them with apt).
set -euo pipefail

stage() { printf '==> kernel: %s\n' "$*" >&2; }
die() { printf 'kernel: error: %s\n' "$*" >&2; exit 1; }

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
FRAGMENT=$HERE/quantumos.config
CACHE=${QUANTUM_CACHE:-.cache}
case $CACHE in /*) ;; *) CACHE=$ROOT/$CACHE ;; esac
KCACHE=${QUANTUM_KERNEL_CACHE:-$CACHE/kernel}
case $KCACHE in /*) ;; *) KCACHE=$ROOT/$KCACHE ;; esac
JOBS=${KERNEL_JOBS:-2}

LLVM_DIR=/usr/lib/llvm-22/bin/
RUSTC=/usr/bin/rustc
RUSTDOC=/usr/bin/rustdoc
BINDGEN_VERSION=0.73.2
BINDGEN_ROOT=$KCACHE/tools/bindgen-$BINDGEN_VERSION
BINDGEN=$BINDGEN_ROOT/bin/bindgen
SOURCE_PACKAGE=linux-source-6.12
SOURCE_TARBALL=/usr/src/$SOURCE_PACKAGE.tar.xz

PACKAGES=(
    "$SOURCE_PACKAGE" rustc-web rust-web-src
    clang-22 lld-22 llvm-22 libclang-22-dev
    make bc bison flex cpio xz-utils libelf-dev libssl-dev python3 kmod
    # make bindeb-pkg
    dpkg-dev rsync
    # pahole, for BTF (CONFIG_DEBUG_INFO_BTF)
    dwarves
)

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

install_tools() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        [ "$(id -u)" -eq 0 ] || die "missing packages (run as root to install): ${missing[*]}"
        stage "installing ${missing[*]}"
        # linux-source-6.12 and clang-22 come from bookworm-security, which a
        # bookworm machine has in its sources already.
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    fi
    if [ ! -x "$BINDGEN" ]; then
        command -v cargo >/dev/null || die "cargo is needed to install bindgen-cli"
        stage "installing bindgen-cli $BINDGEN_VERSION into $BINDGEN_ROOT"
        nice -n 19 cargo install --locked -j "$JOBS" "bindgen-cli@$BINDGEN_VERSION" \
            --root "$BINDGEN_ROOT" >&2
    fi
}

# Everything the build's output depends on besides the kernel source itself,
# one fact a line; hashed into the cache key.
inputs() {
    printf 'linux-source %s\n' "$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE")"
    printf 'rustc %s\n' "$("$RUSTC" --version)"
    printf 'rust-web-src %s\n' "$(dpkg-query -W -f='${Version}' rust-web-src)"
    printf 'clang %s\n' "$("${LLVM_DIR}clang" --version | head -n1)"
    printf 'pahole %s\n' "$(pahole --version)"
    printf 'bindgen %s\n' "$(LIBCLANG_PATH=/usr/lib/llvm-22/lib "$BINDGEN" --version | head -n1)"
    printf 'fragment %s\n' "$(sha256sum <"$FRAGMENT" | cut -d' ' -f1)"
    printf 'script %s\n' "$(sha256sum <"$HERE/build.sh" | cut -d' ' -f1)"
}

# The toolchain on make's command line: every step here uses it, and so must
# an out-of-tree module build (kmod/).
make_vars() {
    printf '%s\n' "LLVM=$LLVM_DIR" "RUSTC=$RUSTC" "RUSTDOC=$RUSTDOC" "BINDGEN=$BINDGEN"
}

kmake() {
    local vars
    mapfile -t vars < <(make_vars)
    LIBCLANG_PATH=/usr/lib/llvm-22/lib SOURCE_DATE_EPOCH=$EPOCH \
        KBUILD_BUILD_TIMESTAMP=$BUILD_TIMESTAMP KBUILD_BUILD_USER=quantumos \
        KBUILD_BUILD_HOST=quantumos KBUILD_BUILD_VERSION=1 \
        nice -n 19 make -C "$TREE" -j "$JOBS" "${vars[@]}" "$@"
}

# The release date of the kernel source package, in seconds.
source_epoch() {
    local changelog=/usr/share/doc/$SOURCE_PACKAGE/changelog.Debian.gz
    [ -f "$changelog" ] || die "no $changelog"
    date -u -d "$(zcat "$changelog" | sed -n 's/^ -- .*>  //p' | head -n1)" +%s
}

# Every line of the fragment must hold in the final .config.
check_config() {
    local bad=0 line sym want got
    while IFS= read -r line; do
        case $line in
            CONFIG_*=*) sym=${line%%=*}; want=$line ;;
            "# CONFIG_"*" is not set") sym=${line#\# }; sym=${sym%% *}; want="" ;;
            *) continue ;;
        esac
        got=$(grep -E "^$sym=" "$TREE/.config" || true)
        if [ "$got" != "$want" ]; then
            printf 'kernel: config: %s: want "%s", got "%s"\n' "$sym" "${want:-not set}" "${got:-not set}" >&2
            bad=1
        fi
    done <"$FRAGMENT"
    [ "$bad" -eq 0 ] || die "the fragment does not hold in .config (a missing dependency?)"
}

configure() {
    kmake rustavailable >&2 || die "make rustavailable: Rust is not available to the kernel build"
    kmake KCONFIG_ALLCONFIG="$FRAGMENT" allnoconfig >&2
    check_config
}

extract() {
    stage "extracting $SOURCE_TARBALL into $TREE"
    rm -rf "$TREE"
    mkdir -p "$TREE"
    tar -xf "$SOURCE_TARBALL" -C "$TREE" --strip-components=1
}

build() {
    local start end
    start=$(date +%s)
    rm -f "$OUT/done"
    extract
    configure
    stage "building bzImage (-j$JOBS, nice 19; 15-25 min on a busy 2-core machine)"
    # `modules` also writes Module.symvers (vmlinux's exports), which an
    # out-of-tree module build needs; the tree has no =m modules of its own.
    kmake bzImage modules >&2
    kmake modules_prepare >&2
    # The package revision is also the kernel's build number (uname -v "#1"),
    # which debian/rules passes back to make: fixing it keeps the packaged
    # kernel identical to bzImage, with no relink.
    stage "packaging (bindeb-pkg)"
    # No linux-image-*-dbg deb (the DWARF, 50 MB compressed): it doubles the
    # packaging time and nothing uses it yet.
    DEB_BUILD_PROFILES=pkg.linux-upstream.nokerneldbg \
        kmake KDEB_PKGVERSION="$(kmake -s kernelversion)-1" bindeb-pkg >&2
    cp "$TREE/arch/x86/boot/bzImage" "$OUT/bzImage"
    cp "$TREE/System.map" "$OUT/System.map"
    cp "$TREE/.config" "$OUT/config"
    end=$(date +%s)
    echo $((end - start)) >"$OUT/build-seconds"
    touch "$OUT/done"
    stage "built in $((end - start)) s"
}

# Keeps the newest two finished builds (by when they finished) and removes
# every other build directory, finished or not (the lock is held).
prune() {
    local dir keep
    # (`current` is a link to one of them: leave it out of the count.)
    keep=$(ls -1t "$KCACHE"/*/done 2>/dev/null | grep -v '/current/done$' |
        head -n2 | xargs -r -n1 dirname)
    for dir in "$KCACHE"/*/; do
        dir=${dir%/}
        [ -L "$dir" ] && continue # `current`
        [ -f "$dir/inputs" ] || [ -d "$dir/linux" ] || continue
        [ "$dir" = "$OUT" ] && continue
        grep -qxF "$dir" <<<"$keep" && continue
        stage "removing an older build: $dir"
        rm -rf "$dir"
    done
}

main() {
    local cmd=${1:-build}
    case $cmd in build | config | print-dir) ;; *) die "unknown command: $cmd" ;; esac
    install_tools
    mkdir -p "$KCACHE"
    exec 9>"$KCACHE/.lock"
    flock 9
    INPUTS=$(inputs)
    HASH=$(printf '%s\n' "$INPUTS" | sha256sum | cut -c1-16)
    OUT=$KCACHE/$HASH
    TREE=$OUT/linux
    EPOCH=$(source_epoch)
    BUILD_TIMESTAMP=$(date -u -d "@$EPOCH" '+%a %b %e %H:%M:%S UTC %Y')
    case $cmd in
        print-dir) printf '%s\n' "$OUT"; return ;;
        config)
            mkdir -p "$OUT"
            [ -f "$TREE/Makefile" ] || extract
            configure
            stage "config ok: $TREE/.config"
            return ;;
    esac
    if [ -f "$OUT/done" ]; then
        stage "cache hit: $OUT (built in $(cat "$OUT/build-seconds") s)"
    else
        mkdir -p "$OUT"
        printf '%s\n' "$INPUTS" >"$OUT/inputs"
        build
        prune
    fi
    ln -sfn "$HASH" "$KCACHE/current"
    printf '%s\n' "$OUT"
}

main "$@"
