//! Seals: one signature over the chain head that vouches for every entry
//! before it. The trail signs through [`Signer`], implemented by whoever holds
//! the node identity, and checks through [`Verifier`], which knows the keys
//! that are trusted; it never sees a private key itself.

use std::fmt;

use crate::entry::{hex, Digest};

/// Names the key that made a seal: blake3 of its public key (see
/// [`crate::mldsa::key_id`]), so a verifier can hold several keys (after the
/// node's identity was replaced, say) and pick the right one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex(&self.0))
    }
}

/// The signer could not sign (a TPM error, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signer failed: {reason}")]
pub struct SignError {
    pub reason: String,
}

/// Signs seals with the node identity.
pub trait Signer {
    fn key_id(&self) -> KeyId;
    /// Signs `msg`, which [`seal_message`] built; it is already
    /// domain-separated, so the signer signs it as it is.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError>;
}

/// Why a seal's signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the key that made it is not trusted here")]
    UnknownKey,
    #[error("the signature does not verify")]
    Invalid,
}

/// Checks seal signatures against the keys trusted here.
pub trait Verifier {
    fn verify(&self, key_id: &KeyId, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError>;
}

/// Longest signature a seal may carry. ML-DSA-65 signatures are 3309 bytes,
/// ML-DSA-87 ones 4627; the bound only keeps a seal inside one frame.
pub const MAX_SIGNATURE: usize = 8 * 1024;

const SEAL_DOMAIN: &[u8] = b"quantumos trail seal v1\0";

/// The exact bytes a seal signs:
/// `"quantumos trail seal v1\0" || head (32) || covers_seq (u64 LE) || time_ns (u64 LE) || key_id (32)`.
/// The domain string keeps a trail signature from being valid for anything
/// else the node key signs (identity documents, bundles), and the key id is
/// inside so that a signature cannot be relabelled as another key's.
pub fn seal_message(head: &Digest, covers_seq: u64, time_ns: u64, key_id: &KeyId) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SEAL_DOMAIN.len() + 32 + 8 + 8 + 32);
    msg.extend_from_slice(SEAL_DOMAIN);
    msg.extend_from_slice(&head.0);
    msg.extend_from_slice(&covers_seq.to_le_bytes());
    msg.extend_from_slice(&time_ns.to_le_bytes());
    msg.extend_from_slice(&key_id.0);
    msg
}

/// A seal as stored: the head it signs is the `prev` of the seal record,
/// that is, the hash of the record just before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub head: Digest,
    /// The last entry the seal vouches for (and with it every earlier one).
    pub covers_seq: u64,
    pub time_ns: u64,
    pub key_id: KeyId,
    pub signature: Vec<u8>,
}

impl Seal {
    pub fn message(&self) -> Vec<u8> {
        seal_message(&self.head, self.covers_seq, self.time_ns, &self.key_id)
    }
}
