//! Finding and validating manifests: catalog cells by name, or files by path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use quantum_model::{child_path, validate_set, CellName, Manifest, ManifestSource};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no cell named \"{name}\" in the catalog ({dir})")]
    NotFound { name: String, dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("\"{0}\" is neither a cell name nor an absolute path to a cell.toml")]
    BadSource(String),
}

/// A manifest with the child manifests it references, all validated.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// blake3 of the manifest's text, as read.
    pub hash: blake3::Hash,
    /// Each `[[child]]` entry's manifest, with its own children, in order.
    pub children: Vec<Resolved>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub dir: PathBuf,
}

impl Catalog {
    /// Names of the cells in the catalog directory.
    pub fn names(&self) -> BTreeSet<CellName> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("cell.toml").is_file())
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `source` is a catalog cell name or an absolute path to a cell.toml
    /// (or to a directory holding one).
    pub fn resolve(&self, source: &str) -> Result<Resolved, CatalogError> {
        let path = if source.starts_with('/') {
            let p = PathBuf::from(source);
            if p.is_dir() {
                p.join("cell.toml")
            } else {
                p
            }
        } else if source.parse::<CellName>().is_ok() {
            let p = self.dir.join(source).join("cell.toml");
            if !p.is_file() {
                return Err(CatalogError::NotFound {
                    name: source.to_owned(),
                    dir: self.dir.clone(),
                });
            }
            p
        } else {
            return Err(CatalogError::BadSource(source.to_owned()));
        };
        self.load(&path)
    }

    /// A cell needed by the manifest at `from`: a sibling directory first
    /// (`../NAME/cell.toml`), then the catalog.
    pub fn resolve_needed(&self, name: &CellName, from: &Path) -> Result<Resolved, CatalogError> {
        if let Some(sibling) = from
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join(name.as_str()).join("cell.toml"))
        {
            if sibling.is_file() {
                return self.load(&sibling);
            }
        }
        self.resolve(name.as_str())
    }

    pub fn load(&self, path: &Path) -> Result<Resolved, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_owned(),
            source,
        })?;
        let shown = path.display().to_string();
        let mut hashes = BTreeMap::from([(shown.clone(), blake3::hash(text.as_bytes()))]);
        let mut known = self.names();
        // Needed cells may also be siblings of this manifest.
        if let Some(parent_dir) = path.parent().and_then(Path::parent) {
            known.extend(
                Catalog {
                    dir: parent_dir.to_owned(),
                }
                .names(),
            );
        }
        let set = validate_set(
            vec![ManifestSource { path: shown.clone(), text }],
            &mut |p| {
                let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
                hashes.insert(p.to_owned(), blake3::hash(text.as_bytes()));
                Ok(text)
            },
            &known,
        );
        if !set.is_valid() {
            let lines: Vec<String> = set.errors.iter().map(ToString::to_string).collect();
            return Err(CatalogError::Invalid(lines.join("\n")));
        }
        // The set holds every manifest it read, children included: assemble
        // from it rather than reading the files again.
        let by_path: BTreeMap<String, Manifest> = set.manifests.into_iter().collect();
        assemble(&shown, &by_path, &hashes).ok_or_else(|| CatalogError::Invalid(format!("{shown}: not a valid manifest")))
    }
}

/// The manifest at `path` from `manifests`, with its children, recursively.
fn assemble(path: &str, manifests: &BTreeMap<String, Manifest>, hashes: &BTreeMap<String, blake3::Hash>) -> Option<Resolved> {
    let manifest = manifests.get(path)?.clone();
    let hash = *hashes.get(path)?;
    let dir = Path::new(path).parent().unwrap_or(Path::new("/")).to_owned();
    let children = manifest
        .children
        .iter()
        .map(|c| assemble(&child_path(&dir, &c.manifest), manifests, hashes))
        .collect::<Option<Vec<_>>>()?;
    Some(Resolved {
        path: PathBuf::from(path),
        manifest,
        hash,
        children,
    })
}
