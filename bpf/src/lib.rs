//! QuantumOS eBPF telemetry: CO-RE programs for run-queue latency and process events per cgroup, with typed Rust streams
