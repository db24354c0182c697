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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use quantum_trust::{KeyPair, TrustedKeys};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::ClusterConfig;
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
}

/// This node's membership: the task, and the view it keeps.
pub struct Cluster {
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Ctx {
    config: ClusterConfig,
    keys: Arc<KeyPair>,
    version: String,
    status: Arc<Mutex<Status>>,
    events: mpsc::UnboundedSender<Event>,
    trusted: Mutex<TrustedKeys>,
}

fn now_usec() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Cluster {
    /// Starts joining; returns at once. `version` goes into the record.
    pub fn start(config: ClusterConfig, keys: Arc<KeyPair>, version: &str, events: mpsc::UnboundedSender<Event>) -> Cluster {
        let status = Arc::new(Mutex::new(Status {
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
        }));
        let (stop, stopped) = watch::channel(false);
        let ctx = Ctx {
            trusted: Mutex::new(TrustedKeys::new()),
            config,
            keys,
            version: version.to_owned(),
            status: status.clone(),
            events,
        };
        let task = tokio::spawn(run(ctx, stopped));
        Cluster {
            status,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
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

async fn run(ctx: Ctx, mut stopped: watch::Receiver<bool>) {
    ctx.reload_trusted();
    let mut last_error = None;
    let mut outer = stopped.clone();
    loop {
        // The session itself answers a stop (it revokes the lease first);
        // one still connecting is left to `leave`'s time limit.
        let why = match session(&ctx, &mut stopped).await {
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
    let prefix = ctx.config.nodes_prefix();
    let all = ask(
        "reading the nodes",
        client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = all.header().map_or(0, |h| h.revision());
    ctx.resync(all.kvs().iter().map(|kv| (kv.key(), kv.value())));
    let mut watching = ask(
        "watching the nodes",
        client.watch(
            prefix.clone(),
            Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1)),
        ),
    )
    .await?;
    ctx.etcd_members(&mut client).await;
    {
        let mut s = lock(&ctx.status);
        s.connection = Connection::Joined;
        s.error = None;
        s.since_usec = now_usec();
    }
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
                let Some(changes) = changes.map_err(etcd("watching the nodes"))? else {
                    return Err("etcd ended the watch on the nodes".to_owned());
                };
                if changes.canceled() {
                    return Err(format!("etcd cancelled the watch on the nodes: {}", changes.cancel_reason()));
                }
                for event in changes.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(node) = kv.key_str().ok().and_then(|k| k.strip_prefix(prefix.as_str())) else { continue };
                    match event.event_type() {
                        EventType::Put => ctx.seen(node, kv.value()),
                        EventType::Delete => ctx.gone(node),
                    }
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

impl Ctx {
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

    /// A record was deleted (its lease ran out or was revoked).
    fn gone(&self, node: &str) {
        let mut s = lock(&self.status);
        s.refused.remove(node);
        if let Some(i) = s.nodes.iter().position(|n| n.node == node) {
            s.nodes.remove(i);
            tracing::info!(node, "cluster: node down");
            let _ = self.events.send(Event::NodeDown { node: node.to_owned() });
        }
    }

    /// Every record, read at the start of a session: nodes not among them
    /// went while this one was away.
    fn resync<'a>(&self, records: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let prefix = self.config.nodes_prefix();
        let mut present = Vec::new();
        for (key, value) in records {
            let Some(node) = std::str::from_utf8(key).ok().and_then(|k| k.strip_prefix(prefix.as_str())) else {
                continue;
            };
            present.push(node.to_owned());
            self.seen(node, value);
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
