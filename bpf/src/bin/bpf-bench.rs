//! What the telemetry costs, as ratios against the same run without it,
//! measured in alternation so that drift on a shared machine hits both sides.
//!
//! - `perf bench sched pipe`, pinned to CPU 0: a context-switch storm, the
//!   worst case for sched_switch/sched_wakeup programs. Measured with the
//!   benchmark outside the watched subtree (what every other process on the
//!   machine pays) and inside it (what a cell pays).
//! - `hackbench`: many processes and sockets, unpinned.
//! - Ring buffer throughput: exits of a fork storm in a cell, consumed live.
//! - A network allow-list's price per cell start: loading `netpolicy.bpf.o`
//!   (one verifier pass) and attaching it, against a cgroup mkdir+rmdir.
//!
//! Needs root, `perf` (linux-perf) and `hackbench` (rt-tests). Run with
//! `cargo run --release -p quantum-bpf --bin bpf-bench [-- REPETITIONS]`
//! (default 9; about a minute on a 2-core VM).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quantum_bpf::{Options, Telemetry};

const PIPE_LOOPS: &str = "30000";
const HACKBENCH_ARGS: &[&str] = &["-g", "1", "-l", "200"];
const FORKS: u64 = 5000;

/// Where the benchmark runs, and whether the programs are attached. Each
/// place has its own baseline: a process in a nested cgroup pays for the
/// nesting (accounting up the hierarchy) with or without the programs.
#[derive(Clone, Copy, PartialEq)]
struct Mode {
    attached: bool,
    inside: bool,
}

const MODES: [Mode; 4] = [
    Mode {
        attached: false,
        inside: false,
    },
    Mode {
        attached: true,
        inside: false,
    },
    Mode {
        attached: false,
        inside: true,
    },
    Mode {
        attached: true,
        inside: true,
    },
];

struct Bench {
    ancestor: PathBuf,
    cell: PathBuf,
}

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("REPETITIONS must be a number")?
        .unwrap_or(9);
    let root = v2_root()?;
    let ancestor = root.join(format!("qt-bpf-bench-{}", std::process::id()));
    let cell = ancestor.join("cell");
    fs::create_dir_all(&cell).with_context(|| format!("mkdir {}", cell.display()))?;
    let bench = Bench { ancestor, cell };
    let result = run(&bench, reps);
    let _ = fs::remove_dir(&bench.cell);
    let _ = fs::remove_dir(&bench.ancestor);
    result
}

fn run(bench: &Bench, reps: usize) -> Result<()> {
    let started = Instant::now();
    println!("quantum-bpf overhead, {reps} alternating repetitions, medians (ratio = with / without; 1.00 = free)\n");

    let pipe = measure(bench, reps, |b, inside| {
        let out = b.command("taskset", &["-c", "0", "perf", "bench", "sched", "pipe", "-l", PIPE_LOOPS], inside)?;
        parse_number_before(&out, "usecs/op")
    })?;
    report("perf bench sched pipe (pinned, usecs/op)", &pipe);

    let hack = measure(bench, reps, |b, inside| {
        let out = b.command("hackbench", HACKBENCH_ARGS, inside)?;
        parse_number_after(&out, "Time:")
    })?;
    report(&format!("hackbench {} (seconds)", HACKBENCH_ARGS.join(" ")), &hack);

    program_time(bench)?;
    ring_buffer(bench)?;
    net_policy(bench, reps)?;
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Per mode (in `MODES` order): the median measurement, and the median over
/// repetitions of the ratio to the same repetition's run without programs in
/// the same place (neighbouring runs share the machine's momentary load, so
/// their ratio is steadier than a ratio of medians). Each repetition runs
/// every mode, in rotating order.
fn measure(bench: &Bench, reps: usize, run: impl Fn(&Bench, bool) -> Result<f64>) -> Result<[(f64, f64); 4]> {
    let mut samples: [Vec<f64>; 4] = Default::default();
    for rep in 0..reps {
        for k in 0..MODES.len() {
            let i = (rep + k) % MODES.len();
            let telemetry = if MODES[i].attached {
                Some(Telemetry::load(&Options::new(bench.ancestor.clone())).context("load telemetry")?)
            } else {
                None
            };
            samples[i].push(run(bench, MODES[i].inside)?);
            drop(telemetry);
        }
    }
    let baseline = |i: usize| {
        MODES
            .iter()
            .position(|m| {
                *m == Mode {
                    attached: false,
                    ..MODES[i]
                }
            })
            .unwrap_or(i)
    };
    let ratios = |i: usize| {
        median(
            samples[i]
                .iter()
                .zip(&samples[baseline(i)])
                .map(|(with, without)| with / without)
                .collect(),
        )
    };
    Ok([0, 1, 2, 3].map(|i| (median(samples[i].clone()), ratios(i))))
}

fn report(name: &str, [(off_out, _), (on_out, ratio_out), (off_in, _), (on_in, ratio_in)]: &[(f64, f64); 4]) {
    println!("{name}");
    println!("  outside the subtree: without {off_out:8.3}, with {on_out:8.3}   median ratio {ratio_out:.3}");
    println!("  inside it (a cell):  without {off_in:8.3}, with {on_in:8.3}   median ratio {ratio_in:.3}");
}

/// Wall-clock ratios on a busy machine drift by more than the programs
/// cost, so this also asks the kernel (kernel.bpf_stats_enabled) how long
/// the programs themselves ran during one pinned pipe run: the share of the
/// run's time spent in them is the overhead a quiet machine would see
/// (a lower bound: the trampoline's entry and exit are not included).
fn program_time(bench: &Bench) -> Result<()> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = fs::read_to_string(STATS).context("read bpf_stats_enabled")?;
    fs::write(STATS, "1").context("enable BPF run-time statistics")?;
    let result = (|| {
        let _telemetry = Telemetry::load(&Options::new(bench.ancestor.clone())).context("load telemetry")?;
        println!("time inside the programs during one pinned pipe run (kernel.bpf_stats_enabled)");
        for (label, inside) in [("outside the subtree", false), ("inside the subtree ", true)] {
            let (ns0, runs0) = program_stats();
            let start = Instant::now();
            bench.command("taskset", &["-c", "0", "perf", "bench", "sched", "pipe", "-l", PIPE_LOOPS], inside)?;
            let elapsed = start.elapsed().as_nanos() as f64;
            let (ns1, runs1) = program_stats();
            let (ns, runs) = ((ns1 - ns0) as f64, (runs1 - runs0) as f64);
            println!(
                "  {label}  {:6.0} ns per program run, {:5.1} runs per pipe op, estimated ratio {:.3}",
                ns / runs.max(1.0),
                runs / PIPE_LOOPS.parse::<f64>().unwrap_or(1.0),
                elapsed / (elapsed - ns)
            );
        }
        Ok(())
    })();
    fs::write(STATS, before.trim()).context("restore bpf_stats_enabled")?;
    result
}

/// Total run time (ns) and run count of this crate's programs (all named `qt_*`).
fn program_stats() -> (u64, u64) {
    libbpf_rs::query::ProgInfoIter::default()
        .filter(|p| p.name.to_string_lossy().starts_with("qt_"))
        .fold((0, 0), |(ns, runs), p| (ns + p.run_time_ns, runs + p.run_cnt))
}

/// What `[isolation] network-allow` adds to a cell's start: a fresh
/// allow-list program loaded and attached to its cgroup (quantumd loads
/// one per start), in alternation with what every start does anyway,
/// making and removing the cell's cgroup.
fn net_policy(bench: &Bench, reps: usize) -> Result<()> {
    use quantum_bpf::{Destination, NetPolicy};
    let rules = [Destination {
        protocol: quantum_model::Protocol::Tcp,
        ports: (443, 443),
        net: Some(("10.0.0.0".parse()?, 8)),
    }];
    let (mut policy_ms, mut cgroup_ms) = (Vec::new(), Vec::new());
    for i in 0..reps.max(3) * 5 {
        let dir = bench.ancestor.join(format!("np-{i}"));
        let start = Instant::now();
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        fs::remove_dir(&dir)?;
        cgroup_ms.push(start.elapsed().as_secs_f64() * 1e3);

        fs::create_dir(&dir)?;
        let start = Instant::now();
        let mut p = NetPolicy::load(&rules).context("load the allow-list")?;
        p.attach(&dir).context("attach the allow-list")?;
        policy_ms.push(start.elapsed().as_secs_f64() * 1e3);
        drop(p);
        fs::remove_dir(&dir)?;
    }
    let (policy, cgroup) = (median(policy_ms), median(cgroup_ms));
    println!(
        "\nnetwork-allow per cell start: load + attach {policy:.2} ms (median), vs cgroup mkdir+rmdir {cgroup:.2} ms: ratio {:.1}",
        policy / cgroup
    );
    Ok(())
}

/// Exit events of a fork storm in the cell, consumed as they come.
fn ring_buffer(bench: &Bench) -> Result<()> {
    let forks = bench.fork_rate()?;
    let mut telemetry = Telemetry::load(&Options::new(bench.ancestor.clone())).context("load telemetry")?;
    let mut child = bench.spawn_in_cell(Command::new(workload()).args(["fork-exit", &FORKS.to_string()]))?;
    let start = Instant::now();
    let mut received = 0usize;
    loop {
        received += telemetry.poll_events(Duration::from_millis(10))?.len();
        if child.try_wait()?.is_some() {
            received += telemetry.drain_events()?.len();
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let dropped = telemetry.dropped_events()?;
    println!(
        "ring buffer ({} KiB), fork storm of {FORKS} in a cell, consumed live",
        quantum_bpf::DEFAULT_RINGBUF_BYTES / 1024
    );
    println!(
        "  events received {received}, dropped {dropped}, {:.0} events/s",
        received as f64 / elapsed
    );
    println!(
        "  fork+exit rate without programs {forks:.0}/s, with (and consuming) {:.0}/s   time ratio {:.3}",
        FORKS as f64 / elapsed,
        forks * elapsed / FORKS as f64
    );
    Ok(())
}

impl Bench {
    fn command(&self, program: &str, args: &[&str], inside: bool) -> Result<String> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stderr(Stdio::inherit());
        let child = if inside {
            self.spawn_in_cell(cmd.stdout(Stdio::piped()))?
        } else {
            cmd.stdout(Stdio::piped()).spawn()?
        };
        let out = child.wait_with_output().with_context(|| format!("run {program}"))?;
        if !out.status.success() {
            bail!("{program} failed: {}", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn_in_cell(&self, cmd: &mut Command) -> Result<std::process::Child> {
        let procs = File::options()
            .write(true)
            .open(self.cell.join("cgroup.procs"))
            .context("open cell cgroup.procs")?;
        // SAFETY: the closure only writes to a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || (&procs).write_all(b"0"));
        }
        cmd.spawn().with_context(|| format!("spawn {:?}", cmd.get_program()))
    }

    /// fork+exit per second in the cell.
    fn fork_rate(&self) -> Result<f64> {
        let start = Instant::now();
        let status = self
            .spawn_in_cell(Command::new(workload()).args(["fork-exit", &FORKS.to_string()]))?
            .wait()?;
        if !status.success() {
            bail!("bpf-workload fork-exit failed: {status}");
        }
        Ok(FORKS as f64 / start.elapsed().as_secs_f64())
    }
}

fn workload() -> PathBuf {
    // bpf-workload is built next to this binary.
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("bpf-workload")))
        .unwrap_or_else(|| PathBuf::from("bpf-workload"))
}

fn v2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    let cgroup2: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1).filter(|_| l.split(' ').nth(2) == Some("cgroup2")))
        .collect();
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|p| cgroup2.contains(p))
        .or(cgroup2.first().copied())
        .map(|p| Path::new(p).to_owned())
        .context("no cgroup2 mount (mount -t cgroup2 none /sys/fs/cgroup/unified)")
}

fn parse_number_before(out: &str, unit: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_suffix(unit).and_then(|n| n.trim().parse().ok()))
        .with_context(|| format!("no `N {unit}` in output:\n{out}"))
}

fn parse_number_after(out: &str, label: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label).and_then(|n| n.trim().parse().ok()))
        .with_context(|| format!("no `{label} N` in output:\n{out}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
