//! The node identity in the daemon: the dual ML-DSA-65 + Ed25519 keypair of
//! this node, kept by quantum-trust's `KeyStore` (sealed by the TPM where
//! one answers, else a file only quantumd can read — and quantumd says
//! which), used to seal the trail and to sign each cell instance's identity
//! document.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quantum_trust::{DualSignature, KeyStore, NodeKeys, Origin, PublicKeys, TpmSetting};

/// How long a cell's identity document is valid. Cells are restarted by
/// quantumd (with a new document) long before, or are long-running
/// services that re-read the credential on restart.
const DOCUMENT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The current public key, kept beside the secret (plain text: it is public)
/// so that it is known even when the secret cannot be unsealed any more.
const PUBLIC_FILE: &str = "node.pub";
/// Public keys of identities this node had before, by key id: the trail's
/// older seals are verified against them.
const RETIRED_DIR: &str = "retired";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot open the node identity store in {dir}")]
    Open {
        dir: String,
        source: Box<quantum_trust::SealError>,
    },
    #[error("cannot load the node identity ({store})")]
    Load {
        store: String,
        source: Box<quantum_trust::SealError>,
    },
    #[error("cannot {action} {path}")]
    Files {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
}

impl IdentityError {
    /// The identity store's own error, when that is what went wrong.
    pub fn seal_error(&self) -> Option<&quantum_trust::SealError> {
        match self {
            IdentityError::Open { source, .. } | IdentityError::Load { source, .. } => Some(source),
            IdentityError::Files { .. } => None,
        }
    }
}

/// The node's keys and where they are kept.
#[derive(Clone)]
pub struct Identity {
    keys: Arc<NodeKeys>,
    dir: std::path::PathBuf,
    store: String,
    fallback: Option<String>,
    /// Whether this start generated the identity (recorded in the trail).
    pub generated: bool,
}

impl Identity {
    pub fn open(dir: &Path, tpm: TpmSetting, bind_pcr7: bool) -> Result<Identity, IdentityError> {
        let config = quantum_trust::Config {
            tpm,
            dir: dir.to_owned(),
            bind_pcr7,
        };
        let store = KeyStore::open(&config).map_err(|source| IdentityError::Open {
            dir: dir.display().to_string(),
            source: Box::new(source),
        })?;
        let description = store.describe();
        let (keys, origin) = store.load_or_generate("node").map_err(|source| IdentityError::Load {
            store: description.clone(),
            source: Box::new(source),
        })?;
        let fallback = store.fallback_reason().map(str::to_owned);
        let identity = Identity {
            keys: Arc::new(keys),
            dir: dir.to_owned(),
            store: description,
            fallback,
            generated: origin == Origin::Generated,
        };
        match &identity.fallback {
            Some(why) => tracing::warn!(
                key_id = %identity.keys.key_id(),
                store = %identity.store,
                why = %why,
                "node identity in a key file, not a TPM"
            ),
            None => tracing::info!(key_id = %identity.keys.key_id(), store = %identity.store, "node identity sealed by the TPM"),
        }
        let public = identity.public().to_toml();
        let path = dir.join(PUBLIC_FILE);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(public.as_str()) {
            std::fs::write(&path, public).map_err(|source| IdentityError::Files {
                action: "write the public key to",
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(identity)
    }

    /// Replaces the node identity with a new one: the recovery path when
    /// the old one cannot be unsealed (PCR 7 changed, the TPM was cleared)
    /// or should move into a TPM. The old secret is deleted; its public key
    /// moves to `retired/`, so the trail it sealed still verifies. Returns
    /// the new identity and the retired key id, if it was known.
    pub fn regenerate(dir: &Path, tpm: TpmSetting, bind_pcr7: bool) -> Result<(Identity, Option<String>), IdentityError> {
        let files = |action: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |source| IdentityError::Files { action, path, source }
        };
        let old = std::fs::read_to_string(dir.join(PUBLIC_FILE))
            .ok()
            .and_then(|text| PublicKeys::from_toml(&text).ok());
        if let Some(old) = &old {
            let retired = dir.join(RETIRED_DIR);
            std::fs::create_dir_all(&retired).map_err(files("create", &retired))?;
            let path = retired.join(format!("{}.pub", old.key_id()));
            std::fs::write(&path, old.to_toml()).map_err(files("write", &path))?;
        }
        for name in [quantum_trust::seal::KEY_FILE, quantum_trust::seal::SEALED_FILE, PUBLIC_FILE] {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(files("remove", &path)(e)),
                _ => {}
            }
        }
        let identity = Identity::open(dir, tpm, bind_pcr7)?;
        Ok((identity, old.map(|k| k.key_id().to_string())))
    }

    /// Verifies trail seals made by this identity or a retired one.
    pub fn verifier(&self) -> NodeVerifier {
        let mut keys = vec![self.public().clone()];
        // A retired key that cannot be read only means its seals fail to
        // verify, and verify says which.
        if let Ok(rd) = std::fs::read_dir(self.dir.join(RETIRED_DIR)) {
            for entry in rd.flatten() {
                if let Some(k) = std::fs::read_to_string(entry.path())
                    .ok()
                    .and_then(|t| PublicKeys::from_toml(&t).ok())
                {
                    keys.push(k);
                }
            }
        }
        NodeVerifier(keys)
    }

    pub fn public(&self) -> &PublicKeys {
        self.keys.public()
    }

    /// Where the keys are kept, and why not in a TPM when they are not.
    pub fn describe(&self) -> String {
        match &self.fallback {
            Some(why) => format!("{} (no TPM: {why})", self.store),
            None => self.store.clone(),
        }
    }

    pub fn is_tpm(&self) -> bool {
        self.fallback.is_none()
    }

    /// The signed identity document of a cell instance, as JSON for a
    /// systemd credential.
    pub fn document(&self, cell: &str, manifest: &blake3::Hash, instance: &str) -> Result<String, quantum_trust::IdentityError> {
        quantum_trust::IdentityDocument::issue(cell, manifest, instance, &self.keys, SystemTime::now(), DOCUMENT_LIFETIME)
            .map(|signed| signed.to_json())
    }

    /// The node's keys, for signing its cluster record.
    pub fn keys(&self) -> Arc<NodeKeys> {
        self.keys.clone()
    }

    pub fn signer(&self) -> NodeSigner {
        NodeSigner(self.keys.clone())
    }
}

/// Seals the trail with both signatures of the node (ML-DSA-65, then the
/// 64-byte Ed25519 one), under the node's combined key id.
pub struct NodeSigner(Arc<NodeKeys>);

impl quantum_trail::Signer for NodeSigner {
    fn key_id(&self) -> quantum_trail::KeyId {
        quantum_trail::KeyId(*self.0.key_id().as_bytes())
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, quantum_trail::SignError> {
        let sig = self.0.sign(msg);
        let mut bytes = sig.ml_dsa().to_vec();
        bytes.extend_from_slice(sig.ed25519());
        Ok(bytes)
    }
}

/// Checks trail seals against the node's public keys, current and retired
/// (both signatures).
pub struct NodeVerifier(pub Vec<PublicKeys>);

impl quantum_trail::Verifier for NodeVerifier {
    fn verify(&self, key_id: &quantum_trail::KeyId, msg: &[u8], sig: &[u8]) -> Result<(), quantum_trail::SignatureError> {
        let key = self
            .0
            .iter()
            .find(|k| key_id.0 == *k.key_id().as_bytes())
            .ok_or(quantum_trail::SignatureError::UnknownKey)?;
        let split = sig.len().checked_sub(64).ok_or(quantum_trail::SignatureError::Invalid)?;
        let dual = DualSignature::from_parts(&sig[..split], &sig[split..]).map_err(|_| quantum_trail::SignatureError::Invalid)?;
        key.verify(msg, &dual).map_err(|_| quantum_trail::SignatureError::Invalid)
    }
}
