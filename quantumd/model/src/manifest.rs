//! The typed cell manifest. Values here are already validated; the defaults
//! of every optional key are written down once, in the `Default` impls below.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::netrule::NetRule;
use crate::units::{ByteSize, CpuCores, Duration};

/// A cell name: 1-63 characters of `[a-z0-9-]`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CellName(String);

impl CellName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid cell name: use 1-63 characters of a-z, 0-9 and '-', starting with a letter")]
pub struct CellNameError(pub String);

impl FromStr for CellName {
    type Err = CellNameError;
    fn from_str(s: &str) -> Result<Self, CellNameError> {
        let ok = (1..=63).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(CellName(s.to_owned()))
        } else {
            Err(CellNameError(s.to_owned()))
        }
    }
}

impl TryFrom<String> for CellName {
    type Error = CellNameError;
    fn try_from(s: String) -> Result<Self, CellNameError> {
        s.parse()
    }
}

impl From<CellName> for String {
    fn from(n: CellName) -> String {
        n.0
    }
}

impl fmt::Display for CellName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed and validated `cell.toml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub name: CellName,
    pub version: semver::Version,
    pub description: String,
    pub capabilities: Vec<String>,
    pub program: Program,
    pub params: BTreeMap<String, ParamSpec>,
    pub resources: Resources,
    pub lifecycle: Lifecycle,
    pub objectives: Objectives,
    pub state: State,
    pub policy: Policy,
    /// `[provides]` and `[uses]`: the channels the cell serves and talks to.
    pub channels: Channels,
    pub isolation: Isolation,
    /// `[needs] cells`: started before this cell and stopped after it.
    pub needs: Vec<CellName>,
    pub children: Vec<ChildRef>,
}

/// What the cell runs: a command line, or a content-addressed artifact
/// shipped in its bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Program {
    Exec(Vec<String>),
    Artifact(Artifact),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// Path relative to the bundle root.
    pub path: String,
    /// Lower-case hex of the BLAKE3 digest.
    pub blake3: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamType {
    Path,
    Port,
    String,
    Integer,
    Duration,
    Size,
}

impl ParamType {
    pub const ALL: [(&'static str, ParamType); 6] = [
        ("path", ParamType::Path),
        ("port", ParamType::Port),
        ("string", ParamType::String),
        ("integer", ParamType::Integer),
        ("duration", ParamType::Duration),
        ("size", ParamType::Size),
    ];

    /// Checks `value` against this type; the error says what was expected.
    pub fn check(self, value: &str) -> Result<(), String> {
        match self {
            ParamType::Path | ParamType::String => {
                if value.contains('\0') {
                    return Err("must not contain NUL bytes".into());
                }
                if self == ParamType::Path && value.is_empty() {
                    return Err("a path must not be empty".into());
                }
                Ok(())
            }
            ParamType::Port => match value.parse::<u16>() {
                Ok(p) if p > 0 => Ok(()),
                _ => Err(format!("{value:?} is not a port: use a number from 1 to 65535")),
            },
            ParamType::Integer => value.parse::<i64>().map(drop).map_err(|_| format!("{value:?} is not an integer")),
            ParamType::Duration => value.parse::<Duration>().map(drop).map_err(|e| e.to_string()),
            ParamType::Size => value.parse::<ByteSize>().map(drop).map_err(|e| e.to_string()),
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = ParamType::ALL.iter().find(|(_, t)| t == self).map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// `None` makes the parameter required.
    pub default: Option<String>,
    pub description: String,
    /// `secret = true`: a password or token. It never appears where others
    /// on the node can read it (a command line, the environment, a unit's
    /// properties, the journal, the trail): the cell reads it from the file
    /// `$CREDENTIALS_DIRECTORY/<name>`, and quantumd makes a random one for
    /// a run that gives none and hands it to that caller alone.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// `[resources]`, each mapped to a systemd/cgroup property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Resources {
    /// -> CPUWeight (cores x 100, so the default 0.1 core is weight 10).
    pub cpu_min: CpuCores,
    /// -> CPUQuota (cores x 100 %).
    pub cpu_max: CpuCores,
    /// -> MemoryMin.
    pub memory_min: ByteSize,
    /// -> MemoryMax.
    pub memory_max: ByteSize,
    /// -> IOWeight, 1..=10000.
    pub io_weight: u16,
    /// -> TasksMax.
    pub tasks_max: u32,
    pub gpus: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_min: CpuCores::from_centis(10),
            cpu_max: CpuCores::from_centis(100),
            memory_min: ByteSize::mib(32),
            memory_max: ByteSize::mib(256),
            io_weight: 100,
            tasks_max: 64,
            gpus: 0,
        }
    }
}

impl Resources {
    /// systemd's CPUWeight for this cell's guaranteed share.
    pub fn cpu_weight(&self) -> u64 {
        u64::from(self.cpu_min.centis()).clamp(1, 10_000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    No,
    OnFailure,
    Always,
}

impl Restart {
    pub const ALL: [(&'static str, Restart); 3] = [("no", Restart::No), ("on-failure", Restart::OnFailure), ("always", Restart::Always)];
}

/// `[objectives]`: what quantumd keeps the cell within by tuning it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Objectives {
    /// 99 % of the cell's waits for a CPU must be shorter than this; while
    /// they are not, quantumd raises the cell's CPUWeight (bounded).
    pub runq_latency_p99: Option<crate::units::Latency>,
}

/// `[state]`: what the cell keeps between runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct State {
    /// The cell has a state directory of its own (`$STATE_DIRECTORY`) that
    /// outlives its runs; on btrfs it is a subvolume, with read-only
    /// snapshots to roll back to (`quantumctl cell snapshot|rollback`).
    pub subvolume: bool,
}

/// `[policy]`: what quantumd does when the cell behaves unlike itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Policy {
    /// What an anomaly (a program the cell never ran while its baseline
    /// was learned, a connection its `network-allow` refused) leads to.
    pub on_anomaly: OnAnomaly,
    /// How long the cell runs, over all its instances and runs, while
    /// quantumd learns its baseline; nothing is an anomaly until then.
    pub learning: crate::units::Duration,
}

impl Policy {
    /// One minute covers a service's start-up and first requests.
    pub const DEFAULT_LEARNING: crate::units::Duration = crate::units::Duration(60);
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            on_anomaly: OnAnomaly::Alert,
            learning: Policy::DEFAULT_LEARNING,
        }
    }
}

/// `[provides] channels`, `[uses] channels` and `[uses] rate`: what the
/// cell may serve to other cells and what it may connect to, through
/// quantumd's channel broker (Cell 0 IPC, the `quantum-cell` SDK). The
/// cell's token says exactly this; nothing else is reachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Channels {
    /// Bare channel names, served as `<this cell>/<name>`.
    pub provides: Vec<String>,
    /// `CELL/CHANNEL`s.
    pub uses: Vec<String>,
    /// At most this many connects (and listens) a second, per instance.
    pub rate: u32,
}

impl Channels {
    pub const DEFAULT_RATE: u32 = 100;

    /// Whether the cell takes part in channels at all (and so gets a token).
    pub fn any(&self) -> bool {
        !self.provides.is_empty() || !self.uses.is_empty()
    }
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            provides: Vec::new(),
            uses: Vec::new(),
            rate: Channels::DEFAULT_RATE,
        }
    }
}

/// A channel's own name: what a cell name may be (lower-case letters,
/// digits, dashes; a letter first; at most 63).
pub fn is_channel_name(s: &str) -> bool {
    s.parse::<CellName>().is_ok()
}

/// `[policy] on-anomaly`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnAnomaly {
    /// Record it in the trail and signal it on the bus (the default).
    Alert,
    /// Alert, then stop the instance.
    Stop,
    /// Neither learn nor alert: for cells whose every run differs (a
    /// sandbox for the user's own code). Refused connections still fail.
    Ignore,
}

impl OnAnomaly {
    pub const ALL: [(&'static str, OnAnomaly); 3] = [
        ("alert", OnAnomaly::Alert),
        ("stop", OnAnomaly::Stop),
        ("ignore", OnAnomaly::Ignore),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OnAnomaly::Alert => "alert",
            OnAnomaly::Stop => "stop",
            OnAnomaly::Ignore => "ignore",
        }
    }
}

/// `[lifecycle] kind`: whether the cell is a service that runs until it is
/// stopped, or a task that does its work and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Runs until stopped (a web server, a database): `quantumctl run`
    /// returns once it has started and says how to reach it.
    Service,
    /// Does its work and exits (a disk report, a checksum): `quantumctl run`
    /// shows its output as it comes and exits with its status.
    Task,
}

impl Kind {
    pub const ALL: [(&'static str, Kind); 2] = [("service", Kind::Service), ("task", Kind::Task)];
}

/// `[lifecycle]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Lifecycle {
    pub kind: Kind,
    /// For a service: how to reach it once started, with placeholders
    /// (`"http://127.0.0.1:{port}/"`), shown by `quantumctl run`.
    pub reach: Option<String>,
    /// Zero means never stop for idleness.
    pub idle_timeout: Duration,
    pub restart: Restart,
    /// Restarts allowed within `restart_window`; one more blacklists the cell.
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            kind: Kind::Service,
            reach: None,
            idle_timeout: Duration(300),
            restart: Restart::OnFailure,
            max_restarts: 3,
            restart_window: Duration(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// A private network namespace with no interfaces but its own loopback.
    None,
    /// Only the host's loopback addresses.
    Loopback,
    /// The host's network.
    Host,
}

impl Network {
    pub const ALL: [(&'static str, Network); 3] = [("none", Network::None), ("loopback", Network::Loopback), ("host", Network::Host)];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserMode {
    /// A transient user allocated by systemd (DynamicUser=yes).
    Dynamic,
    /// Root; only for cells whose signature is trusted for it.
    Root,
}

impl UserMode {
    pub const ALL: [(&'static str, UserMode); 2] = [("dynamic", UserMode::Dynamic), ("root", UserMode::Root)];
}

/// `[isolation]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Isolation {
    pub network: Network,
    /// `network-allow`: with the host's network, the only destinations the
    /// cell may connect or send to (empty: any).
    pub network_allow: Vec<NetRule>,
    pub user: UserMode,
    pub readable: Vec<String>,
    pub writable: Vec<String>,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            network: Network::None,
            network_allow: Vec::new(),
            user: UserMode::Dynamic,
            readable: Vec::new(),
            writable: Vec::new(),
        }
    }
}

/// A `[[child]]` entry: `count` instances of the manifest at `manifest`
/// (relative to the parent's file), named `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChildRef {
    pub name: CellName,
    pub manifest: String,
    pub count: u32,
}

impl Manifest {
    /// Every placeholder used by the program and the isolation paths.
    pub fn templated_strings(&self) -> impl Iterator<Item = &str> {
        let exec: &[String] = match &self.program {
            Program::Exec(argv) => argv,
            Program::Artifact(_) => &[],
        };
        exec.iter()
            .chain(&self.isolation.readable)
            .chain(&self.isolation.writable)
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_names_follow_the_contract() {
        for good in ["a", "web-server", "x1", &"a".repeat(63)] {
            assert!(good.parse::<CellName>().is_ok(), "{good}");
        }
        for bad in ["", "1a", "-a", "Web", "a_b", "a.b", &"a".repeat(64)] {
            assert!(bad.parse::<CellName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn param_types_check_values() {
        assert!(ParamType::Port.check("8080").is_ok());
        assert!(ParamType::Port.check("0").is_err());
        assert!(ParamType::Port.check("65536").is_err());
        assert!(ParamType::Integer.check("-3").is_ok());
        assert!(ParamType::Size.check("1G").is_ok());
        assert!(ParamType::Duration.check("soon").is_err());
        assert!(ParamType::Path.check("").is_err());
    }
}
