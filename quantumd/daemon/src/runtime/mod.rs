//! Runtime backends: how a cell instance becomes a running, limited process.
//!
//! Two implementations behind one set of operations: [`systemd`] (transient
//! units over systemd's D-Bus API; the real one) and [`cgroup`] (cgroup v2
//! directly, for hosts without systemd as PID 1). [`Runtime`] dispatches;
//! everything above it is backend-neutral and speaks [`UnitSpec`].

pub mod cgroup;
pub mod spec;
pub mod systemd;

pub use spec::{cell_of_instance, instance_of_unit, unit_name, CredentialFiles, Limits, Sandbox, SharedFd, SliceSpec, Stdio, UnitSpec};

use tokio::sync::mpsc;

use crate::cell_state::{Op, Report};
use crate::start_profile::StartProfile;
use quantum_bpf::Destination;
use quantum_model::{Host, NetRule, UserMode};

/// The kernel's form of a cell's `network-allow`: DNS names resolved now,
/// one destination per address. A name that does not resolve fails the
/// start: the cell would otherwise run without a destination it needs, or
/// the list would be taken for one it does not hold.
async fn destinations(unit: &str, rules: &[NetRule]) -> Result<Vec<Destination>, RuntimeError> {
    let mut out = Vec::new();
    for rule in rules {
        let nets: Vec<Option<(std::net::IpAddr, u8)>> = match &rule.host {
            None => vec![None],
            Some(Host::Prefix { addr, len }) => vec![Some((*addr, *len))],
            Some(Host::Name(name)) => {
                let addrs = tokio::net::lookup_host((name.as_str(), 0))
                    .await
                    .map_err(|e| RuntimeError::NetPolicy {
                        unit: unit.to_owned(),
                        message: format!("\"{rule}\": {name} does not resolve: {e}"),
                    })?;
                addrs
                    .map(|a| a.ip())
                    .map(|ip| Some((ip, if ip.is_ipv4() { 32 } else { 128 })))
                    .collect()
            }
        };
        for net in nets {
            let d = Destination {
                protocol: rule.protocol,
                ports: rule.ports,
                net,
            };
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Each policy's refusal count; one whose counter cannot be read is left out (logged).
fn refusals(policies: &std::collections::HashMap<String, quantum_bpf::NetPolicy>) -> Vec<(String, u64)> {
    policies
        .iter()
        .filter_map(|(unit, p)| match p.denied() {
            Ok(n) => Some((unit.clone(), n)),
            Err(e) => {
                tracing::debug!(unit, error = %crate::command::error_chain(&e), "cannot read the allow-list's refusals");
                None
            }
        })
        .collect()
}

/// How a unit's main process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exited on its own with this status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Killed by the kernel's OOM killer (memory-max reached).
    OutOfMemory,
    /// Stopped or failed for a reason systemd gives ("timeout", ...).
    Other(String),
}

impl Exit {
    pub fn is_success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }

    pub fn describe(&self) -> String {
        match self {
            Exit::Code(0) => "exited successfully".to_owned(),
            Exit::Code(c) => format!("exited with status {c}"),
            Exit::Signal(s) => format!("killed by signal {}", signal_name(*s)),
            Exit::OutOfMemory => "killed by the OOM killer: memory-max reached".to_owned(),
            Exit::Other(r) => format!("failed: {r}"),
        }
    }

    pub fn code(&self) -> i32 {
        match self {
            Exit::Code(c) => *c,
            Exit::Signal(s) => 128 + s,
            Exit::OutOfMemory => 128 + libc::SIGKILL,
            Exit::Other(_) => -1,
        }
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "HUP",
        libc::SIGINT => "INT",
        libc::SIGQUIT => "QUIT",
        libc::SIGABRT => "ABRT",
        libc::SIGKILL => "KILL",
        libc::SIGSEGV => "SEGV",
        libc::SIGPIPE => "PIPE",
        libc::SIGTERM => "TERM",
        libc::SIGBUS => "BUS",
        _ => return sig.to_string(),
    };
    name.to_owned()
}

/// A unit's main process ended.
#[derive(Debug, Clone)]
pub struct UnitEvent {
    pub unit: String,
    pub exit: Exit,
}

/// A unit found running under the cell slice (for re-adoption).
#[derive(Debug, Clone)]
pub struct LiveUnit {
    pub unit: String,
    pub pid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("systemd refused {unit}: {message}")]
    Systemd { unit: String, message: String },
    #[error("systemd job for {unit} ended with result \"{result}\"")]
    Job { unit: String, result: String },
    /// The command ran but ended before systemd counted the start as done.
    #[error("{unit} {} while starting", exit.describe())]
    EndedWhileStarting { unit: String, exit: Exit },
    #[error("cannot reach systemd (through quantumd-gate or on the system bus)")]
    Connect(#[source] zbus::Error),
    #[error("{op} {path}")]
    Cgroup {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start {program}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{0}")]
    Unsupported(String),
    /// A cell's `network-allow` could not be put in place: it is not started
    /// rather than run with the whole network.
    #[error("network-allow of {unit}: {message}")]
    NetPolicy { unit: String, message: String },
    #[error("{verb} of cell {cell}'s state failed: {message}")]
    CellState { cell: String, verb: &'static str, message: String },
}

impl RuntimeError {
    /// How a cell whose (re)start failed with this error ended: its own
    /// exit when it ran, else the failure itself.
    pub fn into_exit(self) -> Exit {
        match self {
            RuntimeError::EndedWhileStarting { exit, .. } => exit,
            other => Exit::Other(other.to_string()),
        }
    }
}

/// The backend in use; cheap to clone (shared state inside).
#[derive(Clone)]
pub enum Runtime {
    Systemd(systemd::SystemdRuntime),
    Cgroup(cgroup::CgroupRuntime),
}

impl Runtime {
    /// One line saying which backend this is and what it cannot enforce.
    pub fn describe(&self) -> String {
        match self {
            Runtime::Systemd(r) => r.describe(),
            Runtime::Cgroup(r) => r.describe(),
        }
    }

    /// Woken when the backend can no longer see cells end (its connection
    /// to systemd is gone); never for the cgroup backend.
    pub fn lost(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        match self {
            Runtime::Systemd(r) => Some(r.lost()),
            Runtime::Cgroup(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Runtime::Systemd(_) => "systemd",
            Runtime::Cgroup(_) => "cgroup",
        }
    }

    /// Creates the slice of a cell family (a parent and its children).
    pub async fn start_slice(&self, slice: &SliceSpec) -> Result<(), RuntimeError> {
        match self {
            Runtime::Systemd(r) => r.start_slice(slice).await,
            Runtime::Cgroup(r) => r.start_slice(slice),
        }
    }

    pub async fn stop_slice(&self, name: &str) -> Result<(), RuntimeError> {
        match self {
            Runtime::Systemd(r) => r.stop_unit(name).await,
            Runtime::Cgroup(r) => r.stop_slice(name),
        }
    }

    /// Starts the unit and returns its main PID once the program runs; a
    /// stateful cell's state is made first when it is missing.
    /// Starts the unit; `profile` gets the backend's stages.
    pub async fn start(&self, spec: &UnitSpec, profile: &mut StartProfile) -> Result<u32, RuntimeError> {
        if spec.state {
            self.cell_state(&spec.cell, spec.sandbox.user, &Op::Prepare).await?;
            profile.mark("cell-state");
        }
        let destinations = destinations(&spec.unit, &spec.sandbox.network_allow).await?;
        if !destinations.is_empty() {
            profile.mark("network-allow");
        }
        match self {
            Runtime::Systemd(r) => r.start(spec, &destinations, profile).await,
            Runtime::Cgroup(r) => {
                let pid = r.start(spec, &destinations);
                profile.mark("spawn-cell");
                pid
            }
        }
    }

    /// Stops the unit and waits until it is gone. Stopping a unit that is
    /// already gone succeeds.
    pub async fn stop(&self, unit: &str) -> Result<(), RuntimeError> {
        match self {
            Runtime::Systemd(r) => r.stop_unit(unit).await,
            Runtime::Cgroup(r) => r.stop(unit).await,
        }
    }

    /// How many connections and datagrams each running unit's network
    /// allow-list has refused since the unit started (units without a list
    /// are not named; nor are units re-adopted after a restart of quantumd,
    /// whose programs systemd still enforces but quantumd no longer holds).
    pub fn net_refusals(&self) -> Vec<(String, u64)> {
        match self {
            Runtime::Systemd(r) => r.net_refusals(),
            Runtime::Cgroup(r) => r.net_refusals(),
        }
    }

    /// Cell units that are running now.
    pub async fn list(&self) -> Result<Vec<LiveUnit>, RuntimeError> {
        match self {
            Runtime::Systemd(r) => r.list().await,
            Runtime::Cgroup(r) => r.list(),
        }
    }

    /// Follows a unit this process did not start (re-adoption).
    pub async fn adopt(&self, unit: &str) {
        match self {
            Runtime::Systemd(r) => r.watch(unit).await,
            Runtime::Cgroup(r) => r.adopt(unit),
        }
    }

    /// Total CPU time used by the unit, for idleness.
    pub fn cpu_usage_usec(&self, unit: &str, slice: &str) -> Option<u64> {
        match self {
            Runtime::Systemd(r) => r.cpu_usage_usec(unit, slice),
            Runtime::Cgroup(r) => r.cpu_usage_usec(unit),
        }
    }

    /// The unit's cgroup directory.
    pub fn cgroup_of(&self, unit: &str, slice: &str) -> Option<std::path::PathBuf> {
        match self {
            Runtime::Systemd(r) => Some(r.cgroup_of(unit, slice)),
            Runtime::Cgroup(r) => r.cgroup_of(unit),
        }
    }

    /// The cgroup every cell runs under, and the directory figures name
    /// cgroups relative to.
    pub fn cells_cgroup(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        match self {
            Runtime::Systemd(r) => (r.cells_cgroup(), r.cgroup_mount()),
            Runtime::Cgroup(r) => {
                let cells = r.cells_cgroup();
                let mount = cells.parent().map(std::path::Path::to_owned).unwrap_or_else(|| cells.clone());
                (cells, mount)
            }
        }
    }

    /// Does `op` on the state of `cell` (whose instances run as `user`).
    pub async fn cell_state(&self, cell: &str, user: UserMode, op: &Op) -> Result<Report, RuntimeError> {
        match self {
            Runtime::Systemd(r) => r.cell_state(cell, user, op).await,
            Runtime::Cgroup(r) => {
                let (dir, owner) = (r.state_dir(cell), r.state_owner(user));
                let task_op = op.clone();
                let result = tokio::task::spawn_blocking(move || -> Result<Report, String> {
                    let report = crate::cell_state::apply(&dir, &task_op).map_err(|e| crate::command::error_chain(&e))?;
                    if let Some(uid) = owner {
                        std::os::unix::fs::chown(&report.current, Some(uid), Some(uid))
                            .map_err(|e| format!("chown {}: {e}", report.current.display()))?;
                    }
                    Ok(report)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the state task panicked: {e}")));
                result.map_err(|message| RuntimeError::CellState {
                    cell: cell.to_owned(),
                    verb: op.verb(),
                    message,
                })
            }
        }
    }

    /// Arms a trigger that systemd keeps (a timer or path unit).
    pub async fn arm_trigger(&self, name: &str, on: &quantum_model::trigger::On, description: &str) -> Result<(), RuntimeError> {
        let Some((unit, service)) = crate::triggers::unit_names(name, on) else {
            return Ok(());
        };
        match self {
            Runtime::Systemd(r) => r.arm_trigger(&unit, &service, on, description).await,
            Runtime::Cgroup(_) => Err(RuntimeError::Unsupported(format!(
                "{} needs systemd's timers and path units, and quantumd runs without systemd here (the cgroup backend)",
                on.to_string().split(' ').next().unwrap_or("this trigger")
            ))),
        }
    }

    /// Stops a trigger's systemd unit, if it has one.
    pub async fn disarm_trigger(&self, name: &str, on: &quantum_model::trigger::On) -> Result<(), RuntimeError> {
        match (self, crate::triggers::unit_names(name, on)) {
            (Runtime::Systemd(r), Some((unit, _))) => r.disarm_trigger(&unit).await,
            _ => Ok(()),
        }
    }

    /// The trigger timer and path units systemd has (none off systemd).
    pub async fn trigger_units(&self) -> Result<Vec<String>, RuntimeError> {
        match self {
            Runtime::Systemd(r) => r.trigger_units().await,
            Runtime::Cgroup(_) => Ok(Vec::new()),
        }
    }

    /// Changes a running cell's CPU weight.
    pub async fn set_cpu_weight(&self, unit: &str, weight: u64) -> Result<(), RuntimeError> {
        match self {
            Runtime::Systemd(r) => r.set_cpu_weight(unit, weight).await,
            Runtime::Cgroup(r) => r.set_cpu_weight(unit, weight),
        }
    }

    /// Where the cells' output is kept.
    pub fn log_source(&self) -> crate::logs::Source {
        match self {
            Runtime::Systemd(_) => crate::logs::Source::Journal,
            Runtime::Cgroup(r) => crate::logs::Source::Files(r.logs_dir()),
        }
    }

    /// The backend's own names and values for what `spec` asks, for inspect.
    pub fn properties(&self, spec: &UnitSpec) -> Vec<(String, String)> {
        match self {
            Runtime::Systemd(_) => systemd::describe_properties(spec),
            Runtime::Cgroup(r) => r.describe_properties(spec),
        }
    }
}

/// A channel of unit events from the backend to the main loop.
pub type EventSender = mpsc::UnboundedSender<UnitEvent>;
