//! quantumd's configuration: `/etc/quantumos/quantumd.toml`, overridden by
//! command-line flags. Every default is written down once, here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use quantum_model::CellName;
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/quantumos/quantumd.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// systemd when it is PID 1, cgroup v2 otherwise.
    Auto,
    Systemd,
    Cgroup,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Directory of catalog cells (`NAME/cell.toml`).
    pub catalog: PathBuf,
    /// Where instance records live (re-adoption after a restart), and the
    /// triggers added with `quantumctl trigger add` (`triggers/`).
    pub state_dir: PathBuf,
    /// The administrator's triggers (`*.toml`, read at start).
    pub triggers: PathBuf,
    /// What can be rebuilt: the intent engine's catalog embeddings.
    pub cache_dir: PathBuf,
    /// The TPM that seals the node identity: "auto" (`$QUANTUM_TCTI`, else
    /// /dev/tpmrm0 when present), "off", or a TCTI such as
    /// `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tpm: String,
    /// Seal the identity to PCR 7 (secure-boot state).
    pub tpm_pcr7: bool,
    /// Author keys whose bundles this node runs (`*.pub`).
    pub trusted_keys: PathBuf,
    /// Cell providers (`http://host:port/`), asked in order for a cell the
    /// catalog lacks; one that fails or serves a bad bundle is skipped for
    /// `blacklist-seconds`. Empty: only local cells and `.qcb` files run.
    pub providers: Vec<String>,
    pub backend: BackendChoice,
    /// The slice every cell runs under (systemd backend).
    pub cell_slice: String,
    /// cgroup v2 mount used by the cgroup backend.
    pub cgroup_root: PathBuf,
    /// How long a cell stays refused after exceeding its restarts, and a
    /// provider is skipped after it failed.
    pub blacklist_seconds: u64,
    /// How many ended instances `list` keeps showing.
    pub keep_ended: usize,
    /// Load the eBPF programs for STEPPPS TIME and EVENT (needs CAP_BPF and
    /// CAP_PERFMON, and kernel BTF); without them those figures say why.
    pub bpf: bool,
    /// Serve STEPPPS figures as Prometheus text at /metrics: a loopback
    /// `ADDRESS:PORT` or the absolute path of a Unix socket. Empty: off.
    pub metrics: String,
    /// The channel broker's socket (Cell 0 IPC), as cells are told it in
    /// `$QUANTUM_CHANNELS`. Under systemd, quantumd-channels.socket passes
    /// it; otherwise quantumd makes it here (mode 0666).
    pub channels: PathBuf,
    /// The cell network's file (quantum-cluster): etcd endpoints, this
    /// node's name, the trusted nodes. No file: the node is on its own.
    pub cluster: PathBuf,
    /// `[cells]`: what the administrator says of catalog cells.
    pub cells: CellsConfig,
    /// `[prewarm]`: cells started before they are asked for.
    pub prewarm: PrewarmConfig,
}

/// `[prewarm]` in quantumd.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PrewarmConfig {
    /// Catalog cells kept warm at all times.
    pub cells: BTreeSet<CellName>,
    /// Also keep warm what the usage history predicts for the coming hour.
    /// Off by default: a warm unit reserves memory and runs a process no
    /// one has asked for yet, which an administrator opts into.
    pub predict: bool,
    /// Runs in this hour of the week (last 4 weeks) plus the last hour
    /// that make a prediction.
    pub min_runs: usize,
    /// At most this many warm units at once.
    pub max_units: usize,
    /// The memory the warm units may reserve together: each counts its
    /// cell's memory-min (at least 4M, the waiter's own).
    #[serde(deserialize_with = "byte_size")]
    pub budget: u64,
}

impl Default for PrewarmConfig {
    fn default() -> Self {
        PrewarmConfig {
            cells: BTreeSet::new(),
            predict: false,
            min_runs: 3,
            max_units: 4,
            budget: 256 << 20,
        }
    }
}

fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<quantum_model::ByteSize>()
        .map(|b| b.bytes())
        .map_err(serde::de::Error::custom)
}

/// `[cells]` in quantumd.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CellsConfig {
    /// Cells that never run, by name, whatever their source (catalog,
    /// manifest file, bundle), neither asked for nor needed by another
    /// cell nor as a stand-in for a blacklisted one. Each must be a valid
    /// cell name; one the catalog lacks is only warned about (a package may
    /// install it later).
    pub disabled: BTreeSet<CellName>,
}

impl CellsConfig {
    pub fn is_disabled(&self, name: &str) -> bool {
        self.disabled.iter().any(|d| d.as_str() == name)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            catalog: PathBuf::from("/usr/share/quantumos/cells"),
            state_dir: PathBuf::from("/var/lib/quantumd"),
            triggers: PathBuf::from("/etc/quantumos/triggers"),
            cache_dir: PathBuf::from("/var/cache/quantumd"),
            tpm: "auto".to_owned(),
            tpm_pcr7: false,
            trusted_keys: PathBuf::from("/etc/quantumos/trusted-keys.d"),
            providers: Vec::new(),
            backend: BackendChoice::Auto,
            cell_slice: "quantum.slice".to_owned(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            blacklist_seconds: 600,
            keep_ended: 64,
            bpf: true,
            metrics: String::new(),
            channels: PathBuf::from(quantum_cell::wire::DEFAULT_SOCKET),
            cluster: PathBuf::from(quantum_cluster::config::DEFAULT_PATH),
            cells: CellsConfig::default(),
            prewarm: PrewarmConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    pub fn tpm_setting(&self) -> quantum_trust::TpmSetting {
        match self.tpm.as_str() {
            "auto" | "" => quantum_trust::TpmSetting::Auto,
            "off" | "none" => quantum_trust::TpmSetting::Off,
            tcti => quantum_trust::TpmSetting::Tcti(tcti.to_owned()),
        }
    }

    /// Reads `path`; a missing file at the default location means defaults.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.toml");
        std::fs::write(&p, "backend = \"cgroup\"\nstate-dir = \"/tmp/x\"\n").unwrap();
        let c = Config::load(&p, true).unwrap();
        assert_eq!(c.backend, BackendChoice::Cgroup);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
        std::fs::write(&p, "bakend = \"cgroup\"\n").unwrap();
        let err = Config::load(&p, true).unwrap_err().to_string();
        assert!(err.contains("unknown field `bakend`"), "{err}");
        assert!(Config::load(&dir.path().join("missing"), false).is_ok());
        assert!(Config::load(&dir.path().join("missing"), true).is_err());
    }

    #[test]
    fn the_shipped_quantumd_toml_parses_and_so_does_its_cells_example() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/quantumd.toml");
        let c = Config::load(&shipped, true).unwrap();
        assert!(c.cells.disabled.is_empty());
        let text = std::fs::read_to_string(&shipped).unwrap();
        let example = text.replace("# [cells]\n# disabled =", "[cells]\ndisabled =");
        assert_ne!(example, text, "the [cells] example is in the shipped file");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.toml");
        std::fs::write(&p, example).unwrap();
        let c = Config::load(&p, true).unwrap();
        assert!(c.cells.is_disabled("python-sandbox"), "{:?}", c.cells);
    }

    #[test]
    fn disabled_cells_are_valid_cell_names_and_cells_takes_no_other_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.toml");
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Config::load(&p, true).map_err(|e| e.to_string())
        };
        let c = load("[cells]\ndisabled = [\"web-server\", \"file-sync\", \"web-server\"]\n").unwrap();
        let names: Vec<&str> = c.cells.disabled.iter().map(CellName::as_str).collect();
        assert_eq!(names, ["file-sync", "web-server"]);
        assert!(c.cells.is_disabled("web-server"));
        assert!(!c.cells.is_disabled("web"));
        assert!(load("").unwrap().cells.disabled.is_empty());

        let err = load("[cells]\ndisabled = [\"Web Server\"]\n").unwrap_err();
        assert!(err.contains("\"Web Server\" is not a valid cell name"), "{err}");
        assert!(err.contains("line 2"), "the error says where: {err}");
        let err = load("[cells]\ndisable = [\"web-server\"]\n").unwrap_err();
        assert!(err.contains("unknown field `disable`"), "{err}");
        let err = load("[cells]\ndisabled = \"web-server\"\n").unwrap_err();
        assert!(err.contains("disabled"), "{err}");
    }
}
