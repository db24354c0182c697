//! btrfs subvolumes for stateful cells: a thin safe layer over the five
//! libbtrfsutil calls we need, and [`CellState`], a cell's state subvolume
//! with named read-only snapshots and rollback.
//!
//! The `btrfsutil` crate is not used: its subvolume iterator and deleted-list
//! are wrong (PLATFORM.md). The declarations below follow
//! `/usr/include/btrfsutil.h` (libbtrfsutil 1.2); nothing here lists
//! subvolumes through libbtrfsutil: snapshots are found by reading a
//! directory.

use std::ffi::{CStr, CString};
use std::io;
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

mod ffi {
    use super::*;

    /// `BTRFS_UTIL_OK`.
    pub const OK: c_int = 0;
    /// `BTRFS_UTIL_ERROR_NOT_BTRFS`.
    pub const ERROR_NOT_BTRFS: c_int = 4;
    /// `BTRFS_UTIL_ERROR_NOT_SUBVOLUME`.
    pub const ERROR_NOT_SUBVOLUME: c_int = 5;
    /// `BTRFS_UTIL_CREATE_SNAPSHOT_READ_ONLY`.
    pub const CREATE_SNAPSHOT_READ_ONLY: c_int = 1 << 1;

    // `enum btrfs_util_error` is returned as a C int; it is read as one (not a
    // Rust enum) so that a code newer than this list is not undefined behaviour.
    #[link(name = "btrfsutil")]
    extern "C" {
        pub fn btrfs_util_strerror(err: c_int) -> *const c_char;
        pub fn btrfs_util_is_subvolume(path: *const c_char) -> c_int;
        pub fn btrfs_util_subvolume_id(path: *const c_char, id_ret: *mut u64) -> c_int;
        pub fn btrfs_util_create_subvolume(path: *const c_char, flags: c_int, unused: *mut u64, qgroup_inherit: *mut c_void) -> c_int;
        pub fn btrfs_util_create_snapshot(
            source: *const c_char,
            path: *const c_char,
            flags: c_int,
            unused: *mut u64,
            qgroup_inherit: *mut c_void,
        ) -> c_int;
        pub fn btrfs_util_delete_subvolume(path: *const c_char, flags: c_int) -> c_int;
    }
}

/// What went wrong with a subvolume.
#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    /// A libbtrfsutil call failed.
    #[error("{op} {path}: {message}")]
    Call {
        /// What was being done ("create subvolume").
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// libbtrfsutil's error code.
        code: i32,
        /// libbtrfsutil's text for it.
        message: String,
        /// errno, as libbtrfsutil left it.
        #[source]
        errno: io::Error,
    },
    /// A plain file-system call failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A path with a NUL byte cannot be passed to C.
    #[error("path {0} contains a NUL byte")]
    NulInPath(PathBuf),
    /// A path that should be a subvolume is not one.
    #[error("{0} is not a btrfs subvolume")]
    NotSubvolume(PathBuf),
    /// A snapshot name outside `[A-Za-z0-9._-]{1,64}` or starting with a dot.
    #[error("invalid snapshot name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ - and do not start with a dot")]
    BadSnapshotName(String),
    /// No snapshot by that name.
    #[error("no snapshot {name} in {dir}")]
    NoSnapshot {
        /// The name asked for.
        name: String,
        /// The snapshot directory.
        dir: PathBuf,
    },
}

fn c_path(path: &Path) -> Result<CString, BtrfsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| BtrfsError::NulInPath(path.to_owned()))
}

/// Turns a libbtrfsutil return code into a result, capturing errno at once
/// (before anything else can overwrite it).
fn check(op: &'static str, path: &Path, code: c_int) -> Result<(), BtrfsError> {
    if code == ffi::OK {
        return Ok(());
    }
    let errno = io::Error::last_os_error();
    // SAFETY: btrfs_util_strerror returns NULL or a pointer to a static
    // NUL-terminated string for any code, known or not.
    let message = unsafe {
        let text = ffi::btrfs_util_strerror(code);
        if text.is_null() {
            format!("libbtrfsutil error {code}")
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    };
    Err(BtrfsError::Call {
        op,
        path: path.to_owned(),
        code,
        message,
        errno,
    })
}

/// Whether a snapshot may be written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A frozen copy (what backups and rollback points should be).
    ReadOnly,
    /// A writable copy.
    ReadWrite,
}

/// A btrfs subvolume at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subvolume {
    path: PathBuf,
    id: u64,
}

impl Subvolume {
    /// Creates an empty subvolume at `path` (its parent must exist on btrfs).
    pub fn create(path: &Path) -> Result<Subvolume, BtrfsError> {
        let c = c_path(path)?;
        // SAFETY: `c` is a valid C string for the call; flags must be 0; the
        // unused and qgroup arguments may be NULL.
        check("create subvolume", path, unsafe {
            ffi::btrfs_util_create_subvolume(c.as_ptr(), 0, std::ptr::null_mut(), std::ptr::null_mut())
        })?;
        Subvolume::open(path)
    }

    /// The subvolume at `path`, which must be the subvolume's root.
    pub fn open(path: &Path) -> Result<Subvolume, BtrfsError> {
        if !Subvolume::is_subvolume(path)? {
            return Err(BtrfsError::NotSubvolume(path.to_owned()));
        }
        let c = c_path(path)?;
        let mut id = 0u64;
        // SAFETY: `c` is a valid C string and `id` a valid u64 to write to.
        check("read subvolume id of", path, unsafe {
            ffi::btrfs_util_subvolume_id(c.as_ptr(), &mut id)
        })?;
        Ok(Subvolume { path: path.to_owned(), id })
    }

    /// Whether `path` is the root of a subvolume; `false` for anything not
    /// on btrfs; an error when it cannot be looked at (it does not exist).
    pub fn is_subvolume(path: &Path) -> Result<bool, BtrfsError> {
        let c = c_path(path)?;
        // SAFETY: `c` is a valid C string for the call.
        match unsafe { ffi::btrfs_util_is_subvolume(c.as_ptr()) } {
            ffi::ERROR_NOT_SUBVOLUME | ffi::ERROR_NOT_BTRFS => Ok(false),
            code => check("inspect", path, code).map(|()| true),
        }
    }

    /// Snapshots this subvolume to `dst` (which must not exist).
    pub fn snapshot(&self, dst: &Path, access: Access) -> Result<Subvolume, BtrfsError> {
        let src = c_path(&self.path)?;
        let c = c_path(dst)?;
        let flags = match access {
            Access::ReadOnly => ffi::CREATE_SNAPSHOT_READ_ONLY,
            Access::ReadWrite => 0,
        };
        // SAFETY: both are valid C strings; the unused and qgroup arguments may be NULL.
        check("snapshot to", dst, unsafe {
            ffi::btrfs_util_create_snapshot(src.as_ptr(), c.as_ptr(), flags, std::ptr::null_mut(), std::ptr::null_mut())
        })?;
        Subvolume::open(dst)
    }

    /// Deletes the subvolume (not recursively: one with nested subvolumes is an error).
    pub fn delete(self) -> Result<(), BtrfsError> {
        let c = c_path(&self.path)?;
        // SAFETY: `c` is a valid C string for the call.
        check("delete subvolume", &self.path, unsafe {
            ffi::btrfs_util_delete_subvolume(c.as_ptr(), 0)
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its subvolume id (tree id): stays the same across renames, differs in every snapshot.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// A snapshot's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a
/// dot, so that it is one path component and never a hidden working name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotName(String);

impl TryFrom<&str> for SnapshotName {
    type Error = BtrfsError;

    fn try_from(name: &str) -> Result<SnapshotName, BtrfsError> {
        let ok = (1..=64).contains(&name.len())
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(SnapshotName(name.to_owned()))
        } else {
            Err(BtrfsError::BadSnapshotName(name.to_owned()))
        }
    }
}

impl SnapshotName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stateful cell's state: the subvolume `DIR/current` that the cell sees,
/// and read-only snapshots `DIR/snapshots/NAME` to roll back to.
///
/// `DIR/.rollback` exists only while a rollback runs (or after a crash in
/// one); [`CellState::open`] removes it. The cell must be stopped during a
/// rollback: a process that still has files open in the old `current` would
/// keep writing to a subvolume about to be deleted.
#[derive(Debug)]
pub struct CellState {
    dir: PathBuf,
}

const CURRENT: &str = "current";
const SNAPSHOTS: &str = "snapshots";
const WORKING: &str = ".rollback";

impl CellState {
    /// Opens (creating on first use) the state in `dir`, which must be on
    /// btrfs, and finishes what a crash interrupted.
    pub fn open(dir: &Path) -> Result<CellState, BtrfsError> {
        let state = CellState { dir: dir.to_owned() };
        for d in [dir.to_owned(), state.snapshot_dir()] {
            std::fs::create_dir_all(&d).map_err(|source| BtrfsError::Io {
                op: "create directory",
                path: d.clone(),
                source,
            })?;
        }
        let current = state.current();
        let working = dir.join(WORKING);
        let has_current = exists(&current)?;
        if exists(&working)? {
            if has_current {
                // Either a half-made copy (crash before the exchange) or the
                // old state (crash after it): `current` is whole either way.
                tracing::info!(path = %working.display(), "removing what an interrupted rollback left");
                Subvolume::open(&working)?.delete()?;
            } else {
                // Our steps never leave this; someone removed `current` by hand.
                // The working copy is a whole subvolume: better than an empty one.
                tracing::warn!(path = %working.display(), "state has no `current`; using the rollback copy");
                rename(&working, &current)?;
            }
        } else if !has_current {
            tracing::info!(path = %current.display(), "creating cell state subvolume");
            Subvolume::create(&current)?;
        }
        Subvolume::open(&current)?;
        Ok(state)
    }

    /// The subvolume the cell reads and writes.
    pub fn current(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.dir.join(SNAPSHOTS)
    }

    fn snapshot_path(&self, name: &SnapshotName) -> PathBuf {
        self.snapshot_dir().join(name.as_str())
    }

    /// Takes a read-only snapshot of `current` named `name`.
    ///
    /// btrfs creates a snapshot in one transaction: after a crash it either
    /// exists whole or not at all.
    pub fn snapshot(&self, name: &SnapshotName) -> Result<Subvolume, BtrfsError> {
        let snapshot = Subvolume::open(&self.current())?.snapshot(&self.snapshot_path(name), Access::ReadOnly)?;
        tracing::info!(snapshot = name.as_str(), id = snapshot.id(), "cell state snapshot taken");
        Ok(snapshot)
    }

    /// The snapshots, by name. (Read from the directory: libbtrfsutil's subvolume iterator is not used.)
    pub fn snapshots(&self) -> Result<Vec<SnapshotName>, BtrfsError> {
        let dir = self.snapshot_dir();
        let io_err = |source| BtrfsError::Io {
            op: "list",
            path: dir.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            if let Some(name) = entry.file_name().to_str().and_then(|n| SnapshotName::try_from(n).ok()) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Deletes a snapshot.
    pub fn delete_snapshot(&self, name: &SnapshotName) -> Result<(), BtrfsError> {
        self.existing_snapshot(name)?.delete()
    }

    fn existing_snapshot(&self, name: &SnapshotName) -> Result<Subvolume, BtrfsError> {
        let path = self.snapshot_path(name);
        if !exists(&path)? {
            return Err(BtrfsError::NoSnapshot {
                name: name.as_str().to_owned(),
                dir: self.snapshot_dir(),
            });
        }
        Subvolume::open(&path)
    }

    /// Replaces `current` with a writable copy of snapshot `name`; the
    /// snapshot itself stays. Idempotent: after a crash, run it again.
    ///
    /// Crash safety, step by step (at every instant `current` is a whole
    /// subvolume, either the state before or the state after):
    /// 1. A writable snapshot of `name` is made at `.rollback`. A crash
    ///    leaves `.rollback` beside the untouched `current`; `open` deletes it.
    /// 2. `renameat2(RENAME_EXCHANGE)` swaps `.rollback` and `current` in one
    ///    atomic step, and the directory is fsynced so the swap is durable
    ///    when this returns. A crash before the fsync leaves either order.
    /// 3. `.rollback`, now the old state, is deleted. A crash leaves it for
    ///    `open` to delete.
    pub fn rollback(&self, name: &SnapshotName) -> Result<(), BtrfsError> {
        let snapshot = self.existing_snapshot(name)?;
        let current = Subvolume::open(&self.current())?;
        let working = self.dir.join(WORKING);
        if exists(&working)? {
            Subvolume::open(&working)?.delete()?;
        }
        let restored = snapshot.snapshot(&working, Access::ReadWrite)?;
        exchange(&working, &self.current())?;
        fsync_dir(&self.dir)?;
        // After the exchange each path names the other subvolume.
        Subvolume::open(&working)?.delete()?;
        tracing::info!(
            snapshot = name.as_str(),
            old_id = current.id(),
            new_id = restored.id(),
            "cell state rolled back"
        );
        Ok(())
    }
}

fn exists(path: &Path) -> Result<bool, BtrfsError> {
    path.try_exists().map_err(|source| BtrfsError::Io {
        op: "look at",
        path: path.to_owned(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), BtrfsError> {
    std::fs::rename(from, to).map_err(|source| BtrfsError::Io {
        op: "rename",
        path: from.to_owned(),
        source,
    })
}

/// Atomically swaps two directory entries (renameat2 RENAME_EXCHANGE; btrfs has it since Linux 4.7).
fn exchange(a: &Path, b: &Path) -> Result<(), BtrfsError> {
    let (ca, cb) = (c_path(a)?, c_path(b)?);
    // SAFETY: both are valid C strings; AT_FDCWD makes them relative to the working directory when not absolute.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(BtrfsError::Io {
            op: "exchange",
            path: a.to_owned(),
            source: io::Error::last_os_error(),
        })
    }
}

fn fsync_dir(dir: &Path) -> Result<(), BtrfsError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| BtrfsError::Io {
            op: "fsync",
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_single_visible_path_components() {
        for good in ["before-upgrade", "2025-01-01T00.00", "a", "x_y"] {
            assert!(SnapshotName::try_from(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", ".rollback", "a/b", "a b", &"x".repeat(65)] {
            assert!(matches!(SnapshotName::try_from(bad), Err(BtrfsError::BadSnapshotName(_))), "{bad}");
        }
    }

    #[test]
    fn a_directory_off_btrfs_is_not_a_subvolume_and_a_missing_one_is_an_error() {
        let tmp = std::env::temp_dir();
        // /tmp may itself be btrfs somewhere; only the non-btrfs answer is checked where it applies.
        match Subvolume::is_subvolume(Path::new("/proc")) {
            Ok(is) => assert!(!is),
            Err(e) => panic!("/proc: {e}"),
        }
        let missing = tmp.join("quantum-steppps-no-such-dir");
        let err = Subvolume::is_subvolume(&missing).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with(&format!("inspect {}: ", missing.display()))),
            "{err:?}"
        );
    }
}
