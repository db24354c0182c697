//! QuantumOS trust: node identity (ML-DSA-65 + Ed25519, TPM-sealed), cell identity documents,
//! signed cell bundles.
//!
//! - [`keys`]: dual keypairs, dual signatures, key ids, public key files, the trusted key set.
//! - [`seal`]: where the node's secret keys live (TPM or owner-only file) behind one enum.
//! - [`identity`]: the signed identity document each cell instance receives.
//! - [`bundle`]: the signed cell bundle file format and its verification.
//!
//! This crate knows nothing of D-Bus, systemd or the daemon's state: quantumd and quantumctl
//! both use it, and the cell manifest is read here only for its `artifact.blake3`.

pub mod bundle;
pub mod identity;
pub mod keys;
pub mod seal;

pub use bundle::{Bundle, BundleError, BundleSignature, CacheId, VerifiedBundle};
pub use identity::{IdentityDocument, IdentityError, SignedIdentity};
pub use keys::{AuthorKeys, DualSignature, Fingerprint, KeyError, KeyId, KeyPair, NodeKeys, PublicKeys, SignatureError, TrustedKeys};
pub use seal::{Config, KeyStore, Origin, SealError, SecretStore, TpmSetting};
