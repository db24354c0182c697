//! The smoke scenarios, the same for every backend: they prove the harness
//! (boot, readiness, the agent's round trip and timeout) and the basics of
//! the image (systemd up, the kernel, cgroup v2, quantumd's unit).

use std::fs;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use quantum_vmtest::{report, Backend, Guest, Scenarios};

/// Boots the image once on `backend` and runs every smoke scenario on it.
pub fn smoke(backend: Backend) {
    let test = format!("{backend} smoke test");
    let Some(guest) = quantum_vmtest::boot_ready(&test, backend) else {
        return;
    };
    let mut scenarios = Scenarios::new(&guest);
    scenarios.run("agent-round-trip", agent_round_trip);
    scenarios.run("agent-timeout", agent_timeout);
    scenarios.run("system-running", system_running);
    scenarios.run("kernel", kernel);
    scenarios.run("cgroup-v2", cgroup_v2);
    scenarios.run("quantumd-unit", quantumd_unit);
    if let Err(e) = scenarios.finish() {
        panic!("{e:#}");
    }
}

/// Exit code, stdout and stderr come back apart and intact.
fn agent_round_trip(guest: &Guest) -> Result<()> {
    let out = guest.run("echo out; echo err >&2; printf 'ünï\\n'; id -u; exit 7")?;
    ensure!(out.code == 7, "exit code {} instead of 7", out.code);
    ensure!(out.stdout == "out\nünï\n0\n", "stdout {:?}", out.stdout);
    ensure!(out.stderr == "err\n", "stderr {:?}", out.stderr);
    Ok(())
}

/// A command past its time limit is killed and reported as such, and the
/// agent goes on with the next one.
fn agent_timeout(guest: &Guest) -> Result<()> {
    let out = guest.run_with_timeout("sleep 60", Duration::from_secs(2))?;
    ensure!(out.code == 124, "exit code {} instead of 124 (timeout)", out.code);
    ensure!(out.stderr.contains("timed out"), "stderr {:?}", out.stderr);
    let next = guest.run_ok("echo next")?;
    ensure!(next == "next\n", "the command after a timeout printed {next:?}");
    Ok(())
}

/// systemd finished booting; degraded is accepted, its failed units printed.
fn system_running(guest: &Guest) -> Result<()> {
    let out = guest.run_with_timeout("systemctl is-system-running --wait", Duration::from_secs(240))?;
    let state = out.stdout.trim();
    match state {
        "running" => Ok(()),
        "degraded" => {
            let failed = guest.run_ok("systemctl --failed --no-pager --no-legend --plain")?;
            report(format_args!(
                "[{}] system is degraded; failed units:\n{}",
                guest.backend(),
                failed.trim_end()
            ));
            Ok(())
        }
        _ => bail!("systemctl is-system-running: {out}"),
    }
}

/// QEMU runs the image's kernel; nspawn the host's.
fn kernel(guest: &Guest) -> Result<()> {
    let release = guest.run_ok("uname -r")?.trim().to_owned();
    let expected = match guest.backend() {
        Backend::Qemu => guest.image().kernel_version.clone(),
        Backend::Nspawn => fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_owned(),
    };
    ensure!(release == expected, "uname -r is {release}, expected {expected}");
    report(format_args!("[{}] kernel {release}", guest.backend()));
    Ok(())
}

/// The unified cgroup hierarchy with the controllers quantumd needs. In a
/// container this can only be what the host offers: on a host whose
/// controllers are bound to cgroup v1 (hybrid), the container's v2 tree has
/// none, and that is reported rather than failed.
fn cgroup_v2(guest: &Guest) -> Result<()> {
    let backend = guest.backend();
    let fs_type = guest.run_ok("stat -fc %T /sys/fs/cgroup")?.trim().to_owned();
    let controllers = guest
        .run("cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null || cat /sys/fs/cgroup/unified/cgroup.controllers")?
        .stdout
        .trim()
        .to_owned();
    report(format_args!(
        "[{backend}] /sys/fs/cgroup is {fs_type}; v2 controllers: [{controllers}]"
    ));
    let needed = ["cpu", "memory", "io", "pids"];
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !controllers.split_whitespace().any(|have| have == *c))
        .collect();
    match backend {
        Backend::Qemu => {
            ensure!(fs_type == "cgroup2fs", "/sys/fs/cgroup is {fs_type}, not cgroup2fs");
            ensure!(missing.is_empty(), "cgroup v2 controllers missing: {}", missing.join(" "));
        }
        Backend::Nspawn => {
            if host_has_v2_controllers(&needed)? {
                ensure!(missing.is_empty(), "the host has them, the container lacks: {}", missing.join(" "));
            } else {
                report(format_args!(
                    "[{backend}] the host's cgroup controllers are on v1 (hybrid): the container cannot \
                     have v2 controllers; resource limits are tested under QEMU"
                ));
            }
        }
    }
    Ok(())
}

fn host_has_v2_controllers(needed: &[&str]) -> Result<bool> {
    let controllers = match fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).context("reading the host's cgroup.controllers"),
    };
    Ok(needed.iter().all(|c| controllers.split_whitespace().any(|have| have == *c)))
}

/// quantumd's unit, when the image has one: its state is printed, and a
/// quantumd that is not running is reported loudly (with its journal) but
/// does not fail the harness's smoke test; the end-to-end tier judges it.
fn quantumd_unit(guest: &Guest) -> Result<()> {
    let backend = guest.backend();
    if !guest.run("systemctl cat quantumd.service >/dev/null 2>&1")?.success() {
        report(format_args!(
            "[{backend}] NOTE: the image has no quantumd.service (packaging/systemd/ had none when it was built)"
        ));
        return Ok(());
    }
    let show =
        guest.run_ok("systemctl show quantumd.service -p LoadState,ActiveState,SubState,Result,MainPID,ExecMainStatus,NRestarts,User")?;
    report(format_args!("[{backend}] systemctl show quantumd:\n{}", show.trim_end()));
    ensure!(show.contains("LoadState=loaded"), "quantumd.service is not loaded");
    if !show.contains("ActiveState=active") {
        let journal = guest.run("journalctl -b -u quantumd.service --no-pager -o short-monotonic | tail -n 40")?;
        report(format_args!(
            "[{backend}] WARNING: quantumd is not active; its journal:\n{}",
            journal.stdout.trim_end()
        ));
    }
    Ok(())
}
