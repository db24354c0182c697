//! A plan as the assistant shows it: quantumd's `Ask` answer (the
//! `quantumctl ask --json` object plus `plan-id`) joined with the catalog's
//! manifests, so that a person sees, before anything runs, each cell, its
//! parameters (given, default or missing), its limits and what it may touch.
//!
//! No GTK and no D-Bus here: the window renders a [`PlanView`], the tests
//! check one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quantum_model::Manifest;
use serde::Deserialize;

use crate::error::Error;

/// quantumd's answer to `Ask`.
#[derive(Debug, Clone, Deserialize)]
pub struct Answer {
    pub intent: String,
    pub cells: Vec<Step>,
    pub confidence: f32,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default, rename = "plan-id")]
    pub plan_id: Option<String>,
}

/// One cell of a plan, with the parameters the engine found in the request.
#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub name: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

impl Answer {
    /// Reads quantumd's JSON answer.
    pub fn parse(json: &str) -> Result<Answer, Error> {
        serde_json::from_str(json).map_err(Error::NotAPlan)
    }
}

/// Where a parameter's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Found in the request.
    Given,
    /// The manifest's default.
    Default,
    /// Required, and the request does not say it.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamView {
    pub name: String,
    /// Empty when missing.
    pub value: String,
    pub source: Source,
    /// The manifest's words for it ("directory to serve").
    pub description: String,
}

/// One cell of the plan, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellView {
    pub name: String,
    /// The manifest's description; empty when the catalog lacks the cell.
    pub description: String,
    pub params: Vec<ParamView>,
    /// "CPU 0.1–1 cores · memory 32M–256M · …"; empty when unknown.
    pub resources: String,
    /// What it may touch: network, user, paths read and written.
    pub touches: String,
    /// Whether the local catalog knows this cell (else limits are unknown).
    pub known: bool,
}

/// A plan ready to render, or a refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanView {
    pub intent: String,
    pub confidence: f32,
    pub cells: Vec<CellView>,
    /// Why nothing fits, when `cells` is empty.
    pub refusal: Option<String>,
    /// The id `Execute` takes; None for a refusal.
    pub plan_id: Option<String>,
}

impl PlanView {
    /// Required parameters the request did not give, as `cell: param`.
    pub fn missing(&self) -> Vec<String> {
        self.cells
            .iter()
            .flat_map(|c| {
                c.params
                    .iter()
                    .filter(|p| p.source == Source::Missing)
                    .map(move |p| format!("{}: {}", c.name, p.name))
            })
            .collect()
    }

    /// Whether Confirm may run it: a plan id, cells, nothing missing.
    pub fn runnable(&self) -> bool {
        self.plan_id.is_some() && !self.cells.is_empty() && self.missing().is_empty()
    }
}

/// The manifests of the catalog, read as needed (`DIR/NAME/cell.toml`).
#[derive(Debug, Clone)]
pub struct Catalog {
    dir: PathBuf,
}

impl Catalog {
    pub fn new(dir: &Path) -> Catalog {
        Catalog { dir: dir.to_owned() }
    }

    /// The cell's manifest, or None when the catalog lacks it or it does
    /// not parse (the plan is then shown without limits, and says so).
    pub fn manifest(&self, name: &str) -> Option<Manifest> {
        // A cell name never holds a slash; refuse anything else outright.
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return None;
        }
        let path = self.dir.join(name).join("cell.toml");
        let text = std::fs::read_to_string(&path).ok()?;
        match quantum_model::parse_manifest(&text) {
            Ok(m) => Some(m),
            Err(diagnostics) => {
                tracing::warn!(path = %path.display(), problems = diagnostics.len(), "catalog manifest does not validate");
                None
            }
        }
    }

    /// The answer joined with the manifests.
    pub fn view(&self, answer: &Answer) -> PlanView {
        let cells = answer
            .cells
            .iter()
            .map(|step| cell_view(step, self.manifest(&step.name).as_ref()))
            .collect();
        PlanView {
            intent: answer.intent.clone(),
            confidence: answer.confidence,
            cells,
            refusal: if answer.cells.is_empty() {
                Some(
                    answer
                        .reason
                        .clone()
                        .unwrap_or_else(|| "nothing in the catalog fits this request".to_owned()),
                )
            } else {
                None
            },
            plan_id: answer.plan_id.clone().filter(|_| !answer.cells.is_empty()),
        }
    }
}

fn cell_view(step: &Step, manifest: Option<&Manifest>) -> CellView {
    let Some(m) = manifest else {
        return CellView {
            name: step.name.clone(),
            description: String::new(),
            params: step
                .params
                .iter()
                .map(|(k, v)| ParamView {
                    name: k.clone(),
                    value: v.clone(),
                    source: Source::Given,
                    description: String::new(),
                })
                .collect(),
            resources: String::new(),
            touches: String::new(),
            known: false,
        };
    };
    let mut values = BTreeMap::new();
    let params = m
        .params
        .iter()
        .map(|(name, spec)| {
            let (value, source) = match (step.params.get(name), &spec.default) {
                (Some(v), _) => (v.clone(), Source::Given),
                (None, Some(d)) => (d.clone(), Source::Default),
                (None, None) => (String::new(), Source::Missing),
            };
            if source != Source::Missing {
                values.insert(name.clone(), value.clone());
            }
            ParamView {
                name: name.clone(),
                value,
                source,
                description: spec.description.clone(),
            }
        })
        .collect();
    CellView {
        name: step.name.clone(),
        description: m.description.clone(),
        params,
        resources: resources(m),
        touches: touches(m, &values),
        known: true,
    }
}

fn resources(m: &Manifest) -> String {
    quantum_model::limits(&m.resources).join(" · ")
}

fn touches(m: &Manifest, values: &BTreeMap<String, String>) -> String {
    let a = quantum_model::Access::of(&m.isolation, values);
    format!("{} · runs as {} · reads {} · writes {}", a.network, a.user, a.reads, a.writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"[cell]
name = "web-server"
version = "1.0.0"
description = "Serve a directory over HTTP"
exec = ["/usr/bin/python3", "-m", "http.server", "--directory", "{dir}", "{port}"]

[params.dir]
type = "path"
default = "."
description = "directory to serve"

[params.port]
type = "port"
description = "port to listen on"

[isolation]
network = "host"
readable = ["{dir}"]
"#;

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("web-server")).expect("mkdir");
        std::fs::write(dir.path().join("web-server/cell.toml"), WEB).expect("write");
        let c = Catalog::new(dir.path());
        (dir, c)
    }

    #[test]
    fn a_plan_shows_given_default_and_missing_parameters_limits_and_paths() {
        let (_d, catalog) = catalog();
        let answer = Answer::parse(
            r#"{"intent":"serve /srv/www","cells":[{"name":"web-server","params":{"dir":"/srv/www"}}],"confidence":0.8,"plan-id":"p1"}"#,
        )
        .expect("a plan");
        let view = catalog.view(&answer);
        let cell = &view.cells[0];
        assert!(cell.known);
        assert_eq!(cell.description, "Serve a directory over HTTP");
        let params: Vec<_> = cell.params.iter().map(|p| (p.name.as_str(), p.value.as_str(), p.source)).collect();
        assert_eq!(params, [("dir", "/srv/www", Source::Given), ("port", "", Source::Missing)]);
        assert!(cell.touches.contains("reads /srv/www"), "{}", cell.touches);
        assert!(cell.touches.contains("the host's network"), "{}", cell.touches);
        assert!(cell.resources.starts_with("CPU "), "{}", cell.resources);
        assert_eq!(view.missing(), ["web-server: port"]);
        assert!(!view.runnable());
    }

    #[test]
    fn a_refusal_has_no_plan_id_and_a_cell_the_catalog_lacks_is_marked() {
        let (_d, catalog) = catalog();
        let refusal = Answer::parse(r#"{"intent":"order a pizza","cells":[],"confidence":0.1,"reason":"nothing fits"}"#).expect("json");
        let view = catalog.view(&refusal);
        assert_eq!(view.refusal.as_deref(), Some("nothing fits"));
        assert!(!view.runnable());

        let unknown =
            Answer::parse(r#"{"intent":"x","cells":[{"name":"../etc","params":{}}],"confidence":0.5,"plan-id":"p"}"#).expect("json");
        let view = catalog.view(&unknown);
        assert!(!view.cells[0].known);
        assert!(view.runnable());
        assert!(Answer::parse("not json").is_err());
    }
}
