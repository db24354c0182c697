//! The QuantumOS data model: cell manifests (`cell.toml`), their validated
//! value types, and the diagnostics validation produces.
//!
//! Architecture invariant: this crate does no I/O and knows nothing of D-Bus,
//! systemd or cgroups. Whatever must be read from disk (child manifests) is
//! handed in by the caller through a loader closure, so the same checks run
//! in `quantumctl validate`, in quantumd and in the fuzzer.

pub mod access;
pub mod diagnostic;
pub mod manifest;
pub mod netrule;
mod parse;
pub mod placeholder;
pub mod set;
pub mod trigger;
pub mod units;

pub use access::{limits, Access};
pub use diagnostic::{Diagnostic, Located, SourceMap};
pub use manifest::{
    is_channel_name, Artifact, CellName, Channels, ChildRef, Isolation, Kind, Lifecycle, Manifest, Network, Objectives, OnAnomaly,
    ParamSpec, ParamType, Policy, Program, Resources, Restart, State, UserMode,
};
pub use netrule::{Host, NetRule, Protocol};
pub use parse::parse_manifest;
pub use set::{cells_in, child_path, validate_set, ManifestSource, ValidatedSet};
pub use trigger::{parse_trigger, Trigger};
pub use units::{ByteSize, CpuCores, Duration, Latency};
