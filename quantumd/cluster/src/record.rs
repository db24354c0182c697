//! A node's registration: who it is, what it can take, signed by its node
//! identity. etcd stores it under `<prefix>/nodes/<node>`, attached to the
//! node's lease, so it disappears when the node stops keeping it alive.
//!
//! etcd itself believes whoever writes to it; the signature is what lets
//! every other node believe a record: it must verify under the key the
//! record carries, and that key must be one of the trusted nodes' (the
//! administrator's `*.pub` files) or the reader's own.

use base64::Engine;
use quantum_trust::{DualSignature, KeyPair, PublicKeys, TrustedKeys};
use serde::{Deserialize, Serialize};

/// Signed messages start with this, so that a record's signature can never
/// be taken for a signature over anything else the node signs.
const DOMAIN: &[u8] = b"quantumos-cluster-node-v1\n";

/// What a node can take (STEPPPS SPACE at registration time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Capacity {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub gpus: u32,
}

impl Capacity {
    /// This machine, now: CPUs quantumd may use, `/proc/meminfo`, NVIDIA
    /// devices.
    pub fn of_this_machine() -> Capacity {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |field: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        let gpus = std::fs::read_dir("/dev")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        name.strip_prefix("nvidia")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .count() as u32
            })
            .unwrap_or(0);
        Capacity {
            cpus,
            memory_bytes: kib("MemTotal:"),
            memory_available_bytes: kib("MemAvailable:"),
            gpus,
        }
    }
}

/// The signed fields, in the order they are signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeInfo {
    pub node: String,
    /// quantumd's version.
    pub version: String,
    /// The node identity's public keys (`PublicKeys::to_toml`).
    pub key: String,
    pub capacity: Capacity,
    /// When this record was written (microseconds since 1970).
    pub updated_usec: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeRecord {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// ML-DSA-65 and Ed25519 signatures (base64) over the domain and the
    /// info's JSON.
    pub ml_dsa: String,
    pub ed25519: String,
}

/// Why a record is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a node record: {0}")]
    Malformed(String),
    #[error("registered as {key:?} but the record names node {named:?}")]
    WrongName { key: String, named: String },
    #[error("its key is unreadable: {0}")]
    BadKey(String),
    #[error("its key {0} is not among the trusted nodes")]
    Untrusted(String),
    #[error("its signature does not verify under its key (forged or altered)")]
    BadSignature,
}

fn message(info: &NodeInfo) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    // A struct of strings and numbers: serde_json cannot fail on it.
    m.extend(serde_json::to_vec(info).unwrap_or_default());
    m
}

impl NodeRecord {
    pub fn sign(info: NodeInfo, keys: &KeyPair) -> NodeRecord {
        let sig = keys.sign(&message(&info));
        let b64 = base64::engine::general_purpose::STANDARD;
        NodeRecord {
            info,
            ml_dsa: b64.encode(sig.ml_dsa()),
            ed25519: b64.encode(sig.ed25519()),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the record stored for `node` and checks that it is what it
    /// says: its name, a trusted key, a signature under that key.
    pub fn verify(node: &str, bytes: &[u8], trusted: &TrustedKeys) -> Result<(NodeRecord, PublicKeys), RecordError> {
        let record: NodeRecord = serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if record.info.node != node {
            return Err(RecordError::WrongName {
                key: node.to_owned(),
                named: record.info.node,
            });
        }
        let keys = PublicKeys::from_toml(&record.info.key).map_err(|e| RecordError::BadKey(e.to_string()))?;
        match trusted.get(&keys.key_id()) {
            Some(t) if t.keys == keys => {}
            _ => return Err(RecordError::Untrusted(keys.key_id().to_string())),
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let ml_dsa = b64.decode(&record.ml_dsa).map_err(|_| RecordError::BadSignature)?;
        let ed25519 = b64.decode(&record.ed25519).map_err(|_| RecordError::BadSignature)?;
        let sig = DualSignature::from_parts(&ml_dsa, &ed25519).map_err(|_| RecordError::BadSignature)?;
        keys.verify(&message(&record.info), &sig).map_err(|_| RecordError::BadSignature)?;
        Ok((record, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(keys: &KeyPair, node: &str) -> NodeInfo {
        NodeInfo {
            node: node.to_owned(),
            version: "0.1.0".to_owned(),
            key: keys.public().to_toml(),
            capacity: Capacity::of_this_machine(),
            updated_usec: 1,
        }
    }

    #[test]
    fn a_signed_record_of_a_trusted_node_is_believed_and_nothing_else_is() {
        let a = KeyPair::generate("a").expect("keys");
        let stranger = KeyPair::generate("b").expect("keys");
        let mut trusted = TrustedKeys::new();
        trusted.insert(a.public().clone());

        let good = NodeRecord::sign(info(&a, "a"), &a).to_json();
        let (record, keys) = NodeRecord::verify("a", good.as_bytes(), &trusted).expect("believed");
        assert_eq!(record.info.node, "a");
        assert_eq!(keys.key_id(), a.key_id());

        assert!(matches!(
            NodeRecord::verify("b", good.as_bytes(), &trusted),
            Err(RecordError::WrongName { .. })
        ));
        let untrusted = NodeRecord::sign(info(&stranger, "b"), &stranger).to_json();
        assert!(matches!(
            NodeRecord::verify("b", untrusted.as_bytes(), &trusted),
            Err(RecordError::Untrusted(_))
        ));
        // The trusted key, but signed by someone else: a forgery.
        let forged = NodeRecord::sign(info(&a, "a"), &stranger).to_json();
        assert_eq!(
            NodeRecord::verify("a", forged.as_bytes(), &trusted).unwrap_err(),
            RecordError::BadSignature
        );
        // Signed, then altered.
        let mut altered = NodeRecord::sign(info(&a, "a"), &a);
        altered.info.capacity.cpus += 64;
        assert_eq!(
            NodeRecord::verify("a", altered.to_json().as_bytes(), &trusted).unwrap_err(),
            RecordError::BadSignature
        );
        assert!(matches!(NodeRecord::verify("a", b"{}", &trusted), Err(RecordError::Malformed(_))));
    }

    #[test]
    fn this_machine_has_a_cpu_and_memory() {
        let c = Capacity::of_this_machine();
        assert!(
            c.cpus >= 1 && c.memory_bytes > 0 && c.memory_available_bytes <= c.memory_bytes,
            "{c:?}"
        );
    }
}
