//! quantumd's side of the cell network (quantum-cluster): joins when the
//! cluster file exists, records what happens in the trail, answers
//! `Cluster()`, and leaves (revoking its lease) when quantumd stops.
//!
//! A cluster file that does not parse does not stop quantumd: the node runs
//! on its own, and `quantumctl cluster` and the log say what is wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quantum_cluster::{Cluster, ClusterConfig, Connection, Event};
use tokio::sync::mpsc;

use crate::identity::Identity;
use crate::trail::Recorder;

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
}

impl Membership {
    pub fn start(config: &Path, identity: &Identity, trail: Option<Recorder>) -> Membership {
        let public = identity.public();
        let state = match ClusterConfig::load(config) {
            Ok(None) => State::Standalone,
            Err(e) => {
                tracing::warn!(error = %e, "cluster file not used: this node runs on its own");
                State::Misconfigured(e.to_string())
            }
            Ok(Some(c)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(record(rx, trail.clone()));
                State::Member(Cluster::start(c, identity.keys(), env!("CARGO_PKG_VERSION"), tx))
            }
        };
        Membership {
            config: config.to_owned(),
            public_key: public.to_toml(),
            key_id: public.key_id().to_string(),
            state: Arc::new(state),
            trail,
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
            }
        }
        out
    }
}

/// The membership's events, into the trail.
async fn record(mut events: mpsc::UnboundedReceiver<Event>, trail: Option<Recorder>) {
    while let Some(event) = events.recv().await {
        let detail = match event {
            Event::Joined { lease } => format!("joined (lease {lease:x})"),
            Event::Lost { why } => format!("lost: {why}"),
            Event::NodeUp { node, key_id } => format!("node up {node} (key {key_id})"),
            Event::NodeDown { node } => format!("node down {node}"),
            Event::Refused { node, why } => format!("refused node {node}: {why}"),
            // Recorded by `leave`.
            Event::Left => continue,
        };
        if let Some(t) = &trail {
            t.record(crate::trail::entry("quantumd", &quantum_trail::Action::CLUSTER).detail(detail));
        }
    }
}
