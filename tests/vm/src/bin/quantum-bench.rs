//! `quantum-bench`: boots the built image and runs the in-guest benchmarks,
//! printing each as a ratio against the obvious alternative measured in the
//! same run (`make bench`).
//!
//! usage: quantum-bench [--backend nspawn|qemu] [--starts N] [--concurrent N]

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use quantum_vmtest::{Backend, Guest, Image, DEFAULT_VARIANT, GUEST_SHARE};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quantum-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<()> {
    let mut backend = Backend::Nspawn;
    let mut starts = 100u32;
    let mut concurrent = 256u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--backend" => {
                backend = match args.next().as_deref() {
                    Some("nspawn") => Backend::Nspawn,
                    Some("qemu") => Backend::Qemu,
                    other => bail!("--backend nspawn|qemu, not {other:?}"),
                }
            }
            "--starts" => starts = args.next().context("--starts N")?.parse()?,
            "--concurrent" => concurrent = args.next().context("--concurrent N")?.parse()?,
            "-h" | "--help" => {
                println!("usage: quantum-bench [--backend nspawn|qemu] [--starts N] [--concurrent N]");
                return Ok(());
            }
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let image = Image::locate(DEFAULT_VARIANT)?.context("no image: run `make image` first")?;
    eprintln!("booting the {DEFAULT_VARIANT} image ({backend}) ...");
    let guest = Guest::boot(&image, backend)?;
    let ready = guest.wait_ready()?;
    eprintln!("guest ready after {:.1} s", ready.as_secs_f64());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/guest/cell-start.py");
    std::fs::copy(script, guest.share().join("cell-start.py")).context("copying the benchmark into the share")?;
    guest.run_ok("systemctl is-active --wait quantumd.service || true")?;
    let out = guest.run_with_timeout(
        &format!("python3 {GUEST_SHARE}/cell-start.py {starts} {concurrent}"),
        std::time::Duration::from_secs(1800),
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
        "  systemd-run     p50 {:7.1} ms  p95 {:7.1} ms",
        f("systemd_run_p50_ms"),
        f("systemd_run_p95_ms")
    );
    println!(
        "  ratio quantumctl/systemd-run: p50 {:.2}x  p95 {:.2}x",
        f("ratio_p50"),
        f("ratio_p95")
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
    Ok(())
}
