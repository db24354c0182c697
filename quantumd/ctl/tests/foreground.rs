//! A person sees what their cell did: `quantumctl run` of a task shows its
//! output as it comes and exits with its status; a service returns at once
//! and says how to reach it; Ctrl-C stops a task. quantumd passes the
//! caller's own descriptors to the cell (cgroup v2 backend here; the
//! systemd backend in the VM tier).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{catalog, sh_cell, wait_for, Node};

const LONG: Duration = Duration::from_secs(20);
const TASK: &str = "[lifecycle]\nkind = \"task\"\nrestart = \"no\"";

#[test]
fn a_task_prints_its_exact_output_and_exits_with_its_status() {
    let cat = catalog(&[
        ("greeter", &sh_cell("greeter", "echo hello from a cell; echo second line", TASK)),
        (
            "failing",
            &sh_cell("failing", "echo partial result; echo disk on fire >&2; exit 3", TASK),
        ),
    ]);
    let node = Node::start(cat.path());

    let out = node.ctl(&["run", "greeter"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", node.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a cell\nsecond line\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let list = node.list();
    let greeter = list.iter().find(|c| c["instance"] == "greeter.1").expect("greeter.1 listed");
    assert_eq!(greeter["state"], "exited", "{greeter}");

    let out = node.ctl(&["run", "failing"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", node.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "partial result\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("disk on fire\n"), "{err}");
    // Instance numbers are per node, not per cell: greeter.1, failing.2.
    assert!(err.contains("quantumctl: failing.2 exited with status 3"), "{err}");
}

#[test]
fn a_task_run_in_the_foreground_is_not_restarted_even_on_failure() {
    let manifest = sh_cell(
        "flaky",
        "echo run; exit 1",
        "[lifecycle]\nkind = \"task\"\nrestart = \"on-failure\"\nmax-restarts = 3",
    );
    let cat = catalog(&[("flaky", &manifest)]);
    let node = Node::start(cat.path());
    let out = node.ctl(&["run", "flaky"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "run\n", "ran more than once");
    let restarts: Vec<_> = support::trail(&node).into_iter().filter(|e| e["action"] == "restart").collect();
    assert!(restarts.is_empty(), "{restarts:?}");
}

#[test]
fn a_task_reads_the_callers_input() {
    let cat = catalog(&[("upper", &sh_cell("upper", "tr a-z A-Z", TASK))]);
    let node = Node::start(cat.path());
    let mut child = Command::new(support::bin("quantumctl"))
        .args(["run", "upper"])
        .env("QUANTUM_BUS_ADDRESS", &node.bus_address)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"shout this\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT THIS\n");
}

#[test]
fn ctrl_c_stops_a_foreground_task() {
    let script = "echo started; exec sleep 600";
    let cat = catalog(&[("sleepy", &sh_cell("sleepy", script, TASK))]);
    let node = Node::start(cat.path());
    let mut cmd = Command::new(support::bin("quantumctl"));
    cmd.args(["run", "sleepy"])
        .env("QUANTUM_BUS_ADDRESS", &node.bus_address)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Started with SIGINT ignored, as a script's background job is: a
    // foreground run catches it all the same.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // The cell's own first line, written straight to quantumctl's stdout.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    assert_eq!(node.instances("running"), ["sleepy.1"]);

    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_for("quantumctl to exit after Ctrl-C", LONG, || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(130));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("quantumctl: stopped sleepy.1"), "{err}");
    assert_eq!(node.instances("stopped"), ["sleepy.1"]);
    assert!(node.live_cgroups().is_empty(), "{:?}", node.live_cgroups());
}

#[test]
fn a_service_returns_at_once_and_says_how_to_reach_it() {
    let manifest = sh_cell(
        "server",
        "exec sleep 600",
        "[params.port]\ntype = \"port\"\ndefault = 18440\n\n[lifecycle]\nkind = \"service\"\nreach = \"http://127.0.0.1:{port}/\"",
    );
    let cat = catalog(&[("server", &manifest)]);
    let node = Node::start(cat.path());
    let out = node.ok(&["run", "server", "port=18441"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("started server.1 (quantum-server.1.service, pid "), "{out}");
    assert_eq!(
        lines[1..],
        ["reach it at http://127.0.0.1:18441/", "stop it with: quantumctl stop server.1"]
    );
    assert_eq!(node.instances("running"), ["server.1"]);
    node.ok(&["stop", "server"]);
}

#[test]
fn detach_starts_a_task_in_the_background() {
    let cat = catalog(&[("sleepy", &sh_cell("sleepy", "exec sleep 600", TASK))]);
    let node = Node::start(cat.path());
    let out = node.ok(&["run", "--detach", "sleepy"]);
    assert!(out.starts_with("started sleepy.1 "), "{out}");
    assert_eq!(node.instances("running"), ["sleepy.1"]);
    node.ok(&["stop", "sleepy"]);
}

#[test]
fn ask_yes_shows_the_planned_tasks_output() {
    let cells = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/cells");
    let node = Node::start(std::path::Path::new(cells));
    // Readable by the cell's unprivileged user.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "checked by a plan\n").unwrap();
    let request = format!("compute the sha256 checksum of {}", file.display());
    let out = node.ctl(&["ask", "--yes", "--catalog", cells, &request]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    assert!(stdout.contains("1. checksum — "), "{stdout}");
    // sha256sum's own line, from the cell, after the plan.
    let digest = Command::new("sha256sum").arg(&file).output().unwrap();
    let digest = String::from_utf8_lossy(&digest.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(stdout.contains(&digest), "the checksum cell's output is missing:\n{stdout}");
}

#[test]
fn a_cell_inherits_no_descriptor_but_its_stdio() {
    // ls lists its own descriptors: 0-2, and 3 for the directory it reads.
    // Anything more is quantumd's (its bus socket, its trail, a caller's
    // pipe passed for another run) leaking into the cell.
    let cat = catalog(&[("fds", &sh_cell("fds", "exec ls /proc/self/fd", TASK))]);
    let node = Node::start(cat.path());
    let out = node.ok(&["run", "fds"]);
    assert_eq!(out, "0\n1\n2\n3\n");
}
