//! quantumd's side of the cell network (quantum-cluster): joins when the
//! cluster file exists, runs the cells placed on this node (and stops those
//! moved away), records what happens in the trail, answers `Cluster()`,
//! `Place` and `Unplace`, and leaves (revoking its lease) when quantumd
//! stops.
//!
//! A cluster file that does not parse does not stop quantumd: the node runs
//! on its own, and `quantumctl cluster` and the log say what is wrong.
//!
//! Which instance runs which placement is kept in
//! `<state>/cluster/held.json`, so that a restarted quantumd, which
//! re-adopts its cells, does not start them a second time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use quantum_cluster::{Cluster, ClusterConfig, Connection, Event, Placement};
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, RunRequest};
use crate::identity::Identity;
use crate::trail::Recorder;

/// Placement id -> the instance running it here.
type Held = Arc<Mutex<BTreeMap<String, String>>>;

enum State {
    Standalone,
    Misconfigured(String),
    Member(Cluster),
}

/// Shared by the interface (status) and the main loop (leave).
#[derive(Clone)]
pub struct Membership {
    config: PathBuf,
    public_key: String,
    key_id: String,
    state: Arc<State>,
    trail: Option<Recorder>,
    held: Held,
}

impl Membership {
    pub fn start(
        config: &Path,
        identity: &Identity,
        trail: Option<Recorder>,
        commands: mpsc::Sender<Command>,
        state_dir: &Path,
    ) -> Membership {
        let public = identity.public();
        let held_file = state_dir.join("cluster").join("held.json");
        let held: Held = Arc::new(Mutex::new(
            std::fs::read(&held_file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
        ));
        let state = match ClusterConfig::load(config) {
            Ok(None) => State::Standalone,
            Err(e) => {
                tracing::warn!(error = %e, "cluster file not used: this node runs on its own");
                State::Misconfigured(e.to_string())
            }
            Ok(Some(c)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let holder = Holder {
                    commands,
                    trail: trail.clone(),
                    held: held.clone(),
                    file: held_file,
                    lease_ttl: c.lease_ttl,
                };
                tokio::spawn(holder.serve(rx));
                State::Member(Cluster::start(c, identity.keys(), env!("CARGO_PKG_VERSION"), tx))
            }
        };
        Membership {
            config: config.to_owned(),
            public_key: public.to_toml(),
            key_id: public.key_id().to_string(),
            state: Arc::new(state),
            trail,
            held,
        }
    }

    /// Before quantumd stops: the others see this node go now. Recorded
    /// here rather than from the event, which could come after the trail's
    /// last flush.
    pub async fn leave(&self) {
        if let State::Member(c) = &*self.state {
            c.leave().await;
            if let Some(t) = &self.trail {
                t.record(crate::trail::entry("quantumd", &quantum_trail::Action::CLUSTER).detail("left"));
            }
        }
    }

    fn member(&self) -> Result<&Cluster, String> {
        match &*self.state {
            State::Member(c) => Ok(c),
            State::Standalone => Err(format!("this node is in no cluster ({} does not exist)", self.config.display())),
            State::Misconfigured(e) => Err(format!("this node is in no cluster: {e}")),
        }
    }

    pub async fn place(&self, cell: &str, params: HashMap<String, String>) -> Result<quantum_bus::ClusterPlacement, String> {
        let p = self.member()?.place(cell, params.into_iter().collect()).await?;
        Ok(self.placement(p))
    }

    pub async fn unplace(&self, id: &str) -> Result<bool, String> {
        self.member()?.unplace(id).await
    }

    fn placement(&self, p: Placement) -> quantum_bus::ClusterPlacement {
        let instance = lock(&self.held).get(&p.id).cloned().unwrap_or_default();
        quantum_bus::ClusterPlacement {
            id: p.id,
            cell: p.cell,
            params: p.params.into_iter().collect(),
            node: p.node,
            by: p.by,
            placed_usec: p.placed_usec,
            instance,
        }
    }

    pub fn status(&self) -> quantum_bus::ClusterStatus {
        let mut out = quantum_bus::ClusterStatus {
            state: "standalone".to_owned(),
            error: String::new(),
            config: self.config.display().to_string(),
            node: String::new(),
            key_id: self.key_id.clone(),
            endpoints: Vec::new(),
            since_usec: 0,
            lease_ttl_s: 0,
            etcd_members: Vec::new(),
            nodes: Vec::new(),
            refused: Vec::new(),
            placements: Vec::new(),
            public_key: self.public_key.clone(),
        };
        match &*self.state {
            State::Standalone => {}
            State::Misconfigured(e) => {
                out.state = "misconfigured".to_owned();
                out.error = e.clone();
            }
            State::Member(c) => {
                let s = c.status();
                out.state = match s.connection {
                    Connection::Connecting => "connecting",
                    Connection::Joined => "joined",
                    Connection::Lost => "lost",
                }
                .to_owned();
                out.error = s.error.unwrap_or_default();
                out.node = s.node;
                out.endpoints = s.endpoints;
                out.since_usec = s.since_usec;
                out.lease_ttl_s = s.lease_ttl_s;
                out.etcd_members = s
                    .etcd_members
                    .into_iter()
                    .map(|m| quantum_bus::EtcdMember {
                        name: m.name,
                        id: m.id,
                        client_urls: m.client_urls,
                        leader: m.leader,
                    })
                    .collect();
                out.nodes = s
                    .nodes
                    .into_iter()
                    .map(|n| quantum_bus::ClusterNode {
                        name: n.node,
                        key_id: n.key_id,
                        version: n.version,
                        cpus: n.capacity.cpus,
                        memory_bytes: n.capacity.memory_bytes,
                        memory_available_bytes: n.capacity.memory_available_bytes,
                        gpus: n.capacity.gpus,
                        updated_usec: n.updated_usec,
                        this_node: n.this_node,
                    })
                    .collect();
                out.refused = s
                    .refused
                    .into_iter()
                    .map(|(node, why)| quantum_bus::ClusterRefusal { node, why })
                    .collect();
                out.placements = s.placements.into_iter().map(|p| self.placement(p)).collect();
            }
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs what is placed here and stops what is moved away, through the
/// same commands as a `Run` and a `Stop` on the bus; and writes the
/// membership's events into the trail.
struct Holder {
    commands: mpsc::Sender<Command>,
    trail: Option<Recorder>,
    held: Held,
    file: PathBuf,
    lease_ttl: std::time::Duration,
}

impl Holder {
    async fn serve(self, mut events: mpsc::UnboundedReceiver<Event>) {
        // Cut off from etcd for longer than the lease: the others have
        // taken this node for dead and placed its cells elsewhere. Running
        // them here too would run them twice, so they stop (fencing); the
        // next session runs again whatever is still placed here.
        let mut fence_at: Option<tokio::time::Instant> = None;
        loop {
            let fence = async {
                match fence_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                e = events.recv() => match e {
                    Some(e) => e,
                    None => return,
                },
                () = fence => {
                    fence_at = None;
                    let ids: Vec<String> = lock(&self.held).keys().cloned().collect();
                    let mut stopped = Vec::new();
                    for id in ids {
                        stopped.extend(self.stop(&id).await);
                    }
                    if !stopped.is_empty() {
                        self.record(format!(
                            "fenced: cut off from etcd for more than the lease ({} s); stopped {}",
                            self.lease_ttl.as_secs(),
                            stopped.join(", ")
                        ));
                    }
                    continue;
                }
            };
            let detail = match event {
                Event::Joined { lease } => {
                    fence_at = None;
                    format!("joined (lease {lease:x})")
                }
                Event::Lost { why } => {
                    fence_at.get_or_insert(tokio::time::Instant::now() + self.lease_ttl);
                    format!("lost: {why}")
                }
                Event::NodeUp { node, key_id } => format!("node up {node} (key {key_id})"),
                Event::NodeDown { node } => format!("node down {node}"),
                Event::Refused { node, why } => format!("refused node {node}: {why}"),
                Event::Replaced { id, from, to } => format!("re-placed {id} from {from} to {to}"),
                Event::Assigned(p) => match self.run(&p).await {
                    Ok(None) => continue,
                    Ok(Some(instance)) => format!("runs placement {} ({}) as {instance}", p.id, p.cell),
                    Err(e) => format!("cannot run placement {} ({}): {e}", p.id, p.cell),
                },
                Event::Released { id } => match self.stop(&id).await {
                    Some(instance) => format!("stopped {instance}: placement {id} moved or removed"),
                    None => continue,
                },
                // Recorded by `Membership::leave`.
                Event::Left => continue,
            };
            self.record(detail);
        }
    }

    fn record(&self, detail: String) {
        tracing::info!(detail = %detail, "cluster");
        if let Some(t) = &self.trail {
            t.record(crate::trail::entry("quantumd", &quantum_trail::Action::CLUSTER).detail(detail));
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(crate::command::Reply<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| "quantumd is stopping".to_owned())?;
        rx.await
            .map_err(|_| "quantumd dropped the request".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// Starts the placement's cell unless an instance of it runs already;
    /// `Ok(None)` when one does.
    async fn run(&self, p: &Placement) -> Result<Option<String>, String> {
        let known = lock(&self.held).get(&p.id).cloned();
        if let Some(instance) = known {
            let list = self.ask(|reply| Command::List { reply }).await?;
            if list
                .iter()
                .any(|c| c.instance == instance && (c.state == "running" || c.state == "starting"))
            {
                return Ok(None);
            }
        }
        let assembled = self
            .ask(|reply| {
                Command::Run(RunRequest {
                    actor: format!("cluster:{}", p.by),
                    source: p.cell.clone(),
                    params: p.params.clone().into_iter().collect(),
                    cwd: "/".to_owned(),
                    stdio: None,
                    substitute: false,
                    reply,
                    profile: crate::start_profile::StartProfile::begin(),
                })
            })
            .await?;
        let instance = assembled.started.info.instance;
        lock(&self.held).insert(p.id.clone(), instance.clone());
        self.save();
        Ok(Some(instance))
    }

    async fn stop(&self, id: &str) -> Option<String> {
        let instance = lock(&self.held).remove(id)?;
        self.save();
        if let Err(e) = self
            .ask(|reply| Command::Stop {
                actor: "cluster".to_owned(),
                target: instance.clone(),
                reply,
            })
            .await
        {
            tracing::warn!(instance = %instance, error = %e, "cluster: cannot stop a released placement");
        }
        Some(instance)
    }

    fn save(&self) {
        let text = serde_json::to_vec(&*lock(&self.held)).unwrap_or_default();
        let written = self
            .file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(|e| e.to_string())
            .and_then(|()| crate::store::write_atomically(&self.file, &text, true).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(file = %self.file.display(), error = %e, "cluster: cannot keep which placements run here");
        }
    }
}
