//! STEPPPS PSYCHOLOGY through quantumd: every instance that ends becomes a
//! sample in the usage history under the state directory, kept across
//! restarts of quantumd, and `quantumctl recommend` shows the recommended
//! `[resources]` with the evidence.

mod support;

use std::time::Duration;

use support::{catalog, json, sh_cell, wait_for, Node};

const RUNS: usize = 4;

#[test]
fn every_ended_run_is_a_sample_and_recommend_shows_them_with_the_evidence() {
    let cat = catalog(&[
        // Long enough for the once-a-second sampler to see it.
        ("burst", &sh_cell("burst", "sleep 2.5", "")),
        ("never-run", &sh_cell("never-run", "exec sleep 600", "")),
    ]);
    let mut node = Node::start(cat.path());
    // Several at once, so that the test takes one run's time.
    let instances: Vec<String> = (0..RUNS)
        .map(|_| json(&node.ok(&["run", "burst", "--json"]))["instance"].as_str().unwrap().to_owned())
        .collect();
    wait_for("every burst run to end", Duration::from_secs(60), || {
        let ended = node.instances("exited");
        instances.iter().all(|i| ended.contains(i)).then_some(())
    });
    // Samples are written off the cell loop, a moment after the end.
    let r = wait_for("a sample per run", Duration::from_secs(20), || {
        let r = json(&node.ok(&["recommend", "burst", "--json"]));
        (r["samples"] == RUNS).then_some(r)
    });
    assert_eq!(r["cell"], "burst");
    assert_eq!(r["confidence"], "not-enough-history", "{r}");
    assert_eq!(r["min-samples"], 10);
    assert_eq!(r["margin"], 0.15);
    let e = &r["evidence"];
    assert_eq!(e["exits"]["exited"], RUNS, "{e}");
    let lengths = &e["run-seconds"];
    assert_eq!(lengths["runs"], RUNS, "{e}");
    assert!(lengths["p50"].as_f64().unwrap() >= 2.4, "each ran 2.5 s: {e}");
    // cpu.stat exists in every cgroup: runs the sampler saw have CPU
    // figures (this host's cgroup2 may lack the memory and pids
    // controllers; those keys are then missing, and the notes say why).
    if let Some(runs) = e["cpu-average"]["runs"].as_u64() {
        assert!(runs as usize <= RUNS && runs > 0, "{e}");
        assert!(r["resources"]["cpu-min"].as_f64().unwrap() >= 0.01, "{r}");
    }
    if e["memory-peak"].is_null() {
        assert!(r["resources"]["memory-max"].is_null(), "{r}");
        assert!(
            e["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_str().unwrap().contains("no run measured memory")),
            "{e}"
        );
    }

    // For a person: a [resources] block to paste, the evidence as comments,
    // and, with too few runs, the keys commented out.
    let text = node.ok(&["recommend", "burst"]);
    println!("{text}");
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "# Recommended for burst: {RUNS} runs, confidence not enough history (at least 10 runs are needed; the keys are commented out)"
        )
    );
    assert!(text.lines().any(|l| l == "[resources]"), "{text}");
    assert!(text.lines().all(|l| l == "[resources]" || l.starts_with('#')), "{text}");
    assert!(text.contains(&format!("#   runs ended: {RUNS} exited")), "{text}");

    // The history is on disk: a restarted quantumd still has it.
    node.kill_daemon();
    node.start_daemon();
    let again = json(&node.ok(&["recommend", "burst", "--json"]));
    assert_eq!(again["samples"], RUNS, "{again}");
    assert!(node.state_dir().join("psychology/history.redb").is_file());

    // A catalog cell without runs yet: a recommendation of nothing.
    let none = json(&node.ok(&["recommend", "never-run", "--json"]));
    assert_eq!(none["samples"], 0, "{none}");
    assert_eq!(none["resources"], serde_json::json!({}), "{none}");
}

#[test]
fn an_unknown_cell_is_a_clear_error_with_exit_status_1() {
    let cat = catalog(&[("burst", &sh_cell("burst", "true", ""))]);
    let node = Node::start(cat.path());
    let out = node.ctl(&["recommend", "no-such-cell"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot recommend resources for no-such-cell: no cell named \"no-such-cell\" in the catalog"),
        "{err}"
    );
    assert!(err.contains("no runs of it in the usage history"), "{err}");
    let bad = node.ctl(&["recommend", "Not_A_Name"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a valid cell name"), "{bad:?}");
}

#[test]
fn recommend_help_explains_the_method_with_examples() {
    let out = std::process::Command::new(support::bin("quantumctl"))
        .args(["recommend", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for needle in [
        "99th percentile",
        "15 %",
        "not enough history",
        "EXAMPLES:",
        "quantumctl recommend image-resize",
        "EXIT STATUS:",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}
