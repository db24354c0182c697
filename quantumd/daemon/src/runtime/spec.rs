//! The backend-neutral description of one cell instance's unit, built from a
//! validated manifest and the parameters of this run.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use quantum_model::{Manifest, NetRule, Network, UserMode};

/// Resource limits, already converted to the units systemd and cgroupfs use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory_min: u64,
    pub memory_max: u64,
    /// CPU quota in hundredths of a core (50 = 50 %).
    pub cpu_quota_centis: u32,
    pub cpu_weight: u64,
    pub io_weight: u64,
    pub tasks_max: u64,
}

impl Limits {
    pub fn of(m: &Manifest) -> Limits {
        let r = &m.resources;
        Limits {
            memory_min: r.memory_min.bytes(),
            memory_max: r.memory_max.bytes(),
            cpu_quota_centis: r.cpu_max.centis(),
            cpu_weight: r.cpu_weight(),
            io_weight: u64::from(r.io_weight),
            tasks_max: u64::from(r.tasks_max),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub user: UserMode,
    pub network: Network,
    /// `network-allow`: the only destinations on the host's network (empty:
    /// any). Names are resolved when the unit starts.
    pub network_allow: Vec<NetRule>,
    pub readable: Vec<String>,
    pub writable: Vec<String>,
    /// Paths the cell must never see (quantumd's own state).
    pub inaccessible: Vec<String>,
}

/// A slice holding a cell family: a parent cell and its children share it,
/// and the parent's limits apply to the family as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceSpec {
    pub name: String,
    pub parent: String,
    pub description: String,
    pub limits: Limits,
}

/// A caller's standard input, output and error, given to an attached
/// instance's main process. Shared rather than duplicated: whoever holds
/// the last copy closes them, and quantumd lets go of its copy once the
/// unit has started, so the caller sees end-of-file when the cell ends.
#[derive(Clone)]
pub struct Stdio(Arc<[OwnedFd; 3]>);

impl Stdio {
    pub fn new(stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) -> Stdio {
        Stdio(Arc::new([stdin, stdout, stderr]))
    }

    /// Standard input, output and error, in that order.
    pub fn fds(&self) -> &[OwnedFd; 3] {
        &self.0
    }
}

impl PartialEq for Stdio {
    fn eq(&self, other: &Stdio) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Stdio {}

impl std::fmt::Debug for Stdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        let [i, o, e] = &*self.0;
        write!(f, "Stdio(fds {} {} {})", i.as_raw_fd(), o.as_raw_fd(), e.as_raw_fd())
    }
}

/// One descriptor shared by the specs that hold it (equal when it is the
/// same one).
#[derive(Clone)]
pub struct SharedFd(Arc<OwnedFd>);

impl SharedFd {
    pub fn new(fd: OwnedFd) -> SharedFd {
        SharedFd(Arc::new(fd))
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.0
    }
}

impl PartialEq for SharedFd {
    fn eq(&self, other: &SharedFd) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedFd {}

impl std::fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        write!(f, "SharedFd({})", self.0.as_raw_fd())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    pub instance: String,
    pub cell: String,
    /// `quantum-<cell>.<n>.service`.
    pub unit: String,
    pub slice: String,
    pub description: String,
    /// After parameter substitution; argv[0] is the program.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub sandbox: Sandbox,
    /// `[state] subvolume = true`: the cell keeps a state directory of its
    /// own, made before each start and given in `$STATE_DIRECTORY`.
    pub state: bool,
    /// Its secret parameters, as files for the unit's credentials.
    pub credentials: Option<CredentialFiles>,
    /// The caller's stdio for an attached run; otherwise the cell's output
    /// goes where the backend sends it (the journal under systemd).
    pub stdio: Option<Stdio>,
    /// Standard input alone, the output staying the backend's: a warm
    /// unit's claim socket (`crate::warm`).
    pub stdin: Option<SharedFd>,
}

/// A cell's secrets (crate::credentials): one file per secret parameter in
/// `dir`, named after it; the cell reads them in `$CREDENTIALS_DIRECTORY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    pub dir: std::path::PathBuf,
    pub names: Vec<String>,
}

/// `quantum-<cell>.<n>.service` for instance `<cell>.<n>`.
pub fn unit_name(instance: &str) -> String {
    format!("quantum-{instance}.service")
}

/// The cell an instance id `<cell>.<n>` is of (the id itself when it has no
/// number).
pub fn cell_of_instance(id: &str) -> &str {
    id.rsplit_once('.').map_or(id, |(cell, _)| cell)
}

/// The instance id back from a unit name, if it is one of ours.
pub fn instance_of_unit(unit: &str) -> Option<&str> {
    let id = unit.strip_prefix("quantum-")?.strip_suffix(".service")?;
    let (cell, n) = id.rsplit_once('.')?;
    (!cell.is_empty() && n.parse::<u64>().is_ok()).then_some(id)
}

/// Slice name for the family of instance `id` under `parent_slice`:
/// systemd reads '-' in slice names as nesting, so the id's dashes are
/// escaped as `\x2d`.
pub fn family_slice(parent_slice: &str, id: &str) -> String {
    let base = parent_slice.strip_suffix(".slice").unwrap_or(parent_slice);
    format!("{base}-{}.slice", id.replace('-', "\\x2d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_round_trip_to_instance_ids() {
        let u = unit_name("web-server.12");
        assert_eq!(u, "quantum-web-server.12.service");
        assert_eq!(instance_of_unit(&u), Some("web-server.12"));
        assert_eq!(instance_of_unit("quantum-x.service"), None);
        assert_eq!(instance_of_unit("sshd.service"), None);
        assert_eq!(instance_of_unit("quantum-.3.service"), None);
    }

    #[test]
    fn family_slices_nest_under_the_cell_slice() {
        assert_eq!(family_slice("quantum.slice", "web-app.3"), "quantum-web\\x2dapp.3.slice");
        assert_eq!(family_slice("quantum-a.1.slice", "b.2"), "quantum-a.1-b.2.slice");
    }
}
