//! The test image on the QuantumOS kernel (kernel/: 6.12 LTS with Rust,
//! everything built in) instead of Debian's: booted under QEMU (TCG) by
//! direct kernel boot without an initramfs, systemd as PID 1. Then the
//! steppps kernel module (kmod/steppps) in that guest: loaded, compared
//! with /proc, read by quantumd, unloaded, and a clean kernel log.
//!
//! `make test-kernel-vm` builds the kernel, the module and the image and
//! runs this. By hand: `QUANTUM_KERNEL_DIR` (a kernel/build.sh output
//! directory; default `$QUANTUM_CACHE/kernel/current`) and
//! `QUANTUM_STEPPPS_KO` (default `$QUANTUM_CACHE/kmod/steppps/steppps.ko`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use quantum_vmtest::{eventually, report, Backend, BootConfig, Guest, Image, Scenarios, GUEST_SHARE};

/// The kernel and module under test.
struct QuantumKernel {
    bzimage: PathBuf,
    /// `uname -r` it must report.
    release: String,
    steppps_ko: PathBuf,
}

/// The log line quantumd writes when it reads the module's device.
const KMOD_USED: &str = "STEPPPS: reading node figures from the steppps kernel module";
/// ... and when it does not.
const KMOD_NOT_USED: &str = "STEPPPS: the steppps kernel module is not used";
/// The drop-in that shows quantumd the device (kmod/steppps/systemd/).
const DROP_IN: &str = "kmod/steppps/systemd/quantumd-steppps.conf";

fn path_from_env(var: &str, default: PathBuf) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default,
    }
}

/// The built kernel and module, or `None` after saying why the test skips.
/// Like a missing image, a missing kernel skips unless
/// `QUANTUM_VMTEST_REQUIRE_IMAGE=1` (set by `make test-kernel-vm`).
fn kernel_or_skip(test: &str) -> Option<QuantumKernel> {
    let cache = Image::cache_dir();
    let dir = path_from_env("QUANTUM_KERNEL_DIR", cache.join("kernel/current"));
    let steppps_ko = path_from_env("QUANTUM_STEPPPS_KO", cache.join("kmod/steppps/steppps.ko"));
    let bzimage = dir.join("bzImage");
    let release_file = dir.join("linux/include/config/kernel.release");
    let missing: Vec<&Path> = [bzimage.as_path(), release_file.as_path(), steppps_ko.as_path()]
        .into_iter()
        .filter(|p| !p.is_file())
        .collect();
    if !missing.is_empty() {
        let list = missing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        if std::env::var("QUANTUM_VMTEST_REQUIRE_IMAGE").is_ok_and(|v| v == "1") {
            panic!("{test}: missing {list} although QUANTUM_VMTEST_REQUIRE_IMAGE=1");
        }
        report(format_args!(
            "SKIPPED {test}: the QuantumOS kernel or the steppps module has not been built (missing {list}); \
             `make test-kernel-vm` builds them and runs this"
        ));
        return None;
    }
    let release = fs::read_to_string(&release_file)
        .unwrap_or_else(|e| panic!("{test}: reading {}: {e}", release_file.display()))
        .trim()
        .to_owned();
    Some(QuantumKernel {
        bzimage,
        release,
        steppps_ko,
    })
}

#[test]
fn the_image_runs_on_the_quantumos_kernel_with_the_steppps_module() {
    let test = "QuantumOS kernel scenarios";
    let Some(image) = quantum_vmtest::image_or_skip(test) else {
        return;
    };
    let Some(kernel) = kernel_or_skip(test) else {
        return;
    };
    let config = BootConfig {
        kernel: Some(kernel.bzimage.clone()),
        ..BootConfig::for_backend(Backend::Qemu)
    };
    let guest = Guest::boot_with(&image, Backend::Qemu, config).unwrap_or_else(|e| panic!("{e:#}"));
    let ready = guest.wait_ready().unwrap_or_else(|e| panic!("{e:#}"));
    report(format_args!(
        "[qemu] kernel {}: agent ready {:.1} s after QEMU started",
        kernel.release,
        ready.as_secs_f64()
    ));
    // The module and the drop-in go in through the share.
    let repo = Image::repo_root();
    for (from, to) in [
        (kernel.steppps_ko.clone(), "steppps.ko"),
        (repo.join(DROP_IN), "quantumd-steppps.conf"),
    ] {
        fs::copy(&from, guest.share().join(to)).unwrap_or_else(|e| panic!("copying {} into the share: {e}", from.display()));
    }

    let mut s = Scenarios::new(&guest);
    s.run("uname-r-is-the-quantumos-kernel-with-rust", |g| uname(g, &kernel.release));
    s.run("systemd-reaches-multi-user-with-no-failed-units", multi_user);
    s.run("quantumd-is-active", quantumd_active);
    s.run("a-catalog-cell-gets-cpu-memory-pids-io-limits-in-its-cgroup", catalog_cell_limits);
    s.run("btf-is-there-and-quantumd-ebpf-telemetry-works", btf_and_ebpf);
    s.run("steppps-loads-and-agrees-with-proc", steppps_agrees_with_proc);
    s.run("quantumd-reads-dev-steppps-and-says-so", quantumd_reads_the_module);
    s.run("steppps-unloads-cleanly-and-quantumd-falls-back", steppps_unloads);
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
    report(format_args!("[qemu] kernel {got}, CONFIG_RUST=y"));
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

/// insmod, then what run.sh's guest checks: the device, and its figures
/// against /proc (equal, or close where they are sampled).
fn steppps_agrees_with_proc(g: &Guest) -> Result<()> {
    g.run_ok(&format!("cp {GUEST_SHARE}/steppps.ko /run/steppps.ko && insmod /run/steppps.ko"))?;
    g.run_ok("test -c /dev/steppps && grep -q '^steppps ' /proc/modules")?;
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

/// With the drop-in that shows it the device, a restarted quantumd says it
/// reads the module and `quantumctl steppps` shows the module's figures,
/// equal to /proc's.
fn quantumd_reads_the_module(g: &Guest) -> Result<()> {
    g.run_ok(&format!(
        "mkdir -p /run/systemd/system/quantumd.service.d && \
         cp {GUEST_SHARE}/quantumd-steppps.conf /run/systemd/system/quantumd.service.d/steppps.conf && \
         systemctl daemon-reload && systemctl restart quantumd.service"
    ))?;
    quantumd_active(g)?;
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

/// rmmod (retried: quantumd opens the device for an instant every second),
/// the device gone, a second load and unload, and quantumd back on /proc.
fn steppps_unloads(g: &Guest) -> Result<()> {
    let unload = "for i in $(seq 1 20); do rmmod steppps 2>/dev/null && exit 0; sleep 0.2; done; rmmod steppps";
    g.run_ok(unload)?;
    g.run_ok("test ! -e /dev/steppps && ! grep -q '^steppps ' /proc/modules")?;
    g.run_ok(&format!("insmod /run/steppps.ko && cat /dev/steppps >/dev/null && {unload}"))?;
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
    g.run_ok("rm -r /run/systemd/system/quantumd.service.d && systemctl daemon-reload")?;
    report(format_args!("[qemu] unloaded twice; quantumd: {why}"));
    Ok(())
}

fn kernel_log_clean(g: &Guest) -> Result<()> {
    let bad = g.run("dmesg | grep -E 'WARNING:|BUG:|Oops|Call Trace|BTF.*(fail|invalid)'")?;
    ensure!(!bad.success(), "the kernel log has warnings:\n{}", bad.stdout.trim_end());
    let steppps = g.run_ok("dmesg | grep -i steppps || true")?;
    report(format_args!("[qemu] dmesg clean; steppps lines:\n{}", steppps.trim_end()));
    Ok(())
}
