//! `quantumctl ask`: a request in plain words -> a plan of cells, shown, and
//! run only once confirmed (on the terminal or with `--yes`). quantumd plans
//! (`Ask`) and runs (`Execute`); with `--local` the intent engine
//! (quantum-intent) runs in this process and plans are only shown.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use quantum_bus::Quantum1Proxy;
use quantum_intent::{Catalog, Config, Engine, Plan};
use quantum_model::Manifest;
use serde::Deserialize;

use crate::cli::AskArgs;

/// A plan as shown: from the engine in this process, or from quantumd's
/// JSON answer (the `ask --json` object plus `plan-id`).
#[derive(Debug, Deserialize)]
struct Answer {
    intent: String,
    cells: Vec<Step>,
    confidence: f32,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, rename = "plan-id")]
    plan_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Step {
    name: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
}

impl Answer {
    fn from_plan(plan: &Plan) -> Answer {
        Answer {
            intent: plan.intent.clone(),
            cells: plan
                .cells
                .iter()
                .map(|c| Step {
                    name: c.name.clone(),
                    params: c.params.clone(),
                })
                .collect(),
            confidence: plan.confidence,
            reason: plan.reason.clone(),
            plan_id: None,
        }
    }

    fn is_refusal(&self) -> bool {
        self.cells.is_empty()
    }
}

/// The requests: the words given, or one per line of standard input. A
/// read error is reported here and ends the command with status 2.
fn requests(args: &AskArgs) -> Box<dyn Iterator<Item = Result<String, ExitCode>>> {
    if args.text.len() == 1 && args.text[0] == "-" {
        Box::new(
            std::io::stdin()
                .lines()
                .map(|l| {
                    l.map_err(|e| {
                        eprintln!("quantumctl: cannot read standard input: {e}");
                        ExitCode::from(2)
                    })
                })
                .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty())),
        )
    } else {
        Box::new(std::iter::once(Ok(args.text.join(" "))))
    }
}

fn reading_stdin(args: &AskArgs) -> bool {
    args.text.len() == 1 && args.text[0] == "-"
}

pub fn run(args: &AskArgs, bus: Option<&str>) -> ExitCode {
    if args.local {
        local(args)
    } else {
        remote(args, bus)
    }
}

fn local(args: &AskArgs) -> ExitCode {
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
    let mut refused = false;
    for request in requests(args) {
        let intent = match request {
            Ok(intent) => intent,
            Err(code) => return code,
        };
        let plan = match engine.ask(&intent) {
            Ok(plan) => plan,
            Err(e) => {
                eprintln!("quantumctl: {}", chain(&e));
                return ExitCode::from(2);
            }
        };
        refused |= plan.is_refusal();
        let text = if args.json {
            match serde_json::to_string(&plan) {
                Ok(line) => line + "\n",
                Err(e) => {
                    eprintln!("quantumctl: cannot encode the plan as JSON: {e}");
                    return ExitCode::from(2);
                }
            }
        } else {
            let answer = Answer::from_plan(&plan);
            let mut text = describe(Some(engine.catalog()), &answer);
            if !answer.is_refusal() {
                text.push_str(&not_run(Some(engine.catalog()), &answer, "--local only shows plans"));
            }
            text
        };
        if !emit(&text) {
            // The reader went away (a closed pipe): nothing left to answer.
            return ExitCode::SUCCESS;
        }
    }
    if refused && !args.json {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes an answer to standard output, flushed at once so that a program
/// feeding requests one by one gets each answer as it comes. False when
/// the reader is gone.
fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}

fn remote(args: &AskArgs, bus: Option<&str>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quantumctl: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async {
        let proxy = match crate::client::proxy(bus).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("quantumctl: {e:#}");
                return ExitCode::from(2);
            }
        };
        // Without `-l`, descriptions need the manifests; a missing catalog
        // only makes the description shorter.
        let catalog = Catalog::load(&args.catalog).ok();
        let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
        let mut failed = false;
        for request in requests(args) {
            let intent = match request {
                Ok(intent) => intent,
                Err(code) => return code,
            };
            match ask_one(&proxy, args, catalog.as_ref(), &intent, &cwd).await {
                Ok(ok) => failed |= !ok,
                Err(code) => return code,
            }
        }
        if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// Asks quantumd, shows the plan, and runs it when confirmed. Ok(false)
/// when nothing fits, the plan was not confirmed or running it failed.
async fn ask_one(proxy: &Quantum1Proxy<'_>, args: &AskArgs, catalog: Option<&Catalog>, intent: &str, cwd: &str) -> Result<bool, ExitCode> {
    let json = proxy.ask(intent).await.map_err(|e| {
        eprintln!("quantumctl: {:#}", crate::client::request_failed("cannot ask quantumd", e));
        ExitCode::from(2)
    })?;
    let mut value: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
        eprintln!("quantumctl: quantumd answered something that is not a plan ({e}): {json}");
        ExitCode::from(2)
    })?;
    let answer: Answer = serde_json::from_value(value.clone()).map_err(|e| {
        eprintln!("quantumctl: quantumd answered something that is not a plan ({e}): {json}");
        ExitCode::from(2)
    })?;
    if !args.json && !emit(&describe(catalog, &answer)) {
        return Err(ExitCode::SUCCESS);
    }
    let Some(plan_id) = answer.plan_id.as_deref().filter(|_| !answer.is_refusal()) else {
        if args.json && !emit(&(value.to_string() + "\n")) {
            return Err(ExitCode::SUCCESS);
        }
        return Ok(args.json);
    };
    let confirmed = if args.dry_run {
        None
    } else if args.yes {
        Some(true)
    } else if !args.json && !reading_stdin(args) && std::io::stdin().is_terminal() {
        Some(confirm())
    } else {
        None
    };
    let mut ok = true;
    match confirmed {
        // With --json the cells' output would mix with the JSON: they run
        // in the background, as before.
        Some(true) if args.json => match proxy.execute(plan_id, cwd).await {
            Ok(started) => {
                value["started"] = started.iter().map(|s| s.info.instance.clone()).collect::<Vec<_>>().into();
                // Made secrets (a database's password), by instance: shown
                // to this caller only, here.
                let secrets: serde_json::Map<_, _> = started
                    .iter()
                    .filter(|s| !s.secrets.is_empty())
                    .map(|s| (s.info.instance.clone(), serde_json::json!(s.secrets)))
                    .collect();
                if !secrets.is_empty() {
                    value["secrets"] = secrets.into();
                }
            }
            Err(e) => {
                eprintln!("quantumctl: {:#}", crate::client::request_failed("the plan did not run", e));
                ok = false;
            }
        },
        // Each task's output appears here as it runs; services say how to
        // reach them.
        Some(true) => match execute_with_interrupts(proxy, plan_id, cwd).await {
            Ok((started, mut interrupts)) => {
                for s in started.iter().filter(|s| !s.attached) {
                    let mut line = crate::output::started(&s.info);
                    if !s.reach.is_empty() {
                        line.push_str(&format!("; reach it at {}", s.reach));
                    }
                    emit(&(line + "\n"));
                    emit(&crate::output::secrets(s));
                }
                match crate::foreground::wait_all(proxy, &started, &mut interrupts).await {
                    Ok(0) => {}
                    Ok(_) => ok = false,
                    Err(e) => {
                        eprintln!("quantumctl: {e:#}");
                        ok = false;
                    }
                }
            }
            Err(e) => {
                eprintln!("quantumctl: {:#}", crate::client::request_failed("the plan did not run", e));
                ok = false;
            }
        },
        Some(false) => {
            if !args.json {
                emit(&not_run(catalog, &answer, "not confirmed"));
            }
            ok = false;
        }
        None if !args.json => {
            let why = if args.dry_run {
                "--dry-run"
            } else {
                "no terminal to confirm on; add --yes to run it"
            };
            emit(&not_run(catalog, &answer, why));
            ok = args.dry_run;
        }
        None => {}
    }
    if args.json && !emit(&(value.to_string() + "\n")) {
        return Err(ExitCode::SUCCESS);
    }
    Ok(ok)
}

/// `execute_attached` with SIGINT, SIGTERM and SIGHUP caught from before
/// the plan starts.
async fn execute_with_interrupts(
    proxy: &Quantum1Proxy<'_>,
    plan_id: &str,
    cwd: &str,
) -> Result<(Vec<quantum_bus::Started>, crate::foreground::Interrupts), quantum_bus::Error> {
    let interrupts =
        crate::foreground::Interrupts::catch().map_err(|e| quantum_bus::Error::Backend(format!("cannot catch signals: {e}")))?;
    Ok((execute_attached(proxy, plan_id, cwd).await?, interrupts))
}

/// Runs an asked plan with this process's stdio given to its tasks.
async fn execute_attached(proxy: &Quantum1Proxy<'_>, plan_id: &str, cwd: &str) -> Result<Vec<quantum_bus::Started>, quantum_bus::Error> {
    use std::os::fd::AsFd;
    use zbus::zvariant::Fd;
    // The plan's cells get no input: stdin may be the list of requests
    // (`ask -`), and several cells cannot share a terminal's input.
    let stdin = std::fs::File::open("/dev/null").map_err(|e| quantum_bus::Error::Backend(format!("cannot open /dev/null: {e}")))?;
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    proxy
        .execute_attached(
            plan_id,
            cwd,
            Fd::from(stdin.as_fd()),
            Fd::from(stdout.as_fd()),
            Fd::from(stderr.as_fd()),
        )
        .await
}

/// Asks on the terminal; anything but y/yes is a no.
fn confirm() -> bool {
    eprint!("Run this plan? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
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
fn describe(catalog: Option<&Catalog>, plan: &Answer) -> String {
    let mut out = String::new();
    if plan.is_refusal() {
        let reason = plan.reason.as_deref().unwrap_or(quantum_intent::engine::NOTHING_FITS);
        let _ = writeln!(out, "{:?}: no plan — {reason} (confidence {:.2})", plan.intent, plan.confidence);
        return out;
    }
    let _ = writeln!(out, "Plan for {:?} (confidence {:.2}):", plan.intent, plan.confidence);
    for (i, step) in plan.cells.iter().enumerate() {
        let Some(cell) = catalog.and_then(|c| c.get(&step.name)) else {
            let params: Vec<String> = step.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "  {}. {} {}", i + 1, step.name, params.join(" "));
            continue;
        };
        let m = &cell.manifest;
        let _ = writeln!(out, "  {}. {} — {}", i + 1, step.name, m.description);
        let width = m.params.keys().map(String::len).max().unwrap_or(0);
        let mut values = BTreeMap::new();
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
    out
}

/// Required parameters of `step` that the plan does not give.
fn missing(catalog: Option<&Catalog>, step: &Step) -> Vec<String> {
    let Some(cell) = catalog.and_then(|c| c.get(&step.name)) else {
        return Vec::new();
    };
    cell.manifest
        .params
        .iter()
        .filter(|(name, spec)| spec.default.is_none() && !step.params.contains_key(*name))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Says that nothing ran, and how to run it.
fn not_run(catalog: Option<&Catalog>, plan: &Answer, why: &str) -> String {
    if plan.cells.iter().any(|c| !missing(catalog, c).is_empty()) {
        return format!("Nothing was run ({why}); the plan needs the missing parameters first.\n");
    }
    let commands: Vec<String> = plan
        .cells
        .iter()
        .map(|c| {
            let params: Vec<String> = c.params.iter().map(|(k, v)| format!("{k}={}", shell_word(v))).collect();
            format!("quantumctl run {} {}", c.name, params.join(" ")).trim_end().to_owned()
        })
        .collect();
    format!("Nothing was run ({why}). To run it: {}\n", commands.join(" && "))
}

fn resources(m: &Manifest) -> String {
    quantum_model::limits(&m.resources).join(", ")
}

fn isolation(m: &Manifest, values: &BTreeMap<String, String>) -> String {
    let a = quantum_model::Access::of(&m.isolation, values);
    format!("{}, runs as {}; reads {}; writes {}", a.network, a.user, a.reads, a.writes)
}

/// A value quoted for a POSIX shell when it needs it.
fn shell_word(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "/._-~:=%,+@".contains(c)) {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}
