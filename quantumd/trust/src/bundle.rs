//! Cell bundles: a manifest, an artifact and an author's dual signature, in one file.
//!
//! # File format
//!
//! A bundle file is the 8-byte magic `QOSBNDL1` followed by sections. Each section is a one-byte
//! tag, its length as a u64 little endian, then that many bytes. Tags appear at most once and in
//! increasing order, and nothing may follow the last section, so every bundle has exactly one
//! encoding: the same inputs always give the same bytes, and the blake3 of the file is a stable
//! cache id.
//!
//! | tag | section            | contents                                                       |
//! |-----|--------------------|----------------------------------------------------------------|
//! | 1   | manifest           | cell.toml bytes (required, at most 1 MiB)                      |
//! | 2   | artifact           | artifact bytes (required, may be empty for exec-only cells)    |
//! | 3   | signed statement   | blake3(manifest) ‖ blake3(artifact) ‖ signer key id, 96 bytes  |
//! | 4   | ML-DSA-65 signature| detached signature over the signed message                     |
//! | 5   | Ed25519 signature  | detached signature over the signed message                     |
//!
//! The signed message is `quantumos cell bundle v1\0` followed by the 96-byte statement, so a
//! bundle signature can never be replayed as a signature over anything else QuantumOS signs.
//! A custom format rather than tar because every byte of it is checked here: there are no
//! headers, padding or metadata for two writers to disagree about.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::keys::{verify_ed25519, verify_ml_dsa, AuthorKeys, KeyId, PublicKeys, TrustedKeys};

/// The largest manifest a bundle may carry.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The largest artifact a bundle may carry.
pub const MAX_ARTIFACT_BYTES: u64 = 2 << 30;
/// The largest bundle file: both payloads plus signatures and framing.
pub const MAX_BUNDLE_BYTES: u64 = MAX_MANIFEST_BYTES + MAX_ARTIFACT_BYTES + 64 * 1024;

const MAGIC: &[u8; 8] = b"QOSBNDL1";
const DOMAIN: &[u8] = b"quantumos cell bundle v1\0";
const TAG_MANIFEST: u8 = 1;
const TAG_ARTIFACT: u8 = 2;
const TAG_STATEMENT: u8 = 3;
const TAG_ML_DSA: u8 = 4;
const TAG_ED25519: u8 = 5;
const STATEMENT_BYTES: usize = 96;

/// Why a bundle could not be built, read, or verified. Each verification failure names the
/// one check that failed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what} is {len} bytes, more than the limit of {limit}")]
    TooLarge { what: &'static str, len: u64, limit: u64 },
    #[error("not a QuantumOS cell bundle: it does not start with {:?}", "QOSBNDL1")]
    BadMagic,
    #[error("bundle is malformed at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: String },
    #[error("{}: cannot read bundle", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("bundle is not signed")]
    Unsigned,
    #[error("manifest hash mismatch: the signature covers {signed} but the manifest hashes to {actual}")]
    ManifestHashMismatch { signed: blake3::Hash, actual: blake3::Hash },
    #[error("artifact hash mismatch: the signature covers {signed} but the artifact hashes to {actual}")]
    ArtifactHashMismatch { signed: blake3::Hash, actual: blake3::Hash },
    #[error("artifact hash mismatch: the manifest declares artifact.blake3 = {declared} but the artifact hashes to {actual}")]
    DeclaredArtifactHashMismatch { declared: String, actual: blake3::Hash },
    #[error("the manifest declares no artifact but the bundle carries {len} artifact bytes")]
    UndeclaredArtifact { len: u64 },
    #[error("the manifest cannot be read for its artifact.blake3: {reason}")]
    ManifestUnreadable { reason: String },
    #[error("missing ML-DSA-65 signature (signer {key_id})")]
    MissingMlDsaSignature { key_id: KeyId },
    #[error("missing Ed25519 signature (signer {key_id})")]
    MissingEd25519Signature { key_id: KeyId },
    #[error("signed by unknown or untrusted key {key_id}")]
    UntrustedKey { key_id: KeyId },
    #[error("bad ML-DSA-65 signature by {name:?} ({key_id})")]
    BadMlDsaSignature { key_id: KeyId, name: String },
    #[error("bad Ed25519 signature by {name:?} ({key_id})")]
    BadEd25519Signature { key_id: KeyId, name: String },
}

/// The signature part of a bundle. The fields are public so tools can inspect (and tests can
/// damage) a bundle; [`Bundle::verify`] trusts none of them.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleSignature {
    pub manifest_blake3: blake3::Hash,
    pub artifact_blake3: blake3::Hash,
    pub key_id: KeyId,
    pub ml_dsa: Option<Vec<u8>>,
    pub ed25519: Option<Vec<u8>>,
}

impl fmt::Debug for BundleSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleSignature")
            .field("manifest_blake3", &self.manifest_blake3)
            .field("artifact_blake3", &self.artifact_blake3)
            .field("key_id", &self.key_id)
            .field("ml_dsa", &self.ml_dsa.as_ref().map(Vec::len))
            .field("ed25519", &self.ed25519.as_ref().map(Vec::len))
            .finish()
    }
}

impl BundleSignature {
    fn statement(&self) -> [u8; STATEMENT_BYTES] {
        statement(&self.manifest_blake3, &self.artifact_blake3, &self.key_id)
    }
}

fn statement(manifest: &blake3::Hash, artifact: &blake3::Hash, key_id: &KeyId) -> [u8; STATEMENT_BYTES] {
    let mut out = [0u8; STATEMENT_BYTES];
    out[..32].copy_from_slice(manifest.as_bytes());
    out[32..64].copy_from_slice(artifact.as_bytes());
    out[64..].copy_from_slice(key_id.as_bytes());
    out
}

fn signed_message(statement: &[u8; STATEMENT_BYTES]) -> Vec<u8> {
    [DOMAIN, statement.as_slice()].concat()
}

/// The blake3 of a whole bundle file: the name it is cached under.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheId(pub blake3::Hash);

impl fmt::Display for CacheId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CacheId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheId({})", self.0)
    }
}

/// The cache id of bundle file bytes, without parsing them.
pub fn cache_id_of(bytes: &[u8]) -> CacheId {
    CacheId(blake3::hash(bytes))
}

/// The artifact bytes: a range of a buffer, so that a bundle read from a file keeps its
/// artifact where it was read instead of copying it (a copy of a large artifact costs more
/// than hashing it, mostly in page faults).
#[derive(Clone)]
struct Artifact {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl Artifact {
    fn bytes(&self) -> &[u8] {
        // Ranges are only ever built from the buffer they index (whole, or a parsed section).
        self.buf.get(self.range.clone()).unwrap_or_default()
    }
}

/// A cell bundle, signed or not yet signed. Nothing in it is trusted until [`Bundle::verify`]
/// returns a [`VerifiedBundle`].
#[derive(Clone)]
pub struct Bundle {
    manifest: Vec<u8>,
    artifact: Artifact,
    signature: Option<BundleSignature>,
}

impl PartialEq for Bundle {
    fn eq(&self, other: &Self) -> bool {
        self.manifest == other.manifest && self.artifact() == other.artifact() && self.signature == other.signature
    }
}

impl Eq for Bundle {}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("manifest", &self.manifest.len())
            .field("artifact", &self.artifact().len())
            .field("signature", &self.signature)
            .finish()
    }
}

fn check_size(what: &'static str, len: usize, limit: u64) -> Result<(), BundleError> {
    let len = len as u64;
    if len > limit {
        return Err(BundleError::TooLarge { what, len, limit });
    }
    Ok(())
}

impl Bundle {
    /// An unsigned bundle of `manifest` (cell.toml bytes) and `artifact` (empty for exec-only
    /// cells).
    pub fn create(manifest: Vec<u8>, artifact: Vec<u8>) -> Result<Self, BundleError> {
        check_size("manifest", manifest.len(), MAX_MANIFEST_BYTES)?;
        check_size("artifact", artifact.len(), MAX_ARTIFACT_BYTES)?;
        let range = 0..artifact.len();
        Ok(Bundle {
            manifest,
            artifact: Artifact { buf: artifact, range },
            signature: None,
        })
    }

    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }

    pub fn artifact(&self) -> &[u8] {
        self.artifact.bytes()
    }

    pub fn signature(&self) -> Option<&BundleSignature> {
        self.signature.as_ref()
    }

    pub fn signature_mut(&mut self) -> Option<&mut BundleSignature> {
        self.signature.as_mut()
    }

    /// Signs the bundle with `author`, replacing any earlier signature.
    pub fn sign(&mut self, author: &AuthorKeys) {
        let manifest_blake3 = blake3::hash(&self.manifest);
        let artifact_blake3 = blake3::hash(self.artifact());
        let key_id = author.key_id();
        let message = signed_message(&statement(&manifest_blake3, &artifact_blake3, &key_id));
        let signature = author.sign(&message);
        debug!(key_id = %key_id, manifest = %manifest_blake3, artifact = %artifact_blake3, "bundle signed");
        self.signature = Some(BundleSignature {
            manifest_blake3,
            artifact_blake3,
            key_id,
            ml_dsa: Some(signature.ml_dsa().to_vec()),
            ed25519: Some(signature.ed25519().to_vec()),
        });
    }

    /// Writes the file format described in the module documentation.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(MAGIC)?;
        let mut section = |tag: u8, bytes: &[u8]| -> io::Result<()> {
            out.write_all(&[tag])?;
            out.write_all(&(bytes.len() as u64).to_le_bytes())?;
            out.write_all(bytes)
        };
        section(TAG_MANIFEST, &self.manifest)?;
        section(TAG_ARTIFACT, self.artifact())?;
        if let Some(sig) = &self.signature {
            section(TAG_STATEMENT, &sig.statement())?;
            if let Some(ml_dsa) = &sig.ml_dsa {
                section(TAG_ML_DSA, ml_dsa)?;
            }
            if let Some(ed25519) = &sig.ed25519 {
                section(TAG_ED25519, ed25519)?;
            }
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.manifest.len() + self.artifact().len() + 4096);
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// The blake3 of [`Bundle::to_bytes`], computed without building the bytes.
    pub fn cache_id(&self) -> CacheId {
        let mut hasher = blake3::Hasher::new();
        // Writing into a hasher cannot fail.
        let _ = self.write_to(&mut hasher);
        CacheId(hasher.finalize())
    }

    /// Reads a bundle file, refusing one larger than [`MAX_BUNDLE_BYTES`] before reading it.
    pub fn read_file(path: &Path) -> Result<Self, BundleError> {
        let read_err = |source| BundleError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge {
                what: "bundle file",
                len,
                limit: MAX_BUNDLE_BYTES,
            });
        }
        Bundle::from_vec(std::fs::read(path).map_err(read_err)?)
    }

    /// Parses the file format, accepting only its one canonical encoding. Copies `bytes`; use
    /// [`Bundle::from_vec`] to parse a buffer you own without copying the artifact.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BundleError> {
        check_size("bundle", bytes.len(), MAX_BUNDLE_BYTES)?;
        Bundle::from_vec(bytes.to_vec())
    }

    /// Parses the file format from an owned buffer; the artifact stays in it, uncopied.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self, BundleError> {
        check_size("bundle", bytes.len(), MAX_BUNDLE_BYTES)?;
        let mut rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(BundleError::BadMagic)?;
        let mut sections: [Option<&[u8]>; 6] = [None; 6];
        let mut artifact_range = 0..0;
        let mut last_tag = 0u8;
        while !rest.is_empty() {
            let offset = bytes.len() - rest.len();
            let malformed = |reason: String| BundleError::Malformed { offset, reason };
            let (header, body) = rest
                .split_at_checked(9)
                .ok_or_else(|| malformed("truncated section header".to_owned()))?;
            let tag = header[0];
            let mut len_bytes = [0u8; 8];
            len_bytes.copy_from_slice(&header[1..9]);
            let len = u64::from_le_bytes(len_bytes);
            if !(TAG_MANIFEST..=TAG_ED25519).contains(&tag) {
                return Err(malformed(format!("unknown section tag {tag}")));
            }
            if tag <= last_tag {
                return Err(malformed(format!("section {tag} is out of order or repeated")));
            }
            let limit = match tag {
                TAG_MANIFEST => MAX_MANIFEST_BYTES,
                TAG_ARTIFACT => MAX_ARTIFACT_BYTES,
                _ => 8 * 1024,
            };
            if len > limit {
                let what = if tag == TAG_MANIFEST {
                    "manifest"
                } else if tag == TAG_ARTIFACT {
                    "artifact"
                } else {
                    "signature section"
                };
                return Err(BundleError::TooLarge { what, len, limit });
            }
            // len <= limit <= MAX_ARTIFACT_BYTES, which fits in usize on the 64-bit targets we build for.
            let len = usize::try_from(len).map_err(|_| malformed(format!("section {tag} length {len} does not fit in memory")))?;
            let (content, after) = body
                .split_at_checked(len)
                .ok_or_else(|| malformed(format!("section {tag} claims {len} bytes but {} remain", body.len())))?;
            if tag == TAG_ARTIFACT {
                let start = bytes.len() - body.len();
                artifact_range = start..start + len;
            }
            sections[usize::from(tag)] = Some(content);
            last_tag = tag;
            rest = after;
        }
        let at_end = bytes.len();
        let missing = |what: &str| BundleError::Malformed {
            offset: at_end,
            reason: format!("the {what} section is missing"),
        };
        let manifest = sections[usize::from(TAG_MANIFEST)].ok_or_else(|| missing("manifest"))?;
        if sections[usize::from(TAG_ARTIFACT)].is_none() {
            return Err(missing("artifact"));
        }
        let signature = match sections[usize::from(TAG_STATEMENT)] {
            None => {
                if sections[usize::from(TAG_ML_DSA)].is_some() || sections[usize::from(TAG_ED25519)].is_some() {
                    return Err(BundleError::Malformed {
                        offset: at_end,
                        reason: "signatures without a signed statement".to_owned(),
                    });
                }
                None
            }
            Some(statement) => {
                let statement: &[u8; STATEMENT_BYTES] = statement.try_into().map_err(|_| BundleError::Malformed {
                    offset: at_end,
                    reason: format!("the signed statement is {} bytes, expected {STATEMENT_BYTES}", statement.len()),
                })?;
                let mut part = [[0u8; 32]; 3];
                for (i, chunk) in statement.chunks_exact(32).enumerate() {
                    part[i].copy_from_slice(chunk);
                }
                Some(BundleSignature {
                    manifest_blake3: blake3::Hash::from_bytes(part[0]),
                    artifact_blake3: blake3::Hash::from_bytes(part[1]),
                    key_id: KeyId(part[2]),
                    ml_dsa: sections[usize::from(TAG_ML_DSA)].map(<[u8]>::to_vec),
                    ed25519: sections[usize::from(TAG_ED25519)].map(<[u8]>::to_vec),
                })
            }
        };
        let manifest = manifest.to_vec();
        Ok(Bundle {
            manifest,
            artifact: Artifact {
                buf: bytes,
                range: artifact_range,
            },
            signature,
        })
    }

    /// Checks, in this order: the signature is there; the manifest and the artifact hash to
    /// what was signed; the artifact is the one the manifest declares (`artifact.blake3`), or
    /// empty when the manifest declares none; both signatures are present; the signer is
    /// trusted; and both signatures verify. The first failure is returned, named.
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<VerifiedBundle<'_>, BundleError> {
        let sig = self.signature.as_ref().ok_or(BundleError::Unsigned)?;
        let manifest_blake3 = blake3::hash(&self.manifest);
        if manifest_blake3 != sig.manifest_blake3 {
            return Err(BundleError::ManifestHashMismatch {
                signed: sig.manifest_blake3,
                actual: manifest_blake3,
            });
        }
        let artifact_blake3 = blake3::hash(self.artifact());
        if artifact_blake3 != sig.artifact_blake3 {
            return Err(BundleError::ArtifactHashMismatch {
                signed: sig.artifact_blake3,
                actual: artifact_blake3,
            });
        }
        check_declared_artifact(&self.manifest, self.artifact(), &artifact_blake3)?;
        let ml_dsa = sig
            .ml_dsa
            .as_deref()
            .ok_or(BundleError::MissingMlDsaSignature { key_id: sig.key_id })?;
        let ed25519 = sig
            .ed25519
            .as_deref()
            .ok_or(BundleError::MissingEd25519Signature { key_id: sig.key_id })?;
        let signer = trusted.get(&sig.key_id).ok_or(BundleError::UntrustedKey { key_id: sig.key_id })?;
        let keys = &signer.keys;
        let message = signed_message(&sig.statement());
        if !verify_ml_dsa(keys.ml_dsa(), &message, ml_dsa) {
            return Err(BundleError::BadMlDsaSignature {
                key_id: sig.key_id,
                name: keys.name().to_owned(),
            });
        }
        if !verify_ed25519(keys.ed25519(), &message, ed25519) {
            return Err(BundleError::BadEd25519Signature {
                key_id: sig.key_id,
                name: keys.name().to_owned(),
            });
        }
        Ok(VerifiedBundle {
            manifest: &self.manifest,
            artifact: self.artifact(),
            manifest_blake3,
            artifact_blake3,
            signer: keys.clone(),
        })
    }
}

/// Compares the artifact with the `artifact.blake3` the manifest declares. The manifest is read
/// only for this one key (quantum-model does the full validation), so a manifest this cannot
/// parse is refused here rather than letting an undeclared artifact through.
fn check_declared_artifact(manifest: &[u8], artifact: &[u8], actual: &blake3::Hash) -> Result<(), BundleError> {
    let unreadable = |reason: String| BundleError::ManifestUnreadable { reason };
    let text = std::str::from_utf8(manifest).map_err(|e| unreadable(format!("not UTF-8: {e}")))?;
    let table: toml::Table = toml::from_str(text).map_err(|e| unreadable(e.message().to_owned()))?;
    let declared = table.get("cell").and_then(|cell| cell.get("artifact"));
    match declared {
        None if artifact.is_empty() => Ok(()),
        None => Err(BundleError::UndeclaredArtifact {
            len: artifact.len() as u64,
        }),
        Some(declared) => {
            let hex = declared
                .get("blake3")
                .and_then(toml::Value::as_str)
                .ok_or_else(|| unreadable("cell.artifact has no blake3 string".to_owned()))?;
            let matches = blake3::Hash::from_hex(hex).is_ok_and(|declared| declared == *actual);
            if matches {
                Ok(())
            } else {
                Err(BundleError::DeclaredArtifactHashMismatch {
                    declared: hex.to_owned(),
                    actual: *actual,
                })
            }
        }
    }
}

/// A bundle whose hashes and signatures have been checked against the trusted keys. It borrows
/// the payloads rather than copying them: an artifact may be gigabytes.
#[derive(Debug, Clone)]
pub struct VerifiedBundle<'a> {
    pub manifest: &'a [u8],
    pub artifact: &'a [u8],
    pub manifest_blake3: blake3::Hash,
    pub artifact_blake3: blake3::Hash,
    pub signer: PublicKeys,
}
