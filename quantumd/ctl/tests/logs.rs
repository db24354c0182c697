//! `quantumctl logs`: what a cell printed, read back through quantumd (here
//! from the cgroup backend's per-instance files; the journal under systemd
//! is the VM tier's).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{catalog, sh_cell, wait_for, Node};

const LONG: Duration = Duration::from_secs(20);
const TASK: &str = "[lifecycle]\nkind = \"task\"\nrestart = \"no\"";

#[test]
fn a_detached_tasks_output_is_shown_whole_or_its_last_lines() {
    let cat = catalog(&[("counter", &sh_cell("counter", "echo one; echo two; echo three >&2", TASK))]);
    let node = Node::start(cat.path());
    node.ok(&["run", "--detach", "counter"]);
    wait_for("counter.1 to end", LONG, || {
        (node.instances("exited") == ["counter.1"]).then_some(())
    });

    assert_eq!(node.ok(&["logs", "counter.1"]), "one\ntwo\nthree\n");
    assert_eq!(node.ok(&["logs", "-n", "1", "counter"]), "three\n");
    let json: Vec<serde_json::Value> = node.ok(&["logs", "--json", "counter"]).lines().map(support::json).collect();
    assert_eq!(json.len(), 3);
    assert_eq!(json[0]["instance"], "counter.1");
    assert_eq!(json[0]["message"], "one");

    // The cgroup backend's files carry no times: --since says so.
    let since = node.ctl(&["logs", "--since", "10m", "counter"]);
    assert_eq!(since.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&since.stderr).contains("--since needs systemd's journal"),
        "{since:?}"
    );
    let bad = node.ctl(&["logs", "--since", "yesterday", "counter"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since \"yesterday\""), "{bad:?}");

    // inspect ends with the last lines.
    let inspect = node.ok(&["inspect", "counter.1"]);
    assert!(
        inspect.contains("output (last 5 lines, `quantumctl logs counter.1` for all):\n  one\n  two\n  three\n"),
        "{inspect}"
    );
}

#[test]
fn every_instance_of_a_cell_is_shown_each_line_with_its_instance() {
    let cat = catalog(&[("hello", &sh_cell("hello", "echo hi from $QUANTUM_INSTANCE", TASK))]);
    let node = Node::start(cat.path());
    node.ok(&["run", "--detach", "hello"]);
    wait_for("hello.1 to end", LONG, || (node.instances("exited") == ["hello.1"]).then_some(()));
    node.ok(&["run", "--detach", "hello"]);
    wait_for("hello.2 to end", LONG, || (node.instances("exited").len() == 2).then_some(()));
    assert_eq!(node.ok(&["logs", "hello"]), "hello.1: hi from hello.1\nhello.2: hi from hello.2\n");
}

#[test]
fn follow_streams_a_service_until_it_stops() {
    let script = "for i in 1 2 3; do echo tick $i; sleep 0.2; done; exec sleep 600";
    let cat = catalog(&[("ticker", &sh_cell("ticker", script, ""))]);
    let node = Node::start(cat.path());
    node.ok(&["run", "ticker"]);
    let mut follower = Command::new(support::bin("quantumctl"))
        .args(["logs", "-f", "ticker"])
        .env("QUANTUM_BUS_ADDRESS", &node.bus_address)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        seen.push(line);
    }
    assert_eq!(seen, ["tick 1\n", "tick 2\n", "tick 3\n"]);
    assert!(follower.try_wait().unwrap().is_none(), "logs -f ended while the cell runs");

    node.ok(&["stop", "ticker"]);
    let status = wait_for("logs -f to end after the stop", LONG, || follower.try_wait().unwrap());
    assert!(status.success(), "{status}");
}

#[test]
fn logs_of_an_unknown_cell_say_so() {
    let cat = catalog(&[]);
    let node = Node::start(cat.path());
    let out = node.ctl(&["logs", "nothing-here"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "quantumctl: cannot show the output of nothing-here: no cell or instance \"nothing-here\""
    );
}

#[test]
fn an_instance_number_is_never_given_twice_so_a_restart_mixes_no_runs_output() {
    let cat = catalog(&[("stamp", &sh_cell("stamp", "echo run at $(date +%s%N)", TASK))]);
    let mut node = Node::start(cat.path());
    node.ok(&["run", "--detach", "stamp"]);
    wait_for("stamp.1 to end", LONG, || (node.instances("exited") == ["stamp.1"]).then_some(()));
    let first = node.ok(&["logs", "stamp.1"]);
    // No cell is left to re-adopt: the new quantumd has only its state dir
    // to tell it which numbers were used.
    node.kill_daemon();
    node.start_daemon();
    let started = support::json(&node.ok(&["run", "--detach", "--json", "stamp"]));
    let id = started["instance"].as_str().unwrap_or_default().to_owned();
    assert_ne!(id, "stamp.1", "a number used before the restart was given again");
    wait_for("the second run to end", LONG, || {
        (node.instances("exited") == [id.clone()]).then_some(())
    });
    let second = node.ok(&["logs", &id]);
    assert_eq!(second.lines().count(), 1, "the new instance's output is its own: {second}");
    assert_ne!(first, second);
}
