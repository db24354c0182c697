//! The steppps kernel module's record (`/dev/steppps`): parsing a fixture,
//! the reasons it is not read, and the collector's fallback without it.
//! The real device is read in the VM tier (`tests/vm/tests/kernel.rs`).

use std::path::{Path, PathBuf};

use quantum_steppps::figures::KernelFigures;
use quantum_steppps::{Availability, Collector, FileError, Gpus, KmodError, KmodReader, Sources};

/// What the module wrote in a QEMU guest (kmod/steppps/README.md).
const RECORD: &str = "\
generation 7
samples 1234
interval_ms 250
sampled_at_ms 308500
loadavg 0.42 0.17 0.05
cpus_online 2
mem_total_kb 473560
mem_free_kb 431988
";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).expect("directory");
    std::fs::write(&path, text).expect("fixture file");
    path
}

fn read(text: &str) -> (tempfile::TempDir, Result<KernelFigures, KmodError>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = write(dir.path(), "steppps", text);
    let result = KmodReader::new(path).read();
    (dir, result)
}

/// The error's message with its path made relative, for stable assertions.
fn message(dir: &Path, e: &KmodError) -> String {
    e.to_string().replace(&format!("{}/", dir.display()), "")
}

#[test]
fn a_record_reads_into_kernel_figures() {
    let (dir, result) = read(RECORD);
    let figures = result.expect("the record parses");
    assert_eq!(
        figures,
        KernelFigures {
            device: dir.path().join("steppps").display().to_string(),
            generation: 7,
            samples: 1234,
            interval_ms: 250,
            sampled_at_ms: 308_500,
            load_one: 0.42,
            load_five: 0.17,
            load_fifteen: 0.05,
            cpus_online: 2,
            memory_total_bytes: 473_560 * 1024,
            memory_free_bytes: 431_988 * 1024,
        }
    );
}

#[test]
fn keys_in_another_order_and_unknown_keys_are_fine() {
    let mut lines: Vec<&str> = RECORD.lines().rev().collect();
    lines.insert(3, "psi_some_avg10 0.00");
    let (_dir, result) = read(&(lines.join("\n") + "\n"));
    let figures = result.expect("parses");
    assert_eq!((figures.generation, figures.cpus_online, figures.load_five), (7, 2, 0.17));
}

#[test]
fn a_bad_record_names_the_line_and_the_key() {
    let cases = [
        (
            RECORD.replace("cpus_online 2", "cpus_online two"),
            "steppps:6: `cpus_online`: `two` is not a number",
        ),
        (
            RECORD.replace("0.42 0.17 0.05", "0.42 0.17"),
            "steppps:5: `loadavg`: expected 3 numbers, found `0.42 0.17`",
        ),
        (RECORD.replace("mem_free_kb 431988\n", ""), "steppps:7: no `mem_free_kb` line"),
        (format!("{RECORD}generation 8\n"), "steppps:9: `generation` appears twice"),
        (
            RECORD.replace("samples 1234", "samples"),
            "steppps:2: expected `KEY VALUE`, found `samples`",
        ),
        (String::new(), "steppps:1: no `loadavg` line"),
    ];
    for (text, want) in cases {
        let (dir, result) = read(&text);
        let e = result.expect_err(&text);
        assert!(matches!(e, KmodError::File(FileError::Malformed { .. })), "{e:?}");
        assert_eq!(message(dir.path(), &e), want);
    }
}

#[test]
fn no_device_means_the_module_is_not_loaded() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let e = KmodReader::new(dir.path().join("steppps")).read().expect_err("no file");
    assert!(matches!(e, KmodError::NotLoaded { .. }), "{e:?}");
    assert_eq!(
        message(dir.path(), &e),
        "steppps is not there (the steppps kernel module is not loaded)"
    );
}

/// Node totals for a collector: the procfs files it needs.
fn proc_fixture(root: &Path) {
    write(root, "stat", "cpu  100 10 50 800 40 0 0 0 0 0\ncpu0 100 10 50 800 40 0 0 0 0 0\n");
    write(
        root,
        "meminfo",
        "MemTotal:  473560 kB\nMemFree: 431988 kB\nMemAvailable: 440000 kB\n",
    );
    write(root, "loadavg", "0.42 0.17 0.05 1/80 321\n");
}

fn collect(sources: Sources) -> Availability<KernelFigures> {
    let mut collector = Collector::new(sources, Gpus::NoGpu { reason: "test".into() });
    collector
        .collect(&[], Availability::unavailable("test"), Availability::unavailable("test"))
        .expect("fixture /proc reads")
        .figures
        .kernel
}

#[test]
fn the_collector_reads_the_device_when_it_is_there_and_says_why_not_otherwise() {
    let dir = tempfile::tempdir().expect("temporary directory");
    proc_fixture(&dir.path().join("proc"));
    let device = dir.path().join("dev/steppps");
    let sources = Sources {
        cgroup_root: dir.path().join("cgroup"),
        proc_root: dir.path().join("proc"),
        kmod_device: Some(device.clone()),
    };

    let without = collect(sources.clone());
    let Availability::Unavailable { unavailable } = without else {
        panic!("figures without a device: {without:?}");
    };
    assert!(unavailable.contains("the steppps kernel module is not loaded"), "{unavailable}");

    write(dir.path(), "dev/steppps", RECORD);
    let with = collect(sources.clone());
    let figures = with.available().expect("figures from the device");
    assert_eq!((figures.generation, figures.memory_total_bytes), (7, 473_560 * 1024));

    let off = collect(Sources {
        kmod_device: None,
        ..sources
    });
    assert!(off.available().is_none(), "{off:?}");
}
