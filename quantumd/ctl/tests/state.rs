//! A stateful cell (`[state] subvolume = true`) through quantumd and
//! quantumctl, cgroup backend, root: its state outlives its runs; on a real
//! btrfs (a loop-mounted image under quantumd's state directory) `quantumctl
//! cell snapshot|rollback|snapshots|forget` work and are recorded in the
//! trail; elsewhere the state is a plain directory and snapshots say why
//! they cannot be. The systemd side (StateDirectory=, the root helper unit)
//! is checked in the VM tier.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{catalog, json, sh_cell, trail, wait_for, Node};

/// Appends one line per run to its state, then idles.
fn keeper() -> String {
    sh_cell(
        "keeper",
        r#"echo run >> "$STATE_DIRECTORY/runs"; exec sleep 600"#,
        "[state]\nsubvolume = true\n",
    )
}

fn runs(state: &Path) -> usize {
    std::fs::read_to_string(state.join("keeper/current/runs"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn run_until_written(node: &Node, state: &Path, expect: usize) -> String {
    let started = json(&node.ok(&["run", "keeper", "--json"]));
    wait_for("the keeper to write its state", Duration::from_secs(20), || {
        (runs(state) == expect).then_some(())
    });
    started["instance"].as_str().expect("an instance id").to_owned()
}

fn fails(node: &Node, args: &[&str]) -> String {
    let out = node.ctl(args);
    assert!(
        !out.status.success(),
        "quantumctl {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A btrfs image mounted at a directory; unmounted on drop.
struct LoopBtrfs {
    _image: tempfile::TempDir,
    mnt: PathBuf,
}

impl LoopBtrfs {
    fn mount_at(mnt: &Path) -> LoopBtrfs {
        let image = tempfile::tempdir().expect("temporary directory");
        let img = image.path().join("btrfs.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(256 << 20))
            .expect("sparse image");
        std::fs::create_dir_all(mnt).expect("mount point");
        let ok = |cmd: &mut Command| assert!(cmd.status().map(|s| s.success()).unwrap_or(false), "{cmd:?} failed");
        ok(Command::new("mkfs.btrfs").arg("-q").arg(&img));
        let fs = LoopBtrfs {
            _image: image,
            mnt: mnt.to_owned(),
        };
        ok(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(mnt));
        fs
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.mnt).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn on_btrfs_a_cells_state_survives_its_runs_and_snapshots_roll_it_back() {
    if !is_root() {
        eprintln!("SKIPPED: loop-mounting btrfs needs root");
        return;
    }
    let cat = catalog(&[("keeper", &keeper()), ("plain", &sh_cell("plain", "exec sleep 600", ""))]);
    let node = Node::start(cat.path());
    let state = node.state_dir().join("cell-state");
    let _btrfs = LoopBtrfs::mount_at(&state);

    let first = run_until_written(&node, &state, 1);
    let taken = node.ok(&["cell", "snapshot", "keeper", "one"]);
    assert!(taken.contains("snapshot one of keeper taken"), "{taken}");
    assert!(taken.contains("(btrfs subvolume)"), "{taken}");
    node.ok(&["stop", &first]);

    // The state outlives the run: the second run finds the first's line.
    let second = run_until_written(&node, &state, 2);
    let refused = fails(&node, &["cell", "rollback", "keeper", "one"]);
    assert!(refused.contains("stop it first"), "{refused}");
    assert_eq!(runs(&state), 2, "a refused rollback changed nothing");
    node.ok(&["stop", &second]);

    let rolled = node.ok(&["cell", "rollback", "keeper", "one"]);
    assert!(rolled.contains("keeper rolled back to snapshot one"), "{rolled}");
    assert_eq!(runs(&state), 1, "the state is the snapshot's again");
    let third = run_until_written(&node, &state, 2);
    node.ok(&["stop", &third]);

    let listed = json(&node.ok(&["cell", "snapshots", "keeper", "--json"]));
    assert_eq!(listed["snapshots"], serde_json::json!(["one"]), "{listed}");
    assert_eq!(listed["btrfs"], true, "{listed}");
    let missing = fails(&node, &["cell", "rollback", "keeper", "two"]);
    assert!(missing.contains("no snapshot two"), "{missing}");
    let bad = fails(&node, &["cell", "snapshot", "keeper", "../x"]);
    assert!(bad.contains("invalid snapshot name"), "{bad}");
    node.ok(&["cell", "forget", "keeper", "one"]);
    let listed = json(&node.ok(&["cell", "snapshots", "keeper", "--json"]));
    assert_eq!(listed["snapshots"], serde_json::json!([]), "{listed}");

    let stateless = fails(&node, &["cell", "snapshot", "plain", "one"]);
    assert!(stateless.contains("keeps no state"), "{stateless}");

    // Every change, and every refusal, is in the trail; listing is not.
    let state_entries: Vec<(String, bool)> = trail(&node)
        .into_iter()
        .filter(|e| e["action"] == "state")
        .map(|e| (e["detail"].as_str().unwrap_or("").to_owned(), e["ok"] == true))
        .collect();
    let expect: Vec<(String, bool)> = [
        ("snapshot one", true),
        ("rollback one", false),
        ("rollback one", true),
        ("rollback two", false),
        ("snapshot ../x", false),
        ("delete one", true),
        ("snapshot one", false),
    ]
    .iter()
    .map(|(d, ok)| ((*d).to_owned(), *ok))
    .collect();
    assert_eq!(state_entries, expect);
    node.ok(&["trail", "verify"]);
}

#[test]
fn off_btrfs_the_state_is_a_plain_directory_and_snapshots_say_why_not() {
    let cat = catalog(&[("keeper", &keeper())]);
    let node = Node::start(cat.path());
    let state = node.state_dir().join("cell-state");
    if Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(node.state_dir())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "btrfs")
    {
        eprintln!("SKIPPED: the temporary directory is on btrfs");
        return;
    }
    let first = run_until_written(&node, &state, 1);
    node.ok(&["stop", &first]);
    let second = run_until_written(&node, &state, 2);
    node.ok(&["stop", &second]);
    let why = fails(&node, &["cell", "snapshot", "keeper", "one"]);
    assert!(why.contains("not on btrfs"), "{why}");
    let listed = json(&node.ok(&["cell", "snapshots", "keeper", "--json"]));
    assert_eq!(listed["btrfs"], false, "{listed}");
}
