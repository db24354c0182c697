//! Triggers (STEPPPS SCRIPT) on a private bus with the cgroup backend:
//! `quantumctl trigger add|list|remove|validate`, a cell run when another
//! one fails and when a cell's CPU stays past a bound, what the trail
//! says, and the refusals. Calendar and path triggers are systemd's and are
//! tested in the VM tier (tests/vm, lifecycle::triggers).

mod support;

use std::path::Path;
use std::time::Duration;

use support::{catalog, json, sh_cell, trail, wait_for, Node};

const LONG: Duration = Duration::from_secs(30);

/// A cell that finishes: `run` waits for it and takes its status.
const TASK: &str = "[lifecycle]\nkind = \"task\"";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the trigger");
    path.display().to_string()
}

fn triggers(node: &Node) -> Vec<serde_json::Value> {
    json(&node.ok(&["trigger", "list", "--json"]))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The trigger named `name`, once `f` holds for it.
fn wait_trigger(node: &Node, name: &str, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_for(what, LONG, || triggers(node).into_iter().find(|t| t["name"] == name && f(t)))
}

#[test]
fn a_cell_that_fails_runs_the_trigger_cell_which_the_trail_and_list_show_and_the_trigger_outlives_a_restart() {
    let cat = catalog(&[
        ("flaky", &sh_cell("flaky", "exit 4", TASK)),
        ("mark", &sh_cell("mark", "echo marked", TASK)),
    ]);
    let mut node = Node::start(cat.path());
    let files = tempfile::tempdir().expect("tempdir");
    let file = write(
        files.path(),
        "on-flaky.toml",
        "[trigger]\nname = \"on-flaky\"\ndescription = \"mark when flaky fails\"\ncell = \"mark\"\non-event = { cell = \"flaky\", state = \"failed\" }\n",
    );

    let added = node.ok(&["trigger", "add", &file]);
    assert!(added.starts_with("added on-flaky: runs mark\n"), "{added}");
    assert!(added.contains("when     on-event flaky failed"), "{added}");
    assert!(added.contains("watched  by quantumd"), "{added}");

    let out = node.ctl(&["run", "flaky"]);
    assert_eq!(out.status.code(), Some(4), "flaky's own status: {}", stderr(&out));
    let t = wait_trigger(&node, "on-flaky", "the trigger to start mark", |t| {
        t["last_result"].as_str().is_some_and(|r| r.starts_with("started mark."))
    });
    assert_eq!(t["fired"], 1, "{t}");
    assert_eq!(t["added_by"], "uid:0", "{t}");
    let instance = t["last_result"]
        .as_str()
        .and_then(|r| r.strip_prefix("started "))
        .unwrap_or_default()
        .to_owned();

    let entries = trail(&node);
    let fired = entries
        .iter()
        .find(|e| e["action"] == "trigger" && e["detail"].as_str().is_some_and(|d| d.starts_with("fire on-flaky")))
        .unwrap_or_else(|| panic!("a trigger entry for the firing: {entries:#?}"));
    assert_eq!(fired["actor"], "trigger:on-flaky", "{fired}");
    assert_eq!(fired["detail"], "fire on-flaky: flaky failed", "{fired}");
    let run = entries
        .iter()
        .find(|e| e["action"] == "run" && e["cell"] == "mark")
        .unwrap_or_else(|| panic!("a run entry for mark: {entries:#?}"));
    assert_eq!(run["actor"], "trigger:on-flaky", "{run}");
    let logs = node.ok(&["logs", &instance]);
    assert_eq!(logs.trim_end(), "marked", "the triggered cell ran its command");

    // Kept in the state directory: a restarted quantumd still has it.
    node.kill_daemon();
    node.start_daemon();
    let again = triggers(&node);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        again[0]["origin"],
        node.state_dir().join("triggers/on-flaky.toml").display().to_string()
    );
    assert_eq!(again[0]["added_by"], "uid:0");

    assert_eq!(node.ok(&["trigger", "remove", "on-flaky"]), "removed trigger on-flaky\n");
    assert!(triggers(&node).is_empty());
    assert!(!node.state_dir().join("triggers/on-flaky.toml").exists());
    let details: Vec<String> = trail(&node)
        .iter()
        .filter(|e| e["action"] == "trigger")
        .filter_map(|e| e["detail"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        details,
        [
            "add on-flaky: on-event flaky failed runs mark",
            "fire on-flaky: flaky failed",
            "remove on-flaky"
        ],
        "the trail says who added, fired and removed it"
    );
}

#[test]
fn a_cpu_threshold_fires_once_while_a_cell_stays_above_it() {
    // The host tier's cgroups have cpu.stat but no memory controller; the
    // VM tier fires a memory threshold.
    let cat = catalog(&[
        ("spin", &sh_cell("spin", "while :; do :; done", "")),
        ("mark", &sh_cell("mark", "echo marked", TASK)),
    ]);
    let node = Node::start(cat.path());
    let files = tempfile::tempdir().expect("tempdir");
    let file = write(
        files.path(),
        "busy.toml",
        "[trigger]\nname = \"busy\"\ncell = \"mark\"\non-threshold = { figure = \"cpu\", cell = \"spin\", above = 0.2, for = \"2s\" }\n",
    );
    let added = node.ok(&["trigger", "add", &file]);
    assert!(added.contains("when     on-threshold cpu of spin above 0.2 for 2s"), "{added}");
    assert_eq!(triggers(&node)[0]["fired"], 0, "nothing spins yet");
    node.ok(&["run", "--detach", "spin"]);
    let t = wait_trigger(&node, "busy", "spin's CPU to fire the threshold", |t| t["fired"] == 1);
    assert!(t["last_fired_usec"].as_u64().unwrap_or_default() > 0, "{t}");
    // Still above: no second firing for the same crossing.
    std::thread::sleep(Duration::from_secs(4));
    let t = triggers(&node).into_iter().find(|t| t["name"] == "busy").expect("busy");
    assert_eq!(t["fired"], 1, "one firing per crossing: {t}");
    assert!(t["last_result"].as_str().is_some_and(|r| r.starts_with("started mark.")), "{t}");
    node.ok(&["stop", "spin"]);
}

#[test]
fn bad_files_systemd_only_triggers_and_the_admins_triggers_are_refused_with_reasons() {
    let admin = tempfile::tempdir().expect("tempdir");
    write(
        admin.path(),
        "nightly.toml",
        "[trigger]\nname = \"nightly\"\ncell = \"mark\"\non-event = { cell = \"other\", state = \"exited\" }\n",
    );
    let vault = sh_cell(
        "vault",
        "test -s \"$CREDENTIALS_DIRECTORY/token\"",
        "[params.token]\ntype = \"string\"\nsecret = true\ndescription = \"a token\"\n",
    );
    let cat = catalog(&[("mark", &sh_cell("mark", "echo marked", "")), ("vault", &vault)]);
    let node = Node::start_configured(cat.path(), &format!("triggers = {:?}\n", admin.path().display().to_string()));
    let files = tempfile::tempdir().expect("tempdir");

    // Checked before quantumd is asked, in the manifest's form.
    let bad = write(
        files.path(),
        "bad.toml",
        "[trigger]\nname = \"x\"\ncell = \"mark\"\non-threshold = { figure = \"load\", cell = \"mark\", above = 2 }\n",
    );
    let out = node.ctl(&["trigger", "add", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{bad}:4:42: error: trigger.on-threshold.cell: load is a figure of the node"
        )),
        "{}",
        stderr(&out)
    );
    let out = node.ctl(&["trigger", "validate", &bad]);
    assert_eq!(out.status.code(), Some(1));

    // A cell the catalog lacks is said at once, not at the first firing.
    let missing = write(
        files.path(),
        "missing.toml",
        "[trigger]\nname = \"missing\"\ncell = \"no-such-cell\"\non-event = { cell = \"mark\", state = \"exited\" }\n",
    );
    let out = node.ctl(&["trigger", "add", &missing]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-such-cell"), "{}", stderr(&out));

    // A secret in a file anyone can list would be no secret.
    let secret = write(
        files.path(),
        "secret.toml",
        "[trigger]\nname = \"secret\"\ncell = \"vault\"\non-event = { cell = \"mark\", state = \"exited\" }\n\n[params]\ntoken = \"hunter2\"\n",
    );
    let out = node.ctl(&["trigger", "add", &secret]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{secret}: params.token: is a secret of cell vault")),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    // Nor when the cell is named by its manifest's path.
    let by_path = write(
        files.path(),
        "secret-by-path.toml",
        &format!(
            "[trigger]\nname = \"secret-by-path\"\ncell = {:?}\non-event = {{ cell = \"mark\", state = \"exited\" }}\n\n[params]\ntoken = \"hunter2\"\n",
            cat.path().join("vault/cell.toml").display().to_string()
        ),
    );
    let out = node.ctl(&["trigger", "add", &by_path]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{by_path}: params.token: is a secret of cell /")),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));

    // Without systemd there are no timers to arm.
    let calendar = write(
        files.path(),
        "daily.toml",
        "[trigger]\nname = \"daily\"\ncell = \"mark\"\non-calendar = \"daily\"\n",
    );
    assert!(node.ctl(&["trigger", "validate", &calendar]).status.success());
    let out = node.ctl(&["trigger", "add", &calendar]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("on-calendar needs systemd's timers"), "{}", stderr(&out));

    // The admin's trigger is there, and stays.
    let list = triggers(&node);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "nightly");
    assert_eq!(list[0]["added_by"], "admin");
    let out = node.ctl(&["trigger", "remove", "nightly"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is the admin's"), "{}", stderr(&out));
    let out = node.ctl(&["trigger", "remove", "nothing"]);
    assert!(stderr(&out).contains("no trigger is named nothing"), "{}", stderr(&out));
}
