//! The STEPPPS figures: everything quantumd knows about the node and its
//! cells at one moment. Their JSON (kebab-case keys) is the
//! `quantumctl steppps --json` contract: add fields freely, never rename.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupSample;
use crate::kernfile::PressureSet;
use crate::proc::LoadAvg;

/// All figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Figures {
    /// The node as a whole.
    pub node: NodeFigures,
    /// Per cell instance (`web-server.1`), in name order.
    pub cells: BTreeMap<String, CellFigures>,
    /// GPUs, or why there are none.
    pub gpus: Availability<GpuFigures>,
    /// TIME: run-queue latency per cell instance, or why it is not measured.
    pub time: Availability<TimeFigures>,
    /// EVENT: recent process events per cell instance, or why they are not seen.
    pub event: Availability<EventFigures>,
    /// What the `steppps` kernel module says (`/dev/steppps`), or why it
    /// is not read. Absent in the JSON of a quantumd that predates it.
    #[serde(default)]
    pub kernel: Availability<KernelFigures>,
}

/// A dimension that is either measured or unavailable, with the reason.
///
/// JSON: the figures themselves, or `{"unavailable": "REASON"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Availability<T> {
    /// Measured.
    Available(T),
    /// Not measured here.
    Unavailable {
        /// Why, in words for a person (for example "BPF needs CAP_BPF and CAP_PERFMON").
        unavailable: String,
    },
}

impl<T> Availability<T> {
    /// Unavailable for `reason`.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Availability::Unavailable {
            unavailable: reason.into(),
        }
    }

    /// The figures, when measured.
    pub fn available(&self) -> Option<&T> {
        match self {
            Availability::Available(t) => Some(t),
            Availability::Unavailable { .. } => None,
        }
    }
}

impl<T> Default for Availability<T> {
    fn default() -> Self {
        Availability::unavailable("not collected")
    }
}

/// Node totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeFigures {
    /// Online CPUs.
    pub cpus: u32,
    /// Fraction (0..=1) of all CPUs' time spent busy since the previous
    /// sample; `None` for the first sample.
    pub cpu_busy: Option<f64>,
    /// Installed memory, bytes.
    pub memory_total_bytes: u64,
    /// Memory available for new work without swapping, bytes.
    pub memory_available_bytes: u64,
    /// Load averages.
    pub load: LoadAvg,
    /// Pressure stall information, where the kernel has it.
    pub pressure: PressureSet,
}

/// The node as the `steppps` kernel module samples it (every
/// `interval-ms`), read from its device. The same figures as /proc's, taken
/// inside the kernel; `generation` moves when one of them changes enough to
/// matter, which is when the device wakes a `poll()`er.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KernelFigures {
    /// The device read (`/dev/steppps`).
    pub device: String,
    /// Changes that matter since the module was loaded (starts at 1).
    pub generation: u64,
    /// Samples the module has taken since it was loaded.
    pub samples: u64,
    /// The module's sampling period, milliseconds.
    pub interval_ms: u64,
    /// CLOCK_BOOTTIME of the sample, milliseconds.
    pub sampled_at_ms: u64,
    /// Load average over 1 minute, rounded as /proc/loadavg rounds it.
    pub load_one: f64,
    /// Over 5 minutes.
    pub load_five: f64,
    /// Over 15 minutes.
    pub load_fifteen: f64,
    /// Online CPUs.
    pub cpus_online: u32,
    /// Usable RAM, bytes (`MemTotal`).
    pub memory_total_bytes: u64,
    /// Free RAM at the sample, bytes (`MemFree`).
    pub memory_free_bytes: u64,
}

/// One cell instance's SPACE.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CellFigures {
    /// The cell's name (`web-server`).
    pub cell: String,
    /// Its cgroup, relative to the cgroup v2 root.
    pub cgroup: String,
    /// Rates since the previous sample of the same cgroup.
    pub rates: CellRates,
    /// What its cgroup files said.
    pub readings: CgroupSample,
}

/// Rates between two samples; `None` on the first sample, where the
/// controller is missing, or when a counter went backwards (a new cgroup
/// under the same name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CellRates {
    /// CPU cores used on average (1.5 = one and a half cores busy).
    pub cpu_cores: Option<f64>,
    /// Fraction of the interval the cell was throttled by its CPU quota.
    pub cpu_throttled: Option<f64>,
    /// Bytes read per second.
    pub io_read_bytes_per_second: Option<f64>,
    /// Bytes written per second.
    pub io_write_bytes_per_second: Option<f64>,
}

/// The GPUs NVML sees.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GpuFigures {
    /// The NVIDIA driver's version.
    pub driver_version: Option<String>,
    /// One per GPU, by NVML index.
    pub devices: Vec<GpuDevice>,
}

/// One GPU; a figure NVML would not give is `None`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GpuDevice {
    /// NVML index.
    pub index: u32,
    /// Product name.
    pub name: Option<String>,
    /// NVML UUID (`GPU-...`).
    pub uuid: Option<String>,
    /// Percent of the last sample period a kernel was running.
    pub utilization_percent: Option<u32>,
    /// Percent of the last sample period device memory was read or written.
    pub memory_utilization_percent: Option<u32>,
    /// Device memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Device memory installed, bytes.
    pub memory_total_bytes: Option<u64>,
}

/// TIME: run-queue latency per cell instance since the previous figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TimeFigures {
    /// Per cell instance.
    pub cells: BTreeMap<String, RunqLatency>,
}

/// How long a cell's tasks waited to run once runnable.
///
/// The histogram behind it has power-of-two buckets, so percentiles are
/// exact to within a factor of two; whole microseconds are all the
/// precision they have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunqLatency {
    /// Waits measured.
    pub samples: u64,
    /// Median wait, microseconds; `None` without samples.
    pub p50_us: Option<u64>,
    /// 99th percentile wait, microseconds; `None` without samples.
    pub p99_us: Option<u64>,
    /// Mean wait, microseconds; `None` without samples.
    pub mean_us: Option<u64>,
}

impl RunqLatency {
    /// From a sample count and the percentiles computed elsewhere.
    pub fn new(samples: u64, p50: Option<Duration>, p99: Option<Duration>, mean: Option<Duration>) -> RunqLatency {
        let us = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        RunqLatency {
            samples,
            p50_us: us(p50),
            p99_us: us(p99),
            mean_us: us(mean),
        }
    }

    /// The 99th percentile as a duration (what the objective controller reads).
    pub fn p99(&self) -> Option<Duration> {
        self.p99_us.map(Duration::from_micros)
    }
}

#[cfg(feature = "bpf")]
impl From<&quantum_bpf::Histogram> for RunqLatency {
    fn from(h: &quantum_bpf::Histogram) -> RunqLatency {
        RunqLatency::new(h.count(), h.percentile(50.0), h.percentile(99.0), h.mean())
    }
}

/// EVENT: process events per cell instance since the previous figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EventFigures {
    /// Per cell instance; instances without events are absent.
    pub cells: BTreeMap<String, EventCounts>,
    /// Events the kernel could not hand over (ring buffer full), all cells together.
    pub dropped: u64,
}

/// Counts of process events in one cell instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EventCounts {
    /// execve(2) calls.
    pub exec: u64,
    /// Processes that ended.
    pub exit: u64,
    /// Of those, how many ended with a non-zero code or a signal.
    pub exit_failed: u64,
    /// Processes the OOM killer chose.
    pub oom_kill: u64,
    /// TCP connections begun (connect(2)).
    #[serde(default)]
    pub connect: u64,
}

#[cfg(feature = "bpf")]
impl EventCounts {
    /// Counts one event.
    pub fn count(&mut self, kind: &quantum_bpf::EventKind) {
        use quantum_bpf::{EventKind, ExitStatus};
        match kind {
            EventKind::Exec => self.exec += 1,
            EventKind::Exit(status) => {
                self.exit += 1;
                if *status != ExitStatus::Code(0) {
                    self.exit_failed += 1;
                }
            }
            EventKind::OomKill => self.oom_kill += 1,
            EventKind::Connect(_) => self.connect += 1,
        }
    }
}
