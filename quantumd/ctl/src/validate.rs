//! `quantumctl validate`: the manifest checks of quantum-model, with the
//! file reading they leave to their caller.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use quantum_model::{cells_in, validate_set, ManifestSource};

pub fn run(paths: &[PathBuf], catalog: &Path, json: bool) -> ExitCode {
    let mut inputs = Vec::new();
    let mut known = cells_in(catalog);
    for p in paths {
        let file = if p.is_dir() { p.join("cell.toml") } else { p.clone() };
        match std::fs::read_to_string(&file) {
            Ok(text) => inputs.push(ManifestSource {
                path: file.display().to_string(),
                text,
            }),
            Err(e) => {
                eprintln!("quantumctl: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
        // Cells beside this one (`../NAME/cell.toml`) may be needed too.
        if let Some(siblings) = file.parent().and_then(Path::parent) {
            known.extend(cells_in(siblings));
        }
    }
    let count = inputs.len();
    let set = validate_set(inputs, &mut |p| std::fs::read_to_string(p).map_err(|e| e.to_string()), &known);
    if json {
        let errors: Vec<serde_json::Value> = set
            .errors
            .iter()
            .map(|e| serde_json::json!({"path": e.path, "line": e.line, "col": e.col, "field": e.field, "message": e.message}))
            .collect();
        println!("{}", serde_json::Value::Array(errors));
    } else {
        for e in &set.errors {
            eprintln!("{e}");
        }
    }
    if set.is_valid() {
        if !json {
            println!("{count} manifest(s) valid");
        }
        ExitCode::SUCCESS
    } else {
        if !json {
            let files: BTreeSet<&str> = set.errors.iter().map(|e| e.path.as_str()).collect();
            eprintln!("{} error(s) in {} file(s)", set.errors.len(), files.len());
        }
        ExitCode::from(1)
    }
}
