//! Smoke test of the harness and the image in a systemd-nspawn container.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use quantum_vmtest::{Backend, BootConfig, Guest};

#[test]
fn nspawn_smoke() {
    common::smoke(Backend::Nspawn);
}

/// Dropping a guest that is still booting leaves nothing running: not
/// nspawn, and not the container's init (and so nothing in the container).
#[test]
fn nspawn_dropped_while_booting_leaves_nothing_running() {
    let Some(image) = quantum_vmtest::image_or_skip("nspawn drop test") else {
        return;
    };
    // Early in boot systemd may not act on nspawn's poweroff signal yet:
    // this test is about the kill that follows, so do not wait long for it.
    let config = BootConfig {
        shutdown_grace: Duration::from_secs(2),
        ..BootConfig::for_backend(Backend::Nspawn)
    };
    let guest = Guest::boot_with(&image, Backend::Nspawn, config).unwrap_or_else(|e| panic!("{e:#}"));
    let nspawn = guest.pid();
    // Wait until the container's init exists, so that there is something
    // inside to be stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    let init = loop {
        if let Some(pid) = children(nspawn).first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "nspawn started no container");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(guest);
    for pid in [nspawn, init] {
        // The pid may have been reused by then, but not by a process of the
        // container: only its absence or a different command line is fine.
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("nspawn") || c.contains("systemd"));
        assert!(!alive, "pid {pid} is still running after the guest was dropped");
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
