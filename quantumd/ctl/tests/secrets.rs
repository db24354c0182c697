//! A secret parameter (`secret = true`: a database's password) reaches the
//! cell as a file in `$CREDENTIALS_DIRECTORY` and the caller in the answer
//! to its run, and nowhere else: not the command line, the environment, the
//! trail, `inspect`, the cell's logs or quantumd's own log. quantumd makes a
//! random one when the run gives none. (cgroup v2 backend here; under
//! systemd it is `LoadCredential=`, checked in the VM tier's catalog test
//! of sql-database.)

mod support;

use std::time::Duration;

use support::{catalog, json, sh_cell, wait_for, Node};

const TASK: &str = r#"[lifecycle]
kind = "task"
restart = "no"

[params.token]
type = "string"
secret = true
description = "an API token (random when not given)"
"#;

/// Prints the token's SHA-256, the credential directory's mode, and
/// whether the token is anywhere in its environment or command line.
const SCRIPT: &str = r#"t=$(cat "$CREDENTIALS_DIRECTORY/token")
printf %s "$t" | sha256sum | cut -c1-64
stat -c %a "$CREDENTIALS_DIRECTORY"
if env | grep -qF -- "$t" || tr '\0' ' ' </proc/$$/cmdline | grep -qF -- "$t"; then echo leaked; else echo private; fi"#;

fn sha256(text: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha256sum | cut -c1-64", "sh", text])
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_secret_made_by_quantumd_is_shown_to_the_caller_alone() {
    let cat = catalog(&[("keyed", &sh_cell("keyed", SCRIPT, TASK))]);
    let node = Node::start(cat.path());

    let answer = json(&node.ok(&["run", "--json", "keyed"]));
    let token = answer["secrets"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {answer}"))
        .to_owned();
    assert_eq!(token.len(), 32, "{token}");
    let id = answer["instance"].as_str().expect("instance").to_owned();
    wait_for("the task to end", Duration::from_secs(20), || {
        (node.instances("exited") == [id.clone()]).then_some(())
    });

    let logs = node.ok(&["logs", &id]);
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(
        lines,
        [sha256(&token).as_str(), "700", "private"],
        "the cell read its secret:\n{logs}"
    );

    let trail = serde_json::to_string(&support::trail(&node)).expect("trail");
    assert!(trail.contains(&id), "the run is in the trail");
    let inspect = node.ok(&["inspect", "--json", &id]);
    for (place, text) in [
        ("the trail", trail.as_str()),
        ("inspect", &inspect),
        ("quantumd's log", &node.log()),
    ] {
        assert!(!text.contains(&token), "the secret is in {place}:\n{text}");
    }
    // Gone from disk with the instance.
    let kept = node.state_dir().join("credentials").join(&id);
    wait_for("the secret to be removed", Duration::from_secs(10), || {
        (!kept.exists()).then_some(())
    });

    let again = json(&node.ok(&["run", "--json", "keyed"]));
    assert_ne!(again["secrets"]["token"], answer["secrets"]["token"], "every run gets its own");
}

#[test]
fn a_secret_given_by_the_caller_reaches_the_cell_and_is_not_echoed() {
    let cat = catalog(&[("keyed", &sh_cell("keyed", SCRIPT, TASK))]);
    let node = Node::start(cat.path());
    let out = node.ctl(&["run", "keyed", "token=correct horse battery staple"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", node.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, format!("{}\n700\nprivate\n", sha256("correct horse battery staple")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("token"), "a given secret is not repeated: {stderr}");
    let trail = serde_json::to_string(&support::trail(&node)).expect("trail");
    assert!(!trail.contains("correct horse"), "{trail}");
    assert!(!node.log().contains("correct horse"), "{}", node.log());
}

#[test]
fn a_foreground_task_shows_a_made_secret_on_stderr_not_in_its_output() {
    let cat = catalog(&[("keyed", &sh_cell("keyed", SCRIPT, TASK))]);
    let node = Node::start(cat.path());
    let out = node.ctl(&["run", "keyed"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", node.log());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let token = stderr
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token on stderr: {stderr}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, format!("{}\n700\nprivate\n", sha256(token)), "stdout is the cell's alone");
}
