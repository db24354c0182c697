//! The node identity in a plain file, for machines without a TPM. The only protection is the
//! file's owner and mode, so both are checked on every load and a file anyone else could have
//! read is refused rather than used.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::PathBuf;

use tracing::debug;
use zeroize::Zeroizing;

use super::{write_private, SealError, SecretStore};
use crate::keys::NodeKeys;

/// Secret key files are a few kilobytes; anything much larger is not one.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// An owner-only (0600) key file.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
    reason: Option<String>,
}

impl FileStore {
    /// A store at `path`; `reason` says why no TPM is used, for [`SecretStore::describe`].
    pub fn new(path: PathBuf, reason: Option<String>) -> Self {
        FileStore { path, reason }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

impl SecretStore for FileStore {
    fn describe(&self) -> String {
        let mut line = format!("file {} (owner-only 0600, not protected by a TPM)", self.path.display());
        if let Some(reason) = &self.reason {
            line.push_str(": ");
            line.push_str(reason);
        }
        line
    }

    fn exists(&self) -> bool {
        self.path.exists()
    }

    fn load(&self) -> Result<NodeKeys, SealError> {
        let path = &self.path;
        let io = |action, source| SealError::Io {
            path: path.clone(),
            action,
            source,
        };
        // O_NOFOLLOW: a symlink planted in place of the key file must not redirect the read.
        let mut file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SealError::NotFound { path: path.clone() }),
            Err(e) => return Err(io("open", e)),
        };
        // Checked on the open file, not the path, so the file cannot be swapped in between.
        let meta = file.metadata().map_err(|e| io("stat", e))?;
        if !meta.file_type().is_file() {
            return Err(SealError::NotRegular { path: path.clone() });
        }
        let expected = effective_uid();
        if meta.uid() != expected {
            return Err(SealError::WrongOwner {
                path: path.clone(),
                owner: meta.uid(),
                expected,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SealError::InsecureMode { path: path.clone(), mode });
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(SealError::BadKeys {
                path: path.clone(),
                source: crate::keys::KeyError::BadSecretKey {
                    reason: format!("the file is {} bytes, too large for a key file", meta.len()),
                },
            });
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
        file.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
        let keys = NodeKeys::from_secret_bytes(&bytes).map_err(|source| SealError::BadKeys {
            path: path.clone(),
            source,
        })?;
        debug!(path = %path.display(), key_id = %keys.key_id(), "node identity loaded from the key file");
        Ok(keys)
    }

    fn store(&self, keys: &NodeKeys) -> Result<(), SealError> {
        write_private(&self.path, &keys.to_secret_bytes())
    }
}
