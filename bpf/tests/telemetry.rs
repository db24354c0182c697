//! quantum-bpf against the real kernel: real programs, real cgroups, real
//! processes. Needs root (CI runs as root) and a kernel with BTF.
//!
//! Each test builds a private tree under the cgroup v2 mount:
//! `qt-bpf-<pid>-<n>/` (the ancestor, standing in for quantum.slice) with a
//! `cell/` inside, and a sibling `qt-bpf-<pid>-<n>-outside/` that must never
//! be counted. Tests run one at a time: they measure scheduling, and a
//! neighbour's fork storm would be part of the measurement.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus as ProcessStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quantum_bpf::{Event, EventKind, ExitStatus, Histogram, LoadError, Options, Telemetry};

mod common;

use common::{v2_root, Cgroup};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_bpf-workload");

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Tree {
    // Field order is drop order: children before parents.
    cell: Cgroup,
    ancestor: Cgroup,
    outside: Cgroup,
}

impl Tree {
    fn new() -> Tree {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("qt-bpf-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let ancestor = Cgroup::create(v2_root().join(&name));
        let cell = Cgroup::create(ancestor.0.join("cell"));
        let outside = Cgroup::create(v2_root().join(format!("{name}-outside")));
        Tree { cell, ancestor, outside }
    }

    fn load(&self, ringbuf_bytes: usize) -> Telemetry {
        let options = Options {
            ringbuf_bytes,
            ..Options::new(self.ancestor.0.clone())
        };
        Telemetry::load(&options).unwrap_or_else(|e| panic!("load: {e}: {:?}", std::error::Error::source(&e)))
    }
}

/// A workload process, killed when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn wait(mut self) -> ProcessStatus {
        self.0.wait().expect("wait")
    }
    fn kill(mut self) -> ProcessStatus {
        let _ = self.0.kill();
        self.0.wait().expect("wait")
    }
    fn wait_timeout(mut self, limit: Duration) -> Option<ProcessStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bpf-workload ARGS` inside the cgroups whose `cgroup.procs` files
/// are given (before it execs, so its exec is seen there), pinned to `cpu`.
fn spawn(procs_files: &[PathBuf], cpu: Option<usize>, args: &[&str]) -> Proc {
    let files: Vec<File> = procs_files
        .iter()
        .map(|p| {
            File::options()
                .write(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        })
        .collect();
    let mut cmd = Command::new(WORKLOAD);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    // SAFETY: between fork and exec the closure only makes raw system calls
    // (write, sched_setaffinity) on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for f in &files {
                (&*f).write_all(b"0")?;
            }
            if let Some(cpu) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Proc(cmd.spawn().expect("spawn bpf-workload"))
}

/// Polls until `done` holds for everything received so far, or 10 s pass.
fn events_until(telemetry: &mut Telemetry, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while !done(&all) && Instant::now() < deadline {
        all.extend(telemetry.poll_events(Duration::from_millis(100)).expect("poll events"));
    }
    all
}

fn of_pid(events: &[Event], pid: u32) -> Vec<(EventKind, u64)> {
    events.iter().filter(|e| e.pid == pid).map(|e| (e.kind, e.cgroup_id)).collect()
}

fn latency(telemetry: &Telemetry) -> HashMap<u64, Histogram> {
    telemetry.runq_latency().expect("read run-queue latency")
}

#[test]
fn run_queue_latency_of_a_cell_rises_under_contention_and_outsiders_are_never_counted() {
    let _serial = serial();
    let tree = Tree::new();
    let telemetry = tree.load(quantum_bpf::DEFAULT_RINGBUF_BYTES);
    let cell = [tree.cell.procs()];
    let outside = [tree.outside.procs()];

    // Quiet: one CPU-bound and one waking task of the cell share CPU 0, so
    // the only waits are the spinner's while the waker runs (and whatever
    // else the machine runs there).
    let _waker = spawn(&cell, Some(0), &["wake-loop", "1000"]);
    let _spinner = spawn(&cell, Some(0), &["spin"]);
    std::thread::sleep(Duration::from_millis(1500));
    let quiet = latency(&telemetry).get(&tree.cell.id()).cloned().unwrap_or_default();

    // Contended: two more of the cell's spinners and two outsiders' (with a waker) on the same CPU.
    let mut hogs: Vec<Proc> = (0..2).map(|_| spawn(&cell, Some(0), &["spin"])).collect();
    hogs.extend((0..2).map(|_| spawn(&outside, Some(0), &["spin"])));
    hogs.push(spawn(&outside, Some(0), &["wake-loop", "1000"]));
    let window = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let after = latency(&telemetry);
    let window = window.elapsed();
    drop(hogs);
    let contended = after.get(&tree.cell.id()).cloned().unwrap_or_default().since(&quiet);

    let p = |h: &Histogram, q| h.percentile(q).unwrap_or_default();
    let share_over = |h: &Histogram, us| h.count_at_least_us(us) as f64 / h.count().max(1) as f64;
    eprintln!(
        "quiet:     n={} p50={:?} p90={:?} p99={:?} >=4ms {:.3}",
        quiet.count(),
        p(&quiet, 50.0),
        p(&quiet, 90.0),
        p(&quiet, 99.0),
        share_over(&quiet, 4096)
    );
    eprintln!(
        "contended: n={} p50={:?} p90={:?} p99={:?} >=4ms {:.3}",
        contended.count(),
        p(&contended, 50.0),
        p(&contended, 90.0),
        p(&contended, 99.0),
        share_over(&contended, 4096)
    );
    eprintln!("quiet buckets:     {:?}", quiet.buckets);
    eprintln!("contended buckets: {:?}", contended.buckets);

    // A 1 ms waker wakes about 1000 times a second; even a loaded machine shows hundreds.
    assert!(quiet.count() > 200, "too few quiet samples: {quiet:?}");
    assert!(contended.count() > 200, "too few contended samples: {contended:?}");
    assert!(
        p(&contended, 90.0) > p(&quiet, 90.0) * 2,
        "p90 should at least double under contention: quiet {:?}, contended {:?}",
        p(&quiet, 90.0),
        p(&contended, 90.0)
    );
    assert!(
        share_over(&contended, 4096) > share_over(&quiet, 4096) + 0.1,
        "waits of 4 ms and more should be markedly more common under contention"
    );

    // The waits are in nanoseconds of real time: the cell's four tasks on
    // one CPU cannot together have waited longer than four times the window
    // (a clock or unit mix-up shows here as absurd sums).
    let waited = Duration::from_nanos(contended.sum_ns);
    assert!(
        waited > Duration::from_millis(100) && waited < window * 4 + Duration::from_millis(200),
        "the cell's tasks waited {waited:?} in all during a {window:?} window"
    );

    // The outsiders waited far more than the cell, yet nothing of theirs is in the map.
    let ids: Vec<u64> = after.keys().copied().collect();
    assert!(!ids.contains(&tree.outside.id()), "the outside cgroup was counted: {ids:?}");
    assert!(
        ids.iter().all(|id| [tree.cell.id(), tree.ancestor.id()].contains(id)),
        "only the subtree is counted: {ids:?}"
    );
    assert_eq!(telemetry.stats().expect("stats").samples_lost, 0);
}

#[test]
fn a_forgotten_cgroup_starts_a_fresh_histogram() {
    let _serial = serial();
    let tree = Tree::new();
    let telemetry = tree.load(quantum_bpf::DEFAULT_RINGBUF_BYTES);
    let waker = spawn(&[tree.cell.procs()], None, &["wake-loop", "1000"]);
    std::thread::sleep(Duration::from_millis(300));
    drop(waker);
    assert!(latency(&telemetry).contains_key(&tree.cell.id()));
    telemetry.forget_cgroup(tree.cell.id()).expect("forget");
    assert!(!latency(&telemetry).contains_key(&tree.cell.id()));
    telemetry.forget_cgroup(tree.cell.id()).expect("forgetting twice is fine");
}

#[test]
fn exec_and_exit_of_processes_in_the_subtree_arrive_with_their_cgroup_and_status() {
    let _serial = serial();
    let tree = Tree::new();
    let mut telemetry = tree.load(quantum_bpf::DEFAULT_RINGBUF_BYTES);
    let cell = tree.cell.id();

    let exits_7 = spawn(&[tree.cell.procs()], None, &["exit", "7"]);
    let exits_7_pid = exits_7.pid();
    assert_eq!(exits_7.wait().code(), Some(7));
    let killed = spawn(&[tree.cell.procs()], None, &["sleep"]);
    let killed_pid = killed.pid();
    std::thread::sleep(Duration::from_millis(100));
    killed.kill();
    let outsider = spawn(&[tree.outside.procs()], None, &["exit", "3"]);
    let outsider_pid = outsider.pid();
    outsider.wait();

    let events = events_until(&mut telemetry, |evs| {
        [exits_7_pid, killed_pid]
            .iter()
            .all(|&pid| evs.iter().any(|e| e.pid == pid && matches!(e.kind, EventKind::Exit(_))))
    });
    assert_eq!(
        of_pid(&events, exits_7_pid),
        [(EventKind::Exec, cell), (EventKind::Exit(ExitStatus::Code(7)), cell)]
    );
    assert_eq!(
        of_pid(&events, killed_pid),
        [
            (EventKind::Exec, cell),
            (
                EventKind::Exit(ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core_dumped: false
                }),
                cell
            )
        ]
    );
    assert_eq!(of_pid(&events, outsider_pid), [], "a process outside the ancestor is not reported");
    let exec = events.iter().find(|e| e.pid == exits_7_pid).expect("exec event");
    assert_eq!(exec.comm, "bpf-workload");
    let leaf = tree.cell.0.file_name().expect("leaf").to_string_lossy();
    assert_eq!(exec.cgroup, leaf, "an exec names its cgroup");
    let exit = events
        .iter()
        .find(|e| e.pid == exits_7_pid && e.kind != EventKind::Exec)
        .expect("exit event");
    assert_eq!(exit.cgroup, "", "only an exec names its cgroup");
    assert!(
        events.iter().all(|e| e.cgroup_id == cell),
        "every event comes from the cell: {events:?}"
    );
    assert_eq!(telemetry.dropped_events().expect("dropped"), 0);
}

#[test]
fn a_tcp_connect_in_the_subtree_arrives_with_its_destination_and_cgroup() {
    let _serial = serial();
    let tree = Tree::new();
    let mut telemetry = tree.load(quantum_bpf::DEFAULT_RINGBUF_BYTES);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let to = listener.local_addr().expect("addr");

    let inside = spawn(&[tree.cell.procs()], None, &["connect", &to.to_string()]);
    let inside_pid = inside.pid();
    assert_eq!(inside.wait().code(), Some(0));
    let outside = spawn(&[tree.outside.procs()], None, &["connect", &to.to_string()]);
    let outside_pid = outside.pid();
    outside.wait();

    let events = events_until(&mut telemetry, |evs| {
        evs.iter().any(|e| e.pid == inside_pid && matches!(e.kind, EventKind::Exit(_)))
    });
    let connects: Vec<&quantum_bpf::Event> = events.iter().filter(|e| matches!(e.kind, EventKind::Connect(_))).collect();
    assert_eq!(connects.len(), 1, "{events:?}");
    let c = connects[0];
    assert_eq!((c.pid, c.kind, c.cgroup_id), (inside_pid, EventKind::Connect(to), tree.cell.id()));
    assert_eq!(c.comm, "bpf-workload");
    assert_eq!(c.cgroup, tree.cell.0.file_name().expect("leaf").to_string_lossy());
    assert_eq!(of_pid(&events, outside_pid), [], "a connect outside the ancestor is not reported");
}

/// OOM kills are provoked with the v1 memory controller, which is where
/// limits are enforced on a hybrid host like ours; where the v2 tree has
/// the controllers, `memory.max` in the cell does the same. Either way the
/// event names the victim's v2 cgroup.
#[test]
fn an_oom_kill_in_a_cell_is_reported_with_the_cells_cgroup() {
    let _serial = serial();
    let tree = Tree::new();
    let mut telemetry = tree.load(quantum_bpf::DEFAULT_RINGBUF_BYTES);

    let v1 = Path::new("/sys/fs/cgroup/memory");
    let (_memcg, procs) = if v1.join("memory.limit_in_bytes").exists() {
        let memcg = Cgroup::create(v1.join(tree.ancestor.0.file_name().expect("name")));
        fs::write(memcg.0.join("memory.limit_in_bytes"), "64M").expect("set v1 memory limit");
        let procs = vec![tree.cell.procs(), memcg.procs()];
        (Some(memcg), procs)
    } else {
        fs::write(tree.ancestor.0.join("cgroup.subtree_control"), "+memory").expect("enable the v2 memory controller");
        fs::write(tree.cell.0.join("memory.max"), "64M").expect("set memory.max");
        (None, vec![tree.cell.procs()])
    };

    let hog = spawn(&procs, None, &["eat-memory"]);
    let pid = hog.pid();
    let status = hog
        .wait_timeout(Duration::from_secs(30))
        .expect("the memory hog was not killed within 30 s");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));

    let events = events_until(&mut telemetry, |evs| {
        evs.iter().any(|e| e.pid == pid && matches!(e.kind, EventKind::Exit(_)))
    });
    let cell = tree.cell.id();
    assert_eq!(
        of_pid(&events, pid),
        [
            (EventKind::Exec, cell),
            (EventKind::OomKill, cell),
            (
                EventKind::Exit(ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core_dumped: false
                }),
                cell
            )
        ]
    );
}

#[test]
fn a_full_ring_buffer_counts_every_event_it_drops() {
    let _serial = serial();
    let tree = Tree::new();
    let mut telemetry = tree.load(4096);

    // Nobody reads while 2000 children exit: one page holds a few dozen records.
    let storm = spawn(&[tree.cell.procs()], None, &["fork-exit", "2000"]);
    assert!(storm.wait().success());
    let received = telemetry.drain_events().expect("drain");
    let dropped = telemetry.dropped_events().expect("dropped");

    // The exec and exit of the storm process and one exit per child: each is either received or counted.
    assert!(dropped > 1000, "dropped {dropped}");
    assert!(!received.is_empty());
    assert_eq!(
        received.len() as u64 + dropped,
        2002,
        "received {} + dropped {dropped}",
        received.len()
    );
    assert_eq!(telemetry.stats().expect("stats").events_dropped, dropped);

    // Once drained, the buffer takes events again.
    let after = spawn(&[tree.cell.procs()], None, &["exit", "0"]);
    let pid = after.pid();
    after.wait();
    let events = events_until(&mut telemetry, |evs| {
        evs.iter().any(|e| e.pid == pid && matches!(e.kind, EventKind::Exit(_)))
    });
    assert_eq!(of_pid(&events, pid).len(), 2);
}

#[test]
fn loading_without_privilege_is_unavailable_with_a_reason() {
    let _serial = serial();
    let tree = Tree::new();
    // A copy nobody can execute, wherever the target directory is.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let exe = dir.path().join("bpf-workload");
    fs::copy(WORKLOAD, &exe).expect("copy bpf-workload");

    let out = Command::new(&exe)
        .arg("load")
        .arg(&tree.ancestor.0)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("unavailable: "), "{stdout}");
    assert!(stdout.contains("CAP_BPF"), "the reason names what is missing: {stdout}");
}

#[test]
fn an_ancestor_that_is_not_a_cgroup2_directory_is_refused() {
    let err = Telemetry::load(&Options::new(PathBuf::from("/proc"))).expect_err("/proc is no cgroup");
    assert!(matches!(err, LoadError::Cgroup(_)), "{err:?}");
}
