//! The history on disk: it survives a reopen, keeps each cell's last N
//! runs, and a damaged file is an error naming it, never a panic or a
//! silently new history.

use quantum_psychology::{ExitKind, Sample, Store, StoreError};

fn run(i: u64) -> Sample {
    Sample {
        started_unix: 1_704_067_200 + i * 60,
        run_ms: 1000 + i,
        exit: ExitKind::Exited,
        memory_peak: Some((32 + i) << 20),
        memory_p50: None,
        memory_p95: None,
        cpu_average_cores: Some(0.1),
        cpu_peak_cores: Some(0.5),
        runq_p99_us: None,
        tasks_peak: Some(3),
    }
}

#[test]
fn samples_recorded_are_there_after_reopening_in_order_per_cell() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), 1000).unwrap();
        assert!(store.is_empty().unwrap());
        assert_eq!(store.samples("web-server").unwrap(), []);
        for i in 0..5 {
            store.record("web-server", &run(i)).unwrap();
        }
        store.record("checksum", &run(100)).unwrap();
    }
    let store = Store::open(dir.path(), 1000).unwrap();
    assert_eq!(store.samples("web-server").unwrap(), (0..5).map(run).collect::<Vec<_>>());
    assert_eq!(store.samples("checksum").unwrap(), [run(100)]);
    // A cell whose name is a prefix of another's has its own range.
    assert_eq!(store.samples("web").unwrap(), []);
    assert_eq!(store.len().unwrap(), 6);
}

#[test]
fn each_cell_keeps_only_its_last_n_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 10).unwrap();
    for i in 0..25 {
        store.record("archive", &run(i)).unwrap();
    }
    store.record("other", &run(0)).unwrap();
    assert_eq!(store.samples("archive").unwrap(), (15..25).map(run).collect::<Vec<_>>());
    // The cap is per cell: the other cell's run is not pushed out.
    assert_eq!(store.samples("other").unwrap(), [run(0)]);
    drop(store);
    // A smaller cap on reopening trims at the next record.
    let store = Store::open(dir.path(), 3).unwrap();
    store.record("archive", &run(25)).unwrap();
    assert_eq!(store.samples("archive").unwrap(), (23..26).map(run).collect::<Vec<_>>());
}

#[test]
fn a_file_that_is_not_a_history_is_a_corrupt_error_naming_it_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.redb");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();
    let err = Store::open(dir.path(), 1000).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { path, .. } if *path == file), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "the usage history {} is corrupt (move it away to start a new history)",
            file.display()
        )
    );
    // Evidence is kept: the file is not replaced by a new, empty history.
    assert_eq!(std::fs::read(&file).unwrap(), garbage);
}

#[test]
fn a_directory_that_cannot_be_made_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let err = Store::open(&blocker.join("psychology"), 10).unwrap_err();
    assert!(matches!(&err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains(&blocker.join("psychology").display().to_string()), "{err}");
}
