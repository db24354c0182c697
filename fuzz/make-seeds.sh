#!/bin/sh
# Rebuilds fuzz/seeds/ from the manifest test cases
# (quantumd/model/tests/manifests/**/*.toml). Run from anywhere.
set -eu
fuzz=$(cd "$(dirname "$0")" && pwd)
cases="$fuzz/../quantumd/model/tests/manifests"
rm -rf "$fuzz/seeds/manifest" "$fuzz/seeds/manifest_set"
mkdir -p "$fuzz/seeds/manifest" "$fuzz/seeds/manifest_set"

# manifest: every test manifest on its own, named after its path.
(cd "$cases" && find . -name '*.toml' | sort) | while read -r f; do
    name=$(echo "${f#./}" | tr '/' '-')
    cp "$cases/$f" "$fuzz/seeds/manifest/$name"
done

# manifest_set: single-file cases as they are; each directory case as one
# input, its files joined with "%% PATH" lines (the first becomes cell.toml).
for f in "$cases"/good/*.toml "$cases"/bad/*.toml; do
    cp "$f" "$fuzz/seeds/manifest_set/$(basename "$(dirname "$f")")-$(basename "$f")"
done
for d in "$cases"/bad/*/; do
    out="$fuzz/seeds/manifest_set/$(basename "$d").toml"
    first=1
    for f in $(cd "$d" && find . -name '*.toml' | awk -F/ '{print NF, $0}' | sort -k1,1n -k2 | cut -d' ' -f2); do
        f=${f#./}
        if [ $first = 1 ]; then
            cat "$d/$f" > "$out"
            first=0
        else
            printf '%%%% %s\n' "$f" >> "$out"
            cat "$d/$f" >> "$out"
        fi
    done
done

# Hand-written: a child that names its parent (a circle through a given
# manifest), and children nested two deep.
cat > "$fuzz/seeds/manifest_set/child-circle.toml" <<'TOML'
[cell]
name = "parent"
version = "1.0.0"
description = "its child's child is the parent again"
exec = ["/bin/true"]

[[child]]
name = "kid"
manifest = "kid/cell.toml"
%% kid/cell.toml
[cell]
name = "kid"
version = "1.0.0"
description = "points back up"
exec = ["/bin/true"]

[[child]]
name = "parent"
manifest = "../cell.toml"
TOML
cat > "$fuzz/seeds/manifest_set/child-nested.toml" <<'TOML'
[cell]
name = "top"
version = "1.0.0"
description = "children of children"
exec = ["/bin/true"]

[resources]
cpu-max = 4
memory-max = "1G"
tasks-max = 256

[[child]]
name = "mid"
manifest = "mid/cell.toml"
count = 2

[needs]
cells = ["database", "other"]
%% mid/cell.toml
[cell]
name = "mid"
version = "1.0.0"
description = "middle"
exec = ["/bin/true"]

[resources]
cpu-max = 1
memory-max = "256M"

[[child]]
name = "leaf"
manifest = "leaf/cell.toml"
count = 4
%% mid/leaf/cell.toml
[cell]
name = "leaf"
version = "1.0.0"
description = "leaf"
artifact = { path = "bin/leaf", blake3 = "0000000000000000000000000000000000000000000000000000000000000000" }

[resources]
cpu-max = 0.25
memory-max = "64M"
tasks-max = 16
%% other.toml
[cell]
name = "other"
version = "1.0.0"
description = "needed by top"
exec = ["/bin/true"]
TOML

# A chain of 18 manifests, each the only child of the one before: one past
# the nesting limit.
out="$fuzz/seeds/manifest_set/child-chain.toml"
: > "$out"
i=0
while [ $i -le 17 ]; do
    if [ $i = 0 ]; then next="n1/cell.toml"; else printf '%%%% n%d/cell.toml\n' $i >> "$out"; next="../n$((i + 1))/cell.toml"; fi
    printf '[cell]\nname = "n%d"\nversion = "1.0.0"\ndescription = "link %d"\nexec = ["/bin/true"]\n' $i $i >> "$out"
    if [ $i -lt 17 ]; then printf '\n[[child]]\nname = "next"\nmanifest = "%s"\n' "$next" >> "$out"; fi
    i=$((i + 1))
done
