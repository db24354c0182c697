//! Pre-warming in the main loop (STEPPPS PSYCHOLOGY): which cells are kept
//! warm, starting and giving up their units, and handing one to a run.
//! The mechanism (the waiter, the claim) is `crate::warm`.
//!
//! Wanted are the `[prewarm] cells` the administrator pins and, with
//! `predict`, the cells the usage history predicts for the coming hour
//! (`quantum_psychology::predict`, recomputed every minute), most wanted
//! first, within `max-units` and the memory `budget` (each warm unit counts
//! its cell's memory-min, at least [`WAITER_MEMORY`]). A cell can be warm
//! when a run of it needs nothing else set up first: a catalog cell with no
//! needs, no children and no state, every parameter defaulted. A claimed
//! unit is replaced at once while its cell is still wanted.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use quantum_bus::CellInfo;
use quantum_model::Program;
use quantum_trail::Action;

use super::{resolve_params, Cells, Event};
use crate::runtime::{SharedFd, UnitSpec};
use crate::store::Record;
use crate::trail;
use crate::warm::{self, WarmUnit};

/// What a warm unit holds at least: the waiter (a few MB resident).
const WAITER_MEMORY: u64 = 4 << 20;
/// How often the prediction is recomputed, in ticks (seconds).
const PREDICT_EVERY: u64 = 60;
/// A cell whose warm unit failed to start is not tried again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// The warm units and what is wanted.
#[derive(Default)]
pub struct Pool {
    /// Ready, by cell.
    ready: BTreeMap<String, WarmUnit>,
    /// Being started, by instance.
    starting: BTreeMap<String, WarmUnit>,
    /// Wanted cells, most wanted first, with why.
    wanted: Vec<(String, String)>,
    /// Cells whose warm start failed, and when.
    failed: HashMap<String, Instant>,
    ticks: u64,
}

impl Cells {
    /// Each second: every minute (and at the first tick) ask the history
    /// what is predicted, off the loop; the answer comes back as
    /// [`Event::Demand`].
    pub(super) fn prewarm_tick(&mut self) {
        let ticks = self.warm.ticks;
        self.warm.ticks += 1;
        if !ticks.is_multiple_of(PREDICT_EVERY) {
            return;
        }
        let cfg = &self.config.prewarm;
        if cfg.cells.is_empty() && !cfg.predict {
            return;
        }
        let events = self.events.clone();
        let history = self.history.clone().filter(|_| cfg.predict);
        let names: Vec<String> = self.catalog.names().into_iter().map(|n| n.as_str().to_owned()).collect();
        let min_runs = cfg.min_runs;
        tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let demand = history.map(|h| h.demand(&names, now, min_runs)).unwrap_or_default();
            let _ = events.send(Event::Demand(demand));
        });
    }

    /// The prediction is in: decide what is wanted, give up what is not,
    /// start what is missing.
    pub(super) fn set_demand(&mut self, demand: Vec<quantum_psychology::Demand>) {
        let cfg = self.config.prewarm.clone();
        let mut candidates: Vec<(String, String)> = cfg
            .cells
            .iter()
            .map(|c| (c.as_str().to_owned(), "pinned in [prewarm] cells".to_owned()))
            .collect();
        for d in demand {
            if !candidates.iter().any(|(c, _)| *c == d.cell) {
                candidates.push((d.cell.clone(), d.why()));
            }
        }
        let mut wanted = Vec::new();
        let mut reserved = 0u64;
        for (cell, why) in candidates {
            if wanted.len() >= cfg.max_units {
                break;
            }
            let Some(memory) = self.warm_memory(&cell) else { continue };
            if reserved + memory > cfg.budget {
                continue;
            }
            reserved += memory;
            wanted.push((cell, why));
        }
        let gone: Vec<String> = self
            .warm
            .ready
            .keys()
            .filter(|c| !wanted.iter().any(|(w, _)| w == *c))
            .cloned()
            .collect();
        for cell in gone {
            if let Some(w) = self.warm.ready.remove(&cell) {
                self.cool(w, "no longer wanted");
            }
        }
        self.warm.wanted = wanted;
        self.fill_warm();
    }

    /// Starts a warm unit for every wanted cell that has none.
    pub(super) fn fill_warm(&mut self) {
        // quantumd starts nothing it cannot record.
        if self.trail.is_err() {
            return;
        }
        let missing: Vec<(String, String)> = self
            .warm
            .wanted
            .iter()
            .filter(|(c, _)| !self.warm.ready.contains_key(c) && !self.warm.starting.values().any(|w| w.spec.cell == *c))
            .filter(|(c, _)| self.warm.failed.get(c).is_none_or(|t| t.elapsed() > RETRY_AFTER))
            .cloned()
            .collect();
        for (cell, why) in missing {
            if let Err(e) = self.start_warm(&cell, &why) {
                tracing::warn!(cell, error = e, "cannot keep the cell warm");
                self.warm.failed.insert(cell, Instant::now());
            }
        }
    }

    /// The memory a warm unit of `cell` reserves, or `None` when the cell
    /// cannot be kept warm.
    fn warm_memory(&self, cell: &str) -> Option<u64> {
        let resolved = self.catalog.resolve(cell).ok()?;
        let m = &resolved.manifest;
        let eligible = resolved.path.starts_with(&self.catalog.dir)
            && m.needs.is_empty()
            && m.children.is_empty()
            && !m.state.subvolume
            // A secret is made for the run that asks, not before it.
            && m.params.values().all(|p| !p.secret)
            && matches!(m.program, Program::Exec(_))
            && !self.config.cells.is_disabled(cell);
        eligible.then(|| m.resources.memory_min.bytes().max(WAITER_MEMORY))
    }

    fn start_warm(&mut self, cell: &str, why: &str) -> Result<(), String> {
        let resolved = self.catalog.resolve(cell).map_err(|e| e.to_string())?;
        let m = &resolved.manifest;
        let dir = resolved.path.parent().unwrap_or(std::path::Path::new("/")).to_owned();
        let params = resolve_params(m, HashMap::new(), &dir).map_err(|e| e.to_string())?.values;
        let id = format!("{cell}.{}", self.take_number().map_err(|e| e.to_string())?);
        let record = Record {
            instance: id.clone(),
            cell: cell.to_owned(),
            unit: crate::runtime::unit_name(&id),
            slice: self.config.cell_slice.clone(),
            manifest_path: resolved.path.clone(),
            params,
            parent: None,
            needs: Vec::new(),
            auto_started: false,
            family_slice: None,
            started_usec: super::now_usec(),
            actor: "quantumd".to_owned(),
            manifest_blake3: Some(resolved.hash.to_hex().to_string()),
            secrets: Vec::new(),
        };
        let mut spec = self.build_spec(&record, m).map_err(|e| e.to_string())?;
        let waiter = std::env::current_exe().map_err(|e| format!("cannot find quantumd's own binary: {e}"))?;
        spec.argv = vec![waiter.display().to_string(), "warm-exec".to_owned()];
        spec.description = format!("{} (warm)", spec.description);
        let (ours, theirs) = warm::socket_pair().map_err(|e| format!("cannot make the claim socket: {e}"))?;
        spec.stdin = Some(SharedFd::new(theirs));
        let unit = WarmUnit {
            instance: id.clone(),
            spec: spec.clone(),
            manifest_blake3: resolved.hash.to_hex().to_string(),
            socket: ours,
            pid: 0,
            since: Instant::now(),
            why: why.to_owned(),
        };
        self.warm.starting.insert(id.clone(), unit);
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut profile = crate::start_profile::StartProfile::begin();
            let result = runtime.start(&spec, &mut profile).await.map_err(|e| e.to_string());
            // The unit holds its end of the socket now; ours is in the pool.
            drop(spec);
            let _ = events.send(Event::WarmStarted { instance: id, result });
        });
        Ok(())
    }

    pub(super) fn warm_started(&mut self, instance: &str, result: Result<u32, String>) {
        let Some(mut w) = self.warm.starting.remove(instance) else { return };
        let cell = w.spec.cell.clone();
        match result {
            Ok(pid) => {
                w.pid = pid;
                w.spec.stdin = None;
                tracing::info!(instance, cell, why = w.why, "cell kept warm");
                let e = trail::entry("quantumd", &Action::PREWARM).cell(cell.clone());
                self.record(e.detail(format!("warm {instance}: {}", w.why)));
                let wanted = self.warm.wanted.iter().any(|(c, _)| *c == cell);
                match self.warm.ready.remove(&cell) {
                    // Two for one cell (a refill raced a new prediction): keep one.
                    Some(old) => {
                        self.warm.ready.insert(cell, old);
                        self.cool(w, "another warm unit of the cell is ready");
                    }
                    None if wanted => {
                        self.warm.ready.insert(cell, w);
                    }
                    None => self.cool(w, "no longer wanted"),
                }
            }
            Err(e) => {
                tracing::warn!(instance, cell, error = e, "the warm unit did not start");
                self.warm.failed.insert(cell, Instant::now());
            }
        }
    }

    /// The warm units, for `list`: state `warm`, with why each is kept.
    /// They are processes holding memory, so a person listing what runs
    /// sees them, though no run has asked for them yet.
    pub(super) fn warm_infos(&self) -> Vec<CellInfo> {
        let now = super::now_usec();
        self.warm
            .ready
            .values()
            .map(|w| CellInfo {
                instance: w.instance.clone(),
                cell: w.spec.cell.clone(),
                state: "warm".to_owned(),
                reason: w.why.clone(),
                unit: w.spec.unit.clone(),
                pid: w.pid,
                parent: String::new(),
                started_usec: now.saturating_sub(w.since.elapsed().as_micros() as u64),
            })
            .collect()
    }

    /// A warm unit of `cell` from `manifest_blake3`, for a run to take.
    pub(super) fn take_warm(&mut self, cell: &str, manifest_blake3: &str) -> Option<WarmUnit> {
        match self.warm.ready.remove(cell) {
            Some(w) if w.manifest_blake3 == manifest_blake3 => Some(w),
            Some(w) => {
                // The manifest changed since it was started.
                self.cool(w, "its manifest changed");
                None
            }
            None => None,
        }
    }

    /// A warm unit the run could not use (its parameters change the
    /// sandbox): back in the pool.
    pub(super) fn put_back_warm(&mut self, w: WarmUnit) {
        let cell = w.spec.cell.clone();
        self.warm.ready.entry(cell).or_insert(w);
    }

    /// A run took the warm unit of `cell`: trail it, and start the next.
    pub(super) fn warm_claimed(&mut self, w: &WarmUnit, spec: &UnitSpec) {
        let age = w.since.elapsed().as_secs();
        let e = trail::entry("quantumd", &Action::PREWARM).cell(spec.cell.clone());
        self.record(e.detail(format!("claimed {}: warm for {age}s", w.instance)));
        self.fill_warm();
    }

    /// A unit ended: if it was a warm one (its waiter died before a run
    /// took it), forget it. Returns whether it was.
    pub(super) fn warm_unit_ended(&mut self, unit: &str) -> bool {
        let Some(id) = crate::runtime::spec::instance_of_unit(unit) else {
            return false;
        };
        if let Some(w) = self.warm.starting.remove(id) {
            self.warm.failed.insert(w.spec.cell.clone(), Instant::now());
            return true;
        }
        let cell = self.warm.ready.iter().find(|(_, w)| w.instance == id).map(|(c, _)| c.clone());
        match cell {
            Some(c) => {
                if let Some(w) = self.warm.ready.remove(&c) {
                    tracing::warn!(instance = w.instance, "a warm unit ended before it was claimed");
                    self.warm.failed.insert(c, Instant::now());
                }
                true
            }
            None => false,
        }
    }

    /// Gives a warm unit up: closing our end of its socket ends its waiter
    /// (end-of-file, exit 0), and with it the unit.
    fn cool(&mut self, w: WarmUnit, why: &str) {
        tracing::info!(instance = w.instance, why, "warm unit given up");
        let e = trail::entry("quantumd", &Action::PREWARM).cell(w.spec.cell.clone());
        self.record(e.detail(format!("cool {}: {why}", w.instance)));
        drop(w);
    }
}
