#!/bin/bash
# Host tier: `make demo`, run as the README tells a newcomer to, must show
# the web-server cell answering HTTP 200 within seconds and stop cleanly
# when told (standard input ends). Runs after `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { printf 'demo test: FAIL: %s\n' "$*" >&2; exit 1; }

# A free port, so the test does not collide with anything on the host.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$SECONDS
set +e
QUANTUM_DEMO_PORT=$port timeout 120 make -s --no-print-directory demo </dev/null >"$out" 2>&1
rc=$?
set -e
took=$((SECONDS - start))
cat "$out"
[ "$rc" -eq 0 ] || fail "make demo exited with status $rc after ${took}s (124: it hung)"
grep -qx 'HTTP 200' "$out" || fail "make demo did not print the web-server cell's 'HTTP 200'"
grep -q '^== stopping' "$out" || fail "make demo did not stop when its input ended"
# Nothing of the demo may outlive it: quantumd, its bus, the cell, the mount.
if pgrep -f 'quantumd --config /dev/null --backend cgroup' >/dev/null; then fail "quantumd still runs after the demo"; fi
if pgrep -f "http.server.*$port" >/dev/null; then fail "the web-server cell still runs after the demo"; fi
if grep -q ' /tmp/quantum-demo\.' /proc/mounts; then fail "the demo left its cgroup2 mount behind"; fi
echo "demo test: ok (make demo answered HTTP 200 and stopped, ${took}s)"
