//! The commands that talk to quantumd. Errors name the cell and the cause,
//! never a bare D-Bus error string.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use quantum_bus::{Error, Quantum1Proxy};
use zbus::zvariant::Fd;

use crate::cli::{CellCommand, ChannelsCommand, CliCommand, ClusterCommand, TrailCommand, TrailRange, TriggerCommand};
use crate::output;

/// A failed request: printed, then exit status 1.
pub fn request_failed(what: &str, e: Error) -> anyhow::Error {
    match e {
        Error::ZBus(z) => unreachable_daemon(z),
        other => anyhow!("{what}: {}", other.message()),
    }
}

/// Transport failures get a hint instead of the raw error.
fn unreachable_daemon(e: zbus::Error) -> anyhow::Error {
    let hint = "is quantumd running? (systemctl status quantumd)";
    match &e {
        zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown" => {
            anyhow!("quantumd is not running on this bus; {hint}")
        }
        zbus::Error::FDO(f) if matches!(**f, zbus::fdo::Error::ServiceUnknown(_)) => {
            anyhow!("quantumd is not running on this bus; {hint}")
        }
        _ => anyhow!("cannot talk to quantumd: {e}; {hint}"),
    }
}

struct Failed(anyhow::Error);

/// `--since 10m`: the time that long ago, µs since the epoch.
fn since_usec(ago: &str) -> anyhow::Result<u64> {
    let d: quantum_model::Duration = ago
        .parse()
        .map_err(|e| anyhow!("--since {ago:?}: {e} (a duration such as 30s, 10m or 2h)"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    Ok(now.saturating_sub(d.as_std()).as_micros() as u64)
}

/// Lines of output `inspect` shows.
const INSPECT_LINES: u32 = 5;

/// Streams a cell's output to stdout: quantumd writes into a pipe whose
/// other end this process reads, until quantumd closes it.
async fn print_logs(proxy: &Quantum1Proxy<'_>, target: &str, lines: u32, since_usec: u64, follow: bool, json: bool) -> anyhow::Result<()> {
    let (reader, writer) = std::io::pipe().context("cannot make a pipe")?;
    proxy
        .logs(target, lines, since_usec, follow, json, Fd::from(writer.as_fd()))
        .await
        .map_err(|e| request_failed(&format!("cannot show the output of {target}"), e))?;
    drop(writer);
    let copy = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        std::io::copy(&mut reader, &mut std::io::stdout().lock())
    });
    match copy.await.context("the output reader")? {
        Ok(_) => Ok(()),
        // `quantumctl logs x | head`: the reader left; not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow!("writing the output: {e}")),
    }
}

/// Connects to the bus and makes the quantumd proxy.
pub async fn proxy(bus: Option<&str>) -> anyhow::Result<Quantum1Proxy<'static>> {
    let conn = quantum_bus::connect_for_calls(bus).await.map_err(|e| {
        anyhow!(
            "cannot connect to {}: {e}",
            bus.map_or("the system bus".to_owned(), |b| format!("bus {b}"))
        )
    })?;
    Quantum1Proxy::new(&conn).await.context("creating the quantumd proxy")
}

pub fn run(bus: Option<&str>, command: CliCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let proxy = proxy(bus).await?;
        match execute(&proxy, command).await {
            Ok(code) => Ok(code),
            Err(Failed(e)) => {
                eprintln!("quantumctl: {e:#}");
                // Transport problems are "could not ask", status 2.
                let code = if e.to_string().contains("quantumd") && e.to_string().contains("systemctl status") {
                    2
                } else {
                    1
                };
                Ok(ExitCode::from(code))
            }
        }
    })
}

async fn execute(proxy: &Quantum1Proxy<'_>, command: CliCommand) -> Result<ExitCode, Failed> {
    match command {
        CliCommand::Validate { .. } => unreachable!("validate runs without a daemon"),
        CliCommand::Run {
            cell,
            params,
            json,
            detach,
            no_substitute,
        } => {
            let params = parse_params(&params).map_err(Failed)?;
            let source = source_of(&cell).map_err(Failed)?;
            let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
            let options = quantum_bus::RunOptions {
                substitute: !no_substitute,
            };
            if !json && !detach {
                let mut interrupts = crate::foreground::Interrupts::catch().map_err(Failed)?;
                let assembled = crate::foreground::start(proxy, &source, params, &cwd, options)
                    .await
                    .map_err(Failed)?;
                if !assembled.substitution.is_empty() {
                    eprintln!("quantumctl: {}", assembled.substitution);
                }
                let started = assembled.started;
                if started.attached {
                    // Standard output is the cell's alone.
                    eprint!("{}", output::secrets(&started));
                }
                if !started.attached {
                    println!("{}", output::started(&started.info));
                    if !started.reach.is_empty() {
                        println!("reach it at {}", started.reach);
                    }
                    print!("{}", output::secrets(&started));
                    println!("stop it with: quantumctl stop {}", started.info.instance);
                }
                let code = crate::foreground::wait_all(proxy, &[started], &mut interrupts)
                    .await
                    .map_err(Failed)?;
                return Ok(ExitCode::from(code));
            }
            let assembled = proxy
                .run_with(&source, params, &cwd, options.to_wire())
                .await
                .map_err(|e| Failed(request_failed(&format!("cannot run {cell}"), e)))?;
            if !assembled.substitution.is_empty() {
                eprintln!("quantumctl: {}", assembled.substitution);
            }
            if json {
                output::json(&output::run_json(&assembled));
            } else {
                println!("{}", output::started(&assembled.started.info));
                print!("{}", output::secrets(&assembled.started));
            }
        }
        CliCommand::Stop { targets } => {
            let mut failed = None;
            for t in targets {
                match proxy.stop(&t).await {
                    Ok(ids) => println!("stopped {}", ids.join(", ")),
                    Err(e) => {
                        let e = request_failed(&format!("cannot stop {t}"), e);
                        eprintln!("quantumctl: {e:#}");
                        failed = Some(anyhow!("some cells were not stopped"));
                    }
                }
            }
            if let Some(e) = failed {
                return Err(Failed(e));
            }
        }
        CliCommand::List { json } => {
            let cells = proxy.list().await.map_err(|e| Failed(request_failed("cannot list cells", e)))?;
            if json {
                output::json(&cells);
            } else {
                print!("{}", output::table(&cells));
            }
        }
        CliCommand::Inspect { target, json } => {
            let d = proxy
                .inspect(&target)
                .await
                .map_err(|e| Failed(request_failed(&format!("cannot inspect {target}"), e)))?;
            if json {
                output::json(&d);
            } else {
                print!("{}", output::detail(&d));
                // The last lines it printed, where the caller may read them.
                let (reader, writer) = std::io::pipe().map_err(|e| Failed(anyhow!("cannot make a pipe: {e}")))?;
                if proxy
                    .logs(&d.info.instance, INSPECT_LINES, 0, false, false, Fd::from(writer.as_fd()))
                    .await
                    .is_ok()
                {
                    drop(writer);
                    let text = std::io::read_to_string(reader).unwrap_or_default();
                    if !text.is_empty() {
                        println!(
                            "output (last {INSPECT_LINES} lines, `quantumctl logs {}` for all):",
                            d.info.instance
                        );
                        for line in text.lines() {
                            println!("  {line}");
                        }
                    }
                }
            }
        }
        CliCommand::Logs {
            target,
            follow,
            lines,
            since,
            json,
        } => {
            let since_usec = since.as_deref().map(since_usec).transpose().map_err(Failed)?.unwrap_or(0);
            print_logs(proxy, &target, lines, since_usec, follow, json).await.map_err(Failed)?;
        }
        CliCommand::Identity { json } => {
            let id = proxy
                .identity()
                .await
                .map_err(|e| Failed(request_failed("cannot read the node identity", e)))?;
            if json {
                output::json(&id);
            } else {
                print!("{}", output::identity(&id));
            }
        }
        CliCommand::Cell(command) => {
            let (cell, op, name, json) = match command {
                CellCommand::Snapshot { cell, name, json } => {
                    let name = name.unwrap_or_else(output::snapshot_name_now);
                    (cell, "snapshot", name, json)
                }
                CellCommand::Rollback { cell, name, json } => (cell, "rollback", name, json),
                CellCommand::Snapshots { cell, json } => (cell, "list", String::new(), json),
                CellCommand::Forget { cell, name, json } => (cell, "delete", name, json),
            };
            // A path names the cell by its cell.toml, as for `run`.
            let cell = if cell.contains('/') && !cell.starts_with('/') {
                std::env::current_dir().map(|d| d.join(&cell).display().to_string()).unwrap_or(cell)
            } else {
                cell
            };
            let report = proxy
                .cell_state(&cell, op, &name)
                .await
                .map_err(|e| Failed(request_failed(&format!("cannot {op} the state of cell {cell}"), e)))?;
            if json {
                output::json(&report);
            } else {
                print!("{}", output::cell_state(op, &name, &report));
            }
        }
        CliCommand::Trail(TrailCommand::Show {
            range: TrailRange { cell, since, limit },
            json,
        }) => {
            let entries = proxy
                .trail_show(cell.as_deref().unwrap_or(""), since, limit)
                .await
                .map_err(|e| Failed(request_failed("cannot read the trail", e)))?;
            if json {
                output::json(&entries);
            } else {
                print!("{}", output::trail(&entries));
            }
        }
        CliCommand::Alerts {
            range: TrailRange { cell, since, limit },
            follow,
            json,
        } => {
            let cell = cell.as_deref().unwrap_or("");
            let read = |since, limit| async move {
                proxy
                    .alerts(cell, since, limit)
                    .await
                    .map_err(|e| Failed(request_failed("cannot read the alerts", e)))
            };
            let alerts = read(since, limit).await?;
            let print = |alerts: &[quantum_bus::Alert], next: &mut u64| {
                for a in alerts {
                    if json {
                        println!("{}", serde_json::to_string(a).unwrap_or_default());
                    } else {
                        print!("{}", output::alert(a));
                    }
                    *next = (*next).max(a.seq + 1);
                }
            };
            let mut next = since;
            if json && !follow {
                output::json(&alerts);
            } else if alerts.is_empty() && !follow {
                println!("no alerts");
            } else {
                print(&alerts, &mut next);
            }
            if follow {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let fresh = read(next, 0).await?;
                    print(&fresh, &mut next);
                }
            }
        }
        CliCommand::Channels { command: None, json } => {
            let table = proxy
                .channels()
                .await
                .map_err(|e| Failed(request_failed("cannot list the channels", e)))?;
            if json {
                output::json(&table);
            } else {
                print!("{}", output::channels(&table));
            }
        }
        CliCommand::Channels {
            command: Some(ChannelsCommand::Revoke { instance, channel }),
            json,
        } => {
            let closed = proxy
                .revoke_channels(&instance, channel.as_deref().unwrap_or(""))
                .await
                .map_err(|e| Failed(request_failed(&format!("cannot revoke the channels of {instance}"), e)))?;
            if json {
                output::json(&serde_json::json!({ "instance": instance, "streams-closed": closed }));
            } else {
                let what = channel.map_or_else(|| "channels".to_owned(), |c| format!("channel {c}"));
                println!(
                    "revoked the {what} of {instance}; {closed} open stream{} closed",
                    if closed == 1 { "" } else { "s" }
                );
            }
        }
        CliCommand::Cluster {
            command: ClusterCommand::Place { cell, params, json },
        } => {
            let params = parse_params(&params).map_err(Failed)?;
            let p = proxy
                .place(&cell, params)
                .await
                .map_err(|e| Failed(request_failed(&format!("cannot place {cell}"), e)))?;
            if json {
                output::json(&p);
            } else {
                println!("placed {} ({}) on {}", p.id, p.cell, p.node);
            }
        }
        CliCommand::Cluster {
            command: ClusterCommand::Unplace { id },
        } => {
            let removed = proxy
                .unplace(&id)
                .await
                .map_err(|e| Failed(request_failed(&format!("cannot remove placement {id}"), e)))?;
            if !removed {
                return Err(Failed(anyhow!("no placement {id}")));
            }
            println!("removed placement {id}");
        }
        CliCommand::Cluster { command } => {
            let status = proxy
                .cluster()
                .await
                .map_err(|e| Failed(request_failed("cannot read the cluster's status", e)))?;
            match command {
                ClusterCommand::Status { json: true } => output::json(&status),
                ClusterCommand::Status { json: false } => print!("{}", output::cluster(&status)),
                ClusterCommand::Nodes { json: true } => output::json(&status.nodes),
                ClusterCommand::Nodes { json: false } => print!("{}", output::cluster_nodes(&status.nodes)),
                ClusterCommand::Key => print!("{}", status.public_key),
                ClusterCommand::Place { .. } | ClusterCommand::Unplace { .. } => unreachable!("answered above"),
            }
        }
        CliCommand::Steppps { cell, json, once, verbose } => {
            let live = !json && !once && std::io::IsTerminal::is_terminal(&std::io::stdout());
            loop {
                let text = proxy
                    .steppps(cell.as_deref().unwrap_or(""))
                    .await
                    .map_err(|e| Failed(request_failed("cannot read the STEPPPS figures", e)))?;
                if json {
                    println!("{text}");
                    break;
                }
                let figures: quantum_steppps::Figures =
                    serde_json::from_str(&text).map_err(|e| Failed(anyhow!("quantumd sent figures this quantumctl cannot read: {e}")))?;
                if live {
                    // Home and clear, then the view: a redraw without scrolling.
                    print!("\x1b[H\x1b[2J");
                }
                print!("{}", output::steppps(&figures, verbose));
                if !live {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        CliCommand::Trigger(TriggerCommand::Validate { .. }) => {
            unreachable!("validated by main without quantumd")
        }
        CliCommand::Trigger(TriggerCommand::Add { file, json }) => {
            let (path, text) = crate::validate::trigger_file(&file).map_err(Failed)?;
            let info = proxy
                .add_trigger(&text, &path)
                .await
                .map_err(|e| Failed(request_failed(&format!("cannot add the trigger in {path}"), e)))?;
            if json {
                output::json(&info);
            } else {
                print!("added {}", output::triggers(std::slice::from_ref(&info)));
            }
        }
        CliCommand::Trigger(TriggerCommand::Remove { name }) => {
            proxy
                .remove_trigger(&name)
                .await
                .map_err(|e| Failed(request_failed(&format!("cannot remove trigger {name}"), e)))?;
            println!("removed trigger {name}");
        }
        CliCommand::Trigger(TriggerCommand::List { json }) => {
            let list = proxy
                .list_triggers()
                .await
                .map_err(|e| Failed(request_failed("cannot list the triggers", e)))?;
            if json {
                output::json(&list);
            } else if list.is_empty() {
                println!("no triggers (see quantumctl trigger --help)");
            } else {
                print!("{}", output::triggers(&list));
            }
        }
        CliCommand::Recommend { cell, json } => {
            let text = proxy
                .recommend(&cell)
                .await
                .map_err(|e| Failed(request_failed(&format!("cannot recommend resources for {cell}"), e)))?;
            if json {
                println!("{text}");
            } else {
                let r: quantum_psychology::Recommendation = serde_json::from_str(&text)
                    .map_err(|e| Failed(anyhow!("quantumd sent a recommendation this quantumctl cannot read: {e}")))?;
                print!("{}", r.to_toml());
            }
        }
        CliCommand::Trail(TrailCommand::Verify { json }) => {
            let report = proxy
                .trail_verify()
                .await
                .map_err(|e| Failed(request_failed("cannot verify the trail", e)))?;
            if json {
                output::json(&report);
            } else {
                print!("{}", output::trail_report(&report));
            }
            if !report.ok {
                return Err(Failed(anyhow!("the trail does not verify: {}", report.failure)));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// NAME=VALUE pairs.
fn parse_params(args: &[String]) -> anyhow::Result<HashMap<String, String>> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("parameter {a:?} is not NAME=VALUE"))
        })
        .collect()
}

/// A catalog name stays a name; anything that looks like a path becomes an
/// absolute path, since quantumd does not share our working directory.
fn source_of(cell: &str) -> anyhow::Result<String> {
    let looks_like_path = cell.contains('/') || cell.ends_with(".toml") || cell.ends_with(".qcb") || cell == "." || cell == "..";
    if !looks_like_path {
        return Ok(cell.to_owned());
    }
    let p = std::fs::canonicalize(cell).with_context(|| format!("cannot find {cell}"))?;
    Ok(p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_must_be_name_value_pairs() {
        let p = parse_params(&["port=8080".into(), "cmd=a=b".into()]).unwrap();
        assert_eq!(p["port"], "8080");
        assert_eq!(p["cmd"], "a=b");
        assert!(parse_params(&["port".into()]).is_err());
    }

    #[test]
    fn catalog_names_are_not_paths() {
        assert_eq!(source_of("web-server").unwrap(), "web-server");
        assert!(source_of("./does-not-exist.toml").is_err());
    }
}
