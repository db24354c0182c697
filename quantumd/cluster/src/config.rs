//! `/etc/quantumos/cluster.toml`: which etcd to join, as which node, and
//! whose nodes to believe.
//!
//! ```toml
//! endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
//! node = "kitchen"                          # default: the host name
//! lease-ttl = 3                             # seconds; a dead node is gone after this
//! trusted-nodes = "/etc/quantumos/cluster/nodes"   # *.pub: the nodes believed
//! prefix = "/quantumos"                     # where in etcd
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where quantumd looks for it; no file, no cluster.
pub const DEFAULT_PATH: &str = "/etc/quantumos/cluster.toml";
/// The nodes' public keys (`*.pub`, as `quantumctl cluster key` prints).
pub const DEFAULT_TRUSTED_NODES: &str = "/etc/quantumos/cluster/nodes";
const DEFAULT_PREFIX: &str = "/quantumos";
/// Seconds. Short, because it is how long a dead node goes unnoticed (seed
/// 002: cells re-placed within 5 s); etcd keeps it alive at a third of it.
const DEFAULT_LEASE_TTL: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `file:line:col: error: message`, as manifests' diagnostics.
    #[error("{}:{line}:{column}: error: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: error: {field}: {why}", path.display())]
    Invalid { path: PathBuf, field: &'static str, why: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    endpoints: Vec<String>,
    node: Option<String>,
    lease_ttl: Option<u64>,
    trusted_nodes: Option<PathBuf>,
    prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub path: PathBuf,
    pub endpoints: Vec<String>,
    pub node: String,
    pub lease_ttl: Duration,
    pub trusted_nodes: PathBuf,
    /// No trailing slash.
    pub prefix: String,
}

impl ClusterConfig {
    /// `Ok(None)` when the file does not exist: the node is on its own.
    pub fn load(path: &Path) -> Result<Option<ClusterConfig>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<ClusterConfig, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        let invalid = |field, why: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            why,
        };
        if file.endpoints.is_empty() {
            return Err(invalid(
                "endpoints",
                "no etcd endpoint given (e.g. [\"http://10.0.0.1:2379\"])".into(),
            ));
        }
        for e in &file.endpoints {
            if e.starts_with("https://") {
                return Err(invalid(
                    "endpoints",
                    format!("{e}: TLS to etcd is not supported yet; use http:// on a trusted network"),
                ));
            }
            if !e.starts_with("http://") || e.len() == "http://".len() {
                return Err(invalid("endpoints", format!("{e}: not an http://HOST:PORT address")));
            }
        }
        let node = match file.node {
            Some(n) => n,
            None => hostname().ok_or_else(|| invalid("node", "not given, and the host name cannot be read".into()))?,
        };
        if !is_node_name(&node) {
            return Err(invalid(
                "node",
                format!("{node:?}: 1 to 63 lowercase letters, digits and '-', not starting with '-'"),
            ));
        }
        let ttl = file.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        if !(2..=60).contains(&ttl) {
            return Err(invalid("lease-ttl", format!("{ttl}: between 2 and 60 seconds")));
        }
        let prefix = file.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
            return Err(invalid("prefix", format!("{prefix:?}: a key path such as \"/quantumos\"")));
        }
        Ok(ClusterConfig {
            path: path.to_owned(),
            endpoints: file.endpoints,
            node,
            lease_ttl: Duration::from_secs(ttl),
            trusted_nodes: file.trusted_nodes.unwrap_or_else(|| PathBuf::from(DEFAULT_TRUSTED_NODES)),
            prefix,
        })
    }

    /// Where the nodes register: `<prefix>/nodes/`.
    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
}

pub fn is_node_name(s: &str) -> bool {
    (1..=63).contains(&s.len()) && !s.starts_with('-') && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        ClusterConfig::parse(Path::new("cluster.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_what_is_not_said() {
        let c = parse("endpoints = [\"http://127.0.0.1:2379\"]\nnode = \"a\"\n").expect("valid");
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.trusted_nodes, Path::new(DEFAULT_TRUSTED_NODES));
        assert_eq!(c.nodes_prefix(), "/quantumos/nodes/");
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        assert_eq!(
            parse("endpoints = [\"http://x:1\"]\nnode = \"a\"\nleese-ttl = 3\n").unwrap_err(),
            "cluster.toml:3:1: error: unknown field `leese-ttl`, expected one of `endpoints`, `node`, `lease-ttl`, `trusted-nodes`, `prefix`"
        );
        assert_eq!(
            parse("endpoints = []\nnode = \"a\"\n").unwrap_err(),
            "cluster.toml: error: endpoints: no etcd endpoint given (e.g. [\"http://10.0.0.1:2379\"])"
        );
        assert!(parse("endpoints = [\"https://x:1\"]\nnode = \"a\"\n").unwrap_err().contains("TLS"));
        assert!(parse("endpoints = [\"http://x:1\"]\nnode = \"Big Node\"\n")
            .unwrap_err()
            .contains("error: node:"));
        assert!(parse("endpoints = [\"http://x:1\"]\nnode = \"a\"\nlease-ttl = 1\n")
            .unwrap_err()
            .contains("lease-ttl"));
        assert!(parse("endpoints = [\"http://x:1\"]\nnode = \"a\"\nprefix = \"q/\"\n")
            .unwrap_err()
            .contains("prefix"));
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/examples/cluster.toml");
        let text = std::fs::read_to_string(&path).expect("packaging/examples/cluster.toml");
        let c = ClusterConfig::parse(&path, &text.replace("# node = ", "node = ")).expect("valid");
        assert_eq!(
            (c.node.as_str(), c.endpoints.len(), c.lease_ttl),
            ("kitchen", 3, Duration::from_secs(3))
        );
    }

    #[test]
    fn no_file_is_no_cluster() {
        assert_eq!(ClusterConfig::load(Path::new("/nonexistent/cluster.toml")).expect("ok"), None);
    }
}
