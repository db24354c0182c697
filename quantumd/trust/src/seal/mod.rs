//! Where the node's secret keys live: sealed by a TPM when there is one, otherwise in an
//! owner-only file. Both backends implement [`SecretStore`]; [`KeyStore`] picks one at start
//! and says which (and, for the file, why) in [`KeyStore::describe`].
//!
//! # Recovery when PCR 7 changes
//!
//! With `bind_pcr7` the TPM releases the wrapping key only while PCR 7 (the Secure Boot policy:
//! db/dbx/KEK/PK and the Secure Boot state) has the value it had when the identity was sealed.
//! A firmware update, a Secure Boot key change or turning Secure Boot off changes it, and
//! [`SealError::PcrChanged`] then says so. The sealed identity cannot be recovered after that
//! by design: the operator (having checked the boot chain change was intended) regenerates the
//! identity ([`KeyStore::regenerate`], `quantumd --regenerate-identity` with quantumd.service stopped), the daemon records
//! the new key id in its trail, and the new public key is distributed where the old one was
//! trusted.
//!
//! # Recovery when the TPM is another one
//!
//! `node.sealed` loads only in the TPM that sealed it, and only while that TPM keeps its owner
//! seed. On another machine's TPM, or after the TPM was cleared, the TPM fails the sealed
//! object's integrity check and [`SealError::SealedByAnotherTpm`] says so: the keys are gone.
//! Moving the identity directory aside and restarting gives the node a new identity.

mod file;
mod tpm;

use std::path::{Path, PathBuf};

use tracing::{info, warn};

pub use file::FileStore;
pub use tpm::TpmStore;

use crate::keys::{KeyError, NodeKeys};

/// The environment variable that names the TPM's TCTI when the configuration says `Auto`
/// (`none` turns the TPM off).
pub const TCTI_ENV: &str = "QUANTUM_TCTI";
/// The kernel's TPM resource manager, used when nothing else names a TPM.
pub const DEFAULT_TPM_DEVICE: &str = "/dev/tpmrm0";
/// The sealed identity, in [`Config::dir`].
pub const SEALED_FILE: &str = "node.sealed";
/// The unsealed key file used without a TPM, in [`Config::dir`].
pub const KEY_FILE: &str = "node.key";

/// Which TPM to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TpmSetting {
    /// `$QUANTUM_TCTI` if set, else `device:/dev/tpmrm0` if that device exists, else none.
    #[default]
    Auto,
    /// Never use a TPM.
    Off,
    /// This TCTI, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    Tcti(String),
}

/// Where and how to keep the node identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub tpm: TpmSetting,
    /// The directory holding `node.sealed` or `node.key`.
    pub dir: PathBuf,
    /// Seal to the current value of PCR 7 (off by default: see the module documentation for
    /// what an operator must do when it changes).
    pub bind_pcr7: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tpm: TpmSetting::Auto,
            dir: PathBuf::from("/var/lib/quantumd/identity"),
            bind_pcr7: false,
        }
    }
}

/// Why the node identity could not be opened, loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{}: cannot {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{}: there is no node identity yet", path.display())]
    NotFound { path: PathBuf },
    #[error(
        "{}: key file mode is {mode:04o}; refusing to use it: it must be readable and writable by its owner only (0600). \
         If nobody else can have read it, `chmod 600` it; otherwise regenerate the identity (`quantumd --regenerate-identity`)",
        path.display()
    )]
    InsecureMode { path: PathBuf, mode: u32 },
    #[error("{}: key file is owned by uid {owner} but this process runs as uid {expected}; refusing to use it", path.display())]
    WrongOwner { path: PathBuf, owner: u32, expected: u32 },
    #[error("{}: not a regular file; refusing to use it", path.display())]
    NotRegular { path: PathBuf },
    #[error("{}: the stored keys are invalid", path.display())]
    BadKeys { path: PathBuf, source: KeyError },
    #[error("{}: not a sealed identity: {reason}", path.display())]
    BadSealedFile { path: PathBuf, reason: String },
    #[error("TPM at {tcti:?}: {action} failed")]
    Tpm {
        tcti: String,
        action: &'static str,
        source: tss_esapi::Error,
    },
    #[error(
        "{}: the node identity is sealed in the TPM but the TPM at {tcti:?} cannot be reached; refusing to fall back to a file \
         (that would silently replace the node's identity)",
        path.display()
    )]
    TpmUnreachable {
        path: PathBuf,
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error(
        "{}: the TPM refuses to unseal the node identity because PCR 7 (Secure Boot policy) changed since it was sealed. \
         If the firmware, Secure Boot keys or boot loader were changed on purpose, regenerate the identity \
         (`quantumd --regenerate-identity` with quantumd.service stopped; the old key cannot be recovered, the new key id is recorded in the trail \
         and its public key must be re-distributed); otherwise investigate the boot chain",
        path.display()
    )]
    PcrChanged { path: PathBuf, source: tss_esapi::Error },
    #[error(
        "{}: the node identity was sealed by another TPM (or this TPM was cleared since): the TPM at {tcti:?} fails the sealed \
         object's integrity check, and this node's keys cannot be recovered from it. To start over with a new identity, move {dir} \
         aside (`mv {dir} {dir}.old`) and restart quantumd (`systemctl restart quantumd`); `quantumd --regenerate-identity` with \
         quantumd.service stopped does the same and keeps the old public key, so the trail it sealed still verifies. The node gets \
         a new key id, and trust given to the old one must be given again",
        path.display(),
        dir = path.parent().unwrap_or(path.as_path()).display()
    )]
    SealedByAnotherTpm {
        path: PathBuf,
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error("{}: the sealed keys do not decrypt with the key the TPM unsealed", path.display())]
    Decrypt { path: PathBuf },
    #[error("{}: cannot encrypt the node keys for sealing", path.display())]
    Encrypt { path: PathBuf },
    #[error("the operating system's random number generator failed")]
    Random(#[source] getrandom::Error),
    #[error("cannot generate the node keys")]
    Generate(#[source] KeyError),
}

impl SealError {
    /// Whether the stored identity cannot be used as it is and trying again will not change
    /// that: an operator must act (the message says how). A TPM that cannot be reached, an I/O
    /// error or a TPM command that failed for another reason may pass, and are not permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            SealError::SealedByAnotherTpm { .. }
            | SealError::PcrChanged { .. }
            | SealError::Decrypt { .. }
            | SealError::BadSealedFile { .. }
            | SealError::BadKeys { .. }
            | SealError::InsecureMode { .. }
            | SealError::WrongOwner { .. }
            | SealError::NotRegular { .. } => true,
            SealError::Io { .. }
            | SealError::NotFound { .. }
            | SealError::Tpm { .. }
            | SealError::TpmUnreachable { .. }
            | SealError::Encrypt { .. }
            | SealError::Random(_)
            | SealError::Generate(_) => false,
        }
    }
}

/// One place secret keys can live.
pub trait SecretStore {
    /// One line for logs and `quantumctl identity`: the backend, where the keys are, and how
    /// they are protected.
    fn describe(&self) -> String;
    /// Whether an identity is stored.
    fn exists(&self) -> bool;
    /// Reads the stored identity; [`SealError::NotFound`] if there is none.
    fn load(&self) -> Result<NodeKeys, SealError>;
    /// Stores `keys`, replacing any identity stored before. The write is atomic: a crash leaves
    /// either the old identity or the new one.
    fn store(&self, keys: &NodeKeys) -> Result<(), SealError>;
}

/// Whether [`KeyStore::load_or_generate`] found an identity or made a new one; the daemon
/// records a new one in its trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Loaded,
    Generated,
}

/// The backend in use.
#[derive(Debug)]
pub enum KeyStore {
    Tpm(TpmStore),
    File(FileStore),
}

impl KeyStore {
    /// Chooses the backend. A TPM is used when one is configured (or found) and answers.
    /// Otherwise the file store is used, and [`KeyStore::fallback_reason`] says why — except
    /// when a sealed identity already exists: then an unreachable TPM is an error, because
    /// falling back would quietly give the node a different identity.
    pub fn open(config: &Config) -> Result<KeyStore, SealError> {
        let sealed_path = config.dir.join(SEALED_FILE);
        let key_path = config.dir.join(KEY_FILE);
        let tcti = match resolve_tcti(&config.tpm) {
            Ok(tcti) => tcti,
            Err(reason) => return Ok(KeyStore::File(FileStore::new(key_path, Some(reason)))),
        };
        match tpm::probe(&tcti) {
            Ok(()) => {
                if key_path.exists() && !sealed_path.exists() {
                    // The node got its identity before it had a TPM; keep it rather than change
                    // identity behind the operator's back.
                    let reason = format!(
                        "a TPM answers at {tcti:?} but the node identity was created without one; regenerate the identity to move it into the TPM (`quantumd --regenerate-identity`)"
                    );
                    warn!(%reason, "using the key file");
                    return Ok(KeyStore::File(FileStore::new(key_path, Some(reason))));
                }
                Ok(KeyStore::Tpm(TpmStore::new(tcti, sealed_path, config.bind_pcr7)))
            }
            Err(source) if sealed_path.exists() => Err(SealError::TpmUnreachable {
                path: sealed_path,
                tcti,
                source,
            }),
            Err(source) => {
                let reason = format!("no TPM answers at {tcti:?}: {source}");
                warn!(%reason, "falling back to the key file");
                Ok(KeyStore::File(FileStore::new(key_path, Some(reason))))
            }
        }
    }

    fn backend(&self) -> &dyn SecretStore {
        match self {
            KeyStore::Tpm(tpm) => tpm,
            KeyStore::File(file) => file,
        }
    }

    pub fn describe(&self) -> String {
        self.backend().describe()
    }

    /// Why the file store is in use, if it is.
    pub fn fallback_reason(&self) -> Option<&str> {
        match self {
            KeyStore::Tpm(_) => None,
            KeyStore::File(file) => file.reason(),
        }
    }

    pub fn is_tpm(&self) -> bool {
        matches!(self, KeyStore::Tpm(_))
    }

    pub fn exists(&self) -> bool {
        self.backend().exists()
    }

    pub fn load(&self) -> Result<NodeKeys, SealError> {
        self.backend().load()
    }

    pub fn store(&self, keys: &NodeKeys) -> Result<(), SealError> {
        self.backend().store(keys)
    }

    /// Loads the identity, generating and storing one named `name` if there is none yet. Any
    /// other failure (a changed PCR, a bad file) is returned, never papered over with a new key.
    pub fn load_or_generate(&self, name: &str) -> Result<(NodeKeys, Origin), SealError> {
        match self.load() {
            Ok(keys) => Ok((keys, Origin::Loaded)),
            Err(SealError::NotFound { .. }) => Ok((self.regenerate(name)?, Origin::Generated)),
            Err(e) => Err(e),
        }
    }

    /// Generates a new identity and stores it in place of the old one: the recovery path when
    /// the old one cannot be unsealed.
    pub fn regenerate(&self, name: &str) -> Result<NodeKeys, SealError> {
        let keys = NodeKeys::generate(name).map_err(SealError::Generate)?;
        self.store(&keys)?;
        info!(key_id = %keys.key_id(), store = %self.describe(), "generated a new node identity");
        Ok(keys)
    }
}

/// The TCTI to try, or why there is none.
fn resolve_tcti(setting: &TpmSetting) -> Result<String, String> {
    match setting {
        TpmSetting::Off => Err("the TPM is turned off in the configuration".to_owned()),
        TpmSetting::Tcti(tcti) => Ok(tcti.clone()),
        TpmSetting::Auto => match std::env::var(TCTI_ENV) {
            Ok(tcti) if tcti == "none" => Err(format!("{TCTI_ENV}=none turns the TPM off")),
            Ok(tcti) if !tcti.is_empty() => Ok(tcti),
            _ if Path::new(DEFAULT_TPM_DEVICE).exists() => Ok(format!("device:{DEFAULT_TPM_DEVICE}")),
            _ => Err(no_tpm_device()),
        },
    }
}

/// Where the firmware announces a TPM (ACPI's TPM2 table, or the TPM
/// class device a driver bound), whether or not its node is visible here.
const TPM_ANNOUNCED: &[&str] = &["/sys/firmware/acpi/tables/TPM2", "/sys/class/tpm/tpm0"];

/// Why there is no TPM device: a machine without one, or one whose node
/// this process cannot see (quantumd.service's PrivateDevices=yes, unless
/// the TPM drop-in it describes is installed).
fn no_tpm_device() -> String {
    if TPM_ANNOUNCED.iter().any(|p| Path::new(p).exists()) {
        format!(
            "the firmware announces a TPM, but {DEFAULT_TPM_DEVICE} is not visible here (quantumd.service has \
             PrivateDevices=yes; its comments give the drop-in that lets it use the TPM) and {TCTI_ENV} is not set"
        )
    } else {
        format!("{DEFAULT_TPM_DEVICE} does not exist and {TCTI_ENV} is not set")
    }
}

/// Writes `bytes` to `path` atomically with mode 0600, creating its directory (0700) if needed.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SealError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};

    let io = |action, source| SealError::Io {
        path: path.to_owned(),
        action,
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("create its directory", e))?;
    let tmp = path.with_extension("tmp");
    // A stale temporary file from a crash is ours to replace.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove a stale temporary file", e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    file.write_all(bytes).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io("rename into place", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync its directory", e))?;
    Ok(())
}
