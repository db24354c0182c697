//! quantumd's systemd backend against a real systemd as PID 1 (a
//! systemd-nspawn container of the QuantumOS image): quantumd runs as the
//! unprivileged `quantumd` user under its hardened unit, polkit decides who
//! may run cells, and every cell is a transient unit in quantum.slice with
//! exactly the properties its manifest asks for. (nspawn does not enforce
//! cgroup limits on this host; enforcement is the QEMU tier's job.)

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use quantum_vmtest::{eventually, Backend, Guest, Scenarios};

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
    s.run("kill-9-of-quantumd-loses-no-cell-and-duplicates-none", kill_9_readopts);
    if let Err(e) = s.finish() {
        panic!("{e:#}");
    }
}

/// quantumctl as the desktop user `quantum` (in group `quantum`).
fn as_quantum(cmd: &str) -> String {
    format!("runuser -u quantum -- {cmd}")
}

fn quantumd_ready(g: &Guest) -> Result<()> {
    let out = g.run_with_timeout(
        "systemctl is-active --wait quantumd.service || systemctl is-active quantumd.service",
        Duration::from_secs(120),
    )?;
    if out.stdout.trim() != "active" {
        let j = g.run("journalctl -b -u quantumd --no-pager | tail -n 30")?;
        bail!("quantumd is {}: {}", out.stdout.trim(), j.stdout);
    }
    let show = g.run_ok("systemctl show quantumd.service -p Type,User,StatusText")?;
    ensure!(show.contains("Type=notify"), "{show}");
    ensure!(show.contains("User=quantumd"), "{show}");
    let backend = g.run_ok("busctl get-property org.quantumos.Quantum1 /org/quantumos/Quantum1 org.quantumos.Quantum1 Backend")?;
    ensure!(
        backend.contains("systemd: cells run as transient services in quantum.slice"),
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

fn crash_then_blacklist(g: &Guest) -> Result<()> {
    g.run_ok(
        "mkdir -p /run/qtest/crasher && cat > /run/qtest/crasher/cell.toml <<'EOF'
[cell]
name = \"crasher\"
version = \"1.0.0\"
description = \"exits with status 3\"
exec = [\"/bin/sh\", \"-c\", \"exit 3\"]
[lifecycle]
restart = \"on-failure\"
max-restarts = 2
restart-window = \"1m\"
EOF",
    )?;
    g.run(&as_quantum("quantumctl run /run/qtest/crasher/cell.toml"))?;
    let reason = eventually("the crasher to be blacklisted", Duration::from_secs(60), || {
        let list: serde_json::Value = serde_json::from_str(&g.run_ok("quantumctl list --json")?)?;
        Ok(list.as_array().and_then(|a| {
            a.iter()
                .find(|c| c["cell"] == "crasher" && c["state"] == "failed")
                .map(|c| c["reason"].as_str().unwrap_or("").to_owned())
        }))
    })?;
    ensure!(
        reason == "blacklisted: exited with status 3; it ended 3 times within 1m (max-restarts 2)",
        "{reason}"
    );
    let again = g.run(&as_quantum("quantumctl run /run/qtest/crasher/cell.toml"))?;
    ensure!(again.code == 1 && again.stderr.contains("is blacklisted"), "{again}");
    let left = g.run_ok("systemctl list-units --all --plain --no-legend 'quantum-crasher.*'")?;
    ensure!(left.trim().is_empty(), "failed units left behind:\n{left}");
    Ok(())
}

fn kill_9_readopts(g: &Guest) -> Result<()> {
    // Start 20 cells concurrently, and kill quantumd while they start.
    g.run_ok(&as_quantum(
        "sh -c 'for i in $(seq 20); do quantumctl run system-monitor >/dev/null 2>&1 & done; wait' & sleep 0.3; true",
    ))?;
    g.run_ok("sleep 0.5; kill -9 $(systemctl show -P MainPID quantumd.service)")?;
    eventually("quantumd to be restarted by systemd", Duration::from_secs(60), || {
        let out = g.run("systemctl is-active quantumd.service && quantumctl list >/dev/null")?;
        Ok(out.success().then_some(()))
    })?;
    let n_restarts = g.run_ok("systemctl show -P NRestarts quantumd.service")?;
    ensure!(n_restarts.trim() != "0", "systemd did not restart quantumd");
    // Let the clients that lost their daemon finish, then compare what
    // systemd runs with what quantumd knows.
    std::thread::sleep(Duration::from_secs(3));
    let units: Vec<String> = g
        .run_ok("systemctl list-units --plain --no-legend --state=active 'quantum-system-monitor.*' | awk '{print $1}'")?
        .lines()
        .map(str::to_owned)
        .collect();
    let list: serde_json::Value = serde_json::from_str(&g.run_ok("quantumctl list --json")?)?;
    let mut known: Vec<String> = list
        .as_array()
        .context("list")?
        .iter()
        .filter(|c| c["cell"] == "system-monitor" && c["state"] == "running")
        .map(|c| c["unit"].as_str().unwrap_or("").to_owned())
        .collect();
    known.sort();
    let mut units_sorted = units.clone();
    units_sorted.sort();
    ensure!(!units.is_empty(), "no cell survived the kill");
    ensure!(known == units_sorted, "quantumd knows {known:?} but systemd runs {units_sorted:?}");
    let mut dedup = known.clone();
    dedup.dedup();
    ensure!(dedup.len() == known.len(), "duplicates: {known:?}");
    g.run_ok(&as_quantum("quantumctl stop system-monitor"))?;
    let left = g.run_ok("systemctl list-units --plain --no-legend 'quantum-system-monitor.*'")?;
    ensure!(left.trim().is_empty(), "orphans after stop:\n{left}");
    Ok(())
}
