//! security-ai (`[policy]`, `quantumctl alerts`): a cell's baseline is
//! learned from the real kernel's exec events (eBPF, cgroup v2 backend; root
//! like the other tiers here), and what it never ran while learning is an
//! alert: a trail entry, a `CellAlert` signal and, with `on-anomaly =
//! "stop"`, the instance stopped. The "attack" is what one looks like from
//! the kernel: a process that joins the cell's cgroup and execs a shell.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{alerts, catalog, free_port, get, json, wait_for, Monitor, Node};

/// A web server as the catalog's is: python's http.server on a port of its own.
fn web_cell(name: &str, port: u16, policy: &str) -> String {
    format!(
        "[cell]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"test web server\"\n\
         exec = [\"/usr/bin/python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"{port}\"]\n\
         [lifecycle]\nkind = \"service\"\nrestart = \"no\"\n[isolation]\nnetwork = \"host\"\n[policy]\n{policy}\n"
    )
}

/// The cgroup directory of `instance`'s unit under this node.
fn cgroup_of(node: &Node, instance: &str) -> PathBuf {
    let unit = format!("quantum-{instance}.service");
    let mut dirs = vec![node.cgroup_root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy() == unit {
                return e.path();
            }
            if e.path().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    panic!("no cgroup for {unit} under {}", node.cgroup_root.display())
}

/// Waits until the cell's baseline says learning is over.
fn wait_learned(node: &Node, cell: &str) {
    let file = node.state_dir().join("baselines").join(format!("{cell}@1.0.0.json"));
    wait_for("the baseline to be learned", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&file).ok()?;
        (json(&text)["learned"] == true).then_some(())
    });
}

/// A process joins `cgroup` and execs a shell there that lingers a moment.
fn inject_shell(cgroup: &Path) -> std::process::Child {
    Command::new("/bin/sh")
        .arg("-c")
        .arg("echo $$ > \"$1/cgroup.procs\" && exec /bin/sh -c 'sleep 2; true'")
        .arg("inject")
        .arg(cgroup)
        .stdout(Stdio::null())
        .spawn()
        .expect("sh")
}

#[test]
fn a_web_server_that_runs_a_shell_it_never_ran_while_learning_is_alerted_within_seconds() {
    let port = free_port();
    let cat = catalog(&[("web", &web_cell("web", port, "learning = \"2s\""))]);
    let node = Node::start(cat.path());
    let monitor = Monitor::start(&node.bus_address, "CellAlert");
    let started = json(&node.ok(&["run", "web", "--json"]));
    let instance = started["instance"].as_str().expect("instance").to_owned();
    wait_for("the web server to answer", Duration::from_secs(30), || get(port).then_some(()));
    wait_learned(&node, "web");

    // Normal work after learning raises nothing.
    for _ in 0..20 {
        assert!(get(port), "the server answers");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(alerts(&node), Vec::<serde_json::Value>::new(), "{}", node.log());

    let injected = Instant::now();
    let mut shell = inject_shell(&cgroup_of(&node, &instance));
    let alert = wait_for("an exec alert", Duration::from_secs(10), || {
        alerts(&node).into_iter().find(|a| a["kind"] == "exec")
    });
    eprintln!("alert seen {:?} after the shell ran", injected.elapsed());
    let _ = shell.wait();
    assert_eq!(alert["instance"], instance.as_str());
    assert_eq!(alert["cell"], "web");
    assert_eq!(alert["response"], "alert");
    let message = alert["message"].as_str().expect("message");
    assert!(message.starts_with("sh (pid "), "{message}");
    assert!(message.contains("while learning, web 1.0.0 ran only python3"), "{message}");

    // The record is the trail's, signed with the rest.
    let entries = support::trail(&node);
    assert!(
        entries.iter().any(|e| e["action"] == "alert" && e["seq"] == alert["seq"]),
        "{entries:?}"
    );
    wait_for("the CellAlert signal", Duration::from_secs(5), || {
        let text = monitor.text();
        (text.contains("member=CellAlert") && text.contains(&format!("string \"{instance}\""))).then_some(())
    });
    // Alerting does not stop the cell unless its policy says so; each
    // program is alerted once per instance.
    assert_eq!(node.instances("running"), vec![instance.clone()]);
    let mut again = inject_shell(&cgroup_of(&node, &instance));
    let _ = again.wait();
    std::thread::sleep(Duration::from_secs(2));
    let shells = alerts(&node)
        .iter()
        .filter(|a| a["message"].as_str().unwrap_or("").starts_with("sh "))
        .count();
    assert_eq!(shells, 1, "{:?}", alerts(&node));
    let text = node.ok(&["alerts"]);
    assert!(
        text.contains(&instance) && text.contains("exec") && text.contains("sh (pid"),
        "{text}"
    );

    // A program it does run (python3) connecting where it never did while
    // learning (it only listens): a reverse shell's first move.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let to = listener.local_addr().expect("addr").port();
    let mut caller = Command::new("/bin/sh")
        .arg("-c")
        .arg("echo $$ > \"$1/cgroup.procs\" && exec /usr/bin/python3 -c 'import socket, sys; socket.create_connection((\"127.0.0.1\", int(sys.argv[1])))' \"$2\"")
        .arg("inject")
        .arg(cgroup_of(&node, &instance))
        .arg(to.to_string())
        .spawn()
        .expect("sh");
    let connect = wait_for("a connect alert", Duration::from_secs(10), || {
        alerts(&node).into_iter().find(|a| a["kind"] == "connect")
    });
    let _ = caller.wait();
    let message = connect["message"].as_str().expect("message");
    let expected = format!("connected to 127.0.0.1:{to} (tcp:{to}@loopback); while learning, web 1.0.0 connected nowhere");
    assert!(message.starts_with("python3 (pid ") && message.contains(&expected), "{message}");
    let python_exec = alerts(&node)
        .into_iter()
        .any(|a| a["kind"] == "exec" && a["message"].as_str().unwrap_or("").starts_with("python3"));
    assert!(!python_exec, "python3 is the cell's own program");
}

#[test]
fn on_anomaly_stop_stops_the_instance_and_says_why() {
    let port = free_port();
    let cat = catalog(&[("guarded", &web_cell("guarded", port, "learning = \"2s\"\non-anomaly = \"stop\""))]);
    let node = Node::start(cat.path());
    let started = json(&node.ok(&["run", "guarded", "--json"]));
    let instance = started["instance"].as_str().expect("instance").to_owned();
    wait_for("the web server to answer", Duration::from_secs(30), || get(port).then_some(()));
    wait_learned(&node, "guarded");

    let mut shell = inject_shell(&cgroup_of(&node, &instance));
    wait_for("the instance to be stopped", Duration::from_secs(10), || {
        node.list()
            .into_iter()
            .find(|c| c["instance"] == instance.as_str() && c["state"] == "stopped")
    });
    let _ = shell.wait();
    let info = json(&node.ok(&["inspect", &instance, "--json"]));
    let reason = info["info"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("anomaly (exec): sh (pid "), "{info}");
    let alert = alerts(&node).pop().expect("the alert");
    assert_eq!(alert["response"], "stop");
    assert!(!get(port), "the server is gone");
}

#[test]
fn a_connection_refused_by_the_allow_list_is_alerted_at_once_even_while_learning() {
    let (listed, other) = (
        TcpListener::bind("127.0.0.1:0").expect("listen"),
        TcpListener::bind("127.0.0.1:0").expect("listen"),
    );
    let (a, b) = (listed.local_addr().unwrap().port(), other.local_addr().unwrap().port());
    let script = format!("(exec 5<>/dev/tcp/127.0.0.1/{b}) 2>/dev/null; exec sleep 600");
    let cell = format!(
        "[cell]\nname = \"prober\"\nversion = \"1.0.0\"\ndescription = \"test cell\"\nexec = [\"/bin/bash\", \"-c\", {script:?}]\n\
         [lifecycle]\nkind = \"service\"\nrestart = \"no\"\n[isolation]\nnetwork = \"host\"\nnetwork-allow = [\"tcp:{a}@127.0.0.1\"]\n"
    );
    let cat = catalog(&[("prober", &cell)]);
    let node = Node::start(cat.path());
    let started = json(&node.ok(&["run", "prober", "--json"]));
    let instance = started["instance"].as_str().expect("instance").to_owned();
    let alert = wait_for("a network alert", Duration::from_secs(10), || {
        alerts(&node).into_iter().find(|a| a["kind"] == "network")
    });
    assert_eq!(alert["instance"], instance.as_str());
    let message = alert["message"].as_str().expect("message");
    assert!(
        message.starts_with("1 connection(s) or datagram(s) refused by isolation.network-allow"),
        "{message}"
    );
    assert_eq!(node.instances("running"), vec![instance]);
}

#[test]
fn a_task_of_a_moment_learns_and_is_judged_though_no_sample_sees_it_run() {
    // The program comes from a parameter, so that the manifest names only
    // bash: what it runs is learned, or not.
    let cell = "[cell]\nname = \"quick\"\nversion = \"1.0.0\"\ndescription = \"test cell\"\n\
                exec = [\"/bin/bash\", \"-c\", \"\\\"$0\\\" >/dev/null\", \"{prog}\"]\n\
                [params.prog]\ntype = \"string\"\ndefault = \"/usr/bin/true\"\ndescription = \"what to run\"\n\
                [lifecycle]\nkind = \"task\"\nrestart = \"no\"\n[policy]\nlearning = \"1s\"\n";
    let cat = catalog(&[("quick", cell)]);
    let node = Node::start(cat.path());
    // Runs of a few ms each, ended before any sample: their whole running
    // time counts when they end.
    let file = node.state_dir().join("baselines").join("quick@1.0.0.json");
    let mut runs = 0;
    while !std::fs::read_to_string(&file).is_ok_and(|t| json(&t)["learned"] == true) {
        let out = node.ctl(&["run", "quick", "prog=/usr/bin/uname"]);
        assert!(out.status.success(), "{out:?}\n{}", node.log());
        runs += 1;
        assert!(
            runs < 500,
            "learning never ended: {}",
            std::fs::read_to_string(&file).unwrap_or_default()
        );
    }
    let baseline = json(&std::fs::read_to_string(&file).expect("baseline"));
    assert!(
        baseline["execs"].as_array().expect("execs").iter().any(|p| p == "uname"),
        "{baseline}"
    );
    assert_eq!(alerts(&node), Vec::<serde_json::Value>::new());

    node.ok(&["run", "quick", "prog=/usr/bin/uname"]);
    let out = node.ctl(&["run", "quick", "prog=/usr/bin/id"]);
    assert!(out.status.success(), "{out:?}");
    let alert = wait_for("an exec alert", Duration::from_secs(10), || {
        alerts(&node).into_iter().find(|a| a["kind"] == "exec")
    });
    assert!(alert["message"].as_str().unwrap_or("").starts_with("id (pid "), "{alert}");
    assert_eq!(alerts(&node).len(), 1, "{:?}", alerts(&node));
}

#[test]
fn a_cell_that_starts_burning_cpu_it_never_used_while_learning_is_alerted() {
    // Idle while it learns (2 s), then four busy loops (bash builtins, so
    // no exec and no connect, only CPU): well above half a core even on a
    // busy 2-core machine.
    let script = "sleep 4; for i in 1 2 3; do while :; do :; done & done; while :; do :; done";
    let cell = format!(
        "[cell]\nname = \"miner\"\nversion = \"1.0.0\"\ndescription = \"test cell\"\nexec = [\"/bin/bash\", \"-c\", {script:?}]\n\
         [resources]\ncpu-max = 4.0\n[lifecycle]\nkind = \"service\"\nrestart = \"no\"\n[policy]\nlearning = \"2s\"\n"
    );
    let cat = catalog(&[("miner", &cell)]);
    let node = Node::start(cat.path());
    let started = json(&node.ok(&["run", "miner", "--json"]));
    let instance = started["instance"].as_str().expect("instance").to_owned();
    let alert = wait_for("a cpu alert", Duration::from_secs(60), || {
        alerts(&node).into_iter().find(|a| a["kind"] == "cpu")
    });
    assert_eq!(alert["instance"], instance.as_str());
    let message = alert["message"].as_str().expect("message");
    assert!(
        message.starts_with("used ") && message.contains("cores for 2 s; while learning, miner 1.0.0 used at most 0.0"),
        "{message}"
    );
    node.ok(&["stop", &instance]);
    assert_eq!(alerts(&node).len(), 1, "{:?}", alerts(&node));
}
