//! quantumd's systemd backend against a real systemd as PID 1 (a
//! systemd-nspawn container of the QuantumOS image): quantumd runs as the
//! unprivileged `quantumd` user under its hardened unit, polkit decides who
//! may run cells, and every cell is a transient unit in quantum.slice with
//! exactly the properties its manifest asks for. (nspawn does not enforce
//! cgroup limits on this host; enforcement is the QEMU tier's job.)

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use quantum_vmtest::{Backend, Guest, Scenarios};

mod lifecycle;
use lifecycle::{
    as_quantum, crash_then_blacklist, ctrl_c_stops_a_foreground_task, direct_socket, foreground_task, kill_9_readopts,
    logs_through_quantumd, prewarm_claims, systemd_gate, triggers_through_systemd,
};

#[test]
fn systemd_backend_in_a_container() {
    let Some(guest) = quantum_vmtest::boot_ready("systemd backend", Backend::Nspawn) else {
        return;
    };
    let mut s = Scenarios::new(&guest);
    s.run("quantumd-is-ready-on-the-system-bus-with-the-systemd-backend", quantumd_ready);
    s.run(
        "a-catalog-cell-becomes-a-unit-with-exactly-its-manifest-properties",
        unit_properties,
    );
    s.run("stop-removes-the-unit", stop_removes_unit);
    s.run("polkit-refuses-users-outside-the-quantum-group", polkit_refuses);
    s.run("a-crashing-cell-is-restarted-then-blacklisted", crash_then_blacklist);
    s.run("a-foreground-task-shows-its-output-and-exit-status", foreground_task);
    s.run("ctrl-c-stops-a-foreground-task", ctrl_c_stops_a_foreground_task);
    s.run(
        "logs-shows-a-cells-output-from-the-journal-to-quantum-not-to-outsiders",
        logs_through_quantumd,
    );
    s.run(
        "quantumctl-runs-cells-over-the-direct-socket-and-outsiders-use-the-bus",
        direct_socket,
    );
    s.run("quantumd-drives-systemd-through-the-gate-and-nothing-but-its-cells", systemd_gate);
    s.run(
        "path-and-calendar-triggers-are-systemd-units-that-run-their-cell-and-outlive-a-restart",
        triggers_through_systemd,
    );
    s.run(
        "a-pinned-cell-waits-warm-and-a-run-takes-its-unit-with-identity-and-output",
        prewarm_claims,
    );
    s.run("kill-9-of-quantumd-loses-no-cell-and-duplicates-none", kill_9_readopts);
    if let Err(e) = s.finish() {
        panic!("{e:#}");
    }
}

fn quantumd_ready(g: &Guest) -> Result<()> {
    let out = g.run_with_timeout(
        "systemctl is-active --wait quantumd.service || systemctl is-active quantumd.service",
        Duration::from_secs(120),
    )?;
    if out.stdout.trim() != "active" {
        let j = g.run("journalctl -b -u quantumd -u quantumd-gate --no-pager | tail -n 40")?;
        bail!("quantumd is {}: {}", out.stdout.trim(), j.stdout);
    }
    let show = g.run_ok("systemctl show quantumd.service -p Type,User,StatusText")?;
    ensure!(show.contains("Type=notify"), "{show}");
    ensure!(show.contains("User=quantumd"), "{show}");
    let backend = g.run_ok("busctl get-property org.quantumos.Quantum1 /org/quantumos/Quantum1 org.quantumos.Quantum1 Backend")?;
    ensure!(
        backend.contains("systemd (through quantumd-gate): cells run as transient services in quantum.slice"),
        "{backend}"
    );
    Ok(())
}

fn run_json(g: &Guest, user_cmd: &str) -> Result<serde_json::Value> {
    let out = g.run_ok(&as_quantum(user_cmd))?;
    serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
}

fn unit_properties(g: &Guest) -> Result<()> {
    let info = run_json(g, "quantumctl run system-monitor interval=7 --json")?;
    let unit = info["unit"].as_str().context("unit")?.to_owned();
    ensure!(info["state"] == "running", "{info}");
    let show = g.run_ok(&format!(
        "systemctl show {unit} -p Slice,MemoryMin,MemoryMax,CPUQuotaPerSecUSec,CPUWeight,IOWeight,TasksMax,DynamicUser,\
         NoNewPrivileges,ProtectSystem,ProtectHome,PrivateTmp,PrivateNetwork,ActiveState,ExecStart"
    ))?;
    // packaging/cells/system-monitor/cell.toml: cpu-min 0.05, cpu-max 0.2,
    // memory-min 4M, memory-max 32M, io-weight 10, tasks-max 4, network none.
    for expected in [
        "Slice=quantum.slice",
        "MemoryMin=4194304",
        "MemoryMax=33554432",
        "CPUQuotaPerSecUSec=200ms",
        "CPUWeight=5",
        "IOWeight=10",
        "TasksMax=4",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateNetwork=yes",
        "ActiveState=active",
    ] {
        ensure!(show.lines().any(|l| l == expected), "{unit} lacks {expected}:\n{show}");
    }
    ensure!(
        show.contains("argv[]=/usr/bin/vmstat -w -t -S M 7"),
        "params not substituted:\n{show}"
    );
    Ok(())
}

fn stop_removes_unit(g: &Guest) -> Result<()> {
    let out = g.run_ok(&as_quantum("quantumctl stop system-monitor"))?;
    ensure!(out.starts_with("stopped system-monitor."), "{out}");
    let units = g.run_ok("systemctl list-units --all --plain --no-legend 'quantum-system-monitor.*'")?;
    ensure!(units.trim().is_empty(), "units left after stop:\n{units}");
    Ok(())
}

fn polkit_refuses(g: &Guest) -> Result<()> {
    g.run_ok("id outsider >/dev/null 2>&1 || useradd --no-create-home outsider")?;
    let out = g.run("runuser -u outsider -- quantumctl run system-monitor")?;
    ensure!(out.code == 1, "an outsider could run a cell: {out}");
    ensure!(out.stderr.contains("not authorized for org.quantumos.cells.manage"), "{out}");
    // Reads stay open to everyone.
    g.run_ok("runuser -u outsider -- quantumctl list")?;
    Ok(())
}
