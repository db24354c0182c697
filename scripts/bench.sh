#!/bin/bash
# make bench: every benchmark, each a ratio against the obvious alternative
# measured in the same run. Needs the image and the .debs (`make image deb`).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== intent engine: accuracy on the tuning data tests/data/intents.tsv + intents-tuning-2.tsv to intents-tuning-14.tsv (a training score, and 5-fold cross-validated), on held-out set 12 tests/data/intents-heldout-12.tsv (written before the engine ran on it, never tuned on: aggregates only), time per intent (one core), model load"
sh scripts/fetch-model.sh
taskset -c 0 cargo run -q --release -p quantum-intent --bin intent-bench -- --heldout tests/data/intents-heldout-12.tsv
echo "== cell bundles: verify vs blake3 of the artifact (memory and file); ML-DSA-65 vs Ed25519 sign/verify"
cargo run -q --release -p quantum-trust --bin bundle-bench
echo "== quantum trail: appends/s with batched seals vs a signature per entry; verify of 1M entries"
cargo run -q --release -p quantum-trail --bin trail-bench
echo "== eBPF telemetry (TIME, EVENT): perf bench sched pipe and hackbench with / without the programs, ring buffer rate"
# bpf-bench runs bpf-workload (its sibling binary) for the ring-buffer rate.
cargo build -q --release -p quantum-bpf --bins
cargo run -q --release -p quantum-bpf --bin bpf-bench
echo "== channels between cells (Cell 0 IPC): msgs/s and latency over a brokered stream vs a raw Unix socket pair, one pair and 256 pairs (cgroup backend, this host)"
cargo build -q --release -p quantumd -p quantumctl -p quantum-cell
cargo test -q --release -p quantumctl --test channel_bench -- --nocapture
echo "== cell network: placement commit (Cluster::place) vs a bare etcd compare-and-swap, one etcd member on loopback"
cargo run -q --release -p quantum-cluster --bin place-bench
echo "== cell start: where its time goes (quantumd's stages), then quantumctl run vs systemd-run (plain, and with quantumd's whole sandbox), in a systemd-nspawn container"
cargo run -q --release -p quantum-vmtest --bin quantum-bench -- --backend nspawn --profile "${BENCH_PROFILE:-50}" --starts "${BENCH_STARTS:-100}" --concurrent "${BENCH_CONCURRENT:-256}"
if [ "${BENCH_VM:-1}" = 1 ]; then
    echo "== cell start vs systemd-run, and boot time to quantumd READY vs the image without quantumd, in QEMU (TCG)"
    cargo run -q --release -p quantum-vmtest --bin quantum-bench -- --backend qemu --profile "${BENCH_VM_PROFILE:-30}" --starts "${BENCH_VM_STARTS:-30}" --concurrent "${BENCH_CONCURRENT:-256}" --boots "${BENCH_BOOTS:-2}"
fi
if [ "${BENCH_ISO:-1}" = 1 ]; then
    echo "== the ISO: cold make iso vs plain mmdebstrap + mksquashfs of the same packages, warm build, size"
    bash bench/iso.sh
fi
