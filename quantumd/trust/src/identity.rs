//! Identity documents: what quantumd hands each cell instance (as a systemd credential) to say
//! "this process is instance I of cell C, running manifest M, on node N, until T".
//!
//! The JSON form is for transport only. The signature covers a fixed binary encoding of the
//! fields (see [`IdentityDocument::signed_message`]), so re-serialising the JSON, reordering its
//! keys or changing its whitespace can never invalidate or forge a signature.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::keys::{DualSignature, KeyError, KeyId, NodeKeys, PublicKeys, SignatureError};

const FORMAT: &str = "quantumos-cell-identity-v1";
const DOMAIN: &[u8] = b"quantumos cell identity v1\0";

/// How far a document's issue time may lie in the verifier's future: clocks of the issuing
/// daemon and a verifying process on another node are never exactly equal.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why an identity document could not be issued, read or accepted.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity document is not valid JSON of the {FORMAT} format")]
    Json(#[source] serde_json::Error),
    #[error("identity document has format {found:?}, expected {FORMAT:?}")]
    Format { found: String },
    #[error("identity document field {field} is invalid: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("identity document signature is malformed")]
    SignatureEncoding(#[source] KeyError),
    #[error("identity document was issued by node key {document} but is being checked against node key {node}")]
    WrongNode { document: KeyId, node: KeyId },
    #[error("identity document signature is invalid")]
    Signature(#[from] SignatureError),
    #[error("identity document for {instance} expired at {not_after} (unix seconds); it is now {now}")]
    Expired { instance: String, not_after: u64, now: u64 },
    #[error("identity document for {instance} is issued at {issued} (unix seconds), in the future; it is now {now}")]
    NotYetValid { instance: String, issued: u64, now: u64 },
    #[error("the system clock is before 1970")]
    ClockBeforeEpoch,
}

/// The claims about one cell instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IdentityDocument {
    /// The cell's name from its manifest.
    pub cell: String,
    /// blake3 of the exact manifest bytes the instance runs, as 64 hex digits.
    pub manifest_blake3: String,
    /// The instance, as quantumd names it (e.g. `web-server.3`).
    pub instance_id: String,
    /// The key id of the node that issued this document, as 64 hex digits.
    pub node_key_id: String,
    /// Issue time, unix seconds.
    pub issued: u64,
    /// Expiry time, unix seconds; the document is invalid from this second on.
    pub not_after: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SignatureJson {
    ml_dsa_65: String,
    ed25519: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedJson {
    format: String,
    document: IdentityDocument,
    signature: SignatureJson,
}

fn unix_seconds(time: SystemTime) -> Result<u64, IdentityError> {
    Ok(time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| IdentityError::ClockBeforeEpoch)?
        .as_secs())
}

impl IdentityDocument {
    /// The bytes both signatures cover: the domain string, then each text field as a u32 little
    /// endian length and its bytes, then the two times as u64 little endian.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(DOMAIN);
        for field in [&self.cell, &self.manifest_blake3, &self.instance_id, &self.node_key_id] {
            // Fields are bounded far below 4 GiB by the JSON and systemd credential limits; a
            // larger one would only make the signature fail, never collide.
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out.extend_from_slice(&self.issued.to_le_bytes());
        out.extend_from_slice(&self.not_after.to_le_bytes());
        out
    }

    fn check_fields(&self) -> Result<(), IdentityError> {
        let field = |field, reason: &str| {
            Err(IdentityError::Field {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.cell.is_empty() || self.cell.len() > 63 {
            return field("cell", "must be 1 to 63 bytes");
        }
        if self.instance_id.is_empty() || self.instance_id.len() > 255 {
            return field("instance-id", "must be 1 to 255 bytes");
        }
        if blake3::Hash::from_hex(&self.manifest_blake3).is_err() {
            return field("manifest-blake3", "must be 64 hex digits");
        }
        if self.node_key_id.parse::<KeyId>().is_err() {
            return field("node-key-id", "must be 64 hex digits");
        }
        if self.not_after <= self.issued {
            return field("not-after", "must be later than issued");
        }
        Ok(())
    }

    /// Issues a document for `instance_id` of `cell`, valid from `issued` for `lifetime`, signed
    /// by the node keys.
    pub fn issue(
        cell: &str,
        manifest_blake3: &blake3::Hash,
        instance_id: &str,
        node: &NodeKeys,
        issued: SystemTime,
        lifetime: Duration,
    ) -> Result<SignedIdentity, IdentityError> {
        let issued = unix_seconds(issued)?;
        let document = IdentityDocument {
            cell: cell.to_owned(),
            manifest_blake3: manifest_blake3.to_hex().to_string(),
            instance_id: instance_id.to_owned(),
            node_key_id: node.key_id().to_string(),
            issued,
            not_after: issued.saturating_add(lifetime.as_secs()),
        };
        document.check_fields()?;
        let signature = node.sign(&document.signed_message());
        Ok(SignedIdentity { document, signature })
    }
}

/// An identity document with the node's dual signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIdentity {
    document: IdentityDocument,
    signature: DualSignature,
}

impl SignedIdentity {
    /// The document, unchecked. Use [`SignedIdentity::verify`] before believing it.
    pub fn document_unverified(&self) -> &IdentityDocument {
        &self.document
    }

    /// The JSON handed to the unit as a credential:
    /// `{"format": "quantumos-cell-identity-v1", "document": {...}, "signature": {"ml-dsa-65": BASE64, "ed25519": BASE64}}`.
    pub fn to_json(&self) -> String {
        let json = SignedJson {
            format: FORMAT.to_owned(),
            document: self.document.clone(),
            signature: SignatureJson {
                ml_dsa_65: BASE64.encode(self.signature.ml_dsa()),
                ed25519: BASE64.encode(self.signature.ed25519()),
            },
        };
        // A struct of strings and integers always serialises.
        serde_json::to_string(&json).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, IdentityError> {
        let json: SignedJson = serde_json::from_str(text).map_err(IdentityError::Json)?;
        if json.format != FORMAT {
            return Err(IdentityError::Format { found: json.format });
        }
        json.document.check_fields()?;
        let decode = |field, text: &str| {
            BASE64.decode(text).map_err(|e| IdentityError::Field {
                field,
                reason: format!("not base64: {e}"),
            })
        };
        let ml_dsa = decode("signature.ml-dsa-65", &json.signature.ml_dsa_65)?;
        let ed25519 = decode("signature.ed25519", &json.signature.ed25519)?;
        let signature = DualSignature::from_parts(&ml_dsa, &ed25519).map_err(IdentityError::SignatureEncoding)?;
        Ok(SignedIdentity {
            document: json.document,
            signature,
        })
    }

    /// Accepts the document if it was issued by `node`, both signatures verify, and `now` lies
    /// in `[issued - CLOCK_SKEW, not_after)`.
    pub fn verify(&self, node: &PublicKeys, now: SystemTime) -> Result<&IdentityDocument, IdentityError> {
        let doc = &self.document;
        let document_key: KeyId = doc.node_key_id.parse().map_err(|_| IdentityError::Field {
            field: "node-key-id",
            reason: "must be 64 hex digits".to_owned(),
        })?;
        if document_key != node.key_id() {
            return Err(IdentityError::WrongNode {
                document: document_key,
                node: node.key_id(),
            });
        }
        node.verify(&doc.signed_message(), &self.signature)?;
        let now = unix_seconds(now)?;
        if now >= doc.not_after {
            return Err(IdentityError::Expired {
                instance: doc.instance_id.clone(),
                not_after: doc.not_after,
                now,
            });
        }
        if doc.issued > now.saturating_add(CLOCK_SKEW.as_secs()) {
            return Err(IdentityError::NotYetValid {
                instance: doc.instance_id.clone(),
                issued: doc.issued,
                now,
            });
        }
        Ok(doc)
    }
}
