//! The test image runs on the QuantumOS kernel (kernel/: 6.12 LTS with
//! Rust, everything built in), installed in it from its packages
//! (`quantumos-kernel`, `linux-image-*-quantumos`, `quantumos-kmod`; see
//! kernel/build-debs.sh) and booted under QEMU (TCG) without an initramfs,
//! systemd as PID 1. The steppps module (kmod/steppps) is loaded at boot by
//! systemd-modules-load, and quantumd reads it from its first second. Here:
//! the system as a whole on that kernel, then the module: what it reports,
//! how quantumd uses it, unloading and reloading, and a clean kernel log.
//!
//! Part of `make test-vm`; `make test-kernel-vm` runs only this.

use std::fs;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use quantum_vmtest::{eventually, report, Backend, Guest, Image, Scenarios};

/// The log line quantumd writes when it reads the module's device.
const KMOD_USED: &str = "STEPPPS: reading node figures from the steppps kernel module";
/// ... and when it does not.
const KMOD_NOT_USED: &str = "STEPPPS: the steppps kernel module is not used";

#[test]
fn the_image_runs_on_the_quantumos_kernel_with_the_steppps_module() {
    let test = "QuantumOS kernel scenarios";
    let Some(image) = quantum_vmtest::image_or_skip(test) else {
        return;
    };
    assert!(
        image.kernel_version.ends_with("-quantumos") && image.initrd.is_none(),
        "{test}: image {} boots kernel {} ({}), not the QuantumOS kernel without an initramfs: \
         its variant's image.conf should say KERNEL=quantumos",
        image.short_hash(),
        image.kernel_version,
        image.initrd.as_ref().map_or("no initrd".to_owned(), |p| p.display().to_string()),
    );
    let guest = Guest::boot(&image, Backend::Qemu).unwrap_or_else(|e| panic!("{e:#}"));
    let ready = guest.wait_ready().unwrap_or_else(|e| panic!("{e:#}"));
    report(format_args!(
        "[qemu] kernel {}: agent ready {:.1} s after QEMU started",
        image.kernel_version,
        ready.as_secs_f64()
    ));

    let mut s = Scenarios::new(&guest);
    s.run("uname-r-is-the-packaged-quantumos-kernel-with-rust", |g| {
        uname(g, &image.kernel_version)
    });
    s.run("systemd-reaches-multi-user-with-no-failed-units", multi_user);
    s.run("quantumd-is-active", quantumd_active);
    s.run("a-catalog-cell-gets-cpu-memory-pids-io-limits-in-its-cgroup", catalog_cell_limits);
    s.run("btf-is-there-and-quantumd-ebpf-telemetry-works", btf_and_ebpf);
    s.run("steppps-is-loaded-at-boot-and-agrees-with-proc", steppps_agrees_with_proc);
    s.run("quantumd-reads-dev-steppps-from-boot-and-says-so", quantumd_reads_the_module);
    s.run("quantumd-stays-hardened-with-the-device-allowed", quantumd_exposure);
    s.run("steppps-unloads-cleanly-quantumd-falls-back-and-takes-it-again", steppps_unloads);
    // Last: everything above may have left something in the kernel log.
    s.run("the-kernel-log-has-no-warnings", kernel_log_clean);
    if let Err(e) = s.finish() {
        panic!("{e:#}");
    }
}

fn uname(g: &Guest, release: &str) -> Result<()> {
    let got = g.run_ok("uname -r")?.trim().to_owned();
    ensure!(got == release, "uname -r is {got}, the QuantumOS kernel is {release}");
    ensure!(got.contains("quantumos"), "{got} is not a quantumos kernel release");
    let rust = g.run("zcat /proc/config.gz | grep -x 'CONFIG_RUST=y'")?;
    ensure!(rust.success(), "the running kernel's config has no CONFIG_RUST=y: {rust}");
    let packages = g.run_ok(&format!(
        "dpkg-query -W -f '${{Package}} ${{Version}} ${{db:Status-Status}}\\n' quantumos-kernel quantumos-kmod linux-image-{got}"
    ))?;
    for line in packages.lines() {
        ensure!(
            line.ends_with(" installed"),
            "a kernel package is not installed: {line}\n{packages}"
        );
    }
    ensure!(packages.lines().count() == 3, "dpkg-query: {packages}");
    report(format_args!(
        "[qemu] kernel {got}, CONFIG_RUST=y; {}",
        packages.lines().collect::<Vec<_>>().join(", ")
    ));
    Ok(())
}

/// `systemctl is-system-running --wait` says `running`: multi-user.target
/// reached and no unit failed. A degraded system fails, naming the units.
fn multi_user(g: &Guest) -> Result<()> {
    let out = g.run_with_timeout("systemctl is-system-running --wait", Duration::from_secs(240))?;
    let state = out.stdout.trim();
    let target = g.run("systemctl is-active multi-user.target")?.stdout.trim().to_owned();
    ensure!(target == "active", "multi-user.target is {target} (system {state})");
    if state != "running" {
        let failed = g.run_ok("systemctl --failed --no-pager --no-legend --plain")?;
        let mut why = String::new();
        for unit in failed.lines().filter_map(|l| l.split_whitespace().next()) {
            let journal = g.run(&format!("journalctl -b -u {unit} --no-pager -o cat | tail -n 8"))?;
            why.push_str(&format!("\n--- {unit}\n{}", journal.stdout.trim_end()));
        }
        bail!("the system is {state}; failed units:\n{}{why}", failed.trim_end());
    }
    let took = g.run_ok("systemd-analyze time | head -n 1")?;
    report(format_args!("[qemu] {}", took.trim()));
    Ok(())
}

fn quantumd_active(g: &Guest) -> Result<()> {
    let out = g.run("systemctl is-active quantumd.service")?;
    if out.stdout.trim() != "active" {
        let journal = g.run("journalctl -b -u quantumd.service --no-pager -o short-monotonic | tail -n 40")?;
        bail!("quantumd is {}; its journal:\n{}", out.stdout.trim(), journal.stdout.trim_end());
    }
    Ok(())
}

fn quantumctl_json(g: &Guest, args: &str) -> Result<serde_json::Value> {
    let out = g.run_ok(&format!("quantumctl {args} --json"))?;
    serde_json::from_str(&out).with_context(|| format!("quantumctl {args} printed no JSON: {out}"))
}

/// Reads a file in the guest, trimmed.
fn cat(g: &Guest, path: &str) -> Result<String> {
    Ok(g.run_ok(&format!("cat {path}"))?.trim().to_owned())
}

/// The `[resources]` of a catalog manifest, as the cgroup files systemd
/// writes them: `cpu.max`, `memory.min`, `memory.max`, `pids.max`,
/// `io.weight`. A line parser is enough for the catalog's plain
/// `key = value` lines.
fn expected_limits(cell: &str) -> Result<Vec<(&'static str, String)>> {
    let path = Image::repo_root().join(format!("packaging/cells/{cell}/cell.toml"));
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut in_resources = false;
    let mut values = std::collections::HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_resources = line == "[resources]";
        } else if let (true, Some((k, v))) = (in_resources, line.split_once('=')) {
            values.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
        }
    }
    let get = |k: &str| values.get(k).with_context(|| format!("{}: no resources.{k}", path.display()));
    let bytes = |k: &str| -> Result<String> {
        let v = get(k)?;
        let (n, unit) = v.split_at(v.len() - 1);
        let shift = match unit {
            "K" => 10,
            "M" => 20,
            "G" => 30,
            _ => anyhow::bail!("{}: resources.{k} = {v}: expected K, M or G", path.display()),
        };
        Ok((n.parse::<u64>()? << shift).to_string())
    };
    let cpu: f64 = get("cpu-max")?.parse()?;
    Ok(vec![
        ("cpu.max", format!("{} 100000", (cpu * 100_000.0).round() as u64)),
        ("memory.min", bytes("memory-min")?),
        ("memory.max", bytes("memory-max")?),
        ("pids.max", get("tasks-max")?.clone()),
        ("io.weight", format!("default {}", get("io-weight")?)),
    ])
}

/// system-monitor from the catalog: its slice delegates the cpu, memory,
/// pids and io controllers, and its cgroup holds the limits of its
/// manifest (packaging/cells/system-monitor/cell.toml).
fn catalog_cell_limits(g: &Guest) -> Result<()> {
    let want = expected_limits("system-monitor")?;
    let info = quantumctl_json(g, "run system-monitor interval=2")?;
    let id = info["instance"].as_str().context("no instance in quantumctl's answer")?.to_owned();
    let unit = format!("quantum-{id}.service");
    let cgroup = eventually(&format!("{unit} to run"), Duration::from_secs(60), || {
        let cg = g.run(&format!("systemctl show -P ControlGroup {unit}"))?.stdout.trim().to_owned();
        if cg.is_empty() {
            return Ok(None);
        }
        let dir = format!("/sys/fs/cgroup{cg}");
        let pids = g.run(&format!("cat {dir}/pids.current"))?;
        Ok((pids.success() && pids.stdout.trim() != "0").then_some(dir))
    })?;
    let parent = cgroup.rsplit_once('/').map_or("/sys/fs/cgroup", |(p, _)| p);
    let delegated = cat(g, &format!("{parent}/cgroup.subtree_control"))?;
    for controller in ["cpu", "memory", "pids", "io"] {
        ensure!(
            delegated.split_whitespace().any(|c| c == controller),
            "{parent}/cgroup.subtree_control is [{delegated}]: no {controller}"
        );
    }
    for (file, value) in &want {
        let got = cat(g, &format!("{cgroup}/{file}"))?;
        ensure!(&got == value, "{cgroup}/{file} is {got:?}, the manifest asks for {value:?}");
    }
    report(format_args!("[qemu] {id} in {cgroup}: controllers [{delegated}], limits {want:?}"));
    g.run_ok("quantumctl stop system-monitor")?;
    Ok(())
}

/// BTF is at /sys/kernel/btf/vmlinux, and quantumd's eBPF programs (TIME
/// and EVENT) load and count a cell's run-queue waits and execs there,
/// unless the image turned eBPF off (then that is reported).
fn btf_and_ebpf(g: &Guest) -> Result<()> {
    let btf: u64 = g
        .run_ok("stat -c %s /sys/kernel/btf/vmlinux")?
        .trim()
        .parse()
        .context("size of /sys/kernel/btf/vmlinux")?;
    ensure!(btf > 0, "/sys/kernel/btf/vmlinux is empty");
    g.run_ok(
        "mkdir -p /run/qt/ticker && cat > /run/qt/ticker/cell.toml <<'EOF'\n[cell]\nname = \"ticker\"\nversion = \"1.0.0\"\n\
         description = \"execs a process every 50 ms\"\nexec = [\"/bin/sh\", \"-c\", \"while :; do /bin/true; sleep 0.05; done\"]\n\
         [lifecycle]\nidle-timeout = \"0\"\nEOF",
    )?;
    let info = quantumctl_json(g, "run /run/qt/ticker/cell.toml")?;
    let id = info["instance"].as_str().context("no instance")?.to_owned();
    let result = eventually("TIME and EVENT figures of the ticker", Duration::from_secs(90), || {
        let f = quantumctl_json(g, "steppps")?;
        if let Some(why) = f["time"]["unavailable"].as_str() {
            if why.contains("turned off") {
                return Ok(Some(Err(why.to_owned())));
            }
            if !why.contains("waiting for the first cell") {
                bail!("TIME unavailable on the QuantumOS kernel: {why}");
            }
        }
        let samples = f["time"]["cells"][&id]["samples"].as_u64().unwrap_or(0);
        let execs = f["event"]["cells"][&id]["exec"].as_u64().unwrap_or(0);
        Ok((samples > 0 && execs > 0).then_some(Ok((samples, execs))))
    });
    g.run_ok("quantumctl stop ticker")?;
    match result? {
        Ok((samples, execs)) => report(format_args!(
            "[qemu] BTF {btf} bytes; quantumd's eBPF: {samples} run-queue waits and {execs} execs of {id} in a second"
        )),
        Err(why) => report(format_args!("[qemu] BTF {btf} bytes; eBPF telemetry not checked: {why}")),
    }
    Ok(())
}

/// The module's record as `key -> value`.
fn record(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn field<T: std::str::FromStr>(r: &std::collections::HashMap<String, String>, key: &str) -> Result<T> {
    let v = r.get(key).with_context(|| format!("no `{key}` in /dev/steppps: {r:?}"))?;
    v.parse().ok().with_context(|| format!("`{key}` is `{v}`"))
}

/// /proc/meminfo's value of `key` in kB.
fn meminfo(text: &str, key: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/meminfo"))
}

/// Loaded at boot from quantumos-kmod's modules-load.d entry, from the
/// package's path; then what run.sh's guest checks: the device, and its
/// figures against /proc (equal, or close where they are sampled).
fn steppps_agrees_with_proc(g: &Guest) -> Result<()> {
    let loaded = g.run("grep '^steppps ' /proc/modules && test -c /dev/steppps")?;
    if !loaded.success() {
        let log =
            g.run("systemctl status --no-pager systemd-modules-load.service; journalctl -b -u systemd-modules-load --no-pager -o cat")?;
        bail!("steppps is not loaded after boot:\n{}", log.stdout.trim_end());
    }
    let path = g.run_ok("modinfo -n steppps")?;
    ensure!(
        path.trim().starts_with("/lib/modules/") && path.trim().ends_with("/updates/steppps.ko"),
        "modprobe finds steppps at {}, not where quantumos-kmod puts it",
        path.trim()
    );
    let out = g.run_ok("cat /dev/steppps; echo ---; cat /proc/meminfo; echo ---; grep -c ^processor /proc/cpuinfo; cat /proc/uptime")?;
    let mut parts = out.split("---\n");
    let (dev, mem, rest) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let r = record(dev);
    ensure!(r.len() >= 8, "a short record: {dev:?}");
    let total: u64 = field(&r, "mem_total_kb")?;
    ensure!(total == meminfo(mem, "MemTotal")?, "mem_total_kb {total}, /proc/meminfo:\n{mem}");
    let mut rest = rest.lines();
    let cpus: u32 = rest.next().unwrap_or_default().trim().parse().context("processor count")?;
    ensure!(
        field::<u32>(&r, "cpus_online")? == cpus,
        "cpus_online {:?}, /proc/cpuinfo {cpus}",
        r.get("cpus_online")
    );
    let free: u64 = field(&r, "mem_free_kb")?;
    let proc_free = meminfo(mem, "MemFree")?;
    ensure!(
        free.abs_diff(proc_free) <= total / 64 + 4096,
        "mem_free_kb {free}, MemFree {proc_free}"
    );
    let uptime_ms = rest
        .next()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .context("/proc/uptime")?;
    let at: u64 = field(&r, "sampled_at_ms")?;
    ensure!(
        at <= uptime_ms && uptime_ms - at <= 5000,
        "sampled_at_ms {at}, uptime {uptime_ms} ms"
    );
    // The load average must read as /proc/loadavg prints it; a 5-second
    // update may fall between the two reads, so a few tries.
    let mut last = String::new();
    let same = (0..5).any(|_| {
        let o = g
            .run_ok("grep '^loadavg ' /dev/steppps; cut -d' ' -f1-3 /proc/loadavg")
            .unwrap_or_default();
        let mut l = o.lines();
        let ok = matches!((l.next(), l.next()), (Some(a), Some(b)) if a.strip_prefix("loadavg ") == Some(b));
        last = o;
        ok
    });
    ensure!(same, "loadavg differs from /proc/loadavg: {last:?}");
    report(format_args!(
        "[qemu] /dev/steppps agrees with /proc: {total} kB, {cpus} CPUs, free {free} vs {proc_free} kB, sample {} ms old, {}",
        uptime_ms - at,
        last.lines().next().unwrap_or_default()
    ));
    Ok(())
}

/// The journal of quantumd's current run.
fn quantumd_journal(g: &Guest) -> Result<String> {
    g.run_ok("journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID=$(systemctl show -P InvocationID quantumd.service)")
}

/// quantumos-kmod's drop-in shows quantumd the device; quantumd, started
/// after the module was loaded, says it reads it and `quantumctl steppps`
/// shows the module's figures, equal to /proc's.
fn quantumd_reads_the_module(g: &Guest) -> Result<()> {
    let drop_in = g.run_ok("systemctl show -P DropInPaths quantumd.service")?;
    ensure!(
        drop_in.contains("/usr/lib/systemd/system/quantumd.service.d/steppps.conf"),
        "quantumd.service has no steppps drop-in from quantumos-kmod: {drop_in:?}"
    );
    let journal = eventually("quantumd's log line about the module", Duration::from_secs(30), || {
        let j = quantumd_journal(g)?;
        Ok(j.contains("STEPPPS: ").then_some(j))
    })?;
    let line = journal
        .lines()
        .find(|l| l.contains("steppps kernel module"))
        .unwrap_or_default()
        .to_owned();
    ensure!(
        journal.contains(KMOD_USED),
        "quantumd does not say it reads the module: {line:?}\n{journal}"
    );
    let k = eventually("the module's figures in quantumctl steppps", Duration::from_secs(30), || {
        let f = quantumctl_json(g, "steppps")?;
        Ok(f["kernel"]["device"].is_string().then(|| f["kernel"].clone()))
    })?;
    let mem = g.run_ok("cat /proc/meminfo")?;
    let total = meminfo(&mem, "MemTotal")? * 1024;
    let cpus: u64 = g.run_ok("nproc")?.trim().parse()?;
    ensure!(k["device"] == "/dev/steppps", "{k}");
    ensure!(
        k["memory-total-bytes"].as_u64() == Some(total),
        "MemTotal {total} B, quantumctl steppps: {k}"
    );
    ensure!(k["cpus-online"].as_u64() == Some(cpus), "{cpus} CPUs, quantumctl steppps: {k}");
    ensure!(k["generation"].as_u64().unwrap_or(0) >= 1, "{k}");
    report(format_args!(
        "[qemu] quantumd: {line}\n[qemu] quantumctl steppps --json | .kernel: {k}"
    ));
    Ok(())
}

/// `modprobe -r` (retried: quantumd opens the device for an instant every
/// second), the device gone, a second load and unload, quantumd back on
/// /proc and saying so; then loaded again and, after a restart (the device
/// is bound into quantumd's /dev when it starts), read again.
fn steppps_unloads(g: &Guest) -> Result<()> {
    let unload = "for i in $(seq 1 20); do modprobe -r steppps 2>/dev/null && exit 0; sleep 0.2; done; modprobe -r steppps";
    g.run_ok(unload)?;
    g.run_ok("test ! -e /dev/steppps && ! grep -q '^steppps ' /proc/modules")?;
    g.run_ok(&format!("modprobe steppps && cat /dev/steppps >/dev/null && {unload}"))?;
    // quantumd's own /dev still has the node it was given at start; opening
    // it fails now (ENODEV, or EACCES once systemd has dropped the vanished
    // device from the unit's device policy), and quantumd says so and
    // serves /proc's figures.
    let why = eventually("quantumd to notice the module is gone", Duration::from_secs(30), || {
        let f = quantumctl_json(g, "steppps")?;
        Ok(f["kernel"]["unavailable"].as_str().map(str::to_owned))
    })?;
    ensure!(
        why.contains("not loaded") || why.contains("module was unloaded"),
        "quantumctl steppps says: {why}"
    );
    let journal = quantumd_journal(g)?;
    ensure!(journal.contains(KMOD_NOT_USED), "quantumd did not log the change:\n{journal}");
    let node = quantumctl_json(g, "steppps")?["node"].clone();
    ensure!(
        node["memory-total-bytes"].as_u64().unwrap_or(0) > 0,
        "node figures without the module: {node}"
    );
    g.run_ok("modprobe steppps && systemctl restart quantumd.service")?;
    quantumd_active(g)?;
    eventually("quantumd to read the reloaded module", Duration::from_secs(30), || {
        let f = quantumctl_json(g, "steppps")?;
        Ok(f["kernel"]["device"].is_string().then_some(()))
    })?;
    ensure!(
        quantumd_journal(g)?.contains(KMOD_USED),
        "the restarted quantumd does not say it reads the module"
    );
    report(format_args!(
        "[qemu] unloaded twice; quantumd: {why}; reloaded and read again after a restart"
    ));
    Ok(())
}

/// The drop-in widens quantumd's device policy by one read-only device:
/// `systemd-analyze security` must still rate it at most 2.0, the goal of
/// every unit the project ships.
fn quantumd_exposure(g: &Guest) -> Result<()> {
    let (level, line) = g.exposure("quantumd.service")?;
    ensure!(level <= 2.0, "{line}");
    report(format_args!("[qemu] {line}"));
    Ok(())
}

fn kernel_log_clean(g: &Guest) -> Result<()> {
    let bad = g.run("dmesg | grep -E 'WARNING:|BUG:|Oops|Call Trace|BTF.*(fail|invalid)'")?;
    ensure!(!bad.success(), "the kernel log has warnings:\n{}", bad.stdout.trim_end());
    let steppps = g.run_ok("dmesg | grep -i steppps || true")?;
    report(format_args!("[qemu] dmesg clean; steppps lines:\n{}", steppps.trim_end()));
    Ok(())
}
