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

/// Writes /run/qtest/NAME/cell.toml in the guest: a cell running `script`
/// under /bin/sh, with `extra` (more tables) after `[cell]`.
fn write_cell(g: &Guest, name: &str, description: &str, script: &str, extra: &str) -> Result<()> {
    g.run_ok(&format!(
        "mkdir -p /run/qtest/{name} && cat > /run/qtest/{name}/cell.toml <<'EOF'\n\
         [cell]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"{description}\"\n\
         exec = [\"/bin/sh\", \"-c\", {script:?}]\n{extra}\nEOF"
    ))?;
    Ok(())
}

pub fn crash_then_blacklist(g: &Guest) -> Result<()> {
    write_cell(
        g,
        "crasher",
        "exits with status 3",
        "exit 3",
        "[lifecycle]\nrestart = \"on-failure\"\nmax-restarts = 2\nrestart-window = \"1m\"",
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
        // Units still activating count too, and so do units whose start
        // job is still queued (inactive, JOB "start"): what matters is that
        // quantumd and systemd agree on the set (under TCG some units
        // started just before the kill were seen to linger in "activating"
        // for seconds, and one to get its start job run only after the new
        // quantumd had looked).
        .run_ok(
            "systemctl list-units --all --plain --no-legend 'quantum-system-monitor.*' \
             | awk '$3 == \"active\" || $3 == \"activating\" || $5 == \"start\" {print $1}'",
        )?
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

/// quantumctl as `quantum`, exec'd in place (no runuser in between), so
/// that a signal sent to the pid reaches quantumctl itself. (Started with
/// `&` alone: `a && b &` would background a subshell, and $! be its pid.)
fn as_quantum_exec(cmd: &str) -> String {
    format!("setpriv --reuid quantum --regid quantum --init-groups -- {cmd}")
}

/// A task run in the foreground under systemd: its exact output reaches the
/// caller through the descriptors passed to systemd, and its exit status
/// becomes quantumctl's; a catalog task shows its answer.
pub fn foreground_task(g: &Guest) -> Result<()> {
    write_cell(
        g,
        "reporter",
        "prints two lines and a complaint, then fails",
        "printf 'line one\\nline two\\n'; echo complaint >&2; exit 4",
        "[lifecycle]\nkind = \"task\"\nrestart = \"on-failure\"",
    )?;
    let out = g.run(&as_quantum("quantumctl run /run/qtest/reporter/cell.toml"))?;
    ensure!(out.code == 4, "quantumctl did not exit with the cell's status 4: {out}");
    ensure!(
        out.stdout == "line one\nline two\n",
        "the cell's output is not exactly what it printed: {out}"
    );
    ensure!(out.stderr.starts_with("complaint\n"), "{out}");
    // Instance numbers are per node: earlier scenarios used some.
    ensure!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("quantumctl: reporter.") && l.ends_with(" exited with status 4")),
        "{out}"
    );
    let restarts = g.run_ok("quantumctl trail show --cell reporter --json")?;
    ensure!(!restarts.contains("\"restart\""), "a foreground task was restarted: {restarts}");

    // A catalog task, as a person types it: its answer is on the terminal.
    let out = g.run(&as_quantum("quantumctl run disk-usage path=/var"))?;
    ensure!(out.success(), "{out}");
    ensure!(
        out.stdout.lines().any(|l| l.ends_with("/var")),
        "no total for /var in the output: {out}"
    );
    quantum_vmtest::report(format_args!(
        "[{}] quantumctl run disk-usage path=/var:\n{}",
        g.backend().name(),
        out.stdout.trim_end()
    ));
    Ok(())
}

/// Ctrl-C on a foreground task stops its unit; quantumctl exits 130.
pub fn ctrl_c_stops_a_foreground_task(g: &Guest) -> Result<()> {
    write_cell(
        g,
        "napper",
        "says so, then sleeps",
        "echo napping; exec sleep 600",
        "[lifecycle]\nkind = \"task\"",
    )?;
    let out = g.run_ok(&format!(
        "cd /run/qtest; {} > napper.out 2> napper.err & pid=$!
         for i in $(seq 600); do grep -q napping /run/qtest/napper.out && break; sleep 0.1; done
         systemctl list-units --plain --no-legend --state=active 'quantum-napper.*' | wc -l
         kill -INT $pid; wait $pid; echo rc=$?
         cat /run/qtest/napper.err",
        as_quantum_exec("quantumctl run /run/qtest/napper/cell.toml")
    ))?;
    ensure!(out.starts_with("1\nrc=130\n"), "{out}");
    ensure!(out.contains("quantumctl: stopped napper."), "{out}");
    let left = g.run_ok("systemctl list-units --all --plain --no-legend 'quantum-napper.*'")?;
    ensure!(left.trim().is_empty(), "the unit outlived Ctrl-C:\n{left}");
    Ok(())
}

/// `quantumctl logs` under systemd: quantumd reads the journal for a member
/// of `quantum` who cannot read it (no adm, no systemd-journal); an outsider
/// is refused; `-f` follows a service and ends when it stops.
pub fn logs_through_quantumd(g: &Guest) -> Result<()> {
    let groups = g.run_ok("id -nG quantum")?;
    ensure!(
        !groups.split_whitespace().any(|gr| gr == "adm" || gr == "systemd-journal"),
        "quantum may read the journal itself ({groups}): the test would prove nothing"
    );
    let info: serde_json::Value = serde_json::from_str(&g.run_ok(&as_quantum("quantumctl run --json disk-usage path=/var"))?)?;
    let id = info["instance"].as_str().context("no instance in run --json")?.to_owned();
    eventually("the detached disk-usage to end", Duration::from_secs(60), || {
        let list: serde_json::Value = serde_json::from_str(&g.run_ok("quantumctl list --json")?)?;
        Ok(list
            .as_array()
            .and_then(|a| a.iter().find(|c| c["instance"] == id.as_str() && c["state"] == "exited"))
            .map(|_| ()))
    })?;
    let logs = g.run_ok(&as_quantum(&format!("quantumctl logs {id}")))?;
    ensure!(logs.lines().any(|l| l.ends_with("/var")), "no total for /var in the logs: {logs:?}");
    let recent = g.run_ok(&as_quantum(&format!("quantumctl logs --since 1h {id}")))?;
    ensure!(recent == logs, "--since 1h lost lines: {recent:?} of {logs:?}");
    let last = g.run_ok(&as_quantum(&format!("quantumctl logs -n 1 {id}")))?;
    ensure!(
        last.lines().count() == 1 && logs.ends_with(&last),
        "-n 1 is not the last line: {last:?} of {logs:?}"
    );

    g.run_ok("id outsider >/dev/null 2>&1 || useradd --no-create-home outsider")?;
    let refused = g.run(&format!("runuser -u outsider -- quantumctl logs {id}"))?;
    ensure!(refused.code == 1, "an outsider read another user's cell output: {refused}");
    ensure!(refused.stderr.contains("not authorized"), "{refused}");

    write_cell(
        g,
        "ticker",
        "ticks, then sleeps",
        "for i in 1 2 3; do echo tick $i; sleep 0.2; done; exec sleep 600",
        "",
    )?;
    g.run_ok(&as_quantum("quantumctl run /run/qtest/ticker/cell.toml"))?;
    let out = g.run_ok(&format!(
        "cd /run/qtest; {} > ticker.out 2>&1 & pid=$!
         for i in $(seq 600); do grep -q 'tick 3' ticker.out && break; sleep 0.1; done
         kill -0 $pid && echo following
         runuser -u quantum -- quantumctl stop ticker >/dev/null
         for i in $(seq 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
         kill -0 $pid 2>/dev/null && echo still-following
         wait $pid; echo rc=$?; cat ticker.out",
        as_quantum("quantumctl logs -f ticker")
    ))?;
    ensure!(out.starts_with("following\nrc=0\ntick 1\ntick 2\ntick 3\n"), "{out}");
    Ok(())
}

/// quantumctl reaches quantumd on its direct socket (quantumd.socket,
/// /run/quantumd.sock), without dbus-daemon in between: a member of
/// `quantum` runs a cell there with no bus to fall back on, polkit
/// deciding on the process the kernel named; a user outside `quantum`
/// cannot open the socket, falls back to the bus, may look and is refused
/// a run, as before.
pub fn direct_socket(g: &Guest) -> Result<()> {
    let mode = g.run_ok("stat -c '%U:%G %a %F' /run/quantumd.sock")?;
    ensure!(mode.trim() == "root:quantum 660 socket", "/run/quantumd.sock is {mode}");
    let served = g.run_ok("journalctl -b -u quantumd --no-pager -o cat | grep -c 'direct socket' || true")?;
    ensure!(served.trim() != "0", "quantumd did not say it serves the direct socket");
    write_cell(
        g,
        "direct",
        "says where it was started from",
        "echo started over the socket",
        "[lifecycle]\nkind = \"task\"\nrestart = \"no\"",
    )?;
    // No bus at all for this client: only the socket can answer.
    let no_bus = "env QUANTUM_BUS_ADDRESS=unix:path=/nonexistent QUANTUM_SOCKET=/run/quantumd.sock";
    let out = g.run(&as_quantum_exec(&format!("{no_bus} quantumctl run /run/qtest/direct/cell.toml")))?;
    ensure!(
        out.code == 0 && out.stdout == "started over the socket\n",
        "a quantum member's run over the socket: {out}"
    );
    let uid = g.run_ok("id -u quantum")?;
    let trail: serde_json::Value = serde_json::from_str(&g.run_ok("quantumctl trail show --cell direct --json")?)?;
    let actors: Vec<&str> = trail
        .as_array()
        .context("trail")?
        .iter()
        .filter(|e| e["action"] == "run")
        .filter_map(|e| e["actor"].as_str())
        .collect();
    ensure!(actors == [format!("uid:{}", uid.trim())], "the run's actor: {actors:?}");

    g.run_ok("id outsider >/dev/null 2>&1 || useradd --no-create-home outsider")?;
    let denied = g.run(&format!(
        "setpriv --reuid outsider --regid outsider --init-groups -- {no_bus} quantumctl list"
    ))?;
    ensure!(denied.code == 2, "an outsider opened the direct socket: {denied}");
    let looked = g.run("runuser -u outsider -- quantumctl list --json")?;
    ensure!(looked.code == 0, "an outsider cannot list over the bus: {looked}");
    let refused = g.run("runuser -u outsider -- quantumctl run /run/qtest/direct/cell.toml")?;
    ensure!(
        refused.code == 1 && refused.stderr.contains("not authorized"),
        "an outsider's run: {refused}"
    );
    Ok(())
}

/// quantumd reaches systemd through quantumd-gate (systemd's private
/// socket, filtered) and says so; the gate's socket is quantumd's alone;
/// through the gate quantumd cannot stop a unit that is not a cell, and
/// over the bus polkit no longer lets it manage units at all. `systemctl
/// daemon-reexec` closes the gate's connection to systemd: quantumd is
/// restarted and cells run again. The gate's unit rates <= 2.0 in
/// `systemd-analyze security`.
pub fn systemd_gate(g: &Guest) -> Result<()> {
    let backend = g.run_ok("busctl get-property org.quantumos.Quantum1 /org/quantumos/Quantum1 org.quantumos.Quantum1 Backend")?;
    ensure!(backend.contains("systemd (through quantumd-gate)"), "quantumd's backend: {backend}");
    let mode = g.run_ok("stat -c '%U:%G %a %F' /run/quantumd-gate.sock")?;
    ensure!(mode.trim() == "quantumd:quantumd 600 socket", "/run/quantumd-gate.sock is {mode}");

    g.run_ok("systemd-run --quiet --unit qtest-bystander.service sleep 600")?;
    let as_quantumd = "setpriv --reuid quantumd --regid quantumd --init-groups --";
    let stop = "call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager \
                StopUnit ss qtest-bystander.service replace";
    let through_gate = g.run(&format!("{as_quantumd} busctl --address=unix:path=/run/quantumd-gate.sock {stop}"))?;
    ensure!(
        !through_gate.success(),
        "quantumd stopped another unit through the gate: {through_gate}"
    );
    let refusals = g.run_ok("journalctl -b -u quantumd-gate --no-pager -o cat | grep -c 'refused a call' || true")?;
    ensure!(refusals.trim() != "0", "the gate logged no refusal");
    let on_bus = g.run(&format!("{as_quantumd} busctl --no-ask-password {stop}"))?;
    ensure!(!on_bus.success(), "polkit let quantumd stop another unit over the bus: {on_bus}");
    let outsider = g.run(&as_quantum(&format!("busctl --address=unix:path=/run/quantumd-gate.sock {stop}")))?;
    ensure!(!outsider.success(), "a quantum member used the gate: {outsider}");
    let state = g.run("systemctl is-active qtest-bystander.service")?;
    ensure!(state.stdout.trim() == "active", "the bystander unit is {state}");
    g.run_ok("systemctl stop qtest-bystander.service")?;

    let (level, line) = g.exposure("quantumd-gate.service")?;
    ensure!(level <= 2.0, "{line}");

    let before = g.run_ok("systemctl show -P MainPID quantumd.service")?;
    g.run_ok("systemctl daemon-reexec")?;
    eventually("quantumd to be restarted after daemon-reexec", Duration::from_secs(120), || {
        let pid = g.run_ok("systemctl show -P MainPID quantumd.service")?;
        let active = g.run("systemctl is-active quantumd.service")?;
        Ok((pid.trim() != before.trim() && pid.trim() != "0" && active.stdout.trim() == "active").then_some(()))
    })?;
    write_cell(
        g,
        "gated",
        "runs after systemd was re-executed",
        "echo ran after a reexec",
        "[lifecycle]\nkind = \"task\"\nrestart = \"no\"",
    )?;
    let out = g.run(&as_quantum("quantumctl run /run/qtest/gated/cell.toml"))?;
    ensure!(
        out.code == 0 && out.stdout == "ran after a reexec\n",
        "a run after daemon-reexec: {out}"
    );
    Ok(())
}

/// The cell the trigger scenarios run: /run/qtest/marker/cell.toml, a task.
fn write_marker(g: &Guest) -> Result<()> {
    write_cell(
        g,
        "marker",
        "runs when a trigger fires",
        "echo fired",
        "[lifecycle]\nkind = \"task\"\nrestart = \"no\"",
    )
}

/// Writes /run/qtest/NAME.toml, a trigger that runs `cell` with `when`
/// (one `on-*` line), and adds it as a `quantum` member.
fn add_trigger(g: &Guest, name: &str, cell: &str, when: &str) -> Result<String> {
    g.run_ok(&format!(
        "mkdir -p /run/qtest && cat > /run/qtest/{name}.toml <<'EOF'\n\
         [trigger]\nname = \"{name}\"\ncell = \"{cell}\"\n{when}\nEOF"
    ))?;
    g.run_ok(&as_quantum(&format!("quantumctl trigger add /run/qtest/{name}.toml")))
}

/// `quantumctl trigger list --json`'s entry for `name`.
fn trigger(g: &Guest, name: &str) -> Result<Option<serde_json::Value>> {
    let list: serde_json::Value = serde_json::from_str(&g.run_ok("quantumctl trigger list --json")?)?;
    Ok(list.as_array().and_then(|a| a.iter().find(|t| t["name"] == name).cloned()))
}

/// Waits until trigger `name` has fired `times` and its last firing
/// started an instance of `cell`.
fn fired(g: &Guest, name: &str, times: u64, cell: &str) -> Result<serde_json::Value> {
    eventually(&format!("trigger {name} to fire {times} time(s)"), Duration::from_secs(60), || {
        Ok(trigger(g, name)?.filter(|t| {
            t["fired"].as_u64() >= Some(times)
                && t["last_result"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(&format!("started {cell}.")))
        }))
    })
}

/// Path and calendar triggers are systemd path and timer units, armed
/// through the gate: a file appearing in a directory runs a cell, a
/// calendar runs one every few seconds, both survive a restart of quantumd,
/// and removing them removes their units.
pub fn triggers_through_systemd(g: &Guest) -> Result<()> {
    write_marker(g)?;
    let cell = "/run/qtest/marker/cell.toml";
    g.run_ok("mkdir -p /var/tmp/qtest-inbox")?;

    let added = add_trigger(g, "inbox", cell, "on-path-changed = \"/var/tmp/qtest-inbox\"")?;
    ensure!(added.contains("by systemd (quantum-trigger-inbox.path)"), "{added}");
    let state = g.run("systemctl is-active quantum-trigger-inbox.path")?;
    ensure!(state.stdout.trim() == "active", "the path unit is {state}");
    g.run_ok("echo hello > /var/tmp/qtest-inbox/new-file")?;
    let t = fired(g, "inbox", 1, "marker")?;
    ensure!(t["added_by"].as_str().is_some_and(|a| a.starts_with("uid:")), "{t}");
    let trail: serde_json::Value = serde_json::from_str(&g.run_ok("quantumctl trail show -n 0 --json")?)?;
    let entries = trail.as_array().context("the trail is not a list")?;
    ensure!(
        entries
            .iter()
            .any(|e| e["actor"] == "trigger:inbox" && e["detail"] == "fire inbox: /var/tmp/qtest-inbox changed"),
        "the trail has no firing of inbox by trigger:inbox"
    );
    ensure!(
        entries.iter().any(|e| e["actor"] == "trigger:inbox" && e["action"] == "run"),
        "the trail has no run by trigger:inbox"
    );

    add_trigger(g, "tick", cell, "on-calendar = \"*:*:0/5\"")?;
    let t = fired(g, "tick", 2, "marker")?;
    ensure!(t["armed_by"] == "systemd (quantum-trigger-tick.timer)", "{t}");

    // quantumd restarted: the definitions are on disk and the units armed again.
    g.run_ok("systemctl restart quantumd.service")?;
    eventually("quantumd back with its triggers", Duration::from_secs(60), || {
        Ok(trigger(g, "inbox").ok().flatten())
    })?;
    let state = g.run("systemctl is-active quantum-trigger-inbox.path quantum-trigger-tick.timer")?;
    ensure!(
        state.stdout.trim() == "active\nactive",
        "after a restart: {state}\n{}\n{}",
        g.run("quantumctl trigger list --json")?,
        g.run("journalctl -b -u quantumd.service --no-pager | grep -i trigger | tail -n 8")?
    );
    g.run_ok("touch /var/tmp/qtest-inbox/another")?;
    fired(g, "inbox", 1, "marker")?;

    for name in ["inbox", "tick"] {
        g.run_ok(&as_quantum(&format!("quantumctl trigger remove {name}")))?;
    }
    let left = g.run_ok("systemctl list-units --all --plain --no-legend 'quantum-trigger-*' | grep -v ' inactive ' || true")?;
    ensure!(left.trim().is_empty(), "trigger units left: {left}");
    let list = g.run_ok("quantumctl trigger list --json")?;
    ensure!(list.trim() == "[]", "{list}");
    Ok(())
}

/// A threshold on a cell's memory (the QEMU tier has the memory
/// controller): a cell that holds 48 MB fires the trigger once. (Not in
/// the container tier, whose cells get no memory controller.)
#[allow(dead_code)]
pub fn memory_threshold_trigger(g: &Guest) -> Result<()> {
    write_cell(
        g,
        "holder",
        "holds 48 MB",
        "x=$(head -c 50331648 /dev/zero | tr '\\0' a); sleep 600",
        "[resources]\nmemory-max = \"256M\"",
    )?;
    write_marker(g)?;
    add_trigger(
        g,
        "heavy",
        "/run/qtest/marker/cell.toml",
        "on-threshold = { figure = \"memory\", cell = \"holder\", above = \"32M\", for = \"2s\" }",
    )?;
    ensure!(
        trigger(g, "heavy")?.is_some_and(|t| t["fired"] == 0),
        "fired before anything held memory"
    );
    g.run_ok(&as_quantum("quantumctl run /run/qtest/holder/cell.toml"))?;
    fired(g, "heavy", 1, "marker")?;
    std::thread::sleep(Duration::from_secs(4));
    let t = trigger(g, "heavy")?.context("heavy is gone")?;
    ensure!(t["fired"] == 1, "fired again while the same crossing held: {t}");
    g.run_ok("quantumctl stop holder")?;
    g.run_ok(&as_quantum("quantumctl trigger remove heavy"))?;
    Ok(())
}

/// A threshold on a cell's memory *pressure* (PSI: its cgroup's
/// `memory.pressure`, some avg10), which the kernel measures, not quantumd:
/// a cell held to 24 MB that rereads far more than that from disk waits on
/// reclaim and on refaults of what it just read, and the trigger fires
/// once. The cell's pressure is printed, so a run shows what crossed.
#[allow(dead_code)]
pub fn memory_pressure_trigger(g: &Guest) -> Result<()> {
    write_cell(
        g,
        "thrasher",
        "rereads more than its memory holds",
        "while :; do find /usr -xdev -type f -size +32k -exec cat {} + >/dev/null 2>&1; done",
        "[resources]\nmemory-min = \"4M\"\nmemory-max = \"24M\"",
    )?;
    write_marker(g)?;
    add_trigger(
        g,
        "squeezed",
        "/run/qtest/marker/cell.toml",
        "on-threshold = { figure = \"memory-pressure\", cell = \"thrasher\", above = 2, for = \"2s\" }",
    )?;
    ensure!(
        trigger(g, "squeezed")?.is_some_and(|t| t["fired"] == 0),
        "fired before the cell ran"
    );
    g.run_ok(&as_quantum("quantumctl run /run/qtest/thrasher/cell.toml"))?;
    let pressure = || {
        g.run(
            "for u in $(systemctl list-units --plain --no-legend 'quantum-thrasher.*' | cut -d' ' -f1); do \
             cat /sys/fs/cgroup$(systemctl show -P ControlGroup $u)/memory.pressure; done",
        )
        .map(|o| o.stdout)
        .unwrap_or_default()
    };
    let result = fired(g, "squeezed", 1, "marker");
    quantum_vmtest::report(format_args!("[{}] the thrasher's memory.pressure:\n{}", g.backend(), pressure()));
    result?;
    g.run_ok("quantumctl stop thrasher")?;
    g.run_ok(&as_quantum("quantumctl trigger remove squeezed"))?;
    Ok(())
}

/// A catalog cell pinned in `[prewarm] cells`: quantumd keeps a unit of it
/// waiting (its main process `quantumd warm-exec`), and a run takes that
/// unit, with its instance id, its identity document and its output on the
/// caller's terminal; the next one is warmed.
pub fn prewarm_claims(g: &Guest) -> Result<()> {
    const CELL: &str = "qtest-warm";
    g.run_ok(&format!(
        "mkdir -p /usr/share/quantumos/cells/{CELL} && cat > /usr/share/quantumos/cells/{CELL}/cell.toml <<'EOF'\n\
         [cell]\nname = \"{CELL}\"\nversion = \"1.0.0\"\ndescription = \"says who it is\"\n\
         exec = [\"/bin/sh\", \"-c\", \"echo warm:$QUANTUM_INSTANCE; test -n \\\"$QUANTUM_IDENTITY\\\" && echo has-identity\"]\n\
         [lifecycle]\nkind = \"task\"\nrestart = \"no\"\nEOF"
    ))?;
    g.run_ok(&format!(
        "rm -f /run/qtest-quantumd.toml.orig; \
         if [ -e /etc/quantumos/quantumd.toml ]; then cp /etc/quantumos/quantumd.toml /run/qtest-quantumd.toml.orig; fi; \
         mkdir -p /etc/quantumos && printf '\\n[prewarm]\\ncells = [\"{CELL}\"]\\npredict = false\\n' >> /etc/quantumos/quantumd.toml && \
         systemctl restart quantumd.service"
    ))?;
    let warm = |seen: Option<&str>| {
        eventually("a warm unit of the cell", Duration::from_secs(60), || {
            let out = g.run_ok(&format!("quantumctl trail show -n 0 --cell {CELL} --json"))?;
            let entries: serde_json::Value = serde_json::from_str(&out)?;
            Ok(entries.as_array().and_then(|a| {
                a.iter().rev().find_map(|e| {
                    let id = e["detail"].as_str()?.strip_prefix("warm ")?.split(':').next()?.to_owned();
                    (e["action"] == "prewarm" && Some(id.as_str()) != seen).then_some(id)
                })
            }))
        })
    };
    let result = (|| -> Result<()> {
        let first = warm(None)?;
        let comm = g.run_ok(&format!(
            "cat /proc/$(systemctl show -P MainPID quantum-{first}.service)/cmdline | tr '\\0' ' '"
        ))?;
        ensure!(comm.contains("warm-exec"), "the warm unit's main process: {comm}");
        let out = g.run(&as_quantum(&format!("quantumctl run {CELL}")))?;
        ensure!(
            out.code == 0 && out.stdout == format!("warm:{first}\nhas-identity\n"),
            "a run of the pinned cell: {out}"
        );
        let next = warm(Some(&first))?;
        ensure!(next != first, "no new warm unit after the claim");
        Ok(())
    })();
    g.run_ok(&format!(
        "if [ -e /run/qtest-quantumd.toml.orig ]; then cp /run/qtest-quantumd.toml.orig /etc/quantumos/quantumd.toml; \
         else rm -f /etc/quantumos/quantumd.toml; fi; rm -rf /usr/share/quantumos/cells/{CELL} && \
         systemctl restart quantumd.service"
    ))?;
    eventually("quantumd back", Duration::from_secs(60), || {
        Ok(g.run("quantumctl list")?.success().then_some(()))
    })?;
    result
}
