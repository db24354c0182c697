//! Cells are really isolated and limited: QuantumOS booted under QEMU
//! (systemd as PID 1 on a kernel with cgroup v2 controllers), quantumd under
//! its unit, cells started with quantumctl, and the kernel's own accounting
//! read back from the cgroup files.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use quantum_vmtest::{eventually, report, Backend, Guest, Scenarios, GUEST_SHARE};

mod lifecycle;

#[test]
fn cells_are_isolated_and_limited_in_a_vm() {
    let Some(guest) = quantum_vmtest::boot_ready("isolation scenarios", Backend::Qemu) else {
        return;
    };
    let mut s = Scenarios::new(&guest);
    s.run("quantumd-is-ready", quantumd_ready);
    s.run("a-memory-hog-is-oom-killed-and-its-neighbour-is-untouched", memory_hog);
    s.run("cpu-max-0.5-gives-half-a-core", cpu_max);
    s.run("tasks-max-stops-a-fork-bomb", tasks_max);
    s.run("io-weight-lands-in-io.weight", io_weight);
    s.run("network-none-cannot-reach-loopback-but-loopback-can", network);
    s.run("network-allow-reaches-the-listed-port-and-is-refused-another", network_allow);
    s.run(
        "a-shell-injected-into-a-web-server-cell-and-a-refused-connect-are-alerted-within-10-s",
        anomaly_alerts,
    );
    s.run(
        "cells-talk-over-brokered-channels-a-forged-token-is-refused-and-revocation-closes-the-stream",
        channels,
    );
    s.run(
        "a-dynamic-user-cell-cannot-read-quantumd-state-or-write-outside-writable",
        dynamic_user,
    );
    s.run("children-run-in-nested-slices-and-stop-with-the-parent", children);
    s.run("an-idle-cell-is-stopped-after-its-idle-timeout", idle_timeout);
    s.run("a-crashing-cell-is-restarted-then-blacklisted", lifecycle::crash_then_blacklist);
    s.run("a-foreground-task-shows-its-output-and-exit-status", lifecycle::foreground_task);
    s.run("ctrl-c-stops-a-foreground-task", lifecycle::ctrl_c_stops_a_foreground_task);
    s.run(
        "logs-shows-a-cells-output-from-the-journal-to-quantum-not-to-outsiders",
        lifecycle::logs_through_quantumd,
    );
    s.run(
        "quantumctl-runs-cells-over-the-direct-socket-and-outsiders-use-the-bus",
        lifecycle::direct_socket,
    );
    s.run(
        "quantumd-drives-systemd-through-the-gate-and-nothing-but-its-cells",
        lifecycle::systemd_gate,
    );
    s.run(
        "path-and-calendar-triggers-are-systemd-units-that-run-their-cell-and-outlive-a-restart",
        lifecycle::triggers_through_systemd,
    );
    s.run(
        "a-memory-threshold-trigger-fires-once-while-a-cell-holds-memory",
        lifecycle::memory_threshold_trigger,
    );
    s.run(
        "a-memory-pressure-trigger-fires-on-a-cell-that-thrashes-its-page-cache",
        lifecycle::memory_pressure_trigger,
    );
    s.run(
        "a-pinned-cell-waits-warm-and-a-run-takes-its-unit-with-identity-and-output",
        lifecycle::prewarm_claims,
    );
    s.run("a-cell-that-exits-is-seen-within-a-second", exit_detected_quickly);
    s.run(
        "steppps-time-and-event-come-from-ebpf-loaded-by-the-unprivileged-quantumd",
        steppps_from_ebpf,
    );
    s.run("a-starved-cell-missing-its-objective-gets-more-cpu-weight", objective_raises_weight);
    s.run(
        "a-stateful-cell-keeps-its-state-on-btrfs-with-snapshot-and-rollback",
        stateful_cell_on_btrfs,
    );
    s.run(
        "kill-9-of-quantumd-while-20-cells-start-loses-none-and-duplicates-none",
        lifecycle::kill_9_readopts,
    );
    s.run(
        "ask-yes-serve-srv-www-on-port-8080-runs-a-web-server-that-answers",
        ask_serves_a_folder,
    );
    s.run("256-concurrent-cells-talk-in-channel-pairs-then-all-stop", many_cells);
    if let Err(e) = s.finish() {
        panic!("{e:#}");
    }
}

/// Writes a manifest to /run/qt/NAME/cell.toml in the guest.
fn cell(g: &Guest, name: &str, body: &str) -> Result<String> {
    let path = format!("/run/qt/{name}/cell.toml");
    let text = format!("[cell]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"scenario cell {name}\"\n{body}\n");
    g.run_ok(&format!("mkdir -p /run/qt/{name} && cat > {path} <<'QTEOF'\n{text}QTEOF"))?;
    Ok(path)
}

fn run(g: &Guest, path: &str) -> Result<serde_json::Value> {
    let out = g.run_ok(&format!("quantumctl run {path} --json"))?;
    serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
}

/// The list entry of `instance`, whatever its state.
fn entry(g: &Guest, instance: &str) -> Result<Option<serde_json::Value>> {
    let list: serde_json::Value = serde_json::from_str(&g.run_ok("quantumctl list --json")?)?;
    Ok(list
        .as_array()
        .and_then(|a| a.iter().rev().find(|c| c["instance"] == instance).cloned()))
}

fn wait_state(g: &Guest, instance: &str, states: &[&str], limit: Duration) -> Result<serde_json::Value> {
    eventually(&format!("{instance} to be {states:?}"), limit, || {
        Ok(entry(g, instance)?.filter(|c| states.iter().any(|s| c["state"] == *s)))
    })
}

fn cgroup(unit: &str) -> String {
    format!("/sys/fs/cgroup/quantum.slice/{unit}")
}

fn quantumd_ready(g: &Guest) -> Result<()> {
    let out = g.run_with_timeout("systemctl is-active quantumd.service", Duration::from_secs(60))?;
    ensure!(out.stdout.trim() == "active", "quantumd is {}", out.stdout.trim());
    Ok(())
}

/// The trail entries about `cell`, oldest first.
fn trail_of(g: &Guest, cell: &str) -> Result<Vec<serde_json::Value>> {
    let out = g.run_ok(&format!("quantumctl trail show -n 0 --cell {cell} --json"))?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn exit_detected_quickly(g: &Guest) -> Result<()> {
    // The cell prints the clock just before it exits; the trail stamps the
    // moment quantumd handled the exit. The difference is the detection
    // latency, end to end (process exit, systemd, D-Bus, quantumd).
    let path = cell(
        g,
        "quitter",
        "exec = [\"/bin/sh\", \"-c\", \"sleep 1; date +%s%N; exit 4\"]\n[lifecycle]\nrestart = \"no\"",
    )?;
    let info = run(g, &path)?;
    let id = info["instance"].as_str().context("instance")?;
    let unit = info["unit"].as_str().context("unit")?;
    wait_state(g, id, &["failed"], Duration::from_secs(30))?;
    let printed: u64 = g
        .run_ok(&format!(
            "journalctl -b -u {unit} -o cat --no-pager | grep -E '^[0-9]{{19}}$' | tail -n 1"
        ))?
        .trim()
        .parse()
        .context("the cell's clock reading")?;
    let exit = trail_of(g, "quitter")?
        .into_iter()
        .rev()
        .find(|e| e["action"] == "exit")
        .context("no exit entry in the trail")?;
    let seen = exit["time_ns"].as_u64().context("time_ns")?;
    let latency = Duration::from_nanos(seen.saturating_sub(printed));
    report(format_args!(
        "[qemu] exit detected {:.0} ms after the cell's last instruction ({})",
        latency.as_secs_f64() * 1000.0,
        exit["detail"]
    ));
    ensure!(latency < Duration::from_secs(1), "exit seen after {latency:?}");
    ensure!(exit["detail"].as_str().unwrap_or("").contains("status 4"), "{exit}");
    Ok(())
}

fn steppps_from_ebpf(g: &Guest) -> Result<()> {
    let path = cell(
        g,
        "ticker",
        "exec = [\"/bin/sh\", \"-c\", \"while :; do /bin/true; sleep 0.05; done\"]\n[lifecycle]\nidle-timeout = \"0\"",
    )?;
    let info = run(g, &path)?;
    let id = info["instance"].as_str().context("instance")?.to_owned();
    let f = eventually("TIME and EVENT figures of the ticker", Duration::from_secs(60), || {
        let f: serde_json::Value = serde_json::from_str(&g.run_ok("quantumctl steppps --json")?)?;
        if let Some(why) = f["time"]["unavailable"].as_str() {
            anyhow::bail!("TIME unavailable under quantumd.service: {why}");
        }
        let samples = f["time"]["cells"][&id]["samples"].as_u64().unwrap_or(0);
        let execs = f["event"]["cells"][&id]["exec"].as_u64().unwrap_or(0);
        Ok((samples > 0 && execs > 0).then_some(f))
    })?;
    ensure!(
        f["cells"][&id]["readings"]["pids-current"].as_u64().unwrap_or(0) >= 1,
        "{}",
        f["cells"]
    );
    let caps = g.run_ok("grep CapEff /proc/$(systemctl show -P MainPID quantumd.service)/status")?;
    report(format_args!(
        "[qemu] quantumd ({}) sees {} run-queue samples and {} execs of {id} in a second",
        caps.trim(),
        f["time"]["cells"][&id]["samples"],
        f["event"]["cells"][&id]["exec"]
    ));
    g.run_ok("quantumctl stop ticker")?;
    Ok(())
}

fn objective_raises_weight(g: &Guest) -> Result<()> {
    // Two spinners keep every CPU busy; the eager cell wakes every 5 ms
    // and wants 99 % of its waits for a CPU under 50 µs.
    let spinner = cell(
        g,
        "busy",
        "exec = [\"/bin/sh\", \"-c\", \"while :; do :; done\"]\n[resources]\ncpu-max = 1.0\n[lifecycle]\nidle-timeout = \"0\"",
    )?;
    let eager = cell(
        g,
        "eager",
        "exec = [\"/bin/sh\", \"-c\", \"while :; do sleep 0.005; done\"]\n[resources]\ncpu-min = 0.1\n\
         [objectives]\nrunq-latency-p99 = \"50us\"\n[lifecycle]\nidle-timeout = \"0\"",
    )?;
    run(g, &spinner)?;
    run(g, &spinner)?;
    let info = run(g, &eager)?;
    let unit = info["unit"].as_str().context("unit")?.to_owned();
    let weight = |g: &Guest| -> Result<u64> { Ok(g.run_ok(&format!("systemctl show -P CPUWeight {unit}"))?.trim().parse()?) };
    let raised = eventually("the eager cell's CPUWeight to be raised", Duration::from_secs(60), || {
        Ok(Some(weight(g)?).filter(|w| *w > 10))
    })?;
    let file = g.run_ok(&format!("cat {}/cpu.weight", cgroup(&unit)))?;
    let tunes: Vec<serde_json::Value> = trail_of(g, "eager")?.into_iter().filter(|e| e["action"] == "tune").collect();
    report(format_args!(
        "[qemu] eager cell's CPUWeight raised to {raised} (cpu.weight {}); {} tune entries, first: {}",
        file.trim(),
        tunes.len(),
        tunes.first().map(|e| e["detail"].to_string()).unwrap_or_default()
    ));
    ensure!(!tunes.is_empty() && tunes.iter().all(|e| e["ok"] == true), "{tunes:#?}");
    // The first step starts from the manifest's weight (cpu-min 0.1 is
    // CPUWeight 10); it may come before the first look at the unit, so the
    // trail is what shows it.
    let first = tunes[0]["detail"].as_str().unwrap_or("");
    ensure!(
        first.contains("CPUWeight 10 -> "),
        "cpu-min 0.1 must start at CPUWeight 10: {first}"
    );
    ensure!(raised <= 100, "above the ceiling of ten times the manifest weight: {raised}");
    g.run_ok("quantumctl stop busy eager")?;
    Ok(())
}

/// `[state] subvolume = true` under systemd: quantumd (unprivileged) has a
/// root helper unit make the state a btrfs subvolume in /var/lib/private,
/// systemd hands it to each run's dynamic user as StateDirectory=, and
/// snapshot/rollback go through the same helper. /var/lib/private/quantum-cells
/// is a btrfs image made on the host (the guest has no btrfs-progs).
fn stateful_cell_on_btrfs(g: &Guest) -> Result<()> {
    let img = g.share().join("cells.img");
    std::fs::File::create(&img).and_then(|f| f.set_len(256 << 20))?;
    let host = |cmd: &mut std::process::Command| -> Result<()> {
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    host(std::process::Command::new("mkfs.btrfs").arg("-q").arg(&img))?;
    host(std::process::Command::new("zstd").args(["-q", "-f", "--rm"]).arg(&img))?;
    g.run_ok(&format!(
        "modprobe btrfs && zstd -dqf {GUEST_SHARE}/cells.img.zst -o /var/tmp/cells.img && \
         mkdir -p /var/lib/private && chmod 0700 /var/lib/private && mkdir -p /var/lib/private/quantum-cells && \
         mount -o loop /var/tmp/cells.img /var/lib/private/quantum-cells"
    ))?;
    let path = cell(
        g,
        "keeper",
        "exec = [\"/bin/sh\", \"-c\", \"echo run >> $STATE_DIRECTORY/runs; id -u >> $STATE_DIRECTORY/uids; exec sleep 600\"]\n\
         [resources]\nmemory-min = \"0\"\n[state]\nsubvolume = true",
    )?;
    let state = "/var/lib/private/quantum-cells/keeper";
    let runs = |n: usize| -> Result<String> {
        let info = run(g, &path)?;
        let id = info["instance"].as_str().context("id")?.to_owned();
        eventually(
            &format!("run {n} of the keeper to write its state"),
            Duration::from_secs(60),
            || {
                let out = g.run(&format!("wc -l < {state}/current/runs"))?;
                Ok((out.stdout.trim() == n.to_string()).then_some(()))
            },
        )?;
        Ok(id)
    };
    let first = runs(1)?;
    let inode = g.run_ok(&format!("stat -c %i {state}/current"))?;
    ensure!(inode.trim() == "256", "the state is not a subvolume root (inode {})", inode.trim());
    let uid: u32 = g.run_ok(&format!("tail -n1 {state}/current/uids"))?.trim().parse()?;
    ensure!(uid >= 61184, "the keeper ran as uid {uid}, not a dynamic user");
    let taken = g.run_ok("quantumctl cell snapshot keeper one")?;
    ensure!(taken.contains("(btrfs subvolume)"), "{taken}");
    g.run_ok(&format!("quantumctl stop {first}"))?;

    let second = runs(2)?;
    let refused = g.run("quantumctl cell rollback keeper one")?;
    ensure!(
        !refused.success() && refused.stderr.contains("stop it first"),
        "rollback while running: {refused}"
    );
    g.run_ok(&format!("quantumctl stop {second}"))?;
    g.run_ok(&format!("quantumctl cell rollback {path} one"))?;
    let after = g.run_ok(&format!("wc -l < {state}/current/runs"))?;
    ensure!(after.trim() == "1", "after the rollback the state has {} runs", after.trim());
    // The rolled-back copy is handed to the next run's user like the original.
    let third = runs(2)?;
    g.run_ok(&format!("quantumctl stop {third}"))?;

    let trail = trail_of(g, "keeper")?;
    let state_entries: Vec<String> = trail
        .iter()
        .filter(|e| e["action"] == "state")
        .map(|e| format!("{} {}", e["detail"].as_str().unwrap_or(""), e["ok"]))
        .collect();
    ensure!(
        state_entries == ["snapshot one true", "rollback one false", "rollback one true"],
        "state entries in the trail: {state_entries:?}"
    );
    let helpers = g.run_ok("systemctl list-units --all --plain --no-legend 'quantum-cellstate-*'")?;
    ensure!(helpers.trim().is_empty(), "helper units left behind: {helpers}");
    report(format_args!(
        "[qemu] stateful cell: subvolume state kept across 3 runs, snapshot and rollback by the root helper"
    ));
    g.run_ok("umount /var/lib/private/quantum-cells && rm -f /var/tmp/cells.img")?;
    Ok(())
}

fn memory_hog(g: &Guest) -> Result<()> {
    let neighbour = cell(
        g,
        "neighbour",
        "exec = [\"/bin/sleep\", \"600\"]\n[resources]\nmemory-min = \"0\"\nmemory-max = \"32M\"",
    )?;
    let hog = cell(
        g,
        "hog",
        "exec = [\"/usr/bin/python3\", \"-c\", \"import time; b = bytearray(256 << 20); time.sleep(60)\"]\n\
         [resources]\nmemory-min = \"0\"\nmemory-max = \"64M\"\n[lifecycle]\nrestart = \"no\"",
    )?;
    let n = run(g, &neighbour)?;
    let h = run(g, &hog)?;
    let id = h["instance"].as_str().context("instance")?;
    let ended = wait_state(g, id, &["failed", "exited"], Duration::from_secs(60))?;
    ensure!(ended["state"] == "failed", "{ended}");
    ensure!(ended["reason"] == "killed by the OOM killer: memory-max reached", "{ended}");
    ensure!(g.run_ok("systemctl is-active quantumd")?.trim() == "active", "quantumd went down");
    let nid = n["instance"].as_str().context("instance")?;
    let still = entry(g, nid)?.context("neighbour gone")?;
    ensure!(
        still["state"] == "running" && still["pid"] == n["pid"],
        "neighbour disturbed: {still}"
    );
    g.run_ok("quantumctl stop neighbour")?;
    Ok(())
}

fn cpu_max(g: &Guest) -> Result<()> {
    let path = cell(
        g,
        "spinner",
        "exec = [\"/bin/sh\", \"-c\", \"while :; do :; done\"]\n[resources]\ncpu-max = 0.5\nmemory-min = \"0\"\n[lifecycle]\nidle-timeout = \"0\"",
    )?;
    let info = run(g, &path)?;
    let unit = info["unit"].as_str().context("unit")?;
    // Let it settle, then measure CPU time against wall time over 10 s.
    let out = g.run_ok(&format!(
        "sleep 2; f={cg}/cpu.stat; a=$(awk '/usage_usec/{{print $2}}' $f); t0=$(date +%s%N); sleep 10; \
         b=$(awk '/usage_usec/{{print $2}}' $f); t1=$(date +%s%N); echo $(( (b - a) * 1000 )) $(( t1 - t0 )); cat {cg}/cpu.max",
        cg = cgroup(unit)
    ))?;
    let mut lines = out.lines();
    let nums: Vec<f64> = lines
        .next()
        .context("no numbers")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let share = nums[0] / nums[1];
    let cpu_max = lines.next().unwrap_or_default();
    report(format_args!(
        "[qemu] spinner with cpu-max 0.5 used {share:.3} of a core (cpu.max {cpu_max})"
    ));
    ensure!(cpu_max == "50000 100000", "cpu.max is {cpu_max}");
    ensure!((0.45..=0.55).contains(&share), "spinner used {share:.3} cores, not 0.5 ± 10 %");
    g.run_ok("quantumctl stop spinner")?;
    Ok(())
}

fn tasks_max(g: &Guest) -> Result<()> {
    // A shell gives up at its first failed fork and takes its cgroup with
    // it; this forker counts its children and stays to be inspected.
    g.run_ok(
        "mkdir -p /run/qt && cat > /run/qt/forker.py <<'QTEOF'
import os, time
n = 0
try:
    while n < 200:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        n += 1
except OSError:
    pass
print('forked', n, flush=True)
time.sleep(300)
QTEOF",
    )?;
    let path = cell(
        g,
        "forker",
        "exec = [\"/usr/bin/python3\", \"/run/qt/forker.py\"]\n\
         [resources]\ntasks-max = 16\nmemory-min = \"0\"\n[lifecycle]\nidle-timeout = \"0\"\nrestart = \"no\"",
    )?;
    let info = run(g, &path)?;
    let cg = cgroup(info["unit"].as_str().context("unit")?);
    let (current, max, refused) = eventually("the forker to hit tasks-max", Duration::from_secs(60), || {
        let out = g.run(&format!(
            "cat {cg}/pids.current {cg}/pids.max; awk '/max/{{print $2}}' {cg}/pids.events"
        ))?;
        let v: Vec<String> = out.stdout.split_whitespace().map(str::to_owned).collect();
        Ok((v.len() == 3 && v[2] != "0").then(|| (v[0].clone(), v[1].clone(), v[2].clone())))
    })?;
    report(format_args!(
        "[qemu] forker: pids.current {current}, pids.max {max}, forks refused {refused}"
    ));
    ensure!(max == "16", "pids.max is {max}");
    ensure!(current.parse::<u32>()? <= 16, "{current} tasks");
    g.run_ok("quantumctl stop forker")?;
    Ok(())
}

fn io_weight(g: &Guest) -> Result<()> {
    let path = cell(
        g,
        "io-cell",
        "exec = [\"/bin/sleep\", \"600\"]\n[resources]\nio-weight = 300\nmemory-min = \"0\"",
    )?;
    let info = run(g, &path)?;
    let w = g.run_ok(&format!("cat {}/io.weight", cgroup(info["unit"].as_str().context("unit")?)))?;
    ensure!(w.trim() == "default 300", "io.weight is {w:?}");
    g.run_ok("quantumctl stop io-cell")?;
    Ok(())
}

fn network(g: &Guest) -> Result<()> {
    g.run_ok("systemd-run --unit=qt-lo-web -p DynamicUser=yes /usr/bin/python3 -m http.server --bind 127.0.0.1 8099 && sleep 2")?;
    let probe =
        "exec = [\"/usr/bin/python3\", \"-c\", \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8099/', timeout=5)\"]\n\
                 [resources]\nmemory-min = \"0\"\n[lifecycle]\nrestart = \"no\"\n[isolation]\nnetwork = ";
    let none = cell(g, "net-none", &format!("{probe}\"none\""))?;
    let lo = cell(g, "net-loopback", &format!("{probe}\"loopback\""))?;
    let a = run(g, &none)?;
    let b = run(g, &lo)?;
    let a = wait_state(
        g,
        a["instance"].as_str().context("id")?,
        &["failed", "exited"],
        Duration::from_secs(60),
    )?;
    let b = wait_state(
        g,
        b["instance"].as_str().context("id")?,
        &["failed", "exited"],
        Duration::from_secs(60),
    )?;
    ensure!(a["state"] == "failed", "network=none reached loopback: {a}");
    ensure!(b["state"] == "exited", "network=loopback could not reach loopback: {b}");
    g.run("systemctl stop qt-lo-web")?;
    Ok(())
}

/// `[isolation] network-allow` under systemd: quantumd pins the allow-list
/// for the unit's BPFProgram=, systemd attaches it; the listed port is
/// reached (by a name quantumd resolved), another is refused with EPERM,
/// and a cell without a list reaches both. The pins are gone afterwards.
fn network_allow(g: &Guest) -> Result<()> {
    for port in [8097, 8098] {
        g.run_ok(&format!(
            "systemd-run --unit=qt-allow-web-{port} -p DynamicUser=yes /usr/bin/python3 -m http.server --bind 127.0.0.1 {port}"
        ))?;
    }
    g.run_ok("sleep 2")?;
    // Exits 0 when connect() to `port` ends with `expect` (an errno name, or 0).
    let probe = |port: u16, expect: &str, isolation: &str| {
        format!(
            "exec = [\"/usr/bin/python3\", \"-c\", \"import socket, errno; e = socket.socket().connect_ex(('127.0.0.1', {port})); \
             raise SystemExit(0 if e == {expect} else 100 + e)\"]\n\
             [resources]\nmemory-min = \"0\"\n[lifecycle]\nrestart = \"no\"\n[isolation]\nnetwork = \"host\"\n{isolation}"
        )
    };
    let listed = "network-allow = [\"tcp:8097@localhost\"]";
    let cells = [
        ("allow-listed", probe(8097, "0", listed)),
        ("allow-other", probe(8098, "errno.EPERM", listed)),
        ("allow-open", probe(8098, "0", "")),
    ];
    for (name, body) in &cells {
        let path = cell(g, name, body)?;
        let info = run(g, &path).map_err(|e| anyhow::anyhow!("{e:#}\n{}", bpffs_facts(g)))?;
        let end = wait_state(
            g,
            info["instance"].as_str().context("id")?,
            &["failed", "exited"],
            Duration::from_secs(60),
        )?;
        ensure!(
            end["state"] == "exited",
            "{name}: {end}\n{}\n{}",
            g.run("journalctl -u quantumd -n 20 --no-pager")?.stdout,
            bpffs_facts(g)
        );
    }
    let left = g.run_ok("find /sys/fs/bpf/quantumd -mindepth 1")?;
    ensure!(left.trim().is_empty(), "pins left behind: {left}");
    g.run("systemctl stop qt-allow-web-8097 qt-allow-web-8098")?;
    report(format_args!(
        "[qemu] network-allow: listed port reached, another refused (EPERM), pins removed"
    ));
    Ok(())
}

/// security-ai under systemd: a web-server cell learns its baseline from
/// the kernel's exec events (eBPF, loaded by the unprivileged quantumd), then
/// a process that joins its cgroup and execs a shell is alerted, and so is
/// its own program connecting where it never did; a cell
/// whose allow-list refuses a connect is alerted too (the refusal counter
/// of the program systemd attached). Both read back with `quantumctl alerts`.
fn anomaly_alerts(g: &Guest) -> Result<()> {
    let web = cell(
        g,
        "alert-web",
        "exec = [\"/usr/bin/python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"8099\"]\n\
         [resources]\nmemory-min = \"0\"\n[lifecycle]\nkind = \"service\"\nrestart = \"no\"\n[isolation]\nnetwork = \"host\"\n\
         [policy]\nlearning = \"3s\"",
    )?;
    let info = run(g, &web)?;
    let instance = info["instance"].as_str().context("id")?.to_owned();
    wait_state(g, &instance, &["running"], Duration::from_secs(60))?;
    eventually("alert-web's baseline to be learned", Duration::from_secs(60), || {
        let text = g.run("cat /var/lib/quantumd/baselines/alert-web@1.0.0.json")?.stdout;
        Ok(text.contains("\"learned\": true").then_some(()))
    })?;
    let alerts = |cell: &str| -> Result<Vec<serde_json::Value>> {
        let out = g.run_ok(&format!("quantumctl alerts --cell {cell} --json"))?;
        let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    };
    ensure!(
        alerts("alert-web")?.is_empty(),
        "alerts before anything odd: {:?}",
        alerts("alert-web")?
    );

    let procs = format!("{}/cgroup.procs", cgroup(&format!("quantum-{instance}.service")));
    let injected = Instant::now();
    g.run_ok(&format!("sh -c 'echo $$ > {procs} && exec /bin/sh -c \"sleep 1; true\"'"))?;
    let alert = eventually("an exec alert for alert-web", Duration::from_secs(10), || {
        Ok(alerts("alert-web")?.into_iter().find(|a| a["kind"] == "exec"))
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n{}",
            g.run("journalctl -u quantumd -n 30 --no-pager")
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
    })?;
    let after = injected.elapsed();
    ensure!(alert["instance"] == instance.as_str(), "{alert}");
    ensure!(alert["message"].as_str().unwrap_or("").starts_with("sh (pid "), "{alert}");
    // Its own program connecting out, which it never did while learning.
    g.run_ok("cat > /run/qt/connect.py <<'QTEOF'\nimport socket\nsocket.socket().connect_ex(('127.0.0.1', 8098))\nQTEOF")?;
    g.run_ok(&format!("sh -c 'echo $$ > {procs} && exec /usr/bin/python3 /run/qt/connect.py'"))?;
    let connect = eventually("a connect alert for alert-web", Duration::from_secs(10), || {
        Ok(alerts("alert-web")?.into_iter().find(|a| a["kind"] == "connect"))
    })?;
    ensure!(
        connect["message"].as_str().unwrap_or("").contains("(tcp:8098@loopback)"),
        "{connect}"
    );

    let prober = cell(
        g,
        "alert-prober",
        "exec = [\"/usr/bin/python3\", \"-c\", \"import socket, time; socket.socket().connect_ex(('127.0.0.1', 8098)); time.sleep(600)\"]\n\
         [resources]\nmemory-min = \"0\"\n[lifecycle]\nkind = \"service\"\nrestart = \"no\"\n[isolation]\nnetwork = \"host\"\n\
         network-allow = [\"tcp:8099@127.0.0.1\"]",
    )?;
    let info = run(g, &prober)?;
    let prober_instance = info["instance"].as_str().context("id")?.to_owned();
    let refused = eventually("a network alert for alert-prober", Duration::from_secs(10), || {
        Ok(alerts("alert-prober")?.into_iter().find(|a| a["kind"] == "network"))
    })?;
    ensure!(refused["instance"] == prober_instance.as_str(), "{refused}");
    g.run_ok(&format!("quantumctl stop {instance} {prober_instance}"))?;
    report(format_args!(
        "[qemu] security-ai: injected shell alerted {:.1} s after it ran; new destination and refused connect alerted",
        after.as_secs_f64()
    ));
    Ok(())
}

/// What quantumd sees of its pin directory, for a failure's message.
fn bpffs_facts(g: &Guest) -> String {
    g.run(
        "ls -la /sys/fs/bpf; stat -f -c 'fs type %T' /sys/fs/bpf/quantumd; \
         nsenter -t $(systemctl show -P MainPID quantumd.service) -m sh -c 'findmnt -T /sys/fs/bpf/quantumd; ls -la /sys/fs/bpf/quantumd'; \
         systemctl status systemd-tmpfiles-setup.service --no-pager | tail -5",
    )
    .map(|o| format!("{}{}", o.stdout, o.stderr))
    .unwrap_or_default()
}

fn dynamic_user(g: &Guest) -> Result<()> {
    g.run_ok("mkdir -p /srv/qt-writable && chmod 0777 /srv/qt-writable && rm -f /srv/qt-writable/ok")?;
    let path = cell(
        g,
        "confined",
        "exec = [\"/bin/sh\", \"-c\", \"ls /var/lib/quantumd >/dev/null 2>&1 && exit 10; touch /etc/qt-escape 2>/dev/null && exit 11; \
         touch /var/tmp/qt-escape 2>/dev/null && [ -e /var/tmp/qt-escape ] && ls / >/dev/null; touch /srv/qt-writable/ok || exit 12; id -u > /srv/qt-writable/ok\"]\n\
         [resources]\nmemory-min = \"0\"\n[lifecycle]\nrestart = \"no\"\n[isolation]\nwritable = [\"/srv/qt-writable\"]",
    )?;
    let info = run(g, &path)?;
    let end = wait_state(
        g,
        info["instance"].as_str().context("id")?,
        &["failed", "exited"],
        Duration::from_secs(60),
    )?;
    ensure!(end["state"] == "exited", "confined cell: {end}");
    let uid: u32 = g.run_ok("cat /srv/qt-writable/ok")?.trim().parse()?;
    ensure!(uid >= 61184, "the cell ran as uid {uid}, not a dynamic user");
    ensure!(!g.run("test -e /etc/qt-escape")?.success(), "the cell wrote to /etc");
    Ok(())
}

fn children(g: &Guest) -> Result<()> {
    g.run_ok(
        "mkdir -p /run/qt/pool/worker && cat > /run/qt/pool/worker/cell.toml <<'QTEOF'
[cell]
name = \"worker\"
version = \"1.0.0\"
description = \"a worker\"
exec = [\"/bin/sleep\", \"600\"]
[resources]
cpu-max = 0.25
memory-min = \"0\"
memory-max = \"64M\"
tasks-max = 8
QTEOF",
    )?;
    let parent = cell(
        g,
        "pool",
        "exec = [\"/bin/sleep\", \"600\"]\n[resources]\ncpu-max = 1.0\nmemory-min = \"0\"\nmemory-max = \"256M\"\ntasks-max = 32\n\
         [[child]]\nname = \"worker\"\nmanifest = \"worker/cell.toml\"\ncount = 2",
    )?;
    let info = run(g, &parent)?;
    let id = info["instance"].as_str().context("id")?.to_owned();
    let family = format!("/sys/fs/cgroup/quantum.slice/quantum-{id}.slice");
    let units = g.run_ok(&format!("ls -d {family}/*.service | xargs -n1 basename; cat {family}/memory.max"))?;
    let lines: Vec<&str> = units.lines().collect();
    ensure!(lines.len() == 4, "family slice holds {lines:?}");
    ensure!(
        lines[..3].iter().filter(|u| u.starts_with("quantum-worker.")).count() == 2,
        "{lines:?}"
    );
    ensure!(
        lines[3] == "268435456",
        "the family slice does not carry the parent's memory-max: {}",
        lines[3]
    );
    g.run_ok("quantumctl stop pool")?;
    ensure!(!g.run(&format!("test -e {family}"))?.success(), "family slice left after stop");
    let left = g.run_ok("systemctl list-units --plain --no-legend 'quantum-worker.*'")?;
    ensure!(left.trim().is_empty(), "children left: {left}");
    Ok(())
}

fn idle_timeout(g: &Guest) -> Result<()> {
    let path = cell(
        g,
        "idler",
        "exec = [\"/bin/sleep\", \"600\"]\n[resources]\nmemory-min = \"0\"\n[lifecycle]\nidle-timeout = \"5s\"",
    )?;
    let info = run(g, &path)?;
    let end = wait_state(g, info["instance"].as_str().context("id")?, &["stopped"], Duration::from_secs(60))?;
    ensure!(end["reason"] == "idle for 5s", "{end}");
    Ok(())
}

/// The example channel pair's manifests (quantum-cell-echo), small enough
/// for hundreds at once: the server gets a thread per stream.
const CH_LIMITS: &str = "[resources]\nmemory-min = \"0\"\nmemory-max = \"16M\"\ntasks-max = 8\n";

fn ch_server(g: &Guest) -> Result<String> {
    cell(
        g,
        "ch-server",
        &format!(
            "exec = [\"/usr/bin/quantum-cell-echo\", \"serve\", \"echo\"]\n{CH_LIMITS}\
             [lifecycle]\nkind = \"service\"\nrestart = \"no\"\nidle-timeout = \"0\"\n[provides]\nchannels = [\"echo\"]"
        ),
    )
}

fn ch_client(g: &Guest, name: &str, args: &[&str]) -> Result<String> {
    let argv: Vec<String> = std::iter::once("/usr/bin/quantum-cell-echo")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    cell(
        g,
        name,
        &format!(
            "exec = {argv:?}\n{CH_LIMITS}[lifecycle]\nkind = \"task\"\nrestart = \"no\"\nidle-timeout = \"0\"\n[uses]\nchannels = [\"ch-server/echo\"]"
        ),
    )
}

fn channel_table(g: &Guest) -> Result<serde_json::Value> {
    let out = g.run_ok("quantumctl channels --json")?;
    serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
}

/// Cell 0 IPC under systemd: the broker socket from
/// quantumd-channels.socket, the token as a LoadCredential=, dynamic users
/// on both sides, the unprivileged quantumd checking the asker's cgroup.
fn channels(g: &Guest) -> Result<()> {
    let server = ch_server(g)?;
    let ping = ch_client(g, "ch-ping", &["ping", "ch-server/echo", "500", "64"])?;
    let forger = ch_client(g, "ch-forger", &["probe", "ch-server/echo", "forged"])?;
    let holder = ch_client(g, "ch-holder", &["ping", "ch-server/echo", "5", "64", "--until-closed"])?;
    let srv = run(g, &server)?["instance"].as_str().context("id")?.to_owned();
    eventually("ch-server to listen", Duration::from_secs(60), || {
        let t = channel_table(g)?;
        Ok(t["listening"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["instance"] == srv.as_str()))
            .then_some(()))
    })?;

    let out = g.run_with_timeout(&format!("quantumctl run {ping}"), Duration::from_secs(120))?;
    ensure!(out.success(), "the pinging cell failed: {out}");
    let figures: serde_json::Value = serde_json::from_str(out.stdout.trim()).with_context(|| format!("no figures: {out}"))?;
    ensure!(figures["round_trips"] == 500, "{figures}");
    report(format_args!(
        "[qemu] channels: 500 round trips of 64 bytes between two cells: {} msgs/s, p50 {} us, p99 {} us (TCG)",
        figures["msgs_per_s"], figures["p50_us"], figures["p99_us"]
    ));

    let out = g.run_with_timeout(&format!("quantumctl run {forger}"), Duration::from_secs(120))?;
    ensure!(out.success(), "{out}");
    ensure!(
        out.stdout.starts_with("refused: the token does not verify"),
        "a forged token was not refused: {out}"
    );
    let trail = g.run_ok("quantumctl trail show --cell ch-forger --json")?;
    ensure!(trail.contains("refused: ch-forger."), "the refusal is not in the trail: {trail}");

    let held = run(g, &holder)?["instance"].as_str().context("id")?.to_owned();
    eventually("the holder's stream", Duration::from_secs(60), || {
        let t = channel_table(g)?;
        Ok(t["streams"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["consumer"] == held.as_str()))
            .then_some(()))
    })?;
    let said = g.run_ok(&format!("quantumctl channels revoke {held}"))?;
    ensure!(said.contains("1 open stream closed"), "{said}");
    wait_state(g, &held, &["exited", "failed"], Duration::from_secs(30))?;
    let logs = g.run_ok(&format!("quantumctl logs {held}"))?;
    ensure!(logs.contains(&format!("the stream to {srv} was closed")), "{logs}");
    g.run_ok(&format!("quantumctl stop {srv}"))?;
    Ok(())
}

/// 256 cells at once, talking in pairs: 128 echo servers and 128 clients,
/// each client keeping a stream of its own open (round robin gives every
/// server one); then all stop.
fn many_cells(g: &Guest) -> Result<()> {
    let server = ch_server(g)?;
    let pair = ch_client(g, "ch-pair", &["ping", "ch-server/echo", "20", "64", "--until-closed"])?;
    let started = Instant::now();
    for path in [&server, &pair] {
        let out = g.run_with_timeout(
            &format!("seq 128 | xargs -P 16 -I{{}} quantumctl run {path} --json >/dev/null 2>/run/qt/many.err; echo $?; tail -n 5 /run/qt/many.err"),
            Duration::from_secs(600),
        )?;
        ensure!(out.stdout.starts_with("0\n"), "some starts of {path} failed: {out}");
    }
    let running = g.run_ok("systemctl list-units --plain --no-legend --state=active 'quantum-ch-*' | wc -l")?;
    let known = g.run_ok("quantumctl list --json | python3 -c 'import json,sys; print(sum(c[\"state\"] == \"running\" and c[\"cell\"].startswith(\"ch-\") for c in json.load(sys.stdin)))'")?;
    report(format_args!(
        "[qemu] 256 cells (128 channel servers, 128 clients) started in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    ensure!(running.trim() == "256", "systemd runs {} ch- cells", running.trim());
    ensure!(known.trim() == "256", "quantumd knows {} running ch- cells", known.trim());
    let streams = eventually("128 open streams", Duration::from_secs(300), || {
        let t = channel_table(g)?;
        let s = t["streams"].as_array().cloned().unwrap_or_default();
        Ok((s.len() == 128).then_some(s))
    })?;
    let served: std::collections::BTreeSet<&str> = streams.iter().filter_map(|s| s["provider"].as_str()).collect();
    ensure!(served.len() == 128, "{} servers got a client", served.len());
    report(format_args!(
        "[qemu] channels: 256 cells talking in 128 pairs {:.1} s after the first start",
        started.elapsed().as_secs_f64()
    ));
    // Stopping the servers ends their streams; the clients then end.
    let stop = g.run_with_timeout("quantumctl stop ch-server | tr ',' '\\n' | wc -l", Duration::from_secs(600))?;
    ensure!(stop.success() && stop.stdout.trim() == "128", "stop: {stop}");
    eventually("the clients to end with their streams", Duration::from_secs(300), || {
        let left = g.run_ok("systemctl list-units --all --plain --no-legend 'quantum-ch-*' | wc -l")?;
        Ok((left.trim() == "0").then_some(()))
    })?;
    Ok(())
}

/// The PROMPT path end to end: plain words -> quantumd's intent engine (the
/// real model, installed in the image) -> a plan -> confirmed with --yes ->
/// the web-server cell runs and answers HTTP.
fn ask_serves_a_folder(g: &Guest) -> Result<()> {
    g.run_ok("mkdir -p /srv/www && echo 'hello from a plan' > /srv/www/index.html")?;
    // The model loads in the background after READY; under TCG that (and
    // embedding the catalog the first time) takes a while.
    let status = eventually("quantumd to report its intent model", Duration::from_secs(600), || {
        let s = g.run_ok("systemctl show -P StatusText quantumd.service")?;
        Ok((s.contains("intent model loaded") || s.contains("no intent model")).then_some(s))
    })?;
    ensure!(status.contains("intent model loaded in"), "STATUS= says: {status}");
    report(format_args!("[qemu] quantumd STATUS= {}", status.trim()));
    let out = g.run_with_timeout("quantumctl ask --yes 'serve /srv/www on port 8080'", Duration::from_secs(300))?;
    ensure!(out.success(), "ask --yes failed: {out}");
    ensure!(out.stdout.contains("1. web-server"), "not the web-server plan: {out}");
    ensure!(out.stdout.contains("started web-server."), "nothing started: {out}");
    let body = eventually("the planned web server to answer", Duration::from_secs(120), || {
        let r = g.run(
            "python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8080/index.html',timeout=2).read().decode(),end='')\"",
        )?;
        Ok(r.success().then_some(r.stdout))
    })?;
    ensure!(body == "hello from a plan\n", "the web server answered {body:?}");
    g.run_ok("quantumctl stop web-server")?;
    Ok(())
}
