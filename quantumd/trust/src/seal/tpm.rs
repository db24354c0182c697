//! The node identity sealed by a TPM.
//!
//! A TPM seals at most 128 bytes into a keyed-hash object, and the node's secret keys are about
//! 6 KB (an ML-DSA-65 secret key alone is 4032 bytes; pqcrypto cannot derive one from a seed).
//! So the TPM seals a random 32-byte wrapping key, and the secret key bytes are encrypted with
//! ChaCha20-Poly1305 under it. Both halves live in one file, `node.sealed`:
//!
//! ```json
//! {"format": "quantumos-sealed-identity-v1", "pcr7": false,
//!  "tpm-public": BASE64, "tpm-private": BASE64, "nonce": BASE64, "ciphertext": BASE64}
//! ```
//!
//! `tpm-public`/`tpm-private` are the sealed object's TPM2B_PUBLIC and TPM2B_PRIVATE; the
//! private part is encrypted by the TPM's storage key and useless on any other TPM. The parent
//! is a primary ECC P-256 storage key under the owner hierarchy, created from a fixed template
//! at every use: the TPM derives it from its owner seed, so it is the same key every time and
//! nothing needs to be persisted in the TPM's NV memory. The AEAD's associated data is the
//! format name, the PCR 7 flag and `tpm-public`, so none of them can be swapped on their own.
//!
//! The wrapping key crosses the bus to and from the TPM only inside sessions salted with the
//! storage key and with parameter encryption, so sniffing the bus (LPC/SPI) does not reveal it.

use std::path::PathBuf;
use std::str::FromStr as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit as _, Nonce};
use serde::{Deserialize, Serialize};
use tracing::debug;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use super::{write_private, SealError, SecretStore};
use crate::keys::NodeKeys;

const FORMAT: &str = "quantumos-sealed-identity-v1";
const WRAPPING_KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
/// Sealed files hold a few kilobytes of ciphertext and two small TPM blobs.
const MAX_SEALED_FILE_BYTES: u64 = 64 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SealedFile {
    format: String,
    pcr7: bool,
    tpm_public: String,
    tpm_private: String,
    nonce: String,
    ciphertext: String,
}

/// The node identity sealed by the TPM at `tcti`.
#[derive(Debug, Clone)]
pub struct TpmStore {
    tcti: String,
    path: PathBuf,
    bind_pcr7: bool,
}

/// Connects to the TPM and asks it for a few random bytes, to be sure something answers.
pub(crate) fn probe(tcti: &str) -> Result<(), tss_esapi::Error> {
    let mut ctx = connect(tcti)?;
    ctx.get_random(8)?;
    debug!(tcti, "TPM answers");
    Ok(())
}

fn connect(tcti: &str) -> Result<Context, tss_esapi::Error> {
    Context::new(TctiNameConf::from_str(tcti)?)
}

/// The storage key template: the TCG-style ECC P-256 SRK (restricted decryption, AES-128-CFB for
/// its children, no dictionary-attack lockout). Fixed, so the TPM recreates the same key.
fn primary_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .with_restricted(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(SymmetricDefinitionObject::AES_128_CFB, EccCurve::NistP256)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// A sealed data object. Without a policy anyone who can use the storage key may unseal it
/// (the protection is that the blob only loads on this TPM); with one, only a session that
/// satisfied the policy may.
fn sealed_template(policy: Option<Digest>) -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_admin_with_policy(true)
        .with_user_with_auth(policy.is_none())
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy.unwrap_or_default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

fn pcr7_selection() -> Result<PcrSelectionList, tss_esapi::Error> {
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &[PcrSlot::Slot7])
        .build()
}

/// Which secret crosses the bus, and so which parameter a session must encrypt.
#[derive(Clone, Copy)]
enum Secret {
    /// The data to seal (the first command parameter of TPM2_Create).
    Sent,
    /// The unsealed data (the first response parameter of TPM2_Unseal).
    Received,
}

/// A session salted with the storage key (ECDH), so its session key is unknown to anyone
/// watching the bus, and encrypting the parameter that carries the wrapping key.
fn start_salted_session(ctx: &mut Context, primary: KeyHandle, kind: SessionType, secret: Secret) -> Result<AuthSession, tss_esapi::Error> {
    let session = ctx
        .start_auth_session(
            Some(primary),
            None,
            None,
            kind,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )?
        .ok_or(tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm))?;
    let builder = SessionAttributesBuilder::new().with_continue_session(true);
    // The TPM refuses a decrypt attribute on a command with no parameter to decrypt (Unseal).
    let (attributes, mask) = match secret {
        Secret::Sent => builder.with_decrypt(true),
        Secret::Received => builder.with_encrypt(true),
    }
    .build();
    ctx.tr_sess_set_attributes(session, attributes, mask)?;
    Ok(session)
}

fn start_trial_session(ctx: &mut Context) -> Result<PolicySession, tss_esapi::Error> {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Trial,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )?
        .ok_or(tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm))?;
    PolicySession::try_from(session)
}

/// The policy "PCR 7 (SHA-256 bank) has its current value", computed by a trial session: given
/// no digest, the TPM uses the PCR's current value.
fn pcr7_policy_digest(ctx: &mut Context) -> Result<Digest, tss_esapi::Error> {
    let trial = start_trial_session(ctx)?;
    ctx.policy_pcr(trial, Digest::default(), pcr7_selection()?)?;
    ctx.policy_get_digest(trial)
}

fn create_primary(ctx: &mut Context) -> Result<KeyHandle, tss_esapi::Error> {
    let template = primary_template()?;
    ctx.execute_with_nullauth_session(|ctx| ctx.create_primary(Hierarchy::Owner, template, None, None, None, None))
        .map(|primary| primary.key_handle)
}

/// TPM_RC_INTEGRITY: the HMAC over a sealed object's private part does not check with this TPM's
/// keys (0x1df when loading: integrity, parameter 1).
fn is_integrity_failure(error: &tss_esapi::Error) -> bool {
    matches!(error, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::Integrity))
}

fn aad(pcr7: bool, tpm_public: &[u8]) -> Vec<u8> {
    [FORMAT.as_bytes(), &[u8::from(pcr7)], tpm_public].concat()
}

impl TpmStore {
    pub fn new(tcti: String, path: PathBuf, bind_pcr7: bool) -> Self {
        TpmStore { tcti, path, bind_pcr7 }
    }

    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn tpm_err(&self, action: &'static str) -> impl Fn(tss_esapi::Error) -> SealError + '_ {
        move |source| SealError::Tpm {
            tcti: self.tcti.clone(),
            action,
            source,
        }
    }

    /// Like [`TpmStore::tpm_err`] for loading and unsealing the sealed object, where a failed
    /// integrity check means the object was made by another TPM (or before this one was cleared):
    /// its private part is protected by a key derived from the owner seed of the TPM that sealed it.
    fn unseal_err(&self, action: &'static str) -> impl Fn(tss_esapi::Error) -> SealError + '_ {
        move |source| {
            if is_integrity_failure(&source) {
                SealError::SealedByAnotherTpm {
                    path: self.path.clone(),
                    tcti: self.tcti.clone(),
                    source,
                }
            } else {
                self.tpm_err(action)(source)
            }
        }
    }

    fn bad_file(&self, reason: impl Into<String>) -> SealError {
        SealError::BadSealedFile {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn read_file(&self) -> Result<SealedFile, SealError> {
        let io = |action, source| SealError::Io {
            path: self.path.clone(),
            action,
            source,
        };
        let len = match std::fs::metadata(&self.path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SealError::NotFound { path: self.path.clone() }),
            Err(e) => return Err(io("stat", e)),
        };
        if len > MAX_SEALED_FILE_BYTES {
            return Err(self.bad_file(format!("it is {len} bytes, more than {MAX_SEALED_FILE_BYTES}")));
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| io("read", e))?;
        let file: SealedFile = serde_json::from_str(&text).map_err(|e| self.bad_file(e.to_string()))?;
        if file.format != FORMAT {
            return Err(self.bad_file(format!("format is {:?}, expected {FORMAT:?}", file.format)));
        }
        Ok(file)
    }

    fn decode(&self, field: &str, text: &str) -> Result<Vec<u8>, SealError> {
        BASE64
            .decode(text)
            .map_err(|e| self.bad_file(format!("{field} is not base64: {e}")))
    }

    /// Loads the sealed object under the storage key and unseals the wrapping key, satisfying
    /// the PCR 7 policy first if the object was sealed with one.
    fn unseal(&self, pcr7: bool, public: Public, private: Private) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let mut ctx = connect(&self.tcti).map_err(|source| SealError::TpmUnreachable {
            path: self.path.clone(),
            tcti: self.tcti.clone(),
            source,
        })?;
        let primary = create_primary(&mut ctx).map_err(self.tpm_err("creating the storage key"))?;
        let object = ctx
            .execute_with_nullauth_session(|ctx| ctx.load(primary, private, public))
            .map_err(self.unseal_err("loading the sealed identity"))?;
        let data = if pcr7 {
            let session = start_salted_session(&mut ctx, primary, SessionType::Policy, Secret::Received)
                .map_err(self.tpm_err("starting a policy session"))?;
            let policy = PolicySession::try_from(session).map_err(self.tpm_err("starting a policy session"))?;
            ctx.policy_pcr(
                policy,
                Digest::default(),
                pcr7_selection().map_err(self.tpm_err("selecting PCR 7"))?,
            )
            .map_err(self.tpm_err("checking PCR 7"))?;
            ctx.execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))
                .map_err(|source| {
                    let policy_failed =
                        matches!(source, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::PolicyFail));
                    if policy_failed {
                        SealError::PcrChanged {
                            path: self.path.clone(),
                            source,
                        }
                    } else {
                        self.unseal_err("unsealing the identity")(source)
                    }
                })?
        } else {
            let session =
                start_salted_session(&mut ctx, primary, SessionType::Hmac, Secret::Received).map_err(self.tpm_err("starting a session"))?;
            ctx.execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))
                .map_err(self.unseal_err("unsealing the identity"))?
        };
        Ok(Zeroizing::new(data.value().to_vec()))
    }
}

impl SecretStore for TpmStore {
    fn describe(&self) -> String {
        let binding = if self.bind_pcr7 { "bound to PCR 7" } else { "not bound to PCRs" };
        format!(
            "TPM at {:?}: node identity sealed in {} ({binding})",
            self.tcti,
            self.path.display()
        )
    }

    fn exists(&self) -> bool {
        self.path.exists()
    }

    fn load(&self) -> Result<NodeKeys, SealError> {
        let file = self.read_file()?;
        let public_bytes = self.decode("tpm-public", &file.tpm_public)?;
        let public = Public::unmarshall(&public_bytes).map_err(|e| self.bad_file(format!("tpm-public is not a TPM2B_PUBLIC: {e}")))?;
        let private = Private::try_from(self.decode("tpm-private", &file.tpm_private)?)
            .map_err(|e| self.bad_file(format!("tpm-private is not a TPM2B_PRIVATE: {e}")))?;
        let nonce = self.decode("nonce", &file.nonce)?;
        if nonce.len() != NONCE_BYTES {
            return Err(self.bad_file(format!("nonce is {} bytes, expected {NONCE_BYTES}", nonce.len())));
        }
        let ciphertext = self.decode("ciphertext", &file.ciphertext)?;

        let wrapping_key = self.unseal(file.pcr7, public, private)?;
        if wrapping_key.len() != WRAPPING_KEY_BYTES {
            return Err(self.bad_file(format!(
                "the TPM unsealed {} bytes, expected a {WRAPPING_KEY_BYTES}-byte key",
                wrapping_key.len()
            )));
        }
        let cipher = ChaCha20Poly1305::new_from_slice(&wrapping_key).map_err(|_| SealError::Decrypt { path: self.path.clone() })?;
        let secret = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad(file.pcr7, &public_bytes),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Decrypt { path: self.path.clone() })?;
        let keys = NodeKeys::from_secret_bytes(&secret).map_err(|source| SealError::BadKeys {
            path: self.path.clone(),
            source,
        })?;
        debug!(path = %self.path.display(), key_id = %keys.key_id(), pcr7 = file.pcr7, "node identity unsealed");
        Ok(keys)
    }

    fn store(&self, keys: &NodeKeys) -> Result<(), SealError> {
        let mut wrapping_key = Zeroizing::new([0u8; WRAPPING_KEY_BYTES]);
        getrandom::fill(wrapping_key.as_mut()).map_err(SealError::Random)?;
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(SealError::Random)?;

        let mut ctx = connect(&self.tcti).map_err(self.tpm_err("connecting"))?;
        let primary = create_primary(&mut ctx).map_err(self.tpm_err("creating the storage key"))?;
        let policy = if self.bind_pcr7 {
            Some(pcr7_policy_digest(&mut ctx).map_err(self.tpm_err("computing the PCR 7 policy"))?)
        } else {
            None
        };
        let template = sealed_template(policy).map_err(self.tpm_err("building the sealed object template"))?;
        let sensitive = SensitiveData::try_from(wrapping_key.to_vec()).map_err(self.tpm_err("preparing the data to seal"))?;
        let session =
            start_salted_session(&mut ctx, primary, SessionType::Hmac, Secret::Sent).map_err(self.tpm_err("starting a session"))?;
        let sealed = ctx
            .execute_with_session(Some(session), |ctx| {
                ctx.create(primary, template, None, Some(sensitive), None, None)
            })
            .map_err(self.tpm_err("sealing the wrapping key"))?;
        drop(ctx);

        let public_bytes = sealed
            .out_public
            .marshall()
            .map_err(self.tpm_err("marshalling the sealed object"))?;
        let cipher = ChaCha20Poly1305::new_from_slice(wrapping_key.as_ref()).map_err(|_| SealError::Encrypt { path: self.path.clone() })?;
        let secret = keys.to_secret_bytes();
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &secret,
                    aad: &aad(self.bind_pcr7, &public_bytes),
                },
            )
            .map_err(|_| SealError::Encrypt { path: self.path.clone() })?;
        let file = SealedFile {
            format: FORMAT.to_owned(),
            pcr7: self.bind_pcr7,
            tpm_public: BASE64.encode(&public_bytes),
            tpm_private: BASE64.encode(sealed.out_private.value()),
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(&ciphertext),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| self.bad_file(e.to_string()))?;
        write_private(&self.path, &json)?;
        debug!(path = %self.path.display(), key_id = %keys.key_id(), pcr7 = self.bind_pcr7, "node identity sealed");
        Ok(())
    }
}
