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

/// Reads and checks a trigger file: its path as given (for diagnostics)
/// and its text; every problem on stderr in the manifest's form.
pub fn trigger_file(file: &Path) -> anyhow::Result<(String, String)> {
    let path = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
    if let Err(diags) = quantum_model::parse_trigger(&text) {
        let map = quantum_model::SourceMap::new(&text);
        for d in &diags {
            eprintln!("{}", quantum_model::Located::resolve(&path, &text, &map, d));
        }
        anyhow::bail!("{} error(s) in {path}", diags.len());
    }
    Ok((path, text))
}

/// `quantumctl trigger validate FILE...`: 0 all valid, 1 some invalid, 2 unreadable.
pub fn triggers(files: &[PathBuf]) -> ExitCode {
    let mut status = ExitCode::SUCCESS;
    for f in files {
        if !f.is_file() {
            eprintln!("quantumctl: cannot read {}: not a file", f.display());
            return ExitCode::from(2);
        }
        match trigger_file(f) {
            Ok((path, _)) => println!("{path}: valid"),
            Err(e) => {
                eprintln!("quantumctl: {e}");
                status = ExitCode::from(1);
            }
        }
    }
    status
}
