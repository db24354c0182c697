//! Dual keypairs: ML-DSA-65 for post-quantum security plus Ed25519 for tools that only speak
//! classical signatures. Every signature QuantumOS makes carries both, and a verifier accepts it
//! only when both verify, so breaking one algorithm is not enough to forge anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use pqcrypto_mldsa::mldsa65;
use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _, SecretKey as _};
use serde::{Deserialize, Serialize};
use tracing::debug;
use zeroize::Zeroizing;

/// Bytes of an ML-DSA-65 public key.
pub const ML_DSA_PUBLIC_KEY_BYTES: usize = mldsa65::public_key_bytes();
/// Bytes of an ML-DSA-65 secret key.
pub const ML_DSA_SECRET_KEY_BYTES: usize = mldsa65::secret_key_bytes();
/// Bytes of an ML-DSA-65 signature.
pub const ML_DSA_SIGNATURE_BYTES: usize = mldsa65::signature_bytes();
/// Bytes of an Ed25519 signature.
pub const ED25519_SIGNATURE_BYTES: usize = ed25519_dalek::SIGNATURE_LENGTH;

/// The longest key name; names end up in file comments and log lines, so they stay short.
pub const MAX_NAME_LEN: usize = 128;

const PUBLIC_KEY_FORMAT: &str = "quantumos-public-key-v1";
const SECRET_KEY_MAGIC: &[u8; 8] = b"QOSSKEY1";
const KEY_ID_CONTEXT: &str = "quantumos 2025 key id v1";
// A fixed message signed when secret key bytes are loaded, to prove the ML-DSA secret half
// belongs to the public half stored beside it (ML-DSA secret keys do not contain t1, so the
// public key cannot simply be recomputed).
const SELF_TEST_MESSAGE: &[u8] = b"quantumos secret key self-test";

/// Errors about keys, signatures and key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key name {name:?} is invalid: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("the operating system's random number generator failed")]
    Random(#[source] getrandom::Error),
    #[error("secret key bytes are invalid: {reason}")]
    BadSecretKey { reason: String },
    #[error("public key text is invalid: {reason}")]
    BadPublicKey { reason: String },
    #[error("signature is malformed: {reason}")]
    BadSignature { reason: String },
    #[error("public key text is not valid TOML of the {PUBLIC_KEY_FORMAT} format")]
    PublicKeyToml(#[source] toml::de::Error),
    #[error("public key {name:?} declares key-id {declared} but its keys give {actual}")]
    KeyIdMismatch { name: String, declared: KeyId, actual: KeyId },
    #[error("{}: cannot read the trusted key directory", dir.display())]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("{}: cannot read public key file", path.display())]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("{}: bad public key file", path.display())]
    BadFile {
        path: PathBuf,
        #[source]
        source: Box<KeyError>,
    },
    #[error("{}: key {key_id} is already trusted from {}", path.display(), first.display())]
    DuplicateKey { path: PathBuf, first: PathBuf, key_id: KeyId },
}

/// Which half of a dual signature failed to verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("ML-DSA-65 signature does not verify against key {key_id}")]
    MlDsa { key_id: KeyId },
    #[error("Ed25519 signature does not verify against key {key_id}")]
    Ed25519 { key_id: KeyId },
    #[error("neither the ML-DSA-65 nor the Ed25519 signature verifies against key {key_id}")]
    Both { key_id: KeyId },
}

/// The identity of a dual public key: blake3 (in key-derivation mode, so it can never collide
/// with a content hash) over the ML-DSA-65 public key followed by the Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 16 hex digits, for log lines where the full id is noise.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| KeyError::BadPublicKey {
            reason: format!("key id {s:?} is not 64 hex digits: {e}"),
        })?;
        Ok(KeyId(out))
    }
}

/// blake3 of one public key, shown as groups of four hex digits so people can compare it aloud.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = hex::encode(self.0);
        for (i, group) in hex.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            // hex::encode only produces ASCII, so every chunk is valid UTF-8.
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// An ML-DSA-65 signature and an Ed25519 signature over the same message.
#[derive(Clone, PartialEq, Eq)]
pub struct DualSignature {
    ml_dsa: Vec<u8>,
    ed25519: [u8; ED25519_SIGNATURE_BYTES],
}

impl DualSignature {
    /// Assembles a signature from its halves, checking only their lengths.
    pub fn from_parts(ml_dsa: &[u8], ed25519: &[u8]) -> Result<Self, KeyError> {
        if ml_dsa.len() != ML_DSA_SIGNATURE_BYTES {
            return Err(KeyError::BadSignature {
                reason: format!("ML-DSA-65 signature is {} bytes, expected {ML_DSA_SIGNATURE_BYTES}", ml_dsa.len()),
            });
        }
        let ed25519: [u8; ED25519_SIGNATURE_BYTES] = ed25519.try_into().map_err(|_| KeyError::BadSignature {
            reason: format!("Ed25519 signature is {} bytes, expected {ED25519_SIGNATURE_BYTES}", ed25519.len()),
        })?;
        Ok(DualSignature {
            ml_dsa: ml_dsa.to_vec(),
            ed25519,
        })
    }

    pub fn ml_dsa(&self) -> &[u8] {
        &self.ml_dsa
    }

    pub fn ed25519(&self) -> &[u8; ED25519_SIGNATURE_BYTES] {
        &self.ed25519
    }
}

impl fmt::Debug for DualSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DualSignature(ml-dsa-65 {} bytes, ed25519 {})",
            self.ml_dsa.len(),
            hex::encode(&self.ed25519[..8])
        )
    }
}

/// Verifies one ML-DSA-65 signature; false for malformed input as well as for a wrong signature.
pub(crate) fn verify_ml_dsa(public: &mldsa65::PublicKey, message: &[u8], signature: &[u8]) -> bool {
    match mldsa65::DetachedSignature::from_bytes(signature) {
        Ok(sig) => mldsa65::verify_detached_signature(&sig, message, public).is_ok(),
        Err(_) => false,
    }
}

/// Verifies one Ed25519 signature with the strict rules (no small-order keys, canonical S), so
/// that one message has exactly one accepted signature per key.
pub(crate) fn verify_ed25519(public: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    match ed25519_dalek::Signature::from_slice(signature) {
        Ok(sig) => public.verify_strict(message, &sig).is_ok(),
        Err(_) => false,
    }
}

/// The public half of a dual keypair, with the name it was created under.
#[derive(Clone)]
pub struct PublicKeys {
    name: String,
    ml_dsa: mldsa65::PublicKey,
    ed25519: VerifyingKey,
    key_id: KeyId,
}

impl PartialEq for PublicKeys {
    fn eq(&self, other: &Self) -> bool {
        self.key_id == other.key_id && self.name == other.name
    }
}

impl Eq for PublicKeys {}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeys")
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PublicKeyFile {
    format: String,
    name: String,
    key_id: String,
    ml_dsa_65: String,
    ed25519: String,
}

impl PublicKeys {
    /// Builds public keys from raw key bytes.
    pub fn from_raw(name: &str, ml_dsa: &[u8], ed25519: &[u8]) -> Result<Self, KeyError> {
        check_name(name)?;
        let ml_dsa = mldsa65::PublicKey::from_bytes(ml_dsa).map_err(|e| KeyError::BadPublicKey {
            reason: format!("ML-DSA-65 public key: {e}"),
        })?;
        let ed25519: [u8; 32] = ed25519.try_into().map_err(|_| KeyError::BadPublicKey {
            reason: format!("Ed25519 public key is {} bytes, expected 32", ed25519.len()),
        })?;
        let ed25519 = VerifyingKey::from_bytes(&ed25519).map_err(|e| KeyError::BadPublicKey {
            reason: format!("Ed25519 public key is not a curve point: {e}"),
        })?;
        let key_id = compute_key_id(&ml_dsa, &ed25519);
        Ok(PublicKeys {
            name: name.to_owned(),
            ml_dsa,
            ed25519,
            key_id,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn ml_dsa_bytes(&self) -> &[u8] {
        self.ml_dsa.as_bytes()
    }

    pub fn ed25519_bytes(&self) -> &[u8; 32] {
        self.ed25519.as_bytes()
    }

    pub fn ml_dsa_fingerprint(&self) -> Fingerprint {
        Fingerprint(*blake3::hash(self.ml_dsa.as_bytes()).as_bytes())
    }

    pub fn ed25519_fingerprint(&self) -> Fingerprint {
        Fingerprint(*blake3::hash(self.ed25519.as_bytes()).as_bytes())
    }

    /// Accepts `signature` only if both of its halves verify over `message`.
    pub fn verify(&self, message: &[u8], signature: &DualSignature) -> Result<(), SignatureError> {
        let ml_dsa_ok = verify_ml_dsa(&self.ml_dsa, message, &signature.ml_dsa);
        let ed25519_ok = verify_ed25519(&self.ed25519, message, &signature.ed25519);
        match (ml_dsa_ok, ed25519_ok) {
            (true, true) => Ok(()),
            (false, true) => Err(SignatureError::MlDsa { key_id: self.key_id }),
            (true, false) => Err(SignatureError::Ed25519 { key_id: self.key_id }),
            (false, false) => Err(SignatureError::Both { key_id: self.key_id }),
        }
    }

    pub(crate) fn ml_dsa(&self) -> &mldsa65::PublicKey {
        &self.ml_dsa
    }

    pub(crate) fn ed25519(&self) -> &VerifyingKey {
        &self.ed25519
    }

    /// The text of a `*.pub` file for /etc/quantumos/trusted-keys.d/: TOML whose comments carry
    /// the name and fingerprints for people, and whose keys carry everything a machine needs.
    pub fn to_toml(&self) -> String {
        let file = PublicKeyFile {
            format: PUBLIC_KEY_FORMAT.to_owned(),
            name: self.name.clone(),
            key_id: self.key_id.to_string(),
            ml_dsa_65: BASE64.encode(self.ml_dsa.as_bytes()),
            ed25519: BASE64.encode(self.ed25519.as_bytes()),
        };
        // Serialising a struct of plain strings cannot fail; fall back to an empty body rather
        // than panic should toml ever change its mind, which the round-trip tests would catch.
        let body = toml::to_string(&file).unwrap_or_default();
        format!(
            "# QuantumOS public key {:?}\n# key id                 {}\n# ML-DSA-65 fingerprint  {}\n# Ed25519 fingerprint    {}\n{body}",
            self.name,
            self.key_id,
            self.ml_dsa_fingerprint(),
            self.ed25519_fingerprint(),
        )
    }

    /// Parses the text written by [`PublicKeys::to_toml`], checking that the declared key id
    /// matches the keys so a hand-edited file cannot claim another key's identity.
    pub fn from_toml(text: &str) -> Result<Self, KeyError> {
        let file: PublicKeyFile = toml::from_str(text).map_err(KeyError::PublicKeyToml)?;
        if file.format != PUBLIC_KEY_FORMAT {
            return Err(KeyError::BadPublicKey {
                reason: format!("format is {:?}, expected {PUBLIC_KEY_FORMAT:?}", file.format),
            });
        }
        let declared: KeyId = file.key_id.parse()?;
        let ml_dsa = BASE64.decode(file.ml_dsa_65.trim()).map_err(|e| KeyError::BadPublicKey {
            reason: format!("ml-dsa-65 is not base64: {e}"),
        })?;
        let ed25519 = BASE64.decode(file.ed25519.trim()).map_err(|e| KeyError::BadPublicKey {
            reason: format!("ed25519 is not base64: {e}"),
        })?;
        let keys = PublicKeys::from_raw(&file.name, &ml_dsa, &ed25519)?;
        if keys.key_id != declared {
            return Err(KeyError::KeyIdMismatch {
                name: file.name,
                declared,
                actual: keys.key_id,
            });
        }
        Ok(keys)
    }
}

fn compute_key_id(ml_dsa: &mldsa65::PublicKey, ed25519: &VerifyingKey) -> KeyId {
    let mut hasher = blake3::Hasher::new_derive_key(KEY_ID_CONTEXT);
    hasher.update(ml_dsa.as_bytes());
    hasher.update(ed25519.as_bytes());
    KeyId(*hasher.finalize().as_bytes())
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let bad = |reason| {
        Err(KeyError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 128 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    Ok(())
}

/// The ML-DSA-65 secret key. pqcrypto's `SecretKey` is `Copy` and never wiped, so this wrapper
/// overwrites it when dropped.
struct MlDsaSecret(mldsa65::SecretKey);

impl Drop for MlDsaSecret {
    fn drop(&mut self) {
        let zero = [0u8; ML_DSA_SECRET_KEY_BYTES];
        if let Ok(blank) = mldsa65::SecretKey::from_bytes(&zero) {
            // SAFETY: `&mut self.0` is a valid, aligned, exclusive pointer to an initialised
            // `SecretKey`, and `SecretKey` is `Copy`, so overwriting it needs no drop. The write
            // is volatile so the compiler cannot drop it as a dead store before deallocation.
            unsafe { std::ptr::write_volatile(&mut self.0, blank) };
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A dual keypair with its secret halves. Secret material is wiped when it is dropped.
pub struct KeyPair {
    public: PublicKeys,
    ml_dsa: MlDsaSecret,
    ed25519: SigningKey,
}

/// The keys an author signs cell bundles with.
pub type AuthorKeys = KeyPair;
/// The node's identity keys (sealed by [`crate::seal`]).
pub type NodeKeys = KeyPair;

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secret material, not even in debug output.
        f.debug_struct("KeyPair")
            .field("name", &self.public.name)
            .field("key_id", &self.public.key_id)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Generates a fresh keypair from the operating system's random number generator.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name(name)?;
        let (ml_dsa_public, ml_dsa_secret) = mldsa65::keypair();
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(KeyError::Random)?;
        let ed25519 = SigningKey::from_bytes(&seed);
        let verifying = ed25519.verifying_key();
        let key_id = compute_key_id(&ml_dsa_public, &verifying);
        debug!(name, key_id = %key_id, "generated dual keypair");
        Ok(KeyPair {
            public: PublicKeys {
                name: name.to_owned(),
                ml_dsa: ml_dsa_public,
                ed25519: verifying,
                key_id,
            },
            ml_dsa: MlDsaSecret(ml_dsa_secret),
            ed25519,
        })
    }

    pub fn public(&self) -> &PublicKeys {
        &self.public
    }

    pub fn key_id(&self) -> KeyId {
        self.public.key_id
    }

    /// Signs `message` with both secret keys.
    pub fn sign(&self, message: &[u8]) -> DualSignature {
        let ml_dsa = mldsa65::detached_sign(message, &self.ml_dsa.0);
        let ed25519 = self.ed25519.sign(message);
        DualSignature {
            ml_dsa: ml_dsa.as_bytes().to_vec(),
            ed25519: ed25519.to_bytes(),
        }
    }

    /// The secret key bytes: `QOSSKEY1`, name length (u16 little endian), name, ML-DSA-65 public
    /// key, ML-DSA-65 secret key, Ed25519 seed. The result is wiped when dropped.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let name = self.public.name.as_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(
            SECRET_KEY_MAGIC.len() + 2 + name.len() + ML_DSA_PUBLIC_KEY_BYTES + ML_DSA_SECRET_KEY_BYTES + 32,
        ));
        out.extend_from_slice(SECRET_KEY_MAGIC);
        // check_name bounds names to MAX_NAME_LEN, far below u16::MAX.
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(self.public.ml_dsa.as_bytes());
        out.extend_from_slice(self.ml_dsa.0.as_bytes());
        out.extend_from_slice(self.ed25519.as_bytes());
        out
    }

    /// Parses [`KeyPair::to_secret_bytes`], and proves by a test signature that the ML-DSA secret
    /// key matches its public key, so a corrupted key file is caught at load rather than by every
    /// verifier later.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::BadSecretKey { reason };
        let rest = bytes
            .strip_prefix(SECRET_KEY_MAGIC.as_slice())
            .ok_or_else(|| bad("they do not start with QOSSKEY1".to_owned()))?;
        let (len, rest) = rest.split_at_checked(2).ok_or_else(|| bad("they end before the name".to_owned()))?;
        let name_len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let expected = name_len + ML_DSA_PUBLIC_KEY_BYTES + ML_DSA_SECRET_KEY_BYTES + 32;
        if rest.len() != expected {
            return Err(bad(format!("{} bytes follow the header, expected {expected}", rest.len())));
        }
        let (name, rest) = rest.split_at(name_len);
        let (ml_dsa_public, rest) = rest.split_at(ML_DSA_PUBLIC_KEY_BYTES);
        let (ml_dsa_secret, seed) = rest.split_at(ML_DSA_SECRET_KEY_BYTES);
        let name = std::str::from_utf8(name).map_err(|_| bad("the name is not UTF-8".to_owned()))?;
        check_name(name)?;
        let ml_dsa_public = mldsa65::PublicKey::from_bytes(ml_dsa_public).map_err(|e| bad(format!("ML-DSA-65 public key: {e}")))?;
        let ml_dsa_secret =
            MlDsaSecret(mldsa65::SecretKey::from_bytes(ml_dsa_secret).map_err(|e| bad(format!("ML-DSA-65 secret key: {e}")))?);
        let mut ed_seed = Zeroizing::new([0u8; 32]);
        ed_seed.copy_from_slice(seed);
        let ed25519 = SigningKey::from_bytes(&ed_seed);
        let verifying = ed25519.verifying_key();
        let key_id = compute_key_id(&ml_dsa_public, &verifying);
        let pair = KeyPair {
            public: PublicKeys {
                name: name.to_owned(),
                ml_dsa: ml_dsa_public,
                ed25519: verifying,
                key_id,
            },
            ml_dsa: ml_dsa_secret,
            ed25519,
        };
        let probe = mldsa65::detached_sign(SELF_TEST_MESSAGE, &pair.ml_dsa.0);
        if mldsa65::verify_detached_signature(&probe, SELF_TEST_MESSAGE, &pair.public.ml_dsa).is_err() {
            return Err(bad(
                "the ML-DSA-65 secret key does not belong to the public key stored with it".to_owned()
            ));
        }
        Ok(pair)
    }
}

/// A trusted public key and the file it came from.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub keys: PublicKeys,
    /// Where it was loaded from; `None` for keys added in code.
    pub path: Option<PathBuf>,
}

/// The set of public keys whose signatures a node accepts, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, TrustedKey>,
}

impl TrustedKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every `*.pub` file in `dir` (other files are ignored, so editors' backups and
    /// README files do no harm). Any bad `*.pub` fails the whole load and names the file: a
    /// trust store that silently drops a key it was told to trust is worse than one that
    /// refuses to start.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let entries = std::fs::read_dir(dir).map_err(|source| KeyError::ReadDir {
            dir: dir.to_owned(),
            source,
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| KeyError::ReadDir {
                dir: dir.to_owned(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "pub") {
                paths.push(path);
            } else {
                debug!(path = %path.display(), "not a *.pub file; ignored");
            }
        }
        // Sorted so that the file blamed for a duplicate is the same on every machine.
        paths.sort();
        let mut trusted = TrustedKeys::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| KeyError::ReadFile {
                path: path.clone(),
                source,
            })?;
            let keys = PublicKeys::from_toml(&text).map_err(|e| KeyError::BadFile {
                path: path.clone(),
                source: Box::new(e),
            })?;
            if let Some(first) = trusted.keys.get(&keys.key_id) {
                return Err(KeyError::DuplicateKey {
                    path,
                    first: first.path.clone().unwrap_or_default(),
                    key_id: keys.key_id,
                });
            }
            debug!(path = %path.display(), name = keys.name(), key_id = %keys.key_id, "trusted key loaded");
            trusted.keys.insert(keys.key_id, TrustedKey { keys, path: Some(path) });
        }
        Ok(trusted)
    }

    /// Trusts `keys` in addition to the keys already here.
    pub fn insert(&mut self, keys: PublicKeys) {
        self.keys.insert(keys.key_id, TrustedKey { keys, path: None });
    }

    pub fn get(&self, key_id: &KeyId) -> Option<&TrustedKey> {
        self.keys.get(key_id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TrustedKey> {
        self.keys.values()
    }
}

impl FromIterator<PublicKeys> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = PublicKeys>>(iter: I) -> Self {
        let mut trusted = TrustedKeys::new();
        for keys in iter {
            trusted.insert(keys);
        }
        trusted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_signature_verifies_only_with_both_halves_intact() {
        let pair = KeyPair::generate("alice").unwrap();
        let sig = pair.sign(b"hello");
        pair.public().verify(b"hello", &sig).unwrap();

        let mut bad_ml_dsa = sig.clone();
        bad_ml_dsa.ml_dsa[10] ^= 1;
        assert_eq!(
            pair.public().verify(b"hello", &bad_ml_dsa),
            Err(SignatureError::MlDsa { key_id: pair.key_id() })
        );

        let mut bad_ed = sig.clone();
        bad_ed.ed25519[3] ^= 1;
        assert_eq!(
            pair.public().verify(b"hello", &bad_ed),
            Err(SignatureError::Ed25519 { key_id: pair.key_id() })
        );

        assert_eq!(
            pair.public().verify(b"other", &sig),
            Err(SignatureError::Both { key_id: pair.key_id() })
        );
    }

    #[test]
    fn secret_bytes_round_trip_and_corruption_is_caught() {
        let pair = KeyPair::generate("node-1").unwrap();
        let bytes = pair.to_secret_bytes();
        let back = KeyPair::from_secret_bytes(&bytes).unwrap();
        assert_eq!(back.public(), pair.public());
        back.public().verify(b"m", &pair.sign(b"m")).unwrap();

        let mut corrupt = bytes.to_vec();
        let secret_start = 8 + 2 + "node-1".len() + ML_DSA_PUBLIC_KEY_BYTES;
        corrupt[secret_start + 100] ^= 0xff;
        let err = KeyPair::from_secret_bytes(&corrupt).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");

        let err = KeyPair::from_secret_bytes(&bytes[..100]).unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
    }

    #[test]
    fn public_key_text_round_trips_and_rejects_a_forged_key_id() {
        let pair = KeyPair::generate("alice <alice@example.org>").unwrap();
        let text = pair.public().to_toml();
        assert!(text.starts_with("# QuantumOS public key \"alice <alice@example.org>\"\n"), "{text}");
        assert_eq!(&PublicKeys::from_toml(&text).unwrap(), pair.public());

        let other = KeyPair::generate("mallory").unwrap();
        let forged = text.replace(&pair.key_id().to_string(), &other.key_id().to_string());
        let err = PublicKeys::from_toml(&forged).unwrap_err();
        assert!(matches!(err, KeyError::KeyIdMismatch { .. }), "{err}");
    }

    #[test]
    fn fingerprints_are_grouped_hex() {
        let pair = KeyPair::generate("x").unwrap();
        let shown = pair.public().ml_dsa_fingerprint().to_string();
        assert_eq!(shown.len(), 64 + 15);
        assert!(
            shown.split(' ').all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit())),
            "{shown}"
        );
    }

    #[test]
    fn names_with_control_characters_are_refused() {
        let err = KeyPair::generate("evil\n[injected]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "key name \"evil\\n[injected]\" is invalid: it contains control characters"
        );
    }
}
