//! Signed cell bundles: where they come from (a `.qcb` file or the
//! configured providers), the check against the trusted author keys, and
//! the unpacked copy a cell runs from.
//!
//! Every run of a bundle verifies it again: the unpacked directory is a
//! cache keyed by the bundle's blake3, not a place of trust. quantumd reads
//! the trusted keys at each verification, so a key dropped into (or removed
//! from) /etc/quantumos/trusted-keys.d counts from the next run on.
//!
//! Unpacked layout, under `<cache-dir>/bundles/<blake3 of the bundle>/`:
//! `cell.toml` and the artifact at the path the manifest names. Cells read
//! the artifact (read-only: ProtectSystem=strict) but never the bundles of
//! other cells' state, which stays under the state directory.

use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use quantum_model::{CellName, Program};
use quantum_provider::client::{FetchError, Fetched, Options, Providers};
use quantum_trust::{Bundle, BundleError, KeyError, TrustedKeys};

/// A `quantumctl run` source that names a bundle rather than a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    /// An absolute path to a `.qcb` file on this node.
    File(PathBuf),
    /// A cell fetched from the providers: `NAME` (latest) or `NAME@VERSION`.
    Provider { name: CellName, version: Option<semver::Version> },
}

impl std::fmt::Display for BundleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleSource::File(p) => write!(f, "{}", p.display()),
            BundleSource::Provider { name, version: None } => write!(f, "{name}"),
            BundleSource::Provider { name, version: Some(v) } => write!(f, "{name}@{v}"),
        }
    }
}

/// Why a bundle was not run. Each variant names the one check that failed.
#[derive(Debug, thiserror::Error)]
pub enum BundleRefusal {
    #[error("bundle {source_name}: {error}")]
    Verify { source_name: String, error: BundleError },
    #[error("bundle {source_name}: cannot read it: {error}")]
    Read { source_name: String, error: std::io::Error },
    #[error("bundle {source_name}: the trusted keys cannot be read ({error}); no bundle runs until they can")]
    Keys { source_name: String, error: String },
    #[error("bundle {source_name}: its manifest is invalid: {reason}")]
    Manifest { source_name: String, reason: String },
    #[error("bundle {source_name}: cannot unpack it under {}: {error}", dir.display())]
    Unpack {
        source_name: String,
        dir: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Fetch(FetchError),
    #[error("no cell named \"{0}\" in the catalog, and no providers are configured to fetch it from")]
    NoProviders(String),
}

/// A verified bundle, unpacked, ready to be planned like a catalog cell.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// `<dir>/cell.toml`.
    pub manifest: PathBuf,
    /// blake3 of the whole bundle file.
    pub bundle_blake3: blake3::Hash,
    /// "NAME (KEY ID)" of the author key that signed it.
    pub signer: String,
    /// Where it came from: the file, or the provider (and who failed first).
    pub origin: String,
}

/// Where bundles are verified, unpacked and fetched.
#[derive(Clone)]
pub struct Bundles {
    trusted_keys: PathBuf,
    dir: PathBuf,
    providers: Option<Arc<Providers>>,
}

impl Bundles {
    /// `cache_dir/bundles` holds unpacked bundles, `cache_dir/providers`
    /// the client's verified download cache.
    pub fn new(
        trusted_keys: PathBuf,
        cache_dir: &Path,
        providers: &[String],
        blacklist_for: std::time::Duration,
    ) -> Result<Bundles, quantum_provider::client::ClientError> {
        if providers.is_empty() {
            return Ok(Bundles::local(trusted_keys, cache_dir));
        }
        let providers = {
            let options = Options {
                blacklist_for,
                ..Options::default()
            };
            Arc::new(Providers::new(providers, cache_dir.join("providers"), options)?)
        };
        Ok(Bundles {
            trusted_keys,
            dir: cache_dir.join("bundles"),
            providers: Some(providers),
        })
    }

    /// Files and `.qcb` paths only, no providers.
    pub fn local(trusted_keys: PathBuf, cache_dir: &Path) -> Bundles {
        Bundles {
            trusted_keys,
            dir: cache_dir.join("bundles"),
            providers: None,
        }
    }

    /// Whether `path` lies in the unpacked bundles: a manifest there came
    /// from a verified bundle.
    pub fn holds(&self, path: &Path) -> bool {
        path.starts_with(&self.dir)
    }

    pub fn has_providers(&self) -> bool {
        self.providers.is_some()
    }

    /// Gets, verifies and unpacks the bundle. Slow (a download, hashing a
    /// large artifact): call it off the event loop.
    pub async fn prepare(&self, source: &BundleSource) -> Result<Unpacked, BundleRefusal> {
        let source_name = source.to_string();
        let (path, origin) = match source {
            BundleSource::File(path) => (path.clone(), format!("file {}", path.display())),
            BundleSource::Provider { name, version } => {
                let Some(providers) = &self.providers else {
                    return Err(BundleRefusal::NoProviders(name.to_string()));
                };
                let keys = self.trusted_keys.clone();
                // The client verifies what each provider serves, so that a
                // provider serving a bad bundle is blacklisted and the next
                // one is asked.
                let verify = move |bytes: &[u8]| -> Result<(), String> {
                    let trusted = load_trusted(&keys)?;
                    let bundle = Bundle::from_bytes(bytes).map_err(|e| e.to_string())?;
                    bundle.verify(&trusted).map(|_| ()).map_err(|e| e.to_string())
                };
                let fetched: Fetched = providers
                    .fetch(name, version.as_ref(), verify)
                    .await
                    .map_err(BundleRefusal::Fetch)?;
                let mut origin = fetched.origin.to_string();
                if !fetched.failures.is_empty() {
                    let failed: Vec<String> = fetched.failures.iter().map(ToString::to_string).collect();
                    origin.push_str(&format!(" after {}", failed.join("; ")));
                }
                (fetched.path, origin)
            }
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.verify_and_unpack(&path, source_name, origin))
            .await
            .map_err(|e| BundleRefusal::Read {
                source_name: source.to_string(),
                error: std::io::Error::other(e.to_string()),
            })?
    }

    fn verify_and_unpack(&self, path: &Path, source_name: String, origin: String) -> Result<Unpacked, BundleRefusal> {
        let trusted = load_trusted(&self.trusted_keys).map_err(|error| BundleRefusal::Keys {
            source_name: source_name.clone(),
            error,
        })?;
        let bytes = std::fs::read(path).map_err(|error| BundleRefusal::Read {
            source_name: source_name.clone(),
            error,
        })?;
        let bundle_blake3 = blake3::hash(&bytes);
        let bundle = Bundle::from_vec(bytes).map_err(|error| BundleRefusal::Verify {
            source_name: source_name.clone(),
            error,
        })?;
        let verified = bundle.verify(&trusted).map_err(|error| BundleRefusal::Verify {
            source_name: source_name.clone(),
            error,
        })?;
        let manifest_text = std::str::from_utf8(verified.manifest).map_err(|e| BundleRefusal::Manifest {
            source_name: source_name.clone(),
            reason: format!("not UTF-8: {e}"),
        })?;
        let manifest = quantum_model::parse_manifest(manifest_text).map_err(|diags| BundleRefusal::Manifest {
            source_name: source_name.clone(),
            reason: diags
                .iter()
                .map(|d| format!("{}: {}", d.field, d.message))
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        let artifact_path = match &manifest.program {
            Program::Artifact(a) => Some(relative(&a.path).ok_or_else(|| BundleRefusal::Manifest {
                source_name: source_name.clone(),
                reason: format!("cell.artifact.path {:?} must be a relative path inside the bundle", a.path),
            })?),
            Program::Exec(_) => None,
        };
        let dir = self.dir.join(bundle_blake3.to_hex().as_str());
        let unpack_error = |error| BundleRefusal::Unpack {
            source_name: source_name.clone(),
            dir: dir.clone(),
            error,
        };
        if !unpacked_matches(&dir, verified.manifest, artifact_path.as_deref(), &verified.artifact_blake3) {
            unpack(&self.dir, &dir, verified.manifest, artifact_path.as_deref(), verified.artifact).map_err(unpack_error)?;
        }
        let signer = format!("{} ({})", verified.signer.name(), verified.signer.key_id());
        tracing::info!(bundle = %source_name, blake3 = %bundle_blake3, signer, origin, "bundle verified");
        Ok(Unpacked {
            manifest: dir.join("cell.toml"),
            bundle_blake3,
            signer,
            origin,
        })
    }
}

/// The trusted keys; a missing directory is an empty set (every bundle is
/// then refused as signed by an untrusted key, which says what to do).
fn load_trusted(dir: &Path) -> Result<TrustedKeys, String> {
    match TrustedKeys::load(dir) {
        Ok(t) => Ok(t),
        Err(KeyError::ReadDir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(TrustedKeys::new()),
        Err(e) => Err(crate::command::error_chain(&e)),
    }
}

/// `path` as a relative path that stays inside the bundle directory.
fn relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_owned())
}

/// Whether `dir` already holds exactly these contents (then it is reused).
fn unpacked_matches(dir: &Path, manifest: &[u8], artifact: Option<&Path>, artifact_blake3: &blake3::Hash) -> bool {
    let manifest_ok = std::fs::read(dir.join("cell.toml")).is_ok_and(|m| m == manifest);
    let artifact_ok = match artifact {
        None => true,
        Some(a) => std::fs::read(dir.join(a)).is_ok_and(|bytes| blake3::hash(&bytes) == *artifact_blake3),
    };
    manifest_ok && artifact_ok
}

/// Writes the bundle's files to a fresh directory beside `dir` and renames
/// it into place, so that a crash never leaves a half-written `dir`.
fn unpack(parent: &Path, dir: &Path, manifest: &[u8], artifact_path: Option<&Path>, artifact: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent)?;
    let tmp = tempfile::Builder::new().prefix(".unpack-").tempdir_in(parent)?;
    let write = |path: &Path, bytes: &[u8], mode: u32| -> std::io::Result<()> {
        if let Some(p) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(p)?;
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write(&tmp.path().join("cell.toml"), manifest, 0o644)?;
    if let Some(a) = artifact_path {
        // The artifact is what the cell executes.
        write(&tmp.path().join(a), artifact, 0o755)?;
    }
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(tmp.keep(), dir)?;
    Ok(())
}

/// Parses a `quantumctl run` source as a bundle source: an absolute `.qcb`
/// path, or `NAME@VERSION`. A plain NAME is a bundle source only when the
/// catalog lacks it, which the caller decides.
pub fn parse_source(source: &str) -> Option<Result<BundleSource, String>> {
    if source.starts_with('/') && source.ends_with(".qcb") {
        return Some(Ok(BundleSource::File(PathBuf::from(source))));
    }
    let (name, version) = source.split_once('@')?;
    let parsed = name
        .parse::<CellName>()
        .map_err(|e| format!("\"{source}\": bad cell name: {e}"))
        .and_then(|name| {
            semver::Version::parse(version)
                .map(|v| BundleSource::Provider { name, version: Some(v) })
                .map_err(|e| format!("\"{source}\": bad version \"{version}\": {e}"))
        });
    Some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_name_files_or_versions() {
        assert_eq!(
            parse_source("/srv/x.qcb"),
            Some(Ok(BundleSource::File(PathBuf::from("/srv/x.qcb"))))
        );
        assert_eq!(parse_source("web-server"), None);
        assert_eq!(parse_source("/srv/cell.toml"), None);
        let Some(Ok(BundleSource::Provider { name, version })) = parse_source("hello@1.2.0") else {
            panic!("not a provider source")
        };
        assert_eq!((name.as_str(), version.unwrap().to_string().as_str()), ("hello", "1.2.0"));
        assert!(parse_source("hello@one").unwrap().unwrap_err().contains("bad version"));
    }

    #[test]
    fn artifact_paths_stay_inside_the_bundle() {
        assert_eq!(relative("bin/tool"), Some(PathBuf::from("bin/tool")));
        for bad in ["", "/bin/sh", "../x", "bin/../../x", "./x"] {
            assert_eq!(relative(bad), None, "{bad}");
        }
    }
}
