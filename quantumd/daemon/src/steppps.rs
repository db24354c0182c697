//! STEPPPS in quantumd: SPACE from cgroup files and /proc, TIME and EVENT
//! from the eBPF programs, sampled on a thread of its own.
//!
//! The thread owns the loaded BPF programs (libbpf objects are not `Send`)
//! and the collector. The cell loop tells it which cells exist
//! ([`Steppps::watch`], a watch channel: only the latest list matters); it
//! publishes the latest [`Figures`] for D-Bus and /metrics, and sends the
//! cell loop a [`Tuning`] whenever a cell's run-queue latency objective
//! makes its CPU weight change. Where BPF cannot load (no BTF, no
//! CAP_BPF/CAP_PERFMON), TIME and EVENT say so and everything else goes on.
//!
//! For PSYCHOLOGY it also keeps, per instance, what it saw over the
//! instance's life ([`Usage`]); the cell loop takes it when the instance
//! ends ([`Steppps::take_usage`]) and records it in the usage history.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use quantum_steppps::figures::{EventFigures, RunqLatency, TimeFigures};
use quantum_steppps::objective::{Controller, Decision, Objective, Tuning as ControllerTuning};
use quantum_steppps::{Availability, CellCgroup, Collector, Figures, Gpus, Sources};
use tokio::sync::{mpsc, watch};

use crate::anomaly::{Anomaly, Baselines, Subject};

/// A cell instance the sampler reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub cell: String,
    pub instance: String,
    /// Its cgroup directory (absolute).
    pub cgroup: PathBuf,
    /// `[objectives] runq-latency-p99`, with the manifest's CPU weight.
    pub objective: Option<Objective>,
    /// What its baseline is learned for.
    pub subject: Subject,
}

/// What the cell loop tells the sampler of instances as they come and go,
/// in order: a cell's processes exec before it is watched, and go on after.
#[derive(Debug)]
enum Registration {
    /// `unit` is about to start (or was re-adopted) as `subject`.
    Expect { unit: String, subject: Subject },
    /// `unit` is gone, having run for `ran`.
    Ended { unit: String, ran: Duration },
}

/// A CPU weight the objective controller wants applied.
#[derive(Debug)]
pub struct Tuning {
    pub instance: String,
    pub decision: Decision,
}

/// Handle to the sampling thread.
#[derive(Clone)]
pub struct Steppps {
    figures: Arc<RwLock<Figures>>,
    registry: std::sync::mpsc::Sender<Registration>,
    watched: Arc<watch::Sender<Vec<Watched>>>,
    usage: Arc<Mutex<HashMap<String, Usage>>>,
    sampled: watch::Receiver<Sampled>,
}

/// The latest sample's time and size, for the `FiguresChanged` signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sampled {
    /// When the figures were published (µs since the epoch).
    pub at_usec: u64,
    /// How many cell instances they cover.
    pub cells: u32,
}

/// What the sampler saw of one instance over its life (across restarts),
/// for the usage history. Short runs the sampler never saw have none.
#[derive(Clone, Debug)]
pub struct Usage {
    /// `memory.current` readings, at most [`Usage::KEEP`]: when full, every
    /// other one is dropped and only every `stride`-th reading kept from
    /// then on, so a run of days is summarised as evenly as one of seconds.
    memory: Vec<u64>,
    stride: u32,
    skipped: u32,
    pub memory_peak: Option<u64>,
    /// CPU time used, µs: the first reading (cpu.stat counts from the
    /// cgroup's creation) plus every increase after it.
    pub cpu_usec: Option<u64>,
    last_cpu_usec: Option<u64>,
    pub cpu_peak_cores: Option<f64>,
    /// The worst sampling interval's run-queue latency p99.
    pub runq_p99_us: Option<u64>,
    pub tasks_peak: Option<u64>,
    /// `memory.events` oom_kill, the highest count seen.
    pub oom_kills: u64,
    seen: Instant,
}

impl Usage {
    const KEEP: usize = 1024;

    fn new() -> Usage {
        Usage {
            memory: Vec::new(),
            stride: 1,
            skipped: 0,
            memory_peak: None,
            cpu_usec: None,
            last_cpu_usec: None,
            cpu_peak_cores: None,
            runq_p99_us: None,
            tasks_peak: None,
            oom_kills: 0,
            seen: Instant::now(),
        }
    }

    fn observe(&mut self, cell: &quantum_steppps::figures::CellFigures, runq: Option<&RunqLatency>) {
        self.seen = Instant::now();
        let r = &cell.readings;
        if let Some(m) = r.memory_current {
            self.memory_peak = Some(self.memory_peak.map_or(m, |p| p.max(m)));
            self.skipped += 1;
            if self.skipped >= self.stride {
                self.skipped = 0;
                self.memory.push(m);
                if self.memory.len() >= Self::KEEP {
                    let halved: Vec<u64> = self.memory.iter().step_by(2).copied().collect();
                    self.memory = halved;
                    self.stride *= 2;
                }
            }
        }
        if let Some(cpu) = r.cpu {
            let now = cpu.usage_usec;
            // A restart is a new cgroup whose counter starts again at 0.
            let gained = match self.last_cpu_usec {
                Some(last) if now >= last => now - last,
                _ => now,
            };
            self.cpu_usec = Some(self.cpu_usec.unwrap_or(0) + gained);
            self.last_cpu_usec = Some(now);
        }
        if let Some(c) = cell.rates.cpu_cores {
            self.cpu_peak_cores = Some(self.cpu_peak_cores.map_or(c, |p| p.max(c)));
        }
        if let Some(p99) = runq.and_then(|l| l.p99_us) {
            self.runq_p99_us = Some(self.runq_p99_us.map_or(p99, |p| p.max(p99)));
        }
        if let Some(t) = r.pids_current {
            self.tasks_peak = Some(self.tasks_peak.map_or(t, |p| p.max(t)));
        }
        if let Some(e) = r.memory_events {
            self.oom_kills = self.oom_kills.max(e.oom_kill);
        }
    }

    /// The `p`-th percentile (nearest rank) of the memory readings kept.
    pub fn memory_percentile(&self, p: f64) -> Option<u64> {
        let mut v = self.memory.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }
}

/// How long the usage of an instance no longer sampled is kept for the
/// cell loop to take: past a restart's longest back-off (30 s), short
/// enough that instances the loop never asks about do not pile up.
const USAGE_KEPT: Duration = Duration::from_secs(300);

/// How the sampler runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Load the eBPF programs (`bpf = true` in quantumd.toml).
    pub bpf: bool,
    /// The cgroup every cell runs under (the BPF programs' scope).
    pub ancestor: PathBuf,
    /// Where cgroup paths in the figures are relative to (the cgroup v2 mount).
    pub cgroup_mount: PathBuf,
    /// Time between figures (and objective decisions).
    pub interval: Duration,
    /// Where the cells' baselines are kept (see [`crate::anomaly`]).
    pub baselines: PathBuf,
}

impl Steppps {
    /// Starts the sampling thread; `tunings` and `anomalies` reach the cell loop.
    pub fn start(
        options: Options,
        tunings: mpsc::UnboundedSender<Tuning>,
        anomalies: mpsc::UnboundedSender<Anomaly>,
    ) -> std::io::Result<Steppps> {
        let figures = Arc::new(RwLock::new(Figures::default()));
        let usage = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = watch::channel(Vec::new());
        let (sampled_tx, sampled) = watch::channel(Sampled::default());
        let (registry, registrations) = std::sync::mpsc::channel();
        let shared = figures.clone();
        let shared_usage = usage.clone();
        std::thread::Builder::new().name("steppps".into()).spawn(move || {
            let links = Links {
                watched: rx,
                tunings,
                anomalies,
                registrations,
                sampled: sampled_tx,
            };
            Sampler::new(options, shared, shared_usage, links).run()
        })?;
        Ok(Steppps {
            figures,
            registry,
            watched: Arc::new(tx),
            usage,
            sampled,
        })
    }

    /// Changes after every sample the figures were published from.
    pub fn sampled(&self) -> watch::Receiver<Sampled> {
        self.sampled.clone()
    }

    /// What was seen of `instance` over its life, forgotten here once taken.
    pub fn take_usage(&self, instance: &str) -> Option<Usage> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner).remove(instance)
    }

    /// `unit` is about to start (or was re-adopted) as `subject`: its execs
    /// are judged against the subject's baseline from its first one.
    pub fn expect(&self, unit: &str, subject: Subject) {
        // The sampler is gone only when quantumd stops.
        let _ = self.registry.send(Registration::Expect {
            unit: unit.to_owned(),
            subject,
        });
    }

    /// `unit` is gone, having run for `ran`: what the samples did not see
    /// of that counts towards its cell's learning.
    pub fn ended(&self, unit: &str, ran: Duration) {
        let _ = self.registry.send(Registration::Ended {
            unit: unit.to_owned(),
            ran,
        });
    }

    /// The cells to read from now on.
    pub fn watch(&self, cells: Vec<Watched>) {
        self.watched.send_if_modified(|current| {
            let changed = *current != cells;
            if changed {
                *current = cells;
            }
            changed
        });
    }

    /// The latest figures, all cells or one cell's instances.
    pub fn figures(&self, cell: Option<&str>) -> Figures {
        let mut f = self.figures.read().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(cell) = cell {
            f.cells.retain(|_, c| c.cell == cell);
            let keep = |instance: &String| crate::runtime::cell_of_instance(instance) == cell;
            if let Availability::Available(t) = &mut f.time {
                t.cells.retain(|i, _| keep(i));
            }
            if let Availability::Available(e) = &mut f.event {
                e.cells.retain(|i, _| keep(i));
            }
        }
        f
    }
}

/// Emits `FiguresChanged` on `conn` after each sample that covers a cell,
/// and once when the last cell has gone, so that a listener (the desktop
/// assistant) reads `Steppps` when there is something new and never polls.
/// The signal carries no figures: who may read them is for `Steppps` to say.
pub fn announce(conn: zbus::Connection, mut sampled: watch::Receiver<Sampled>) {
    tokio::spawn(async move {
        let mut before = 0;
        while sampled.changed().await.is_ok() {
            let now = *sampled.borrow_and_update();
            if now.cells == 0 && before == 0 {
                continue;
            }
            before = now.cells;
            if let Err(e) = conn
                .emit_signal(
                    None::<()>,
                    quantum_bus::OBJECT_PATH,
                    quantum_bus::INTERFACE,
                    "FiguresChanged",
                    &(now.at_usec, now.cells),
                )
                .await
            {
                tracing::warn!(error = %e, "cannot emit FiguresChanged");
            }
        }
    });
}

/// How TIME and EVENT say they wait for the cells' cgroup to exist.
const WAITING: &str = "waiting for the first cell";

/// Loads the eBPF programs, or says why they are not there.
fn load_bpf(options: &Options) -> Result<quantum_bpf::Telemetry, String> {
    if !options.bpf {
        return Err("eBPF telemetry is turned off (bpf = false in quantumd.toml)".to_owned());
    }
    // systemd creates the slice's cgroup with its first unit; the programs
    // are scoped to it, so they load when it appears.
    if !options.ancestor.is_dir() {
        let why = format!("{WAITING}: {} does not exist yet", options.ancestor.display());
        tracing::info!(reason = %why, "STEPPPS TIME and EVENT load with the first cell");
        return Err(why);
    }
    let loaded =
        quantum_bpf::Telemetry::load(&quantum_bpf::Options::new(options.ancestor.clone())).map_err(|e| crate::command::error_chain(&e));
    match &loaded {
        Ok(t) => tracing::info!(scope = ?t.scope(), ancestor = %options.ancestor.display(), "STEPPPS TIME and EVENT: eBPF programs loaded"),
        Err(why) => tracing::warn!(reason = %why, "STEPPPS TIME and EVENT unavailable; SPACE figures only"),
    }
    loaded
}

struct Sampler {
    options: Options,
    watched: watch::Receiver<Vec<Watched>>,
    figures: Arc<RwLock<Figures>>,
    usage: Arc<Mutex<HashMap<String, Usage>>>,
    tunings: mpsc::UnboundedSender<Tuning>,
    anomalies: mpsc::UnboundedSender<Anomaly>,
    sampled: watch::Sender<Sampled>,
    collector: Collector,
    bpf: Result<quantum_bpf::Telemetry, String>,
    /// cgroup id -> instance, for the cells watched now.
    ids: HashMap<u64, String>,
    /// Cumulative histograms at the previous sample, by cgroup id.
    previous: HashMap<u64, quantum_bpf::Histogram>,
    events: EventFigures,
    controllers: HashMap<String, Controller>,
    /// The cells watched now (running), for their learning time.
    cells: Vec<Watched>,
    baselines: Baselines,
    registrations: std::sync::mpsc::Receiver<Registration>,
    /// Every instance's subject by unit (the cgroup an exec names), from
    /// before it starts until a while after it ended (late events).
    expected: HashMap<String, (Subject, Option<Instant>)>,
    /// Learning time the samples counted, by instance.
    counted: HashMap<String, Duration>,
    last_sample: Option<Instant>,
}

/// How long an ended unit's execs are still judged: those read late.
const ENDED_GRACE: Duration = Duration::from_secs(10);

/// The sampler's ends of its channels to the rest of quantumd.
struct Links {
    watched: watch::Receiver<Vec<Watched>>,
    tunings: mpsc::UnboundedSender<Tuning>,
    anomalies: mpsc::UnboundedSender<Anomaly>,
    registrations: std::sync::mpsc::Receiver<Registration>,
    sampled: watch::Sender<Sampled>,
}

impl Sampler {
    fn new(options: Options, figures: Arc<RwLock<Figures>>, usage: Arc<Mutex<HashMap<String, Usage>>>, links: Links) -> Sampler {
        let Links {
            watched,
            tunings,
            anomalies,
            registrations,
            sampled,
        } = links;
        let bpf = load_bpf(&options);
        let baselines = Baselines::new(Some(options.baselines.clone()));
        let gpus = Gpus::probe();
        Sampler {
            collector: Collector::new(
                Sources {
                    cgroup_root: options.cgroup_mount.clone(),
                    proc_root: PathBuf::from("/proc"),
                    // Node figures from the steppps kernel module when it is loaded.
                    kmod_device: Some(PathBuf::from(quantum_steppps::kmod::DEVICE)),
                },
                gpus,
            ),
            options,
            watched,
            figures,
            usage,
            tunings,
            anomalies,
            sampled,
            bpf,
            ids: HashMap::new(),
            previous: HashMap::new(),
            events: EventFigures::default(),
            controllers: HashMap::new(),
            cells: Vec::new(),
            baselines,
            registrations,
            expected: HashMap::new(),
            counted: HashMap::new(),
            last_sample: None,
        }
    }

    fn run(mut self) {
        let mut next = Instant::now();
        loop {
            // quantumd is shutting down when the handle is gone.
            if self.watched.has_changed().is_err() {
                return;
            }
            let now = Instant::now();
            if now >= next {
                self.sample();
                next = now + self.options.interval;
            }
            let wait = next.saturating_duration_since(Instant::now()).min(Duration::from_millis(250));
            match &mut self.bpf {
                Ok(t) => match t.poll_events(wait) {
                    Ok(events) => {
                        // Registrations sent before these events happened are in by now.
                        self.register();
                        for e in events {
                            self.event(e);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::command::error_chain(&e), "reading eBPF events failed");
                        std::thread::sleep(wait);
                    }
                },
                Err(_) => {
                    std::thread::sleep(wait);
                    self.register();
                }
            }
        }
    }

    /// Counts an event for its cell and judges an exec against the cell's baseline.
    fn event(&mut self, e: quantum_bpf::Event) {
        if let Some(instance) = self.ids.get(&e.cgroup_id) {
            self.events.cells.entry(instance.clone()).or_default().count(&e.kind);
            if e.kind == quantum_bpf::EventKind::OomKill {
                tracing::warn!(instance, pid = e.pid, comm = e.comm, "OOM kill in a cell");
            }
        }
        if !matches!(e.kind, quantum_bpf::EventKind::Exec | quantum_bpf::EventKind::Connect(_)) {
            return;
        }
        let Some((subject, _)) = self.expected.get(&e.cgroup) else {
            tracing::trace!(cgroup = e.cgroup, comm = e.comm, pid = e.pid, "an event in no known cell");
            return;
        };
        let anomaly = match e.kind {
            quantum_bpf::EventKind::Connect(to) => self.baselines.connect(subject, to, &e.comm, e.pid),
            _ => self.baselines.exec(subject, &e.comm, e.pid),
        };
        if let Some(anomaly) = anomaly {
            tracing::warn!(
                instance = subject.instance,
                pid = e.pid,
                comm = e.comm,
                kind = anomaly.kind.as_str(),
                "a cell did what its baseline does not hold"
            );
            // The loop is gone only when quantumd stops.
            let _ = self.anomalies.send(anomaly);
        }
    }

    /// Takes in what the cell loop said of instances coming and going.
    fn register(&mut self) {
        let now = Instant::now();
        while let Ok(r) = self.registrations.try_recv() {
            match r {
                Registration::Expect { unit, subject } => {
                    self.expected.insert(unit, (subject, None));
                }
                Registration::Ended { unit, ran } => {
                    let Some((subject, ended)) = self.expected.get_mut(&unit) else {
                        continue;
                    };
                    *ended = Some(now);
                    // A run the samples missed (a task of a moment) still counts.
                    let counted = self.counted.remove(&subject.instance).unwrap_or_default();
                    self.baselines.ran(subject, ran.saturating_sub(counted));
                    self.baselines.save();
                }
            }
        }
        self.expected
            .retain(|_, (_, ended)| ended.is_none_or(|at| now.duration_since(at) < ENDED_GRACE));
    }

    /// Counts the time since the last sample towards each running cell's learning.
    fn learn(&mut self) {
        let now = Instant::now();
        // A sampler that was held up (a suspended machine) does not learn
        // for the time it did not watch.
        let elapsed = self
            .last_sample
            .map_or(Duration::ZERO, |t| now.duration_since(t).min(self.options.interval * 2));
        self.last_sample = Some(now);
        let subjects: Vec<Subject> = self.cells.iter().map(|c| c.subject.clone()).collect();
        for s in &subjects {
            *self.counted.entry(s.instance.clone()).or_default() += elapsed;
        }
        self.baselines.advance(&subjects, elapsed);
        self.baselines.save();
    }

    fn sample(&mut self) {
        // The cells' slice exists once a first cell ran: load then.
        let waiting = matches!(&self.bpf, Err(why) if why.starts_with(WAITING));
        if waiting && self.options.ancestor.is_dir() {
            self.bpf = load_bpf(&self.options);
        }
        let cells = self.watched.borrow_and_update().clone();
        self.ids = cells
            .iter()
            .filter_map(|c| Some((quantum_bpf::cgroup_id(&c.cgroup).ok()?, c.instance.clone())))
            .collect();
        self.cells = cells.clone();
        self.learn();
        let time = self.time(&cells);
        let event = match &self.bpf {
            Ok(t) => {
                let mut e = std::mem::take(&mut self.events);
                e.dropped = t.dropped_events().unwrap_or(0);
                Availability::Available(e)
            }
            Err(why) => Availability::unavailable(why.clone()),
        };
        let cgroups: Vec<CellCgroup> = cells
            .iter()
            .map(|c| CellCgroup {
                cell: c.cell.clone(),
                instance: c.instance.clone(),
                cgroup: c
                    .cgroup
                    .strip_prefix(&self.options.cgroup_mount)
                    .unwrap_or(&c.cgroup)
                    .display()
                    .to_string(),
            })
            .collect();
        match self.collector.collect(&cgroups, time, event) {
            Ok(collection) => {
                for (instance, e) in &collection.errors {
                    tracing::debug!(instance, error = %e, "cell cgroup not read");
                }
                self.observe_usage(&collection.figures, &cells);
                self.judge_cpu(&collection.figures);
                let cells = u32::try_from(collection.figures.cells.len()).unwrap_or(u32::MAX);
                *self.figures.write().unwrap_or_else(PoisonError::into_inner) = collection.figures;
                // No receiver is no error: the bus may not be up yet.
                self.sampled.send_replace(Sampled {
                    at_usec: crate::cells::now_usec(),
                    cells,
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot read /proc for STEPPPS"),
        }
    }

    /// Judges each watched instance's CPU in this sample against its baseline.
    fn judge_cpu(&mut self, figures: &Figures) {
        for c in &self.cells {
            let Some(cores) = figures.cells.get(&c.instance).and_then(|f| f.rates.cpu_cores) else {
                continue;
            };
            if let Some(anomaly) = self.baselines.cpu(&c.subject, cores, self.options.interval) {
                tracing::warn!(instance = c.instance, cores, "a cell's CPU is far above its baseline");
                let _ = self.anomalies.send(anomaly);
            }
        }
    }

    /// Adds this sample to each watched instance's [`Usage`].
    fn observe_usage(&self, figures: &Figures, cells: &[Watched]) {
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let time = figures.time.available();
        // Only instances the loop watches now: one that ended is taken by
        // the loop and must not come back from a late reading.
        for c in cells {
            if let Some(f) = figures.cells.get(&c.instance) {
                let runq = time.and_then(|t| t.cells.get(&c.instance));
                usage.entry(c.instance.clone()).or_insert_with(Usage::new).observe(f, runq);
            }
        }
        usage.retain(|instance, u| cells.iter().any(|c| &c.instance == instance) || u.seen.elapsed() < USAGE_KEPT);
    }

    /// Run-queue latency per instance since the previous sample, and the
    /// objective decisions it leads to.
    fn time(&mut self, cells: &[Watched]) -> Availability<TimeFigures> {
        let t = match &self.bpf {
            Ok(t) => t,
            Err(why) => return Availability::unavailable(why.clone()),
        };
        let now = match t.runq_latency() {
            Ok(h) => h,
            Err(e) => return Availability::unavailable(format!("cannot read run-queue latency: {e}")),
        };
        let mut figures = TimeFigures::default();
        for (id, instance) in &self.ids {
            let Some(h) = now.get(id) else { continue };
            let delta = match self.previous.get(id) {
                Some(prev) => h.since(prev),
                None => h.clone(),
            };
            figures.cells.insert(instance.clone(), RunqLatency::from(&delta));
        }
        // Histograms of cells that ended are dropped from the map.
        for id in self.previous.keys().filter(|id| !self.ids.contains_key(id)) {
            let _ = t.forget_cgroup(*id);
        }
        self.previous = now.into_iter().filter(|(id, _)| self.ids.contains_key(id)).collect();

        self.controllers.retain(|instance, _| cells.iter().any(|c| &c.instance == instance));
        for c in cells {
            let Some(objective) = c.objective else { continue };
            let controller = self
                .controllers
                .entry(c.instance.clone())
                .or_insert_with(|| Controller::new(objective, ControllerTuning::default()));
            let p99 = figures.cells.get(&c.instance).and_then(RunqLatency::p99);
            let decision = controller.observe(p99);
            if decision.changed() {
                let _ = self.tunings.send(Tuning {
                    instance: c.instance.clone(),
                    decision,
                });
            }
        }
        Availability::Available(figures)
    }
}
