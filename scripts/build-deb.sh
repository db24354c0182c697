#!/bin/bash
# Builds the quantumos-* Debian packages (debian/) and checks them with
# lintian. `make deb` runs it.
#
#   1. checks the build dependencies of debian/control (the Rust toolchain
#      apart: see below) and that debian/changelog has Cargo.toml's version;
#   2. copies the working tree (git's files, tracked and untracked but not
#      ignored) to a clean build directory, so that nothing dpkg-buildpackage
#      writes lands in the repository, and what is packaged is exactly what
#      git would commit;
#   3. runs dpkg-buildpackage there (source package and binary packages);
#   4. moves the results to the output directory and runs lintian on the
#      .changes: any error fails, warnings are listed in lintian.txt.
#
# The Rust toolchain: debian/control names Debian's rustc-web/cargo-web, as a
# build in a clean chroot would use. Here the cargo on PATH builds instead
# (rustup's, the one every other tier uses), with CARGO_TARGET_DIR shared
# with them, so that the release build `make image` made is reused rather
# than repeated. It must be at least Cargo.toml's rust-version.
#
# Crates: from cargo's cache (`cargo fetch --locked` first, the only step
# that may use the network), or with QUANTUM_DEB_VENDOR=1 from a `cargo
# vendor` tree (scripts/vendor-crates.sh) and nothing else, as in a chroot
# without network. Note that the two give crates different source paths,
# and cargo rebuilds every dependency when the path changes: the vendored
# build does not reuse a registry build, and vice versa.
#
# environment: QUANTUM_CACHE (default <repo>/.cache), QUANTUM_DEB_DIR (the
#   output directory, default $QUANTUM_CACHE/deb), CARGO_TARGET_DIR (default
#   <repo>/target), QUANTUM_DEB_VENDOR=1, CARGO.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${QUANTUM_CACHE:-$REPO/.cache}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
OUT=${QUANTUM_DEB_DIR:-$CACHE/deb}
export CARGO=${CARGO:-cargo}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
export QUANTUM_CACHE=$CACHE

stage() { printf '==> build-deb: %s\n' "$*"; }
die() { printf 'build-deb.sh: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

started=$(now)

# ----------------------------------------------------------------- checks ---

for tool in dpkg-buildpackage dh lintian "$CARGO"; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing: run scripts/install-deps.sh (make deps)"
done

# The first version = line of [workspace.package].
cargo_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)
rust_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^rust-version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)
deb_version=$(cd "$REPO" && dpkg-parsechangelog -SVersion)
[ "$deb_version" = "$cargo_version" ] ||
    die "debian/changelog is at $deb_version but Cargo.toml's workspace version is $cargo_version: add a changelog entry (dch -v $cargo_version)"

# Every build dependency but the Rust toolchain must be installed.
unmet=$(cd "$REPO" && { dpkg-checkbuilddeps 2>&1 || true; } | sed -n 's/^dpkg-checkbuilddeps: error: Unmet build dependencies: //p' |
    sed -E 's/(cargo-web|rustc-web)( \([^)]*\))?//g; s/^ +//; s/ +$//')
[ -z "$unmet" ] || die "missing build dependencies: $unmet (run make deps)"
have_rust=$("$CARGO" --version | awk '{ print $2 }')
dpkg --compare-versions "$have_rust" ge "$rust_version" ||
    die "$CARGO is $have_rust; the workspace needs at least $rust_version"
stage "quantumos $deb_version with $CARGO $have_rust, target directory $CARGO_TARGET_DIR"

# ----------------------------------------------------------- crate sources ---

if [ "${QUANTUM_DEB_VENDOR:-0}" = 1 ]; then
    QUANTUM_VENDOR_DIR=$(sh "$REPO/scripts/vendor-crates.sh")
    export QUANTUM_VENDOR_DIR
    stage "crates vendored in $QUANTUM_VENDOR_DIR"
else
    unset QUANTUM_VENDOR_DIR
    (cd "$REPO" && "$CARGO" fetch --locked --quiet) ||
        die "cargo fetch failed (is Cargo.lock up to date? the package build is --locked)"
fi

# ------------------------------------------------------------ build tree ---

BUILD=$CACHE/deb-build
SRC=$BUILD/quantumos-$deb_version
rm -rf "$BUILD"
mkdir -p "$SRC"
stage "copying the source tree to $SRC"
# tar keeps modification times: cargo then sees the workspace crates as
# unchanged since the last build of the same sources, wherever they lie.
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
        tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$SRC"
else
    tar -C "$REPO" --exclude=./.git --exclude=./target --exclude=./.cache -cf - . | tar -xf - -C "$SRC"
fi
[ -f "$SRC/debian/rules" ] || die "the copy in $SRC has no debian/rules"

# ----------------------------------------------------------------- build ---

LOG=$BUILD/build.log
stage "dpkg-buildpackage (log: $LOG)"
# -d: the dependencies were checked above, all but the toolchain.
if ! (cd "$SRC" && dpkg-buildpackage --no-sign -d -F) >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    die "dpkg-buildpackage failed (full log: $LOG)"
fi

changes=$BUILD/quantumos_${deb_version}_$(dpkg --print-architecture).changes
[ -f "$changes" ] || die "no $changes after the build (log: $LOG)"

# The output directory holds one build: its .changes and what it lists.
mkdir -p "$OUT"
rm -f "$OUT"/quantumos*_* "$OUT"/lintian.txt
cp "$changes" "$OUT/"
sed -n '/^Files:/,/^[^ ]/s/^ [0-9a-f]\{32\} [0-9]* [^ ]* [^ ]* //p' "$changes" |
    while read -r f; do cp "$BUILD/$f" "$OUT/"; done
cp "$LOG" "$OUT/build.log"
stage "built in $(( $(now) - started )) s:"
(cd "$OUT" && for deb in *.deb; do
    printf '    %-48s %6s KiB packed, %8s KiB installed\n' "$deb" \
        "$(( $(stat -c %s "$deb") / 1024 ))" "$(dpkg-deb -f "$deb" Installed-Size)"
done)

# ---------------------------------------------------------------- lintian ---

stage "lintian (errors fail; warnings and the rest: $OUT/lintian.txt)"
changes=$OUT/$(basename "$changes")
set +e
lintian --fail-on error --display-level '>=info' --tag-display-limit 0 \
    "$changes" >"$OUT/lintian.txt" 2>&1
status=$?
set -e
grep -E '^(E|W): ' "$OUT/lintian.txt" || true
[ "$status" -eq 0 ] || die "lintian found errors (exit $status): $OUT/lintian.txt"
stage "lintian: $(grep -c '^E: ' "$OUT/lintian.txt") errors, $(grep -c '^W: ' "$OUT/lintian.txt") warnings, $(grep -c '^I: ' "$OUT/lintian.txt") info"
stage "packages in $OUT"
