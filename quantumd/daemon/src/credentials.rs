//! Secret parameters (`secret = true` in a manifest's `[params]`): where
//! quantumd keeps them while their instance lives, and how new ones are
//! made.
//!
//! A secret never goes where others on the node can read it: not on the
//! command line (`ps`), in the environment or the unit's properties
//! (`systemctl show`), in the instance record, the trail or the journal.
//! It is written once, when the run is planned, to
//! `<state-dir>/credentials/<instance>/<name>` (directories 0700, files
//! 0600, quantumd's own), and the unit gets it as a systemd credential
//! (`LoadCredential=`; PID 1 reads the file and the cell finds it in
//! `$CREDENTIALS_DIRECTORY`). Kept on disk rather than in memory so that a
//! restart of the cell, or of quantumd, finds it again; removed with the
//! instance's record.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;

/// Random bytes in a secret quantumd makes: 192 bits, 32 characters.
const SECRET_BYTES: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the operating system's random number generator failed")]
    Random(#[source] getrandom::Error),
}

/// `<state-dir>/credentials`.
#[derive(Debug, Clone)]
pub struct Credentials {
    root: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CredentialError + 'a {
    move |source| CredentialError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl Credentials {
    pub fn open(state_dir: &Path) -> Result<Credentials, CredentialError> {
        let root = state_dir.join("credentials");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io("create", &root))?;
        Ok(Credentials { root })
    }

    /// The directory holding `instance`'s secrets, one file each.
    pub fn dir_of(&self, instance: &str) -> PathBuf {
        self.root.join(instance)
    }

    /// Writes `instance`'s secrets (replacing any left by an instance of
    /// the same id, which cannot be live: ids are never reused).
    pub fn write(&self, instance: &str, secrets: &BTreeMap<String, String>) -> Result<PathBuf, CredentialError> {
        let dir = self.dir_of(instance);
        self.remove(instance);
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io("create", &dir))?;
        for (name, value) in secrets {
            let path = dir.join(name);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("create", &path))?;
            f.write_all(value.as_bytes()).map_err(io("write", &path))?;
        }
        Ok(dir)
    }

    /// Forgets `instance`'s secrets; nothing to do when it had none.
    pub fn remove(&self, instance: &str) {
        let dir = self.dir_of(instance);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %dir.display(), error = %e, "cannot remove an ended instance's secrets"),
        }
    }

    /// Removes the secrets of every instance `live` does not name: those
    /// of instances that ended while quantumd was not running.
    pub fn sweep(&self, live: impl Fn(&str) -> bool) {
        let Ok(entries) = fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            if let Some(instance) = name.to_str().filter(|i| !live(i)) {
                tracing::info!(instance, "secrets of an instance that is gone removed");
                self.remove(instance);
            }
        }
    }
}

/// A new random secret: URL- and shell-safe characters (base64url).
pub fn generate() -> Result<String, CredentialError> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(CredentialError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_private_files_removed_with_their_instance() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Credentials::open(tmp.path()).unwrap();
        let secrets = BTreeMap::from([("password".to_owned(), "s3cret".to_owned())]);
        let dir = c.write("db.1", &secrets).unwrap();
        assert_eq!(fs::read_to_string(dir.join("password")).unwrap(), "s3cret");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("password")), 0o600);
        assert_eq!(mode(&tmp.path().join("credentials")), 0o700);
        c.write("db.2", &secrets).unwrap();
        c.sweep(|i| i == "db.2");
        assert!(!dir.exists());
        assert!(c.dir_of("db.2").exists());
        c.remove("db.2");
        assert!(!c.dir_of("db.2").exists());
    }

    #[test]
    fn generated_secrets_are_long_random_and_url_safe() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{a}");
    }
}
