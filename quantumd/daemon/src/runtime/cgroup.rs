//! The cgroup v2 backend, for hosts where systemd is not PID 1: each instance
//! gets a directory under `<root>/quantum/`, the limits its controllers
//! allow, and its process is moved there before it executes. Stopping writes
//! `cgroup.kill`. What this host cannot enforce is said once at start.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quantum_bpf::{Destination, NetPolicy};
use quantum_model::{Network, UserMode};

use super::spec::{CredentialFiles, SliceSpec, UnitSpec};
use super::{EventSender, Exit, LiveUnit, RuntimeError, UnitEvent};

const CONTROLLERS: [&str; 4] = ["cpu", "memory", "io", "pids"];

#[derive(Clone)]
pub struct CgroupRuntime {
    /// `<cgroup2 mount>/quantum`.
    base: PathBuf,
    /// Controllers enabled for cells.
    controllers: Arc<BTreeSet<String>>,
    events: EventSender,
    /// Slice name -> directory, for nested families.
    slices: Arc<Mutex<HashMap<String, PathBuf>>>,
    is_root: bool,
    /// Stateful cells' state, `<dir>/<cell>/current`.
    state_root: PathBuf,
    /// Each instance's output, `<dir>/<instance>.log` (no journal here).
    logs_dir: PathBuf,
    /// The network allow-lists of running units that list destinations:
    /// attached while held, detached when the unit ends.
    net_policies: Arc<Mutex<HashMap<String, NetPolicy>>>,
}

/// The uid a dynamic-user cell runs as under this backend (nobody).
const DYNAMIC_UID: libc::uid_t = 65534;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Cgroup {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// A map's lock, whatever a panicking holder left in it (the values stay
/// consistent: every change to these maps is one insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `usage_usec` from a cgroup's `cpu.stat`.
pub fn read_usage_usec(cpu_stat: &Path) -> Option<u64> {
    let text = fs::read_to_string(cpu_stat).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

impl CgroupRuntime {
    /// Prepares `<root>/quantum` and enables what controllers `root` offers.
    pub fn new(root: &Path, state_root: &Path, logs_dir: &Path, events: EventSender) -> Result<Self, RuntimeError> {
        let base = root.join("quantum");
        fs::create_dir_all(logs_dir).map_err(io_err("cannot create", logs_dir))?;
        if !root.join("cgroup.controllers").exists() {
            return Err(RuntimeError::Cgroup {
                op: "no cgroup v2 hierarchy at",
                path: root.display().to_string(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        fs::create_dir_all(&base).map_err(io_err("cannot create", &base))?;
        let available: BTreeSet<String> = fs::read_to_string(root.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let mut enabled = BTreeSet::new();
        for c in CONTROLLERS.iter().filter(|c| available.contains(**c)) {
            // Enabling can fail (a controller held by v1, or processes in
            // the root's children); treat that as "not enforced".
            let ok = fs::write(root.join("cgroup.subtree_control"), format!("+{c}")).is_ok()
                && fs::write(base.join("cgroup.subtree_control"), format!("+{c}")).is_ok();
            if ok {
                enabled.insert((*c).to_owned());
            }
        }
        Ok(CgroupRuntime {
            base,
            controllers: Arc::new(enabled),
            events,
            slices: Arc::default(),
            is_root: unsafe { libc::geteuid() } == 0,
            state_root: state_root.to_owned(),
            logs_dir: logs_dir.to_owned(),
            net_policies: Arc::default(),
        })
    }

    pub fn describe(&self) -> String {
        let missing: Vec<&str> = CONTROLLERS.iter().copied().filter(|c| !self.controllers.contains(*c)).collect();
        let limits = if missing.is_empty() {
            "all resource limits enforced".to_owned()
        } else {
            format!(
                "cannot enforce {} limits (controllers not available in {})",
                missing
                    .iter()
                    .map(|c| match *c {
                        "cpu" => "cpu-min/cpu-max",
                        "memory" => "memory-min/memory-max",
                        "io" => "io-weight",
                        _ => "tasks-max",
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                self.base.parent().unwrap_or(&self.base).display()
            )
        };
        format!(
            "cgroup v2 at {}: {limits}; sandboxing limited to a private network namespace and an unprivileged user (no DynamicUser, ProtectSystem, bind mounts)",
            self.base.display()
        )
    }

    fn dir_of(&self, slice: &str) -> PathBuf {
        lock(&self.slices).get(slice).cloned().unwrap_or_else(|| self.base.clone())
    }

    fn write_limits(&self, dir: &Path, l: &super::Limits) -> Result<(), RuntimeError> {
        let mut files: Vec<(&str, String)> = Vec::new();
        if self.controllers.contains("memory") {
            files.push(("memory.min", l.memory_min.to_string()));
            files.push(("memory.max", l.memory_max.to_string()));
        }
        if self.controllers.contains("cpu") {
            files.push(("cpu.max", format!("{} 100000", u64::from(l.cpu_quota_centis) * 1000)));
            files.push(("cpu.weight", l.cpu_weight.to_string()));
        }
        if self.controllers.contains("io") {
            files.push(("io.weight", format!("default {}", l.io_weight)));
        }
        if self.controllers.contains("pids") {
            files.push(("pids.max", l.tasks_max.to_string()));
        }
        for (file, value) in files {
            let path = dir.join(file);
            fs::write(&path, value).map_err(io_err("cannot write", &path))?;
        }
        Ok(())
    }

    pub fn start_slice(&self, slice: &SliceSpec) -> Result<(), RuntimeError> {
        let parent = self.dir_of(&slice.parent);
        let dir = parent.join(&slice.name);
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        for c in self.controllers.iter() {
            let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
        self.write_limits(&dir, &slice.limits)?;
        lock(&self.slices).insert(slice.name.clone(), dir);
        Ok(())
    }

    pub fn stop_slice(&self, name: &str) -> Result<(), RuntimeError> {
        let dir = lock(&self.slices).remove(name);
        if let Some(dir) = dir {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            remove_when_empty(&dir);
        }
        Ok(())
    }

    /// Where the instances' output files are.
    pub fn logs_dir(&self) -> PathBuf {
        self.logs_dir.clone()
    }

    /// A copy of an instance's secrets in `<logs-dir>/credentials/<unit>`
    /// (directories 0711 and 0700, files 0400), owned by `owner` when the
    /// cell runs as another user; made afresh for every start.
    fn credentials_copy(&self, spec: &UnitSpec, c: &CredentialFiles, owner: Option<libc::uid_t>) -> Result<PathBuf, RuntimeError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let root = self.logs_dir.join("credentials");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&root)
            .map_err(io_err("cannot create", &root))?;
        let dir = root.join(&spec.unit);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err("cannot remove", &dir))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("cannot create", &dir))?;
        for name in &c.names {
            let (from, to) = (c.dir.join(name), dir.join(name));
            fs::copy(&from, &to).map_err(io_err("cannot copy", &from))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o400)).map_err(io_err("cannot set the mode of", &to))?;
            if let Some(uid) = owner {
                std::os::unix::fs::chown(&to, Some(uid), None).map_err(io_err("cannot give", &to))?;
            }
        }
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), None).map_err(io_err("cannot give", &dir))?;
        }
        Ok(dir)
    }

    /// Where `cell`'s state lives (see crate::cell_state).
    pub fn state_dir(&self, cell: &str) -> PathBuf {
        self.state_root.join(cell)
    }

    /// Who must own a cell's state: the uid its processes get, when this
    /// backend changes it.
    pub fn state_owner(&self, user: UserMode) -> Option<libc::uid_t> {
        (user == UserMode::Dynamic && self.is_root).then_some(DYNAMIC_UID)
    }

    /// Starts `spec`'s program in its cgroup; `destinations` (empty: any)
    /// are attached to the cgroup before the program is in it.
    pub fn start(&self, spec: &UnitSpec, destinations: &[Destination]) -> Result<u32, RuntimeError> {
        let dir = self.dir_of(&spec.slice).join(&spec.unit);
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        self.write_limits(&dir, &spec.limits)?;
        let net_policy = if destinations.is_empty() {
            None
        } else {
            let attached = NetPolicy::load(destinations).and_then(|mut p| p.attach(&dir).map(|()| p));
            match attached {
                Ok(p) => Some(p),
                Err(e) => {
                    remove_when_empty(&dir);
                    return Err(RuntimeError::NetPolicy {
                        unit: spec.unit.clone(),
                        message: crate::command::error_chain(&e),
                    });
                }
            }
        };
        let procs_path = dir.join("cgroup.procs");
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(io_err("cannot open", &procs_path))?;

        let mut cmd = std::process::Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..]).envs(&spec.env).stdin(std::process::Stdio::null());
        if let Some(stdio) = &spec.stdio {
            let [stdin, stdout, stderr] = stdio.fds();
            let dup = |fd: &std::os::fd::OwnedFd| {
                fd.try_clone().map_err(|source| RuntimeError::Spawn {
                    program: spec.argv[0].clone(),
                    source,
                })
            };
            cmd.stdin(dup(stdin)?).stdout(dup(stdout)?).stderr(dup(stderr)?);
        } else {
            if let Some(stdin) = &spec.stdin {
                let fd = stdin.fd().try_clone().map_err(|source| RuntimeError::Spawn {
                    program: spec.argv[0].clone(),
                    source,
                })?;
                cmd.stdin(fd);
            }
            // What the journal is under systemd: the cell's output, kept for
            // `quantumctl logs`. Appended to, so that a restart adds to it.
            let path = crate::logs::file_of(&self.logs_dir, &spec.instance);
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err("cannot open", &path))?;
            let log_err = log.try_clone().map_err(io_err("cannot duplicate", &path))?;
            cmd.stdout(log).stderr(log_err);
        }
        if spec.state {
            cmd.env("STATE_DIRECTORY", self.state_dir(&spec.cell).join("current"));
        }
        let drop_user = spec.sandbox.user == UserMode::Dynamic && self.is_root;
        // What systemd does with LoadCredential=: the cell's own copy,
        // readable by its user alone, gone when the cell ends.
        let credentials = match &spec.credentials {
            Some(c) => Some(self.credentials_copy(spec, c, drop_user.then_some(DYNAMIC_UID))?),
            None => None,
        };
        if let Some(dir) = &credentials {
            cmd.env("CREDENTIALS_DIRECTORY", dir);
        }
        let private_net = spec.sandbox.network == Network::None && self.is_root;
        let procs_fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (write, close_range, fcntl, unshare, setgroups, setgid,
        // setuid, prctl); nothing allocates or takes locks.
        unsafe {
            cmd.pre_exec(move || {
                // Join the cell's cgroup before anything can fork.
                if libc::write(procs_fd, b"0\n".as_ptr().cast(), 2) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The cell gets stdin, stdout and stderr and nothing else of
                // quantumd's: every other descriptor closes at exec. Not all
                // are close-on-exec already: zbus receives passed
                // descriptors (a caller's stdout for an attached run)
                // without it, and a service started meanwhile would keep
                // the caller's pipe open for its whole life.
                if libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) != 0 {
                    // Kernels before 5.11: one descriptor at a time.
                    for fd in 3..4096 {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                if private_net && libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if drop_user {
                    let id = DYNAMIC_UID;
                    if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(id) != 0 || libc::setuid(id) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| {
            remove_when_empty(&dir);
            RuntimeError::Spawn {
                program: spec.argv[0].clone(),
                source,
            }
        })?;
        drop(procs);
        let pid = child.id();
        let unit = spec.unit.clone();
        if let Some(p) = net_policy {
            lock(&self.net_policies).insert(unit.clone(), p);
        }
        let net_policies = self.net_policies.clone();
        let events = self.events.clone();
        let memory_events = dir.join("memory.events");
        let oom_before = read_oom_kills(&memory_events);
        // std's wait blocks; a dedicated thread per cell keeps the runtime free.
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let exit = match child.wait() {
                    Ok(status) => exit_of(status, read_oom_kills(&memory_events) > oom_before),
                    Err(e) => Exit::Other(format!("wait failed: {e}")),
                };
                if let Some(dir) = credentials {
                    let _ = fs::remove_dir_all(dir);
                }
                lock(&net_policies).remove(&unit);
                let _ = events.send(UnitEvent { unit, exit });
            })
            .map_err(|source| RuntimeError::Spawn {
                program: "waiter thread".into(),
                source,
            })?;
        Ok(pid)
    }

    pub async fn stop(&self, unit: &str) -> Result<(), RuntimeError> {
        let Some(dir) = self.find(unit) else { return Ok(()) };
        let kill = dir.join("cgroup.kill");
        if fs::write(&kill, "1").is_err() {
            // Kernels before 5.14 have no cgroup.kill.
            for pid in pids_of(&dir) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for _ in 0..100 {
            if pids_of(&dir).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lock(&self.net_policies).remove(unit);
        remove_when_empty(&dir);
        Ok(())
    }

    /// Refusals so far by each running unit's network allow-list.
    pub fn net_refusals(&self) -> Vec<(String, u64)> {
        super::refusals(&lock(&self.net_policies))
    }

    /// The directory of `unit`, wherever its family put it.
    fn find(&self, unit: &str) -> Option<PathBuf> {
        let mut dirs = vec![self.base.clone()];
        while let Some(d) = dirs.pop() {
            let candidate = d.join(unit);
            if candidate.is_dir() {
                return Some(candidate);
            }
            if let Ok(rd) = fs::read_dir(&d) {
                dirs.extend(
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "slice")),
                );
            }
        }
        None
    }

    pub fn list(&self) -> Result<Vec<LiveUnit>, RuntimeError> {
        let mut out = Vec::new();
        let mut dirs = vec![self.base.clone()];
        while let Some(d) = dirs.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".slice") {
                    lock(&self.slices).insert(name, p.clone());
                    dirs.push(p);
                } else if name.ends_with(".service") {
                    match pids_of(&p).first() {
                        Some(&pid) => out.push(LiveUnit {
                            unit: name,
                            pid: pid as u32,
                        }),
                        None => remove_when_empty(&p),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Follows a unit whose process is not our child: poll `cgroup.events`
    /// until it is no longer populated. Its exit status is lost with its
    /// parent, so it is reported as "ended while quantumd was away".
    pub fn adopt(&self, unit: &str) {
        let Some(dir) = self.find(unit) else { return };
        let events = self.events.clone();
        let unit = unit.to_owned();
        tokio::spawn(async move {
            loop {
                let populated = fs::read_to_string(dir.join("cgroup.events"))
                    .map(|t| t.lines().any(|l| l == "populated 1"))
                    .unwrap_or(false);
                if !populated {
                    remove_when_empty(&dir);
                    let _ = events.send(UnitEvent {
                        unit,
                        exit: Exit::Other("ended; its exit status was lost across a quantumd restart".into()),
                    });
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// The unit's cgroup directory, when it exists.
    pub fn cgroup_of(&self, unit: &str) -> Option<PathBuf> {
        self.find(unit)
    }

    /// The directory every cell's cgroup is under.
    pub fn cells_cgroup(&self) -> PathBuf {
        self.base.clone()
    }

    /// Writes cpu.weight of a running cell.
    pub fn set_cpu_weight(&self, unit: &str, weight: u64) -> Result<(), RuntimeError> {
        let dir = self.find(unit).ok_or_else(|| RuntimeError::Cgroup {
            op: "no cgroup for",
            path: unit.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let file = dir.join("cpu.weight");
        fs::write(&file, weight.to_string()).map_err(io_err("cannot write", &file))
    }

    pub fn cpu_usage_usec(&self, unit: &str) -> Option<u64> {
        read_usage_usec(&self.find(unit)?.join("cpu.stat"))
    }

    pub fn describe_properties(&self, spec: &UnitSpec) -> Vec<(String, String)> {
        let mut v = vec![("cgroup".to_owned(), self.dir_of(&spec.slice).join(&spec.unit).display().to_string())];
        let l = &spec.limits;
        let enforced = |c: &str| if self.controllers.contains(c) { "" } else { " (not enforced)" };
        v.push(("memory.min".into(), format!("{}{}", l.memory_min, enforced("memory"))));
        v.push(("memory.max".into(), format!("{}{}", l.memory_max, enforced("memory"))));
        v.push((
            "cpu.max".into(),
            format!("{} 100000{}", u64::from(l.cpu_quota_centis) * 1000, enforced("cpu")),
        ));
        v.push(("cpu.weight".into(), format!("{}{}", l.cpu_weight, enforced("cpu"))));
        v.push(("io.weight".into(), format!("default {}{}", l.io_weight, enforced("io"))));
        v.push(("pids.max".into(), format!("{}{}", l.tasks_max, enforced("pids"))));
        v
    }
}

fn exit_of(status: std::process::ExitStatus, oom: bool) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(libc::SIGKILL)) if oom => Exit::OutOfMemory,
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Other("unknown wait status".into()),
    }
}

fn read_oom_kills(memory_events: &Path) -> u64 {
    fs::read_to_string(memory_events)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn pids_of(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes a cell's cgroup once its processes are gone; a busy cgroup stays.
fn remove_when_empty(dir: &Path) {
    if let Err(e) = fs::remove_dir(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::debug!(path = %dir.display(), error = %e, "cgroup not removed yet");
        }
    }
}
