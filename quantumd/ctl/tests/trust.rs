//! The node identity, the quantum trail and signed bundles, end to end:
//! quantumd on a private bus records what it does in its trail, signed with
//! its own identity (a key file here: the host has no TPM; the TPM path is
//! tested against swtpm in quantum-trust), and quantumctl reads and verifies
//! it; `quantumctl bundle` signs and checks bundles with real ML-DSA-65 and
//! Ed25519 keys.

mod support;
// The same software TPM quantum-trust's own tests use.
#[path = "../../trust/tests/common/mod.rs"]
mod swtpm;

use std::process::Command;

use support::{bin, catalog, json, sh_cell, trail, Node};

/// The newest segment file of the trail.
fn last_segment(node: &Node) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(node.state_dir().join("trail"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a trail segment")
}

#[test]
fn the_node_identity_is_shown_with_where_its_keys_live() {
    let cat = catalog(&[]);
    let node = Node::start(cat.path());
    let id = json(&node.ok(&["identity", "--json"]));
    assert_eq!(id["key_id"].as_str().unwrap().len(), 64, "{id}");
    assert_eq!(id["tpm"], false, "{id}");
    let store = id["store"].as_str().unwrap();
    assert!(store.contains("identity/node.key"), "{store}");
    assert!(store.contains("no TPM"), "the fallback must say why: {store}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(node.state_dir().join("identity/node.key")).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the key file is readable by others: {mode:o}");
    let human = node.ok(&["identity"]);
    assert!(human.contains("sealed by a TPM:     no"), "{human}");
}

#[test]
fn with_a_tpm_the_node_key_is_sealed_by_it_a_missing_tpm_stops_quantumd_and_a_cleared_one_is_recovered_by_regenerating() {
    let tpm_state = tempfile::tempdir().unwrap();
    let tpm = swtpm::Swtpm::start(tpm_state.path());
    let cat = catalog(&[]);
    let mut node = Node::start_configured(cat.path(), &format!("tpm = {:?}\n", tpm.tcti()));
    let id = json(&node.ok(&["identity", "--json"]));
    assert_eq!(id["tpm"], true, "{id}");
    let store = id["store"].as_str().unwrap();
    assert!(store.contains("TPM"), "{store}");
    assert!(
        !node.state_dir().join("identity/node.key").exists(),
        "a TPM-sealed identity leaves no plain key file"
    );

    // The sealed key comes back from the TPM after a restart of both.
    node.kill_daemon();
    let tpm = tpm.restart();
    node.set_config(&format!("tpm = {:?}\n", tpm.tcti()));
    node.start_daemon();
    let again = json(&node.ok(&["identity", "--json"]));
    assert_eq!(again["key_id"], id["key_id"], "the identity changed across a restart");
    node.ok(&["trail", "verify"]);

    // The configured TPM is gone: quantumd refuses to start, and says why,
    // rather than quietly making a new identity.
    node.kill_daemon();
    drop(tpm);
    let out = node.quantumd(&[]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "quantumd started without its TPM:\n{log}");
    assert!(log.contains("node identity") && log.contains("swtpm:host=127.0.0.1"), "{log}");

    // A new (cleared) TPM cannot unseal the old identity. The recovery:
    // regenerate it, offline; the trail records it and still verifies,
    // old seals against the retired key.
    let new_state = tempfile::tempdir().unwrap();
    let tpm = swtpm::Swtpm::start(new_state.path());
    node.set_config(&format!("tpm = {:?}\n", tpm.tcti()));
    let out = node.quantumd(&[]);
    assert!(!out.status.success(), "a cleared TPM unsealed the identity?");
    let out = node.quantumd(&["--regenerate-identity"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    let old_id = id["key_id"].as_str().unwrap();
    assert!(said.contains(&format!("retired {old_id}")), "{said}");
    node.start_daemon();
    let new_id = json(&node.ok(&["identity", "--json"]));
    assert_ne!(new_id["key_id"], id["key_id"]);
    assert_eq!(new_id["tpm"], true, "{new_id}");
    let report = json(&node.ok(&["trail", "verify", "--json"]));
    assert_eq!(report["ok"], true, "old seals must verify against the retired key: {report}");
    let regenerated = trail(&node)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "identity")
        .expect("an identity entry");
    assert!(
        regenerated["detail"].as_str().unwrap().contains(&format!("retired {old_id}")),
        "{regenerated}"
    );
}

#[test]
fn runs_stops_and_refusals_are_in_the_trail_which_verifies_and_survives_a_torn_write() {
    let cat = catalog(&[("sleeper", &sh_cell("sleeper", "exec sleep 600", ""))]);
    let mut node = Node::start(cat.path());
    node.ok(&["run", "sleeper"]);
    node.ok(&["stop", "sleeper"]);
    let refused = node.ctl(&["run", "no-such-cell"]);
    assert_eq!(refused.status.code(), Some(1));

    let entries = trail(&node);
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["identity", "start", "run", "stop", "refuse"], "{entries:#?}");
    let run = &entries[2];
    assert_eq!(run["cell"], "sleeper");
    assert_eq!(run["actor"], "uid:0");
    assert_eq!(run["ok"], true);
    let manifest = std::fs::read(cat.path().join("sleeper/cell.toml")).unwrap();
    assert_eq!(run["manifest_hash"], blake3::hash(&manifest).to_hex().as_str(), "{run}");
    assert_eq!(entries[4]["cell"], "no-such-cell");
    assert!(
        entries[4]["error"].as_str().unwrap().contains("no cell named \"no-such-cell\""),
        "{}",
        entries[4]
    );

    let report = json(&node.ok(&["trail", "verify", "--json"]));
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["entries"], 5, "{report}");
    assert!(report["seals"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["last_sealed_seq"], 5, "{report}");

    // A power cut in the middle of a write: the last record is torn. The
    // next quantumd cuts off the torn part only, seals, and records on.
    node.kill_daemon();
    let seg = last_segment(&node);
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 20)
        .unwrap();
    node.start_daemon();
    let report = json(&node.ok(&["trail", "verify", "--json"]));
    assert_eq!(report["ok"], true, "{report}");
    let after: Vec<u64> = trail(&node).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(after.starts_with(&[1, 2, 3, 4]), "entries before the torn one were lost: {after:?}");
    assert!(node.log().contains("torn"), "the repair is not logged");
}

#[test]
fn a_trail_damaged_in_the_middle_is_named_by_verify_and_nothing_runs_unrecorded() {
    let cat = catalog(&[("sleeper", &sh_cell("sleeper", "exec sleep 600", ""))]);
    let mut node = Node::start(cat.path());
    for _ in 0..3 {
        node.ok(&["run", "sleeper"]);
    }
    node.ok(&["stop", "sleeper"]);
    node.ok(&["trail", "verify"]);
    node.kill_daemon();
    // Flip one byte inside the second record's payload.
    let seg = last_segment(&node);
    let mut bytes = std::fs::read(&seg).unwrap();
    let header = quantum_trail::HEADER_LEN;
    let first_len = u32::from_le_bytes(bytes[header..header + 4].try_into().unwrap()) as usize;
    let second = header + quantum_trail::FRAME_HEADER + first_len;
    bytes[second + quantum_trail::FRAME_HEADER + 10] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();

    node.start_daemon();
    let verify = node.ctl(&["trail", "verify"]);
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("does NOT verify"), "{stdout}");
    assert!(stdout.contains("(entry 2)"), "verify must name the damaged entry: {stdout}");
    let run = node.ctl(&["run", "sleeper"]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("runs nothing it cannot record"), "{stderr}");
    assert!(node.live_cgroups().is_empty(), "{:?}\n{}", node.live_cgroups(), node.log());
}

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(bin("quantumctl")).args(args).output().expect("quantumctl")
}

#[test]
fn bundles_verify_only_untampered_and_signed_by_a_trusted_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    std::fs::create_dir_all(d("trusted")).unwrap();
    std::fs::create_dir_all(d("others")).unwrap();
    assert!(ctl(&["bundle", "keygen", "--name", "alice", &d("trusted/alice")]).status.success());
    assert!(ctl(&["bundle", "keygen", "--name", "mallory", &d("others/mallory")])
        .status
        .success());
    let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(d("trusted/alice.key")).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600);
    std::fs::rename(d("trusted/alice.key"), d("alice.key")).unwrap();

    let artifact = b"#!/bin/sh\necho hello from a bundle\n";
    std::fs::write(d("hello"), artifact).unwrap();
    let manifest = format!(
        "[cell]\nname = \"hello\"\nversion = \"1.0.0\"\ndescription = \"says hello\"\nartifact = {{ path = \"hello\", blake3 = \"{}\" }}\n",
        blake3::hash(artifact).to_hex()
    );
    std::fs::write(d("cell.toml"), manifest).unwrap();
    let out = ctl(&[
        "bundle",
        "sign",
        "--key",
        &d("alice.key"),
        "--artifact",
        &d("hello"),
        &d("cell.toml"),
        "-o",
        &d("hello.qcb"),
    ]);
    assert!(out.status.success(), "{out:?}");

    let ok = ctl(&["bundle", "verify", "--trusted-keys", &d("trusted"), &d("hello.qcb")]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("signed by alice"), "{ok:?}");

    // Signed by a key this node does not trust.
    let untrusted = ctl(&["bundle", "verify", "--trusted-keys", &d("others"), &d("hello.qcb")]);
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("untrusted key"),
        "{untrusted:?}"
    );

    // One byte of the artifact changed after signing.
    let mut bytes = std::fs::read(d("hello.qcb")).unwrap();
    let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
    let at = bytes[at + 1..].windows(5).position(|w| w == b"hello").map_or(at, |p| at + 1 + p);
    bytes[at] ^= 1;
    std::fs::write(d("tampered.qcb"), &bytes).unwrap();
    let tampered = ctl(&["bundle", "verify", "--trusted-keys", &d("trusted"), &d("tampered.qcb")]);
    assert_eq!(tampered.status.code(), Some(1));
    let why = String::from_utf8_lossy(&tampered.stderr);
    assert!(why.contains("does not verify") && why.contains("hash"), "{why}");
}
