//! STEPPPS PSYCHOLOGY for QuantumOS: what each cell type really used, and
//! the `[resources]` that would fit it.
//!
//! - [`sample`]: one [`Sample`] per run of a cell (memory peak and
//!   percentiles, CPU average and busiest second, run-queue latency p99,
//!   tasks, run length, start hour of the week, how it ended), in a fixed
//!   75-byte encoding.
//! - [`store`] (feature `store`): the history on disk, the last N samples
//!   of each cell ([`Store`]), under a directory the caller gives
//!   (quantumd: `/var/lib/quantumd/psychology`).
//! - [`recommend`]: the VPA-like [`recommend()`]: percentiles, a safety
//!   margin, rounding, bounds, evidence and a [`Confidence`];
//!   [`Recommendation::to_toml`] renders it for a person to paste.
//! - [`predict`]: which cells are likely to be asked for within the hour
//!   (this hour of the week over the last weeks, and the last hour), for
//!   quantumd's pre-warming.
//!
//! # Why redb
//!
//! The history is one key range per cell, appended at the end and trimmed
//! at the front, read whole: a sorted key-value table, not a relational
//! query. redb (pure Rust) gives exactly that with ACID transactions whose
//! commit is a checksummed header flip after an fsync, so a torn write
//! loses the one sample being written and never the file. SQLite through
//! rusqlite would do as well on disk, but `bundled` compiles a C library in
//! every build of quantumd (the Debian build and CI pay minutes for it)
//! and brings SQL text and a C dependency to audit for a table of
//! fixed-size records. redb 2.6 is pinned because it is the last series
//! whose minimum Rust (1.85) bookworm's `rustc-web` meets.
//!
//! **Invariant:** no D-Bus, no daemon, no cgroup reading: samples come in
//! already measured. Without the `store` feature the crate does no I/O at
//! all, which is how quantumctl uses it.

pub mod predict;
pub mod recommend;
pub mod sample;
#[cfg(feature = "store")]
pub mod store;

pub use predict::{predict, Demand};
pub use recommend::{recommend, Bounds, Confidence, Evidence, Policy, Recommendation, Resources, Spread};
pub use sample::{hour_of_week, ExitKind, Sample};
#[cfg(feature = "store")]
pub use store::{Store, StoreError};
