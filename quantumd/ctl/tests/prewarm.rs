//! Pre-warmed cells on a private bus with the cgroup backend: a cell pinned
//! in `[prewarm] cells` has a unit waiting before anyone asks; a run takes
//! it (the same instance, its output and exit status the caller's) and
//! quantumd warms the next one. The VM tier measures the start against
//! systemd-run (`make bench`).

mod support;

use std::time::Duration;

use support::{catalog, sh_cell, trail, wait_for, Node};

const TASK: &str = "[lifecycle]\nkind = \"task\"";

/// The instance of the latest `prewarm` entry saying `verb` about `cell`.
fn warm_instance(node: &Node, verb: &str, cell: &str, not: Option<&str>) -> String {
    wait_for(&format!("a warm unit of {cell}"), Duration::from_secs(30), || {
        trail(node).iter().rev().find_map(|e| {
            let detail = e["detail"].as_str()?;
            let id = detail.strip_prefix(&format!("{verb} "))?.split(':').next()?.to_owned();
            (e["action"] == "prewarm" && e["cell"] == cell && Some(id.as_str()) != not).then_some(id)
        })
    })
}

#[test]
fn a_pinned_cell_waits_warm_and_a_run_takes_it_with_its_output_and_status_then_the_next_is_warmed() {
    let cat = catalog(&[
        (
            "echoer",
            &sh_cell(
                "echoer",
                "echo \"warm:$QUANTUM_INSTANCE:$QUANTUM_PARAM_WORD\"; echo on-stderr >&2",
                &format!("{TASK}\n[params.word]\ntype = \"string\"\ndefault = \"none\""),
            ),
        ),
        ("failer", &sh_cell("failer", "echo oops >&2; exit 3", TASK)),
        ("cold", &sh_cell("cold", "echo cold", TASK)),
    ]);
    let node = Node::start_configured(cat.path(), "[prewarm]\ncells = [\"echoer\", \"failer\"]\npredict = false\n");
    let first = warm_instance(&node, "warm", "echoer", None);
    // A person listing what runs sees the waiting unit, and why it waits.
    let list: serde_json::Value = serde_json::from_slice(&node.ctl(&["list", "--json"]).stdout).expect("list --json");
    let warm = list
        .as_array()
        .and_then(|a| a.iter().find(|c| c["instance"] == first.as_str()).cloned())
        .unwrap_or_else(|| panic!("{first} is not listed: {list}"));
    assert_eq!(
        (warm["cell"].as_str(), warm["state"].as_str()),
        (Some("echoer"), Some("warm")),
        "{warm}"
    );
    assert!(warm["reason"].as_str().is_some_and(|r| r.contains("pinned")), "{warm}");

    let out = node.ctl(&["run", "echoer", "word=hello"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), node.log());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("warm:{first}:hello\n"),
        "the run is the warm instance"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "on-stderr\n");
    assert_eq!(warm_instance(&node, "claimed", "echoer", None), first);
    let next = warm_instance(&node, "warm", "echoer", Some(&first));
    assert_ne!(next, first, "a new warm unit after the claim");

    let failer = warm_instance(&node, "warm", "failer", None);
    let out = node.ctl(&["run", "failer"]);
    assert_eq!(out.status.code(), Some(3), "{}", node.log());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("oops\nquantumctl: {failer} exited with status 3\n"),
        "the warm instance ran and failed as a cold one would"
    );

    // Not pinned: a cold start as ever.
    let out = node.ctl(&["run", "cold"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cold\n");
    assert!(!trail(&node).iter().any(|e| e["action"] == "prewarm" && e["cell"] == "cold"));
}

#[test]
fn with_predict_on_a_cell_run_three_times_this_hour_is_warm_after_a_restart_and_cools_when_predict_is_off() {
    let cat = catalog(&[("often", &sh_cell("often", "echo often", TASK))]);
    let mut node = Node::start_configured(cat.path(), "[prewarm]\npredict = true\n");
    for _ in 0..3 {
        assert!(node.ctl(&["run", "often"]).status.success());
    }
    assert!(
        !trail(&node).iter().any(|e| e["action"] == "prewarm"),
        "nothing predicted before the history has it"
    );
    wait_for("three runs in the usage history", Duration::from_secs(30), || {
        let r = support::json(&node.ok(&["recommend", "often", "--json"]));
        (r["samples"] == 3).then_some(())
    });
    // The prediction is made at start and every minute; a restart asks now.
    node.kill_daemon();
    node.start_daemon();
    let id = warm_instance(&node, "warm", "often", None);
    let why = trail(&node)
        .iter()
        .find(|e| e["action"] == "prewarm" && e["detail"].as_str().is_some_and(|d| d.starts_with(&format!("warm {id}:"))))
        .and_then(|e| e["detail"].as_str().map(str::to_owned))
        .unwrap_or_default();
    assert!(why.contains("predicted: 3 run(s)") && why.contains("(3 in the last hour)"), "{why}");
    assert_eq!(
        node.live_cgroups(),
        [format!("quantum-{id}.service")],
        "the warm unit waits in its cgroup"
    );
    let out = node.ctl(&["run", "often"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "often\n");

    // Without predict the next quantumd keeps nothing warm, and the old
    // waiters ended with their quantumd.
    node.set_config("");
    node.kill_daemon();
    node.start_daemon();
    wait_for("the warm units to end", Duration::from_secs(30), || {
        node.live_cgroups().is_empty().then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(node.live_cgroups().is_empty(), "{:?}", node.live_cgroups());
}
