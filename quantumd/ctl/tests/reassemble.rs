//! Reassembly on a private bus with the cgroup backend: a catalog cell
//! blacklisted after its max-restarts gets a stand-in that offers the same
//! capability, the caller and the trail are told, and a cell the
//! administrator disabled never runs.

mod support;

use std::time::Duration;

use support::{catalog, json, sh_cell, trail, wait_for, Node};

const LONG: Duration = Duration::from_secs(20);

/// What every cell here offers.
const HEARTBEAT: &str = "keep a heartbeat";

/// A cell that always fails, blacklisted after its second end.
fn crasher() -> String {
    sh_cell(
        "crasher",
        "exit 3",
        &format!("capabilities = [{HEARTBEAT:?}]\n[lifecycle]\nrestart = \"on-failure\"\nmax-restarts = 1\nrestart-window = \"1m\""),
    )
}

/// A cell that runs until stopped, offering `capabilities`.
fn steady(name: &str, capabilities: &[&str]) -> String {
    sh_cell(name, "exec sleep 600", &format!("capabilities = {capabilities:?}"))
}

/// Runs crasher and waits until quantumd has blacklisted it.
fn blacklist_crasher(node: &Node) {
    // It may have failed before quantumd answers: the answer is not the point.
    node.ctl(&["run", "--detach", "crasher"]);
    wait_for("crasher to be blacklisted", LONG, || {
        node.list()
            .into_iter()
            .any(|c| c["cell"] == "crasher" && c["reason"].as_str().is_some_and(|r| r.starts_with("blacklisted: ")))
            .then_some(())
    });
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_blacklisted_cell_gets_a_stand_in_with_the_same_capability_and_the_caller_and_trail_are_told() {
    let cat = catalog(&[
        ("crasher", &crasher()),
        ("dns", &steady("dns", &["resolve a domain name"])),
        ("steady", &steady("steady", &["start a clock", HEARTBEAT])),
    ]);
    let node = Node::start(cat.path());
    blacklist_crasher(&node);

    let out = node.ctl(&["run", "crasher"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), node.log());
    assert_eq!(
        stderr(&out),
        "quantumctl: cell \"crasher\" is blacklisted (it ended 2 times within 1m, max-restarts 1; last: exited with status 3); \
         started \"steady\" instead, which also offers \"keep a heartbeat\"\n"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("started steady."), "{stdout}");
    let running = node.instances("running");
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].starts_with("steady."), "{running:?}");

    // Which cell was asked for, which ran, and why.
    let entries = trail(&node);
    let substitute = entries.iter().find(|e| e["action"] == "substitute").expect("a substitute entry");
    assert_eq!(substitute["cell"], "crasher", "{substitute}");
    assert_eq!(substitute["ok"], true, "{substitute}");
    assert_eq!(
        substitute["detail"],
        format!(
            "asked for \"crasher\", started \"steady\" ({}) instead: exited with status 3; it ended 2 times within 1m (max-restarts 1); \
             \"steady\" also offers \"keep a heartbeat\"",
            running[0]
        ),
        "{substitute}"
    );
    assert!(
        entries.iter().any(|e| e["action"] == "run" && e["cell"] == "steady"),
        "the stand-in's run is recorded as its own"
    );

    // --json keeps the instance's keys and adds what was asked for.
    let out = json(&node.ok(&["run", "crasher", "--json"]));
    assert_eq!(out["cell"], "steady", "{out}");
    assert_eq!(out["asked"], "crasher", "{out}");
    assert!(
        out["substitution"]
            .as_str()
            .unwrap()
            .ends_with("which also offers \"keep a heartbeat\""),
        "{out}"
    );

    node.ok(&["stop", "steady"]);
    assert!(node.live_cgroups().is_empty());
}

#[test]
fn a_cell_the_administrator_disabled_is_never_a_stand_in_and_never_runs() {
    let cat = catalog(&[
        ("crasher", &crasher()),
        // First by name, so it would be chosen were it not disabled.
        ("ahead", &steady("ahead", &[HEARTBEAT])),
        ("steady", &steady("steady", &[HEARTBEAT])),
    ]);
    let node = Node::start_configured(cat.path(), "[cells]\ndisabled = [\"ahead\"]\n");
    blacklist_crasher(&node);

    let out = node.ctl(&["run", "crasher"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("started \"steady\" instead"), "{}", stderr(&out));

    let refused = node.ctl(&["run", "ahead"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        stderr(&refused),
        "quantumctl: cannot run ahead: cell \"ahead\" is disabled by the administrator ([cells] disabled in quantumd.toml)\n"
    );
    let running = node.instances("running");
    assert!(running.iter().all(|i| i.starts_with("steady.")), "{running:?}");
    assert_eq!(trail(&node).pop().unwrap()["action"], "refuse");
    node.ok(&["stop", "steady"]);
}

#[test]
fn with_only_a_disabled_alternative_the_refusal_is_unchanged() {
    let cat = catalog(&[("crasher", &crasher()), ("ahead", &steady("ahead", &[HEARTBEAT]))]);
    let node = Node::start_configured(cat.path(), "[cells]\ndisabled = [\"ahead\"]\n");
    blacklist_crasher(&node);
    let again = node.ctl(&["run", "crasher"]);
    assert_eq!(again.status.code(), Some(1));
    let err = stderr(&again);
    assert!(
        err.starts_with("quantumctl: cannot run crasher: cell \"crasher\" is blacklisted for another "),
        "{err}"
    );
    assert!(
        err.ends_with("s: exited with status 3; it ended 2 times within 1m (max-restarts 1)\n"),
        "nothing added: {err}"
    );
    assert!(node.instances("running").is_empty());
}

#[test]
fn with_no_cell_offering_the_capability_the_refusal_is_unchanged() {
    let cat = catalog(&[("crasher", &crasher()), ("dns", &steady("dns", &["resolve a domain name"]))]);
    let node = Node::start(cat.path());
    blacklist_crasher(&node);
    let again = node.ctl(&["run", "crasher"]);
    assert_eq!(again.status.code(), Some(1));
    let err = stderr(&again);
    assert!(
        err.starts_with("quantumctl: cannot run crasher: cell \"crasher\" is blacklisted for another "),
        "{err}"
    );
    assert!(
        err.ends_with("s: exited with status 3; it ended 2 times within 1m (max-restarts 1)\n"),
        "nothing added: {err}"
    );
    assert!(node.instances("running").is_empty());
    let last = trail(&node).pop().unwrap();
    assert_eq!(last["action"], "refuse", "{last}");
    assert!(!trail(&node).iter().any(|e| e["action"] == "substitute"));
}

#[test]
fn no_substitute_refuses_and_names_the_cell_that_could_stand_in() {
    let cat = catalog(&[("crasher", &crasher()), ("steady", &steady("steady", &[HEARTBEAT]))]);
    let node = Node::start(cat.path());
    blacklist_crasher(&node);
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["run", "--no-substitute", "crasher"];
        args.extend_from_slice(extra);
        let refused = node.ctl(&args);
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        let err = stderr(&refused);
        assert!(
            err.starts_with("quantumctl: cannot run crasher: cell \"crasher\" is blacklisted for another "),
            "{err}"
        );
        assert!(
            err.ends_with(
                "s: exited with status 3; it ended 2 times within 1m (max-restarts 1); \"steady\" also offers \"keep a heartbeat\"\n"
            ),
            "{err}"
        );
    }
    assert!(node.instances("running").is_empty());
    assert!(!trail(&node).iter().any(|e| e["action"] == "substitute"));
}

#[test]
fn a_foreground_task_gets_a_stand_in_whose_output_and_status_are_the_callers() {
    let task = |name: &str, script: &str, extra: &str| {
        sh_cell(
            name,
            script,
            &format!("capabilities = [\"count the stars\"]\n[lifecycle]\nkind = \"task\"\n{extra}"),
        )
    };
    let cat = catalog(&[
        (
            "crasher",
            &task(
                "crasher",
                "exit 3",
                "restart = \"on-failure\"\nmax-restarts = 1\nrestart-window = \"1m\"",
            ),
        ),
        ("counter", &task("counter", "echo 42 stars; exit 7", "")),
    ]);
    let node = Node::start(cat.path());
    blacklist_crasher(&node);

    let out = node.ctl(&["run", "crasher"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42 stars\n");
    assert_eq!(out.status.code(), Some(7), "the stand-in's status is the caller's");
    assert_eq!(
        stderr(&out),
        "quantumctl: cell \"crasher\" is blacklisted (it ended 2 times within 1m, max-restarts 1; last: exited with status 3); \
         started \"counter\" instead, which also offers \"count the stars\"\n\
         quantumctl: counter.2 exited with status 7\n"
    );
}
