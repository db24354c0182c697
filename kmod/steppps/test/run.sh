#!/bin/bash
# Boots the QuantumOS kernel under QEMU (TCG) with a busybox initramfs that
# loads steppps.ko and checks it (test/init), and reports PASS or FAIL.
#
#   kmod/steppps/test/run.sh KERNEL_DIR STEPPPS_KO
#
# KERNEL_DIR is a kernel/build.sh output directory (it holds bzImage).
# Timeouts (seconds, overridable): STEPPPS_READY_TIMEOUT for the guest's
# readiness line (boot), STEPPPS_TEST_TIMEOUT for the verdict after it.
# The serial log is kept in $QUANTUM_CACHE/kmod/test/serial.log.
set -euo pipefail

die() { printf 'test-kmod: error: %s\n' "$*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: $0 KERNEL_DIR STEPPPS_KO"
KERNEL=$1/bzImage
KO=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
CACHE=${QUANTUM_CACHE:-.cache}
case $CACHE in /*) ;; *) CACHE=$ROOT/$CACHE ;; esac
WORK=$CACHE/kmod/test
READY_TIMEOUT=${STEPPPS_READY_TIMEOUT:-300}
TEST_TIMEOUT=${STEPPPS_TEST_TIMEOUT:-300}
BUSYBOX=/bin/busybox

[ -f "$KERNEL" ] || die "no kernel at $KERNEL (make kernel)"
[ -f "$KO" ] || die "no module at $KO (make kmod)"
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' ||
    die "$BUSYBOX is not busybox-static (bash scripts/install-deps.sh)"
command -v qemu-system-x86_64 >/dev/null || die "no qemu-system-x86_64 (bash scripts/install-deps.sh)"

# The initramfs: busybox, /init, the module and the static poll checker.
rm -rf "$WORK"
mkdir -p "$WORK/root/bin" "$WORK/root/proc" "$WORK/root/sys" "$WORK/root/dev" "$WORK/root/tmp"
cp "$BUSYBOX" "$WORK/root/bin/busybox"
ln -s busybox "$WORK/root/bin/sh"
cp "$HERE/init" "$WORK/root/init"
cp "$KO" "$WORK/root/steppps.ko"
gcc -static -O2 -Wall -o "$WORK/root/steppps-poll" "$HERE/steppps-poll.c"
(cd "$WORK/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -n) >"$WORK/initramfs.gz"

LOG=$WORK/serial.log
: >"$LOG"
qemu-system-x86_64 -accel tcg -machine q35 -m 512 -smp 2 \
    -kernel "$KERNEL" -initrd "$WORK/initramfs.gz" \
    -append "console=ttyS0 panic=-1 oops=panic" \
    -display none -monitor none -serial "file:$LOG" -no-reboot &
QEMU=$!
trap 'kill "$QEMU" 2>/dev/null || true' EXIT

# wait_for PATTERN SECONDS: until PATTERN is in the serial log, QEMU exits,
# or the time is up.
wait_for() {
    local deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        grep -q -- "$1" "$LOG" && return 0
        kill -0 "$QEMU" 2>/dev/null || { grep -q -- "$1" "$LOG"; return; }
        sleep 0.5
    done
    return 1
}

start=$SECONDS
verdict=FAIL
if ! wait_for 'STEPPPS-TEST: READY' "$READY_TIMEOUT"; then
    reason="no readiness line within ${READY_TIMEOUT}s"
elif ! wait_for 'STEPPPS-TEST: \(PASS\|FAIL\)' "$TEST_TIMEOUT"; then
    reason="no verdict within ${TEST_TIMEOUT}s of readiness"
elif grep -q 'STEPPPS-TEST: PASS' "$LOG"; then
    verdict=PASS
    reason=""
else
    reason=$(grep -m1 'STEPPPS-TEST: FAIL' "$LOG")
fi
# The guest checks dmesg itself; the console saw the same log, check it too.
if grep -v '^STEPPPS-TEST:\|^dmesg: ' "$LOG" | grep -qE 'WARNING:|BUG:|Oops|Kernel panic'; then
    verdict=FAIL
    reason="warnings or a panic on the console (see $LOG)"
fi
# The guest powers itself off after its verdict; give it a moment, no more.
for _ in $(seq 1 20); do kill -0 "$QEMU" 2>/dev/null || break; sleep 0.5; done

grep -E '^(STEPPPS-TEST|steppps|steppps-poll|dmesg):' "$LOG" | tr -d '\r' || true
if [ "$verdict" = PASS ]; then
    printf 'test-kmod: PASS (%ds, serial log %s)\n' "$((SECONDS - start))" "$LOG"
else
    tail -n 30 "$LOG" | tr -d '\r'
    printf 'test-kmod: FAIL: %s (serial log %s)\n' "$reason" "$LOG"
    exit 1
fi
