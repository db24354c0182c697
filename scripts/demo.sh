#!/bin/bash
# quantumd on a private D-Bus on this host (cgroup v2 backend), with the
# web-server cell from the catalog serving this directory. Ctrl-C ends it.
# Needs root (it mounts a cgroup2 hierarchy) and dbus-daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug
work=$(mktemp -d /tmp/quantum-demo.XXXXXX)
cleanup() {
    set +e
    [ -n "${qd:-}" ] && "$bin/quantumctl" stop web-server >/dev/null 2>&1
    [ -n "${qd:-}" ] && kill "$qd" 2>/dev/null
    [ -n "${bus:-}" ] && kill "$bus" 2>/dev/null
    umount -l "$work/cgroup2" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path=$work/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*"/><allow own="*"/></policy></busconfig>
CONF
dbus-daemon --config-file="$work/bus.conf" --nofork & bus=$!
export QUANTUM_BUS_ADDRESS="unix:path=$work/bus"
mkdir -p "$work/cgroup2" && mount -t cgroup2 none "$work/cgroup2"
mkdir -p "$work/cgroup2/quantum-demo-$$"
"$bin/quantumd" --config /dev/null --backend cgroup --cgroup-root "$work/cgroup2/quantum-demo-$$" \
    --state-dir "$work/state" --catalog packaging/cells & qd=$!
for _ in $(seq 50); do "$bin/quantumctl" list >/dev/null 2>&1 && break; sleep 0.1; done

echo "== quantumctl run web-server port=8080 dir=."
"$bin/quantumctl" run web-server port=8080 dir=.
sleep 1
echo "== quantumctl list"
"$bin/quantumctl" list
echo "== http://127.0.0.1:8080/ answers:"
python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8080/',timeout=3).status)"
echo
echo "quantumd is serving on $QUANTUM_BUS_ADDRESS; in another terminal:"
echo "  QUANTUM_BUS_ADDRESS=$QUANTUM_BUS_ADDRESS $bin/quantumctl inspect web-server"
echo "Ctrl-C to stop."
wait "$qd"
