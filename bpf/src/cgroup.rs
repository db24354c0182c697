//! cgroup v2 identities: the id BPF sees for a cgroup directory, and where
//! the directory sits in the hierarchy.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Why a path cannot name a cgroup v2 directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The path cannot be inspected.
    #[error("cannot inspect {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The path is not a directory on a cgroup2 file system.
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 {
        /// The path involved.
        path: PathBuf,
    },
    /// No cgroup2 mount in the mount table contains the path.
    #[error("no cgroup2 mount in {mountinfo} contains {path}")]
    NoMount {
        /// The path involved.
        path: PathBuf,
        /// The mount table read.
        mountinfo: PathBuf,
    },
}

/// The cgroup id of a cgroup v2 directory: its inode number, which is what
/// `bpf_get_current_cgroup_id()` and the programs here report.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    check_cgroup2(path)?;
    let meta = fs::metadata(path).map_err(|source| CgroupError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(meta.ino())
}

fn check_cgroup2(path: &Path) -> Result<(), CgroupError> {
    let io_err = |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io_err(io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte")))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is a valid C string and `st` is large enough for statfs to fill.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    // SAFETY: statfs succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    if st.f_type as u64 != CGROUP2_SUPER_MAGIC || !path.is_dir() {
        return Err(CgroupError::NotCgroup2 { path: path.to_owned() });
    }
    Ok(())
}

/// A cgroup the BPF programs watch the subtree of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Its cgroup id.
    pub cgroup_id: u64,
    /// Its depth in the v2 hierarchy (the root cgroup is level 0), which is
    /// how the kernel indexes `cgroup->ancestors[]`.
    pub level: u32,
}

impl Scope {
    /// The scope of the cgroup v2 directory `path`, placed in the hierarchy
    /// through the mount table at `mountinfo` (normally `/proc/self/mountinfo`).
    ///
    /// Assumes the initial cgroup namespace, where a cgroup2 mount's root is
    /// the hierarchy's root or a path below it that mountinfo spells out.
    pub fn of(path: &Path, mountinfo: &Path) -> Result<Scope, CgroupError> {
        let cgroup_id = cgroup_id(path)?;
        let path = fs::canonicalize(path).map_err(|source| CgroupError::Io {
            path: path.to_owned(),
            source,
        })?;
        let table = fs::read_to_string(mountinfo).map_err(|source| CgroupError::Io {
            path: mountinfo.to_owned(),
            source,
        })?;
        let level = level_in(&table, &path).ok_or_else(|| CgroupError::NoMount {
            path: path.clone(),
            mountinfo: mountinfo.to_owned(),
        })?;
        Ok(Scope { cgroup_id, level })
    }
}

/// The hierarchy depth of `path` (canonical) according to the cgroup2 mounts
/// in the mountinfo text `table`: the depth of the mount's root plus the
/// depth of `path` below its mount point. The innermost mount wins.
pub(crate) fn level_in(table: &str, path: &Path) -> Option<u32> {
    table
        .lines()
        .filter_map(parse_cgroup2_mount)
        .filter_map(|(root, mount_point)| {
            path.strip_prefix(&mount_point)
                .ok()
                .map(|rel| (depth(&root) + depth(rel), mount_point))
        })
        .max_by_key(|(_, mount_point)| mount_point.components().count())
        .map(|(level, _)| level)
}

fn depth(path: &Path) -> u32 {
    path.components().filter(|c| matches!(c, Component::Normal(_))).count() as u32
}

/// (root, mount point) of a mountinfo line if it is a cgroup2 mount.
fn parse_cgroup2_mount(line: &str) -> Option<(PathBuf, PathBuf)> {
    let (left, right) = line.split_once(" - ")?;
    if right.split(' ').next()? != "cgroup2" {
        return None;
    }
    let mut fields = left.split(' ');
    let root = fields.nth(3)?;
    let mount_point = fields.next()?;
    Some((PathBuf::from(unescape(root)), PathBuf::from(unescape(mount_point))))
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
90 20 0:27 /quantum.slice /srv/cg\\040slice rw - cgroup2 none rw
";

    #[test]
    fn level_counts_from_the_hierarchy_root() {
        let level = |p: &str| level_in(HYBRID, Path::new(p));
        assert_eq!(level("/sys/fs/cgroup/unified"), Some(0));
        assert_eq!(level("/sys/fs/cgroup/unified/quantum.slice"), Some(1));
        assert_eq!(level("/sys/fs/cgroup/unified/quantum.slice/a.service"), Some(2));
    }

    #[test]
    fn a_mount_of_a_subtree_adds_the_depth_of_its_root() {
        assert_eq!(level_in(HYBRID, Path::new("/srv/cg slice/cell")), Some(2));
    }

    #[test]
    fn paths_outside_cgroup2_mounts_have_no_level() {
        assert_eq!(level_in(HYBRID, Path::new("/sys/fs/cgroup/memory/x")), None);
        assert_eq!(level_in(HYBRID, Path::new("/tmp")), None);
    }

    #[test]
    fn the_innermost_cgroup2_mount_wins() {
        let nested = "1 0 0:27 / /cg rw - cgroup2 cgroup2 rw\n2 1 0:27 /a/b /cg/x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(level_in(nested, Path::new("/cg/x/c")), Some(3));
    }

    #[test]
    fn a_file_system_that_is_not_cgroup2_is_refused() {
        assert!(matches!(cgroup_id(Path::new("/proc")), Err(CgroupError::NotCgroup2 { .. })));
        assert!(matches!(cgroup_id(Path::new("/nonexistent/cgroup")), Err(CgroupError::Io { .. })));
    }
}
