#!/bin/bash
# make demo: quantumd on a private D-Bus on this host (cgroup v2 backend),
# with the web-server cell from the catalog serving this directory.
#
# It prints the HTTP status the cell answers with, then keeps quantumd
# running until you press Enter or Ctrl-C (or standard input ends: with
# `make demo </dev/null` it stops at once, which is how `make test` runs it).
# Needs root (it mounts a cgroup2 hierarchy) and dbus-daemon.
#
#   QUANTUM_DEMO_PORT   port of the web-server cell (default 8080)
#   CARGO_TARGET_DIR    where the debug binaries are (default target/)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/debug
port=${QUANTUM_DEMO_PORT:-8080}
# How long quantumd may take to own its bus name.
ready_limit=30

die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: the demo mounts a cgroup2 hierarchy for the cells"
for b in quantumd quantumctl; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing: run 'make build' (or 'make demo', which builds first)"
done
command -v dbus-daemon >/dev/null || die "dbus-daemon is missing: apt install dbus"

work=$(mktemp -d /tmp/quantum-demo.XXXXXX)
cleanup() {
    set +e
    [ -n "${qd:-}" ] && "$bin/quantumctl" stop web-server >/dev/null 2>&1
    [ -n "${qd:-}" ] && kill "$qd" 2>/dev/null && wait "$qd" 2>/dev/null
    [ -n "${bus:-}" ] && kill "$bus" 2>/dev/null
    # Whatever the cells left behind, then their cgroups.
    [ -n "${cells:-}" ] && [ -d "$cells" ] && {
        find "$cells" -depth -type d -exec sh -c 'echo 1 > "$1/cgroup.kill"' _ {} \; 2>/dev/null
        sleep 0.2
        find "$cells" -depth -type d -exec rmdir {} \; 2>/dev/null
    }
    umount -l "$work/cgroup2" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The same bus configuration as the host-tier tests (tests/dbus/).
dbus-daemon --config-file=tests/dbus/private-bus.conf --address="unix:path=$work/bus" \
    --nofork 2>"$work/dbus.log" & bus=$!
export QUANTUM_BUS_ADDRESS="unix:path=$work/bus"
mkdir -p "$work/cgroup2" && mount -t cgroup2 none "$work/cgroup2"
cells="$work/cgroup2/quantum-demo-$$"
mkdir -p "$cells"
"$bin/quantumd" --config /dev/null --backend cgroup --cgroup-root "$cells" \
    --state-dir "$work/state" --cache-dir "$work/cache" --catalog packaging/cells \
    2>"$work/quantumd.log" & qd=$!

# Ready when quantumd owns its name on the bus; bounded, and quantumd's own
# log is shown if it dies or never gets there.
printf '== waiting for quantumd on %s' "$QUANTUM_BUS_ADDRESS"
deadline=$((SECONDS + ready_limit))
until dbus-send --bus="$QUANTUM_BUS_ADDRESS" --print-reply=literal --reply-timeout=1000 \
        --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner \
        string:org.quantumos.Quantum1 2>/dev/null | grep -q true; do
    if ! kill -0 "$qd" 2>/dev/null; then
        echo; cat "$work/quantumd.log" >&2; die "quantumd exited before it was ready (its log is above)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo; tail -n 20 "$work/quantumd.log" >&2
        die "quantumd did not own org.quantumos.Quantum1 within ${ready_limit}s (the end of its log is above)"
    fi
    printf .; sleep 0.1
done
echo " ready"

echo "== quantumctl run web-server port=$port dir=."
"$bin/quantumctl" run web-server "port=$port" dir=.
echo "== quantumctl list"
"$bin/quantumctl" list
echo "== GET http://127.0.0.1:$port/"
# The cell needs a moment to bind its port: retry for up to 10 s.
python3 - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/"
deadline = time.monotonic() + 10
while True:
    try:
        print("HTTP", urllib.request.urlopen(url, timeout=3).status)
        break
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"demo: error: the web-server cell does not answer on {url}: {e}")
        time.sleep(0.1)
PY
echo
echo "quantumd is serving on $QUANTUM_BUS_ADDRESS; in another terminal:"
echo "  QUANTUM_BUS_ADDRESS=$QUANTUM_BUS_ADDRESS $bin/quantumctl inspect web-server"
echo "Press Enter (or Ctrl-C) to stop."
read -r _ || true
echo "== stopping"
