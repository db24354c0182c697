//! The cells quantumd runs and the one loop that changes them.
//!
//! Every trigger — a bus command, a unit that ended, a start or stop that
//! finished, a restart timer, the periodic tick — arrives as an [`Event`] on
//! one channel and is handled here, in order. Slow work (talking to systemd)
//! runs in spawned tasks that report back with another event, so the loop
//! never waits on the backend.

mod prewarm;
mod state;
mod triggered;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quantum_bus::{Assembled, CellDetail, CellInfo, Ended, Started};
use quantum_intent::alternative::{alternatives, Alternative};
use quantum_model::placeholder::substitute;
use quantum_model::{Kind, Manifest, ParamType, Restart};
use quantum_trail::Action;
use tokio::sync::mpsc;

use crate::bundles::{self, BundleRefusal, BundleSource, Bundles, Unpacked};
use crate::catalog::{Catalog, Resolved};
use crate::command::{Command, CommandError, LogTarget, Reply, RunRequest};
use crate::config::Config;
use crate::identity::Identity;
use crate::runtime::spec::{family_slice, instance_of_unit};
use crate::runtime::{CredentialFiles, Limits, Runtime, Sandbox, SliceSpec, UnitEvent, UnitSpec};
use crate::start_profile::StartProfile;
use crate::steppps::Steppps;
use crate::store::{Record, Store};
use crate::trail::{self, Recorder};

#[derive(Debug)]
pub enum Event {
    Command(Command),
    Unit(UnitEvent),
    /// A unit's start finished (pid or error).
    Started {
        instance: String,
        result: Result<u32, String>,
    },
    /// All units of a run finished starting, or one failed (`failed`).
    PlanDone {
        root: String,
        ids: Vec<String>,
        failed: Option<String>,
        reply: PendingRun,
    },
    /// Units of a stop are gone.
    StopDone {
        ids: Vec<String>,
        reason: String,
        reply: Option<Reply<Vec<String>>>,
    },
    /// A bundle run's fetch and verification finished.
    BundleReady(Box<BundleRun>),
    /// The run-queue latency objective moves a cell's CPU weight.
    Tune(crate::steppps::Tuning),
    /// A cell did what its baseline or its allow-list does not hold (security-ai).
    Anomaly(crate::anomaly::Anomaly),
    /// A restart's back-off has passed.
    Restart(String),
    /// A trigger's run started (`started ID`) or was refused (`not run: ...`).
    TriggerRan {
        name: String,
        result: String,
    },
    /// What the usage history predicts for the coming hour (pre-warming).
    Demand(Vec<quantum_psychology::Demand>),
    /// A warm unit's start finished (pid or error).
    WarmStarted {
        instance: String,
        result: Result<u32, String>,
    },
    Tick,
}

/// The answer a run owes its caller once its units have started.
#[derive(Debug)]
pub struct PendingRun {
    reply: Reply<Assembled>,
    /// The caller's stdio went to the cell (a task).
    attached: bool,
    /// A service's `reach`, with this run's parameters.
    reach: String,
    /// The secrets quantumd made for the cell asked for.
    secrets: HashMap<String, String>,
    /// Another cell runs in place of the one asked for.
    substitution: Option<Substitution>,
    profile: StartProfile,
}

/// A stand-in runs for the cell asked for.
#[derive(Debug, Clone)]
struct Substitution {
    /// The cell asked for.
    asked: String,
    /// Why, and what runs instead, for the caller.
    message: String,
}

/// A cell refused for a while after ending too often.
#[derive(Debug, Clone)]
struct Blacklisting {
    until: Instant,
    /// How its last run ended.
    what: String,
    /// Times it ended within the window.
    ended: usize,
    window: quantum_model::Duration,
    max_restarts: u32,
}

impl Blacklisting {
    /// Why, as `list` shows the blacklisted instance's end.
    fn why(&self) -> String {
        format!(
            "{}; it ended {} times within {} (max-restarts {})",
            self.what, self.ended, self.window, self.max_restarts
        )
    }

    /// The refusal of a run of `cell`.
    fn refusal(&self, cell: &str) -> String {
        let left = self.until.saturating_duration_since(Instant::now()).as_secs();
        format!("cell \"{cell}\" is blacklisted for another {left}s: {}", self.why())
    }

    /// The caller's answer when `alternative` runs in place of `cell`.
    fn substitution(&self, cell: &str, alternative: &Alternative) -> String {
        format!(
            "cell \"{cell}\" is blacklisted (it ended {} times within {}, max-restarts {}; last: {}); started \"{}\" instead, which also offers \"{}\"",
            self.ended, self.window, self.max_restarts, self.what, alternative.cell, alternative.capability
        )
    }
}

/// A run planned: its root instance, the steps that start it, and every
/// instance created for it (to forget if it is not started after all).
struct Planned {
    root: String,
    steps: Vec<Step>,
    created: Vec<String>,
}

/// What a run of a blacklisted catalog cell comes to.
enum Reassembly {
    /// Not a case for reassembly: plan the cell asked for (a blacklisted one
    /// is refused there, as ever).
    AsAsked,
    /// A stand-in, planned.
    StandIn(Planned, Substitution),
    /// Refused, with the stand-in the caller did not accept named.
    Refused(CommandError),
}

/// A run whose source is a bundle, back from verification.
#[derive(Debug)]
pub struct BundleRun {
    request: RunRequest,
    result: Result<Unpacked, BundleRefusal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    Restarting,
    Stopping,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Stopping => "stopping",
        }
    }
}

#[derive(Debug)]
struct Instance {
    record: Record,
    /// `None` for a unit adopted without a readable manifest.
    manifest: Option<Arc<Manifest>>,
    spec: UnitSpec,
    state: State,
    reason: String,
    pid: u32,
    /// Its process ran: its start was confirmed or its end seen. A quick
    /// task can end before the start is confirmed, and is a run all the same.
    ran: bool,
    children: Vec<String>,
    needed_by: BTreeSet<String>,
    failures: VecDeque<Instant>,
    last_exit: i32,
    /// Last CPU usage seen and since when it has not changed.
    idle: Option<(u64, Instant)>,
    /// Its cgroup directory, once running (found once: the cgroup backend
    /// searches for it).
    cgroup: Option<PathBuf>,
    /// Started with the caller's stdio (`RunAttached`): never restarted,
    /// its end is the caller's to see.
    attached: bool,
    /// The secrets quantumd made for this run (crate::credentials), held
    /// only until the caller who asked for it has them in its answer.
    made_secrets: BTreeMap<String, String>,
}

/// An instance that has ended, as `list` shows it and `Wait` reports it.
#[derive(Debug, Clone)]
struct EndedInstance {
    info: CellInfo,
    /// Exit status as a shell gives it (128+N for signal N), -1 unknown.
    status: i32,
    /// Who started it (`uid:N`), for who may read its output.
    actor: String,
    /// When quantumd saw it end (µs since the epoch).
    ended_usec: u64,
}

/// One step of a run, done in order by a spawned task.
enum Step {
    Slice(SliceSpec),
    /// Record the instance (durably: fsync), then start its unit. The record
    /// is written in the task rather than in the loop because an fsync
    /// costs milliseconds: many concurrent runs then share the disk's
    /// commits instead of queueing behind each other in the loop.
    Unit(Box<(Record, UnitSpec)>),
    /// Record the instance, then hand the run to a warm unit (`crate::warm`).
    Claim(Box<(Record, UnitSpec, crate::warm::WarmUnit)>),
}

/// One step of a stop.
enum StopStep {
    Unit(String),
    Slice(String),
}

pub struct Cells {
    runtime: Runtime,
    store: Store,
    catalog: Catalog,
    /// Signed bundles: verification, unpacking, providers.
    bundles: Bundles,
    config: Config,
    instances: BTreeMap<String, Instance>,
    ended: VecDeque<EndedInstance>,
    /// Callers of `Wait`, by instance, answered when it ends.
    waiters: HashMap<String, Vec<Reply<Ended>>>,
    /// Cells refused for a while after ending too often, by name.
    blacklist: HashMap<String, Blacklisting>,
    next_id: u64,
    /// Numbers below this are reserved on disk for this run (`take_number`).
    reserved_until: u64,
    events: mpsc::UnboundedSender<Event>,
    bus: Option<zbus::Connection>,
    /// Signs each instance's identity document.
    identity: Option<Identity>,
    /// The quantum trail, or why it cannot be written (then nothing runs:
    /// quantumd does nothing it cannot record).
    trail: Result<Recorder, String>,
    /// The STEPPPS sampler, told which cells run at every tick.
    steppps: Option<Steppps>,
    /// The channel broker (crate::channels): mints the tokens of cells with
    /// channels; none when its socket could not be had.
    channels: Option<crate::channels::Broker>,
    /// STEPPPS PSYCHOLOGY: each ended instance becomes a usage sample.
    history: Option<crate::psychology::History>,
    /// STEPPPS SCRIPT: cells run when something happens.
    triggers: crate::triggers::Triggers,
    /// Units started before they are asked for (`cells/prewarm.rs`).
    warm: prewarm::Pool,
    /// What the network allow-lists refused, turned into anomalies.
    refusals: crate::anomaly::Refusals,
}

/// Writes the record of an instance about to start, off the event loop.
async fn save(store: &Store, record: Record) -> Result<(), String> {
    let store = store.clone();
    let id = record.instance.clone();
    match tokio::task::spawn_blocking(move || store.save_before_start(&record)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot record instance {id}: {}", crate::command::error_chain(&e))),
        Err(e) => Err(format!("cannot record instance {id}: {e}")),
    }
}

/// What an instance's baseline is learned for (security-ai, crate::anomaly).
fn subject_of(record: &Record, manifest: Option<&Manifest>) -> crate::anomaly::Subject {
    let (version, exec, policy) = match manifest {
        Some(m) => (
            m.version.to_string(),
            match &m.program {
                quantum_model::Program::Exec(argv) => argv.as_slice().into(),
                quantum_model::Program::Artifact(a) => [a.path.clone()].into(),
            },
            m.policy,
        ),
        // Adopted without a readable manifest: nothing to learn against.
        None => (
            String::new(),
            Arc::from([]),
            quantum_model::Policy {
                on_anomaly: quantum_model::OnAnomaly::Ignore,
                ..Default::default()
            },
        ),
    };
    crate::anomaly::Subject {
        cell: record.cell.clone(),
        instance: record.instance.clone(),
        version,
        exec,
        on_anomaly: policy.on_anomaly,
        learning: policy.learning.as_std(),
        allow_list: manifest.is_some_and(|m| !m.isolation.network_allow.is_empty()),
    }
}

/// A trail entry about `r`'s instance.
fn entry_for(actor: &str, action: &Action, r: &Record) -> quantum_trail::NewEntry {
    let mut e = trail::entry(actor, action).cell(r.cell.clone());
    if let Some(hash) = r.manifest_blake3.as_deref().and_then(|h| blake3::Hash::from_hex(h).ok()) {
        e = e.manifest_hash(trail::digest(&hash));
    }
    e
}

/// Appends to the trail when it is open (a free function, so that it can be
/// called while an instance is borrowed).
fn record_to(trail: &Result<Recorder, String>, entry: quantum_trail::NewEntry) {
    if let Ok(trail) = trail {
        trail.record(entry);
    }
}

/// An instance's identity document being signed on a blocking thread.
///
/// In `$QUANTUM_IDENTITY`, not a systemd credential (SetCredential=): in
/// systemd 252 each unit's credentials are a mount in the host's namespace,
/// and PID 1 rereads the mount table on every mount, so 256 cells took over
/// 600 s to start instead of 150 s under TCG. Signed by the start task, not
/// the main loop, so that concurrent runs do not queue behind each other's
/// signatures; every start (a restart too) gets a fresh document.
struct Signing {
    instance: String,
    task: Option<tokio::task::JoinHandle<Result<String, quantum_trust::IdentityError>>>,
}

impl Signing {
    fn begin(identity: Option<Identity>, r: &Record) -> Signing {
        let hash = r.manifest_blake3.as_deref().and_then(|h| blake3::Hash::from_hex(h).ok());
        let task = identity.zip(hash).map(|(identity, hash)| {
            let (cell, instance) = (r.cell.clone(), r.instance.clone());
            tokio::task::spawn_blocking(move || identity.document(&cell, &hash, &instance))
        });
        Signing {
            instance: r.instance.clone(),
            task,
        }
    }

    /// Puts the document in `spec`'s environment; without one the cell
    /// still starts (and says nothing of who it is), as before.
    async fn finish(self, spec: &mut UnitSpec) {
        let Some(task) = self.task else { return };
        match task.await {
            Ok(Ok(doc)) => {
                spec.env.insert(IDENTITY_ENV.to_owned(), doc);
            }
            Ok(Err(e)) => tracing::warn!(instance = self.instance, error = %e, "no identity document for the cell"),
            Err(e) => tracing::warn!(instance = self.instance, error = %e, "no identity document for the cell: the signer failed"),
        }
    }
}

/// The environment variable holding a cell's identity document (JSON).
pub const IDENTITY_ENV: &str = "QUANTUM_IDENTITY";

pub(crate) fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Instance numbers reserved on disk at a time.
const NUMBER_BLOCK: u64 = 1024;

/// Backoff before the n-th restart in a window: 0.5 s, 1 s, 2 s ... 30 s.
fn backoff(n: usize) -> Duration {
    let exp = n.saturating_sub(1).min(6) as u32;
    Duration::from_millis(500 * 2u64.pow(exp)).min(Duration::from_secs(30))
}

impl Cells {
    pub fn new(runtime: Runtime, store: Store, config: Config, events: mpsc::UnboundedSender<Event>) -> Cells {
        // Numbers reserved by an earlier run may have been used: skip them.
        let next_id = store.reserved_numbers();
        let (triggers, problems) = crate::triggers::Triggers::load(&config.triggers, &config.state_dir.join("triggers"));
        for p in problems {
            tracing::warn!(problem = p, "a trigger is not loaded");
        }
        Cells {
            triggers,
            warm: prewarm::Pool::default(),
            runtime,
            store,
            catalog: Catalog::new(config.catalog.clone()),
            bundles: Bundles::local(config.trusted_keys.clone(), &config.cache_dir),
            config,
            instances: BTreeMap::new(),
            ended: VecDeque::new(),
            waiters: HashMap::new(),
            blacklist: HashMap::new(),
            next_id,
            reserved_until: 0,
            events,
            bus: None,
            identity: None,
            trail: Err("the trail is not open yet".into()),
            steppps: None,
            channels: None,
            history: None,
            refusals: crate::anomaly::Refusals::default(),
        }
    }

    /// The node identity and the trail; until this is called (tests of the
    /// planning logic) nothing is recorded and runs are refused.
    pub fn set_trust(&mut self, identity: Identity, trail: Result<Recorder, String>) {
        self.identity = Some(identity);
        self.trail = trail;
    }

    pub fn set_steppps(&mut self, steppps: Steppps) {
        self.steppps = Some(steppps);
    }

    pub fn set_channels(&mut self, broker: crate::channels::Broker) {
        self.channels = Some(broker);
    }

    /// Where bundles come from (the configured providers).
    pub fn set_history(&mut self, history: crate::psychology::History) {
        self.history = Some(history);
    }

    pub fn set_bundles(&mut self, bundles: Bundles) {
        self.bundles = bundles;
    }

    /// Seals and syncs what was recorded (at shutdown).
    pub async fn flush_trail(&self) {
        if let Ok(t) = &self.trail {
            t.flush().await;
        }
    }

    fn record(&self, entry: quantum_trail::NewEntry) {
        record_to(&self.trail, entry);
    }

    pub fn set_bus(&mut self, conn: zbus::Connection) {
        self.bus = Some(conn);
    }

    pub fn running_count(&self) -> usize {
        self.instances.values().filter(|i| i.state == State::Running).count()
    }

    // ----- re-adoption -------------------------------------------------

    /// Takes back every cell unit still running after a restart of
    /// quantumd, and accounts for the ones that ended meanwhile.
    pub async fn readopt(&mut self) -> Result<usize, crate::runtime::RuntimeError> {
        let records = self.store.load_all();
        let live: HashMap<String, u32> = self.runtime.list().await?.into_iter().map(|u| (u.unit, u.pid)).collect();
        let mut seen_units = BTreeSet::new();
        for r in records {
            self.bump_id(&r.instance);
            match live.get(&r.unit) {
                Some(&pid) => {
                    seen_units.insert(r.unit.clone());
                    self.adopt(r, pid).await;
                }
                None => {
                    tracing::info!(instance = %r.instance, "cell ended while quantumd was not running");
                    self.store.remove(&r.instance);
                    self.ended.push_back(EndedInstance {
                        info: info_of_record(&r, "exited", "ended while quantumd was not running"),
                        status: -1,
                        actor: r.actor.clone(),
                        ended_usec: now_usec(),
                    });
                }
            }
        }
        for (unit, pid) in &live {
            if seen_units.contains(unit) {
                continue;
            }
            let Some(id) = instance_of_unit(unit) else { continue };
            self.bump_id(id);
            let cell = crate::runtime::cell_of_instance(id).to_owned();
            tracing::warn!(unit, "found a cell unit without a record; adopting it");
            let manifest_path = self.catalog.dir.join(&cell).join("cell.toml");
            let record = Record {
                instance: id.to_owned(),
                cell,
                unit: unit.clone(),
                slice: self.config.cell_slice.clone(),
                manifest_path,
                params: BTreeMap::new(),
                parent: None,
                needs: vec![],
                auto_started: false,
                family_slice: None,
                started_usec: now_usec(),
                actor: "quantumd".into(),
                manifest_blake3: None,
                secrets: Vec::new(),
            };
            if let Err(e) = self.store.save(&record) {
                tracing::error!(error = %e, "cannot record adopted unit");
            }
            self.adopt(record, *pid).await;
        }
        // Rebuild the links that records keep one side of.
        let links: Vec<(String, Option<String>, Vec<String>)> = self
            .instances
            .values()
            .map(|i| (i.record.instance.clone(), i.record.parent.clone(), i.record.needs.clone()))
            .collect();
        for (id, parent, needs) in links {
            if let Some(p) = parent.and_then(|p| self.instances.get_mut(&p)) {
                p.children.push(id.clone());
            }
            for n in needs {
                if let Some(n) = self.instances.get_mut(&n) {
                    n.needed_by.insert(id.clone());
                }
            }
        }
        Ok(self.instances.len())
    }

    /// The next instance number, never one handed out before (this run of
    /// quantumd or an earlier one): numbers are reserved on disk a block at
    /// a time, so that a start syncs a file once per [`NUMBER_BLOCK`]
    /// starts at most.
    fn take_number(&mut self) -> Result<u64, CommandError> {
        let n = self.next_id;
        if n >= self.reserved_until {
            let end = n + NUMBER_BLOCK;
            self.store
                .reserve_numbers(end)
                .map_err(|e| CommandError::Backend(format!("cannot reserve instance numbers: {}", crate::command::error_chain(&e))))?;
            self.reserved_until = end;
        }
        self.next_id += 1;
        Ok(n)
    }

    fn bump_id(&mut self, id: &str) {
        if let Some(n) = id.rsplit_once('.').and_then(|(_, n)| n.parse::<u64>().ok()) {
            self.next_id = self.next_id.max(n + 1);
        }
    }

    async fn adopt(&mut self, record: Record, pid: u32) {
        let resolved = self.catalog.load(&record.manifest_path).ok();
        let manifest = resolved.map(|r| Arc::new(r.manifest));
        let spec = match &manifest {
            Some(m) => self.build_spec(&record, m).unwrap_or_else(|_| bare_spec(&record)),
            None => bare_spec(&record),
        };
        self.runtime.adopt(&record.unit).await;
        tracing::info!(instance = %record.instance, unit = %record.unit, pid, "re-adopted cell");
        if let Some(steppps) = &self.steppps {
            steppps.expect(&record.unit, subject_of(&record, manifest.as_deref()));
        }
        self.instances.insert(
            record.instance.clone(),
            Instance {
                record,
                manifest,
                spec,
                state: State::Running,
                reason: "re-adopted after a quantumd restart".into(),
                pid,
                ran: true,
                children: vec![],
                needed_by: BTreeSet::new(),
                failures: VecDeque::new(),
                last_exit: -1,
                idle: None,
                cgroup: None,
                attached: false,
                made_secrets: BTreeMap::new(),
            },
        );
    }

    // ----- the loop -----------------------------------------------------

    pub async fn handle(&mut self, event: Event) {
        match event {
            Event::Command(c) => self.command(c).await,
            Event::Unit(u) => self.unit_ended(u).await,
            Event::Started { instance, result } => self.started(&instance, result).await,
            Event::PlanDone { root, ids, failed, reply } => self.plan_done(root, ids, failed, reply).await,
            Event::StopDone { ids, reason, reply } => self.stop_done(ids, &reason, reply).await,
            Event::BundleReady(run) => self.bundle_ready(*run),
            Event::Tune(t) => self.tune(t),
            Event::Anomaly(a) => self.anomaly(a).await,
            Event::Restart(id) => self.restart(&id),
            Event::Demand(demand) => self.set_demand(demand),
            Event::WarmStarted { instance, result } => self.warm_started(&instance, result),
            Event::TriggerRan { name, result } => {
                tracing::info!(trigger = name, result, "trigger ran");
                self.triggers.ran(&name, result);
            }
            Event::Tick => self.tick().await,
        }
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Run(mut request) => {
                request.profile.mark("queue");
                if let Err(why) = &self.trail {
                    let e = CommandError::Refused(format!(
                        "quantumd runs nothing it cannot record, and its trail is unusable: {why}; see `quantumctl trail verify`"
                    ));
                    let _ = request.reply.send(Err(e));
                    return;
                }
                match self.bundle_source(&request.source) {
                    Ok(Some(bundle)) => return self.spawn_bundle(request, bundle),
                    Ok(None) => {}
                    Err(e) => {
                        let _ = request.reply.send(Err(e.clone()));
                        self.record(
                            trail::entry(&request.actor, &Action::REFUSE)
                                .cell(request.source)
                                .error(e.to_string()),
                        );
                        return;
                    }
                }
                let (actor, source) = (request.actor.clone(), request.source.clone());
                if let Err((e, reply)) = self.run(request) {
                    tracing::info!(source, error = %e, "run refused");
                    // Recorded before the answer, so that whoever reads the
                    // trail after the refusal finds it there.
                    self.record(trail::entry(&actor, &Action::REFUSE).cell(source).error(e.to_string()));
                    let _ = reply.send(Err(e));
                }
            }
            Command::Wait { instance, reply } => self.wait(&instance, reply),
            Command::LogTargets { target, reply } => {
                let _ = reply.send(self.log_targets(&target));
            }
            Command::Stop { actor, target, reply } => self.stop(&actor, &target, reply),
            Command::List { reply } => {
                let _ = reply.send(Ok(self.list()));
            }
            Command::Inspect { target, reply } => {
                let _ = reply.send(self.inspect(&target));
            }
            Command::CellState { actor, cell, op, reply } => self.cell_state(actor, cell, op, reply),
            Command::TriggerAdd { actor, toml, file, reply } => self.trigger_add(actor, toml, file, reply).await,
            Command::TriggerRemove { actor, name, reply } => self.trigger_remove(actor, name, reply).await,
            Command::TriggerList { reply } => {
                let _ = reply.send(Ok(self.trigger_list()));
            }
        }
    }

    async fn emit(&mut self, id: &str, cell: &str, state: &str, reason: &str) {
        tracing::info!(instance = id, cell, state, reason, "cell state changed");
        {
            use quantum_model::trigger::EventState;
            match state {
                "running" => self.trigger_cell_event(cell, EventState::Started),
                "exited" => self.trigger_cell_event(cell, EventState::Exited),
                "failed" => {
                    self.trigger_cell_event(cell, EventState::Failed);
                    if reason.starts_with("blacklisted") {
                        self.trigger_cell_event(cell, EventState::Blacklisted);
                    }
                }
                _ => {}
            }
        }
        if let Some(conn) = &self.bus {
            let r = conn
                .emit_signal(
                    None::<()>,
                    quantum_bus::OBJECT_PATH,
                    quantum_bus::INTERFACE,
                    "CellStateChanged",
                    &(id, cell, state, reason),
                )
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot emit CellStateChanged");
            }
        }
    }

    // ----- bundles --------------------------------------------------------

    /// Whether `source` is run from a bundle: a `.qcb` file, `NAME@VERSION`,
    /// or a NAME the catalog lacks when providers are configured.
    fn bundle_source(&self, source: &str) -> Result<Option<BundleSource>, CommandError> {
        match bundles::parse_source(source) {
            Some(parsed) => parsed.map(Some).map_err(CommandError::Invalid),
            None => {
                let name = source.parse::<quantum_model::CellName>().ok();
                Ok(name
                    .filter(|_| self.bundles.has_providers())
                    .filter(|n| !self.catalog.dir.join(n.as_str()).join("cell.toml").is_file())
                    .map(|name| BundleSource::Provider { name, version: None }))
            }
        }
    }

    /// Fetches and verifies off the loop; the run goes on in [`Self::bundle_ready`].
    fn spawn_bundle(&self, request: RunRequest, bundle: BundleSource) {
        let bundles = self.bundles.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = bundles.prepare(&bundle).await;
            let _ = events.send(Event::BundleReady(Box::new(BundleRun { request, result })));
        });
    }

    fn bundle_ready(&mut self, run: BundleRun) {
        let BundleRun { request, result } = run;
        let (actor, source) = (request.actor.clone(), request.source.clone());
        match result {
            Err(refusal) => {
                let why = crate::command::error_chain(&refusal);
                tracing::warn!(source, error = %why, "bundle refused");
                self.record(trail::entry(&actor, &Action::REFUSE).cell(source).error(why.clone()));
                let _ = request.reply.send(Err(CommandError::Refused(why)));
            }
            Ok(unpacked) => {
                self.record(trail::entry(&actor, &Action::BUNDLE).cell(source.clone()).detail(format!(
                    "verified bundle {} signed by {}; {}",
                    unpacked.bundle_blake3, unpacked.signer, unpacked.origin
                )));
                let manifest = unpacked.manifest.display().to_string();
                if let Err((e, reply)) = self.run(RunRequest {
                    source: manifest,
                    ..request
                }) {
                    tracing::info!(source, error = %e, "run refused");
                    self.record(trail::entry(&actor, &Action::REFUSE).cell(source).error(e.to_string()));
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    // ----- run ------------------------------------------------------------

    /// Plans the run (needs, the cell, its children), records every
    /// instance, and hands the starts to a task. On error nothing is left
    /// behind, and the reason comes back with the unanswered reply.
    fn run(&mut self, request: RunRequest) -> Result<(), (CommandError, Reply<Assembled>)> {
        let RunRequest {
            actor,
            source,
            params,
            cwd,
            stdio,
            substitute: accepts_stand_in,
            reply,
            mut profile,
        } = request;
        let (actor, cwd) = (actor.as_str(), cwd.as_str());
        let result = self.catalog.resolve(&source).map_err(|e| match e {
            crate::catalog::CatalogError::NotFound { .. } => CommandError::NotFound(e.to_string()),
            _ => CommandError::Invalid(e.to_string()),
        });
        let resolved = match result {
            Ok(r) => r,
            Err(e) => return Err((e, reply)),
        };
        profile.mark("resolve");
        let (planned, substitution) = match self.reassemble(actor, &resolved, &params, cwd, accepts_stand_in) {
            Reassembly::AsAsked => (self.plan_root(actor, resolved, params, cwd), None),
            Reassembly::StandIn(planned, substitution) => (Ok(planned), Some(substitution)),
            Reassembly::Refused(e) => (Err(e), None),
        };
        let Planned { root, mut steps, created } = match planned {
            Ok(p) => p,
            Err(e) => return Err((e, reply)),
        };
        profile.mark("plan");
        let mut pending = PendingRun {
            reply,
            attached: false,
            reach: String::new(),
            secrets: HashMap::new(),
            substitution,
            profile,
        };
        if let Some(inst) = self.instances.get_mut(&root) {
            pending.secrets = std::mem::take(&mut inst.made_secrets).into_iter().collect();
        }
        // Secrets made for what the root needs or its children are given to
        // no one (their cells read them from their credentials): quantumd
        // keeps no copy in memory either. Only instances this plan created
        // can hold one.
        for id in &created {
            if let Some(inst) = self.instances.get_mut(id) {
                inst.made_secrets.clear();
            }
        }
        if let Some(inst) = self.instances.get_mut(&root) {
            let lifecycle = inst.manifest.as_ref().map(|m| &m.lifecycle);
            match (lifecycle.map(|l| l.kind), stdio) {
                (Some(Kind::Task), Some(stdio)) => {
                    // Only the asked-for cell is attached, not what it needs
                    // or its children. The instance's own spec keeps no
                    // copy of the descriptors: the start task's copy is
                    // dropped once the unit runs, so the caller sees
                    // end-of-file when the cell ends.
                    inst.attached = true;
                    pending.attached = true;
                    for step in &mut steps {
                        let (record, spec) = match step {
                            Step::Unit(unit) => (&unit.0, &mut unit.1),
                            Step::Claim(claim) => (&claim.0, &mut claim.1),
                            Step::Slice(_) => continue,
                        };
                        if record.instance == root {
                            spec.stdio = Some(stdio.clone());
                        }
                    }
                }
                _ => pending.reach = reach_of(inst),
            }
        }
        self.spawn_plan(root, created, steps, pending);
        Ok(())
    }

    /// Plans `resolved` as a top-level cell; on error every instance it
    /// created is forgotten again.
    fn plan_root(&mut self, actor: &str, resolved: Resolved, params: HashMap<String, String>, cwd: &str) -> Result<Planned, CommandError> {
        let mut steps = Vec::new();
        let mut created = Vec::new();
        let slice = self.config.cell_slice.clone();
        let planned = self.plan(
            actor,
            resolved,
            params,
            cwd,
            None,
            &slice,
            false,
            &mut steps,
            &mut created,
            &mut Vec::new(),
        );
        match planned {
            Ok(root) => Ok(Planned { root, steps, created }),
            Err(e) => {
                for id in created.iter().rev() {
                    if let Some(inst) = self.instances.remove(id) {
                        self.store.remove(id);
                        for n in &inst.record.needs {
                            if let Some(n) = self.instances.get_mut(n) {
                                n.needed_by.remove(id);
                            }
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// The blacklisting of `cell`, while it lasts.
    fn blacklisted(&self, cell: &str) -> Option<&Blacklisting> {
        self.blacklist.get(cell).filter(|b| b.until > Instant::now())
    }

    /// Reassembly: a run of a blacklisted catalog cell gets a stand-in, the
    /// best catalog cell that offers one of its capabilities and is neither
    /// blacklisted nor disabled (see quantum-intent's `alternative`), when
    /// the caller accepts one (`RunWith`'s `substitute`); tried best first until one
    /// plans. A caller who does not accept one is refused, told which cell
    /// could stand in. A disabled cell is not reassembled (the
    /// administrator's word stands), nor is a manifest file or bundle (their
    /// caller chose that very file).
    fn reassemble(
        &mut self,
        actor: &str,
        resolved: &Resolved,
        params: &HashMap<String, String>,
        cwd: &str,
        accepts_stand_in: bool,
    ) -> Reassembly {
        let asked = resolved.manifest.name.as_str();
        if self.config.cells.is_disabled(asked) || !resolved.path.starts_with(&self.catalog.dir) {
            return Reassembly::AsAsked;
        }
        let Some(blacklisting) = self.blacklisted(asked).cloned() else {
            return Reassembly::AsAsked;
        };
        let given: Vec<&str> = params.keys().map(String::as_str).collect();
        let candidates = self.alternatives(&resolved.manifest, &given);
        if !accepts_stand_in {
            return match candidates.first() {
                Some(best) => Reassembly::Refused(CommandError::Refused(format!(
                    "{}; \"{}\" also offers \"{}\"",
                    blacklisting.refusal(asked),
                    best.cell,
                    best.capability
                ))),
                None => Reassembly::AsAsked,
            };
        }
        for alternative in candidates {
            let stand_in = match self.catalog.resolve(&alternative.cell) {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(asked, cell = alternative.cell, error = %e, "a stand-in cannot be read");
                    continue;
                }
            };
            let planned = match self.plan_root(actor, stand_in, params.clone(), cwd) {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(asked, cell = alternative.cell, error = %e, "a stand-in cannot run");
                    continue;
                }
            };
            let message = blacklisting.substitution(asked, &alternative);
            tracing::info!(
                asked,
                cell = alternative.cell,
                capability = alternative.capability,
                instance = planned.root,
                "a stand-in runs for a blacklisted cell"
            );
            // Recorded before the answer, as a refusal is.
            self.record(
                trail::entry(actor, &Action::SUBSTITUTE)
                    .cell(asked)
                    .manifest_hash(trail::digest(&resolved.hash))
                    .detail(format!(
                        "asked for \"{asked}\", started \"{}\" ({}) instead: {}; \"{}\" also offers \"{}\"",
                        alternative.cell,
                        planned.root,
                        blacklisting.why(),
                        alternative.cell,
                        alternative.capability
                    )),
            );
            let substitution = Substitution {
                asked: asked.to_owned(),
                message,
            };
            return Reassembly::StandIn(planned, substitution);
        }
        Reassembly::AsAsked
    }

    /// The catalog cells that could stand in for `asked` given the
    /// parameters named `given`, best first.
    fn alternatives(&self, asked: &Manifest, given: &[&str]) -> Vec<Alternative> {
        let catalog: Vec<Manifest> = self
            .catalog
            .names()
            .iter()
            .filter_map(|name| match self.catalog.resolve(name.as_str()) {
                Ok(r) => Some(r.manifest),
                Err(e) => {
                    tracing::debug!(cell = %name, error = %e, "not a stand-in: the catalog cell does not validate");
                    None
                }
            })
            .collect();
        let unavailable = |cell: &str| self.config.cells.is_disabled(cell) || self.blacklisted(cell).is_some();
        alternatives(asked, &catalog, given, &unavailable)
    }

    #[allow(clippy::too_many_arguments)]
    fn plan(
        &mut self,
        actor: &str,
        resolved: Resolved,
        given: HashMap<String, String>,
        cwd: &str,
        parent: Option<&str>,
        slice: &str,
        auto_started: bool,
        steps: &mut Vec<Step>,
        created: &mut Vec<String>,
        stack: &mut Vec<String>,
    ) -> Result<String, CommandError> {
        let m = Arc::new(resolved.manifest);
        let name = m.name.to_string();
        if stack.contains(&name) {
            return Err(CommandError::Invalid(format!(
                "cell \"{name}\": needs form a cycle: {} -> {name}",
                stack.join(" -> ")
            )));
        }
        if self.config.cells.is_disabled(&name) {
            return Err(CommandError::Refused(format!(
                "cell \"{name}\" is disabled by the administrator ([cells] disabled in quantumd.toml)"
            )));
        }
        if let Some(b) = self.blacklisted(&name) {
            return Err(CommandError::Refused(b.refusal(&name)));
        }
        // Root is for cells someone vouches for: the distribution's catalog
        // (root-owned files) or an author key this node trusts.
        let vouched = resolved.path.starts_with(&self.catalog.dir) || self.bundles.holds(&resolved.path);
        if m.isolation.user == quantum_model::UserMode::Root && !vouched {
            return Err(CommandError::Refused(format!(
                "cell \"{name}\" asks to run as root (isolation.user = \"root\"), which only catalog cells and signed bundles may; {} is neither",
                resolved.path.display()
            )));
        }
        let manifest_dir = resolved.path.parent().unwrap_or(Path::new("/")).to_owned();
        let base = if cwd.is_empty() { manifest_dir.clone() } else { PathBuf::from(cwd) };
        let Params {
            values: params,
            secrets,
            made: made_secrets,
        } = resolve_params(&m, given, &base)?;
        if m.channels.any() && self.channels.is_none() {
            return Err(CommandError::Refused(format!(
                "cell \"{name}\" provides or uses channels, and quantumd's channel broker is not running (see quantumd's log)"
            )));
        }

        // Needed cells first: reuse a running top-level instance, or start one.
        stack.push(name.clone());
        let mut needs = Vec::new();
        for needed in &m.needs {
            let reuse = self
                .instances
                .values()
                .find(|i| {
                    i.record.cell == needed.as_str() && i.record.parent.is_none() && matches!(i.state, State::Running | State::Starting)
                })
                .map(|i| i.record.instance.clone());
            let id = match reuse {
                Some(id) => id,
                None => {
                    let r = self
                        .catalog
                        .resolve_needed(needed, &resolved.path)
                        .map_err(|e| CommandError::NotFound(format!("cell \"{name}\" needs \"{needed}\", which cannot be found: {e}")))?;
                    let slice = self.config.cell_slice.clone();
                    self.plan(actor, r, HashMap::new(), "", None, &slice, true, steps, created, stack)?
                }
            };
            needs.push(id);
        }
        stack.pop();

        // A warm unit of the cell, when nothing else must be set up first.
        let mut warm = if parent.is_none()
            && needs.is_empty()
            && m.children.is_empty()
            && !m.state.subvolume
            && secrets.is_empty()
            && !m.channels.any()
        {
            self.take_warm(&name, resolved.hash.to_hex().as_str())
        } else {
            None
        };
        let mut id = match &warm {
            Some(w) => w.instance.clone(),
            None => format!("{name}.{}", self.take_number()?),
        };
        let family = (!m.children.is_empty()).then(|| family_slice(slice, &id));
        if let Some(f) = &family {
            steps.push(Step::Slice(SliceSpec {
                name: f.clone(),
                parent: slice.to_owned(),
                description: format!("QuantumOS cell family {id}"),
                limits: Limits::of(&m),
            }));
        }
        let record = Record {
            instance: id.clone(),
            cell: name.clone(),
            unit: crate::runtime::unit_name(&id),
            slice: family.clone().unwrap_or_else(|| slice.to_owned()),
            manifest_path: resolved.path.clone(),
            params,
            parent: parent.map(str::to_owned),
            needs: needs.clone(),
            auto_started,
            family_slice: family.clone(),
            started_usec: now_usec(),
            actor: actor.to_owned(),
            manifest_blake3: Some(resolved.hash.to_hex().to_string()),
            secrets: secrets.keys().cloned().collect(),
        };
        let mut record = record;
        let mut spec = self.build_spec(&record, &m)?;
        if let Some(w) = warm.take() {
            if crate::warm::fits(&w.spec, &spec) {
                self.warm_claimed(&w, &spec);
                warm = Some(w);
            } else {
                // This run's parameters change the sandbox: a cold start.
                self.put_back_warm(w);
                id = format!("{name}.{}", self.take_number()?);
                record.instance = id.clone();
                record.unit = crate::runtime::unit_name(&id);
                spec = self.build_spec(&record, &m)?;
            }
        }
        if !secrets.is_empty() {
            self.store
                .credentials()
                .write(&id, &secrets)
                .map_err(|e| CommandError::Backend(crate::command::error_chain(&e)))?;
        }
        for n in &needs {
            if let Some(n) = self.instances.get_mut(n) {
                n.needed_by.insert(id.clone());
            }
        }
        match warm {
            Some(w) => steps.push(Step::Claim(Box::new((record.clone(), spec.clone(), w)))),
            None => steps.push(Step::Unit(Box::new((record.clone(), spec.clone())))),
        }
        created.push(id.clone());
        if let Some(steppps) = &self.steppps {
            steppps.expect(&record.unit, subject_of(&record, Some(&m)));
        }
        self.instances.insert(
            id.clone(),
            Instance {
                record,
                manifest: Some(m.clone()),
                spec,
                state: State::Starting,
                reason: "starting".into(),
                pid: 0,
                ran: false,
                children: vec![],
                needed_by: BTreeSet::new(),
                failures: VecDeque::new(),
                last_exit: -1,
                idle: None,
                cgroup: None,
                attached: false,
                made_secrets,
            },
        );

        for (child, resolved_child) in m.children.iter().zip(resolved.children) {
            for _ in 0..child.count {
                let r = resolved_child.clone();
                let fam = family.clone().unwrap_or_else(|| slice.to_owned());
                let cid = self.plan(
                    actor,
                    r,
                    HashMap::new(),
                    "",
                    Some(&id),
                    &fam,
                    false,
                    steps,
                    created,
                    &mut vec![name.clone()],
                )?;
                if let Some(p) = self.instances.get_mut(&id) {
                    p.children.push(cid);
                }
            }
        }
        Ok(id)
    }

    fn build_spec(&self, r: &Record, m: &Manifest) -> Result<UnitSpec, CommandError> {
        let value = |n: &str| r.params.get(n).cloned();
        let subst = |s: &String| {
            substitute(s, value).map_err(|p| CommandError::Invalid(format!("cell \"{}\": parameter \"{p}\" has no value", r.cell)))
        };
        let argv = match &m.program {
            quantum_model::Program::Exec(argv) => argv.iter().map(subst).collect::<Result<Vec<_>, _>>()?,
            quantum_model::Program::Artifact(a) => {
                // Only a verified bundle's unpacked copy: a bare cell.toml
                // naming an artifact has nothing vouching for the file.
                if !self.bundles.holds(&r.manifest_path) {
                    return Err(CommandError::Refused(format!(
                        "cell \"{}\" runs artifact {}, and artifacts run only from a signed bundle (.qcb) that verifies against the trusted keys",
                        r.cell, a.path
                    )));
                }
                let dir = r.manifest_path.parent().unwrap_or(Path::new("/"));
                vec![dir.join(&a.path).display().to_string()]
            }
        };
        let mut env = BTreeMap::from([
            ("QUANTUM_CELL".to_owned(), r.cell.clone()),
            ("QUANTUM_INSTANCE".to_owned(), r.instance.clone()),
        ]);
        if let Some(b) = self.channels.as_ref().filter(|_| m.channels.any()) {
            env.insert(quantum_cell::wire::SOCKET_ENV.to_owned(), b.socket().display().to_string());
            // In the environment, not a credential: see quantum_cell::wire::TOKEN_ENV.
            let token = b
                .mint(&r.instance, m)
                .map_err(|e| CommandError::Backend(crate::command::error_chain(&e)))?;
            env.insert(quantum_cell::wire::TOKEN_ENV.to_owned(), token);
        }
        for (k, v) in &r.params {
            env.insert(format!("QUANTUM_PARAM_{}", k.to_uppercase().replace('-', "_")), v.clone());
        }
        // The identity document is signed by the start task (`Signing`), off
        // the main loop.
        Ok(UnitSpec {
            instance: r.instance.clone(),
            cell: r.cell.clone(),
            unit: r.unit.clone(),
            slice: r.slice.clone(),
            description: format!("QuantumOS cell {} ({})", r.cell, m.description),
            argv,
            env,
            limits: Limits::of(m),
            sandbox: Sandbox {
                user: m.isolation.user,
                network: m.isolation.network,
                network_allow: m.isolation.network_allow.clone(),
                readable: m.isolation.readable.iter().map(subst).collect::<Result<_, _>>()?,
                writable: m.isolation.writable.iter().map(subst).collect::<Result<_, _>>()?,
                inaccessible: vec![self.config.state_dir.display().to_string()],
            },
            state: m.state.subvolume,
            credentials: (!r.secrets.is_empty()).then(|| CredentialFiles {
                dir: self.store.credentials().dir_of(&r.instance),
                names: r.secrets.clone(),
            }),
            stdio: None,
            stdin: None,
        })
    }

    fn spawn_plan(&self, root: String, ids: Vec<String>, steps: Vec<Step>, mut reply: PendingRun) {
        let identity = self.identity.clone();
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            reply.profile.mark("spawn");
            let mut done: Vec<StopStep> = Vec::new();
            let mut failed = None;
            for step in steps {
                let (record, mut spec, warm) = match step {
                    Step::Slice(s) => match runtime.start_slice(&s).await {
                        Ok(()) => {
                            done.push(StopStep::Slice(s.name));
                            continue;
                        }
                        Err(e) => {
                            failed = Some(format!("cannot create slice {}: {e}", s.name));
                            break;
                        }
                    },
                    Step::Unit(unit) => {
                        let (record, spec) = *unit;
                        (record, spec, None)
                    }
                    Step::Claim(claim) => {
                        let (record, spec, warm) = *claim;
                        (record, spec, Some(warm))
                    }
                };
                let id = record.instance.clone();
                // Signing (milliseconds of ML-DSA under TCG) runs on
                // another thread while the record is written.
                let signing = Signing::begin(identity.clone(), &record);
                let saved = save(&store, record).await;
                reply.profile.mark("record");
                signing.finish(&mut spec).await;
                reply.profile.mark("identity");
                let result = match (saved, warm) {
                    (Err(e), _) => Err(e),
                    (Ok(()), None) => runtime.start(&spec, &mut reply.profile).await.map_err(|e| e.to_string()),
                    // A warm unit: one message, and its waiter execs in place.
                    (Ok(()), Some(warm)) => {
                        let claimed = crate::warm::claim(&warm.socket, &spec)
                            .map(|()| warm.pid)
                            .map_err(|e| format!("the warm unit {} did not take the run: {e}", spec.unit));
                        reply.profile.mark("claim");
                        claimed
                    }
                };
                let err = result.as_ref().err().cloned();
                let _ = events.send(Event::Started {
                    instance: id.clone(),
                    result,
                });
                if let Some(e) = err {
                    failed = Some(format!("cell instance {id} did not start: {e}"));
                    break;
                }
                done.push(StopStep::Unit(spec.unit));
            }
            if failed.is_some() {
                // Undo in reverse: nothing half-assembled is left running.
                for step in done.into_iter().rev() {
                    let _ = match step {
                        StopStep::Unit(u) => runtime.stop(&u).await,
                        StopStep::Slice(s) => runtime.stop_slice(&s).await,
                    };
                }
            }
            let _ = events.send(Event::PlanDone { root, ids, failed, reply });
        });
    }

    async fn started(&mut self, id: &str, result: Result<u32, String>) {
        // (A failed start's record is removed by `plan_done`.)
        let Some(inst) = self.instances.get_mut(id) else {
            if result.is_ok() {
                self.stop_unwanted(crate::runtime::unit_name(id));
            }
            return;
        };
        match result {
            Ok(pid) => {
                inst.pid = pid;
                inst.ran = true;
                if inst.state == State::Stopping {
                    let unit = inst.record.unit.clone();
                    self.stop_unwanted(unit);
                } else if inst.state == State::Starting {
                    inst.state = State::Running;
                    inst.reason = format!("running as pid {pid}");
                    let (cell, reason) = (inst.record.cell.clone(), inst.reason.clone());
                    let record = inst.record.clone();
                    self.emit(id, &cell, "running", &reason).await;
                    let e = entry_for(&record.actor, &Action::RUN, &record);
                    self.record(e.detail(format!("{id} as {} ({reason})", record.unit)));
                }
            }
            Err(e) => {
                inst.reason = e;
            }
        }
    }

    /// A unit whose start finished after it was asked to stop (its stop may
    /// have found nothing yet to stop): stopped now, so that nothing runs
    /// that quantumd has let go of.
    fn stop_unwanted(&self, unit: String) {
        tracing::info!(unit, "stopping a unit that came up after its stop");
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.stop(&unit).await {
                tracing::warn!(unit, error = %crate::command::error_chain(&e), "cannot stop a unit that came up after its stop");
            }
        });
    }

    async fn plan_done(&mut self, root: String, ids: Vec<String>, failed: Option<String>, pending: PendingRun) {
        let PendingRun {
            reply,
            attached,
            reach,
            secrets,
            substitution,
            mut profile,
        } = pending;
        match failed {
            None => {
                profile.mark("done");
                profile.log(&root);
                let info = self.instances.get(&root).map(info_of).unwrap_or_else(|| {
                    // It already ended (a short job); report how.
                    self.ended
                        .iter()
                        .rev()
                        .find(|e| e.info.instance == root)
                        .map(|e| e.info.clone())
                        .unwrap_or_else(|| CellInfo {
                            instance: root.clone(),
                            cell: String::new(),
                            state: "exited".into(),
                            reason: String::new(),
                            unit: String::new(),
                            pid: 0,
                            parent: String::new(),
                            started_usec: 0,
                        })
                });
                let (asked, substitution) = substitution.map(|s| (s.asked, s.message)).unwrap_or_default();
                let _ = reply.send(Ok(Assembled {
                    started: Started {
                        info,
                        attached,
                        reach,
                        secrets,
                    },
                    asked,
                    substitution,
                }));
            }
            Some(why) => {
                if let Some(inst) = self.instances.get(&root) {
                    let e = entry_for(&inst.record.actor, &Action::RUN, &inst.record);
                    self.record(e.detail(root.clone()).error(why.clone()));
                }
                for id in ids.iter().rev() {
                    self.finish(id, "failed", &why).await;
                }
                let _ = reply.send(Err(CommandError::Backend(why)));
            }
        }
    }

    // ----- stop -----------------------------------------------------------

    fn stop(&mut self, actor: &str, target: &str, reply: Reply<Vec<String>>) {
        let roots: Vec<String> = if self.instances.contains_key(target) {
            vec![target.to_owned()]
        } else {
            self.instances
                .values()
                .filter(|i| i.record.cell == target && i.record.parent.is_none())
                .map(|i| i.record.instance.clone())
                .collect()
        };
        if roots.is_empty() {
            let what = if target.contains('.') { "instance" } else { "running cell" };
            let _ = reply.send(Err(CommandError::NotFound(format!("no {what} \"{target}\""))));
            return;
        }
        for r in &roots {
            let users: Vec<String> = self.instances[r].needed_by.iter().filter(|u| !roots.contains(u)).cloned().collect();
            if !users.is_empty() {
                let _ = reply.send(Err(CommandError::Refused(format!(
                    "{r} is needed by {}; stop that first",
                    users.join(", ")
                ))));
                return;
            }
        }
        let (ids, steps) = self.stop_plan(&roots);
        for r in &roots {
            if let Some(inst) = self.instances.get(r) {
                let e = entry_for(actor, &Action::STOP, &inst.record);
                self.record(e.detail(format!("{r} on request")));
            }
        }
        self.spawn_stop(ids, steps, "stopped on request".into(), Some(reply));
    }

    /// What stopping `roots` takes: children first, then each root, then the
    /// needed cells that were started only for them and nobody else uses.
    fn stop_plan(&mut self, roots: &[String]) -> (Vec<String>, Vec<StopStep>) {
        let mut ids = Vec::new();
        let mut steps = Vec::new();
        let mut leaving: BTreeSet<String> = BTreeSet::new();
        for r in roots {
            self.collect_family(r, &mut ids, &mut steps, &mut leaving);
        }
        // Needed cells whose every user is leaving go last.
        let mut i = 0;
        while i < ids.len() {
            let needs = self.instances.get(&ids[i]).map(|x| x.record.needs.clone()).unwrap_or_default();
            for n in needs {
                let Some(ni) = self.instances.get(&n) else { continue };
                if ni.record.auto_started && !leaving.contains(&n) && ni.needed_by.iter().all(|u| leaving.contains(u)) {
                    self.collect_family(&n, &mut ids, &mut steps, &mut leaving);
                }
            }
            i += 1;
        }
        for id in &ids {
            if let Some(inst) = self.instances.get_mut(id) {
                inst.state = State::Stopping;
            }
        }
        (ids, steps)
    }

    fn collect_family(&self, id: &str, ids: &mut Vec<String>, steps: &mut Vec<StopStep>, leaving: &mut BTreeSet<String>) {
        let Some(inst) = self.instances.get(id) else { return };
        if !leaving.insert(id.to_owned()) {
            return;
        }
        for c in &inst.children {
            self.collect_family(c, ids, steps, leaving);
        }
        ids.push(id.to_owned());
        steps.push(StopStep::Unit(inst.record.unit.clone()));
        if let Some(f) = &inst.record.family_slice {
            steps.push(StopStep::Slice(f.clone()));
        }
    }

    fn spawn_stop(&self, ids: Vec<String>, steps: Vec<StopStep>, reason: String, reply: Option<Reply<Vec<String>>>) {
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            for step in steps {
                let r = match &step {
                    StopStep::Unit(u) => runtime.stop(u).await,
                    StopStep::Slice(s) => runtime.stop_slice(s).await,
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "stop failed");
                }
            }
            let _ = events.send(Event::StopDone { ids, reason, reply });
        });
    }

    async fn stop_done(&mut self, ids: Vec<String>, reason: &str, reply: Option<Reply<Vec<String>>>) {
        for id in &ids {
            self.finish(id, "stopped", reason).await;
        }
        if let Some(reply) = reply {
            let _ = reply.send(Ok(ids));
        }
    }

    /// Forgets a live instance: record removed, links cut, moved to `ended`.
    async fn finish(&mut self, id: &str, state: &str, reason: &str) {
        if let Some(broker) = &self.channels {
            broker.ended(id);
        }
        let Some(inst) = self.instances.remove(id) else { return };
        self.store.remove(id);
        for n in &inst.record.needs {
            if let Some(n) = self.instances.get_mut(n) {
                n.needed_by.remove(id);
            }
        }
        if let Some(p) = inst.record.parent.as_ref().and_then(|p| self.instances.get_mut(p)) {
            p.children.retain(|c| c != id);
        }
        let mut info = info_of(&inst);
        info.state = state.to_owned();
        info.reason = reason.to_owned();
        info.pid = 0;
        self.emit(id, &inst.record.cell, state, reason).await;
        let ended_usec = now_usec();
        if let Some(steppps) = &self.steppps {
            let ran = ended_usec.saturating_sub(inst.record.started_usec);
            steppps.ended(&inst.record.unit, std::time::Duration::from_micros(if inst.ran { ran } else { 0 }));
        }
        let usage = self.steppps.as_ref().and_then(|s| s.take_usage(id));
        // A start that failed is no run of the cell: nothing to learn from.
        if let Some(history) = self.history.as_ref().filter(|_| inst.ran || usage.is_some()) {
            history.record_end(&inst.record.cell, inst.record.started_usec, ended_usec, state, usage);
        }
        let ended = EndedInstance {
            info,
            status: inst.last_exit,
            actor: inst.record.actor.clone(),
            ended_usec,
        };
        for waiter in self.waiters.remove(id).unwrap_or_default() {
            let _ = waiter.send(Ok(ended.answer()));
        }
        self.ended.push_back(ended);
        while self.ended.len() > self.config.keep_ended {
            self.ended.pop_front();
        }
    }

    // ----- exits, restarts, blacklisting ------------------------------------

    async fn unit_ended(&mut self, ev: UnitEvent) {
        if self.trigger_unit_event(&ev.unit, &ev.exit) || self.warm_unit_ended(&ev.unit) {
            return;
        }
        let Some(id) = instance_of_unit(&ev.unit).map(str::to_owned) else {
            return;
        };
        // Its process is gone: the streams it served end for their peers
        // (quantumd's copy of their ends would keep them open), whether or
        // not the instance is still known (a stop may have finished it).
        if let Some(broker) = &self.channels {
            broker.ended(&id);
        }
        let Some(inst) = self.instances.get_mut(&id) else { return };
        inst.last_exit = ev.exit.code();
        inst.ran = true;
        if inst.state == State::Stopping {
            return;
        }
        if inst.state == State::Starting {
            // A quick task can end before its start is confirmed (`started`
            // then finds it gone): it ran all the same, and the trail must
            // say so before it says how it ended.
            let e = entry_for(&inst.record.actor, &Action::RUN, &inst.record);
            record_to(
                &self.trail,
                e.detail(format!("{id} as {} (ended before its start was confirmed)", inst.record.unit)),
            );
        }
        let what = ev.exit.describe();
        if ev.exit == crate::runtime::Exit::OutOfMemory {
            let cell = inst.record.cell.clone();
            self.trigger_cell_event(&cell, quantum_model::trigger::EventState::OutOfMemory);
        }
        let Some(inst) = self.instances.get_mut(&id) else { return };
        let policy = inst.manifest.as_ref().map(|m| m.lifecycle.clone());
        // An attached run's failure goes back to the caller, who sees it
        // happen; a restart would run the cell again behind their back.
        let should_restart = !inst.attached
            && match policy.as_ref().map(|l| l.restart) {
                Some(Restart::Always) => true,
                Some(Restart::OnFailure) => !ev.exit.is_success(),
                _ => false,
            };
        let cell = inst.record.cell.clone();
        if should_restart {
            let l = policy.unwrap_or_default();
            let now = Instant::now();
            inst.failures.retain(|t| now.duration_since(*t) < l.restart_window.as_std());
            inst.failures.push_back(now);
            let n = inst.failures.len();
            if n as u32 > l.max_restarts {
                let blacklisting = Blacklisting {
                    until: now + Duration::from_secs(self.config.blacklist_seconds),
                    what,
                    ended: n,
                    window: l.restart_window,
                    max_restarts: l.max_restarts,
                };
                let why = blacklisting.why();
                tracing::warn!(cell, instance = id, reason = why, "cell blacklisted");
                let e = entry_for("quantumd", &Action::BLACKLIST, &inst.record);
                record_to(&self.trail, e.detail(id.clone()).error(why.clone()));
                self.blacklist.insert(cell.clone(), blacklisting);
                self.end_family(&id, "failed", &format!("blacklisted: {why}")).await;
                return;
            }
            let delay = backoff(n);
            inst.state = State::Restarting;
            inst.pid = 0;
            inst.reason = format!("{what}; restart {n} of {} in {:.1}s", l.max_restarts, delay.as_secs_f32());
            let reason = inst.reason.clone();
            let e = entry_for("quantumd", &Action::RESTART, &inst.record);
            record_to(&self.trail, e.detail(format!("{id}: {reason}")));
            self.emit(&id, &cell, "restarting", &reason).await;
            let events = self.events.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = events.send(Event::Restart(id));
            });
            return;
        }
        let state = if ev.exit.is_success() { "exited" } else { "failed" };
        let mut e = entry_for("quantumd", &Action::EXIT, &inst.record).detail(format!("{id}: {what}"));
        if !ev.exit.is_success() {
            e = e.error(what.clone());
        }
        record_to(&self.trail, e);
        self.end_family(&id, state, &what).await;
    }

    /// An instance ended on its own: stop what hangs on it (children,
    /// needed cells started for it alone) and forget it.
    async fn end_family(&mut self, id: &str, state: &str, reason: &str) {
        let (ids, steps) = self.stop_plan(&[id.to_owned()]);
        self.finish(id, state, reason).await;
        let rest: Vec<String> = ids.into_iter().filter(|i| i != id).collect();
        let steps: Vec<StopStep> = steps
            .into_iter()
            .filter(|s| !matches!(s, StopStep::Unit(u) if instance_of_unit(u) == Some(id)))
            .collect();
        if !rest.is_empty() || !steps.is_empty() {
            self.spawn_stop(rest, steps, format!("{id} ended"), None);
        }
    }

    fn restart(&mut self, id: &str) {
        let Some(inst) = self.instances.get_mut(id) else { return };
        if inst.state != State::Restarting {
            return;
        }
        inst.state = State::Starting;
        let mut spec = inst.spec.clone();
        let signing = Signing::begin(self.identity.clone(), &inst.record);
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            signing.finish(&mut spec).await;
            let result = runtime.start(&spec, &mut StartProfile::begin()).await;
            match result {
                Ok(pid) => {
                    let _ = events.send(Event::Started {
                        instance: id,
                        result: Ok(pid),
                    });
                }
                Err(e) => {
                    // A failed restart counts as another failure.
                    let _ = events.send(Event::Unit(UnitEvent {
                        unit: spec.unit,
                        exit: e.into_exit(),
                    }));
                }
            }
        });
    }

    // ----- periodic work ------------------------------------------------

    async fn tick(&mut self) {
        self.publish_watched();
        self.network_anomalies().await;
        self.trigger_tick();
        self.prewarm_tick();
        let now = Instant::now();
        self.blacklist.retain(|_, b| b.until > now);
        let mut idle = Vec::new();
        for inst in self.instances.values_mut() {
            let Some(m) = &inst.manifest else { continue };
            let timeout = m.lifecycle.idle_timeout;
            if inst.state != State::Running
                || timeout.is_zero()
                || !inst.needed_by.is_empty()
                || !inst.children.is_empty()
                || inst.record.parent.is_some()
            {
                continue;
            }
            let Some(usage) = self.runtime.cpu_usage_usec(&inst.record.unit, &inst.record.slice) else {
                continue;
            };
            match inst.idle {
                Some((last, since)) if last == usage => {
                    if now.duration_since(since) >= timeout.as_std() {
                        idle.push((inst.record.instance.clone(), timeout));
                    }
                }
                _ => inst.idle = Some((usage, now)),
            }
        }
        for (id, timeout) in idle {
            tracing::info!(instance = id, "stopping idle cell");
            let (ids, steps) = self.stop_plan(std::slice::from_ref(&id));
            self.spawn_stop(ids, steps, format!("idle for {timeout}"), None);
        }
    }

    // ----- STEPPPS ----------------------------------------------------------

    /// Tells the sampler which cells run, with their objectives.
    fn publish_watched(&mut self) {
        let Some(steppps) = &self.steppps else { return };
        let mut watched = Vec::new();
        for inst in self.instances.values_mut() {
            if inst.state != State::Running {
                continue;
            }
            if inst.cgroup.is_none() {
                inst.cgroup = self.runtime.cgroup_of(&inst.record.unit, &inst.record.slice);
            }
            let Some(cgroup) = inst.cgroup.clone() else { continue };
            let objective = inst.manifest.as_ref().and_then(|m| {
                Some(quantum_steppps::objective::Objective {
                    runq_latency_p99: m.objectives.runq_latency_p99?.as_std(),
                    manifest_weight: inst.spec.limits.cpu_weight,
                })
            });
            watched.push(crate::steppps::Watched {
                cell: inst.record.cell.clone(),
                instance: inst.record.instance.clone(),
                cgroup,
                objective,
                subject: subject_of(&inst.record, inst.manifest.as_deref()),
            });
        }
        steppps.watch(watched);
    }

    /// Applies a CPU weight the objective controller chose, off the loop;
    /// logged, recorded in the trail (with the error, when the backend
    /// cannot apply it) and signalled on the bus.
    fn tune(&mut self, t: crate::steppps::Tuning) {
        let Some(inst) = self.instances.get(&t.instance) else { return };
        let d = t.decision;
        let why = d.reason.to_string();
        tracing::info!(instance = t.instance, old = d.old_weight, new = d.new_weight, reason = %why, "tuning CPU weight");
        let entry = entry_for("quantumd", &Action::TUNE, &inst.record)
            .detail(format!("{}: CPUWeight {} -> {}: {why}", t.instance, d.old_weight, d.new_weight));
        let trail = self.trail.as_ref().ok().cloned();
        let (runtime, unit, bus, cell) = (
            self.runtime.clone(),
            inst.record.unit.clone(),
            self.bus.clone(),
            inst.record.cell.clone(),
        );
        tokio::spawn(async move {
            let applied = runtime.set_cpu_weight(&unit, d.new_weight).await;
            if let Some(trail) = trail {
                trail.record(match &applied {
                    Ok(()) => entry,
                    Err(e) => entry.error(crate::command::error_chain(e)),
                });
            }
            if let Err(e) = applied {
                tracing::warn!(unit, error = %crate::command::error_chain(&e), "cannot change the CPU weight");
                return;
            }
            if let Some(conn) = bus {
                let signal = (t.instance.as_str(), cell.as_str(), d.old_weight, d.new_weight, why.as_str());
                if let Err(e) = conn
                    .emit_signal(None::<()>, quantum_bus::OBJECT_PATH, quantum_bus::INTERFACE, "CellTuned", &signal)
                    .await
                {
                    tracing::warn!(error = %e, "cannot emit CellTuned");
                }
            }
        });
    }

    /// Refusals by the network allow-lists since the last tick, as anomalies.
    async fn network_anomalies(&mut self) {
        let counts = self.runtime.net_refusals();
        if counts.is_empty() {
            return;
        }
        for (unit, new, total) in self.refusals.observe(&counts) {
            let Some(inst) = self.instances.values().find(|i| i.record.unit == unit) else {
                continue;
            };
            let Some(policy) = inst.manifest.as_ref().map(|m| m.policy) else {
                continue;
            };
            if policy.on_anomaly == quantum_model::OnAnomaly::Ignore {
                continue;
            }
            let anomaly = crate::anomaly::Anomaly {
                instance: inst.record.instance.clone(),
                cell: inst.record.cell.clone(),
                kind: crate::anomaly::Kind::Network,
                message: format!("{new} connection(s) or datagram(s) refused by isolation.network-allow ({total} since it started)"),
                response: policy.on_anomaly,
            };
            self.anomaly(anomaly).await;
        }
    }

    /// Records an anomaly in the trail, signals it (`CellAlert`) and, when
    /// the cell's `[policy] on-anomaly` says so, stops the instance.
    async fn anomaly(&mut self, a: crate::anomaly::Anomaly) {
        // A task of a moment may have ended before its exec was read: what
        // it did is alerted all the same, with nothing left to stop.
        let inst = self.instances.get(&a.instance);
        tracing::warn!(
            instance = a.instance,
            cell = a.cell,
            kind = a.kind.as_str(),
            response = a.response.as_str(),
            message = a.message,
            "anomaly"
        );
        if let Ok(trail) = &self.trail {
            let entry = match inst {
                Some(inst) => entry_for("quantumd", &Action::ALERT, &inst.record),
                None => trail::entry("quantumd", &Action::ALERT).cell(a.cell.clone()),
            };
            trail.record(entry.detail(a.detail()));
        }
        let running = inst.is_some_and(|i| matches!(i.state, State::Starting | State::Running | State::Restarting));
        if let Some(conn) = &self.bus {
            let signal = (
                a.instance.as_str(),
                a.cell.as_str(),
                a.kind.as_str(),
                a.response.as_str(),
                a.message.as_str(),
            );
            if let Err(e) = conn
                .emit_signal(None::<()>, quantum_bus::OBJECT_PATH, quantum_bus::INTERFACE, "CellAlert", &signal)
                .await
            {
                tracing::warn!(error = %e, "cannot emit CellAlert");
            }
        }
        if a.response == quantum_model::OnAnomaly::Stop && running {
            let (ids, steps) = self.stop_plan(std::slice::from_ref(&a.instance));
            self.spawn_stop(ids, steps, format!("anomaly ({}): {}", a.kind.as_str(), a.message), None);
        }
    }

    // ----- reads ------------------------------------------------------------

    /// Answers when instance `id` ends (at once if it already has).
    fn wait(&mut self, id: &str, reply: Reply<Ended>) {
        if self.instances.contains_key(id) {
            let waiters = self.waiters.entry(id.to_owned()).or_default();
            // Callers whose wait timed out have gone; forget them.
            waiters.retain(|w| !w.is_closed());
            waiters.push(reply);
        } else if let Some(ended) = self.ended.iter().rev().find(|e| e.info.instance == id) {
            let _ = reply.send(Ok(ended.answer()));
        } else {
            let _ = reply.send(Err(CommandError::NotFound(format!("no instance \"{id}\""))));
        }
    }

    /// The instances `target` names: that instance, or every instance of
    /// that cell, live or ended, oldest first.
    fn log_targets(&self, target: &str) -> Result<Vec<LogTarget>, CommandError> {
        let matches = |instance: &str, cell: &str| instance == target || cell == target;
        let mut v: Vec<LogTarget> = self
            .ended
            .iter()
            .filter(|e| matches(&e.info.instance, &e.info.cell))
            .map(|e| LogTarget {
                instance: e.info.instance.clone(),
                unit: e.info.unit.clone(),
                actor: e.actor.clone(),
                running: false,
                started_usec: e.info.started_usec,
                ended_usec: Some(e.ended_usec),
            })
            .collect();
        v.extend(
            self.instances
                .values()
                .filter(|i| matches(&i.record.instance, &i.record.cell))
                .map(|i| LogTarget {
                    instance: i.record.instance.clone(),
                    unit: i.record.unit.clone(),
                    actor: i.record.actor.clone(),
                    running: true,
                    started_usec: i.record.started_usec,
                    ended_usec: None,
                }),
        );
        if v.is_empty() {
            return Err(CommandError::NotFound(format!("no cell or instance \"{target}\"")));
        }
        Ok(v)
    }

    fn list(&self) -> Vec<CellInfo> {
        let mut v: Vec<CellInfo> = self.ended.iter().map(|e| e.info.clone()).collect();
        v.extend(self.instances.values().map(info_of));
        v.extend(self.warm_infos());
        v
    }

    fn inspect(&self, target: &str) -> Result<CellDetail, CommandError> {
        let inst = self.instances.get(target).or_else(|| {
            self.instances
                .values()
                .filter(|i| i.record.cell == target)
                .max_by_key(|i| i.record.started_usec)
        });
        let Some(inst) = inst else {
            if let Some(ended) = self.ended.iter().rev().find(|e| e.info.instance == target || e.info.cell == target) {
                return Ok(CellDetail {
                    info: ended.info.clone(),
                    manifest_path: String::new(),
                    version: String::new(),
                    argv: vec![],
                    params: HashMap::new(),
                    properties: HashMap::new(),
                    needs: vec![],
                    children: vec![],
                    restarts: 0,
                    last_exit: -1,
                    reach: String::new(),
                });
            }
            return Err(CommandError::NotFound(format!("no cell or instance \"{target}\"")));
        };
        Ok(CellDetail {
            info: info_of(inst),
            manifest_path: inst.record.manifest_path.display().to_string(),
            version: inst.manifest.as_ref().map(|m| m.version.to_string()).unwrap_or_default(),
            argv: inst.spec.argv.clone(),
            params: inst.record.params.clone().into_iter().collect(),
            properties: self.runtime.properties(&inst.spec).into_iter().collect(),
            needs: inst.record.needs.clone(),
            children: inst.children.clone(),
            restarts: inst.failures.len() as u32,
            last_exit: inst.last_exit,
            reach: reach_of(inst),
        })
    }
}

impl EndedInstance {
    fn answer(&self) -> Ended {
        Ended {
            ended: true,
            status: self.status,
            state: self.info.state.clone(),
            reason: self.info.reason.clone(),
        }
    }
}

/// How to reach `i`: its manifest's `reach` with the run's parameters;
/// empty when it says nothing.
fn reach_of(i: &Instance) -> String {
    let params = &i.record.params;
    i.manifest
        .as_ref()
        .and_then(|m| m.lifecycle.reach.as_deref())
        .and_then(|r| substitute(r, |n| params.get(n).cloned()).ok())
        .unwrap_or_default()
}

fn info_of(i: &Instance) -> CellInfo {
    CellInfo {
        instance: i.record.instance.clone(),
        cell: i.record.cell.clone(),
        state: i.state.as_str().to_owned(),
        reason: i.reason.clone(),
        unit: i.record.unit.clone(),
        pid: i.pid,
        parent: i.record.parent.clone().unwrap_or_default(),
        started_usec: i.record.started_usec,
    }
}

fn info_of_record(r: &Record, state: &str, reason: &str) -> CellInfo {
    CellInfo {
        instance: r.instance.clone(),
        cell: r.cell.clone(),
        state: state.to_owned(),
        reason: reason.to_owned(),
        unit: r.unit.clone(),
        pid: 0,
        parent: r.parent.clone().unwrap_or_default(),
        started_usec: r.started_usec,
    }
}

/// The spec of a unit adopted without a manifest: enough to stop it.
fn bare_spec(r: &Record) -> UnitSpec {
    UnitSpec {
        instance: r.instance.clone(),
        cell: r.cell.clone(),
        unit: r.unit.clone(),
        slice: r.slice.clone(),
        description: format!("QuantumOS cell {}", r.cell),
        argv: vec![],
        env: BTreeMap::new(),
        limits: Limits {
            memory_min: 0,
            memory_max: 0,
            cpu_quota_centis: 0,
            cpu_weight: 0,
            io_weight: 0,
            tasks_max: 0,
        },
        sandbox: Sandbox {
            user: quantum_model::UserMode::Dynamic,
            network: quantum_model::Network::None,
            network_allow: vec![],
            readable: vec![],
            writable: vec![],
            inaccessible: vec![],
        },
        state: false,
        credentials: None,
        stdio: None,
        stdin: None,
    }
}

/// A run's parameter values.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// All but the secrets: substituted, recorded, shown.
    pub values: BTreeMap<String, String>,
    /// Secret parameters (crate::credentials), given or made.
    pub secrets: BTreeMap<String, String>,
    /// The secrets quantumd made because the run gave none, for the
    /// caller's answer.
    pub made: BTreeMap<String, String>,
}

/// Parameter values for a run: the given ones checked against their
/// declared types, defaults for the rest, relative paths made absolute
/// against `base`, a random value for a secret not given.
pub fn resolve_params(m: &Manifest, mut given: HashMap<String, String>, base: &Path) -> Result<Params, CommandError> {
    let cell = m.name.as_str();
    let mut out = Params::default();
    let declared: Vec<&str> = m.params.keys().map(String::as_str).collect();
    if let Some(unknown) = given.keys().find(|k| !m.params.contains_key(*k)) {
        let takes = if declared.is_empty() {
            "it takes none".to_owned()
        } else {
            format!("it takes {}", declared.join(", "))
        };
        return Err(CommandError::Invalid(format!(
            "cell \"{cell}\" has no parameter \"{unknown}\" ({takes})"
        )));
    }
    for (name, spec) in &m.params {
        if spec.secret {
            let value = match given.remove(name) {
                Some(v) => v,
                None => {
                    let made = crate::credentials::generate().map_err(|e| CommandError::Backend(crate::command::error_chain(&e)))?;
                    out.made.insert(name.clone(), made.clone());
                    made
                }
            };
            spec.kind
                .check(&value)
                .map_err(|e| CommandError::Invalid(format!("cell \"{cell}\", parameter \"{name}\": {e}")))?;
            out.secrets.insert(name.clone(), value);
            continue;
        }
        let value = match given.remove(name).or_else(|| spec.default.clone()) {
            Some(v) => v,
            None => {
                return Err(CommandError::Invalid(format!(
                    "cell \"{cell}\" needs parameter \"{name}\" ({}: {})",
                    spec.kind, spec.description
                )))
            }
        };
        spec.kind
            .check(&value)
            .map_err(|e| CommandError::Invalid(format!("cell \"{cell}\", parameter \"{name}\": {e}")))?;
        let value = if spec.kind == ParamType::Path && !value.starts_with('/') {
            normalize(&base.join(&value))
        } else {
            value
        };
        out.values.insert(name.clone(), value);
    }
    Ok(out)
}

/// `/a/b/./c/..` -> `/a/b` without touching the file system.
fn normalize(p: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    let mut s = String::from("/");
    s.push_str(&parts.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join("/"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(src: &str) -> Manifest {
        quantum_model::parse_manifest(src).unwrap()
    }

    const WEB: &str = r#"
[cell]
name = "web"
version = "1.0.0"
description = "serve"
exec = ["/usr/bin/python3", "-m", "http.server", "--directory", "{dir}", "{port}"]
[params.dir]
type = "path"
default = "."
[params.port]
type = "port"
default = 8080
[params.token]
type = "string"
"#;

    #[test]
    fn params_get_defaults_types_and_absolute_paths() {
        let m = manifest(WEB);
        let given = HashMap::from([("token".to_owned(), "x".to_owned()), ("dir".to_owned(), "../srv".to_owned())]);
        let p = resolve_params(&m, given, Path::new("/home/u/work")).unwrap().values;
        assert_eq!(p["dir"], "/home/u/srv");
        assert_eq!(p["port"], "8080");

        let err = resolve_params(&m, HashMap::new(), Path::new("/")).unwrap_err().to_string();
        assert_eq!(err, "cell \"web\" needs parameter \"token\" (string: )");
        let bad_port = HashMap::from([("token".to_owned(), "x".to_owned()), ("port".to_owned(), "http".to_owned())]);
        let err = resolve_params(&m, bad_port, Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("parameter \"port\": \"http\" is not a port"), "{err}");
        let unknown = HashMap::from([("prot".to_owned(), "1".to_owned())]);
        let err = resolve_params(&m, unknown, Path::new("/")).unwrap_err().to_string();
        assert_eq!(err, "cell \"web\" has no parameter \"prot\" (it takes dir, port, token)");
    }

    #[test]
    fn secrets_are_kept_apart_and_made_when_not_given() {
        let m = manifest(
            r#"
[cell]
name = "db"
version = "1.0.0"
description = "a database"
exec = ["/usr/bin/db", "{port}"]
[params.port]
type = "port"
default = 5432
[params.password]
type = "string"
secret = true
"#,
        );
        let made = resolve_params(&m, HashMap::new(), Path::new("/")).unwrap();
        assert_eq!(made.values, BTreeMap::from([("port".to_owned(), "5432".to_owned())]));
        assert_eq!(made.secrets.keys().collect::<Vec<_>>(), ["password"]);
        assert_eq!(made.made, made.secrets, "the caller is told the secret quantumd made");
        assert_eq!(made.secrets["password"].len(), 32);
        let again = resolve_params(&m, HashMap::new(), Path::new("/")).unwrap();
        assert_ne!(again.secrets, made.secrets, "every run gets its own");

        let given = HashMap::from([("password".to_owned(), "hunter2".to_owned())]);
        let given = resolve_params(&m, given, Path::new("/")).unwrap();
        assert_eq!(given.secrets["password"], "hunter2");
        assert!(given.made.is_empty(), "a secret the caller gave is not repeated back");
    }

    #[test]
    fn restart_backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }
}
