//! Several manifests validated together, with child manifests served by the
//! loader: exercises child loading (nesting, circles, missing files),
//! children's resource totals, and the `needs` graph (unknown cells, cycles).
//!
//! Input: UTF-8 text cut into pieces at lines starting with `%% `; the rest
//! of such a line is the piece's path (the first piece is `cell.toml`):
//!
//! ```text
//! [cell]            <- cell.toml
//! ...
//! %% worker/cell.toml
//! [cell]            <- worker/cell.toml
//! ```
//!
//! Pieces whose path has no `/` are the manifests given to `validate_set`;
//! every piece, given or not, can be loaded as a child by its path (after
//! resolving `.` and `..`), so children may point back at a given manifest.

#![no_main]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use quantum_model::{parse_manifest, validate_set, CellName, ManifestSource};

const SEP: &str = "\n%% ";
const MAX_PIECES: usize = 32;
const FIRST_PATH: &str = "cell.toml";

/// `a/./b/../c.toml` -> `a/c.toml`; `None` if it climbs above the root.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };

    let mut chunks = text.split(SEP);
    let mut pieces: Vec<(String, &str)> = vec![(FIRST_PATH.to_owned(), chunks.next().unwrap_or(""))];
    for chunk in chunks.take(MAX_PIECES - 1) {
        let (path, body) = chunk.split_once('\n').unwrap_or((chunk, ""));
        pieces.push((path.trim().to_owned(), body));
    }

    // What the loader can serve, by normalized path (the first piece with a
    // given path wins, as on a disk a path names one file).
    let mut disk: BTreeMap<String, &str> = BTreeMap::new();
    for (path, body) in &pieces {
        if let Some(p) = normalize(path) {
            disk.entry(p).or_insert(body);
        }
    }
    let inputs: Vec<ManifestSource> = pieces
        .iter()
        .filter(|(path, _)| !path.contains('/'))
        .map(|(path, body)| ManifestSource { path: path.clone(), text: (*body).to_owned() })
        .collect();
    let given: Vec<(String, String)> = inputs.iter().map(|s| (s.path.clone(), s.text.clone())).collect();

    // Every text validate_set may cite, by the path it cites it with (the
    // same path may be given twice, with different texts).
    let mut texts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, text) in &given {
        texts.entry(path.clone()).or_default().push(text.clone());
    }
    let loads = Cell::new(0usize);
    let mut loaded: Vec<(String, String)> = Vec::new();
    let mut load = |p: &str| {
        loads.set(loads.get() + 1);
        match normalize(p).and_then(|n| disk.get(&n).copied()) {
            Some(body) => {
                loaded.push((p.to_owned(), body.to_owned()));
                Ok(body.to_owned())
            }
            None => Err("No such file or directory (os error 2)".to_owned()),
        }
    };
    let known: BTreeSet<CellName> = ["database", "catalog-cell"].iter().map(|n| n.parse().unwrap()).collect();
    let set = validate_set(inputs, &mut load, &known);
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{} loads; {} errors; {} valid", loads.get(), set.errors.len(), set.manifests.len());
        for e in &set.errors {
            eprintln!("{e}");
        }
    }
    // Each file is read once, however often and however spelled it is named
    // (reading it again under each new spelling once made this exponential).
    let mut read: BTreeSet<&str> = BTreeSet::new();
    for (path, _) in &loaded {
        assert!(read.insert(path), "{path:?} read twice");
    }
    for (path, text) in loaded {
        texts.entry(path).or_default().push(text);
    }

    for e in &set.errors {
        let rendered = e.to_string();
        assert!(rendered.contains(": error: "), "diagnostic without \": error: \": {rendered:?}");
        let Some(srcs) = texts.get(&e.path) else { panic!("diagnostic for a path never given nor loaded: {rendered:?}") };
        assert!(rendered.starts_with(&format!("{}:{}:{}: error: ", e.path, e.line, e.col)), "bad prefix: {rendered:?}");
        let lines = srcs.iter().map(|s| s.split('\n').count()).max().unwrap_or(1);
        assert!(e.line >= 1 && e.line <= lines, "line {} outside 1..={lines}: {rendered:?}", e.line);
        assert!(e.col >= 1, "column 0: {rendered:?}");
    }
    for (path, m) in &set.manifests {
        assert!(texts.contains_key(path), "valid manifest at a path never given nor loaded: {path:?}");
        if texts[path].len() == 1 {
            assert!(!set.errors.iter().any(|e| &e.path == path), "{path:?} both valid and in error");
        }
        assert!(texts[path].iter().any(|t| parse_manifest(t).as_ref() == Ok(m)), "{path:?}: set and single parse disagree");
    }
    // A given manifest that fails on its own fails in the set too.
    for (path, text) in &given {
        if parse_manifest(text).is_err() {
            assert!(set.errors.iter().any(|e| &e.path == path), "{path:?} is invalid alone but has no error in the set");
        }
    }
});
