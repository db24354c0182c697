//! quantumd and quantumctl together on a private bus, with cells as real
//! processes in real cgroups (the cgroup v2 backend). The systemd backend is
//! tested against a real systemd in the container tier (tests/vm).

mod support;

use std::time::Duration;

use support::{catalog, sh_cell, wait_for, Node};

const LONG: Duration = Duration::from_secs(20);

#[test]
fn a_cell_runs_in_its_own_cgroup_and_stop_kills_it() {
    let cat = catalog(&[("sleeper", &sh_cell("sleeper", "exec sleep 600", ""))]);
    let node = Node::start(cat.path());
    let out = node.ok(&["run", "sleeper", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["instance"], "sleeper.1");
    assert_eq!(info["unit"], "quantum-sleeper.1.service");
    let pid = info["pid"].as_u64().unwrap();
    let procs = std::fs::read_to_string(node.cgroup_root.join("quantum/quantum-sleeper.1.service/cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "pid {pid} not in the cell's cgroup: {procs}"
    );
    assert_eq!(node.instances("running"), ["sleeper.1"]);

    let detail: serde_json::Value = serde_json::from_str(&node.ok(&["inspect", "sleeper", "--json"])).unwrap();
    assert_eq!(detail["argv"], serde_json::json!(["/bin/sh", "-c", "exec sleep 600"]));
    assert_eq!(
        detail["properties"]["memory.max"].as_str().unwrap().split(' ').next(),
        Some("268435456")
    );

    assert_eq!(node.ok(&["stop", "sleeper"]).trim(), "stopped sleeper.1");
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "pid {pid} survived stop");
    assert!(node.live_cgroups().is_empty());
    assert_eq!(node.instances("stopped"), ["sleeper.1"]);
}

#[test]
fn params_are_substituted_and_bad_ones_refused_with_the_cell_named() {
    let web = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/cells/web-server/cell.toml")).unwrap();
    let cat = catalog(&[("web-server", &web)]);
    let node = Node::start(cat.path());
    let www = node.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello from a cell\n").unwrap();
    node.ok(&["run", "web-server", "port=18431", &format!("dir={}", www.display())]);
    let body = wait_for("the web-server cell to answer", LONG, || {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:18431/hello.txt',timeout=1).read().decode(),end='')",
            ])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(body, "hello from a cell\n");

    let bad = node.ctl(&["run", "web-server", "port=http"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("cannot run web-server: cell \"web-server\", parameter \"port\": \"http\" is not a port"),
        "{err}"
    );
    let unknown = node.ctl(&["run", "no-such-cell"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no cell named \"no-such-cell\" in the catalog"));
}

#[test]
fn needed_cells_start_first_and_stop_last() {
    let cat = catalog(&[
        ("db", &sh_cell("db", "exec sleep 600", "")),
        ("app", &sh_cell("app", "exec sleep 600", "[needs]\ncells = [\"db\"]")),
    ]);
    let node = Node::start(cat.path());
    node.ok(&["run", "app"]);
    assert_eq!(
        node.instances("running"),
        ["app.2", "db.1"],
        "db gets the first id: it starts first"
    );
    let detail: serde_json::Value = serde_json::from_str(&node.ok(&["inspect", "app.2", "--json"])).unwrap();
    assert_eq!(detail["needs"], serde_json::json!(["db.1"]));
    let refused = node.ctl(&["stop", "db.1"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("db.1 is needed by app.2"));
    assert_eq!(node.ok(&["stop", "app"]).trim(), "stopped app.2, db.1");
    assert!(node.live_cgroups().is_empty());
}

#[test]
fn children_run_in_the_parents_family_and_stop_with_it() {
    let cat = catalog(&[(
        "pool",
        &sh_cell("pool", "exec sleep 600", "[resources]\ncpu-max = 2.0\nmemory-max = \"512M\"\ntasks-max = 256\n[[child]]\nname = \"worker\"\nmanifest = \"worker/cell.toml\"\ncount = 2\n"),
    )]);
    std::fs::create_dir_all(cat.path().join("pool/worker")).unwrap();
    std::fs::write(
        cat.path().join("pool/worker/cell.toml"),
        sh_cell(
            "worker",
            "exec sleep 600",
            "[resources]\ncpu-max = 0.5\nmemory-max = \"128M\"\ntasks-max = 16",
        ),
    )
    .unwrap();
    let node = Node::start(cat.path());
    node.ok(&["run", "pool"]);
    assert_eq!(node.instances("running"), ["pool.1", "worker.2", "worker.3"]);
    let family = node.cgroup_root.join("quantum/quantum-pool.1.slice");
    for unit in ["quantum-pool.1.service", "quantum-worker.2.service", "quantum-worker.3.service"] {
        assert!(family.join(unit).is_dir(), "{unit} is not in the family slice");
    }
    node.ok(&["stop", "pool"]);
    assert!(node.live_cgroups().is_empty());
    assert!(!family.exists(), "family slice left behind");
}

#[test]
fn a_crashing_cell_is_restarted_then_blacklisted_with_a_reason() {
    let cat = catalog(&[(
        "crasher",
        &sh_cell(
            "crasher",
            "exit 3",
            "[lifecycle]\nrestart = \"on-failure\"\nmax-restarts = 2\nrestart-window = \"1m\"",
        ),
    )]);
    let node = Node::start(cat.path());
    node.ctl(&["run", "crasher"]);
    let failed = wait_for("crasher to be blacklisted", LONG, || {
        node.list()
            .into_iter()
            .find(|c| c["state"] == "failed")
            .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
    });
    assert_eq!(
        failed,
        "blacklisted: exited with status 3; it ended 3 times within 1m (max-restarts 2)"
    );
    let again = node.ctl(&["run", "crasher"]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("cell \"crasher\" is blacklisted for another"), "{err}");
}

#[test]
fn an_idle_cell_is_stopped_after_its_idle_timeout() {
    let cat = catalog(&[("idler", &sh_cell("idler", "exec sleep 600", "[lifecycle]\nidle-timeout = \"2s\""))]);
    let node = Node::start(cat.path());
    node.ok(&["run", "idler"]);
    let reason = wait_for("the idle cell to stop", LONG, || {
        node.list()
            .into_iter()
            .find(|c| c["state"] == "stopped")
            .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
    });
    assert_eq!(reason, "idle for 2s");
    assert!(node.live_cgroups().is_empty());
}

#[test]
fn after_kill_9_quantumd_readopts_every_cell_without_duplicates() {
    let cat = catalog(&[("sleeper", &sh_cell("sleeper", "exec sleep 600", ""))]);
    let mut node = Node::start(cat.path());
    for _ in 0..5 {
        node.ok(&["run", "sleeper"]);
    }
    let before = node.live_cgroups();
    assert_eq!(before.len(), 5);
    node.kill_daemon();
    // One cell ends while quantumd is away.
    std::fs::write(node.cgroup_root.join("quantum/quantum-sleeper.3.service/cgroup.kill"), "1").unwrap();
    node.start_daemon();
    assert_eq!(node.instances("running"), ["sleeper.1", "sleeper.2", "sleeper.4", "sleeper.5"]);
    let ended: Vec<_> = node.list().into_iter().filter(|c| c["instance"] == "sleeper.3").collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["reason"], "ended while quantumd was not running");
    // New instances reuse no number given before the kill (adopted or
    // ended): the new quantumd starts after the block the old one reserved.
    let out: serde_json::Value = serde_json::from_str(&node.ok(&["run", "sleeper", "--json"])).unwrap();
    let number: u64 = out["instance"]
        .as_str()
        .and_then(|i| i.strip_prefix("sleeper."))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(number > 5, "{out}");
    node.ok(&["stop", "sleeper"]);
    assert!(node.live_cgroups().is_empty(), "orphans left: {:?}", node.live_cgroups());
}

#[test]
fn ask_shows_a_plan_from_quantumd_and_runs_it_only_when_confirmed() {
    let cells = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/cells");
    let node = Node::start(std::path::Path::new(cells));
    let www = node.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello from a plan\n").unwrap();
    let request = format!("serve {} on port 18433", www.display());
    let ask = |extra: &[&str]| {
        let mut args = vec!["ask", "--catalog", cells];
        args.extend_from_slice(extra);
        args.push(&request);
        node.ctl(&args)
    };

    // No terminal, no --yes: shown, not run.
    let out = ask(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("1. web-server — "), "{stdout}");
    assert!(stdout.contains("port = 18433"), "{stdout}");
    assert!(
        stdout.contains("Nothing was run (no terminal to confirm on; add --yes to run it)"),
        "{stdout}"
    );
    assert!(node.instances("running").is_empty());

    // --dry-run --json: the plan with its id, nothing run.
    let out = ask(&["--json", "--dry-run"]);
    assert!(out.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["cells"][0]["name"], "web-server", "{plan}");
    assert_eq!(plan["cells"][0]["params"]["port"], "18433", "{plan}");
    assert_eq!(plan["cells"][0]["params"]["dir"], www.display().to_string(), "{plan}");
    assert!(plan["plan-id"].is_string(), "{plan}");
    assert!(node.instances("running").is_empty());

    // --yes: run, and it serves the folder.
    let out = ask(&["--yes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("started web-server."), "{stdout}");
    let body = wait_for("the planned web-server to answer", LONG, || {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:18433/hello.txt',timeout=1).read().decode(),end='')",
            ])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(body, "hello from a plan\n");
    node.ok(&["stop", "web-server"]);

    // Nothing in the catalog fits: no plan, nothing run, status 1.
    let out = node.ctl(&["ask", "--yes", "--catalog", cells, "order a pizza with extra cheese"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no plan"), "{out:?}");
}

#[test]
fn quantumctl_without_a_daemon_says_so() {
    let out = std::process::Command::new(support::bin("quantumctl"))
        .args(["list"])
        .env("QUANTUM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("quantumctl: cannot connect to bus unix:path=/nonexistent/bus"),
        "{err}"
    );
}
