//! The figures' two public forms: the JSON contract of
//! `quantumctl steppps --json`, and the Prometheus text exposition.
//! Refresh the expected text with `UPDATE_EXPECT=1` after a deliberate change.

use std::collections::BTreeMap;

use expect_test::{expect, Expect};
use quantum_steppps::cgroup::{CpuStat, IoStat, MemoryEvents};
use quantum_steppps::figures::{
    CellFigures, CellRates, EventCounts, EventFigures, GpuDevice, GpuFigures, KernelFigures, NodeFigures, RunqLatency, TimeFigures,
};
use quantum_steppps::proc::LoadAvg;
use quantum_steppps::{prometheus, Availability, CgroupSample, Figures, Limit, Pressure, PressureLine, PressureSet};

fn psi(avg10: f64, total_usec: u64) -> Option<Pressure> {
    Some(Pressure {
        some: PressureLine {
            avg10,
            avg60: 0.0,
            avg300: 0.0,
            total_usec,
        },
        full: None,
    })
}

fn sample_figures() -> Figures {
    let web = CellFigures {
        cell: "web-server".into(),
        cgroup: "quantum.slice/quantum-web\\x2dserver.1.service".into(),
        rates: CellRates {
            cpu_cores: Some(0.25),
            cpu_throttled: Some(0.0),
            io_read_bytes_per_second: Some(1024.0),
            io_write_bytes_per_second: None,
        },
        readings: CgroupSample {
            cpu: Some(CpuStat {
                usage_usec: 1_500_000,
                throttled_usec: Some(0),
                nr_throttled: Some(0),
            }),
            memory_current: Some(1_048_576),
            memory_max: Some(Limit::Value(268_435_456)),
            memory_events: Some(MemoryEvents {
                max: 0,
                oom: 0,
                oom_kill: 0,
            }),
            pressure: PressureSet {
                cpu: psi(1.5, 2_000_000),
                memory: None,
                io: None,
            },
            io: Some(IoStat {
                rbytes: 4096,
                wbytes: 0,
                rios: 1,
                wios: 0,
            }),
            pids_current: Some(3),
            pids_max: Some(Limit::Unlimited),
        },
    };
    // A cell name with every character a label value must escape.
    let odd = CellFigures {
        cell: "odd\"na\\me\n".into(),
        cgroup: "quantum.slice/odd.service".into(),
        rates: CellRates::default(),
        readings: CgroupSample {
            cpu: Some(CpuStat {
                usage_usec: 10,
                throttled_usec: None,
                nr_throttled: None,
            }),
            ..CgroupSample::default()
        },
    };
    Figures {
        node: NodeFigures {
            cpus: 2,
            cpu_busy: Some(0.5),
            memory_total_bytes: 8_589_934_592,
            memory_available_bytes: 4_294_967_296,
            load: LoadAvg {
                one: 0.5,
                five: 0.25,
                fifteen: 0.125,
                runnable: 1,
                tasks: 200,
            },
            pressure: PressureSet {
                cpu: psi(2.0, 5_000_000),
                memory: None,
                io: None,
            },
        },
        cells: BTreeMap::from([("odd.1".to_owned(), odd), ("web-server.1".to_owned(), web)]),
        gpus: Availability::Available(GpuFigures {
            driver_version: Some("550.54.15".into()),
            devices: vec![GpuDevice {
                index: 0,
                name: Some("NVIDIA H100".into()),
                uuid: Some("GPU-0000".into()),
                utilization_percent: Some(40),
                memory_utilization_percent: Some(10),
                memory_used_bytes: Some(1_073_741_824),
                memory_total_bytes: Some(85_899_345_920),
            }],
        }),
        time: Availability::Available(TimeFigures {
            cells: BTreeMap::from([(
                "web-server.1".to_owned(),
                RunqLatency {
                    samples: 1000,
                    p50_us: Some(12),
                    p99_us: Some(1536),
                    mean_us: Some(40),
                },
            )]),
        }),
        event: Availability::unavailable("BPF needs CAP_BPF and CAP_PERFMON"),
        kernel: Availability::Available(KernelFigures {
            device: "/dev/steppps".into(),
            generation: 7,
            samples: 1234,
            interval_ms: 250,
            sampled_at_ms: 308_500,
            load_one: 0.42,
            load_five: 0.17,
            load_fifteen: 0.05,
            cpus_online: 2,
            memory_total_bytes: 8_589_934_592,
            memory_free_bytes: 1_073_741_824,
        }),
    }
}

fn check_json(figures: &Figures, expect: Expect) {
    let json = serde_json::to_string_pretty(figures).expect("figures serialize");
    expect.assert_eq(&json);
    let back: Figures = serde_json::from_str(&json).expect("and read back");
    assert_eq!(&back, figures, "the JSON round-trips");
}

#[test]
fn the_json_contract() {
    check_json(
        &sample_figures(),
        expect![[r#"
            {
              "node": {
                "cpus": 2,
                "cpu-busy": 0.5,
                "memory-total-bytes": 8589934592,
                "memory-available-bytes": 4294967296,
                "load": {
                  "one": 0.5,
                  "five": 0.25,
                  "fifteen": 0.125,
                  "runnable": 1,
                  "tasks": 200
                },
                "pressure": {
                  "cpu": {
                    "some": {
                      "avg10": 2.0,
                      "avg60": 0.0,
                      "avg300": 0.0,
                      "total-usec": 5000000
                    },
                    "full": null
                  },
                  "memory": null,
                  "io": null
                }
              },
              "cells": {
                "odd.1": {
                  "cell": "odd\"na\\me\n",
                  "cgroup": "quantum.slice/odd.service",
                  "rates": {
                    "cpu-cores": null,
                    "cpu-throttled": null,
                    "io-read-bytes-per-second": null,
                    "io-write-bytes-per-second": null
                  },
                  "readings": {
                    "cpu": {
                      "usage-usec": 10,
                      "throttled-usec": null,
                      "nr-throttled": null
                    },
                    "memory-current": null,
                    "memory-max": null,
                    "memory-events": null,
                    "pressure": {
                      "cpu": null,
                      "memory": null,
                      "io": null
                    },
                    "io": null,
                    "pids-current": null,
                    "pids-max": null
                  }
                },
                "web-server.1": {
                  "cell": "web-server",
                  "cgroup": "quantum.slice/quantum-web\\x2dserver.1.service",
                  "rates": {
                    "cpu-cores": 0.25,
                    "cpu-throttled": 0.0,
                    "io-read-bytes-per-second": 1024.0,
                    "io-write-bytes-per-second": null
                  },
                  "readings": {
                    "cpu": {
                      "usage-usec": 1500000,
                      "throttled-usec": 0,
                      "nr-throttled": 0
                    },
                    "memory-current": 1048576,
                    "memory-max": 268435456,
                    "memory-events": {
                      "max": 0,
                      "oom": 0,
                      "oom-kill": 0
                    },
                    "pressure": {
                      "cpu": {
                        "some": {
                          "avg10": 1.5,
                          "avg60": 0.0,
                          "avg300": 0.0,
                          "total-usec": 2000000
                        },
                        "full": null
                      },
                      "memory": null,
                      "io": null
                    },
                    "io": {
                      "rbytes": 4096,
                      "wbytes": 0,
                      "rios": 1,
                      "wios": 0
                    },
                    "pids-current": 3,
                    "pids-max": "max"
                  }
                }
              },
              "gpus": {
                "driver-version": "550.54.15",
                "devices": [
                  {
                    "index": 0,
                    "name": "NVIDIA H100",
                    "uuid": "GPU-0000",
                    "utilization-percent": 40,
                    "memory-utilization-percent": 10,
                    "memory-used-bytes": 1073741824,
                    "memory-total-bytes": 85899345920
                  }
                ]
              },
              "time": {
                "cells": {
                  "web-server.1": {
                    "samples": 1000,
                    "p50-us": 12,
                    "p99-us": 1536,
                    "mean-us": 40
                  }
                }
              },
              "event": {
                "unavailable": "BPF needs CAP_BPF and CAP_PERFMON"
              },
              "kernel": {
                "device": "/dev/steppps",
                "generation": 7,
                "samples": 1234,
                "interval-ms": 250,
                "sampled-at-ms": 308500,
                "load-one": 0.42,
                "load-five": 0.17,
                "load-fifteen": 0.05,
                "cpus-online": 2,
                "memory-total-bytes": 8589934592,
                "memory-free-bytes": 1073741824
              }
            }"#]],
    );
}

#[test]
fn the_prometheus_exposition() {
    let figures = Figures {
        event: Availability::Available(EventFigures {
            cells: BTreeMap::from([(
                "web-server.1".to_owned(),
                EventCounts {
                    exec: 4,
                    exit: 3,
                    exit_failed: 1,
                    oom_kill: 0,
                    connect: 0,
                },
            )]),
            dropped: 2,
        }),
        ..sample_figures()
    };
    expect![[r##"
        # HELP quantumos_steppps_available Whether a STEPPPS dimension is measured on this node (1) or unavailable (0).
        # TYPE quantumos_steppps_available gauge
        quantumos_steppps_available{dimension="gpu"} 1
        quantumos_steppps_available{dimension="time"} 1
        quantumos_steppps_available{dimension="event"} 1
        quantumos_steppps_available{dimension="kernel-module"} 1
        # HELP quantumos_node_cpus Online CPUs.
        # TYPE quantumos_node_cpus gauge
        quantumos_node_cpus 2
        # HELP quantumos_node_cpu_busy_ratio Share of all CPUs' time spent busy since the previous sample.
        # TYPE quantumos_node_cpu_busy_ratio gauge
        quantumos_node_cpu_busy_ratio 0.5
        # HELP quantumos_node_memory_total_bytes Installed memory (MemTotal).
        # TYPE quantumos_node_memory_total_bytes gauge
        quantumos_node_memory_total_bytes 8589934592
        # HELP quantumos_node_memory_available_bytes Memory available for new work without swapping (MemAvailable).
        # TYPE quantumos_node_memory_available_bytes gauge
        quantumos_node_memory_available_bytes 4294967296
        # HELP quantumos_node_load Load average.
        # TYPE quantumos_node_load gauge
        quantumos_node_load{window="1m"} 0.5
        quantumos_node_load{window="5m"} 0.25
        quantumos_node_load{window="15m"} 0.125
        # HELP quantumos_node_pressure_ratio Share of the last 10 s in which some (or all) tasks stalled on the resource (PSI avg10 / 100).
        # TYPE quantumos_node_pressure_ratio gauge
        quantumos_node_pressure_ratio{resource="cpu",kind="some"} 0.02
        # HELP quantumos_node_pressure_stall_seconds_total Time some (or all) tasks stalled on the resource (PSI total).
        # TYPE quantumos_node_pressure_stall_seconds_total counter
        quantumos_node_pressure_stall_seconds_total{resource="cpu",kind="some"} 5
        # HELP quantumos_cell_cpu_cores CPU cores the cell used on average since the previous sample.
        # TYPE quantumos_cell_cpu_cores gauge
        quantumos_cell_cpu_cores{cell="web-server",instance="web-server.1"} 0.25
        # HELP quantumos_cell_cpu_seconds_total CPU time the cell used.
        # TYPE quantumos_cell_cpu_seconds_total counter
        quantumos_cell_cpu_seconds_total{cell="odd\"na\\me\n",instance="odd.1"} 0.00001
        quantumos_cell_cpu_seconds_total{cell="web-server",instance="web-server.1"} 1.5
        # HELP quantumos_cell_cpu_throttled_seconds_total Time the cell was throttled by its CPU quota.
        # TYPE quantumos_cell_cpu_throttled_seconds_total counter
        quantumos_cell_cpu_throttled_seconds_total{cell="web-server",instance="web-server.1"} 0
        # HELP quantumos_cell_cpu_throttled_periods_total Scheduler periods in which the cell was throttled.
        # TYPE quantumos_cell_cpu_throttled_periods_total counter
        quantumos_cell_cpu_throttled_periods_total{cell="web-server",instance="web-server.1"} 0
        # HELP quantumos_cell_memory_bytes Memory the cell uses (memory.current).
        # TYPE quantumos_cell_memory_bytes gauge
        quantumos_cell_memory_bytes{cell="web-server",instance="web-server.1"} 1048576
        # HELP quantumos_cell_memory_max_bytes The cell's memory limit (memory.max; +Inf for none).
        # TYPE quantumos_cell_memory_max_bytes gauge
        quantumos_cell_memory_max_bytes{cell="web-server",instance="web-server.1"} 268435456
        # HELP quantumos_cell_memory_events_total Memory limit events of the cell (memory.events).
        # TYPE quantumos_cell_memory_events_total counter
        quantumos_cell_memory_events_total{cell="web-server",instance="web-server.1",event="max"} 0
        quantumos_cell_memory_events_total{cell="web-server",instance="web-server.1",event="oom"} 0
        quantumos_cell_memory_events_total{cell="web-server",instance="web-server.1",event="oom_kill"} 0
        # HELP quantumos_cell_pressure_ratio Share of the last 10 s in which some (or all) of the cell's tasks stalled on the resource (PSI avg10 / 100).
        # TYPE quantumos_cell_pressure_ratio gauge
        quantumos_cell_pressure_ratio{cell="web-server",instance="web-server.1",resource="cpu",kind="some"} 0.015
        # HELP quantumos_cell_pressure_stall_seconds_total Time some (or all) of the cell's tasks stalled on the resource (PSI total).
        # TYPE quantumos_cell_pressure_stall_seconds_total counter
        quantumos_cell_pressure_stall_seconds_total{cell="web-server",instance="web-server.1",resource="cpu",kind="some"} 2
        # HELP quantumos_cell_io_bytes_per_second Bytes the cell read or wrote per second since the previous sample.
        # TYPE quantumos_cell_io_bytes_per_second gauge
        quantumos_cell_io_bytes_per_second{cell="web-server",instance="web-server.1",direction="read"} 1024
        # HELP quantumos_cell_io_bytes_total Bytes the cell read or wrote (io.stat).
        # TYPE quantumos_cell_io_bytes_total counter
        quantumos_cell_io_bytes_total{cell="web-server",instance="web-server.1",direction="read"} 4096
        quantumos_cell_io_bytes_total{cell="web-server",instance="web-server.1",direction="write"} 0
        # HELP quantumos_cell_io_operations_total Read or write operations of the cell (io.stat).
        # TYPE quantumos_cell_io_operations_total counter
        quantumos_cell_io_operations_total{cell="web-server",instance="web-server.1",direction="read"} 1
        quantumos_cell_io_operations_total{cell="web-server",instance="web-server.1",direction="write"} 0
        # HELP quantumos_cell_tasks Tasks in the cell (pids.current).
        # TYPE quantumos_cell_tasks gauge
        quantumos_cell_tasks{cell="web-server",instance="web-server.1"} 3
        # HELP quantumos_cell_tasks_max The cell's task limit (pids.max; +Inf for none).
        # TYPE quantumos_cell_tasks_max gauge
        quantumos_cell_tasks_max{cell="web-server",instance="web-server.1"} +Inf
        # HELP quantumos_cell_runq_latency_seconds Run-queue latency of the cell's tasks since the previous figures, by quantile.
        # TYPE quantumos_cell_runq_latency_seconds gauge
        quantumos_cell_runq_latency_seconds{cell="web-server",instance="web-server.1",quantile="0.5"} 0.000012
        quantumos_cell_runq_latency_seconds{cell="web-server",instance="web-server.1",quantile="0.99"} 0.001536
        # HELP quantumos_cell_runq_waits Run-queue waits measured for the cell since the previous figures.
        # TYPE quantumos_cell_runq_waits gauge
        quantumos_cell_runq_waits{cell="web-server",instance="web-server.1"} 1000
        # HELP quantumos_cell_recent_events Process events in the cell since the previous figures.
        # TYPE quantumos_cell_recent_events gauge
        quantumos_cell_recent_events{cell="web-server",instance="web-server.1",kind="exec"} 4
        quantumos_cell_recent_events{cell="web-server",instance="web-server.1",kind="exit"} 3
        quantumos_cell_recent_events{cell="web-server",instance="web-server.1",kind="exit-failed"} 1
        quantumos_cell_recent_events{cell="web-server",instance="web-server.1",kind="oom-kill"} 0
        quantumos_cell_recent_events{cell="web-server",instance="web-server.1",kind="connect"} 0
        # HELP quantumos_recent_events_dropped Process events lost to a full ring buffer since the previous figures.
        # TYPE quantumos_recent_events_dropped gauge
        quantumos_recent_events_dropped 2
        # HELP quantumos_gpu_utilization_ratio Share of the last sample period in which a kernel ran on the GPU.
        # TYPE quantumos_gpu_utilization_ratio gauge
        quantumos_gpu_utilization_ratio{gpu="0",name="NVIDIA H100"} 0.4
        # HELP quantumos_gpu_memory_utilization_ratio Share of the last sample period in which GPU memory was read or written.
        # TYPE quantumos_gpu_memory_utilization_ratio gauge
        quantumos_gpu_memory_utilization_ratio{gpu="0",name="NVIDIA H100"} 0.1
        # HELP quantumos_gpu_memory_used_bytes GPU memory in use.
        # TYPE quantumos_gpu_memory_used_bytes gauge
        quantumos_gpu_memory_used_bytes{gpu="0",name="NVIDIA H100"} 1073741824
        # HELP quantumos_gpu_memory_total_bytes GPU memory installed.
        # TYPE quantumos_gpu_memory_total_bytes gauge
        quantumos_gpu_memory_total_bytes{gpu="0",name="NVIDIA H100"} 85899345920
    "##]]
    .assert_eq(&prometheus(&figures));
}

#[test]
fn unavailable_dimensions_are_zero_in_prometheus_and_say_why_in_json() {
    let figures = Figures {
        gpus: Availability::unavailable("no NVIDIA driver"),
        time: Availability::unavailable("no BTF"),
        event: Availability::unavailable("no BTF"),
        ..sample_figures()
    };
    let json = serde_json::to_value(&figures).expect("serializes");
    assert_eq!(json["gpus"], serde_json::json!({"unavailable": "no NVIDIA driver"}));
    assert_eq!(json["time"], serde_json::json!({"unavailable": "no BTF"}));
    let text = prometheus(&figures);
    assert!(text.contains("quantumos_steppps_available{dimension=\"gpu\"} 0\n"), "{text}");
    assert!(!text.contains("quantumos_gpu_"), "{text}");
    assert!(!text.contains("quantumos_cell_runq_latency_seconds"), "{text}");
}

/// A quantumctl reads the figures of a quantumd that predates the kernel
/// module's figures: `kernel` is then "not collected".
#[test]
fn figures_without_the_kernel_field_still_read() {
    let mut json = serde_json::to_value(sample_figures()).expect("serializes");
    json.as_object_mut().expect("an object").remove("kernel");
    let back: Figures = serde_json::from_value(json).expect("reads without `kernel`");
    assert_eq!(back.kernel, Availability::unavailable("not collected"));
}

/// With the `bpf` feature (quantumd's build), TIME and EVENT figures come straight from quantum-bpf's types.
#[cfg(feature = "bpf")]
#[test]
fn bpf_histograms_and_events_become_figures() {
    use quantum_bpf::{EventKind, ExitStatus, Histogram};

    let mut h = Histogram::default();
    h.buckets[3] = 100; // [4, 8) us
    h.buckets[11] = 100; // [1024, 2048) us
    h.sum_ns = 200 * 500_000;
    let r = RunqLatency::from(&h);
    assert_eq!(
        r,
        RunqLatency {
            samples: 200,
            p50_us: Some(8),
            p99_us: Some(2027),
            mean_us: Some(500),
        }
    );
    assert_eq!(RunqLatency::from(&Histogram::default()).p99(), None);

    let mut counts = EventCounts::default();
    for kind in [
        EventKind::Exec,
        EventKind::Exit(ExitStatus::Code(0)),
        EventKind::Exit(ExitStatus::Code(2)),
        EventKind::OomKill,
        EventKind::Exit(ExitStatus::Signal {
            signal: 9,
            core_dumped: false,
        }),
    ] {
        counts.count(&kind);
    }
    assert_eq!(
        counts,
        EventCounts {
            exec: 1,
            exit: 3,
            exit_failed: 2,
            oom_kill: 1,
            connect: 0,
        }
    );
}
