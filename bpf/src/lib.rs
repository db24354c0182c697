//! QuantumOS eBPF telemetry: the STEPPPS TIME and EVENT dimensions per cgroup.
//!
//! Two CO-RE programs (src/bpf/) watch the cgroup v2 subtree of one
//! ancestor, normally `quantum.slice`:
//!
//! - **TIME** (`runqlat.bpf.c`): run-queue latency, from the moment a task
//!   becomes runnable (woken, created, or preempted) to the moment it runs,
//!   as log2 histograms per cgroup ([`Telemetry::runq_latency`]).
//! - **EVENT** (`events.bpf.c`): exec, exit (with its status) and OOM kill of
//!   processes, through a ring buffer ([`Telemetry::drain_events`]), with a
//!   counter of events lost to a full buffer ([`Telemetry::dropped_events`]).
//!
//! A third, `netpolicy.bpf.c`, is no telemetry but a cell's network
//! allow-list ([`NetPolicy`]): one instance per cell that lists where it may
//! connect, attached to that cell's cgroup.
//!
//! Where BPF cannot run (no BTF, no privilege), [`Telemetry::load`] fails
//! with [`LoadError::Unavailable`] and a reason, and the caller carries on
//! without these figures.

mod cgroup;
mod event;
mod histogram;
mod netpolicy;
mod skel;
mod telemetry;

pub use cgroup::{cgroup_id, CgroupError, Scope};
pub use event::{DecodeError, Event, EventKind, ExitStatus};
pub use histogram::{Histogram, SLOTS};
pub use netpolicy::{Destination, NetPolicy, MAX_DESTINATIONS};
pub use telemetry::{LoadError, Options, ReadError, Stats, Telemetry, DEFAULT_MAX_CGROUPS, DEFAULT_RINGBUF_BYTES};
