//! Every cell of the standard catalog does its job in a VM: the test image
//! booted under QEMU once, then the catalog smoke of
//! `quantum_vmtest::catalog` (what each cell is given and how it is judged
//! is written there). `QUANTUM_VMTEST_ONLY=web-server,...` runs only some.

use std::collections::BTreeSet;
use std::path::Path;

use quantum_vmtest::catalog::CELLS;
use quantum_vmtest::{Backend, Scenarios};

/// `CELLS` covers the catalog exactly; checked without a VM, so a
/// new cell without a smoke scenario fails `cargo test` on any machine.
#[test]
fn every_catalog_cell_has_a_smoke_scenario() {
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/cells");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&catalog)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("cell.toml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let covered: BTreeSet<String> = CELLS.iter().map(|(cell, _, _)| (*cell).to_owned()).collect();
    assert_eq!(covered.len(), CELLS.len(), "a cell has two scenarios");
    assert_eq!(
        on_disk, covered,
        "packaging/cells and the scenarios of tests/vm/src/catalog.rs differ"
    );
}

#[test]
fn every_catalog_cell_does_its_job_in_a_vm() {
    let Some(guest) = quantum_vmtest::boot_ready("catalog scenarios", Backend::Qemu) else {
        return;
    };
    let mut s = Scenarios::new(&guest);
    quantum_vmtest::catalog::run_all(&mut s);
    if let Err(e) = s.finish() {
        panic!("{e:#}");
    }
}
