//! The channel benchmark (`make bench`; not part of `make test`): messages
//! a second and round-trip latency between two cells over a stream
//! quantumd's broker handed out, against a raw Unix socket doing the same
//! frames in the same run.
//!
//! All run as cells of the same node (cgroup v2 backend, real kernel) with
//! the same limits. Three ways, alternated:
//! - brokered: an `echo-server` cell and a `ping` cell, the stream from
//!   quantumd's broker;
//! - raw, two cells: a `raw-server` cell bound to a socket path and a
//!   `raw-ping` cell connecting to it, no broker: what two cells could do
//!   without quantumd, and so the baseline of the goal;
//! - raw, one cell: a `raw` cell whose echo is its own child on a
//!   `socketpair(2)` (one cgroup, shown for what the topology costs).
//!
//! One pair, then 256 pairs at once (512 cells; every pair of a batch starts
//! its round trips at one moment, `--at`, after all have connected). The
//! goal is a ratio of at least 0.9 (seed 002: 100K msg/s, < 1 ms). Round
//! trips per client: `QUANTUM_BENCH_ROUND_TRIPS` (default 20000 for one
//! pair, a tenth of it for each of the 256).

mod support;

use std::time::Duration;

use support::{bin, catalog, json, open_dir, wait_for, Node};

const SIZE: usize = 64;

fn manifests(exe: &str, n: usize) -> Vec<(String, String)> {
    let head = |name: &str, argv: &[String]| {
        format!(
            "[cell]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"channel bench {name}\"\nexec = {argv:?}\n\
             [resources]\nmemory-min = \"0\"\ntasks-max = 16\n"
        )
    };
    let argv = |args: &[&str]| -> Vec<String> {
        std::iter::once(exe.to_owned())
            .chain(args.iter().map(|a| (*a).to_owned()))
            .collect()
    };
    let param = |name: &str| format!("[params.{name}]\ntype = \"string\"\ndescription = \"{name}\"\n");
    let service = "[lifecycle]\nkind = \"service\"\nrestart = \"no\"\nidle-timeout = \"0\"\n";
    let task = "[lifecycle]\nkind = \"task\"\nrestart = \"no\"\n";
    let (n, size) = (n.to_string(), SIZE.to_string());
    vec![
        (
            "echo-server".to_owned(),
            head("echo-server", &argv(&["serve", "echo"])) + service + "[provides]\nchannels = [\"echo\"]\n",
        ),
        (
            "ping".to_owned(),
            head("ping", &argv(&["ping", "echo-server/echo", &n, &size, "--at", "{at}"]))
                + &param("at")
                + task
                + "[uses]\nchannels = [\"echo-server/echo\"]\nrate = 1000\n",
        ),
        (
            "raw-server".to_owned(),
            head("raw-server", &argv(&["raw-serve", "{socket}"])) + &param("socket") + service,
        ),
        (
            "raw-ping".to_owned(),
            head("raw-ping", &argv(&["raw-ping", "{socket}", &n, &size, "--at", "{at}"])) + &param("socket") + &param("at") + task,
        ),
        (
            "raw".to_owned(),
            head("raw", &argv(&["raw", &n, &size, "--at", "{at}"])) + &param("at") + task,
        ),
    ]
}

struct Figures {
    msgs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs `cell` `count` times at once (run `k` with the parameters
/// `params(k)`, plus `at`: every run starts its round trips at one moment,
/// late enough for all to have started) and reads each run's figures: the
/// aggregate rate over the span from the first start to the last end of the
/// message phases, the median p50 and the worst p99.
fn batch(node: &Node, cell: &str, count: usize, params: impl Fn(usize) -> Vec<String>) -> Figures {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    // Starting a cell takes ~30 ms here; twice that, and a second more.
    let at = format!("at={}", now_ms + 1000 + 60 * count as u128);
    let ids: Vec<String> = (0..count)
        .map(|k| {
            let params = params(k);
            let mut args = vec!["run", "--json", cell, at.as_str()];
            args.extend(params.iter().map(String::as_str));
            json(&node.ok(&args))["instance"].as_str().expect("id").to_owned()
        })
        .collect();
    wait_for(&format!("{count} {cell} runs"), Duration::from_secs(900), || {
        let list = node.list();
        ids.iter()
            .all(|id| {
                list.iter()
                    .any(|c| c["instance"] == id.as_str() && c["state"] != "running" && c["state"] != "starting")
            })
            .then_some(())
    });
    let mut all = Vec::new();
    for id in &ids {
        let out = node.ok(&["logs", id]);
        let line = out
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("{id} printed no figures: {out}"));
        all.push(json(line));
    }
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
    let first = all.iter().map(|v| num(v, "start_us")).fold(f64::MAX, f64::min);
    let last = all.iter().map(|v| num(v, "end_us")).fold(0.0, f64::max);
    let msgs: f64 = all.iter().map(|v| 2.0 * num(v, "round_trips")).sum();
    let mut p50: Vec<f64> = all.iter().map(|v| num(v, "p50_us")).collect();
    p50.sort_by(f64::total_cmp);
    Figures {
        msgs_per_s: msgs / ((last - first) / 1e6),
        p50_us: p50[p50.len() / 2],
        p99_us: all.iter().map(|v| num(v, "p99_us")).fold(0.0, f64::max),
    }
}

fn figures(f: &Figures) -> String {
    format!("{:.0} msgs/s (p50 {:.1} us, p99 {:.1} us)", f.msgs_per_s, f.p50_us, f.p99_us)
}

fn line(what: &str, brokered: &Figures, raw_cells: &Figures, raw_one: &Figures) {
    println!(
        "channels {what}: brokered {} vs raw socket between two cells {}: {:.2}x the raw rate (goal >= 0.9x), p99 {:.2}x; \
         raw socket pair inside one cell {}: brokered {:.2}x of it",
        figures(brokered),
        figures(raw_cells),
        brokered.msgs_per_s / raw_cells.msgs_per_s,
        brokered.p99_us / raw_cells.p99_us,
        figures(raw_one),
        brokered.msgs_per_s / raw_one.msgs_per_s,
    );
}

#[test]
fn brokered_streams_against_a_raw_socket_pair() {
    let n: usize = std::env::var("QUANTUM_BENCH_ROUND_TRIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let bins = open_dir();
    let exe = bins.path().join("quantum-cell-echo");
    std::fs::copy(bin("quantum-cell-echo"), &exe).expect("quantum-cell-echo (cargo build -p quantum-cell)");
    let exe = exe.display().to_string();
    // The raw servers' sockets: a directory the cells' (dynamic) user can
    // write.
    let sockets = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(sockets.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let socket = |k: usize| vec![format!("socket={}", sockets.path().join(format!("raw-{k}.sock")).display())];

    for (pairs, round_trips) in [(1usize, n), (256, (n / 10).max(1))] {
        let cells = manifests(&exe, round_trips);
        let refs: Vec<(&str, &str)> = cells.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let cat = catalog(&refs);
        let node = Node::start_configured(cat.path(), "keep-ended = 2048\n");
        for k in 0..pairs {
            node.ok(&["run", "--json", "echo-server"]);
            let params = socket(k);
            let mut args = vec!["run", "--json", "raw-server"];
            args.extend(params.iter().map(String::as_str));
            node.ok(&args);
        }
        wait_for("the servers to listen", Duration::from_secs(300), || {
            let t = json(&node.ok(&["channels", "--json"]));
            let bound = (0..pairs).all(|k| sockets.path().join(format!("raw-{k}.sock")).exists());
            (bound && t["listening"].as_array().map_or(0, Vec::len) == pairs).then_some(())
        });
        // Alternated, three rounds each for one pair, so that a busy
        // moment of the machine does not fall on one way only.
        let rounds = if pairs == 1 { 3 } else { 1 };
        let (mut brokered, mut raw_cells, mut raw_one) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            brokered.push(batch(&node, "ping", pairs, |_| Vec::new()));
            raw_cells.push(batch(&node, "raw-ping", pairs, socket));
            raw_one.push(batch(&node, "raw", pairs, |_| Vec::new()));
        }
        let median = |v: &mut Vec<Figures>| {
            v.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
            v.swap_remove(v.len() / 2)
        };
        let what = if pairs == 1 {
            "one pair".to_owned()
        } else {
            format!("{pairs} pairs at once")
        };
        line(
            &format!("{what}, {round_trips} round trips of {SIZE} bytes each"),
            &median(&mut brokered),
            &median(&mut raw_cells),
            &median(&mut raw_one),
        );
    }
}
