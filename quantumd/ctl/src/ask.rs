//! `quantumctl ask`: a request in plain words -> a plan of cells, shown and
//! never run here. With `--local` the intent engine (quantum-intent) runs in
//! this process; asking quantumd over D-Bus is not there yet.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::process::ExitCode;

use quantum_intent::{Config, Engine, Plan};
use quantum_model::{Manifest, Network, UserMode};

use crate::cli::AskArgs;

pub fn run(args: &AskArgs) -> ExitCode {
    if !args.local {
        eprintln!(
            "quantumctl: asking quantumd over D-Bus is not available yet; \
             use `quantumctl ask --local` to run the intent engine in this process"
        );
        return ExitCode::from(2);
    }
    if !args.catalog.is_dir() {
        eprintln!(
            "quantumctl: the cell catalog {} does not exist; give one with --catalog DIR or QUANTUM_CATALOG \
             (in a source checkout: --catalog packaging/cells)",
            args.catalog.display()
        );
        return ExitCode::from(2);
    }
    let config = Config::new(&args.catalog);
    let engine = match Engine::load(&config) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("quantumctl: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    let stdin_mode = args.text.len() == 1 && args.text[0] == "-";
    if !stdin_mode {
        let intent = args.text.join(" ");
        return match answer(&engine, &intent, args.json) {
            Ok(plan) if plan.is_refusal() && !args.json => ExitCode::from(1),
            Ok(_) => ExitCode::SUCCESS,
            Err(code) => code,
        };
    }
    let stdin = std::io::stdin();
    let mut refused = false;
    for line in stdin.lock().lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("quantumctl: cannot read standard input: {e}");
                return ExitCode::from(2);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match answer(&engine, &line, args.json) {
            Ok(plan) => refused |= plan.is_refusal(),
            Err(code) => return code,
        }
    }
    if refused && !args.json {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Answers one request on standard output, flushed at once so that a
/// program feeding requests one by one gets each answer as it comes.
fn answer(engine: &Engine, intent: &str, json: bool) -> Result<Plan, ExitCode> {
    let plan = engine.ask(intent).map_err(|e| {
        eprintln!("quantumctl: {}", chain(&e));
        ExitCode::from(2)
    })?;
    let text = if json {
        match serde_json::to_string(&plan) {
            Ok(line) => line + "\n",
            Err(e) => {
                eprintln!("quantumctl: cannot encode the plan as JSON: {e}");
                return Err(ExitCode::from(2));
            }
        }
    } else {
        describe(engine, &plan)
    };
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
        // The reader went away (a closed pipe): nothing left to answer.
        return Err(ExitCode::SUCCESS);
    }
    Ok(plan)
}

/// An error and its sources, "outer: inner".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// The plan for people: each cell, its parameters (given, default or
/// missing), its limits and what it may touch.
fn describe(engine: &Engine, plan: &Plan) -> String {
    let mut out = String::new();
    if plan.is_refusal() {
        let reason = plan.reason.as_deref().unwrap_or(quantum_intent::engine::NOTHING_FITS);
        let _ = writeln!(out, "{:?}: no plan — {reason} (confidence {:.2})", plan.intent, plan.confidence);
        return out;
    }
    let _ = writeln!(out, "Plan for {:?} (confidence {:.2}):", plan.intent, plan.confidence);
    for (i, step) in plan.cells.iter().enumerate() {
        let Some(cell) = engine.catalog().get(&step.name) else { continue };
        let m = &cell.manifest;
        let _ = writeln!(out, "  {}. {} — {}", i + 1, step.name, m.description);
        let width = m.params.keys().map(String::len).max().unwrap_or(0);
        let mut values = std::collections::BTreeMap::new();
        for (name, spec) in &m.params {
            let shown = match (step.params.get(name), &spec.default) {
                (Some(v), _) => {
                    values.insert(name.clone(), v.clone());
                    v.clone()
                }
                (None, Some(d)) => {
                    values.insert(name.clone(), d.clone());
                    format!("{d} (default)")
                }
                (None, None) => "MISSING: required, give it with `quantumctl run`".to_owned(),
            };
            let _ = writeln!(out, "       {name:<width$} = {shown}");
        }
        let _ = writeln!(out, "       resources: {}", resources(m));
        let _ = writeln!(out, "       isolation: {}", isolation(m, &values));
    }
    if plan.cells.iter().all(|c| c.missing.is_empty()) {
        let commands: Vec<String> = plan
            .cells
            .iter()
            .map(|c| {
                let params: Vec<String> = c.params.iter().map(|(k, v)| format!("{k}={}", shell_word(v))).collect();
                format!("quantumctl run {} {}", c.name, params.join(" ")).trim_end().to_owned()
            })
            .collect();
        let _ = writeln!(out, "Nothing was run. To run it: {}", commands.join(" && "));
    } else {
        let _ = writeln!(out, "Nothing was run; the plan needs the missing parameters first.");
    }
    out
}

fn resources(m: &Manifest) -> String {
    let r = &m.resources;
    let mut s = format!(
        "cpu {}-{} cores, memory {}-{}, io weight {}, at most {} tasks",
        r.cpu_min.as_f64(),
        r.cpu_max.as_f64(),
        r.memory_min,
        r.memory_max,
        r.io_weight,
        r.tasks_max
    );
    if r.gpus > 0 {
        let _ = write!(s, ", {} GPU{}", r.gpus, if r.gpus == 1 { "" } else { "s" });
    }
    s
}

fn isolation(m: &Manifest, values: &std::collections::BTreeMap<String, String>) -> String {
    let i = &m.isolation;
    let network = match i.network {
        Network::None => "no network",
        Network::Loopback => "loopback network only",
        Network::Host => "host network",
    };
    let user = match i.user {
        UserMode::Dynamic => "a dynamic user",
        UserMode::Root => "root",
    };
    let fill = |paths: &[String]| -> String {
        if paths.is_empty() {
            return "nothing".to_owned();
        }
        paths.iter().map(|p| substitute(p, values)).collect::<Vec<_>>().join(", ")
    };
    format!(
        "{network}, runs as {user}; reads {}; writes {}",
        fill(&i.readable),
        fill(&i.writable)
    )
}

/// `{name}` placeholders replaced by the parameter values.
fn substitute(template: &str, values: &std::collections::BTreeMap<String, String>) -> String {
    let mut s = template.to_owned();
    for (k, v) in values {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// A value quoted for a POSIX shell when it needs it.
fn shell_word(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "/._-~:=%,+@".contains(c)) {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}
