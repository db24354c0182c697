//! security-ai: what each cell normally runs, learned from STEPPPS EVENT,
//! and an alert when it runs something else.
//!
//! A cell's baseline is the set of programs its instances exec'd while it
//! learned, by `comm` (the name the kernel gives a process at exec: the
//! file's base name, at most 15 bytes). It learns for its first `[policy]
//! learning` of running time, one clock per cell summed over its instances
//! and runs (and quantumd's restarts: the baseline is kept in
//! `<state>/baselines/<cell>@<version>.json`), seeded with what the manifest names:
//! its program, and every word of its command line that is a program on
//! the system path (the tools a `sh -c` script calls, whichever branch a
//! run takes), and what the runtime execs on the way to the program. From then on, an exec outside
//! the set is an anomaly, alerted once per instance and program. A new
//! version of the cell learns afresh: what it runs may have changed.
//!
//! The same baseline holds the TCP destinations its instances connected to
//! while learning, each remembered as `tcp:PORT@CLASS` (loopback, private
//! or public: a web client's servers change addresses, not kinds); a
//! connect to another is a `connect` anomaly. A cell with a `network-allow`
//! list is not learned that way: its list says what is normal, and its
//! refusals are anomalies from the first one, learning or not.
//!
//! And the most CPU the cell used in a sample while learning: afterwards an
//! instance that uses more than three times that (and at least half a core
//! more) for as long as the cell learned (at most a minute) is a `cpu`
//! anomaly, once per instance: a miner in a web server, a loop gone wild.
//!
//! An alert is a trail entry (action `alert`) whose detail this module
//! writes and reads back ([`Anomaly::detail`], [`alert_of`]), so
//! that `quantumctl alerts` reads the signed record rather than a copy.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use quantum_model::OnAnomaly;
use serde::{Deserialize, Serialize};

/// Where what the kernel calls a process's name is cut: TASK_COMM_LEN - 1.
const COMM_MAX: usize = 15;

/// What the runtime itself execs in a cell's cgroup before the cell's
/// program: quantumd's warm waiter (`quantumd warm-exec`) and systemd's
/// executor (systemd 255 and later), as the kernel names them.
const RUNTIME_PROGRAMS: [&str; 2] = ["quantumd", "systemd-executo"];

/// What kind of behaviour was out of the ordinary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A program the cell did not run while its baseline was learned.
    Exec,
    /// A connection or datagram its `network-allow` refused.
    Network,
    /// A TCP destination it did not connect to while its baseline was learned.
    Connect,
    /// Sustained CPU far above the most it used while learning.
    Cpu,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Network => "network",
            Kind::Connect => "connect",
            Kind::Cpu => "cpu",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "exec" => Some(Kind::Exec),
            "network" => Some(Kind::Network),
            "connect" => Some(Kind::Connect),
            "cpu" => Some(Kind::Cpu),
            _ => None,
        }
    }
}

/// One deviation of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub instance: String,
    pub cell: String,
    pub kind: Kind,
    /// For a person: what happened and against what.
    pub message: String,
    /// What the cell's `[policy] on-anomaly` makes of it.
    pub response: OnAnomaly,
}

impl Anomaly {
    /// The trail entry's detail: `INSTANCE: KIND: RESPONSE: MESSAGE`.
    /// Instance ids, kinds and responses hold no ": ", so the message may.
    pub fn detail(&self) -> String {
        format!(
            "{}: {}: {}: {}",
            self.instance,
            self.kind.as_str(),
            self.response.as_str(),
            self.message
        )
    }
}

/// The alert an `alert` trail entry records; `None` for any other entry
/// (or a detail this module did not write).
pub fn alert_of(e: &quantum_bus::TrailEntry) -> Option<quantum_bus::Alert> {
    if e.action != quantum_trail::Action::ALERT.as_str() {
        return None;
    }
    let mut parts = e.detail.splitn(4, ": ");
    let (instance, kind, response, message) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let known = Kind::parse(kind).is_some() && OnAnomaly::ALL.iter().any(|(name, _)| *name == response);
    known.then(|| quantum_bus::Alert {
        seq: e.seq,
        time_ns: e.time_ns,
        instance: instance.to_owned(),
        cell: e.cell.clone(),
        kind: kind.to_owned(),
        response: response.to_owned(),
        message: message.to_owned(),
    })
}

/// The kernel's name for a process running `program` (a path).
pub fn comm_of(program: &str) -> String {
    let base = program.rsplit('/').next().unwrap_or(program);
    let mut end = base.len().min(COMM_MAX);
    // comm is bytes; cut on a character boundary so that it stays a String.
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    base[..end].to_owned()
}

/// Where a word of a command line is looked up as a program: the path
/// systemd gives a service.
const SYSTEM_PATH: [&str; 4] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"];

/// The programs a command line names, by [`comm_of`]: its first word, and
/// each word of any argument (a script's text too) that is an executable
/// file, given as a path or found on [`SYSTEM_PATH`].
pub fn named_programs(argv: &[String]) -> BTreeSet<String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let mut out = BTreeSet::new();
    if let Some(first) = argv.first() {
        out.insert(comm_of(first));
    }
    let words = argv
        .iter()
        .flat_map(|a| a.split(|c: char| !(c.is_ascii_alphanumeric() || "._+-/".contains(c))));
    for word in words.filter(|w| !w.is_empty() && w.len() <= 255) {
        if out.contains(word) {
            continue;
        }
        let found = if word.starts_with('/') {
            executable(Path::new(word))
        } else {
            !word.contains('/') && SYSTEM_PATH.iter().any(|dir| executable(&Path::new(dir).join(word)))
        };
        if found {
            out.insert(comm_of(word));
        }
    }
    out
}

/// How a TCP destination is remembered: `tcp:PORT@CLASS`, the class being
/// `loopback`, `private` (RFC 1918, link-local, shared, unique-local) or
/// `public`. IPv4-mapped IPv6 addresses are their IPv4 address.
pub fn destination_key(to: std::net::SocketAddr) -> String {
    use std::net::IpAddr;
    let ip = match to.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let class = match ip {
        IpAddr::V4(a) if a.is_loopback() || a.is_unspecified() => "loopback",
        IpAddr::V4(a) => {
            let [x, y, ..] = a.octets();
            let shared = x == 100 && (64..128).contains(&y);
            if a.is_private() || a.is_link_local() || shared {
                "private"
            } else {
                "public"
            }
        }
        IpAddr::V6(a) if a.is_loopback() || a.is_unspecified() => "loopback",
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80 {
                "private"
            } else {
                "public"
            }
        }
    };
    format!("tcp:{}@{class}", to.port())
}

/// What a running instance is, for its baseline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub cell: String,
    pub instance: String,
    /// The manifest's version: a new one learns afresh.
    pub version: String,
    /// The manifest's command line (an artifact: its path alone).
    pub exec: std::sync::Arc<[String]>,
    pub on_anomaly: OnAnomaly,
    pub learning: Duration,
    /// The manifest lists where the cell may connect (`network-allow`).
    pub allow_list: bool,
}

/// One cell's baseline, as kept on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Baseline {
    version: String,
    /// Running time learned so far, ms.
    learned_ms: u64,
    /// Whether learning is over (the `learning` in force then was reached).
    learned: bool,
    execs: BTreeSet<String>,
    /// TCP destinations, as [`destination_key`] names them.
    #[serde(default)]
    connects: BTreeSet<String>,
    /// The most CPU one sample saw, in thousandths of a core.
    #[serde(default)]
    cpu_peak_millicores: u64,
}

impl Baseline {
    fn new(s: &Subject) -> Baseline {
        let mut execs: BTreeSet<String> = RUNTIME_PROGRAMS.iter().map(|p| (*p).to_owned()).collect();
        execs.extend(named_programs(&s.exec));
        Baseline {
            version: s.version.clone(),
            learned_ms: 0,
            learned: false,
            execs,
            connects: BTreeSet::new(),
            cpu_peak_millicores: 0,
        }
    }
}

/// Every cell's baseline, and what was already alerted.
pub struct Baselines {
    /// `None`: nothing is kept (tests, or a state directory that failed).
    dir: Option<PathBuf>,
    /// By [`key`]: cell and version.
    cells: HashMap<String, Baseline>,
    /// Keys whose baseline changed since it was last written.
    dirty: HashSet<String>,
    /// What was already raised: instance, kind, and the program or destination.
    alerted: HashSet<(String, Kind, String)>,
    /// How long each instance has been above its cell's CPU threshold.
    hot: HashMap<String, Duration>,
}

impl Baselines {
    /// Baselines kept under `dir` (made when first written).
    pub fn new(dir: Option<PathBuf>) -> Baselines {
        Baselines {
            dir,
            cells: HashMap::new(),
            dirty: HashSet::new(),
            alerted: HashSet::new(),
            hot: HashMap::new(),
        }
    }

    fn file(dir: &Path, key: &str) -> PathBuf {
        dir.join(format!("{key}.json"))
    }

    /// The subject's baseline: kept, or new when none is kept (or the kept
    /// one is unreadable: logged, relearned).
    fn baseline(&mut self, s: &Subject) -> &mut Baseline {
        let key = key(s);
        if !self.cells.contains_key(&key) {
            let kept = self.dir.as_deref().and_then(|dir| {
                let path = Baselines::file(dir, &key);
                let text = std::fs::read_to_string(&path).ok()?;
                serde_json::from_str::<Baseline>(&text)
                    .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "unreadable baseline; learning afresh"))
                    .ok()
            });
            let b = match kept {
                Some(b) if b.version == s.version => b,
                _ => {
                    self.dirty.insert(key.clone());
                    Baseline::new(s)
                }
            };
            self.cells.insert(key.clone(), b);
        }
        self.cells.get_mut(&key).expect("inserted above")
    }

    /// Counts `elapsed` of running time for each cell among `running` (once
    /// per cell, however many instances); ends learning where it is due.
    pub fn advance(&mut self, running: &[Subject], elapsed: Duration) {
        let mut seen = HashSet::new();
        for s in running {
            if s.on_anomaly == OnAnomaly::Ignore || !seen.insert(key(s)) {
                continue;
            }
            let b = self.baseline(s);
            if b.learned {
                continue;
            }
            b.learned_ms += u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            self.finish_learning(s);
        }
        self.alerted
            .retain(|(instance, _, _)| running.iter().any(|s| &s.instance == instance));
        self.hot.retain(|instance, _| running.iter().any(|s| &s.instance == instance));
    }

    /// One sample's CPU use of the subject's instance (`cores` over the last
    /// `interval`): the cell's peak while it learns; afterwards an anomaly
    /// once the instance has stayed above three times the peak (and half a
    /// core more) for as long as the cell learned, at most a minute.
    pub fn cpu(&mut self, s: &Subject, cores: f64, interval: Duration) -> Option<Anomaly> {
        if s.on_anomaly == OnAnomaly::Ignore || !cores.is_finite() || cores < 0.0 {
            return None;
        }
        let milli = (cores * 1000.0).round() as u64;
        let b = self.baseline(s);
        if !b.learned {
            if milli > b.cpu_peak_millicores {
                b.cpu_peak_millicores = milli;
                self.dirty.insert(key(s));
            }
            return None;
        }
        let peak = b.cpu_peak_millicores;
        let threshold = (3 * peak).max(peak + 500);
        if milli <= threshold {
            self.hot.remove(&s.instance);
            return None;
        }
        let hot = self.hot.entry(s.instance.clone()).or_default();
        *hot += interval;
        let sustain = s.learning.min(Duration::from_secs(60));
        if *hot < sustain {
            return None;
        }
        let message = format!(
            "used {cores:.2} cores for {} s; while learning, {} {} used at most {:.2}",
            hot.as_secs(),
            s.cell,
            s.version,
            peak as f64 / 1000.0
        );
        self.raise(s, Kind::Cpu, "", message)
    }

    /// The subject's anomaly of `kind` about `what` (a program, a
    /// destination), unless it was already raised for this instance.
    fn raise(&mut self, s: &Subject, kind: Kind, what: &str, message: String) -> Option<Anomaly> {
        self.alerted.insert((s.instance.clone(), kind, what.to_owned())).then(|| Anomaly {
            instance: s.instance.clone(),
            cell: s.cell.clone(),
            kind,
            message,
            response: s.on_anomaly,
        })
    }

    /// A run of the subject's instance that lasted `ran` beyond what
    /// [`advance`](Baselines::advance) counted: added to its cell's learning.
    pub fn ran(&mut self, s: &Subject, ran: Duration) {
        if s.on_anomaly == OnAnomaly::Ignore || ran.is_zero() {
            return;
        }
        let b = self.baseline(s);
        if b.learned {
            return;
        }
        b.learned_ms += u64::try_from(ran.as_millis()).unwrap_or(u64::MAX);
        self.dirty.insert(key(s));
        self.finish_learning(s);
    }

    fn finish_learning(&mut self, s: &Subject) {
        let Some(b) = self.cells.get_mut(&key(s)) else { return };
        if !b.learned && b.learned_ms >= u64::try_from(s.learning.as_millis()).unwrap_or(u64::MAX) {
            b.learned = true;
            let programs: Vec<&str> = b.execs.iter().map(String::as_str).collect();
            tracing::info!(cell = s.cell, version = s.version, programs = ?programs, "baseline learned");
            self.dirty.insert(key(s));
        }
    }

    /// An exec of `comm` (process `pid`) in the subject's instance: learned
    /// while the cell learns; afterwards an anomaly when the baseline lacks
    /// it, once per instance and program.
    pub fn exec(&mut self, s: &Subject, comm: &str, pid: u32) -> Option<Anomaly> {
        if s.on_anomaly == OnAnomaly::Ignore {
            return None;
        }
        let b = self.baseline(s);
        if b.execs.contains(comm) {
            return None;
        }
        if !b.learned {
            b.execs.insert(comm.to_owned());
            self.dirty.insert(key(s));
            return None;
        }
        let known: Vec<&str> = b
            .execs
            .iter()
            .map(String::as_str)
            .filter(|p| !RUNTIME_PROGRAMS.contains(p))
            .collect();
        let message = format!(
            "{comm} (pid {pid}) ran; while learning, {} {} ran only {}",
            s.cell,
            s.version,
            known.join(", ")
        );
        self.raise(s, Kind::Exec, comm, message)
    }

    /// A TCP connect to `to` by process `pid` (`comm`) in the subject's
    /// instance: learned while the cell learns; afterwards an anomaly when
    /// the baseline lacks its key, once per instance and key. Cells with a
    /// `network-allow` list are judged by it instead.
    pub fn connect(&mut self, s: &Subject, to: std::net::SocketAddr, comm: &str, pid: u32) -> Option<Anomaly> {
        if s.on_anomaly == OnAnomaly::Ignore || s.allow_list {
            return None;
        }
        let dest = destination_key(to);
        let b = self.baseline(s);
        if b.connects.contains(&dest) {
            return None;
        }
        if !b.learned {
            b.connects.insert(dest);
            self.dirty.insert(key(s));
            return None;
        }
        let known = if b.connects.is_empty() {
            "connected nowhere".to_owned()
        } else {
            format!(
                "connected only to {}",
                b.connects.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
            )
        };
        let message = format!(
            "{comm} (pid {pid}) connected to {to} ({dest}); while learning, {} {} {known}",
            s.cell, s.version
        );
        self.raise(s, Kind::Connect, &dest, message)
    }

    /// Writes the baselines that changed; a failure is logged and retried
    /// with the next change.
    pub fn save(&mut self) {
        let Some(dir) = &self.dir else {
            self.dirty.clear();
            return;
        };
        if self.dirty.is_empty() {
            return;
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot keep baselines");
            return;
        }
        for key in std::mem::take(&mut self.dirty) {
            let Some(b) = self.cells.get(&key) else { continue };
            let path = Baselines::file(dir, &key);
            let written = serde_json::to_vec_pretty(b)
                .map_err(|e| e.to_string())
                .and_then(|json| crate::store::write_atomically(&path, &json, false).map_err(|e| crate::command::error_chain(&e)));
            if let Err(error) = written {
                tracing::warn!(path = %path.display(), error, "cannot write a baseline");
                self.dirty.insert(key);
            }
        }
    }
}

/// Which baseline a subject's is: one per cell and version, so that an
/// upgrade learns afresh while instances of the old version still run on
/// theirs. Also its file's name under the baselines directory.
fn key(s: &Subject) -> String {
    format!("{}@{}", s.cell, s.version)
}

/// Turns each unit's refusal count into anomalies: one when refusals first
/// appear, then at most one a minute while they keep coming.
#[derive(Default)]
pub struct Refusals {
    /// unit -> (count at the last alert, when that alert was; none yet).
    last: HashMap<String, (u64, Option<std::time::Instant>)>,
}

impl Refusals {
    /// Every unit's count now (`counts`) -> units with an anomaly to raise,
    /// with the new refusals and the total.
    pub fn observe(&mut self, counts: &[(String, u64)]) -> Vec<(String, u64, u64)> {
        const QUIET: Duration = Duration::from_secs(60);
        let now = std::time::Instant::now();
        let mut out = Vec::new();
        for (unit, total) in counts {
            let before = self.last.get(unit).copied();
            // A count below the last one is a new start of the unit (a restart).
            let (base, at) = match before {
                Some((n, at)) if n <= *total => (n, at),
                _ => (0, None),
            };
            let due = at.is_none_or(|at| now.duration_since(at) >= QUIET);
            if *total > base && due {
                out.push((unit.clone(), total - base, *total));
                self.last.insert(unit.clone(), (*total, Some(now)));
            } else if before.is_none() {
                self.last.insert(unit.clone(), (0, None));
            }
        }
        self.last.retain(|unit, _| counts.iter().any(|(u, _)| u == unit));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(instance: &str, version: &str) -> Subject {
        Subject {
            cell: "web-server".into(),
            instance: instance.into(),
            version: version.into(),
            exec: ["/usr/bin/python3".to_owned(), "-m".into(), "http.server".into()].into(),
            on_anomaly: OnAnomaly::Alert,
            learning: Duration::from_secs(5),
            allow_list: false,
        }
    }

    #[test]
    fn destinations_are_learned_by_port_and_kind_of_address() {
        let mut b = Baselines::new(None);
        let s = web("web-server.1", "1.0.0");
        let at = |a: &str| a.parse::<std::net::SocketAddr>().expect("addr");
        assert_eq!(b.connect(&s, at("203.0.113.5:443"), "python3", 1), None);
        assert_eq!(b.connect(&s, at("127.0.0.1:5432"), "python3", 1), None);
        b.advance(std::slice::from_ref(&s), Duration::from_secs(5));
        assert_eq!(
            b.connect(&s, at("198.51.100.9:443"), "python3", 2),
            None,
            "another public server on 443"
        );
        assert_eq!(b.connect(&s, at("[::ffff:127.0.0.1]:5432"), "python3", 2), None, "mapped loopback");
        let a = b.connect(&s, at("198.51.100.9:4444"), "sh", 3).expect("a new port");
        assert_eq!(a.kind, Kind::Connect);
        assert_eq!(
            a.message,
            "sh (pid 3) connected to 198.51.100.9:4444 (tcp:4444@public); while learning, web-server 1.0.0 connected only to tcp:443@public, tcp:5432@loopback"
        );
        assert!(
            b.connect(&s, at("10.1.2.3:5432"), "python3", 4).is_some(),
            "a private host is not loopback"
        );
        assert_eq!(b.connect(&s, at("198.51.100.7:4444"), "sh", 5), None, "alerted once per key");
        let listed = Subject {
            allow_list: true,
            ..web("web-server.2", "1.0.0")
        };
        assert_eq!(b.connect(&listed, at("198.51.100.9:9999"), "sh", 6), None, "the allow-list judges");
    }

    #[test]
    fn sustained_cpu_far_above_the_learned_peak_is_alerted_once() {
        let mut b = Baselines::new(None);
        let s = web("web-server.1", "1.0.0");
        let second = Duration::from_secs(1);
        assert_eq!(b.cpu(&s, 0.2, second), None);
        assert_eq!(b.cpu(&s, 0.05, second), None);
        b.advance(std::slice::from_ref(&s), Duration::from_secs(5));
        // Threshold: max(3 x 0.2, 0.2 + 0.5) = 0.7 cores, for 5 s (the learning).
        for _ in 0..10 {
            assert_eq!(b.cpu(&s, 0.69, second), None, "at the threshold");
        }
        for _ in 0..4 {
            assert_eq!(b.cpu(&s, 1.0, second), None, "not yet sustained");
        }
        assert_eq!(b.cpu(&s, 0.1, second), None, "a dip starts the count again");
        for _ in 0..4 {
            assert_eq!(b.cpu(&s, 1.0, second), None);
        }
        // A program named "cpu" is its own alert, not the CPU one.
        assert!(b.exec(&s, "cpu", 9).is_some());
        let a = b.cpu(&s, 1.0, second).expect("five seconds above");
        assert_eq!(a.kind, Kind::Cpu);
        assert_eq!(
            a.message,
            "used 1.00 cores for 5 s; while learning, web-server 1.0.0 used at most 0.20"
        );
        assert_eq!(b.cpu(&s, 1.0, second), None, "once per instance");
    }

    #[test]
    fn destination_classes() {
        let key = |a: &str| destination_key(a.parse().expect("addr"));
        assert_eq!(key("127.0.0.53:53"), "tcp:53@loopback");
        assert_eq!(key("[::1]:80"), "tcp:80@loopback");
        assert_eq!(key("192.168.1.4:22"), "tcp:22@private");
        assert_eq!(key("100.64.0.1:22"), "tcp:22@private");
        assert_eq!(key("[fd00::1]:22"), "tcp:22@private");
        assert_eq!(key("[fe80::1]:22"), "tcp:22@private");
        assert_eq!(key("8.8.8.8:53"), "tcp:53@public");
        assert_eq!(key("[2001:db8::1]:443"), "tcp:443@public");
    }

    #[test]
    fn what_runs_while_learning_is_normal_and_something_new_afterwards_is_alerted_once() {
        let mut b = Baselines::new(None);
        let s = web("web-server.1", "1.0.0");
        assert_eq!(b.exec(&s, "python3", 10), None);
        assert_eq!(b.exec(&s, "gzip", 11), None, "learned");
        b.advance(std::slice::from_ref(&s), Duration::from_secs(4));
        assert_eq!(b.exec(&s, "sort", 12), None, "still learning at 4 s of 5");
        b.advance(std::slice::from_ref(&s), Duration::from_secs(1));
        for known in ["python3", "gzip", "sort", "quantumd"] {
            assert_eq!(b.exec(&s, known, 13), None, "{known} was learned");
        }
        let a = b.exec(&s, "sh", 14).expect("sh is new");
        assert_eq!(
            (a.kind, a.instance.as_str(), a.response),
            (Kind::Exec, "web-server.1", OnAnomaly::Alert)
        );
        assert!(
            a.message
                .starts_with("sh (pid 14) ran; while learning, web-server 1.0.0 ran only gzip, python3, sort"),
            "{}",
            a.message
        );
        assert_eq!(b.exec(&s, "sh", 15), None, "alerted once per instance");
        let other = web("web-server.2", "1.0.0");
        assert!(b.exec(&other, "sh", 16).is_some(), "another instance is alerted too");
    }

    #[test]
    fn learning_counts_running_time_once_per_cell_and_a_new_version_learns_afresh() {
        let mut b = Baselines::new(None);
        let (one, two) = (web("web-server.1", "1.0.0"), web("web-server.2", "1.0.0"));
        b.advance(&[one.clone(), two.clone()], Duration::from_secs(3));
        assert_eq!(b.exec(&one, "sh", 1), None, "two instances for 3 s are 3 s of learning");
        b.advance(&[one.clone(), two], Duration::from_secs(2));
        assert!(b.exec(&one, "awk", 2).is_some());
        let upgraded = web("web-server.3", "1.1.0");
        assert_eq!(b.exec(&upgraded, "awk", 3), None, "1.1.0 is learning");
        // Both versions running at once keep their own baselines.
        assert!(b.exec(&one, "sed", 4).is_some(), "1.0.0 stays learned beside 1.1.0");
        b.advance(&[one.clone(), upgraded.clone()], Duration::from_secs(5));
        assert!(b.exec(&upgraded, "sed", 5).is_some(), "1.1.0 learned on its own clock");
    }

    #[test]
    fn ignore_neither_learns_nor_alerts() {
        let mut b = Baselines::new(None);
        let s = Subject {
            on_anomaly: OnAnomaly::Ignore,
            ..web("python-sandbox.1", "1.0.0")
        };
        b.advance(std::slice::from_ref(&s), Duration::from_secs(60));
        assert_eq!(b.exec(&s, "sh", 1), None);
    }

    #[test]
    fn a_baseline_is_kept_across_restarts_of_quantumd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = web("web-server.1", "1.0.0");
        {
            let mut b = Baselines::new(Some(dir.path().to_owned()));
            b.exec(&s, "gzip", 1);
            b.advance(std::slice::from_ref(&s), Duration::from_secs(5));
            b.save();
        }
        let mut again = Baselines::new(Some(dir.path().to_owned()));
        assert_eq!(again.exec(&s, "gzip", 2), None);
        assert!(again.exec(&s, "sh", 3).is_some(), "learning was over before the restart");
        std::fs::write(dir.path().join("web-server@1.0.0.json"), "{torn").expect("write");
        let mut torn = Baselines::new(Some(dir.path().to_owned()));
        assert_eq!(torn.exec(&s, "sh", 4), None, "an unreadable baseline is learned afresh");
    }

    #[test]
    fn the_programs_a_script_names_are_in_the_baseline_from_the_start() {
        let argv = [
            "/bin/sh".to_owned(),
            "-c".into(),
            "set -eu\nfound=$(find \"$1\" -iname x | head -n 3)\n[ -n \"$found\" ] && /usr/bin/stat -- $found || nosuchprogram-xyz".into(),
            "{pattern}".into(),
        ];
        let named = named_programs(&argv);
        for p in ["sh", "find", "head", "stat"] {
            assert!(named.contains(p), "{p} not in {named:?}");
        }
        for p in ["set", "found", "nosuchprogram-xyz", "iname", "pattern"] {
            assert!(!named.contains(p), "{p} in {named:?}");
        }
    }

    #[test]
    fn comm_is_the_base_name_cut_at_15_bytes() {
        assert_eq!(comm_of("/usr/bin/python3"), "python3");
        assert_eq!(comm_of("/usr/lib/systemd/systemd-executor"), "systemd-executo");
        assert_eq!(comm_of("bin/scraper"), "scraper");
        assert_eq!(comm_of("/opt/ééééééééé"), "ééééééé");
    }

    #[test]
    fn an_alert_reads_back_from_its_trail_entry() {
        let anomaly = Anomaly {
            instance: "web-server.1".into(),
            cell: "web-server".into(),
            kind: Kind::Exec,
            message: "sh (pid 4): odd".into(),
            response: OnAnomaly::Stop,
        };
        let entry = quantum_bus::TrailEntry {
            seq: 7,
            time_ns: 9,
            actor: "quantumd".into(),
            action: "alert".into(),
            cell: "web-server".into(),
            manifest_hash: String::new(),
            ok: true,
            error: String::new(),
            detail: anomaly.detail(),
        };
        let alert = alert_of(&entry).expect("an alert");
        assert_eq!(
            alert,
            quantum_bus::Alert {
                seq: 7,
                time_ns: 9,
                instance: "web-server.1".into(),
                cell: "web-server".into(),
                kind: "exec".into(),
                response: "stop".into(),
                message: "sh (pid 4): odd".into(),
            }
        );
        let run = quantum_bus::TrailEntry {
            action: "run".into(),
            ..entry
        };
        assert_eq!(alert_of(&run), None);
    }

    #[test]
    fn refusals_alert_at_once_then_at_most_once_a_minute_and_again_after_a_restart() {
        let mut r = Refusals::default();
        assert!(r.observe(&[("u".into(), 0)]).is_empty());
        assert_eq!(r.observe(&[("u".into(), 2)]), vec![("u".to_owned(), 2, 2)]);
        assert!(r.observe(&[("u".into(), 5)]).is_empty(), "within the minute");
        assert_eq!(
            r.observe(&[("u".into(), 1)]),
            vec![("u".to_owned(), 1, 1)],
            "a restarted unit counts from 0"
        );
        assert_eq!(
            r.observe(&[("v".into(), 3)]),
            vec![("v".to_owned(), 3, 3)],
            "refusals before the first look count"
        );
    }
}
