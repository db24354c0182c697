//! Finding and validating manifests: catalog cells by name, or files by path.
//!
//! Catalog cells are read, validated and hashed once, then served from
//! memory until inotify says something under the catalog directory changed.
//! The inotify queue is drained (without blocking) at the start of every
//! lookup rather than by a watcher task: an edit that finished before a
//! `Run` arrived has queued its event by then, so a lookup never sees a
//! manifest older than the file — no window where a stale cell starts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use inotify::{Inotify, WatchMask};

use quantum_model::{cells_in, child_path, validate_set, CellName, Manifest, ManifestSource};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no cell named \"{name}\" in the catalog ({dir})")]
    NotFound { name: String, dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("\"{0}\" is neither a cell name nor an absolute path to a cell.toml")]
    BadSource(String),
}

/// A manifest with the child manifests it references, all validated.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// blake3 of the manifest's text, as read.
    pub hash: blake3::Hash,
    /// Each `[[child]]` entry's manifest, with its own children, in order.
    pub children: Vec<Resolved>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub dir: PathBuf,
    /// None where the directory cannot be watched: every lookup reads.
    cache: Option<Arc<Mutex<Cache>>>,
}

/// What was read from the catalog directory since inotify last reported a
/// change under it.
#[derive(Debug)]
struct Cache {
    inotify: Inotify,
    names: Option<BTreeSet<CellName>>,
    resolved: HashMap<PathBuf, Resolved>,
    /// Bumped at every change seen: a resolution read under an older
    /// generation may be stale and is not kept.
    generation: u64,
    /// Set for good once the tree can no longer be watched whole.
    off: bool,
    /// Manifest files read from disk, for the tests' sake.
    reads: u64,
}

/// Anything that can change what a lookup finds: file contents, names,
/// a directory moved or removed.
fn watch_mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

impl Cache {
    /// Watches `dir` and every directory below it. Refuses a tree with a
    /// symbolic link in it: a change behind the link would go unseen.
    fn watch(dir: &Path) -> Result<Cache, String> {
        let inotify = Inotify::init().map_err(|e| format!("inotify: {e}"))?;
        let cache = Cache {
            inotify,
            names: None,
            resolved: HashMap::new(),
            generation: 0,
            off: false,
            reads: 0,
        };
        cache.add_watches(dir)?;
        Ok(cache)
    }

    fn add_watches(&self, dir: &Path) -> Result<(), String> {
        let mut pending = vec![dir.to_owned()];
        while let Some(d) = pending.pop() {
            self.inotify
                .watches()
                .add(&d, watch_mask())
                .map_err(|e| format!("cannot watch {}: {e}", d.display()))?;
            let entries = std::fs::read_dir(&d).map_err(|e| format!("cannot read {}: {e}", d.display()))?;
            for entry in entries.flatten() {
                let kind = entry.file_type().map_err(|e| format!("{}: {e}", entry.path().display()))?;
                if kind.is_symlink() {
                    return Err(format!("{} is a symbolic link", entry.path().display()));
                }
                if kind.is_dir() {
                    pending.push(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Drops what was read if anything changed since; false when the
    /// cache can no longer be trusted (then never again: a directory that
    /// could not be watched stays unwatched).
    fn refresh(&mut self, dir: &Path) -> bool {
        if self.off {
            return false;
        }
        let mut buffer = [0u8; 4096];
        let mut changed = false;
        let trouble = loop {
            match self.inotify.read_events(&mut buffer) {
                Ok(mut events) => {
                    if events.next().is_none() {
                        break None;
                    }
                    changed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                Err(e) => break Some(format!("cannot read inotify events: {e}")),
            }
        };
        // New directories (a cell added) need watches of their own.
        let trouble = trouble.or_else(|| if changed { self.add_watches(dir).err() } else { None });
        if changed || trouble.is_some() {
            self.names = None;
            self.resolved.clear();
            self.generation += 1;
        }
        if let Some(e) = trouble {
            tracing::warn!(catalog = %dir.display(), error = %e, "catalog cache off; read on every lookup");
            self.off = true;
            return false;
        }
        true
    }
}

impl Catalog {
    /// The catalog in `dir`, watched with inotify so that lookups can be
    /// served from memory. Without inotify (or with a symbolic link in the
    /// tree) every lookup reads the files, as it must.
    pub fn new(dir: PathBuf) -> Catalog {
        let cache = match Cache::watch(&dir) {
            Ok(c) => Some(Arc::new(Mutex::new(c))),
            Err(e) => {
                tracing::info!(catalog = %dir.display(), reason = %e, "catalog read on every lookup");
                None
            }
        };
        Catalog { dir, cache }
    }

    /// The cache, refreshed from inotify's queue; None when there is none.
    fn cache(&self) -> Option<std::sync::MutexGuard<'_, Cache>> {
        let mut cache = self.cache.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
        if cache.refresh(&self.dir) {
            Some(cache)
        } else {
            None
        }
    }

    /// Names of the cells in the catalog directory.
    pub fn names(&self) -> BTreeSet<CellName> {
        let mut cache = self.cache();
        if let Some(names) = cache.as_ref().and_then(|c| c.names.clone()) {
            return names;
        }
        let names = cells_in(&self.dir);
        if let Some(c) = cache.as_mut() {
            c.names = Some(names.clone());
        }
        names
    }

    /// Manifest files read from disk so far (cached lookups read none).
    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.lock().unwrap_or_else(|e| e.into_inner()).reads)
    }

    /// Whether everything a resolution read lies inside the watched
    /// directory (no `..`, no detour), so that inotify sees its changes.
    fn inside(&self, path: &Path) -> bool {
        path.starts_with(&self.dir) && !path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    }

    /// `source` is a catalog cell name or an absolute path to a cell.toml
    /// (or to a directory holding one).
    pub fn resolve(&self, source: &str) -> Result<Resolved, CatalogError> {
        let path = if source.starts_with('/') {
            let p = PathBuf::from(source);
            if p.is_dir() {
                p.join("cell.toml")
            } else {
                p
            }
        } else if source.parse::<CellName>().is_ok() {
            let p = self.dir.join(source).join("cell.toml");
            if let Some(hit) = self.cached(&p) {
                return Ok(hit);
            }
            if !p.is_file() {
                return Err(CatalogError::NotFound {
                    name: source.to_owned(),
                    dir: self.dir.clone(),
                });
            }
            p
        } else {
            return Err(CatalogError::BadSource(source.to_owned()));
        };
        self.load(&path)
    }

    /// A cell needed by the manifest at `from`: a sibling directory first
    /// (`../NAME/cell.toml`), then the catalog.
    pub fn resolve_needed(&self, name: &CellName, from: &Path) -> Result<Resolved, CatalogError> {
        if let Some(sibling) = from
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join(name.as_str()).join("cell.toml"))
        {
            if sibling.is_file() {
                return self.load(&sibling);
            }
        }
        self.resolve(name.as_str())
    }

    pub fn load(&self, path: &Path) -> Result<Resolved, CatalogError> {
        // The generation the read starts under, if `path` may be cached.
        let mut before = None;
        if self.inside(path) {
            if let Some(c) = self.cache() {
                if let Some(hit) = c.resolved.get(path) {
                    return Ok(hit.clone());
                }
                before = Some(c.generation);
            }
        }
        let (resolved, read) = self.read(path)?;
        if before.is_some() && read.iter().all(|p| self.inside(Path::new(p))) {
            if let Some(mut c) = self.cache() {
                // A change during the read may not be in what was read.
                if Some(c.generation) == before {
                    c.reads += read.len() as u64;
                    c.resolved.insert(path.to_owned(), resolved.clone());
                }
            }
        }
        Ok(resolved)
    }

    /// The resolution of `path` read since the catalog last changed.
    fn cached(&self, path: &Path) -> Option<Resolved> {
        if !self.inside(path) {
            return None;
        }
        self.cache().and_then(|c| c.resolved.get(path).cloned())
    }

    /// Reads and validates the manifest at `path` with its children; also
    /// says which files it read.
    fn read(&self, path: &Path) -> Result<(Resolved, Vec<String>), CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_owned(),
            source,
        })?;
        let shown = path.display().to_string();
        let mut hashes = BTreeMap::from([(shown.clone(), blake3::hash(text.as_bytes()))]);
        let mut known = self.names();
        // Needed cells may also be siblings of this manifest.
        if let Some(parent_dir) = path.parent().and_then(Path::parent) {
            if parent_dir != self.dir {
                known.extend(cells_in(parent_dir));
            }
        }
        let set = validate_set(
            vec![ManifestSource { path: shown.clone(), text }],
            &mut |p| {
                let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
                hashes.insert(p.to_owned(), blake3::hash(text.as_bytes()));
                Ok(text)
            },
            &known,
        );
        if !set.is_valid() {
            let lines: Vec<String> = set.errors.iter().map(ToString::to_string).collect();
            return Err(CatalogError::Invalid(lines.join("\n")));
        }
        // The set holds every manifest it read, children included: assemble
        // from it rather than reading the files again.
        let by_path: BTreeMap<String, Manifest> = set.manifests.into_iter().collect();
        let resolved =
            assemble(&shown, &by_path, &hashes).ok_or_else(|| CatalogError::Invalid(format!("{shown}: not a valid manifest")))?;
        Ok((resolved, hashes.into_keys().collect()))
    }
}

/// The manifest at `path` from `manifests`, with its children, recursively.
fn assemble(path: &str, manifests: &BTreeMap<String, Manifest>, hashes: &BTreeMap<String, blake3::Hash>) -> Option<Resolved> {
    let manifest = manifests.get(path)?.clone();
    let hash = *hashes.get(path)?;
    let dir = Path::new(path).parent().unwrap_or(Path::new("/")).to_owned();
    let children = manifest
        .children
        .iter()
        .map(|c| assemble(&child_path(&dir, &c.manifest), manifests, hashes))
        .collect::<Option<Vec<_>>>()?;
    Some(Resolved {
        path: PathBuf::from(path),
        manifest,
        hash,
        children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cell(dir: &Path, name: &str, description: &str) -> PathBuf {
        let cell = dir.join(name);
        std::fs::create_dir_all(&cell).unwrap();
        let path = cell.join("cell.toml");
        std::fs::write(
            &path,
            format!(
                "[cell]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"{description}\"\n\
                 exec = [\"/bin/true\"]\n[resources]\nmemory-min = \"0\"\nmemory-max = \"16M\"\ntasks-max = 4\n"
            ),
        )
        .unwrap();
        path
    }

    fn description(r: &Resolved) -> &str {
        &r.manifest.description
    }

    #[test]
    fn a_catalog_cell_is_read_once_then_served_until_its_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_cell(dir.path(), "hello", "first");
        let catalog = Catalog::new(dir.path().to_owned());
        assert_eq!(description(&catalog.resolve("hello").unwrap()), "first");
        assert_eq!(description(&catalog.resolve("hello").unwrap()), "first");
        assert_eq!(catalog.reads(), 1, "the second lookup was served from memory");

        std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("first", "second")).unwrap();
        assert_eq!(description(&catalog.resolve("hello").unwrap()), "second");
        assert_eq!(catalog.reads(), 2);
    }

    #[test]
    fn cells_added_or_removed_after_the_first_lookup_are_seen_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        write_cell(dir.path(), "hello", "here");
        let catalog = Catalog::new(dir.path().to_owned());
        assert!(catalog.resolve("hello").is_ok());
        assert!(matches!(catalog.resolve("later"), Err(CatalogError::NotFound { .. })));
        assert_eq!(catalog.names().len(), 1);

        write_cell(dir.path(), "later", "added");
        assert_eq!(description(&catalog.resolve("later").unwrap()), "added");
        assert_eq!(catalog.names().len(), 2);

        std::fs::remove_dir_all(dir.path().join("hello")).unwrap();
        assert!(matches!(catalog.resolve("hello"), Err(CatalogError::NotFound { .. })));
        assert_eq!(catalog.names().len(), 1);
    }

    #[test]
    fn a_symbolic_link_added_later_turns_the_cache_off_for_good() {
        let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_cell(dir.path(), "hello", "one");
        let catalog = Catalog::new(dir.path().to_owned());
        assert_eq!(description(&catalog.resolve("hello").unwrap()), "one");
        let behind = write_cell(elsewhere.path(), "linked", "a");
        std::os::unix::fs::symlink(elsewhere.path().join("linked"), dir.path().join("linked")).unwrap();
        assert_eq!(description(&catalog.resolve("linked").unwrap()), "a");
        // A change behind the link raises no event: only reading finds it.
        std::fs::write(&behind, std::fs::read_to_string(&behind).unwrap().replace("\"a\"", "\"b\"")).unwrap();
        assert_eq!(description(&catalog.resolve("linked").unwrap()), "b");
        assert_eq!(catalog.reads(), 1, "only the first lookup, before the link, was cached");
    }

    #[test]
    fn a_new_cell_directory_is_watched_too() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path().to_owned());
        let path = write_cell(dir.path(), "fresh", "one");
        assert_eq!(description(&catalog.resolve("fresh").unwrap()), "one");
        // An edit inside the directory created after the catalog was opened.
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("\"one\"", "\"two\"")).unwrap();
        assert_eq!(description(&catalog.resolve("fresh").unwrap()), "two");
    }

    #[test]
    fn manifests_outside_the_catalog_are_read_on_every_lookup() {
        let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let catalog = Catalog::new(dir.path().to_owned());
        let path = write_cell(elsewhere.path(), "mine", "a");
        assert_eq!(description(&catalog.load(&path).unwrap()), "a");
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("\"a\"", "\"b\"")).unwrap();
        assert_eq!(description(&catalog.load(&path).unwrap()), "b");
        // A path that only looks inside the catalog.
        // Both temporary directories are siblings.
        let detour = dir
            .path()
            .join("..")
            .join(elsewhere.path().file_name().unwrap())
            .join("mine/cell.toml");
        assert_eq!(description(&catalog.load(&detour).unwrap()), "b");
        assert_eq!(catalog.reads(), 0, "nothing outside the watched tree was cached");
    }
}
