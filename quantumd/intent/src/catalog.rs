//! The cells an intent can be served by: the manifests of a catalog
//! directory (`NAME/cell.toml` below it, as installed in
//! /usr/share/quantumos/cells), parsed by quantum-model.

use std::path::{Path, PathBuf};

use quantum_model::{Located, Manifest, SourceMap};

use crate::error::Error;

/// One catalog cell: its manifest and the text it was parsed from (the text
/// keys the embedding cache).
#[derive(Debug, Clone)]
pub struct CatalogCell {
    pub manifest: Manifest,
    pub source: String,
    pub path: PathBuf,
}

impl CatalogCell {
    pub fn name(&self) -> &str {
        self.manifest.name.as_str()
    }

    /// Parses one manifest; `path` is used in the error only.
    pub fn parse(path: &Path, source: String) -> Result<CatalogCell, Error> {
        match quantum_model::parse_manifest(&source) {
            Ok(manifest) => Ok(CatalogCell {
                manifest,
                source,
                path: path.to_owned(),
            }),
            Err(diagnostics) => {
                let map = SourceMap::new(&source);
                let problems = diagnostics
                    .iter()
                    .map(|d| {
                        let l = Located::resolve(&path.display().to_string(), &source, &map, d);
                        format!("{}:{}: {}: {}", l.line, l.col, l.field, l.message)
                    })
                    .collect();
                Err(Error::InvalidManifest {
                    path: path.to_owned(),
                    problems,
                })
            }
        }
    }
}

/// The cells of a catalog, sorted by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub cells: Vec<CatalogCell>,
}

impl Catalog {
    /// Reads every `NAME/cell.toml` below `dir`. A manifest that does not
    /// parse is an error: a catalog is validated before it is installed.
    pub fn load(dir: &Path) -> Result<Catalog, Error> {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut cells = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Read {
                path: dir.to_owned(),
                source,
            })?;
            let path = entry.path().join("cell.toml");
            if !path.is_file() {
                continue;
            }
            let source = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            cells.push(CatalogCell::parse(&path, source)?);
        }
        if cells.is_empty() {
            return Err(Error::EmptyCatalog { dir: dir.to_owned() });
        }
        Ok(Catalog::from_cells(cells))
    }

    pub fn from_cells(mut cells: Vec<CatalogCell>) -> Catalog {
        cells.sort_by(|a, b| a.name().cmp(b.name()));
        Catalog { cells }
    }

    pub fn get(&self, name: &str) -> Option<&CatalogCell> {
        self.cells.iter().find(|c| c.name() == name)
    }
}
