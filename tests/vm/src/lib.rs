//! Test infrastructure of QuantumOS: boot a built guest image in a
//! systemd-nspawn container or a QEMU virtual machine and run commands in it.
//!
//! ```no_run
//! use quantum_vmtest::{Backend, Guest, Image};
//! # fn main() -> anyhow::Result<()> {
//! let image = Image::locate("test-guest")?.expect("make image first");
//! let guest = Guest::boot(&image, Backend::Qemu)?;
//! guest.wait_ready()?;
//! let out = guest.run("uname -r")?;
//! assert!(out.success());
//! # Ok(()) }
//! ```
//!
//! The image comes from `image-builder/build-rootfs.sh` (`make image`); the
//! agent that runs the commands lives in `tests/vm/guest/`.

mod agent;
pub mod catalog;
mod env_file;
mod guest;
mod image;
mod iso;
mod scenario;

use std::fmt;
use std::io::Write;

pub use agent::{AgentChannel, Output};
pub use guest::{nspawn_command, qemu_command, Backend, BootConfig, Console, Guest, NspawnRoot, GUEST_SHARE, READY_LINE};
pub use image::{Image, DEFAULT_VARIANT};
pub use iso::{blank_disk, identity_sealed_by_tpm, ovmf_files, Firmware, IsoImage, Machine};
pub use scenario::Scenarios;

/// Writes a line to stderr past the test harness's output capture, so that
/// progress and skips show up in `cargo test` without `--nocapture`.
pub fn report(args: fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{args}");
}

/// The current image of the default variant, or `None` after printing why
/// the test `test` is skipped. Only a missing image skips: with
/// `QUANTUM_VMTEST_REQUIRE_IMAGE=1` (the Makefile sets it, having built the
/// image) a missing image fails, and so does an image that cannot be read.
pub fn image_or_skip(test: &str) -> Option<Image> {
    match Image::locate(DEFAULT_VARIANT) {
        Ok(Some(image)) => Some(image),
        Ok(None) => {
            let location = Image::expected_location(DEFAULT_VARIANT);
            if std::env::var("QUANTUM_VMTEST_REQUIRE_IMAGE").is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: no {DEFAULT_VARIANT} image at {} although QUANTUM_VMTEST_REQUIRE_IMAGE=1",
                    location.display()
                );
            }
            report(format_args!(
                "SKIPPED {test}: no {DEFAULT_VARIANT} image has been built (looked at {}); \
                 `make image` builds it, `make test-nspawn` / `make test-vm` build it and run this",
                location.display()
            ));
            None
        }
        Err(e) => panic!("{test}: the {DEFAULT_VARIANT} image cannot be used: {e:#}"),
    }
}

/// Boots the default image on `backend` and waits until its agent is ready,
/// for a test named `test`; `None` (after printing why) when no image has
/// been built and the test may skip. Boot failures panic with the guest's
/// diagnostics.
pub fn boot_ready(test: &str, backend: Backend) -> Option<Guest> {
    let image = image_or_skip(test)?;
    let guest = Guest::boot(&image, backend).unwrap_or_else(|e| panic!("{e:#}"));
    if let Err(e) = guest.wait_ready() {
        panic!("{e:#}");
    }
    Some(guest)
}

/// Polls `f` every 300 ms until it yields a value, or fails after `limit`
/// naming `what` it was waiting for.
pub fn eventually<T>(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
