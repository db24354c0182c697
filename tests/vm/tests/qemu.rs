//! Smoke test of the harness and the image in a QEMU virtual machine (TCG).

mod common;

#[test]
fn qemu_smoke() {
    common::smoke(quantum_vmtest::Backend::Qemu);
}
