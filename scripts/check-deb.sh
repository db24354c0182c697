#!/bin/bash
# Checks the quantumos-* packages `make deb` built (`make test-deb` runs it):
# what each one holds (dpkg-deb -c), declares (dpkg-deb -I) and runs in its
# maintainer scripts. Reports every problem, then fails if there was one.
#
#   - the files each package must have, and for every project file the
#     guest image installs (image-builder/variants/test-guest/files) the
#     same file at the same place in some package, byte for byte;
#   - versions: Cargo.toml's workspace version everywhere;
#   - the configuration is a conffile; the maintainer scripts create the
#     user, the directories and reload D-Bus, and purge removes the state;
#   - every package of packaging/cells/packages.list is essential or named
#     in quantumos-cells' relations;
#   - every option of `quantumd --help`, `quantum-provider --help` and
#     `quantum-assistant --help` is in its hand-written manual page;
#   - the desktop assistant's entry passes desktop-file-validate, and the
#     D-Bus activation it declares has its service file, binary and icon;
#   - the units are as hardened as they say (systemd-analyze security);
#   - the packaged quantumctl validates the packaged catalog.
#
# environment: QUANTUM_DEB_DIR (default ${QUANTUM_CACHE:-<repo>/.cache}/deb).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEB_DIR=${QUANTUM_DEB_DIR:-${QUANTUM_CACHE:-$REPO/.cache}/deb}
IMAGE_FILES=$REPO/image-builder/variants/test-guest/files

stage() { printf '==> check-deb: %s\n' "$*"; }
die() { printf 'check-deb.sh: error: %s\n' "$*" >&2; exit 1; }
FAILED=0
fail() { printf 'check-deb: FAIL: %s\n' "$*" >&2; FAILED=1; }

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture)
PACKAGES="quantumos quantumos-daemon quantumos-cli quantumos-cells quantumos-model quantumos-provider quantumos-installer quantumos-desktop"

deb_of() {
    local a=$arch
    case "$1" in quantumos|quantumos-cells|quantumos-model|quantumos-installer) a=all ;; esac
    echo "$DEB_DIR/${1}_${version}_$a.deb"
}
for p in $PACKAGES; do
    [ -f "$(deb_of "$p")" ] || die "$(deb_of "$p") is missing: run make deb"
done
for tool in dpkg-deb systemd-analyze desktop-file-validate; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh (make deps)"
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"

# --------------------------------------------------------------- contents ---

# Paths (as dpkg-deb -c prints them, without the leading ".") each package
# must hold; the catalog, the manual pages of quantumctl's subcommands and
# the image's files are checked below, from their sources.
expected() {
    case "$1" in
        quantumos-daemon) cat <<'EOF'
/usr/bin/quantumd
/lib/systemd/system/quantumd.service
/lib/systemd/system/quantumd-gate.service
/lib/systemd/system/quantumd-gate.socket
/lib/systemd/system/quantum.slice
/usr/share/dbus-1/system.d/org.quantumos.Quantum1.conf
/usr/share/polkit-1/actions/org.quantumos.policy
/usr/share/polkit-1/rules.d/50-quantumos.rules
/usr/lib/sysusers.d/quantumd.conf
/usr/lib/tmpfiles.d/quantumd.conf
/etc/quantumos/quantumd.toml
/etc/quantumos/trusted-keys.d/
/usr/share/quantumos/systemd/quantumd-tpm.conf
/usr/share/man/man8/quantumd.8.gz
/usr/share/doc/quantumos-daemon/README.Debian
/usr/share/doc/quantumos-daemon/copyright
EOF
            ;;
        quantumos-cli) cat <<'EOF'
/usr/bin/quantumctl
/usr/share/man/man1/quantumctl.1.gz
/usr/share/bash-completion/completions/quantumctl
/usr/share/zsh/vendor-completions/_quantumctl
/usr/share/fish/vendor_completions.d/quantumctl.fish
/usr/share/doc/quantumos-cli/copyright
EOF
            ;;
        quantumos-cells) echo /usr/share/doc/quantumos-cells/copyright ;;
        quantumos-model) cat <<'EOF'
/usr/share/quantumos/models/all-MiniLM-L6-v2/model.safetensors
/usr/share/quantumos/models/all-MiniLM-L6-v2/tokenizer.json
/usr/share/quantumos/models/all-MiniLM-L6-v2/config.json
/usr/share/doc/quantumos-model/copyright
EOF
            ;;
        quantumos-provider) cat <<'EOF'
/usr/bin/quantum-provider
/lib/systemd/system/quantum-provider.service
/usr/share/man/man8/quantum-provider.8.gz
/usr/share/doc/quantumos-provider/README.Debian
/usr/share/doc/quantumos-provider/copyright
EOF
            ;;
        quantumos-installer) cat <<'EOF'
/usr/sbin/quantumos-install
/usr/share/man/man8/quantumos-install.8.gz
/usr/share/doc/quantumos-installer/copyright
EOF
            ;;
        quantumos-desktop) cat <<'EOF'
/usr/bin/quantum-assistant
/usr/share/applications/org.quantumos.Assistant.desktop
/usr/share/dbus-1/services/org.quantumos.Assistant.service
/usr/share/icons/hicolor/scalable/apps/org.quantumos.Assistant.svg
/usr/share/man/man1/quantum-assistant.1.gz
/usr/share/doc/quantumos-desktop/copyright
EOF
            ;;
        quantumos) echo /usr/share/doc/quantumos/copyright ;;
    esac
}

stage "contents (dpkg-deb -c)"
for p in $PACKAGES; do
    deb=$(deb_of "$p")
    dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|' >"$WORK/$p.list"
    while read -r path; do
        grep -qxF "$path" "$WORK/$p.list" || fail "$p does not hold $path"
    done < <(expected "$p")
    dpkg-deb -x "$deb" "$ROOT"
    printf '    %-20s %4d paths, %6s KiB installed\n' "$p" "$(wc -l <"$WORK/$p.list")" \
        "$(dpkg-deb -f "$deb" Installed-Size)"
done
cat "$WORK"/*.list >"$WORK/all.list"

for cell in "$REPO"/packaging/cells/*/cell.toml; do
    name=$(basename "$(dirname "$cell")")
    grep -qxF "/usr/share/quantumos/cells/$name/cell.toml" "$WORK/quantumos-cells.list" ||
        fail "quantumos-cells does not hold cell $name"
done
# One manual page per quantumctl subcommand (quantumd/ctl/build.rs).
"$ROOT/usr/bin/quantumctl" --help | awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^$/ { exit }' |
    while read -r sub; do
        [ "$sub" = help ] && continue
        grep -qxF "/usr/share/man/man1/quantumctl-$sub.1.gz" "$WORK/quantumos-cli.list" ||
            fail "quantumos-cli has no manual page for 'quantumctl $sub'"
    done

# The packages install what the guest image installs, where it installs it.
# bookworm puts units in /lib/systemd/system, which is /usr/lib/systemd/system
# on a merged-/usr system.
stage "same files as the image ($IMAGE_FILES)"
in_packages() {
    local dest=$1
    if [ -f "$ROOT$dest" ]; then echo "$ROOT$dest"; return 0; fi
    case "$dest" in
        /usr/lib/systemd/system/*) [ -f "$ROOT${dest#/usr}" ] && { echo "$ROOT${dest#/usr}"; return 0; } ;;
    esac
    return 1
}
image_checked=0
while read -r src dest _mode; do
    case "$src" in
        \#*|'') continue ;;
        # The image's own: the test agent and the precomputed embeddings.
        tests/*|cache/intent/*) continue ;;
        target/release/*)
            name=${src#target/release/}
            in_packages "$dest$name" >/dev/null || fail "the image installs $dest$name, no package does"
            image_checked=$((image_checked + 1))
            ;;
        cache/models/*/)
            model=$(basename "$src")
            for f in model.safetensors tokenizer.json config.json; do
                in_packages "$dest$model/$f" >/dev/null || fail "the image installs $dest$model/$f, no package does"
            done
            image_checked=$((image_checked + 1))
            ;;
        packaging/*/)
            for dir in "$REPO"/${src%/}; do
                [ -d "$dir" ] || continue
                while read -r f; do
                    rel=${f#"$dir"/}
                    target=$dest$(basename "$dir")/$rel
                    got=$(in_packages "$target") || { fail "the image installs $target, no package does"; continue; }
                    cmp -s "$f" "$got" || fail "$target differs from ${f#"$REPO"/}"
                    image_checked=$((image_checked + 1))
                done < <(find "$dir" -type f)
            done
            ;;
        packaging/*)
            for f in "$REPO"/$src; do
                [ -f "$f" ] || continue
                target=$dest$(basename "$f")
                got=$(in_packages "$target") || { fail "the image installs $target, no package does"; continue; }
                cmp -s "$f" "$got" || fail "$target differs from ${f#"$REPO"/}"
                image_checked=$((image_checked + 1))
            done
            ;;
        *) fail "$IMAGE_FILES: rule for '$src' is not known to this check" ;;
    esac
done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$IMAGE_FILES")
echo "    $image_checked image files found in the packages"

# Where the units say the binaries are.
for unit in "$ROOT"/lib/systemd/system/*.service; do
    exe=$(sed -n 's/^ExecStart=[-@+!:]*\([^ ]*\).*/\1/p' "$unit" | head -n1)
    [ -z "$exe" ] || [ -x "$ROOT$exe" ] || fail "$(basename "$unit") runs $exe, which no package holds"
done

# ------------------------------------------------------------- control ---

stage "control fields (dpkg-deb -I)"
field() { dpkg-deb -f "$(deb_of "$1")" "$2"; }
for p in $PACKAGES; do
    v=$(field "$p" Version)
    [ "$v" = "$version" ] || fail "$p is version $v, Cargo.toml says $version"
    printf '    %-20s %s\n' "$p" "$(field "$p" Depends)"
done
for lib in libtss2-esys libbtrfsutil1 libsystemd0; do
    field quantumos-daemon Depends | grep -q "$lib" ||
        fail "quantumos-daemon does not depend on $lib (dh_shlibdeps did not run?)"
done
# The assistant links GTK 4 and libadwaita, and needs quantumd (D-Bus).
for dep in libgtk-4-1 libadwaita-1-0 quantumos-daemon; do
    field quantumos-desktop Depends | grep -q "$dep" ||
        fail "quantumos-desktop does not depend on $dep"
done
dpkg-deb -I "$(deb_of quantumos-daemon)" conffiles 2>/dev/null | grep -qxF /etc/quantumos/quantumd.toml ||
    fail "/etc/quantumos/quantumd.toml is not a conffile of quantumos-daemon"

# The relations of quantumos-cells account for packages.list; essential
# packages are left out of them on purpose.
relations=$(for f in Depends Recommends Suggests; do field quantumos-cells "$f"; done |
    tr ',|' '\n' | sed -e 's/(.*)//' -e 's/[[:space:]]//g' -e '/^$/d')
while read -r pkg; do
    grep -qxF "$pkg" <<<"$relations" && continue
    [ "$(dpkg-query -W -f='${Essential}' "$pkg" 2>/dev/null)" = yes ] && continue
    fail "packaging/cells/packages.list needs $pkg; quantumos-cells neither depends on, recommends nor suggests it (and it is not essential here)"
done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$REPO/packaging/cells/packages.list" | awk '{ print $1 }')

# ---------------------------------------------------- maintainer scripts ---

stage "maintainer scripts"
script() { dpkg-deb -I "$(deb_of "$1")" "$2" 2>/dev/null || true; }
expect_in() { # PACKAGE SCRIPT TEXT WHY
    script "$1" "$2" | grep -qF -- "$3" || fail "$1 $2 lacks '$3' ($4)"
}
expect_in quantumos-daemon postinst 'systemd-sysusers' 'creates user quantumd'
expect_in quantumos-daemon postinst 'systemd-tmpfiles' 'creates /var/lib/quantumd'
expect_in quantumos-daemon postinst 'ReloadConfig' 'D-Bus sees the policy of the new user'
expect_in quantumos-daemon postinst "deb-systemd-helper enable 'quantumd.service'" 'enables quantumd'
# One deb-systemd-invoke line starts every unit dh_installsystemd was given
# together (quantumd's sockets, the gate and quantumd).
script quantumos-daemon postinst | grep -F 'deb-systemd-invoke $_dh_action' | grep -qF "'quantumd.service'" ||
    fail "quantumos-daemon postinst lacks 'deb-systemd-invoke \$_dh_action ... 'quantumd.service'' (starts quantumd)"
expect_in quantumos-daemon prerm "deb-systemd-invoke stop 'quantum.slice'" 'removal stops the cells'
expect_in quantumos-daemon postrm 'rm -rf /var/lib/quantumd /var/cache/quantumd' 'purge removes the state'
expect_in quantumos-daemon postrm 'userdel quantumd' 'purge removes the user'
expect_in quantumos-daemon postrm 'deb-systemd-helper purge' 'purge forgets the unit states'
expect_in quantumos-provider postinst "deb-systemd-helper update-state 'quantum-provider.service'" 'installed disabled'
if script quantumos-daemon postinst | grep -q "restart.*quantum.slice"; then
    fail "quantumos-daemon restarts quantum.slice on upgrade, which would kill every cell"
fi

# ------------------------------------------------------ desktop entry ---

# The entry is D-Bus activatable: a launcher calls Activate on the bus name
# of the file's own name, so the session bus must have a service file of
# that name that runs the packaged assistant as a GApplication service, and
# the entry's icon must be in the theme.
stage "desktop entry and D-Bus activation (desktop-file-validate)"
for entry in "$ROOT"/usr/share/applications/*.desktop; do
    app=$(basename "$entry" .desktop)
    out=$(desktop-file-validate "$entry" 2>&1) || fail "desktop-file-validate rejects $app.desktop: $out"
    [ -z "$out" ] || fail "desktop-file-validate warns about $app.desktop: $out"
    key() { sed -n "s/^$1=//p" "$entry" | head -n1; }
    if [ "$(key DBusActivatable)" = true ]; then
        service=$ROOT/usr/share/dbus-1/services/$app.service
        if [ -f "$service" ]; then
            name=$(sed -n 's/^Name=//p' "$service")
            exec=$(sed -n 's/^Exec=//p' "$service")
            [ "$name" = "$app" ] || fail "$app.service names $name, not $app"
            [ -x "$ROOT${exec%% *}" ] || fail "$app.service runs ${exec%% *}, which no package holds"
            case " $exec " in *" --gapplication-service "*) ;;
                *) fail "$app.service does not start the application as a service (--gapplication-service)" ;; esac
        else
            fail "$app.desktop is DBusActivatable, but no package holds /usr/share/dbus-1/services/$app.service"
        fi
    fi
    icon=$(key Icon)
    ls "$ROOT"/usr/share/icons/hicolor/*/apps/"$icon".* >/dev/null 2>&1 ||
        fail "$app.desktop's icon $icon is in no package"
    bin=$(key Exec); bin=${bin%% *}
    [ -x "$ROOT/usr/bin/$bin" ] || fail "$app.desktop runs $bin, which is not in /usr/bin of a package"
    printf '    %s: valid, Exec=%s, Icon=%s, DBusActivatable=%s\n' "$app" "$bin" "$icon" "$(key DBusActivatable)"
done

# ------------------------------------------------------- manual pages ---

stage "manual pages cover the options"
for pair in /usr/bin/quantumd:/usr/share/man/man8/quantumd.8.gz \
    /usr/bin/quantum-provider:/usr/share/man/man8/quantum-provider.8.gz \
    /usr/sbin/quantumos-install:/usr/share/man/man8/quantumos-install.8.gz \
    /usr/bin/quantum-assistant:/usr/share/man/man1/quantum-assistant.1.gz; do
    bin=${pair%%:*} page=${pair#*:}
    text=$(zcat "$ROOT$page" | sed 's/\\-/-/g')
    for opt in $("$ROOT$bin" --help | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u); do
        grep -qF -- "$opt" <<<"$text" || fail "$page does not describe $bin $opt"
    done
done

# ---------------------------------------------------------- hardening ---

# The units' own goal (their header comments): systemd-analyze security at
# most 2.0. --offline reads the unit files alone, so this runs on a host
# whose PID 1 is not systemd.
stage "systemd-analyze security --offline (exposure at most 2.0)"
for unit in quantumd.service quantumd-gate.service quantum-provider.service; do
    if ! out=$(systemd-analyze security --offline=true --threshold=20 --root="$ROOT" "$unit" 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        fail "$unit is more exposed than 2.0"
    fi
    printf '    %s\n' "$(printf '%s\n' "$out" | sed -n 's/^→ //p')"
done
# As the ISOs install it: quantumd with the TPM's device bound in.
install -D -m 0644 "$ROOT/usr/share/quantumos/systemd/quantumd-tpm.conf" \
    "$ROOT/etc/systemd/system/quantumd.service.d/quantumd-tpm.conf"
if ! out=$(systemd-analyze security --offline=true --threshold=20 --root="$ROOT" quantumd.service 2>&1); then
    printf '%s\n' "$out" | tail -n 30 >&2
    fail "quantumd.service with the TPM drop-in is more exposed than 2.0"
fi
printf '    with the TPM drop-in: %s\n' "$(printf '%s\n' "$out" | sed -n 's/^→ //p')"
rm -r "$ROOT/etc/systemd/system/quantumd.service.d"

# ------------------------------------------------------------ catalog ---

stage "the packaged quantumctl validates the packaged catalog"
if ! "$ROOT/usr/bin/quantumctl" validate --catalog "$ROOT/usr/share/quantumos/cells" \
    "$ROOT"/usr/share/quantumos/cells/* >"$WORK/validate.txt" 2>&1; then
    cat "$WORK/validate.txt" >&2
    fail "quantumctl validate rejects the packaged catalog"
fi

[ "$FAILED" -eq 0 ] || die "the packages in $DEB_DIR have problems (above)"
stage "all checks passed ($DEB_DIR)"
