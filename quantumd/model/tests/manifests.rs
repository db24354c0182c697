//! Manifests as data: every case under `manifests/bad/` must produce exactly
//! the diagnostics in its `.expected` file, and every manifest under
//! `manifests/good/` and the shipped catalog must be valid.
//!
//! A case is a file `NAME.toml` (expected output in `NAME.expected`) or a
//! directory `NAME/` whose top-level `*.toml` files are validated together
//! (expected output in `NAME/expected`); child manifests they reference are
//! loaded from disk. Run with `UPDATE_EXPECT=1` to rewrite the expectations
//! after a deliberate change, then review the diff.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use quantum_model::{validate_set, CellName, ManifestSource, ValidatedSet};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests")
}

/// Validates `files` with paths printed relative to `tests/manifests`.
fn validate(files: &[PathBuf]) -> ValidatedSet {
    let base = root();
    let rel = |p: &Path| p.strip_prefix(&base).unwrap_or(p).to_string_lossy().into_owned();
    let inputs = files
        .iter()
        .map(|p| ManifestSource {
            path: rel(p),
            text: fs::read_to_string(p).expect("read case"),
        })
        .collect();
    let mut load = |p: &str| fs::read_to_string(base.join(p)).map_err(|e| e.to_string());
    validate_set(inputs, &mut load, &BTreeSet::<CellName>::new())
}

fn render(set: &ValidatedSet) -> String {
    set.errors.iter().map(|e| format!("{e}\n")).collect()
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_bad_manifest_produces_exactly_its_expected_diagnostics() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut entries: Vec<_> = fs::read_dir(root().join("bad"))
        .expect("bad/")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let (files, expected_path) = if path.is_dir() {
            (toml_files(&path), path.join("expected"))
        } else if path.extension().is_some_and(|e| e == "toml") {
            (vec![path.clone()], path.with_extension("expected"))
        } else {
            continue;
        };
        cases += 1;
        let actual = render(&validate(&files));
        assert!(
            !actual.is_empty(),
            "{}: a bad manifest must produce at least one error",
            path.display()
        );
        if update {
            fs::write(&expected_path, &actual).expect("write expected");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!("--- {}\nexpected:\n{expected}actual:\n{actual}", path.display()));
        }
    }
    assert!(cases >= 10, "only {cases} bad cases found");
    assert!(
        failures.is_empty(),
        "{} case(s) differ (UPDATE_EXPECT=1 to accept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn good_manifests_are_valid() {
    let files = toml_files(&root().join("good"));
    assert!(!files.is_empty());
    for f in files {
        let set = validate(std::slice::from_ref(&f));
        assert!(set.is_valid(), "{}:\n{}", f.display(), render(&set));
    }
}

#[test]
fn the_standard_catalog_is_valid() {
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/cells");
    let Ok(dirs) = fs::read_dir(&catalog) else {
        panic!("no catalog at {}", catalog.display())
    };
    let mut inputs = Vec::new();
    for d in dirs {
        let p = d.expect("entry").path().join("cell.toml");
        if p.exists() {
            inputs.push(ManifestSource {
                path: p.display().to_string(),
                text: fs::read_to_string(&p).expect("read"),
            });
        }
    }
    assert!(inputs.len() >= 5, "catalog has only {} cells", inputs.len());
    let n = inputs.len();
    let set = validate_set(inputs, &mut |p| fs::read_to_string(p).map_err(|e| e.to_string()), &BTreeSet::new());
    assert!(set.is_valid(), "{}", render(&set));
    assert_eq!(set.manifests.len(), n);
}

#[test]
fn policy_defaults_to_alerting_after_a_minute_of_learning_and_reads_what_is_given() {
    let base = "[cell]\nname = \"watchful\"\nversion = \"1.0.0\"\ndescription = \"d\"\nexec = [\"/bin/true\"]\n";
    let plain = quantum_model::parse_manifest(base).expect("valid");
    assert_eq!(plain.policy.on_anomaly, quantum_model::OnAnomaly::Alert);
    assert_eq!(plain.policy.learning.secs(), 60);

    let given = quantum_model::parse_manifest(&format!("{base}[policy]\non-anomaly = \"stop\"\nlearning = \"5s\"\n")).expect("valid");
    assert_eq!(given.policy.on_anomaly, quantum_model::OnAnomaly::Stop);
    assert_eq!(given.policy.learning.secs(), 5);
}

#[test]
fn channels_are_none_by_default_and_read_as_given() {
    let base = "[cell]\nname = \"echo-client\"\nversion = \"1.0.0\"\ndescription = \"d\"\nexec = [\"/bin/true\"]\n";
    let plain = quantum_model::parse_manifest(base).expect("valid");
    assert!(!plain.channels.any());
    assert_eq!(plain.channels.rate, quantum_model::Channels::DEFAULT_RATE);

    let given = quantum_model::parse_manifest(&format!(
        "{base}[provides]\nchannels = [\"figures\"]\n[uses]\nchannels = [\"echo-server/echo\"]\nrate = 10\n"
    ))
    .expect("valid");
    assert!(given.channels.any());
    assert_eq!(given.channels.provides, ["figures"]);
    assert_eq!(given.channels.uses, ["echo-server/echo"]);
    assert_eq!(given.channels.rate, 10);
}

#[test]
fn the_example_channel_cells_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/examples/channels");
    let files = vec![dir.join("echo-server/cell.toml"), dir.join("echo-client/cell.toml")];
    let set = validate(&files);
    assert!(set.is_valid(), "{}", render(&set));
    let (_, client) = set
        .manifests
        .iter()
        .find(|(_, m)| m.name.as_str() == "echo-client")
        .expect("echo-client");
    assert_eq!(client.channels.uses, ["echo-server/echo"]);
}
