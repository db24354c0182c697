//! A private QuantumOS on the host for integration tests: a real
//! dbus-daemon, a real quantumd on the cgroup v2 backend (a cgroup2 mount in
//! a temporary directory), and quantumctl run as a user would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_quantumctl"));
    let p = ctl.with_file_name(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins` first", p.display());
    p
}

/// The private bus configuration `make demo` uses too (tests/dbus/).
pub fn private_bus_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/dbus/private-bus.conf")
}

/// Polls `f` until it returns Some, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub bus_address: String,
    dbus: Child,
    pub daemon: Option<Child>,
    /// cgroup directory this node's cells live under.
    pub cgroup_root: PathBuf,
    mount: PathBuf,
    pub catalog: PathBuf,
    /// quantumd.toml text; flags still set the directories and the backend.
    config: String,
    /// Where the channel broker's socket is (`--channels`): a directory
    /// every user may enter, as cells run as other users.
    pub channels: tempfile::TempDir,
}

impl Node {
    /// Starts a bus and quantumd with `catalog` (a directory of cells).
    pub fn start(catalog: &Path) -> Node {
        Node::start_configured(catalog, "")
    }

    /// Like [`Node::start`], with `config` as quantumd.toml.
    pub fn start_configured(catalog: &Path, config: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("bus");
        let dbus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", private_bus_conf().display()))
            .arg(format!("--address=unix:path={}", sock.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .expect("dbus-daemon (apt install dbus)");
        wait_for("the private bus socket", Duration::from_secs(10), || sock.exists().then_some(()));

        let mount = dir.path().join("cgroup2");
        std::fs::create_dir_all(&mount).expect("mkdir");
        let st = Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&mount)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "cannot mount cgroup2 at {} (the host tier runs as root)",
            mount.display()
        );
        // Each node gets its own subtree of the (shared) unified hierarchy.
        let cgroup_root = mount
            .join(format!("qtest-{}", std::process::id()))
            .join(dir.path().file_name().unwrap());
        std::fs::create_dir_all(&cgroup_root).expect("test cgroup");

        let mut node = Node {
            bus_address: format!("unix:path={}", sock.display()),
            dir,
            dbus,
            daemon: None,
            cgroup_root,
            mount,
            catalog: catalog.to_owned(),
            config: config.to_owned(),
            channels: open_dir(),
        };
        node.start_daemon();
        node
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("quantumd.log"))
            .expect("log");
        let child = self
            .quantumd_command()
            .env("RUST_LOG", "debug")
            .stderr(log)
            .spawn()
            .expect("quantumd");
        self.daemon = Some(child);
        wait_for("quantumd on the bus", Duration::from_secs(20), || {
            self.ctl(&["list"]).status.success().then_some(())
        });
    }

    /// quantumd.toml for the next start of the daemon.
    pub fn set_config(&mut self, config: &str) {
        self.config = config.to_owned();
    }

    /// Runs quantumd in the foreground with this node's directories and
    /// `extra` arguments, to its end: a start expected to fail, or a
    /// one-shot command such as `--regenerate-identity`.
    pub fn quantumd(&self, extra: &[&str]) -> Output {
        self.quantumd_command().args(extra).output().expect("quantumd")
    }

    /// quantumd with this node's quantumd.toml (written now), directories and bus.
    fn quantumd_command(&self) -> Command {
        let config = self.dir.path().join("quantumd.toml");
        std::fs::write(&config, &self.config).expect("quantumd.toml");
        let mut cmd = Command::new(bin("quantumd"));
        cmd.args(["--backend", "cgroup", "--config"])
            .arg(&config)
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("--catalog")
            .arg(&self.catalog)
            .arg("--socket")
            .arg(self.socket())
            .arg("--channels")
            .arg(self.channels.path().join("channels.sock"))
            .env("QUANTUM_BUS_ADDRESS", &self.bus_address);
        cmd
    }

    /// quantumd's direct socket (`--socket`); [`Node::ctl`] uses the bus.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("quantumd.sock")
    }

    /// quantumctl over the direct socket alone: its bus address leads
    /// nowhere, so only the socket can answer.
    pub fn ctl_direct(&self, args: &[&str]) -> Output {
        Command::new(bin("quantumctl"))
            .args(args)
            .env("QUANTUM_SOCKET", self.socket())
            .env(
                "QUANTUM_BUS_ADDRESS",
                format!("unix:path={}", self.dir.path().join("no-bus").display()),
            )
            .output()
            .expect("quantumctl")
    }

    /// SIGTERM, as `systemctl stop` would, and wait for the exit.
    pub fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(d.id() as libc::pid_t, libc::SIGTERM) };
            let _ = d.wait();
        }
    }

    /// kill -9, as a crash would.
    pub fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("quantumctl"))
            .args(args)
            .env("QUANTUM_BUS_ADDRESS", &self.bus_address)
            .env_remove("QUANTUM_SOCKET")
            .output()
            .expect("quantumctl")
    }

    /// Runs quantumctl and returns stdout, panicking with both streams if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "quantumctl {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("quantumd.log")).unwrap_or_default()
    }

    pub fn list(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["list", "--json"])).expect("list --json is JSON")
    }

    /// Instances in `state`, sorted by id.
    pub fn instances(&self, state: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .list()
            .into_iter()
            .filter(|c| c["state"] == state)
            .map(|c| c["instance"].as_str().unwrap_or_default().to_owned())
            .collect();
        v.sort();
        v
    }

    /// Every `quantum-*.service` cgroup of this node that has processes.
    pub fn live_cgroups(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut dirs = vec![self.cgroup_root.join("quantum")];
        while let Some(d) = dirs.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".slice") {
                    dirs.push(e.path());
                } else if name.ends_with(".service") {
                    let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
                    if !procs.trim().is_empty() {
                        out.push(name);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_daemon();
        // Kill every cell process of this node, then remove its cgroups.
        let mut dirs = vec![self.cgroup_root.clone()];
        let mut all = Vec::new();
        while let Some(d) = dirs.pop() {
            all.push(d.clone());
            if let Ok(rd) = std::fs::read_dir(&d) {
                dirs.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
        }
        for d in &all {
            let _ = std::fs::write(d.join("cgroup.kill"), "1");
        }
        std::thread::sleep(Duration::from_millis(100));
        for d in all.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        if let Some(p) = self.cgroup_root.parent() {
            let _ = std::fs::remove_dir(p);
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.dbus.kill();
        let _ = self.dbus.wait();
    }
}

/// A new directory that every user may enter and read (mode 0755).
pub fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    dir
}

/// Writes `cells` (name -> cell.toml text) as a catalog in a new temp dir.
pub fn catalog(cells: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in cells {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("cell.toml"), text).expect("write");
    }
    dir
}

/// A minimal manifest running `script` under /bin/sh.
pub fn sh_cell(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[cell]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"test cell {name}\"\nexec = [\"/bin/sh\", \"-c\", {script:?}]\n{extra}\n"
    )
}

/// `text` as JSON, or a panic showing it.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every trail entry, oldest first (`quantumctl trail show -n 0 --json`).
pub fn trail(node: &Node) -> Vec<serde_json::Value> {
    json(&node.ok(&["trail", "show", "-n", "0", "--json"]))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Signals of quantumd's interface named `member`, as a listener sees them,
/// from a real `dbus-monitor` on the node's bus.
pub struct Monitor {
    child: std::process::Child,
    out: tempfile::NamedTempFile,
}

impl Monitor {
    pub fn start(bus_address: &str, member: &str) -> Monitor {
        let out = tempfile::NamedTempFile::new().expect("temp file");
        let child = Command::new("dbus-monitor")
            .args([
                "--address",
                bus_address,
                &format!("type='signal',interface='org.quantumos.Quantum1',member='{member}'"),
            ])
            .stdout(out.reopen().expect("reopen"))
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-monitor (package dbus) must be installed");
        Monitor { child, out }
    }

    /// Everything dbus-monitor printed so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(self.out.path()).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `quantumctl alerts --json`: every alert, oldest first.
pub fn alerts(node: &Node) -> Vec<serde_json::Value> {
    json(&node.ok(&["alerts", "--json"])).as_array().cloned().unwrap_or_default()
}

/// Whether an HTTP GET of / on loopback `port` answers 200.
pub fn get(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200")
}
