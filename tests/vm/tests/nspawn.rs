//! Smoke test of the harness and the image in a systemd-nspawn container.

mod common;

#[test]
fn nspawn_smoke() {
    common::smoke(quantum_vmtest::Backend::Nspawn);
}
