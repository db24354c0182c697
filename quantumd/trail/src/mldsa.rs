//! ML-DSA-65 (FIPS 204) behind [`Signer`] and [`Verifier`]: a signer from a
//! key pair held in memory, and a key ring of trusted public keys. quantumd
//! signs through its node identity (which may keep the key in a TPM) rather
//! than [`MlDsa65Signer`]; the key ring is what `quantumctl trail verify`
//! needs, and both are what the tests and the bench use.

use std::collections::HashMap;

use pqcrypto_mldsa::mldsa65;
use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _, SecretKey as _};

use crate::seal::{KeyId, SignError, SignatureError, Signer, Verifier};

/// A key's id: blake3 of its public key bytes.
pub fn key_id(public_key: &[u8]) -> KeyId {
    KeyId(*blake3::hash(public_key).as_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an ML-DSA-65 {what}: {len} bytes")]
pub struct KeyError {
    pub what: &'static str,
    pub len: usize,
}

/// Signs with an ML-DSA-65 secret key held in memory.
#[derive(Clone)]
pub struct MlDsa65Signer {
    secret: mldsa65::SecretKey,
    key_id: KeyId,
}

impl MlDsa65Signer {
    /// A fresh key pair: the signer and the public key's bytes.
    pub fn generate() -> (MlDsa65Signer, Vec<u8>) {
        let (public, secret) = mldsa65::keypair();
        let public = public.as_bytes().to_vec();
        (
            MlDsa65Signer {
                secret,
                key_id: key_id(&public),
            },
            public,
        )
    }

    pub fn from_bytes(public_key: &[u8], secret_key: &[u8]) -> Result<MlDsa65Signer, KeyError> {
        mldsa65::PublicKey::from_bytes(public_key).map_err(|_| KeyError {
            what: "public key",
            len: public_key.len(),
        })?;
        let secret = mldsa65::SecretKey::from_bytes(secret_key).map_err(|_| KeyError {
            what: "secret key",
            len: secret_key.len(),
        })?;
        Ok(MlDsa65Signer {
            secret,
            key_id: key_id(public_key),
        })
    }
}

impl Signer for MlDsa65Signer {
    fn key_id(&self) -> KeyId {
        self.key_id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(mldsa65::detached_sign(msg, &self.secret).as_bytes().to_vec())
    }
}

/// The ML-DSA-65 public keys trusted to seal a trail.
#[derive(Default)]
pub struct MlDsa65Keyring {
    keys: HashMap<KeyId, mldsa65::PublicKey>,
}

impl MlDsa65Keyring {
    pub fn new() -> MlDsa65Keyring {
        MlDsa65Keyring::default()
    }

    /// Trusts a public key; returns its id.
    pub fn add(&mut self, public_key: &[u8]) -> Result<KeyId, KeyError> {
        let key = mldsa65::PublicKey::from_bytes(public_key).map_err(|_| KeyError {
            what: "public key",
            len: public_key.len(),
        })?;
        let id = key_id(public_key);
        self.keys.insert(id, key);
        Ok(id)
    }
}

impl Verifier for MlDsa65Keyring {
    fn verify(&self, key_id: &KeyId, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
        let key = self.keys.get(key_id).ok_or(SignatureError::UnknownKey)?;
        let sig = mldsa65::DetachedSignature::from_bytes(sig).map_err(|_| SignatureError::Invalid)?;
        mldsa65::verify_detached_signature(&sig, msg, key).map_err(|_| SignatureError::Invalid)
    }
}
