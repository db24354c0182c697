#!/bin/sh
# Vendors every crate of Cargo.lock (`cargo vendor`) into
#   ${QUANTUM_CACHE:-<repo>/.cache}/vendor/<sha256 of Cargo.lock>/
# and prints that directory. debian/rules builds offline from it
# (QUANTUM_VENDOR_DIR), so a package build needs no network and no
# ~/.cargo/registry; only this step talks to crates.io, once per Cargo.lock.
#
# The vendor tree is kept outside the repository (it is ~500 MB of crate
# sources); the directory is keyed by Cargo.lock's hash, so a changed lock
# file gets a new tree and a stale one is never used. Older trees are pruned.
set -eu

repo=$(cd -- "$(dirname -- "$0")/.." && pwd)
cache=${QUANTUM_CACHE:-$repo/.cache}
hash=$(sha256sum "$repo/Cargo.lock" | cut -c1-64)
dest=$cache/vendor/$hash

# A finished tree has its stamp; a half-written one (interrupted run) has not.
if [ -f "$dest/.vendored" ]; then
    printf '%s\n' "$dest"
    exit 0
fi

mkdir -p -- "$cache/vendor"
tmp=$dest.tmp
rm -rf -- "$tmp"
echo "vendor-crates: cargo vendor into $dest" >&2
# --versioned-dirs: names stay stable when Cargo.lock changes, so a diff of
# two trees is readable. stdout is the config snippet, not needed (debian/rules
# passes the source replacement with --config).
(cd -- "$repo" && ${CARGO:-cargo} vendor --quiet --locked --versioned-dirs "$tmp" >/dev/null)
: >"$tmp/.vendored"
rm -rf -- "$dest"
mv -- "$tmp" "$dest"

for old in "$cache"/vendor/*/; do
    old=${old%/}
    [ "$old" = "$dest" ] && continue
    echo "vendor-crates: pruning $old" >&2
    rm -rf -- "$old"
done
printf '%s\n' "$dest"
