//! `quantum-bench`: boots the built image and runs the in-guest benchmarks,
//! printing each as a ratio against the obvious alternative measured in the
//! same run (`make bench`).
//!
//! usage: quantum-bench [--backend nspawn|qemu] [--starts N] [--concurrent N] [--boots N] [--profile N]
//! (`--starts 0` skips the cell start benchmark)
//!
//! - the start path (`--profile N`, in a guest of its own): N sequential
//!   `quantumctl run`s split into the client's part and quantumd's stages
//!   (bench/guest/start-profile.py, quantumd/daemon/src/start_profile.rs),
//!   medians;
//! - cell start: `quantumctl run` vs `systemd-run` of the same command,
//!   plain and with quantumd's whole sandbox and `Type=exec`, interleaved,
//!   p50/p95 (bench/guest/cell-start.py);
//! - a foreground task: `quantumctl run` of a task cell vs
//!   `systemd-run --pipe --wait` of the same command, invocation to exit;
//! - a pre-warmed task (a catalog cell pinned in `[prewarm]`) vs a cold
//!   `quantumctl run` of it vs `systemd-run --pipe --wait`, and the warm
//!   unit's memory;
//! - N concurrent starts: quantumctl vs systemd-run;
//! - boot time (QEMU only, `--boots N` boots of each kind, alternating): time
//!   to quantumd READY and to multi-user.target vs the same image booted with
//!   `systemd.mask=quantumd.service`, to multi-user.target.
//! - ISO boot time (`--iso DIR --baseline-iso DIR [--boots N]`, only this):
//!   the live ISO (BIOS, TPM) to quantumd READY and to multi-user.target vs
//!   the same ISO built without the QuantumOS packages (variant
//!   iso-baseline) to multi-user.target, N boots of each, alternating
//!   (bench/iso.sh builds both).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use quantum_vmtest::{Backend, BootConfig, Firmware, Guest, Image, IsoImage, DEFAULT_VARIANT, GUEST_SHARE};

const USAGE: &str = "usage: quantum-bench [--backend nspawn|qemu] [--starts N] [--concurrent N] [--boots N] [--profile N]\n       quantum-bench --iso DIR --baseline-iso DIR [--boots N]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quantum-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    backend: Backend,
    starts: u32,
    concurrent: u32,
    boots: u32,
    /// Sequential starts to split into stages (0: none).
    profile: u32,
    /// The directories of two built ISOs (their iso.env): QuantumOS's and
    /// the baseline without it.
    iso: Option<PathBuf>,
    baseline_iso: Option<PathBuf>,
}

fn parse_args() -> Result<Option<Args>> {
    let mut a = Args {
        backend: Backend::Nspawn,
        starts: 100,
        concurrent: 256,
        boots: 2,
        profile: 0,
        iso: None,
        baseline_iso: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<u32> {
            let v = args.next().with_context(|| format!("{flag} needs a number"))?;
            v.parse().with_context(|| format!("{flag}: '{v}' is not a number"))
        };
        match arg.as_str() {
            "--backend" => a.backend = args.next().context("--backend nspawn|qemu")?.parse()?,
            "--starts" => a.starts = number("--starts")?,
            "--concurrent" => a.concurrent = number("--concurrent")?,
            "--boots" => a.boots = number("--boots")?,
            "--profile" => a.profile = number("--profile")?,
            "--iso" => a.iso = Some(args.next().context("--iso needs a directory")?.into()),
            "--baseline-iso" => a.baseline_iso = Some(args.next().context("--baseline-iso needs a directory")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(a))
}

fn run() -> Result<()> {
    let Some(args) = parse_args()? else { return Ok(()) };
    match (&args.iso, &args.baseline_iso) {
        (Some(iso), Some(baseline)) => return iso_boot_time(iso, baseline, args.boots.max(1)),
        (None, None) => {}
        _ => bail!("--iso and --baseline-iso go together\n{USAGE}"),
    }
    let image = Image::locate(DEFAULT_VARIANT)?.context("no image: run `make image` first")?;
    if args.profile > 0 {
        start_profile(&image, args.backend, args.profile)?;
    }
    if args.starts > 0 {
        cell_start(&image, &args)?;
    }
    if args.backend == Backend::Qemu && args.boots > 0 {
        boot_time(&image, args.boots)?;
    }
    Ok(())
}

fn cell_start(image: &Image, args: &Args) -> Result<()> {
    let (backend, starts, concurrent) = (args.backend, args.starts, args.concurrent);
    eprintln!("booting the {DEFAULT_VARIANT} image ({backend}) ...");
    let guest = Guest::boot(image, backend)?;
    let ready = guest.wait_ready()?;
    eprintln!("guest ready after {:.1} s", ready.as_secs_f64());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/guest/cell-start.py");
    std::fs::copy(script, guest.share().join("cell-start.py")).context("copying the benchmark into the share")?;
    guest.run_ok("systemctl is-active --wait quantumd.service || true")?;
    let out = guest.run_with_timeout(
        &format!("python3 {GUEST_SHARE}/cell-start.py {starts} {concurrent}"),
        Duration::from_secs(1800),
    )?;
    if !out.success() {
        bail!("the benchmark failed in the guest: {out}");
    }
    let r: serde_json::Value = serde_json::from_str(out.stdout.trim()).context("benchmark output")?;
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!("cell start ({backend}, {starts} starts each, interleaved; client invocation -> ExecMainStartTimestamp):");
    println!(
        "  quantumctl run  p50 {:7.1} ms  p95 {:7.1} ms",
        f("quantumctl_p50_ms"),
        f("quantumctl_p95_ms")
    );
    println!(
        "  quantumctl run over the system bus (QUANTUM_SOCKET=\"\")  p50 {:7.1} ms  p95 {:7.1} ms  ({:.2}x the same sandbox)",
        f("quantumctl_bus_p50_ms"),
        f("quantumctl_bus_p95_ms"),
        f("ratio_bus_full_p50")
    );
    println!(
        "  systemd-run     p50 {:7.1} ms  p95 {:7.1} ms",
        f("systemd_run_p50_ms"),
        f("systemd_run_p95_ms")
    );
    println!(
        "  systemd-run, quantumd's whole sandbox and Type=exec  p50 {:7.1} ms  p95 {:7.1} ms",
        f("systemd_run_full_p50_ms"),
        f("systemd_run_full_p95_ms")
    );
    println!(
        "  ratio vs the same sandbox: p50 {:.2}x  p95 {:.2}x; vs the plain one: p50 {:.2}x  p95 {:.2}x",
        f("ratio_full_p50"),
        f("ratio_full_p95"),
        f("ratio_p50"),
        f("ratio_p95")
    );
    println!("foreground task ({starts} runs each, interleaved; invocation -> exit, output read):");
    println!(
        "  quantumctl run             p50 {:7.1} ms  p95 {:7.1} ms",
        f("foreground_p50_ms"),
        f("foreground_p95_ms")
    );
    println!(
        "  systemd-run --pipe --wait  p50 {:7.1} ms  p95 {:7.1} ms",
        f("pipe_wait_p50_ms"),
        f("pipe_wait_p95_ms")
    );
    println!(
        "  systemd-run --pipe --wait, quantumd's whole sandbox  p50 {:7.1} ms  p95 {:7.1} ms",
        f("pipe_wait_full_p50_ms"),
        f("pipe_wait_full_p95_ms")
    );
    println!(
        "  ratio vs the same sandbox: p50 {:.2}x  p95 {:.2}x; vs the plain one: p50 {:.2}x  p95 {:.2}x",
        f("ratio_foreground_full_p50"),
        f("ratio_foreground_full_p95"),
        f("ratio_foreground_p50"),
        f("ratio_foreground_p95")
    );
    println!(
        "pre-warmed task ([prewarm] cells, {} of {starts} runs took a warm unit; invocation -> exit, output read):",
        r["warm_claimed"]
    );
    println!(
        "  quantumctl run, warm       p50 {:7.1} ms  p95 {:7.1} ms",
        f("warm_p50_ms"),
        f("warm_p95_ms")
    );
    println!(
        "  quantumctl run, cold       p50 {:7.1} ms  p95 {:7.1} ms",
        f("cold_p50_ms"),
        f("cold_p95_ms")
    );
    println!(
        "  systemd-run --pipe --wait  p50 {:7.1} ms  p95 {:7.1} ms",
        f("pipe_wait2_p50_ms"),
        f("pipe_wait2_p95_ms")
    );
    println!(
        "  ratio warm vs systemd-run: p50 {:.2}x  p95 {:.2}x; warm vs cold p50 {:.2}x; a warm unit holds {} KiB",
        f("ratio_warm_p50"),
        f("ratio_warm_p95"),
        f("ratio_warm_cold_p50"),
        r["warm_unit_memory_kib"]
    );
    println!(
        "{concurrent} concurrent starts (32 clients): quantumctl {:.1} s ({:.0}/s, {} running), systemd-run {:.1} s ({:.0}/s); ratio {:.2}x",
        f("quantumctl_burst_s"),
        f("quantumctl_starts_per_s"),
        r["concurrent_running"],
        f("systemd_run_burst_s"),
        f("systemd_run_starts_per_s"),
        f("ratio_burst_time")
    );
    println!(
        "  the same sandbox: systemd-run {:.1} s ({:.0}/s); ratio {:.2}x",
        f("systemd_run_full_burst_s"),
        f("systemd_run_full_starts_per_s"),
        f("ratio_burst_full_time")
    );
    Ok(())
}

/// Where a start's time goes: bench/guest/start-profile.py in a fresh guest.
fn start_profile(image: &Image, backend: Backend, starts: u32) -> Result<()> {
    eprintln!("booting the {DEFAULT_VARIANT} image ({backend}) for the start profile ...");
    let guest = Guest::boot(image, backend)?;
    guest.wait_ready()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/guest/start-profile.py");
    std::fs::copy(script, guest.share().join("start-profile.py")).context("copying the profile script into the share")?;
    guest.run_ok("systemctl is-active --wait quantumd.service || true")?;
    let out = guest.run_with_timeout(
        &format!("python3 {GUEST_SHARE}/start-profile.py {starts}"),
        Duration::from_secs(1800),
    )?;
    if !out.success() {
        bail!("the start profile failed in the guest: {out}");
    }
    let r: serde_json::Value = serde_json::from_str(out.stdout.trim()).context("start profile output")?;
    let stages = r["median_us"].as_array().context("start profile: no median_us")?;
    println!("start path ({backend}, median of {starts} sequential `quantumctl run`s, microseconds):");
    for pair in stages {
        let stage = pair[0].as_str().unwrap_or("?");
        println!("  {stage:<50} {:>9.0}", pair[1].as_f64().unwrap_or(f64::NAN));
    }
    Ok(())
}

/// Seconds since the kernel started (CLOCK_MONOTONIC, so kernel and
/// initramfs time count) at which each unit became active.
fn active_at(guest: &Guest, units: &[&str]) -> Result<Vec<f64>> {
    let out = guest.run_ok(&format!("systemctl show -P ActiveEnterTimestampMonotonic {}", units.join(" ")))?;
    // With several units, systemctl separates their values by blank lines.
    let values: Vec<f64> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<f64>()
                .map(|us| us / 1e6)
                .with_context(|| format!("ActiveEnterTimestampMonotonic '{l}'"))
        })
        .collect::<Result<_>>()?;
    if values.len() != units.len() || values.iter().any(|&v| v <= 0.0) {
        bail!("{units:?} did not all become active: {values:?}");
    }
    Ok(values)
}

fn boot_time(image: &Image, boots: u32) -> Result<()> {
    let (mut ready, mut multi_user, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=boots {
        eprintln!("boot {i}/{boots} with quantumd ...");
        let guest = Guest::boot(image, Backend::Qemu)?;
        guest.wait_ready()?;
        let t = active_at(&guest, &["quantumd.service", "multi-user.target"])?;
        ready.push(t[0]);
        multi_user.push(t[1]);
        drop(guest);

        eprintln!("boot {i}/{boots} without quantumd (systemd.mask=quantumd.service) ...");
        let mut config = BootConfig::for_backend(Backend::Qemu);
        config.extra_cmdline.push("systemd.mask=quantumd.service".into());
        let guest = Guest::boot_with(image, Backend::Qemu, config)?;
        guest.wait_ready()?;
        let state = guest.run("systemctl is-active quantumd.service")?;
        if state.success() {
            bail!("quantumd ran although it was masked");
        }
        baseline.push(active_at(&guest, &["multi-user.target"])?[0]);
    }
    let (r, m, b) = (median(&mut ready), median(&mut multi_user), median(&mut baseline));
    println!("boot time (QEMU/TCG, median of {boots} boots each, seconds since the kernel started):");
    println!("  with quantumd:    quantumd READY {r:6.1} s, multi-user.target {m:6.1} s");
    println!("  without quantumd: multi-user.target {b:6.1} s");
    println!("  ratio READY/baseline {:.2}x, multi-user/baseline {:.2}x", r / b, m / b);
    Ok(())
}

fn iso_boot_time(iso: &Path, baseline: &Path, boots: u32) -> Result<()> {
    let iso = IsoImage::load(&iso.join("iso.env"))?;
    let baseline = IsoImage::load(&baseline.join("iso.env"))?;
    let boot = |image: &IsoImage| -> Result<Guest> {
        let mut config = BootConfig::for_backend(Backend::Qemu);
        config.ready_timeout = Duration::from_secs(600);
        let guest = Guest::boot_machine(&image.machine(Firmware::Bios), config)?;
        guest.wait_ready()?;
        Ok(guest)
    };
    let (mut ready, mut multi_user, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=boots {
        eprintln!("ISO boot {i}/{boots} with QuantumOS ({}) ...", iso.short_hash());
        let guest = boot(&iso)?;
        let t = active_at(&guest, &["quantumd.service", "multi-user.target"])?;
        ready.push(t[0]);
        multi_user.push(t[1]);
        drop(guest);

        eprintln!("ISO boot {i}/{boots} without QuantumOS ({}) ...", baseline.short_hash());
        let guest = boot(&baseline)?;
        if guest.run("test -e /usr/bin/quantumd")?.success() {
            bail!("the baseline ISO {} has quantumd", baseline.iso.display());
        }
        without.push(active_at(&guest, &["multi-user.target"])?[0]);
    }
    let (r, m, b) = (median(&mut ready), median(&mut multi_user), median(&mut without));
    println!("ISO boot time (QEMU/TCG, SeaBIOS, median of {boots} boots each, seconds since the kernel started):");
    println!("  with QuantumOS:    quantumd READY {r:6.1} s, multi-user.target {m:6.1} s");
    println!("  without QuantumOS: multi-user.target {b:6.1} s");
    println!(
        "  ratio READY/baseline {:.2}x (goal <= 1.1x), multi-user/baseline {:.2}x",
        r / b,
        m / b
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
