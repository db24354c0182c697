//! quantumctl reaches quantumd on its direct socket, peer to peer, without
//! dbus-daemon in between, and everything works there as on the bus: runs
//! with the caller's own descriptors, plans, output, the trail's record of
//! who asked. Each test points quantumctl's bus at nothing, so only the
//! socket can answer.

mod support;

use std::time::Duration;

use support::{catalog, json, sh_cell, wait_for, Node};

const TASK: &str = "[lifecycle]\nkind = \"task\"\nrestart = \"no\"";

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_foreground_task_runs_over_the_socket_with_its_output_and_status() {
    let cat = catalog(&[
        ("greeter", &sh_cell("greeter", "echo hello over the socket", TASK)),
        ("failing", &sh_cell("failing", "echo nope >&2; exit 4", TASK)),
    ]);
    let node = Node::start(cat.path());

    let out = node.ctl_direct(&["run", "greeter"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", node.log());
    assert_eq!(stdout, "hello over the socket\n");

    let out = node.ctl_direct(&["run", "failing"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.starts_with("nope\n"), "{stderr}");

    // The trail names the caller by the uid the kernel gave for the socket.
    let me = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let runs: Vec<_> = support::trail(&node).into_iter().filter(|e| e["action"] == "run").collect();
    assert!(!runs.is_empty());
    for e in runs {
        assert_eq!(e["actor"], format!("uid:{me}"), "{e}");
    }
}

#[test]
fn a_service_is_started_listed_logged_and_stopped_over_the_socket() {
    let cat = catalog(&[("ticker", &sh_cell("ticker", "echo tick; exec sleep 600", ""))]);
    let node = Node::start(cat.path());

    let started = json(&String::from_utf8_lossy(&node.ctl_direct(&["run", "ticker", "--json"]).stdout));
    assert_eq!(started["instance"], "ticker.1", "{started}\n{}", node.log());
    let list = json(&String::from_utf8_lossy(&node.ctl_direct(&["list", "--json"]).stdout));
    assert_eq!(list[0]["state"], "running", "{list}");
    wait_for("the service's first line", Duration::from_secs(10), || {
        let out = node.ctl_direct(&["logs", "ticker.1"]);
        text(&out).0.contains("tick").then_some(())
    });
    let out = node.ctl_direct(&["stop", "ticker"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(node.instances("running"), Vec::<String>::new());
}

#[test]
fn a_plan_asked_on_the_socket_is_executed_on_the_same_connection() {
    let cells = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/cells");
    let node = Node::start(std::path::Path::new(cells));
    let dir = node.dir.path().join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big.raw"), vec![0u8; 300_000]).unwrap();
    let request = format!("what uses the disk in {}", dir.display());
    // Ask gives a plan id that only this connection may execute: the
    // socket's caller stands for a bus name.
    let out = node.ctl_direct(&["ask", "--yes", "--catalog", cells, &request]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", node.log());
    assert!(stdout.contains("1. disk-usage"), "{stdout}");
    // The cell's answer (du's line for the folder) reached this terminal.
    let shown = dir.display().to_string();
    assert!(stdout.lines().any(|l| l.ends_with(&shown) && l.contains('\t')), "{stdout}");
}

#[test]
fn a_stale_socket_file_is_replaced_when_quantumd_restarts() {
    let cat = catalog(&[("greeter", &sh_cell("greeter", "echo hi", TASK))]);
    let mut node = Node::start(cat.path());
    node.kill_daemon();
    assert!(node.socket().exists(), "a killed quantumd leaves its socket file");
    let out = node.ctl_direct(&["list"]);
    assert_eq!(out.status.code(), Some(2), "nobody listens: {:?}", text(&out));
    node.start_daemon();
    let out = node.ctl_direct(&["run", "greeter"]);
    assert_eq!(text(&out).0, "hi\n", "{:?}", text(&out));
}
