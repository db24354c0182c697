//! STEPPPS through quantumd, on the real kernel: quantumd (root here, so
//! the eBPF programs load) samples its cells' cgroups and the TIME and
//! EVENT programs once a second; `quantumctl steppps` shows the figures;
//! a cell that misses its run-queue latency objective gets more CPU weight,
//! step by step, recorded in the trail.

mod support;

use std::time::Duration;

use support::{catalog, sh_cell, wait_for, Monitor, Node};

fn figures(node: &Node, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["steppps", "--json"];
    all.extend_from_slice(args);
    let text = node.ok(&all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn cells_space_time_and_event_figures_are_shown_per_instance() {
    let cat = catalog(&[
        // Wakes a hundred times a second: run-queue latency samples, and
        // an exec of a failing program every round (EVENT exec and exit).
        ("ticker", &sh_cell("ticker", "while :; do /bin/false; sleep 0.01; done", "")),
        ("sleeper", &sh_cell("sleeper", "exec sleep 600", "")),
    ]);
    let node = Node::start(cat.path());
    let instance = |cell: &str| -> String {
        let started: serde_json::Value = serde_json::from_str(&node.ok(&["run", cell, "--json"])).unwrap();
        started["instance"].as_str().unwrap().to_owned()
    };
    let (ticker, sleeper) = (instance("ticker"), instance("sleeper"));

    let f = wait_for("TIME and EVENT figures of the ticker", Duration::from_secs(30), || {
        let f = figures(&node, &[]);
        let samples = f["time"]["cells"][&ticker]["samples"].as_u64().unwrap_or(0);
        let execs = f["event"]["cells"][&ticker]["exec"].as_u64().unwrap_or(0);
        // Cells are picked up at the next second's sample.
        let both = f["cells"][&ticker].is_object() && f["cells"][&sleeper].is_object();
        (samples > 0 && execs > 0 && both).then_some(f)
    });
    // SPACE: both instances, read from their own cgroups (cpu.stat is
    // always there; memory and pids figures where the host delegates those
    // controllers, which the VM tier checks).
    for instance in [&ticker, &sleeper] {
        let c = &f["cells"][instance];
        assert!(c["readings"]["cpu"]["usage-usec"].as_u64().is_some(), "{instance}: {c}");
        assert_eq!(c["cgroup"], format!("quantum/quantum-{instance}.service"), "{c}");
    }
    assert!(
        f["cells"][&ticker]["rates"]["cpu-cores"].as_f64().unwrap_or(0.0) > 0.0,
        "{}",
        f["cells"]
    );
    assert!(f["node"]["cpus"].as_u64().unwrap() >= 1, "{}", f["node"]);
    let events = &f["event"]["cells"][&ticker];
    assert!(events["exit-failed"].as_u64().unwrap() > 0, "/bin/false exits 1: {events}");
    assert!(
        f["event"]["cells"][&sleeper].is_null() || f["event"]["cells"][&sleeper]["exec"] == 0,
        "the sleeper does nothing: {}",
        f["event"]
    );
    assert!(f["time"]["cells"][&ticker]["p99-us"].as_u64().is_some(), "{}", f["time"]);

    // --cell keeps one cell's instances; the human view names them.
    let only = figures(&node, &["--cell", "sleeper"]);
    let instances: Vec<&String> = only["cells"].as_object().unwrap().keys().collect();
    assert_eq!(instances, [&sleeper]);
    let view = node.ok(&["steppps", "--once"]);
    assert!(
        view.contains("INSTANCE") && view.contains(&ticker) && view.contains(&sleeper),
        "{view}"
    );
    // Without a GPU, one short line; the loader's detail only with -v and
    // in the JSON.
    if let Some(reason) = f["gpus"]["unavailable"].as_str() {
        let gist = reason.split(" (").next().unwrap();
        assert!(view.lines().any(|l| l == format!("gpus: none ({gist})")), "{view}");
        let verbose = node.ok(&["steppps", "--once", "--verbose"]);
        assert!(verbose.lines().any(|l| l == format!("gpus: none ({reason})")), "{verbose}");
    }
    // The host's kernel has no steppps module: said only with -v.
    let reason = f["kernel"]["unavailable"].as_str().expect("no steppps module on the host");
    assert!(!view.contains("kernel module"), "{view}");
    let verbose = node.ok(&["steppps", "--once", "--verbose"]);
    assert!(
        verbose.lines().any(|l| l == format!("kernel module: unavailable ({reason})")),
        "{verbose}"
    );
}

#[test]
fn a_cell_missing_its_runq_latency_objective_gets_more_cpu_weight_step_by_step() {
    // An objective no cell can meet: every wait is longer than 1 µs.
    let cat = catalog(&[(
        "eager",
        &sh_cell(
            "eager",
            "while :; do sleep 0.005; done",
            "[resources]\ncpu-min = 0.1\n[objectives]\nrunq-latency-p99 = \"1us\"",
        ),
    )]);
    let node = Node::start(cat.path());
    node.ok(&["run", "eager"]);
    let tunes = || -> Vec<serde_json::Value> {
        let trail: serde_json::Value = serde_json::from_str(&node.ok(&["trail", "show", "-n", "0", "--json"])).unwrap();
        trail
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "tune")
            .cloned()
            .collect()
    };
    // Raised by a factor of 1.5 a second, up to ten times the manifest's
    // weight (cpu-min = 0.1 is CPUWeight 10), each step in the trail.
    let steps = wait_for("the weight to reach its ceiling", Duration::from_secs(40), || {
        let t = tunes();
        (t.len() >= 6).then_some(t)
    });
    let details: Vec<&str> = steps.iter().map(|e| e["detail"].as_str().unwrap()).collect();
    let expected = ["10 -> 15", "15 -> 23", "23 -> 35", "35 -> 53", "53 -> 80", "80 -> 100"];
    for (detail, weights) in details.iter().zip(expected) {
        assert!(detail.contains(&format!("eager.1: CPUWeight {weights}")), "{details:#?}");
        assert!(detail.contains("objective"), "the reason is given: {detail}");
    }
    // Applied to the cell's cgroup where this kernel delegates the cpu
    // controller; where it does not, each step records why it was not.
    let cgroup = node.cgroup_root.join("quantum");
    let controllers = std::fs::read_to_string(cgroup.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        assert!(steps.iter().all(|e| e["ok"] == true), "{steps:#?}");
        let weight = std::fs::read_dir(&cgroup)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("quantum-eager"))
            .map(|e| std::fs::read_to_string(e.path().join("cpu.weight")).unwrap());
        assert_eq!(weight.as_deref().map(str::trim), Some("100"));
    } else {
        assert!(
            steps
                .iter()
                .all(|e| e["ok"] == false && e["error"].as_str().unwrap().contains("cpu.weight")),
            "{steps:#?}"
        );
    }
}

#[test]
fn metrics_are_served_as_prometheus_text_on_a_unix_socket_when_configured() {
    use std::io::{Read, Write};
    let cat = catalog(&[("sleeper", &sh_cell("sleeper", "exec sleep 600", ""))]);
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("metrics.sock");
    let node = Node::start_configured(cat.path(), &format!("metrics = {:?}\n", socket.display().to_string()));
    let started: serde_json::Value = serde_json::from_str(&node.ok(&["run", "sleeper", "--json"])).unwrap();
    let instance = started["instance"].as_str().unwrap().to_owned();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o007, 0, "the socket is not for everyone: {mode:o}");
    let text = wait_for("the cell in /metrics", Duration::from_secs(20), || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: quantumd\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains(&format!("instance=\"{instance}\"")).then_some(out)
    });
    assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/plain; version=0.0.4"), "{text}");
    assert!(text.contains("# TYPE quantumos_node_cpus gauge"), "{text}");
}

/// The `cells` argument of every `FiguresChanged` signal `monitor` saw, in order.
fn signalled_cells(monitor: &Monitor) -> Vec<u32> {
    let text = monitor.text();
    let mut seen = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("signal ") && line.contains("member=FiguresChanged") {
            let args: Vec<&str> = lines.by_ref().take(2).map(str::trim).collect();
            assert!(args.len() == 2 && args[0].starts_with("uint64 "), "{args:?}");
            seen.push(args[1].trim_start_matches("uint32 ").parse().expect("uint32 cells"));
        }
    }
    seen
}

#[test]
fn figures_changed_is_signalled_each_sample_while_a_cell_runs_and_once_after_the_last_ends() {
    let cat = catalog(&[("sleeper", &sh_cell("sleeper", "exec sleep 600", ""))]);
    let node = Node::start(cat.path());
    let monitor = Monitor::start(&node.bus_address, "FiguresChanged");
    // Nothing runs: nothing wakes a listener.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(signalled_cells(&monitor), Vec::<u32>::new(), "no cell, no signal");

    let started = support::json(&node.ok(&["run", "sleeper", "--json"]));
    let instance = started["instance"].as_str().expect("instance").to_owned();
    wait_for("three signals covering the cell", Duration::from_secs(30), || {
        (signalled_cells(&monitor).iter().filter(|&&n| n == 1).count() >= 3).then_some(())
    });
    // Each one says figures are there to read: Steppps has the cell.
    assert!(figures(&node, &[])["cells"][&instance].is_object());

    node.ok(&["stop", &instance]);
    wait_for("the signal that the last cell has gone", Duration::from_secs(30), || {
        signalled_cells(&monitor).contains(&0).then_some(())
    });
    let after = signalled_cells(&monitor).len();
    std::thread::sleep(Duration::from_secs(3));
    let seen = signalled_cells(&monitor);
    assert_eq!(seen.len(), after, "quiet again once no cell runs: {seen:?}");
    assert_eq!(seen.iter().filter(|&&n| n == 0).count(), 1, "{seen:?}");
}
