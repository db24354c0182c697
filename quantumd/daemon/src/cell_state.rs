//! The state of a stateful cell (`[state] subvolume = true`): a directory
//! `DIR/current` that outlives the cell's runs and, when DIR is on btrfs, is
//! a subvolume with read-only snapshots in `DIR/snapshots/` to roll back to
//! (quantum_steppps::btrfs::CellState does the btrfs work).
//!
//! Under systemd the cell sees `current` as its StateDirectory=, which
//! lives in /var/lib/private for a dynamic user, where only root may go; so
//! every operation here runs as `quantumd cell-state DIR OP` in a short
//! root unit that quantumd starts (runtime::systemd). The cgroup backend
//! calls [`apply`] in-process. Either way the answer is a [`Report`].

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use quantum_steppps::btrfs::{BtrfsError, CellState, SnapshotName};
use serde::{Deserialize, Serialize};

/// What to do with a cell's state.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Op {
    /// Make the state if it is missing: a subvolume on btrfs, else a plain
    /// directory; finish a rollback a crash interrupted.
    Prepare,
    /// Take a read-only snapshot of the state now.
    Snapshot { name: String },
    /// Replace the state with a writable copy of a snapshot (the cell must
    /// be stopped).
    Rollback { name: String },
    /// Delete a snapshot.
    Delete { name: String },
    /// List the snapshots.
    List,
}

impl Op {
    /// The command-line arguments that `quantumd cell-state DIR` takes for it.
    pub fn args(&self) -> Vec<String> {
        match self {
            Op::Prepare => vec!["prepare".into()],
            Op::Snapshot { name } => vec!["snapshot".into(), name.clone()],
            Op::Rollback { name } => vec!["rollback".into(), name.clone()],
            Op::Delete { name } => vec!["delete".into(), name.clone()],
            Op::List => vec!["list".into()],
        }
    }

    /// The verb for messages and the trail.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::Prepare => "prepare",
            Op::Snapshot { .. } => "snapshot",
            Op::Rollback { .. } => "rollback",
            Op::Delete { .. } => "delete",
            Op::List => "list",
        }
    }
}

/// The state after an operation (printed as JSON by `quantumd cell-state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// The directory the cell reads and writes.
    pub current: PathBuf,
    /// Whether it is a btrfs subvolume (snapshots work).
    pub btrfs: bool,
    /// Snapshot names, sorted.
    pub snapshots: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Btrfs(#[from] BtrfsError),
    #[error("creating {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state at {0} is not on btrfs: it is kept as a plain directory, which cannot be snapshotted or rolled back (put /var/lib on btrfs for that)"
    )]
    NotBtrfs(PathBuf),
}

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

/// Whether the file system holding `path` (which exists) is btrfs.
fn on_btrfs(path: &Path) -> Result<bool, StateError> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| BtrfsError::NulInPath(path.to_owned()))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid statfs to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(StateError::Create {
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(st.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Creates `dir` and its missing parents; a parent named `private` (systemd's
/// /var/lib/private for dynamic users) is made 0700 as systemd expects.
fn create_dirs(dir: &Path) -> Result<(), StateError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_owned());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        let mode = if d.file_name().is_some_and(|n| n == "private") {
            0o700
        } else {
            0o755
        };
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(&d)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|source| StateError::Create { path: d.clone(), source })?;
    }
    Ok(())
}

/// Does `op` on the state in `dir`.
pub fn apply(dir: &Path, op: &Op) -> Result<Report, StateError> {
    create_dirs(dir)?;
    let current = dir.join("current");
    if !on_btrfs(dir)? {
        return match op {
            Op::Prepare | Op::List => {
                create_dirs(&current)?;
                Ok(Report {
                    current,
                    btrfs: false,
                    snapshots: Vec::new(),
                })
            }
            _ => Err(StateError::NotBtrfs(dir.to_owned())),
        };
    }
    // A `current` that is a plain directory (made before the file system
    // was btrfs, or by hand) is kept as it is rather than lost.
    if current.exists() && !quantum_steppps::btrfs::Subvolume::is_subvolume(&current)? {
        if matches!(op, Op::Prepare | Op::List) {
            return Ok(Report {
                current,
                btrfs: false,
                snapshots: Vec::new(),
            });
        }
        return Err(StateError::Btrfs(BtrfsError::NotSubvolume(current)));
    }
    let state = CellState::open(dir)?;
    match op {
        Op::Prepare | Op::List => {}
        Op::Snapshot { name } => {
            state.snapshot(&SnapshotName::try_from(name.as_str())?)?;
        }
        Op::Rollback { name } => state.rollback(&SnapshotName::try_from(name.as_str())?)?,
        Op::Delete { name } => state.delete_snapshot(&SnapshotName::try_from(name.as_str())?)?,
    }
    Ok(Report {
        current: state.current(),
        btrfs: true,
        snapshots: state.snapshots()?.iter().map(|s| s.as_str().to_owned()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_btrfs_the_state_is_a_plain_directory_and_snapshots_say_why_they_cannot_be() {
        let tmp = tempfile::tempdir().unwrap();
        if on_btrfs(tmp.path()).unwrap() {
            return; // this check is about other file systems
        }
        let dir = tmp.path().join("private/quantum-cells/keeper");
        let report = apply(&dir, &Op::Prepare).unwrap();
        assert!(!report.btrfs);
        assert!(report.current.is_dir());
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(tmp.path().join("private")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700);
        let err = apply(&dir, &Op::Snapshot { name: "one".into() }).unwrap_err().to_string();
        assert!(err.contains("not on btrfs"), "{err}");
    }

    #[test]
    fn ops_round_trip_through_their_command_line() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            op: Op,
        }
        for op in [
            Op::Prepare,
            Op::List,
            Op::Snapshot { name: "a".into() },
            Op::Rollback { name: "b".into() },
            Op::Delete { name: "c".into() },
        ] {
            let args = std::iter::once("x".to_owned()).chain(op.args());
            let parsed = <Cli as clap::Parser>::try_parse_from(args).unwrap();
            assert_eq!(parsed.op, op);
        }
    }
}
