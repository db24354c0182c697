//! The client's bundle cache: bundles named by their blake3, plus refs that
//! say which hash a (cell, version) had when it was last fetched.
//!
//! ```text
//! CACHE/bundles/<blake3 hex>.qcb     the bundle, exactly as verified
//! CACHE/refs/<name>/<version>        "<blake3 hex>\n"
//! ```
//!
//! Every file is written to a temporary file in the same directory, synced,
//! renamed into place and its directory synced, so a crash leaves either the
//! old file or the new one. Nothing read back is trusted: a bundle is hashed
//! again and must match its name (a mismatching file is removed), and the
//! caller verifies its signature again. All I/O is blocking; the client runs
//! it on the blocking pool.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use quantum_model::CellName;
use semver::Version;

use crate::protocol::BUNDLE_EXTENSION;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the cache directory {path}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt (its blake3 is {actual}) and was removed")]
    Corrupt { path: PathBuf, actual: blake3::Hash },
}

#[derive(Debug, Clone)]
pub(crate) struct Cache {
    bundles: PathBuf,
    refs: PathBuf,
}

impl Cache {
    pub(crate) fn open(dir: &Path) -> Result<Cache, CacheError> {
        let cache = Cache {
            bundles: dir.join("bundles"),
            refs: dir.join("refs"),
        };
        for path in [&cache.bundles, &cache.refs] {
            fs::create_dir_all(path).map_err(|source| CacheError::Create {
                path: path.clone(),
                source,
            })?;
        }
        Ok(cache)
    }

    pub(crate) fn bundle_path(&self, hash: &blake3::Hash) -> PathBuf {
        self.bundles.join(format!("{}.{BUNDLE_EXTENSION}", hash.to_hex()))
    }

    /// The hash last fetched for `name` at `version`, or for its highest
    /// cached version when `version` is `None`. Refs that do not parse are
    /// ignored: they can only come from outside this code.
    pub(crate) fn lookup(&self, name: &CellName, version: Option<&Version>) -> Result<Option<(Version, blake3::Hash)>, CacheError> {
        let dir = self.refs.join(name.as_str());
        if let Some(version) = version {
            return Ok(read_ref(&dir.join(version.to_string()))?.map(|hash| (version.clone(), hash)));
        }
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Read { path: dir, source }),
        };
        let mut best: Option<(Version, blake3::Hash)> = None;
        for entry in entries {
            let entry = entry.map_err(|source| CacheError::Read { path: dir.clone(), source })?;
            let Some(version) = entry.file_name().to_str().and_then(|n| Version::parse(n).ok()) else {
                continue;
            };
            if best.as_ref().is_some_and(|(b, _)| *b >= version) {
                continue;
            }
            if let Some(hash) = read_ref(&entry.path())? {
                best = Some((version, hash));
            }
        }
        Ok(best)
    }

    /// The cached bundle with this hash, hashed again. A file whose hash is
    /// not its name is removed, so that the next fetch replaces it.
    pub(crate) fn load(&self, hash: &blake3::Hash) -> Result<(PathBuf, Vec<u8>), CacheError> {
        let path = self.bundle_path(hash);
        let bytes = fs::read(&path).map_err(|source| CacheError::Read {
            path: path.clone(),
            source,
        })?;
        let actual = blake3::hash(&bytes);
        if actual != *hash {
            if let Err(err) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove a corrupt cached bundle");
            }
            return Err(CacheError::Corrupt { path, actual });
        }
        Ok((path, bytes))
    }

    /// Stores a verified bundle and records it as `name` at `version`.
    pub(crate) fn store(&self, name: &CellName, version: &Version, bytes: &[u8], hash: &blake3::Hash) -> Result<PathBuf, CacheError> {
        let path = self.bundle_path(hash);
        write_atomic(&path, bytes)?;
        self.remember(name, version, hash)?;
        Ok(path)
    }

    /// Records that `name` at `version` is the bundle with this hash.
    pub(crate) fn remember(&self, name: &CellName, version: &Version, hash: &blake3::Hash) -> Result<(), CacheError> {
        let dir = self.refs.join(name.as_str());
        fs::create_dir_all(&dir).map_err(|source| CacheError::Create { path: dir.clone(), source })?;
        write_atomic(&dir.join(version.to_string()), format!("{}\n", hash.to_hex()).as_bytes())
    }
}

fn read_ref(path: &Path) -> Result<Option<blake3::Hash>, CacheError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(blake3::Hash::from_hex(text.trim()).ok()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CacheError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Temporary file in the same directory, sync, rename, sync the directory:
/// after a crash the path holds the old contents or the new, never a part.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let write_err = |source| CacheError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|err| write_err(err.error))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> CellName {
        s.parse().unwrap()
    }

    #[test]
    fn stored_bundle_is_named_by_its_hash_and_found_by_version_and_as_latest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let (old, new) = (b"old bundle".as_slice(), b"new bundle".as_slice());
        let (h_old, h_new) = (blake3::hash(old), blake3::hash(new));
        let v1 = Version::new(1, 0, 0);
        let v2 = Version::new(1, 10, 0);
        cache.store(&name("web-server"), &v2, new, &h_new).unwrap();
        let path = cache.store(&name("web-server"), &v1, old, &h_old).unwrap();

        assert_eq!(path, dir.path().join("bundles").join(format!("{}.qcb", h_old.to_hex())));
        assert_eq!(cache.lookup(&name("web-server"), Some(&v1)).unwrap(), Some((v1, h_old)));
        assert_eq!(cache.lookup(&name("web-server"), None).unwrap(), Some((v2, h_new)));
        assert_eq!(cache.lookup(&name("checksum"), None).unwrap(), None);
        assert_eq!(cache.load(&h_new).unwrap().1, new);
    }

    #[test]
    fn a_cached_bundle_whose_bytes_changed_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let hash = blake3::hash(b"bundle");
        let path = cache.store(&name("checksum"), &Version::new(1, 0, 0), b"bundle", &hash).unwrap();
        fs::write(&path, b"bundlE").unwrap();

        assert!(matches!(cache.load(&hash), Err(CacheError::Corrupt { .. })));
        assert!(!path.exists());
    }

    #[test]
    fn writing_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let hash = blake3::hash(b"bundle");
        cache.store(&name("checksum"), &Version::new(1, 0, 0), b"bundle", &hash).unwrap();

        let names: Vec<_> = fs::read_dir(dir.path().join("bundles"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(format!("{}.qcb", hash.to_hex()))]);
    }
}
