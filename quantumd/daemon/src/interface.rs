//! The `org.quantumos.Quantum1` D-Bus interface: a thin front that checks
//! access, decodes arguments, forwards a [`Command`] and maps errors.

use std::collections::HashMap;
use std::sync::Arc;

use quantum_bus::{
    Assembled, CellDetail, CellInfo, CellStateReport, Ended, Error, NodeIdentity, RunOptions, Started, TrailEntry, TrailReport,
    TriggerInfo, ACTION_MANAGE,
};
use quantum_trail::{Action, Outcome};
use tokio::sync::{mpsc, oneshot};
use zbus::message::Header;

use crate::command::{error_chain, Command, CommandError, RunRequest};
use crate::identity::Identity;
use crate::planner::Planner;
use crate::polkit::Authorizer;
use crate::trail::{self, Recorder};

#[derive(Clone)]
pub struct Quantum1 {
    pub commands: mpsc::Sender<Command>,
    pub authorizer: Authorizer,
    pub backend: String,
    pub planner: Arc<Planner>,
    pub identity: Identity,
    /// The trail, when it could be opened (plans and executions go to it).
    pub trail: Option<Recorder>,
    pub trail_dir: std::path::PathBuf,
    pub steppps: crate::steppps::Steppps,
    /// Where the cells' output is read from.
    pub logs: crate::logs::Source,
    /// STEPPPS PSYCHOLOGY: the usage history behind `Recommend`.
    pub history: crate::psychology::History,
    /// The channel broker, when it runs.
    pub channels: Option<crate::channels::Broker>,
    /// The cell network (standalone when there is no cluster file).
    pub cluster: crate::cluster::Membership,
}

impl Quantum1 {
    fn broker(&self) -> Result<&crate::channels::Broker, Error> {
        self.channels
            .as_ref()
            .ok_or_else(|| Error::Refused("quantumd's channel broker is not running (see quantumd's log)".to_owned()))
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Backend("quantumd is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Backend("quantumd dropped the request".into()))?
            .map_err(Error::from)
    }

    fn record(&self, entry: quantum_trail::NewEntry) {
        if let Some(t) = &self.trail {
            t.record(entry);
        }
    }

    async fn authorize(&self, header: &Header<'_>) -> Result<(), Error> {
        let sender = self.authorizer.caller(header);
        self.authorizer
            .check(&sender, ACTION_MANAGE)
            .await
            .map_err(|e| Error::from(CommandError::Denied(e)))
    }

    /// `Run`, `RunAttached` and their `...With` forms: authorize, then one
    /// `Command::Run`.
    async fn start(
        &self,
        header: &Header<'_>,
        source: String,
        params: HashMap<String, String>,
        cwd: String,
        options: RunOptions,
        stdio: Option<crate::runtime::Stdio>,
    ) -> Result<Assembled, Error> {
        let mut profile = crate::start_profile::StartProfile::begin();
        self.authorize(header).await?;
        profile.mark("authorize");
        let actor = actor(&self.authorizer, header).await;
        profile.mark("caller");
        self.call(|reply| {
            Command::Run(RunRequest {
                actor,
                source,
                params,
                cwd,
                stdio,
                substitute: options.substitute,
                reply,
                profile,
            })
        })
        .await
    }

    /// Runs an asked plan's cells in order through `Command::Run`, each
    /// task attached to `stdio` when given.
    async fn execute_plan(
        &self,
        header: &Header<'_>,
        plan_id: String,
        cwd: String,
        stdio: Option<crate::runtime::Stdio>,
    ) -> Result<Vec<Started>, Error> {
        self.authorize(header).await?;
        let actor = actor(&self.authorizer, header).await;
        let plan = match self.planner.take(&plan_id, &self.authorizer.caller(header)) {
            Ok(plan) => plan,
            Err(e) => {
                self.record(
                    trail::entry(&actor, &Action::EXECUTE)
                        .detail(format!("plan {plan_id}"))
                        .error(e.to_string()),
                );
                return Err(e.into());
            }
        };
        self.record(trail::entry(&actor, &Action::EXECUTE).detail(format!("plan {plan_id}: {:?}", plan.intent)));
        let mut started: Vec<Started> = Vec::new();
        for (i, step) in plan.cells.iter().enumerate() {
            let params = step.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let result = self
                .call(|reply| {
                    Command::Run(RunRequest {
                        actor: actor.clone(),
                        source: step.name.clone(),
                        params,
                        cwd: cwd.clone(),
                        stdio: stdio.clone(),
                        // The asker confirmed these very cells (and what
                        // each may read and write): no stand-in.
                        substitute: false,
                        reply,
                        profile: crate::start_profile::StartProfile::begin(),
                    })
                })
                .await;
            match result {
                Ok(assembled) => started.push(assembled.started),
                Err(e) => {
                    let already = if started.is_empty() {
                        String::new()
                    } else {
                        let ids: Vec<&str> = started.iter().map(|c| c.info.instance.as_str()).collect();
                        format!(" (still running from earlier steps: {})", ids.join(", "))
                    };
                    let message = format!("step {} of the plan, cell \"{}\": {}{already}", i + 1, step.name, e.message());
                    return Err(match e {
                        Error::NotFound(_) => Error::NotFound(message),
                        Error::InvalidManifest(_) => Error::InvalidManifest(message),
                        Error::AccessDenied(_) => Error::AccessDenied(message),
                        Error::Refused(_) => Error::Refused(message),
                        Error::Backend(_) | Error::ZBus(_) => Error::Backend(message),
                    });
                }
            }
        }
        Ok(started)
    }
}

#[zbus::interface(name = "org.quantumos.Quantum1")]
impl Quantum1 {
    async fn run(
        &self,
        #[zbus(header)] header: Header<'_>,
        source: String,
        params: HashMap<String, String>,
        cwd: String,
    ) -> Result<CellInfo, Error> {
        let options = RunOptions::default();
        self.start(&header, source, params, cwd, options, None)
            .await
            .map(|a| a.started.info)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_attached(
        &self,
        #[zbus(header)] header: Header<'_>,
        source: String,
        params: HashMap<String, String>,
        cwd: String,
        stdin: zbus::zvariant::OwnedFd,
        stdout: zbus::zvariant::OwnedFd,
        stderr: zbus::zvariant::OwnedFd,
    ) -> Result<Started, Error> {
        let stdio = crate::runtime::Stdio::new(stdin.into(), stdout.into(), stderr.into());
        let options = RunOptions::default();
        self.start(&header, source, params, cwd, options, Some(stdio))
            .await
            .map(|a| a.started)
    }

    async fn run_with(
        &self,
        #[zbus(header)] header: Header<'_>,
        source: String,
        params: HashMap<String, String>,
        cwd: String,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
    ) -> Result<Assembled, Error> {
        let options = RunOptions::from_wire(&options)?;
        self.start(&header, source, params, cwd, options, None).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_attached_with(
        &self,
        #[zbus(header)] header: Header<'_>,
        source: String,
        params: HashMap<String, String>,
        cwd: String,
        options: HashMap<String, zbus::zvariant::OwnedValue>,
        stdin: zbus::zvariant::OwnedFd,
        stdout: zbus::zvariant::OwnedFd,
        stderr: zbus::zvariant::OwnedFd,
    ) -> Result<Assembled, Error> {
        let options = RunOptions::from_wire(&options)?;
        let stdio = crate::runtime::Stdio::new(stdin.into(), stdout.into(), stderr.into());
        self.start(&header, source, params, cwd, options, Some(stdio)).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn logs(
        &self,
        #[zbus(header)] header: Header<'_>,
        target: String,
        lines: u32,
        since_usec: u64,
        follow: bool,
        json: bool,
        out: zbus::zvariant::OwnedFd,
    ) -> Result<(), Error> {
        if since_usec > 0 {
            if let crate::logs::Source::Files(_) = self.logs {
                return Err(Error::InvalidManifest(
                    "the cgroup backend keeps no times with its cells' output: --since needs systemd's journal".into(),
                ));
            }
        }
        let targets = self.call(|reply| Command::LogTargets { target, reply }).await?;
        // Your own cells' output is yours to read; anyone else's needs
        // what managing cells needs.
        let caller = actor(&self.authorizer, &header).await;
        if !targets.iter().all(|t| t.actor == caller) {
            self.authorize(&header).await?;
        }
        let running: Vec<String> = targets.iter().filter(|t| t.running).map(|t| t.instance.clone()).collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(!follow || running.is_empty()));
        let request = crate::logs::Request {
            targets: targets
                .into_iter()
                .map(|t| crate::logs::Target {
                    instance: t.instance,
                    unit: t.unit,
                    started_usec: t.started_usec,
                    ended_usec: t.ended_usec,
                })
                .collect(),
            lines,
            since_usec,
            follow,
            json,
            done: done.clone(),
        };
        crate::logs::spawn(&self.logs, request, out.into())
            .map_err(|e| Error::Backend(format!("cannot read the output: {}", error_chain(&e))))?;
        if follow && !running.is_empty() {
            // The follower stops once every instance has ended.
            let commands = self.commands.clone();
            tokio::spawn(async move {
                for instance in running {
                    let (tx, rx) = oneshot::channel();
                    if commands.send(Command::Wait { instance, reply: tx }).await.is_err() {
                        break;
                    }
                    let _ = rx.await;
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
        }
        Ok(())
    }

    async fn wait(&self, instance: String, timeout_ms: u32) -> Result<Ended, Error> {
        // Bounded, so that no bus timeout ever cuts a wait: callers ask again.
        let limit = std::time::Duration::from_millis(u64::from(timeout_ms.min(60_000)));
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Wait { instance, reply: tx })
            .await
            .map_err(|_| Error::Backend("quantumd is shutting down".into()))?;
        match tokio::time::timeout(limit, rx).await {
            Ok(answer) => answer
                .map_err(|_| Error::Backend("quantumd dropped the request".into()))?
                .map_err(Error::from),
            Err(_) => Ok(Ended {
                ended: false,
                status: -1,
                state: String::new(),
                reason: String::new(),
            }),
        }
    }

    async fn cell_state(
        &self,
        #[zbus(header)] header: Header<'_>,
        cell: String,
        op: String,
        name: String,
    ) -> Result<CellStateReport, Error> {
        use crate::cell_state::Op;
        let op = match op.as_str() {
            "list" => Op::List,
            "snapshot" => Op::Snapshot { name },
            "rollback" => Op::Rollback { name },
            "delete" => Op::Delete { name },
            other => {
                return Err(Error::from(CommandError::Invalid(format!(
                    "{other:?} is not a state operation: use list, snapshot, rollback or delete"
                ))))
            }
        };
        self.authorize(&header).await?;
        let actor = actor(&self.authorizer, &header).await;
        self.call(|reply| Command::CellState { actor, cell, op, reply }).await
    }

    async fn stop(&self, #[zbus(header)] header: Header<'_>, target: String) -> Result<Vec<String>, Error> {
        self.authorize(&header).await?;
        let actor = actor(&self.authorizer, &header).await;
        self.call(|reply| Command::Stop { actor, target, reply }).await
    }

    async fn add_trigger(&self, #[zbus(header)] header: Header<'_>, toml: String, file: String) -> Result<TriggerInfo, Error> {
        self.authorize(&header).await?;
        let actor = actor(&self.authorizer, &header).await;
        self.call(|reply| Command::TriggerAdd { actor, toml, file, reply }).await
    }

    async fn remove_trigger(&self, #[zbus(header)] header: Header<'_>, name: String) -> Result<(), Error> {
        self.authorize(&header).await?;
        let actor = actor(&self.authorizer, &header).await;
        self.call(|reply| Command::TriggerRemove { actor, name, reply }).await
    }

    async fn list_triggers(&self) -> Result<Vec<TriggerInfo>, Error> {
        self.call(|reply| Command::TriggerList { reply }).await
    }

    async fn list(&self) -> Result<Vec<CellInfo>, Error> {
        self.call(|reply| Command::List { reply }).await
    }

    async fn inspect(&self, target: String) -> Result<CellDetail, Error> {
        self.call(|reply| Command::Inspect { target, reply }).await
    }

    async fn ask(&self, #[zbus(header)] header: Header<'_>, intent: String) -> Result<String, Error> {
        let actor = actor(&self.authorizer, &header).await;
        let (plan, id) = self.planner.ask(intent, &self.authorizer.caller(&header)).await?;
        let cells: Vec<&str> = plan.cell_names();
        let mut e = trail::entry(&actor, &Action::PLAN).detail(format!(
            "{:?} -> [{}] plan {}",
            plan.intent,
            cells.join(", "),
            id.as_deref().unwrap_or("-")
        ));
        if plan.is_refusal() {
            e = e.error(plan.reason.clone().unwrap_or_else(|| "nothing fits".into()));
        }
        self.record(e);
        let mut json = serde_json::to_value(&plan).map_err(|e| Error::Backend(format!("cannot encode the plan: {e}")))?;
        if let (Some(id), Some(obj)) = (id, json.as_object_mut()) {
            obj.insert("plan-id".into(), id.into());
        }
        Ok(json.to_string())
    }

    async fn execute(&self, #[zbus(header)] header: Header<'_>, plan_id: String, cwd: String) -> Result<Vec<Started>, Error> {
        self.execute_plan(&header, plan_id, cwd, None).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn execute_attached(
        &self,
        #[zbus(header)] header: Header<'_>,
        plan_id: String,
        cwd: String,
        stdin: zbus::zvariant::OwnedFd,
        stdout: zbus::zvariant::OwnedFd,
        stderr: zbus::zvariant::OwnedFd,
    ) -> Result<Vec<Started>, Error> {
        let stdio = crate::runtime::Stdio::new(stdin.into(), stdout.into(), stderr.into());
        self.execute_plan(&header, plan_id, cwd, Some(stdio)).await
    }

    async fn steppps(&self, cell: String) -> Result<String, Error> {
        let figures = self.steppps.figures((!cell.is_empty()).then_some(cell.as_str()));
        serde_json::to_string(&figures).map_err(|e| Error::Backend(format!("cannot encode the figures: {e}")))
    }

    /// Reading a recommendation is reading figures, like `Steppps`: no
    /// authorization beyond the bus policy.
    async fn recommend(&self, cell: String) -> Result<String, Error> {
        // The node's size is the ceiling: no recommendation asks for more
        // memory or cores than the machine has.
        let node = self.steppps.figures(None).node;
        let mut bounds = quantum_psychology::Bounds::default();
        if node.memory_total_bytes > 0 {
            bounds.memory_ceiling = node.memory_total_bytes;
        }
        if node.cpus > 0 {
            bounds.cpu_ceiling = f64::from(node.cpus);
        }
        let history = self.history.clone();
        let recommendation = tokio::task::spawn_blocking(move || history.recommend(&cell, bounds))
            .await
            .map_err(|e| Error::Backend(format!("reading the usage history: {e}")))??;
        serde_json::to_string(&recommendation).map_err(|e| Error::Backend(format!("cannot encode the recommendation: {e}")))
    }

    async fn identity(&self) -> NodeIdentity {
        let public = self.identity.public();
        NodeIdentity {
            key_id: public.key_id().to_string(),
            ml_dsa_fingerprint: public.ml_dsa_fingerprint().to_string(),
            ed25519_fingerprint: public.ed25519_fingerprint().to_string(),
            store: self.identity.describe(),
            tpm: self.identity.is_tpm(),
        }
    }

    async fn trail_show(&self, cell: String, since_seq: u64, limit: u32) -> Result<Vec<TrailEntry>, Error> {
        if let Some(t) = &self.trail {
            t.appended().await;
        }
        let dir = self.trail_dir.clone();
        let filter = quantum_trail::Filter {
            cell: (!cell.is_empty()).then_some(cell),
            since_seq: (since_seq > 0).then_some(since_seq),
        };
        let read = move || -> Result<Vec<TrailEntry>, String> {
            let mut out = std::collections::VecDeque::new();
            for entry in quantum_trail::entries(&dir, filter).map_err(|e| error_chain(&e))? {
                let e = entry.map_err(|e| error_chain(&e))?;
                out.push_back(wire_entry(e));
                if limit > 0 && out.len() > limit as usize {
                    out.pop_front();
                }
            }
            Ok(out.into())
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| Error::Backend(format!("reading the trail: {e}")))?
            .map_err(|e| Error::Backend(format!("reading the trail: {e}")))
    }

    async fn alerts(&self, cell: String, since_seq: u64, limit: u32) -> Result<Vec<quantum_bus::Alert>, Error> {
        let entries = self.trail_show(cell, since_seq, 0).await?;
        let mut alerts: Vec<quantum_bus::Alert> = entries.iter().filter_map(crate::anomaly::alert_of).collect();
        if limit > 0 && alerts.len() > limit as usize {
            alerts.drain(..alerts.len() - limit as usize);
        }
        Ok(alerts)
    }

    async fn channels(&self) -> Result<quantum_bus::ChannelTable, Error> {
        let broker = self.broker()?;
        let (streams, listening) = broker.list();
        Ok(quantum_bus::ChannelTable {
            listening: listening
                .into_iter()
                .map(|(instance, channel)| quantum_bus::ChannelListener { instance, channel })
                .collect(),
            streams: streams
                .into_iter()
                .map(|s| quantum_bus::ChannelStream {
                    consumer: s.consumer,
                    provider: s.provider,
                    channel: s.channel,
                    opened_usec: s.opened_usec,
                })
                .collect(),
        })
    }

    async fn cluster(&self) -> quantum_bus::ClusterStatus {
        self.cluster.status()
    }

    async fn place(
        &self,
        #[zbus(header)] header: Header<'_>,
        cell: String,
        params: HashMap<String, String>,
    ) -> Result<quantum_bus::ClusterPlacement, Error> {
        self.authorize(&header).await?;
        cell.parse::<quantum_model::CellName>()
            .map_err(|e| Error::InvalidManifest(e.to_string()))?;
        self.cluster.place(&cell, params).await.map_err(Error::Refused)
    }

    async fn unplace(&self, #[zbus(header)] header: Header<'_>, id: String) -> Result<bool, Error> {
        self.authorize(&header).await?;
        self.cluster.unplace(&id).await.map_err(Error::Refused)
    }

    async fn revoke_channels(&self, #[zbus(header)] header: Header<'_>, instance: String, channel: String) -> Result<u32, Error> {
        self.authorize(&header).await?;
        let actor = actor(&self.authorizer, &header).await;
        if crate::runtime::instance_of_unit(&crate::runtime::unit_name(&instance)).is_none() {
            return Err(Error::NotFound(format!("{instance:?} is not an instance id (CELL.N)")));
        }
        let broker = self.broker()?.clone();
        let closed = tokio::task::spawn_blocking(move || broker.revoke(&instance, &channel, &actor))
            .await
            .map_err(|e| Error::Backend(format!("revoking: {e}")))?
            .map_err(|e| Error::Backend(error_chain(&e)))?;
        Ok(closed as u32)
    }

    async fn trail_verify(&self) -> Result<TrailReport, Error> {
        if let Some(t) = &self.trail {
            // What was appended so far is sealed first, so that it verifies.
            t.flush().await;
        }
        let dir = self.trail_dir.clone();
        let verifier = self.identity.verifier();
        let report = tokio::task::spawn_blocking(move || quantum_trail::verify(&dir, &verifier))
            .await
            .map_err(|e| Error::Backend(format!("verifying the trail: {e}")))?
            .map_err(|e| Error::Backend(format!("verifying the trail: {}", error_chain(&e))))?;
        Ok(TrailReport {
            ok: report.is_ok(),
            segments: report.segments as u64,
            entries: report.entries,
            seals: report.seals,
            last_seq: report.last_seq.unwrap_or(0),
            last_sealed_seq: report.last_sealed_seq.unwrap_or(0),
            head: report.head.to_hex(),
            failure: report.failure.map(|f| f.to_string()).unwrap_or_default(),
            warnings: report.warnings.iter().map(ToString::to_string).collect(),
        })
    }

    #[zbus(property)]
    async fn backend(&self) -> String {
        self.backend.clone()
    }

    #[zbus(property)]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    #[zbus(signal)]
    async fn cell_state_changed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        instance: &str,
        cell: &str,
        state: &str,
        reason: &str,
    ) -> zbus::Result<()>;
}

/// Who is calling, for the trail: `uid:N` as the bus daemon (or, on the
/// direct socket, the kernel) vouches, else the unique bus name.
async fn actor(authorizer: &Authorizer, header: &Header<'_>) -> String {
    let name = authorizer.caller(header);
    match authorizer.uid(&name).await {
        Ok(uid) => format!("uid:{uid}"),
        Err(_) => name,
    }
}

fn wire_entry(e: quantum_trail::Entry) -> TrailEntry {
    let (ok, error) = match e.result {
        Outcome::Ok => (true, String::new()),
        Outcome::Error(text) => (false, text),
    };
    TrailEntry {
        seq: e.seq,
        time_ns: e.time_ns,
        actor: e.actor,
        action: e.action.to_string(),
        cell: e.cell.unwrap_or_default(),
        manifest_hash: e.manifest_hash.map(|h| h.to_hex()).unwrap_or_default(),
        ok,
        error,
        detail: e.detail.unwrap_or_default(),
    }
}
