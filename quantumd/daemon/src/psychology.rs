//! STEPPPS PSYCHOLOGY in quantumd: every instance that ends becomes one
//! sample in the usage history (quantum-psychology's store, under
//! `<state-dir>/psychology`), and `Recommend` reads it.
//!
//! Each sample is one durable redb transaction (an fsync), so samples are
//! written on a thread of their own, fed over a channel: the cell loop
//! never waits on the disk. A history that cannot be opened is logged once
//! and reported by `Recommend`; cells run as before.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quantum_psychology::{Bounds, ExitKind, Policy, Recommendation, Sample, Store};

use crate::command::{error_chain, CommandError};
use crate::steppps::Usage;

/// The usage history: a writer thread and shared reads.
#[derive(Clone)]
pub struct History {
    /// The store, or why it cannot be used.
    store: Result<Arc<Store>, String>,
    writer: Option<std::sync::mpsc::Sender<(String, Sample)>>,
    /// Cells the catalog has are known even before their first run.
    catalog: PathBuf,
}

impl History {
    /// Opens the history in `dir` and starts its writer.
    pub fn open(dir: &Path, catalog: PathBuf) -> History {
        let store = match Store::open(dir, quantum_psychology::store::DEFAULT_KEEP) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                let why = error_chain(&e);
                tracing::error!(error = %why, "the usage history cannot be opened: no samples are kept and `recommend` says why");
                return History {
                    store: Err(why),
                    writer: None,
                    catalog,
                };
            }
        };
        let (tx, rx) = std::sync::mpsc::channel::<(String, Sample)>();
        let writing = store.clone();
        let spawned = std::thread::Builder::new().name("psychology".into()).spawn(move || {
            for (cell, sample) in rx {
                if let Err(e) = writing.record(&cell, &sample) {
                    tracing::warn!(cell, error = %error_chain(&e), "usage sample not recorded");
                }
            }
        });
        let writer = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the usage history's writer: no samples are kept");
                None
            }
        };
        tracing::info!(path = %store.path().display(), "usage history open");
        History {
            store: Ok(store),
            writer,
            catalog,
        }
    }

    /// Records an ended instance of `cell`: how it ended (`state` as `list`
    /// shows it) and what the sampler saw of it.
    pub fn record_end(&self, cell: &str, started_usec: u64, ended_usec: u64, state: &str, usage: Option<Usage>) {
        let Some(writer) = &self.writer else { return };
        let sample = sample_of(started_usec, ended_usec, state, usage.as_ref());
        let _ = writer.send((cell.to_owned(), sample));
    }

    /// The cells of `cells` predicted to be asked for within the hour
    /// (quantum-psychology's `predict`); none when the history is unusable.
    /// Reads the store: call it off the main loop.
    pub fn demand(&self, cells: &[String], now_unix: u64, min_runs: usize) -> Vec<quantum_psychology::Demand> {
        let Ok(store) = &self.store else { return Vec::new() };
        let history: Vec<(String, Vec<Sample>)> = cells.iter().filter_map(|c| store.samples(c).ok().map(|s| (c.clone(), s))).collect();
        quantum_psychology::predict(history.iter().map(|(c, s)| (c.as_str(), s.as_slice())), now_unix, min_runs)
    }

    /// The recommendation for `cell`, held within `bounds`.
    pub fn recommend(&self, cell: &str, bounds: Bounds) -> Result<Recommendation, CommandError> {
        let name: quantum_model::CellName = cell
            .parse()
            .map_err(|e: quantum_model::manifest::CellNameError| CommandError::Invalid(e.to_string()))?;
        let store = self.store.as_ref().map_err(|why| CommandError::Backend(why.clone()))?;
        let samples = store.samples(name.as_str()).map_err(|e| CommandError::Backend(error_chain(&e)))?;
        if samples.is_empty() && !self.catalog.join(name.as_str()).join("cell.toml").is_file() {
            return Err(CommandError::NotFound(format!(
                "no cell named \"{cell}\" in the catalog ({}) and no runs of it in the usage history",
                self.catalog.display()
            )));
        }
        let policy = Policy {
            bounds,
            ..Policy::default()
        };
        Ok(quantum_psychology::recommend(name.as_str(), &samples, &policy))
    }
}

/// One sample from an ended instance.
fn sample_of(started_usec: u64, ended_usec: u64, state: &str, usage: Option<&Usage>) -> Sample {
    let run_usec = ended_usec.saturating_sub(started_usec);
    let oom = usage.is_some_and(|u| u.oom_kills > 0);
    let exit = match state {
        _ if oom => ExitKind::OomKilled,
        "exited" => ExitKind::Exited,
        "failed" => ExitKind::Failed,
        _ => ExitKind::Stopped,
    };
    Sample {
        started_unix: started_usec / 1_000_000,
        run_ms: run_usec / 1000,
        exit,
        memory_peak: usage.and_then(|u| u.memory_peak),
        memory_p50: usage.and_then(|u| u.memory_percentile(50.0)),
        memory_p95: usage.and_then(|u| u.memory_percentile(95.0)),
        // CPU time over the whole run, sampled or not: cpu.stat counts
        // from the cgroup's creation.
        cpu_average_cores: usage
            .and_then(|u| u.cpu_usec)
            .filter(|_| run_usec > 0)
            .map(|cpu| cpu as f64 / run_usec as f64),
        cpu_peak_cores: {
            // A run's busiest second is at least its average; a run sampled
            // too seldom for a rate has only the average.
            let average = usage
                .and_then(|u| u.cpu_usec)
                .filter(|_| run_usec > 0)
                .map(|cpu| cpu as f64 / run_usec as f64);
            match (usage.and_then(|u| u.cpu_peak_cores), average) {
                (Some(p), Some(a)) => Some(p.max(a)),
                (p, a) => p.or(a),
            }
        },
        runq_p99_us: usage.and_then(|u| u.runq_p99_us),
        tasks_peak: usage.and_then(|u| u.tasks_peak),
    }
}
