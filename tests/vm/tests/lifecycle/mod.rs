//! Lifecycle scenarios shared by the container tier (systemd_backend.rs) and
//! the VM tier (isolation.rs): they need systemd as PID 1 but no cgroup
//! limits, so both run them — the container quickly, the VM on the image's
//! own kernel.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use quantum_vmtest::{eventually, Guest};

/// quantumctl as the desktop user `quantum` (in group `quantum`).
pub fn as_quantum(cmd: &str) -> String {
    format!("runuser -u quantum -- {cmd}")
}

pub fn crash_then_blacklist(g: &Guest) -> Result<()> {
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

pub fn kill_9_readopts(g: &Guest) -> Result<()> {
    // Start 20 cells concurrently, and kill quantumd while they start.
    g.run_ok(&as_quantum(
        "sh -c 'for i in $(seq 20); do quantumctl run system-monitor >/dev/null 2>&1 & done; wait' & sleep 0.3; true",
    ))?;
    // Kill once the first cell runs, so that the others are mid-start
    // (a fixed delay is either too early or too late under TCG).
    eventually("a first cell to be running", Duration::from_secs(120), || {
        let n = g.run_ok("systemctl list-units --plain --no-legend --state=active 'quantum-system-monitor.*' | wc -l")?;
        Ok((n.trim().parse::<u32>().unwrap_or(0) > 0).then_some(()))
    })?;
    g.run_ok("kill -9 $(systemctl show -P MainPID quantumd.service)")?;
    eventually("quantumd to be restarted by systemd", Duration::from_secs(60), || {
        let out = g.run("systemctl is-active quantumd.service && quantumctl list >/dev/null")?;
        Ok(out.success().then_some(()))
    })?;
    let n_restarts = g.run_ok("systemctl show -P NRestarts quantumd.service")?;
    ensure!(n_restarts.trim() != "0", "systemd did not restart quantumd");
    // Let the clients that lost their daemon finish, then compare what
    // systemd runs with what quantumd knows.
    eventually("the clients to finish", Duration::from_secs(120), || {
        let out = g.run("pgrep -f 'quantumctl run system-[m]onitor'")?;
        Ok((!out.success()).then_some(()))
    })?;
    let units: Vec<String> = g
        // Units still activating count too: what matters is that quantumd
        // and systemd agree on the set (under TCG some units started just
        // before the kill were seen to linger in "activating" for seconds).
        .run_ok("systemctl list-units --plain --no-legend --state=active,activating 'quantum-system-monitor.*' | awk '{print $1}'")?
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
    if known != units_sorted {
        let all = g.run(
            "systemctl list-units --all --plain --no-legend 'quantum-system-monitor.*'; journalctl -b --no-pager -u quantumd | tail -n 60",
        )?;
        anyhow::bail!("quantumd knows {known:?} but systemd runs {units_sorted:?}\n{}", all.stdout);
    }
    let mut dedup = known.clone();
    dedup.dedup();
    ensure!(dedup.len() == known.len(), "duplicates: {known:?}");
    g.run_ok(&as_quantum("quantumctl stop system-monitor"))?;
    let left = g.run_ok("systemctl list-units --plain --no-legend 'quantum-system-monitor.*'")?;
    ensure!(left.trim().is_empty(), "orphans after stop:\n{left}");
    Ok(())
}
