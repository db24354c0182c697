//! STEPPPS SPACE for QuantumOS, and the figures every dimension reports in.
//!
//! - [`cgroup`]: per-cell SPACE from cgroup v2 files ([`CgroupReader`]);
//!   [`proc`]: node totals from procfs ([`ProcReader`]); [`Sampler`] turns
//!   successive readings into rates.
//! - [`kmod`]: node figures from the QuantumOS `steppps` kernel module
//!   (`/dev/steppps`), when it is loaded ([`KmodReader`]).
//! - [`gpu`]: GPUs through NVML, or [`Gpus::NoGpu`] with the reason.
//! - [`btrfs`]: a cell's state subvolume with snapshots and rollback.
//! - [`figures`]: the [`Figures`] model (the `quantumctl steppps --json`
//!   contract) and [`prometheus()`], its text exposition.
//! - [`objective`]: the TIME feedback that raises a cell's CPU weight while
//!   it misses its run-queue latency objective.
//!
//! Every reader takes its root directory, so tests run against temporary
//! trees as well as the real /proc and /sys/fs/cgroup.

pub mod btrfs;
pub mod cgroup;
mod collect;
pub mod figures;
pub mod gpu;
mod kernfile;
pub mod kmod;
pub mod objective;
pub mod proc;
mod prometheus;
mod sampler;

pub use cgroup::{CgroupError, CgroupReader, CgroupSample};
pub use collect::{Collection, Collector, Sources};
pub use figures::{Availability, Figures};
pub use gpu::Gpus;
pub use kernfile::{FileError, Limit, Pressure, PressureLine, PressureSet};
pub use kmod::{KmodError, KmodReader};
pub use proc::{NodeSample, ProcReader};
pub use prometheus::prometheus;
pub use sampler::{CellCgroup, Sampler};
