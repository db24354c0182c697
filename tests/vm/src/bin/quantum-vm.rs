//! `quantum-vm run`: boots the built test-guest image under QEMU with its
//! serial console on this terminal, logged in as `quantum` (`make vm-run`).

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use quantum_vmtest::{qemu_command, Backend, BootConfig, Console, Image, DEFAULT_VARIANT};

const USAGE: &str = "usage: quantum-vm run [--variant NAME]
  Boots the image built by `make image` under QEMU (TCG) with the serial
  console on this terminal. Quit with Ctrl-A X. Every boot starts from the
  image as built: changes are thrown away.";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quantum-vm: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode> {
    let mut variant = DEFAULT_VARIANT.to_owned();
    let mut command = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "run" if command.is_none() => command = Some(arg),
            "--variant" => variant = args.next().context("--variant needs a name")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            _ => bail!("unexpected argument '{arg}'\n{USAGE}"),
        }
    }
    if command.is_none() {
        bail!("no command\n{USAGE}");
    }
    let image = Image::locate(&variant)?.with_context(|| {
        format!(
            "no {variant} image at {} (build it with `make image`)",
            Image::expected_location(&variant).display()
        )
    })?;
    // The image is the test image, but the person at its console gets no
    // test harness: its agent is masked for this boot. The 9p share of
    // qemu_command stays, empty.
    let share = tempfile::Builder::new().prefix("quantum-vm-share-").tempdir()?;
    let mut config = BootConfig::for_backend(Backend::Qemu);
    config.extra_cmdline.push("systemd.mask=quantum-test-agent.service".to_owned());
    let mut qemu = qemu_command(&image, &config, share.path(), &Console::Terminal);
    eprintln!(
        "QuantumOS {variant} image {} (kernel {}) under QEMU/TCG: booting takes about a minute.\n\
         You are logged in as `quantum` on the serial console; try `quantumctl run disk-usage path=/var`,\n\
         `quantumctl run web-server` then `curl http://127.0.0.1:8080/`, or `quantumctl --help`.\n\
         Quit: Ctrl-A X. Changes are thrown away when QEMU exits.\n",
        image.short_hash(),
        image.kernel_version
    );
    let status = qemu.status().context("starting qemu-system-x86_64 (make deps installs it)")?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
