//! `quantumctl validate` as external tests use it: exit codes and the
//! `PATH:LINE:COL: error: FIELD: MESSAGE` lines, no daemon needed.

use std::process::Command;

fn validate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quantumctl"))
        .arg("validate")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn manifests() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../model/tests/manifests").to_owned()
}

#[test]
fn valid_manifests_exit_0() {
    let good = format!("{}/good/web-server.toml", manifests());
    let (code, out, err) = validate(&[&good]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, "1 manifest(s) valid\n");
}

#[test]
fn every_problem_is_one_compiler_style_line_and_exit_1() {
    let bad = format!("{}/bad/bad-values.toml", manifests());
    let (code, _, err) = validate(&[&bad]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    let (summary, problems) = lines.split_last().unwrap();
    assert_eq!(*summary, "15 error(s) in 1 file(s)");
    assert_eq!(problems.len(), 15);
    for l in problems {
        let mut parts = l.splitn(5, ':');
        assert_eq!(parts.next(), Some(bad.as_str()), "{l}");
        assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{l}");
        assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{l}");
        assert_eq!(parts.next(), Some(" error"), "{l}");
    }
    assert!(problems.contains(&format!("{bad}:12:13: error: resources.io-weight: 0 is out of range 1..=10000").as_str()));
}

#[test]
fn unreadable_files_exit_2() {
    let (code, _, err) = validate(&["/nonexistent/cell.toml"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("quantumctl: cannot read /nonexistent/cell.toml"), "{err}");
    let usage = Command::new(env!("CARGO_BIN_EXE_quantumctl")).arg("validate").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn manifests_given_together_are_checked_together() {
    let dir = format!("{}/bad/needs-cycle", manifests());
    let (code, _, err) = validate(&[&format!("{dir}/a.toml"), &format!("{dir}/b.toml"), &format!("{dir}/c.toml")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("a.toml:8:10: error: needs.cells[0]: needing \"b\" makes a cycle: a -> b -> c -> a"),
        "{err}"
    );
}

#[test]
fn json_output_lists_every_problem() {
    let bad = format!("{}/bad/min-above-max.toml", manifests());
    let out = Command::new(env!("CARGO_BIN_EXE_quantumctl"))
        .args(["validate", "--json", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["field"], "resources.cpu-min");
    assert_eq!(v[0]["line"], 8);
}
