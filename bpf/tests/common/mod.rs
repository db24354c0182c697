//! What the real-kernel tests share: the cgroup v2 mount and cgroups that
//! clean up after themselves.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use quantum_bpf::cgroup_id;

/// The cgroup v2 mount: the usual places first, else any cgroup2 mount,
/// else a fresh one of our own.
pub fn v2_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
        let cgroup2: Vec<&str> = mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(2) == Some(&"cgroup2")).then(|| f[1])
            })
            .collect();
        for preferred in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            if cgroup2.contains(&preferred) {
                return PathBuf::from(preferred);
            }
        }
        if let Some(any) = cgroup2.first() {
            return PathBuf::from(any);
        }
        let dir = std::env::temp_dir().join(format!("qt-bpf-cgroup2-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create cgroup2 mount point");
        let status = Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t cgroup2 failed: {status}");
        dir
    })
}

/// A cgroup directory that is emptied and removed when dropped.
pub struct Cgroup(pub PathBuf);

impl Cgroup {
    pub fn create(path: PathBuf) -> Cgroup {
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup(path)
    }
    #[allow(dead_code)] // not every test binary asks
    pub fn id(&self) -> u64 {
        cgroup_id(&self.0).expect("cgroup id")
    }
    pub fn procs(&self) -> PathBuf {
        self.0.join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            // Processes we started are killed by their guards; wait for the kernel to let go of them.
            for pid in fs::read_to_string(self.procs()).unwrap_or_default().lines() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
