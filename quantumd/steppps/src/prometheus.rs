//! The figures in the Prometheus text exposition format (version 0.0.4).
//!
//! Every sample of a metric follows its one `# HELP` and `# TYPE` pair, as
//! the format requires; metrics with no sample are left out. Rates the
//! figures compute themselves are gauges; the kernel's own counters are
//! exported raw as `_total` counters so that Prometheus can rate them too.

use std::fmt::Write;

use crate::figures::{Availability, CellFigures, Figures};
use crate::kernfile::{Pressure, PressureSet};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// A metric family: its name, type and description, written down once.
#[derive(PartialEq, Eq)]
struct Metric {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

const STEPPPS_AVAILABLE: Metric = Metric {
    name: "quantumos_steppps_available",
    kind: Kind::Gauge,
    help: "Whether a STEPPPS dimension is measured on this node (1) or unavailable (0).",
};
const NODE_CPUS: Metric = Metric {
    name: "quantumos_node_cpus",
    kind: Kind::Gauge,
    help: "Online CPUs.",
};
const NODE_CPU_BUSY_RATIO: Metric = Metric {
    name: "quantumos_node_cpu_busy_ratio",
    kind: Kind::Gauge,
    help: "Share of all CPUs' time spent busy since the previous sample.",
};
const NODE_MEMORY_TOTAL_BYTES: Metric = Metric {
    name: "quantumos_node_memory_total_bytes",
    kind: Kind::Gauge,
    help: "Installed memory (MemTotal).",
};
const NODE_MEMORY_AVAILABLE_BYTES: Metric = Metric {
    name: "quantumos_node_memory_available_bytes",
    kind: Kind::Gauge,
    help: "Memory available for new work without swapping (MemAvailable).",
};
const NODE_LOAD: Metric = Metric {
    name: "quantumos_node_load",
    kind: Kind::Gauge,
    help: "Load average.",
};
const NODE_PRESSURE_RATIO: Metric = Metric {
    name: "quantumos_node_pressure_ratio",
    kind: Kind::Gauge,
    help: "Share of the last 10 s in which some (or all) tasks stalled on the resource (PSI avg10 / 100).",
};
const NODE_PRESSURE_STALL_SECONDS_TOTAL: Metric = Metric {
    name: "quantumos_node_pressure_stall_seconds_total",
    kind: Kind::Counter,
    help: "Time some (or all) tasks stalled on the resource (PSI total).",
};
const CELL_CPU_CORES: Metric = Metric {
    name: "quantumos_cell_cpu_cores",
    kind: Kind::Gauge,
    help: "CPU cores the cell used on average since the previous sample.",
};
const CELL_CPU_SECONDS_TOTAL: Metric = Metric {
    name: "quantumos_cell_cpu_seconds_total",
    kind: Kind::Counter,
    help: "CPU time the cell used.",
};
const CELL_CPU_THROTTLED_SECONDS_TOTAL: Metric = Metric {
    name: "quantumos_cell_cpu_throttled_seconds_total",
    kind: Kind::Counter,
    help: "Time the cell was throttled by its CPU quota.",
};
const CELL_CPU_THROTTLED_PERIODS_TOTAL: Metric = Metric {
    name: "quantumos_cell_cpu_throttled_periods_total",
    kind: Kind::Counter,
    help: "Scheduler periods in which the cell was throttled.",
};
const CELL_MEMORY_BYTES: Metric = Metric {
    name: "quantumos_cell_memory_bytes",
    kind: Kind::Gauge,
    help: "Memory the cell uses (memory.current).",
};
const CELL_MEMORY_MAX_BYTES: Metric = Metric {
    name: "quantumos_cell_memory_max_bytes",
    kind: Kind::Gauge,
    help: "The cell's memory limit (memory.max; +Inf for none).",
};
const CELL_MEMORY_EVENTS_TOTAL: Metric = Metric {
    name: "quantumos_cell_memory_events_total",
    kind: Kind::Counter,
    help: "Memory limit events of the cell (memory.events).",
};
const CELL_PRESSURE_RATIO: Metric = Metric {
    name: "quantumos_cell_pressure_ratio",
    kind: Kind::Gauge,
    help: "Share of the last 10 s in which some (or all) of the cell's tasks stalled on the resource (PSI avg10 / 100).",
};
const CELL_PRESSURE_STALL_SECONDS_TOTAL: Metric = Metric {
    name: "quantumos_cell_pressure_stall_seconds_total",
    kind: Kind::Counter,
    help: "Time some (or all) of the cell's tasks stalled on the resource (PSI total).",
};
const CELL_IO_BYTES_PER_SECOND: Metric = Metric {
    name: "quantumos_cell_io_bytes_per_second",
    kind: Kind::Gauge,
    help: "Bytes the cell read or wrote per second since the previous sample.",
};
const CELL_IO_BYTES_TOTAL: Metric = Metric {
    name: "quantumos_cell_io_bytes_total",
    kind: Kind::Counter,
    help: "Bytes the cell read or wrote (io.stat).",
};
const CELL_IO_OPERATIONS_TOTAL: Metric = Metric {
    name: "quantumos_cell_io_operations_total",
    kind: Kind::Counter,
    help: "Read or write operations of the cell (io.stat).",
};
const CELL_TASKS: Metric = Metric {
    name: "quantumos_cell_tasks",
    kind: Kind::Gauge,
    help: "Tasks in the cell (pids.current).",
};
const CELL_TASKS_MAX: Metric = Metric {
    name: "quantumos_cell_tasks_max",
    kind: Kind::Gauge,
    help: "The cell's task limit (pids.max; +Inf for none).",
};
const CELL_RUNQ_LATENCY_SECONDS: Metric = Metric {
    name: "quantumos_cell_runq_latency_seconds",
    kind: Kind::Gauge,
    help: "Run-queue latency of the cell's tasks since the previous figures, by quantile.",
};
const CELL_RUNQ_WAITS: Metric = Metric {
    name: "quantumos_cell_runq_waits",
    kind: Kind::Gauge,
    help: "Run-queue waits measured for the cell since the previous figures.",
};
const CELL_RECENT_EVENTS: Metric = Metric {
    name: "quantumos_cell_recent_events",
    kind: Kind::Gauge,
    help: "Process events in the cell since the previous figures.",
};
const RECENT_EVENTS_DROPPED: Metric = Metric {
    name: "quantumos_recent_events_dropped",
    kind: Kind::Gauge,
    help: "Process events lost to a full ring buffer since the previous figures.",
};
const GPU_UTILIZATION_RATIO: Metric = Metric {
    name: "quantumos_gpu_utilization_ratio",
    kind: Kind::Gauge,
    help: "Share of the last sample period in which a kernel ran on the GPU.",
};
const GPU_MEMORY_UTILIZATION_RATIO: Metric = Metric {
    name: "quantumos_gpu_memory_utilization_ratio",
    kind: Kind::Gauge,
    help: "Share of the last sample period in which GPU memory was read or written.",
};
const GPU_MEMORY_USED_BYTES: Metric = Metric {
    name: "quantumos_gpu_memory_used_bytes",
    kind: Kind::Gauge,
    help: "GPU memory in use.",
};
const GPU_MEMORY_TOTAL_BYTES: Metric = Metric {
    name: "quantumos_gpu_memory_total_bytes",
    kind: Kind::Gauge,
    help: "GPU memory installed.",
};

/// Every metric, in the order of the exposition (fixed, whatever the data).
const ALL: [&Metric; 30] = [
    &STEPPPS_AVAILABLE,
    &NODE_CPUS,
    &NODE_CPU_BUSY_RATIO,
    &NODE_MEMORY_TOTAL_BYTES,
    &NODE_MEMORY_AVAILABLE_BYTES,
    &NODE_LOAD,
    &NODE_PRESSURE_RATIO,
    &NODE_PRESSURE_STALL_SECONDS_TOTAL,
    &CELL_CPU_CORES,
    &CELL_CPU_SECONDS_TOTAL,
    &CELL_CPU_THROTTLED_SECONDS_TOTAL,
    &CELL_CPU_THROTTLED_PERIODS_TOTAL,
    &CELL_MEMORY_BYTES,
    &CELL_MEMORY_MAX_BYTES,
    &CELL_MEMORY_EVENTS_TOTAL,
    &CELL_PRESSURE_RATIO,
    &CELL_PRESSURE_STALL_SECONDS_TOTAL,
    &CELL_IO_BYTES_PER_SECOND,
    &CELL_IO_BYTES_TOTAL,
    &CELL_IO_OPERATIONS_TOTAL,
    &CELL_TASKS,
    &CELL_TASKS_MAX,
    &CELL_RUNQ_LATENCY_SECONDS,
    &CELL_RUNQ_WAITS,
    &CELL_RECENT_EVENTS,
    &RECENT_EVENTS_DROPPED,
    &GPU_UTILIZATION_RATIO,
    &GPU_MEMORY_UTILIZATION_RATIO,
    &GPU_MEMORY_USED_BYTES,
    &GPU_MEMORY_TOTAL_BYTES,
];

/// One sample: its labels (name, value) and its value.
type Sample = (Vec<(&'static str, String)>, f64);

struct Exposition {
    /// Per metric of [`ALL`], at the same index.
    samples: Vec<Vec<Sample>>,
}

impl Exposition {
    fn new() -> Exposition {
        Exposition {
            samples: ALL.iter().map(|_| Vec::new()).collect(),
        }
    }

    fn add(&mut self, metric: &'static Metric, labels: &[(&'static str, &str)], value: Option<f64>) {
        let (Some(value), Some(at)) = (value, ALL.iter().position(|m| *m == metric)) else {
            return;
        };
        self.samples[at].push((labels.iter().map(|&(k, v)| (k, v.to_owned())).collect(), value));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (f, samples) in ALL.iter().zip(&self.samples).filter(|(_, s)| !s.is_empty()) {
            let kind = match f.kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            // write! to a String cannot fail.
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            for (labels, value) in samples {
                out.push_str(f.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", number(*value));
            }
        }
        out
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', r#"\""#).replace('\n', r"\n")
}

/// HELP text escapes backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

/// Go's float syntax as Prometheus reads it: `+Inf`, `-Inf`, `NaN`, else Rust's shortest round-trip form.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

fn pressure(e: &mut Exposition, set: &PressureSet, base: &[(&'static str, &str)], avg: &'static Metric, total: &'static Metric) {
    let resources: [(&str, &Option<Pressure>); 3] = [("cpu", &set.cpu), ("memory", &set.memory), ("io", &set.io)];
    for (resource, p) in resources {
        let Some(p) = p else { continue };
        for (kind, line) in [("some", Some(p.some)), ("full", p.full)] {
            let Some(line) = line else { continue };
            let mut labels = base.to_vec();
            labels.extend([("resource", resource), ("kind", kind)]);
            e.add(avg, &labels, Some(line.avg10 / 100.0));
            e.add(total, &labels, Some(line.total_usec as f64 / 1e6));
        }
    }
}

fn cell(e: &mut Exposition, instance: &str, c: &CellFigures) {
    let l = [("cell", c.cell.as_str()), ("instance", instance)];
    let r = &c.readings;
    e.add(&CELL_CPU_CORES, &l, c.rates.cpu_cores);
    e.add(&CELL_CPU_SECONDS_TOTAL, &l, r.cpu.map(|c| c.usage_usec as f64 / 1e6));
    e.add(
        &CELL_CPU_THROTTLED_SECONDS_TOTAL,
        &l,
        r.cpu.and_then(|c| c.throttled_usec).map(|u| u as f64 / 1e6),
    );
    e.add(
        &CELL_CPU_THROTTLED_PERIODS_TOTAL,
        &l,
        r.cpu.and_then(|c| c.nr_throttled).map(|n| n as f64),
    );
    e.add(&CELL_MEMORY_BYTES, &l, r.memory_current.map(|m| m as f64));
    e.add(&CELL_MEMORY_MAX_BYTES, &l, r.memory_max.map(|m| m.as_f64()));
    if let Some(ev) = r.memory_events {
        for (event, n) in [("max", ev.max), ("oom", ev.oom), ("oom_kill", ev.oom_kill)] {
            let mut labels = l.to_vec();
            labels.push(("event", event));
            e.add(&CELL_MEMORY_EVENTS_TOTAL, &labels, Some(n as f64));
        }
    }
    pressure(e, &r.pressure, &l, &CELL_PRESSURE_RATIO, &CELL_PRESSURE_STALL_SECONDS_TOTAL);
    for (direction, rate, bytes, ios) in [
        (
            "read",
            c.rates.io_read_bytes_per_second,
            r.io.map(|i| i.rbytes),
            r.io.map(|i| i.rios),
        ),
        (
            "write",
            c.rates.io_write_bytes_per_second,
            r.io.map(|i| i.wbytes),
            r.io.map(|i| i.wios),
        ),
    ] {
        let mut labels = l.to_vec();
        labels.push(("direction", direction));
        e.add(&CELL_IO_BYTES_PER_SECOND, &labels, rate);
        e.add(&CELL_IO_BYTES_TOTAL, &labels, bytes.map(|b| b as f64));
        e.add(&CELL_IO_OPERATIONS_TOTAL, &labels, ios.map(|n| n as f64));
    }
    e.add(&CELL_TASKS, &l, r.pids_current.map(|n| n as f64));
    e.add(&CELL_TASKS_MAX, &l, r.pids_max.map(|m| m.as_f64()));
}

/// Renders all figures as a Prometheus text exposition.
pub fn prometheus(f: &Figures) -> String {
    let mut e = Exposition::new();
    let dimensions = [
        ("gpu", f.gpus.available().is_some()),
        ("time", f.time.available().is_some()),
        ("event", f.event.available().is_some()),
        // The steppps kernel module (/dev/steppps): not a dimension of its
        // own, a source of the node's; 1 while quantumd reads it.
        ("kernel-module", f.kernel.available().is_some()),
    ];
    for (dimension, up) in dimensions {
        e.add(&STEPPPS_AVAILABLE, &[("dimension", dimension)], Some(if up { 1.0 } else { 0.0 }));
    }

    let n = &f.node;
    e.add(&NODE_CPUS, &[], Some(n.cpus as f64));
    e.add(&NODE_CPU_BUSY_RATIO, &[], n.cpu_busy);
    e.add(&NODE_MEMORY_TOTAL_BYTES, &[], Some(n.memory_total_bytes as f64));
    e.add(&NODE_MEMORY_AVAILABLE_BYTES, &[], Some(n.memory_available_bytes as f64));
    for (window, v) in [("1m", n.load.one), ("5m", n.load.five), ("15m", n.load.fifteen)] {
        e.add(&NODE_LOAD, &[("window", window)], Some(v));
    }
    pressure(&mut e, &n.pressure, &[], &NODE_PRESSURE_RATIO, &NODE_PRESSURE_STALL_SECONDS_TOTAL);

    for (instance, c) in &f.cells {
        cell(&mut e, instance, c);
    }

    // TIME and EVENT are keyed by instance; the cell name comes from the SPACE figures of the same instance.
    let cell_of = |instance: &str| f.cells.get(instance).map(|c| c.cell.clone()).unwrap_or_default();
    if let Availability::Available(time) = &f.time {
        for (instance, r) in &time.cells {
            let name = cell_of(instance);
            let l = [("cell", name.as_str()), ("instance", instance.as_str())];
            for (quantile, us) in [("0.5", r.p50_us), ("0.99", r.p99_us)] {
                let mut labels = l.to_vec();
                labels.push(("quantile", quantile));
                e.add(&CELL_RUNQ_LATENCY_SECONDS, &labels, us.map(|us| us as f64 / 1e6));
            }
            e.add(&CELL_RUNQ_WAITS, &l, Some(r.samples as f64));
        }
    }
    if let Availability::Available(event) = &f.event {
        for (instance, counts) in &event.cells {
            let name = cell_of(instance);
            for (kind, n) in [
                ("exec", counts.exec),
                ("exit", counts.exit),
                ("exit-failed", counts.exit_failed),
                ("oom-kill", counts.oom_kill),
                ("connect", counts.connect),
            ] {
                e.add(
                    &CELL_RECENT_EVENTS,
                    &[("cell", name.as_str()), ("instance", instance.as_str()), ("kind", kind)],
                    Some(n as f64),
                );
            }
        }
        e.add(&RECENT_EVENTS_DROPPED, &[], Some(event.dropped as f64));
    }

    if let Availability::Available(gpus) = &f.gpus {
        for d in &gpus.devices {
            let index = d.index.to_string();
            let l = [("gpu", index.as_str()), ("name", d.name.as_deref().unwrap_or(""))];
            e.add(&GPU_UTILIZATION_RATIO, &l, d.utilization_percent.map(|p| p as f64 / 100.0));
            e.add(
                &GPU_MEMORY_UTILIZATION_RATIO,
                &l,
                d.memory_utilization_percent.map(|p| p as f64 / 100.0),
            );
            e.add(&GPU_MEMORY_USED_BYTES, &l, d.memory_used_bytes.map(|b| b as f64));
            e.add(&GPU_MEMORY_TOTAL_BYTES, &l, d.memory_total_bytes.map(|b| b as f64));
        }
    }
    e.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
        assert_eq!(escape_help("x\\y\nz \"q\""), r#"x\\y\nz "q""#);
    }

    #[test]
    fn special_floats_use_prometheus_spelling() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(268435456.0), "268435456");
    }
}
