//! Node totals from procfs: fixtures, the real /proc, and the busy fraction.

use std::path::Path;

use quantum_steppps::proc::{CpuTimes, LoadAvg};
use quantum_steppps::{FileError, NodeSample, Pressure, PressureLine, ProcReader, Sampler};

const STAT: &str = "\
cpu  100 10 50 800 40 0 0 0 20 0
cpu0 50 5 25 400 20 0 0 0 10 0
cpu1 50 5 25 400 20 0 0 0 10 0
intr 12345 0 0
ctxt 67890
btime 1700000000
processes 4242
procs_running 2
procs_blocked 0
";
const MEMINFO: &str = "MemTotal:       16318412 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\nHugePages_Total:       0\n";
const LOADAVG: &str = "0.52 0.58 0.59 2/389 12345\n";
const PSI: &str = "some avg10=0.50 avg60=0.25 avg300=0.00 total=777\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temporary directory");
    for (name, text) in files {
        let path = root.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).expect("directory");
        std::fs::write(path, text).expect("fixture file");
    }
    root
}

#[test]
fn a_fixture_proc_reads_into_a_node_sample() {
    let root = fixture(&[
        ("stat", STAT),
        ("meminfo", MEMINFO),
        ("loadavg", LOADAVG),
        ("pressure/cpu", PSI),
        ("pressure/memory", PSI),
    ]);
    let sample = ProcReader::new(root.path().to_owned()).read().expect("fixture parses");
    let psi = Pressure {
        some: PressureLine {
            avg10: 0.5,
            avg60: 0.25,
            avg300: 0.0,
            total_usec: 777,
        },
        full: Some(PressureLine::default()),
    };
    assert_eq!(
        sample,
        NodeSample {
            cpus: 2,
            // guest time (20) is inside user already and not counted twice; idle + iowait are not busy.
            cpu: CpuTimes { busy: 160, total: 1000 },
            memory_total: 16_318_412 * 1024,
            memory_available: 8_000_000 * 1024,
            load: LoadAvg {
                one: 0.52,
                five: 0.58,
                fifteen: 0.59,
                runnable: 2,
                tasks: 389,
            },
            pressure: quantum_steppps::PressureSet {
                cpu: Some(psi),
                memory: Some(psi),
                io: None,
            },
        }
    );
}

#[test]
fn the_busy_fraction_is_over_the_ticks_between_two_samples() {
    let mut sampler = Sampler::new();
    let mut sample = NodeSample {
        cpus: 2,
        cpu: CpuTimes { busy: 160, total: 1000 },
        ..NodeSample::default()
    };
    assert_eq!(sampler.node(&sample).cpu_busy, None, "no fraction from one sample");
    sample.cpu = CpuTimes { busy: 210, total: 1200 };
    assert_eq!(sampler.node(&sample).cpu_busy, Some(0.25));
    sample.cpu = CpuTimes { busy: 210, total: 1200 };
    assert_eq!(sampler.node(&sample).cpu_busy, None, "no ticks passed: no fraction rather than 0/0");
}

#[test]
fn malformed_proc_files_are_errors_naming_the_file_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        ("stat", "cpu  1 2 3\n", "stat:1: expected at least 8 cpu fields, found 3"),
        (
            "stat",
            "intr 1\ncpu  1 2 3 4 5 6 7 x\n",
            "stat:2: `cpu field 8`: `x` is not a number",
        ),
        ("stat", "cpu0 1 2 3 4 5 6 7 8\n", "stat:1: no `cpu` line"),
        (
            "meminfo",
            "MemTotal: 1 kB\nMemAvailable 2 kB\n",
            "meminfo:2: expected `KEY: VALUE`, found `MemAvailable 2 kB`",
        ),
        (
            "meminfo",
            "MemTotal: 1 MB\nMemAvailable: 2 kB\n",
            "meminfo:1: `MemTotal`: expected `N kB`, found `1 MB`",
        ),
        ("meminfo", "MemTotal: 1 kB\n", "meminfo: no `MemAvailable` line"),
        ("loadavg", "0.1 0.2 0.3 1/2\n", "loadavg:1: expected 5 fields, found 4"),
        ("loadavg", "0.1 0.2 0.3 12 99\n", "loadavg:1: expected RUNNABLE/TASKS, found `12`"),
        (
            "pressure/io",
            "some avg10=1\n",
            "pressure/io:1: expected avg10=, avg60=, avg300= and total=",
        ),
    ];
    for (file, text, expected) in cases {
        let mut files = vec![("stat", STAT), ("meminfo", MEMINFO), ("loadavg", LOADAVG)];
        files.retain(|(name, _)| name != file);
        files.push((file, text));
        let root = fixture(&files);
        let err = ProcReader::new(root.path().to_owned())
            .read()
            .expect_err(&format!("{file} with {text:?}"));
        let prefix = format!("{}/", root.path().display());
        assert_eq!(err.to_string().strip_prefix(&prefix), Some(*expected), "{file} with {text:?}");
    }
}

#[test]
fn a_missing_required_file_is_an_error_naming_it() {
    let root = fixture(&[("stat", STAT), ("meminfo", MEMINFO)]);
    let err = ProcReader::new(root.path().to_owned()).read().expect_err("no loadavg");
    assert!(
        matches!(&err, FileError::Read { path, .. } if path == &root.path().join("loadavg")),
        "{err:?}"
    );
}

#[test]
fn the_real_proc_reads_and_makes_sense() {
    let reader = ProcReader::new("/proc".into());
    let first = reader.read().unwrap_or_else(|e| panic!("/proc: {e}"));
    let online = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(0);
    assert!(
        first.cpus >= 1 && first.cpus >= online,
        "{} CPUs in /proc/stat, {online} available",
        first.cpus
    );
    assert!(first.memory_total > 0 && first.memory_available <= first.memory_total, "{first:?}");
    assert!(first.load.tasks >= 1, "{first:?}");
    assert_eq!(first.pressure.cpu.is_some(), Path::new("/proc/pressure/cpu").exists());

    let mut sampler = Sampler::new();
    sampler.node(&first);
    // Burn a little CPU so that ticks pass between the samples.
    let start = std::time::Instant::now();
    let mut x = 0u64;
    while start.elapsed() < std::time::Duration::from_millis(50) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let second = reader.read().unwrap_or_else(|e| panic!("/proc: {e}"));
    let busy = sampler.node(&second).cpu_busy;
    assert!(busy.is_some_and(|b| (0.0..=1.0).contains(&b)), "busy fraction {busy:?}");
}
