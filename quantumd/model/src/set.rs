//! Validation of a set of manifests together: child manifests (loaded through
//! the caller's loader), children's resource totals against their parent,
//! and the `needs` graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use crate::diagnostic::{Diagnostic, Located, SourceMap};
use crate::manifest::{CellName, Manifest};
use crate::parse::{parse, Parsed};

/// One manifest to validate: the path to print and its text.
#[derive(Debug, Clone)]
pub struct ManifestSource {
    pub path: String,
    pub text: String,
}

/// The outcome: the manifests that are valid, and every error, in file order
/// then position order.
#[derive(Debug, Default)]
pub struct ValidatedSet {
    /// Valid manifests by the path they were given or found at.
    pub manifests: Vec<(String, Manifest)>,
    pub errors: Vec<Located>,
}

impl ValidatedSet {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

struct File {
    path: String,
    text: String,
    map: SourceMap,
    parsed: Parsed,
    /// Extra diagnostics from the cross-manifest checks.
    extra: Vec<Diagnostic>,
    /// Index in `files` of each kept child's manifest, when it could be loaded.
    children: Vec<Option<usize>>,
}

/// Child manifests may nest; this bounds a runaway (or cyclic) chain.
const MAX_DEPTH: usize = 16;

/// Bounds the child manifests read in all: different spellings of one
/// directory (symbolic links) would otherwise let a few manifests that name
/// each other as children load exponentially many files.
const MAX_LOADED: usize = 1024;

/// Validates `inputs` and, recursively, the child manifests they reference.
/// `load` reads a child manifest by path; `known_cells` names cells that
/// exist outside this set (the installed catalog) and may be needed.
pub fn validate_set(
    inputs: Vec<ManifestSource>,
    load: &mut dyn FnMut(&str) -> Result<String, String>,
    known_cells: &BTreeSet<CellName>,
) -> ValidatedSet {
    let mut files: Vec<File> = Vec::new();
    let mut by_path: BTreeMap<String, usize> = BTreeMap::new();
    let top: Vec<usize> = inputs
        .into_iter()
        .map(|src| add_file(&mut files, &mut by_path, src.path, src.text))
        .collect();

    // Load children breadth-first, remembering depth to stop cycles.
    let mut queue: Vec<(usize, usize)> = top.iter().map(|&i| (i, 0)).collect();
    let mut loaded = 0;
    while let Some((i, depth)) = queue.pop() {
        let refs: Vec<_> = files[i].parsed.children.iter().map(|c| c.manifest.clone()).collect();
        let dir = Path::new(&files[i].path).parent().map(Path::to_path_buf).unwrap_or_default();
        for (j, rel) in refs.into_iter().enumerate() {
            let child_path = child_path(&dir, &rel);
            let field = format!("child[{}].manifest", files[i].parsed.spans.child_index[j]);
            let span = files[i].parsed.spans.child_manifest[j].clone();
            if let Some(&k) = by_path.get(&child_path) {
                if depth + 1 > MAX_DEPTH || k == i || top.contains(&k) && depth > 0 {
                    files[i].extra.push(Diagnostic::new(
                        field,
                        span,
                        format!("{rel:?} makes children nest too deep or in a circle"),
                    ));
                    files[i].children.push(None);
                } else {
                    files[i].children.push(Some(k));
                }
                continue;
            }
            if depth + 1 > MAX_DEPTH {
                files[i].extra.push(Diagnostic::new(
                    field,
                    span,
                    format!("{rel:?} nests children more than {MAX_DEPTH} deep"),
                ));
                files[i].children.push(None);
                continue;
            }
            if loaded >= MAX_LOADED {
                files[i].extra.push(Diagnostic::new(
                    field,
                    span,
                    format!("{rel:?} not read: more than {MAX_LOADED} child manifests in all"),
                ));
                files[i].children.push(None);
                continue;
            }
            loaded += 1;
            match load(&child_path) {
                Ok(text) => {
                    let k = add_file(&mut files, &mut by_path, child_path, text);
                    files[i].children.push(Some(k));
                    queue.push((k, depth + 1));
                }
                Err(e) => {
                    files[i]
                        .extra
                        .push(Diagnostic::new(field, span, format!("cannot read {rel:?}: {e}")));
                    files[i].children.push(None);
                }
            }
        }
    }

    for i in 0..files.len() {
        check_children_fit(&mut files, i);
    }
    check_needs(&mut files, &top, known_cells);

    let mut out = ValidatedSet::default();
    for f in files {
        let mut errors: Vec<Located> = f
            .parsed
            .diagnostics
            .iter()
            .chain(&f.extra)
            .map(|d| Located::resolve(&f.path, &f.text, &f.map, d))
            .collect();
        errors.sort_by_key(|l| (l.line, l.col));
        if errors.is_empty() {
            if let Some(m) = f.parsed.manifest {
                out.manifests.push((f.path, m));
            }
        }
        out.errors.extend(errors);
    }
    out
}

fn add_file(files: &mut Vec<File>, by_path: &mut BTreeMap<String, usize>, path: String, text: String) -> usize {
    let parsed = parse(&text);
    let map = SourceMap::new(&text);
    files.push(File {
        path: path.clone(),
        text,
        map,
        parsed,
        extra: Vec::new(),
        children: Vec::new(),
    });
    by_path.insert(normalize(Path::new(&path)), files.len() - 1);
    files.len() - 1
}

/// Names of the cells in the catalog directory `dir`: its subdirectories
/// holding a cell.toml (`dir/NAME/cell.toml`); empty if `dir` is unreadable.
pub fn cells_in(dir: &std::path::Path) -> std::collections::BTreeSet<crate::CellName> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("cell.toml").is_file())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Where the `[[child]]` manifest `rel` of a manifest in `dir` is, spelled
/// as [`ValidatedSet::manifests`] names it.
pub fn child_path(dir: &Path, rel: &str) -> String {
    normalize(&dir.join(rel))
}

/// `a/./b/../c.toml` -> `a/c.toml`, lexically, so that a file has one
/// spelling: a child that names a manifest already in the set another way
/// (`x/../cell.toml`) is that manifest, not a new file to read again.
fn normalize(path: &Path) -> String {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                Some(Component::CurDir | Component::ParentDir) | None => out.push(c),
            },
            c => out.push(c),
        }
    }
    out.to_string_lossy().into_owned()
}

/// A resource compared between parent and children: its name, the parent's
/// maximum, how to read a child's maximum, and how to print a value.
type Limit = (&'static str, u64, fn(&crate::Resources) -> u64, fn(u64) -> String);

/// The summed `count x max` of a parent's children must fit in the parent's
/// own maximum for CPU, memory and tasks; the child that tips a total over
/// is named.
fn check_children_fit(files: &mut [File], i: usize) {
    let parent = files[i].parsed.resources;
    let limits: [Limit; 3] = [
        (
            "cpu-max",
            u64::from(parent.cpu_max.centis()),
            |r| u64::from(r.cpu_max.centis()),
            |v| crate::CpuCores::from_centis(v as u32).to_string(),
        ),
        (
            "memory-max",
            parent.memory_max.bytes(),
            |r| r.memory_max.bytes(),
            |v| crate::ByteSize(v).to_string(),
        ),
        (
            "tasks-max",
            u64::from(parent.tasks_max),
            |r| u64::from(r.tasks_max),
            |v| v.to_string(),
        ),
    ];
    for (what, parent_max, get, show) in limits {
        let mut total: u64 = 0;
        for (j, child) in files[i].parsed.children.iter().enumerate() {
            let Some(Some(k)) = files[i].children.get(j) else { continue };
            let each = get(&files[*k].parsed.resources);
            total = total.saturating_add(each.saturating_mul(u64::from(child.count)));
            if total > parent_max {
                let index = files[i].parsed.spans.child_index[j];
                let span = files[i].parsed.spans.child_count[j].clone();
                let message = format!(
                    "child {:?} ({} x {what} {}) brings the children's total {what} to {}, above this cell's {what} {}",
                    child.name.as_str(),
                    child.count,
                    show(each),
                    show(total),
                    show(parent_max)
                );
                files[i].extra.push(Diagnostic::new(format!("child[{index}].count"), span, message));
                break;
            }
        }
    }
}

/// Every needed cell must exist (in the set or the catalog), and the needs
/// graph among the set must have no cycle.
fn check_needs(files: &mut [File], top: &[usize], known: &BTreeSet<CellName>) {
    let mut by_name: BTreeMap<CellName, usize> = BTreeMap::new();
    for &i in top {
        let Some(name) = files[i].parsed.name.clone() else { continue };
        if let Some(&first) = by_name.get(&name) {
            let other = files[first].path.clone();
            files[i].extra.push(Diagnostic::new(
                "cell.name",
                None,
                format!("cell {:?} is also defined in {other}", name.as_str()),
            ));
        } else {
            by_name.insert(name, i);
        }
    }
    let edges = |files: &[File], i: usize| -> Vec<usize> { files[i].parsed.needs.iter().filter_map(|n| by_name.get(n).copied()).collect() };
    for &i in top {
        let needs = files[i].parsed.needs.clone();
        for (j, needed) in needs.iter().enumerate() {
            let span = files[i].parsed.spans.needs[j].clone();
            let field = format!("needs.cells[{j}]");
            let Some(&target) = by_name.get(needed) else {
                if !known.contains(needed) {
                    files[i].extra.push(Diagnostic::new(
                        field,
                        span,
                        format!(
                            "unknown cell {:?}: not among the manifests given nor in the catalog",
                            needed.as_str()
                        ),
                    ));
                }
                continue;
            };
            if let Some(path) = path_between(files, &edges, target, i) {
                let mut names: Vec<&str> = vec![files[i].parsed.name.as_ref().map_or("?", CellName::as_str)];
                names.extend(path.iter().map(|&k| files[k].parsed.name.as_ref().map_or("?", CellName::as_str)));
                let cycle = names.join(" -> ");
                files[i].extra.push(Diagnostic::new(
                    field,
                    span,
                    format!("needing {:?} makes a cycle: {cycle}", needed.as_str()),
                ));
            }
        }
    }
}

/// A path of nodes from `from` to `to` (both included), if one exists.
fn path_between(files: &[File], edges: &dyn Fn(&[File], usize) -> Vec<usize>, from: usize, to: usize) -> Option<Vec<usize>> {
    let mut prev: BTreeMap<usize, usize> = BTreeMap::new();
    let mut stack = vec![from];
    let mut seen = BTreeSet::from([from]);
    while let Some(n) = stack.pop() {
        if n == to {
            let mut path = vec![n];
            let mut cur = n;
            while let Some(&p) = prev.get(&cur) {
                path.push(p);
                cur = p;
            }
            path.reverse();
            return Some(path);
        }
        for m in edges(files, n) {
            if seen.insert(m) {
                prev.insert(m, n);
                stack.push(m);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endlessly_spelled_children_are_read_a_bounded_number_of_times() {
        // Every path reads as this manifest (as through symbolic links to
        // "."), so each of its children is a new file, with two children.
        let text = "[cell]\nname = \"a\"\nversion = \"1.0.0\"\ndescription = \"x\"\nexec = [\"/bin/true\"]\n\n\
                    [[child]]\nname = \"b\"\nmanifest = \"b/cell.toml\"\n\n\
                    [[child]]\nname = \"c\"\nmanifest = \"c/cell.toml\"\n";
        let mut reads = 0;
        let set = validate_set(
            vec![ManifestSource {
                path: "cell.toml".into(),
                text: text.into(),
            }],
            &mut |_| {
                reads += 1;
                Ok(text.to_owned())
            },
            &BTreeSet::new(),
        );
        assert_eq!(reads, MAX_LOADED);
        assert!(set
            .errors
            .iter()
            .any(|e| e.message.ends_with("more than 1024 child manifests in all")));
    }

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(normalize(Path::new("a/./b/../c.toml")), "a/c.toml");
        assert_eq!(normalize(Path::new("./x/../../c.toml")), "../c.toml");
        assert_eq!(normalize(Path::new("/../c.toml")), "/c.toml");
        assert_eq!(normalize(Path::new("../../c.toml")), "../../c.toml");
    }
}
