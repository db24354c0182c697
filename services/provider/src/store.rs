//! The provider's bundle directory, `ROOT/NAME/VERSION.qcb`, and the hashes
//! of its files.
//!
//! Nothing is indexed ahead of time: the catalog is a fresh scan of ROOT on
//! every request (a directory listing and one `stat` per file), and a bundle
//! request stats only its own file. What makes this cheap is the hash cache,
//! keyed by path and validated by (device, inode, mtime, size): a file's
//! blake3 is computed again only when one of those changes. Publishing a
//! bundle by writing a temporary file and renaming it over the old one (a new
//! inode) is always seen; rewriting a file in place within one mtime tick at
//! the same size is not, which is what [`BundleStore::forget_hashes`] (SIGHUP
//! in the binary) is for.
//!
//! Paths are built only from a validated [`CellName`] and a parsed
//! [`semver::Version`] (whose text is `[0-9A-Za-z.+-]` and never `..`), so a
//! request can never name a file outside ROOT. All I/O here is blocking; the
//! server calls it from `spawn_blocking`.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use quantum_model::CellName;
use semver::Version;

use crate::protocol::{Catalog, CatalogEntry, BUNDLE_EXTENSION};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the bundle directory {path}")]
    ReadRoot { path: PathBuf, source: io::Error },
    #[error("cannot read bundle {path}")]
    ReadBundle { path: PathBuf, source: io::Error },
}

/// A bundle read from disk, with the hash of exactly the bytes read.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub bytes: Vec<u8>,
    pub hash: blake3::Hash,
}

/// What identifies one version of a file's contents, short of reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: Option<SystemTime>,
    size: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: meta.modified().ok(),
            size: meta.len(),
        }
    }
}

/// The bundle directory of one provider.
#[derive(Debug)]
pub struct BundleStore {
    root: PathBuf,
    hashes: Mutex<HashMap<PathBuf, (Stamp, blake3::Hash)>>,
}

impl BundleStore {
    pub fn new(root: impl Into<PathBuf>) -> BundleStore {
        BundleStore {
            root: root.into(),
            hashes: Mutex::new(HashMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Drops every cached hash, so the next scan hashes every file again.
    pub fn forget_hashes(&self) {
        self.lock_hashes().clear();
    }

    /// Every bundle under ROOT, sorted by name then version. Entries that do
    /// not follow the layout are skipped (with a debug log, so that an
    /// operator can find out why a file is not offered); a bundle that cannot
    /// be read is skipped with a warning rather than failing the whole
    /// catalog. Only an unreadable ROOT is an error.
    pub fn catalog(&self) -> Result<Catalog, StoreError> {
        let read_root = |source| StoreError::ReadRoot {
            path: self.root.clone(),
            source,
        };
        let mut bundles = Vec::new();
        let mut seen = Vec::new();
        for dir in fs::read_dir(&self.root).map_err(read_root)? {
            let dir = dir.map_err(read_root)?;
            let Some(name) = dir.file_name().to_str().and_then(|n| n.parse::<CellName>().ok()) else {
                tracing::debug!(path = %dir.path().display(), "skipped: not a cell name");
                continue;
            };
            if !dir.path().is_dir() {
                continue;
            }
            let versions = match self.versions(&name) {
                Ok(versions) => versions,
                Err(err) => {
                    tracing::warn!(cell = %name, error = %err, "skipped an unreadable cell directory");
                    continue;
                }
            };
            for version in versions {
                let path = self.bundle_file(&name, &version);
                match self.hash_file(&path) {
                    Ok(Some((hash, size))) => {
                        seen.push(path);
                        bundles.push(CatalogEntry {
                            name: name.to_string(),
                            version,
                            blake3: hash.to_hex().to_string(),
                            size,
                        });
                    }
                    // Removed between the listing and the stat.
                    Ok(None) => {}
                    Err(err) => tracing::warn!(error = %err, "skipped an unreadable bundle"),
                }
            }
        }
        // A full scan is the moment to forget files that are gone, so the
        // cache stays the size of the directory.
        self.lock_hashes().retain(|path, _| seen.contains(path));
        bundles.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.version.cmp(&b.version)));
        Ok(Catalog { bundles })
    }

    /// The highest version of `name`, or `None` when there is none.
    pub fn latest(&self, name: &CellName) -> Result<Option<Version>, StoreError> {
        Ok(self.versions(name)?.into_iter().max())
    }

    /// The blake3 of `name` at `version` (from the cache when the file has
    /// not changed), or `None` when there is no such bundle.
    pub fn hash_of(&self, name: &CellName, version: &Version) -> Result<Option<blake3::Hash>, StoreError> {
        Ok(self.hash_file(&self.bundle_file(name, version))?.map(|(hash, _)| hash))
    }

    /// The bytes of `name` at `version` and their hash, or `None` when there
    /// is no such bundle. The hash is of the bytes actually read (not taken
    /// from the cache), so a response's ETag always matches its body even if
    /// the file is being replaced meanwhile.
    pub fn read(&self, name: &CellName, version: &Version) -> Result<Option<Bundle>, StoreError> {
        let path = self.bundle_file(name, version);
        let Some((mut file, meta)) = open_regular(&path)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(|source| StoreError::ReadBundle {
            path: path.clone(),
            source,
        })?;
        let hash = blake3::hash(&bytes);
        self.remember(path, &meta, bytes.len() as u64, hash);
        Ok(Some(Bundle { bytes, hash }))
    }

    /// The file that holds `name` at `version`. Safe by construction: see the
    /// module documentation.
    fn bundle_file(&self, name: &CellName, version: &Version) -> PathBuf {
        self.root.join(name.as_str()).join(format!("{version}.{BUNDLE_EXTENSION}"))
    }

    /// The versions present for `name`: files `VERSION.qcb` whose VERSION is
    /// a semver written canonically (so that each version has one file).
    fn versions(&self, name: &CellName) -> Result<Vec<Version>, StoreError> {
        let dir = self.root.join(name.as_str());
        let read_dir = |source| StoreError::ReadBundle { path: dir.clone(), source };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(read_dir(err)),
        };
        let mut versions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(read_dir)?;
            let file_name = entry.file_name();
            let version = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(BUNDLE_EXTENSION)?.strip_suffix('.'))
                .and_then(|stem| Version::parse(stem).ok().filter(|v| v.to_string() == stem));
            match version {
                Some(version) if entry.path().is_file() => versions.push(version),
                _ => tracing::debug!(path = %entry.path().display(), "skipped: not VERSION.qcb"),
            }
        }
        Ok(versions)
    }

    /// The hash and size of a regular file, hashing it only when its stamp
    /// changed; `None` if it does not exist or is not a regular file.
    fn hash_file(&self, path: &Path) -> Result<Option<(blake3::Hash, u64)>, StoreError> {
        let meta = match fs::metadata(path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Ok(None),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::ReadBundle {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let stamp = Stamp::of(&meta);
        if let Some((cached, hash)) = self.lock_hashes().get(path) {
            if *cached == stamp {
                return Ok(Some((*hash, stamp.size)));
            }
        }
        // Hash what is read through the opened file, under the stamp of that
        // file: one replaced since the stat above must not be cached under
        // the old stamp.
        let Some((mut file, meta)) = open_regular(path)? else {
            return Ok(None);
        };
        let mut hasher = blake3::Hasher::new();
        let size = io::copy(&mut file, &mut hasher).map_err(|source| StoreError::ReadBundle {
            path: path.to_owned(),
            source,
        })?;
        let hash = hasher.finalize();
        self.remember(path.to_owned(), &meta, size, hash);
        Ok(Some((hash, size)))
    }

    /// Caches `hash` for `path`, but only when the read saw exactly the
    /// stamped size; otherwise the file changed under us and the stamp would
    /// vouch for bytes nobody hashed.
    fn remember(&self, path: PathBuf, meta: &fs::Metadata, read: u64, hash: blake3::Hash) {
        if read == meta.len() {
            self.lock_hashes().insert(path, (Stamp::of(meta), hash));
        }
    }

    fn lock_hashes(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Stamp, blake3::Hash)>> {
        // The map holds only caches of file hashes; a panic while it was
        // held cannot leave it inconsistent, so poisoning is ignored.
        self.hashes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The opened file and its metadata, or `None` when it does not exist or is
/// not a regular file (a directory named like a bundle is not one).
fn open_regular(path: &Path) -> Result<Option<(fs::File, fs::Metadata)>, StoreError> {
    let read_err = |source| StoreError::ReadBundle {
        path: path.to_owned(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(read_err(err)),
    };
    let meta = file.metadata().map_err(read_err)?;
    Ok(meta.is_file().then_some((file, meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, name: &str, version: &str, bytes: &[u8]) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{version}.qcb"));
        fs::write(&path, bytes).unwrap();
        path
    }

    fn hashes(store: &BundleStore) -> Vec<String> {
        store.catalog().unwrap().bundles.into_iter().map(|b| b.blake3).collect()
    }

    /// The documented limit of the cache, and what SIGHUP is for: an
    /// in-place rewrite that keeps inode, size and mtime is not noticed
    /// until the hashes are forgotten.
    #[test]
    fn hashes_are_cached_by_stamp_until_forgotten() {
        let root = tempfile::tempdir().unwrap();
        let path = put(root.path(), "checksum", "1.0.0", b"aaaa");
        let store = BundleStore::new(root.path());
        assert_eq!(hashes(&store), vec![blake3::hash(b"aaaa").to_hex().to_string()]);

        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, b"bbbb").unwrap();
        fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        assert_eq!(hashes(&store), vec![blake3::hash(b"aaaa").to_hex().to_string()]);

        store.forget_hashes();
        assert_eq!(hashes(&store), vec![blake3::hash(b"bbbb").to_hex().to_string()]);
    }

    #[test]
    fn reading_a_bundle_always_hashes_the_bytes_it_returns() {
        let root = tempfile::tempdir().unwrap();
        let path = put(root.path(), "checksum", "1.0.0", b"aaaa");
        let store = BundleStore::new(root.path());
        let (name, version) = ("checksum".parse().unwrap(), Version::new(1, 0, 0));
        store.catalog().unwrap();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, b"bbbb").unwrap();
        fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();

        let bundle = store.read(&name, &version).unwrap().unwrap();

        assert_eq!((bundle.bytes.as_slice(), bundle.hash), (b"bbbb".as_slice(), blake3::hash(b"bbbb")));
        assert_eq!(store.hash_of(&name, &version).unwrap(), Some(blake3::hash(b"bbbb")));
    }

    #[test]
    fn latest_is_the_highest_semver_not_the_highest_string() {
        let root = tempfile::tempdir().unwrap();
        for version in ["1.9.0", "1.10.0", "1.10.0-rc.1", "0.99.0"] {
            put(root.path(), "checksum", version, version.as_bytes());
        }
        let store = BundleStore::new(root.path());

        assert_eq!(store.latest(&"checksum".parse().unwrap()).unwrap(), Some(Version::new(1, 10, 0)));
        assert_eq!(store.latest(&"archive".parse().unwrap()).unwrap(), None);
    }

    #[test]
    fn an_unreadable_root_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("missing");
        let err = BundleStore::new(&missing).catalog().unwrap_err();
        assert_eq!(err.to_string(), format!("cannot read the bundle directory {}", missing.display()));
    }
}
