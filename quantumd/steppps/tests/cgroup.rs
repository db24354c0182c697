//! Per-cell SPACE: what the cgroup v2 files say, and rates between readings.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quantum_steppps::cgroup::{CpuStat, IoStat, MemoryEvents};
use quantum_steppps::{CellCgroup, CgroupError, CgroupReader, CgroupSample, FileError, Limit, Pressure, PressureLine, Sampler};

const CELL: &str = "quantum.slice/quantum-web\\x2dserver.1.service";

/// A cgroup directory under a temporary root, filled with `files`.
fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, CgroupReader) {
    let root = tempfile::tempdir().expect("temporary directory");
    write(&root.path().join(CELL), files);
    let reader = CgroupReader::new(root.path().to_owned());
    (root, reader)
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("cgroup directory");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("cgroup file");
    }
}

const CPU_STAT: &str = "usage_usec 2000000\nuser_usec 1500000\nsystem_usec 500000\nnr_periods 10\nnr_throttled 3\nthrottled_usec 40000\nnr_bursts 0\nburst_usec 0\n";
const PSI: &str = "some avg10=2.50 avg60=1.00 avg300=0.10 total=9000\nfull avg10=0.50 avg60=0.00 avg300=0.00 total=100\n";

fn full_cgroup(usage_usec: u64, rbytes: u64) -> Vec<(&'static str, String)> {
    vec![
        (
            "cpu.stat",
            CPU_STAT.replace("usage_usec 2000000", &format!("usage_usec {usage_usec}")),
        ),
        ("memory.current", "1048576\n".into()),
        ("memory.max", "268435456\n".into()),
        (
            "memory.events",
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n".into(),
        ),
        ("cpu.pressure", PSI.into()),
        ("memory.pressure", PSI.into()),
        ("io.pressure", PSI.into()),
        (
            "io.stat",
            format!(
                "8:0 rbytes={rbytes} wbytes=2048 rios=3 wios=4 dbytes=0 dios=0\n253:1 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"
            ),
        ),
        ("pids.current", "7\n".into()),
        ("pids.max", "max\n".into()),
    ]
}

fn as_refs<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(n, t)| (*n, t.as_str())).collect()
}

#[test]
fn every_file_of_a_cgroup_with_all_controllers_is_read() {
    let files = full_cgroup(2_000_000, 1024);
    let (_root, reader) = tree(&as_refs(&files));
    let psi_line = |avg10, total_usec| PressureLine {
        avg10,
        avg60: if total_usec == 9000 { 1.0 } else { 0.0 },
        avg300: if total_usec == 9000 { 0.1 } else { 0.0 },
        total_usec,
    };
    let psi = Pressure {
        some: psi_line(2.5, 9000),
        full: Some(psi_line(0.5, 100)),
    };
    let sample = reader.read(CELL).expect("readable cgroup");
    assert_eq!(
        sample,
        CgroupSample {
            cpu: Some(CpuStat {
                usage_usec: 2_000_000,
                throttled_usec: Some(40_000),
                nr_throttled: Some(3),
            }),
            memory_current: Some(1_048_576),
            memory_max: Some(Limit::Value(268_435_456)),
            memory_events: Some(MemoryEvents {
                max: 4,
                oom: 1,
                oom_kill: 1
            }),
            pressure: quantum_steppps::PressureSet {
                cpu: Some(psi),
                memory: Some(psi),
                io: Some(psi),
            },
            io: Some(IoStat {
                rbytes: 1034,
                wbytes: 2068,
                rios: 4,
                wios: 6,
            }),
            pids_current: Some(7),
            pids_max: Some(Limit::Unlimited),
        }
    );
}

#[test]
fn files_of_controllers_that_are_not_enabled_are_none() {
    // A cgroup with no controllers enabled has only the core's cpu.stat, without throttling keys.
    let (_root, reader) = tree(&[("cpu.stat", "usage_usec 5\nuser_usec 3\nsystem_usec 2\n")]);
    let sample = reader.read(&format!("/{CELL}")).expect("a leading slash is allowed");
    assert_eq!(
        sample,
        CgroupSample {
            cpu: Some(CpuStat {
                usage_usec: 5,
                throttled_usec: None,
                nr_throttled: None
            }),
            ..CgroupSample::default()
        }
    );
}

#[test]
fn an_empty_io_stat_means_no_io_yet() {
    let (_root, reader) = tree(&[("io.stat", "")]);
    assert_eq!(reader.read(CELL).ok().and_then(|s| s.io), Some(IoStat::default()));
}

#[test]
fn a_missing_cgroup_is_not_found() {
    let (root, reader) = tree(&[]);
    match reader.read("quantum.slice/gone.service") {
        Err(CgroupError::NotFound(path)) => assert_eq!(path, root.path().join("quantum.slice/gone.service")),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Each malformed file and the exact error it must produce (`FILE:LINE: message`).
#[test]
fn malformed_files_are_errors_naming_the_file_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "cpu.stat",
            "usage_usec 1\nuser_usec\n",
            "cpu.stat:2: expected `KEY VALUE`, found `user_usec`",
        ),
        ("cpu.stat", "usage_usec lots\n", "cpu.stat:1: `usage_usec`: `lots` is not a number"),
        ("cpu.stat", "user_usec 1\n", "cpu.stat:1: no `usage_usec` line"),
        ("memory.current", "12 KiB\n", "memory.current:1: `value`: `12 KiB` is not a number"),
        ("memory.current", "1\n2\n", "memory.current:2: expected a single line"),
        ("memory.max", "-1\n", "memory.max:1: `value`: `-1` is not a number"),
        (
            "memory.events",
            "low 0\nhigh 0\nmax x\n",
            "memory.events:3: `max`: `x` is not a number",
        ),
        (
            "memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00\n",
            "memory.pressure:2: expected avg10=, avg60=, avg300= and total=",
        ),
        (
            "cpu.pressure",
            "sum avg10=0.00\n",
            "cpu.pressure:1: expected `some` or `full`, found `sum avg10=0.00`",
        ),
        (
            "io.stat",
            "8:0 rbytes=1\nsda rbytes=1\n",
            "io.stat:2: expected a MAJOR:MINOR device, found `sda`",
        ),
        (
            "io.stat",
            "8:0 rbytes=1 wbytes\n",
            "io.stat:1: expected `KEY=VALUE`, found `wbytes`",
        ),
        ("io.stat", "8:0 rbytes=1 wbytes=-2\n", "io.stat:1: `wbytes`: `-2` is not a number"),
        ("pids.current", "\n", "pids.current:1: `value`: `` is not a number"),
        ("pids.max", "unlimited\n", "pids.max:1: `value`: `unlimited` is not a number"),
    ];
    for (file, text, expected) in cases {
        let (root, reader) = tree(&[(file, text)]);
        let err = reader.read(CELL).expect_err(&format!("{file} with {text:?} must not parse"));
        assert!(matches!(err, CgroupError::File(FileError::Malformed { .. })), "{err:?}");
        let prefix = format!("{}/", root.path().join(CELL).display());
        assert_eq!(err.to_string().strip_prefix(&prefix), Some(*expected), "{file} with {text:?}");
    }
}

#[test]
fn an_unreadable_file_is_an_error_naming_it() {
    let (root, reader) = tree(&[]);
    // A directory where a file should be: read(2) fails with EISDIR, which is neither "absent" nor "unsupported".
    std::fs::create_dir(root.path().join(CELL).join("memory.current")).expect("directory");
    let err = reader.read(CELL).expect_err("EISDIR is an error");
    assert_eq!(
        err.to_string(),
        format!("cannot read {}", root.path().join(CELL).join("memory.current").display())
    );
}

fn cell() -> CellCgroup {
    CellCgroup {
        cell: "web-server".into(),
        instance: "web-server.1".into(),
        cgroup: CELL.into(),
    }
}

#[test]
fn rates_are_computed_between_two_readings_of_the_same_cgroup() {
    let files = full_cgroup(2_000_000, 1024);
    let (root, reader) = tree(&as_refs(&files));
    let mut sampler = Sampler::new();
    let t0 = Instant::now();

    let first = sampler.cell(&cell(), reader.read(CELL).expect("first read"), t0);
    assert_eq!(first.rates, Default::default(), "no rates from a single reading");

    // Two seconds later: 3 s more CPU time (1.5 cores), 4 MB more read, throttled 0.2 s more.
    let later = full_cgroup(5_000_000, 4_001_024);
    let mut later = as_refs(&later);
    let cpu_stat = CPU_STAT
        .replace("usage_usec 2000000", "usage_usec 5000000")
        .replace("throttled_usec 40000", "throttled_usec 440000");
    later[0] = ("cpu.stat", &cpu_stat);
    write(&root.path().join(CELL), &later);
    let second = sampler.cell(&cell(), reader.read(CELL).expect("second read"), t0 + Duration::from_secs(2));
    assert_eq!(second.rates.cpu_cores, Some(1.5));
    assert_eq!(second.rates.cpu_throttled, Some(0.2));
    assert_eq!(second.rates.io_read_bytes_per_second, Some(2_000_000.0));
    assert_eq!(second.rates.io_write_bytes_per_second, Some(0.0));
    assert_eq!((second.cell.as_str(), second.cgroup.as_str()), ("web-server", CELL));
}

#[test]
fn a_counter_that_goes_backwards_gives_no_rate_and_a_forgotten_cgroup_starts_over() {
    let files = full_cgroup(9_000_000, 1024);
    let (root, reader) = tree(&as_refs(&files));
    let mut sampler = Sampler::new();
    let t0 = Instant::now();
    sampler.cell(&cell(), reader.read(CELL).expect("read"), t0);

    // The instance restarted: a new cgroup under the same name, counting from zero.
    write(&root.path().join(CELL), &as_refs(&full_cgroup(1_000, 1024)));
    let restarted = sampler.cell(&cell(), reader.read(CELL).expect("read"), t0 + Duration::from_secs(1));
    assert_eq!(restarted.rates.cpu_cores, None);
    assert_eq!(restarted.rates.io_read_bytes_per_second, Some(0.0));

    sampler.retain(&[]);
    let fresh = sampler.cell(&cell(), reader.read(CELL).expect("read"), t0 + Duration::from_secs(2));
    assert_eq!(fresh.rates, Default::default());
}

/// The cgroup v2 mount point of this host (`/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one), from mountinfo.
fn host_cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
    })
}

#[test]
fn the_hosts_own_root_cgroup_parses() {
    let Some(root) = host_cgroup2_root() else {
        eprintln!("no cgroup2 mount on this host: nothing real to read");
        return;
    };
    // The root cgroup has cpu.stat (and PSI where enabled) but no limit files: whatever is there must parse.
    let sample = CgroupReader::new(root.clone())
        .read("")
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    assert!(sample.cpu.is_some(), "{}/cpu.stat: every cgroup v2 root has one", root.display());
    assert_eq!(sample.memory_max, None, "the root cgroup has no memory.max");
}
