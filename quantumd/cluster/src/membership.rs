//! Joining the cluster and keeping a view of it.
//!
//! One task per node, in sessions: connect to etcd, take a lease (TTL from
//! the configuration), write this node's signed record under it, keep the
//! lease alive at a third of its TTL, read every node's record and then
//! watch for changes from that revision on. A node that dies stops keeping
//! its lease, etcd deletes its record when the lease runs out, and every
//! watcher sees the delete: that is how a node learns another is gone,
//! within the TTL. Anything that ends a session (etcd unreachable, the
//! lease expired, the watch cancelled) starts a new one after a short
//! wait; the view keeps the last nodes seen and says it is not connected.
//! Leaving revokes the lease, so the others see this node go at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use quantum_trust::{KeyPair, TrustedKeys};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::ClusterConfig;
use crate::placement::{self, Placement};
use crate::record::{Capacity, NodeInfo, NodeRecord, RecordError};

/// How often this node's record is written again (its capacity changes).
const REFRESH: Duration = Duration::from_secs(10);
/// Wait between sessions.
const RETRY: Duration = Duration::from_secs(1);
/// How long one request to etcd may take. Not the client's own timeout,
/// which would also cut the keep-alive and watch streams.
const REQUEST: Duration = Duration::from_secs(5);

/// Where this node stands with the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Connection {
    /// Not yet joined (first session starting).
    Connecting,
    /// Registered under a live lease, watching the others.
    Joined,
    /// The last session ended; retrying. The view is what was last seen.
    Lost,
}

/// A node as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeView {
    pub node: String,
    pub key_id: String,
    pub version: String,
    pub capacity: Capacity,
    pub updated_usec: u64,
    pub this_node: bool,
}

/// A member of the etcd cluster itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct EtcdMember {
    pub name: String,
    pub id: String,
    pub client_urls: Vec<String>,
    pub leader: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    pub node: String,
    pub key_id: String,
    pub endpoints: Vec<String>,
    pub connection: Connection,
    /// Why the last session ended (when `Lost`).
    pub error: Option<String>,
    /// Since when `connection` holds.
    pub since_usec: u64,
    pub lease_ttl_s: u64,
    pub etcd_members: Vec<EtcdMember>,
    /// Nodes whose records verify, this one included.
    pub nodes: Vec<NodeView>,
    /// Records that do not verify, by node name, and why.
    pub refused: BTreeMap<String, String>,
    /// Every cell placed on the cluster, by id.
    pub placements: Vec<Placement>,
}

/// What happened, for quantumd's trail and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Joined {
        lease: i64,
    },
    Lost {
        why: String,
    },
    NodeUp {
        node: String,
        key_id: String,
    },
    NodeDown {
        node: String,
    },
    Refused {
        node: String,
        why: String,
    },
    /// Left the cluster (the lease revoked).
    Left,
    /// A placement names this node: run it (again and again, it is said
    /// on every change and resync; running it once is the holder's part).
    Assigned(Placement),
    /// A placement this node held was removed or moved: stop it.
    Released {
        id: String,
    },
    /// This node moved a lost node's cell.
    Replaced {
        id: String,
        from: String,
        to: String,
    },
}

/// This node's membership: the task, and the view it keeps.
pub struct Cluster {
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Ctx {
    config: ClusterConfig,
    keys: Arc<KeyPair>,
    version: String,
    status: Mutex<Status>,
    events: mpsc::UnboundedSender<Event>,
    trusted: Mutex<TrustedKeys>,
    /// The session's client while joined (placements go through it).
    client: Mutex<Option<Client>>,
    /// Each placement's last modification revision (for the compares).
    revisions: Mutex<BTreeMap<String, i64>>,
}

fn now_usec() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Cluster {
    /// Starts joining; returns at once. `version` goes into the record.
    pub fn start(config: ClusterConfig, keys: Arc<KeyPair>, version: &str, events: mpsc::UnboundedSender<Event>) -> Cluster {
        let status = Mutex::new(Status {
            node: config.node.clone(),
            key_id: keys.key_id().to_string(),
            endpoints: config.endpoints.clone(),
            connection: Connection::Connecting,
            error: None,
            since_usec: now_usec(),
            lease_ttl_s: config.lease_ttl.as_secs(),
            etcd_members: Vec::new(),
            nodes: Vec::new(),
            refused: BTreeMap::new(),
            placements: Vec::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            trusted: Mutex::new(TrustedKeys::new()),
            config,
            keys,
            version: version.to_owned(),
            status,
            events,
            client: Mutex::new(None),
            revisions: Mutex::new(BTreeMap::new()),
        });
        let task = tokio::spawn(run(ctx.clone(), stopped));
        Cluster {
            ctx,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn status(&self) -> Status {
        lock(&self.ctx.status).clone()
    }

    /// Places `cell` on the node with the fewest placements (then the most
    /// memory free): a new key, created only if it does not exist. The node
    /// named runs it once it sees the key.
    pub async fn place(&self, cell: &str, params: BTreeMap<String, String>) -> Result<Placement, String> {
        let mut client = self.joined_client()?;
        let node = {
            let s = lock(&self.ctx.status);
            let load = |node: &str| s.placements.iter().filter(|p| p.node == node).count();
            s.nodes
                .iter()
                .min_by_key(|n| (load(&n.node), std::cmp::Reverse(n.capacity.memory_available_bytes), n.node.clone()))
                .map(|n| n.node.clone())
                .ok_or("no node is known yet")?
        };
        let p = Placement {
            id: placement::new_id(cell),
            cell: cell.to_owned(),
            params,
            node,
            by: self.ctx.config.node.clone(),
            placed_usec: now_usec(),
        };
        let key = self.ctx.placement_key(&p.id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, p.to_json(), None)]);
        let done = ask("placing the cell", client.txn(txn)).await?;
        if !done.succeeded() {
            return Err(format!("placement {} exists already", p.id));
        }
        Ok(p)
    }

    /// Removes a placement; its node stops the cell. `false`: none such.
    pub async fn unplace(&self, id: &str) -> Result<bool, String> {
        let mut client = self.joined_client()?;
        let gone = ask("removing the placement", client.delete(self.ctx.placement_key(id), None)).await?;
        Ok(gone.deleted() > 0)
    }

    fn joined_client(&self) -> Result<Client, String> {
        let s = lock(&self.ctx.status);
        match (s.connection, lock(&self.ctx.client).clone()) {
            (Connection::Joined, Some(c)) => Ok(c),
            _ => Err(format!(
                "this node has not joined the cluster ({})",
                s.error.as_deref().unwrap_or("connecting")
            )),
        }
    }

    /// Leaves the cluster: the lease is revoked (the others see this node
    /// go now, not after the TTL). Gives up after two seconds.
    pub async fn leave(&self) {
        let _ = self.stop.send(true);
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn run(ctx: Arc<Ctx>, mut stopped: watch::Receiver<bool>) {
    ctx.reload_trusted();
    let mut last_error = None;
    let mut outer = stopped.clone();
    loop {
        // The session itself answers a stop (it revokes the lease first);
        // one still connecting is left to `leave`'s time limit.
        let result = session(&ctx, &mut stopped).await;
        *lock(&ctx.client) = None;
        // A session that had joined ends in a new outage, even if it says
        // what the last one said.
        if lock(&ctx.status).connection == Connection::Joined {
            last_error = None;
        }
        let why = match result {
            Ok(()) => return,
            Err(why) => why,
        };
        // Said once per outage, not once a second.
        if last_error.as_ref() != Some(&why) {
            tracing::warn!(error = %why, "cluster: session ended; retrying");
            let _ = ctx.events.send(Event::Lost { why: why.clone() });
        }
        {
            let mut s = lock(&ctx.status);
            if s.connection != Connection::Lost {
                s.since_usec = now_usec();
            }
            s.connection = Connection::Lost;
            s.error = Some(why.clone());
        }
        last_error = Some(why);
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop_asked(&mut outer) => return,
        }
    }
}

/// Returns once leaving was asked (or the asker is gone).
async fn stop_asked(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One request, within [`REQUEST`]; errors say what was being done.
async fn ask<T>(what: &str, request: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST, request).await {
        Ok(r) => r.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer from etcd in {} s", REQUEST.as_secs())),
    }
}

fn etcd(what: &str) -> impl Fn(etcd_client::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// One session; `Ok` when asked to stop (after revoking the lease).
async fn session(ctx: &Ctx, stopped: &mut watch::Receiver<bool>) -> Result<(), String> {
    // HTTP/2 pings find a dead connection (a member gone, a cable out).
    // Not more often than etcd allows (--grpc-keepalive-min-time, 5 s by
    // default): a client that pings faster is sent away, and its streams
    // with it. The lease's own keep-alive answers are the quicker sign.
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    let endpoints = ctx.config.endpoints.join(", ");
    let mut client = ask(
        &format!("connecting to etcd at {endpoints}"),
        Client::connect(&ctx.config.endpoints, Some(options)),
    )
    .await?;
    let ttl = ctx.config.lease_ttl.as_secs() as i64;
    let lease = ask("taking a lease", client.lease_grant(ttl, None)).await?.id();
    ctx.register(&mut client, lease).await?;
    let (mut keeper, mut alive) = ask("keeping the lease alive", client.lease_keep_alive(lease)).await?;
    // Nodes and placements, read at one revision and watched from the next.
    let prefix = format!("{}/", ctx.config.prefix);
    let all = ask(
        "reading the cluster",
        client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = all.header().map_or(0, |h| h.revision());
    ctx.resync(all.kvs().iter().map(|kv| (kv.key(), kv.value(), kv.mod_revision())));
    let mut watching = ask(
        "watching the cluster",
        client.watch(
            prefix.clone(),
            Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1)),
        ),
    )
    .await?;
    // Nodes that went while this one was away leave their cells behind.
    ctx.replace_orphans(&mut client).await?;
    ctx.etcd_members(&mut client).await;
    {
        let mut s = lock(&ctx.status);
        s.connection = Connection::Joined;
        s.error = None;
        s.since_usec = now_usec();
    }
    *lock(&ctx.client) = Some(client.clone());
    tracing::info!(node = %ctx.config.node, lease, endpoints = %endpoints, "cluster: joined");
    let _ = ctx.events.send(Event::Joined { lease });

    let mut keep = tokio::time::interval(ctx.config.lease_ttl / 3);
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.tick().await;
    // No answer to the keep-alives for a whole TTL: the lease may be gone
    // while the connection looks fine. Start over rather than believe it.
    let mut answered = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = keep.tick() => {
                if answered.elapsed() > ctx.config.lease_ttl {
                    return Err(format!("etcd did not answer the lease's keep-alives for {} s", ctx.config.lease_ttl.as_secs()));
                }
                ask("keeping the lease alive", keeper.keep_alive()).await?
            }
            answer = alive.message() => match answer.map_err(etcd("keeping the lease alive"))? {
                Some(a) if a.ttl() > 0 => answered = tokio::time::Instant::now(),
                Some(_) => return Err("the lease expired: etcd took this node for dead".to_owned()),
                None => return Err("etcd ended the lease's keep-alive stream".to_owned()),
            },
            changes = watching.message() => {
                let Some(changes) = changes.map_err(etcd("watching the cluster"))? else {
                    return Err("etcd ended the watch on the cluster".to_owned());
                };
                if changes.canceled() {
                    return Err(format!("etcd cancelled the watch on the cluster: {}", changes.cancel_reason()));
                }
                let mut lost = false;
                for event in changes.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    match (ctx.key_kind(key), event.event_type()) {
                        (Some(Key::Node(node)), EventType::Put) => ctx.seen(node, kv.value()),
                        (Some(Key::Node(node)), EventType::Delete) => lost |= ctx.gone(node),
                        (Some(Key::Cell(id)), EventType::Put) => ctx.placed(id, kv.value(), kv.mod_revision()),
                        (Some(Key::Cell(id)), EventType::Delete) => ctx.unplaced(id),
                        (None, _) => {}
                    }
                }
                if lost {
                    ctx.replace_orphans(&mut client).await?;
                }
            }
            _ = refresh.tick() => {
                ctx.register(&mut client, lease).await?;
                ctx.etcd_members(&mut client).await;
            }
            _ = stop_asked(stopped) => {
                let _ = ask("leaving", client.lease_revoke(lease)).await;
                tracing::info!(node = %ctx.config.node, "cluster: left (lease revoked)");
                let _ = ctx.events.send(Event::Left);
                return Ok(());
            }
        }
    }
}

/// What a key under the prefix is.
enum Key<'a> {
    Node(&'a str),
    Cell(&'a str),
}

impl Ctx {
    fn key_kind<'a>(&self, key: &'a str) -> Option<Key<'a>> {
        let rest = key.strip_prefix(self.config.prefix.as_str())?;
        if let Some(node) = rest.strip_prefix("/nodes/") {
            return Some(Key::Node(node));
        }
        rest.strip_prefix("/cells/").map(Key::Cell)
    }

    fn placement_key(&self, id: &str) -> String {
        format!("{}/cells/{id}", self.config.prefix)
    }

    /// A placement was written.
    fn placed(&self, id: &str, value: &[u8], revision: i64) {
        let p = match Placement::from_json(value) {
            Ok(p) if p.id == id => p,
            Ok(_) | Err(_) => {
                tracing::warn!(id, "cluster: a placement that does not read; ignored");
                return;
            }
        };
        lock(&self.revisions).insert(id.to_owned(), revision);
        let me = self.config.node.as_str();
        let mut s = lock(&self.status);
        let was_mine = match s.placements.iter_mut().find(|q| q.id == id) {
            Some(q) => std::mem::replace(q, p.clone()).node == me,
            None => {
                s.placements.push(p.clone());
                s.placements.sort_by(|a, b| a.id.cmp(&b.id));
                false
            }
        };
        drop(s);
        if p.node == me {
            let _ = self.events.send(Event::Assigned(p));
        } else if was_mine {
            let _ = self.events.send(Event::Released { id: id.to_owned() });
        }
    }

    /// A placement was removed.
    fn unplaced(&self, id: &str) {
        lock(&self.revisions).remove(id);
        let mut s = lock(&self.status);
        if let Some(i) = s.placements.iter().position(|p| p.id == id) {
            let p = s.placements.remove(i);
            if p.node == self.config.node {
                let _ = self.events.send(Event::Released { id: id.to_owned() });
            }
        }
    }

    /// Moves the placements of nodes no longer alive to live ones, each by
    /// a compare on the revision it was read at: of the survivors that try
    /// the same move, one wins and the others' compares fail.
    async fn replace_orphans(&self, client: &mut Client) -> Result<(), String> {
        let moves: Vec<(Placement, String, i64)> = {
            let s = lock(&self.status);
            let alive: BTreeSet<String> = s.nodes.iter().map(|n| n.node.clone()).collect();
            let orphans = s.placements.iter().filter(|p| !alive.contains(&p.node));
            let revisions = lock(&self.revisions);
            placement::spread(orphans, &alive, &s.placements)
                .into_iter()
                .filter_map(|(id, to)| {
                    let p = s.placements.iter().find(|p| p.id == id)?.clone();
                    let rev = *revisions.get(&id)?;
                    Some((p, to, rev))
                })
                .collect()
        };
        for (p, to, rev) in moves {
            let from = p.node.clone();
            let moved = Placement {
                node: to.clone(),
                by: self.config.node.clone(),
                placed_usec: now_usec(),
                ..p
            };
            let key = self.placement_key(&moved.id);
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key, moved.to_json(), None)]);
            if ask("re-placing a cell", client.txn(txn)).await?.succeeded() {
                tracing::info!(id = %moved.id, from = %from, to = %to, "cluster: cell re-placed");
                let _ = self.events.send(Event::Replaced { id: moved.id, from, to });
            }
        }
        Ok(())
    }

    /// The administrator's `*.pub` files, and this node's own key. A bad
    /// file keeps the last good set (and says so).
    fn reload_trusted(&self) {
        let mut trusted = match TrustedKeys::load(&self.config.trusted_nodes) {
            Ok(t) => t,
            Err(quantum_trust::KeyError::ReadDir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => TrustedKeys::new(),
            Err(e) => {
                tracing::warn!(dir = %self.config.trusted_nodes.display(), error = %e, "cluster: trusted nodes not reloaded");
                return;
            }
        };
        trusted.insert(self.keys.public().clone());
        *lock(&self.trusted) = trusted;
    }

    async fn register(&self, client: &mut Client, lease: i64) -> Result<(), String> {
        let info = NodeInfo {
            node: self.config.node.clone(),
            version: self.version.clone(),
            key: self.keys.public().to_toml(),
            capacity: Capacity::of_this_machine(),
            updated_usec: now_usec(),
        };
        let record = NodeRecord::sign(info, &self.keys);
        let key = format!("{}{}", self.config.nodes_prefix(), self.config.node);
        ask(
            "registering this node",
            client.put(key, record.to_json(), Some(PutOptions::new().with_lease(lease))),
        )
        .await?;
        Ok(())
    }

    async fn etcd_members(&self, client: &mut Client) {
        let leader = ask("", client.status()).await.map(|s| s.leader()).unwrap_or(0);
        if let Ok(list) = ask("", client.member_list()).await {
            let members = list
                .members()
                .iter()
                .map(|m| EtcdMember {
                    name: m.name().to_owned(),
                    id: format!("{:x}", m.id()),
                    client_urls: m.client_urls().to_vec(),
                    leader: m.id() == leader,
                })
                .collect();
            lock(&self.status).etcd_members = members;
        }
    }

    fn verify(&self, node: &str, value: &[u8]) -> Result<NodeView, RecordError> {
        // The guard is dropped before reload_trusted takes the lock again.
        let check = || NodeRecord::verify(node, value, &lock(&self.trusted));
        let first = check();
        let result = match first {
            // A node the administrator may have trusted since: read the
            // directory again before refusing it.
            Err(RecordError::Untrusted(_)) => {
                self.reload_trusted();
                check()
            }
            other => other,
        };
        let (record, keys) = result?;
        Ok(NodeView {
            node: record.info.node,
            key_id: keys.key_id().to_string(),
            version: record.info.version,
            capacity: record.info.capacity,
            updated_usec: record.info.updated_usec,
            this_node: keys.key_id() == self.keys.key_id(),
        })
    }

    /// A record was written.
    fn seen(&self, node: &str, value: &[u8]) {
        match self.verify(node, value) {
            Ok(view) => {
                let mut s = lock(&self.status);
                s.refused.remove(node);
                match s.nodes.iter_mut().find(|n| n.node == node) {
                    Some(n) => *n = view,
                    None => {
                        tracing::info!(node, key_id = %view.key_id, "cluster: node up");
                        let _ = self.events.send(Event::NodeUp {
                            node: node.to_owned(),
                            key_id: view.key_id.clone(),
                        });
                        s.nodes.push(view);
                        s.nodes.sort_by(|a, b| a.node.cmp(&b.node));
                    }
                }
            }
            Err(e) => {
                let why = e.to_string();
                let mut s = lock(&self.status);
                // A node that was believed and now writes a record that
                // does not verify is no longer believed.
                let was_up = s.nodes.iter().position(|n| n.node == node).map(|i| s.nodes.remove(i)).is_some();
                if s.refused.get(node) != Some(&why) {
                    tracing::warn!(node, error = %why, "cluster: node refused");
                    let _ = self.events.send(Event::Refused {
                        node: node.to_owned(),
                        why: why.clone(),
                    });
                }
                if was_up {
                    let _ = self.events.send(Event::NodeDown { node: node.to_owned() });
                }
                s.refused.insert(node.to_owned(), why);
            }
        }
    }

    /// A record was deleted (its lease ran out or was revoked); `true`
    /// when a node believed alive is gone.
    fn gone(&self, node: &str) -> bool {
        let mut s = lock(&self.status);
        s.refused.remove(node);
        if let Some(i) = s.nodes.iter().position(|n| n.node == node) {
            s.nodes.remove(i);
            tracing::info!(node, "cluster: node down");
            let _ = self.events.send(Event::NodeDown { node: node.to_owned() });
            return true;
        }
        false
    }

    /// Every key, read at the start of a session: nodes and placements not
    /// among them went while this one was away.
    fn resync<'a>(&self, records: impl Iterator<Item = (&'a [u8], &'a [u8], i64)>) {
        let mut present = Vec::new();
        let mut placements = Vec::new();
        for (key, value, revision) in records {
            match std::str::from_utf8(key).ok().and_then(|k| self.key_kind(k)) {
                Some(Key::Node(node)) => {
                    present.push(node.to_owned());
                    self.seen(node, value);
                }
                Some(Key::Cell(id)) => {
                    placements.push(id.to_owned());
                    self.placed(id, value, revision);
                }
                None => {}
            }
        }
        let removed: Vec<String> = lock(&self.status)
            .placements
            .iter()
            .filter(|p| !placements.contains(&p.id))
            .map(|p| p.id.clone())
            .collect();
        for id in removed {
            self.unplaced(&id);
        }
        let vanished: Vec<String> = {
            let s = lock(&self.status);
            s.nodes
                .iter()
                .map(|n| n.node.clone())
                .chain(s.refused.keys().cloned())
                .filter(|n| !present.contains(n))
                .collect()
        };
        for node in vanished {
            self.gone(&node);
        }
    }
}
