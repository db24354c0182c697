//! The cell network (issue 20): QuantumOS nodes that find each other through
//! etcd. etcd (Raft; Debian's etcd-server) is the cluster's store, leases
//! and watches; nothing here is a consensus of its own.
//!
//! A node joins when `/etc/quantumos/cluster.toml` names etcd endpoints
//! ([`config`]). It registers a record signed by its node identity under a
//! lease ([`record`]), keeps the lease alive, and watches every node's
//! record ([`membership`]): a node whose lease runs out is gone from every
//! view within the TTL; a record whose key is not trusted, or whose
//! signature does not verify, is refused. Cells placed on the cluster
//! ([`placement`]) run on the node their key names, and move, by
//! compare-and-swap, when that node is lost.

pub mod config;
pub mod membership;
pub mod placement;
pub mod record;

pub use config::{ClusterConfig, ConfigError};
pub use membership::{Cluster, Connection, EtcdMember, Event, NodeView, Status};
pub use placement::Placement;
pub use record::{Capacity, NodeInfo, NodeRecord, RecordError};
