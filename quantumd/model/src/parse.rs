//! `cell.toml` -> [`Manifest`], reporting every problem found, not just the
//! first. We walk toml_edit's spanned document by hand instead of deriving
//! `Deserialize`, because serde stops at the first error and loses positions.

use std::collections::BTreeMap;
use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::diagnostic::Diagnostic;
use crate::manifest::{
    is_channel_name, Artifact, CellName, Channels, ChildRef, Isolation, Kind, Lifecycle, Manifest, Network, Objectives, OnAnomaly,
    ParamSpec, ParamType, Policy, Program, Resources, Restart, State, UserMode,
};
use crate::netrule::NetRule;
use crate::placeholder::{is_param_name, placeholders};
use crate::units::{ByteSize, CpuCores, Duration, Latency};

type Span = Option<Range<usize>>;

const TOP_KEYS: &[&str] = &[
    "cell",
    "params",
    "resources",
    "lifecycle",
    "objectives",
    "state",
    "policy",
    "provides",
    "uses",
    "isolation",
    "needs",
    "child",
];
const CELL_KEYS: &[&str] = &["name", "version", "description", "capabilities", "exec", "artifact"];
const ARTIFACT_KEYS: &[&str] = &["path", "blake3"];
const PARAM_KEYS: &[&str] = &["type", "default", "description", "secret"];
const RESOURCE_KEYS: &[&str] = &["cpu-min", "cpu-max", "memory-min", "memory-max", "io-weight", "tasks-max", "gpus"];
const LIFECYCLE_KEYS: &[&str] = &["kind", "reach", "idle-timeout", "restart", "max-restarts", "restart-window"];
const OBJECTIVES_KEYS: &[&str] = &["runq-latency-p99"];
const STATE_KEYS: &[&str] = &["subvolume"];
const POLICY_KEYS: &[&str] = &["on-anomaly", "learning"];
const PROVIDES_KEYS: &[&str] = &["channels"];
const USES_KEYS: &[&str] = &["channels", "rate"];
const ISOLATION_KEYS: &[&str] = &["network", "network-allow", "user", "readable", "writable"];
const NEEDS_KEYS: &[&str] = &["cells"];
const CHILD_KEYS: &[&str] = &["name", "manifest", "count"];

/// Where the cross-manifest checks of [`crate::set`] point their diagnostics.
#[derive(Debug, Clone, Default)]
pub(crate) struct Spans {
    pub needs: Vec<Span>,
    pub child_manifest: Vec<Span>,
    pub child_count: Vec<Span>,
    /// Index of each kept child in the `[[child]]` array (bad entries are dropped).
    pub child_index: Vec<usize>,
}

/// The outcome of parsing one manifest: a best-effort manifest (defaults in
/// place of what was wrong) so that checks across manifests still run, plus
/// everything that was wrong.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub manifest: Option<Manifest>,
    /// The cell name, when it was valid, even if other fields were not.
    pub name: Option<CellName>,
    pub needs: Vec<CellName>,
    pub children: Vec<ChildRef>,
    pub resources: Resources,
    pub spans: Spans,
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses and validates one manifest on its own (no cross-manifest checks).
pub fn parse_manifest(src: &str) -> Result<Manifest, Vec<Diagnostic>> {
    let parsed = parse(src);
    match parsed.manifest {
        Some(m) if parsed.diagnostics.is_empty() => Ok(m),
        _ => Err(parsed.diagnostics),
    }
}

/// The one diagnostic of a file that is not TOML at all.
pub(crate) fn syntax_error(e: &toml_edit::TomlError) -> Diagnostic {
    let message = e.message().trim().replace(['\r', '\n'], "; ");
    let message = if message.is_empty() { "invalid TOML".to_owned() } else { message };
    Diagnostic::new("syntax", e.span(), message)
}

pub(crate) fn parse(src: &str) -> Parsed {
    let mut w = Walker { diags: Vec::new() };
    let doc = match ImDocument::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            w.diags.push(syntax_error(&e));
            return Parsed {
                manifest: None,
                name: None,
                needs: Vec::new(),
                children: Vec::new(),
                resources: Resources::default(),
                spans: Spans::default(),
                diagnostics: w.diags,
            };
        }
    };
    w.manifest(doc.as_table())
}

pub(crate) struct Walker {
    pub(crate) diags: Vec<Diagnostic>,
}

/// The dotted FIELD of a key. Keys that are not bare TOML keys are quoted
/// (with escapes), so that a FIELD is never empty and never spans lines.
fn join(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let key = if bare { key.to_owned() } else { format!("{key:?}") };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// Which other section a misplaced key belongs to, for "did you mean".
fn home_of(key: &str) -> Option<&'static str> {
    [
        ("cell", CELL_KEYS),
        ("resources", RESOURCE_KEYS),
        ("lifecycle", LIFECYCLE_KEYS),
        ("objectives", OBJECTIVES_KEYS),
        ("state", STATE_KEYS),
        ("policy", POLICY_KEYS),
        ("uses", USES_KEYS),
        ("isolation", ISOLATION_KEYS),
        ("needs", NEEDS_KEYS),
    ]
    .into_iter()
    .find(|(_, keys)| keys.contains(&key))
    .map(|(section, _)| section)
}

fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(1) + usize::from(k.len() > 8))
        .min()
        .map(|(_, k)| k)
}

pub(crate) fn describe(item: &Item) -> &'static str {
    match item {
        Item::Value(Value::String(_)) => "a string",
        Item::Value(Value::Integer(_)) => "an integer",
        Item::Value(Value::Float(_)) => "a float",
        Item::Value(Value::Boolean(_)) => "a boolean",
        Item::Value(Value::Datetime(_)) => "a date-time",
        Item::Value(Value::Array(_)) => "an array",
        Item::Value(Value::InlineTable(_)) | Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::None => "nothing",
    }
}

impl Walker {
    pub(crate) fn error(&mut self, field: impl Into<String>, span: Span, message: impl Into<String>) {
        self.diags.push(Diagnostic::new(field, span, message));
    }

    /// Reports every key of `table` not in `allowed`.
    pub(crate) fn check_keys(&mut self, prefix: &str, table: &dyn TableLike, allowed: &[&str]) {
        for (key, item) in table.iter() {
            if allowed.contains(&key) {
                continue;
            }
            let span = table.key(key).and_then(|k| k.span()).or_else(|| item.span());
            let hint = match (closest(key, allowed), home_of(key)) {
                (Some(s), _) => format!("; did you mean \"{s}\"?"),
                (None, Some(section)) if prefix != section => format!("; did you mean \"{section}.{key}\"?"),
                _ => String::new(),
            };
            self.error(join(prefix, key), span, format!("unknown key{hint}"));
        }
    }

    pub(crate) fn table<'a>(&mut self, field: &str, item: &'a Item) -> Option<&'a dyn TableLike> {
        match item.as_table_like() {
            Some(t) => Some(t),
            None => {
                self.error(field, item.span(), format!("expected a table, found {}", describe(item)));
                None
            }
        }
    }

    pub(crate) fn string<'a>(&mut self, field: &str, item: &'a Item) -> Option<&'a str> {
        match item.as_str() {
            Some(s) => Some(s),
            None => {
                self.error(field, item.span(), format!("expected a string, found {}", describe(item)));
                None
            }
        }
    }

    /// An array of strings, each with its span.
    fn strings<'a>(&mut self, field: &str, item: &'a Item) -> Option<Vec<(&'a str, Span)>> {
        let Some(array) = item.as_array() else {
            self.error(
                field,
                item.span(),
                format!("expected an array of strings, found {}", describe(item)),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, v) in array.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push((s, v.span())),
                None => {
                    ok = false;
                    self.error(
                        format!("{field}[{i}]"),
                        v.span(),
                        format!("expected a string, found {}", v.type_name()),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn integer(&mut self, field: &str, item: &Item, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let Some(n) = item.as_integer() else {
            self.error(field, item.span(), format!("expected an integer, found {}", describe(item)));
            return None;
        };
        if !range.contains(&n) {
            let msg = if *range.end() == i64::MAX {
                format!("{n} is out of range: must be at least {}", range.start())
            } else {
                format!("{n} is out of range {}..={}", range.start(), range.end())
            };
            self.error(field, item.span(), msg);
            return None;
        }
        Some(n)
    }

    fn cores(&mut self, field: &str, item: &Item) -> Option<CpuCores> {
        let v = match (item.as_float(), item.as_integer()) {
            (Some(f), _) => f,
            (None, Some(i)) => i as f64,
            _ => {
                self.error(field, item.span(), format!("expected a number of cores, found {}", describe(item)));
                return None;
            }
        };
        CpuCores::try_from(v)
            .map_err(|e| self.error(field, item.span(), e.to_string()))
            .ok()
    }

    pub(crate) fn size(&mut self, field: &str, item: &Item) -> Option<ByteSize> {
        if let Some(n) = item.as_integer() {
            if let Ok(n) = u64::try_from(n) {
                return Some(ByteSize(n));
            }
        }
        let s = self.string_like(field, item, "a size such as \"256M\"")?;
        s.parse::<ByteSize>()
            .map_err(|e| self.error(field, item.span(), e.to_string()))
            .ok()
    }

    pub(crate) fn duration(&mut self, field: &str, item: &Item) -> Option<Duration> {
        if item.as_integer() == Some(0) {
            return Some(Duration(0));
        }
        let s = self.string_like(field, item, "a duration such as \"5m\"")?;
        s.parse::<Duration>()
            .map_err(|e| self.error(field, item.span(), e.to_string()))
            .ok()
    }

    pub(crate) fn string_like<'a>(&mut self, field: &str, item: &'a Item, what: &str) -> Option<&'a str> {
        match item.as_str() {
            Some(s) => Some(s),
            None => {
                self.error(field, item.span(), format!("expected {what}, found {}", describe(item)));
                None
            }
        }
    }

    pub(crate) fn one_of<T: Copy>(&mut self, field: &str, item: &Item, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(field, item)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = closest(s, &names).map(|n| format!("; did you mean \"{n}\"?")).unwrap_or_default();
        self.error(field, item.span(), format!("{s:?} is not one of {}{hint}", names.join(", ")));
        None
    }

    fn manifest(mut self, root: &toml_edit::Table) -> Parsed {
        self.check_keys("", root, TOP_KEYS);

        let mut name = None;
        let mut version = None;
        let mut description = None;
        let mut capabilities = Vec::new();
        let mut program = None;
        let mut exec_spans: Vec<(String, &str, Span)> = Vec::new();

        match root.get("cell") {
            None => self.error("cell", None, "missing required table [cell]"),
            Some(item) => {
                if let Some(cell) = self.table("cell", item) {
                    self.check_keys("cell", cell, CELL_KEYS);
                    // Missing keys are reported at the table's header.
                    let header = root.key("cell").and_then(|k| k.span()).or_else(|| item.span());
                    for key in ["name", "version", "description"] {
                        if cell.get(key).is_none() {
                            self.error(format!("cell.{key}"), header.clone(), "missing required key");
                        }
                    }
                    if let Some(v) = cell.get("name") {
                        if let Some(s) = self.string("cell.name", v) {
                            name = s
                                .parse::<CellName>()
                                .map_err(|e| self.error("cell.name", v.span(), e.to_string()))
                                .ok();
                        }
                    }
                    if let Some(v) = cell.get("version") {
                        if let Some(s) = self.string("cell.version", v) {
                            version = semver::Version::parse(s)
                                .map_err(|e| {
                                    self.error(
                                        "cell.version",
                                        v.span(),
                                        format!("{s:?} is not a semantic version (MAJOR.MINOR.PATCH): {e}"),
                                    )
                                })
                                .ok();
                        }
                    }
                    if let Some(v) = cell.get("description") {
                        if let Some(s) = self.string("cell.description", v) {
                            if s.trim().is_empty() {
                                self.error("cell.description", v.span(), "must not be empty");
                            }
                            description = Some(s.to_owned());
                        }
                    }
                    if let Some(v) = cell.get("capabilities") {
                        if let Some(list) = self.strings("cell.capabilities", v) {
                            capabilities = list.into_iter().map(|(s, _)| s.to_owned()).collect();
                        }
                    }
                    let exec = cell.get("exec");
                    let artifact = cell.get("artifact");
                    match (exec, artifact) {
                        (Some(_), Some(a)) => {
                            let span = cell.key("artifact").and_then(|k| k.span()).or_else(|| a.span());
                            self.error(
                                "cell.artifact",
                                span,
                                "\"exec\" and \"artifact\" are both set; set exactly one of them",
                            );
                        }
                        (None, None) => self.error("cell.exec", header, "missing: set exactly one of \"exec\" or \"artifact\""),
                        (Some(e), None) => {
                            if let Some(list) = self.strings("cell.exec", e) {
                                if list.is_empty() || list[0].0.is_empty() {
                                    self.error("cell.exec", e.span(), "must name a program to run");
                                } else {
                                    exec_spans = list
                                        .iter()
                                        .enumerate()
                                        .map(|(i, (s, sp))| (format!("cell.exec[{i}]"), *s, sp.clone()))
                                        .collect();
                                    program = Some(Program::Exec(list.into_iter().map(|(s, _)| s.to_owned()).collect()));
                                }
                            }
                        }
                        (None, Some(a)) => program = self.artifact(a).map(Program::Artifact),
                    }
                }
            }
        }

        let params = self.params(root.get("params"));
        let resources = self.resources(root.get("resources"));
        let (lifecycle, reach_span) = self.lifecycle(root.get("lifecycle"));
        let objectives = self.objectives(root.get("objectives"));
        let state = self.state(root.get("state"));
        let policy = self.policy(root.get("policy"));
        let channels = self.channels(root.get("provides"), root.get("uses"));
        let (isolation, isolation_spans) = self.isolation(root.get("isolation"));
        let (needs, needs_spans) = self.needs(root.get("needs"));
        let (children, child_manifest, child_count, child_index) = self.children(root.get("child"));

        // Every placeholder must be declared, wherever it is used, and none
        // may be a secret: command lines, paths and `reach` are readable by
        // anyone on the node (`ps`, `systemctl show`, `quantumctl inspect`).
        for (field, s, span) in exec_spans.iter().cloned().chain(isolation_spans).chain(reach_span) {
            for p in placeholders(s) {
                let span = span.clone().map(|sp| {
                    // Point at the placeholder itself when the string is a
                    // plain one-line literal (span starts at its quote).
                    let inner = sp.start + 1 + p.start;
                    if sp.end > inner {
                        inner..inner + (p.end - p.start)
                    } else {
                        sp
                    }
                });
                match params.get(p.name) {
                    None => self.error(
                        field.clone(),
                        span,
                        format!("placeholder {{{}}} is not declared under [params]", p.name),
                    ),
                    Some(spec) if spec.secret => self.error(
                        field.clone(),
                        span,
                        format!(
                            "{{{0}}} is a secret (params.{0}.secret): the cell reads it from the file $CREDENTIALS_DIRECTORY/{0}; on a command line, in a path or in reach anyone on the node could read it",
                            p.name
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }

        let manifest = match (name.clone(), version, description, program) {
            (Some(name), Some(version), Some(description), Some(program)) => Some(Manifest {
                name,
                version,
                description,
                capabilities,
                program,
                params,
                resources,
                lifecycle,
                objectives,
                state,
                policy,
                channels,
                isolation,
                needs: needs.clone(),
                children: children.clone(),
            }),
            _ => None,
        };
        Parsed {
            manifest,
            name,
            needs,
            children,
            resources,
            spans: Spans {
                needs: needs_spans,
                child_manifest,
                child_count,
                child_index,
            },
            diagnostics: self.diags,
        }
    }

    fn artifact(&mut self, item: &Item) -> Option<Artifact> {
        let table = self.table("cell.artifact", item)?;
        self.check_keys("cell.artifact", table, ARTIFACT_KEYS);
        let mut path = None;
        let mut blake3 = None;
        match table.get("path") {
            None => self.error("cell.artifact.path", item.span(), "missing required key"),
            Some(v) => {
                if let Some(s) = self.string("cell.artifact.path", v) {
                    if s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == "..") {
                        self.error(
                            "cell.artifact.path",
                            v.span(),
                            format!("{s:?} must be a relative path inside the bundle, without \"..\""),
                        );
                    } else {
                        path = Some(s.to_owned());
                    }
                }
            }
        }
        match table.get("blake3") {
            None => self.error("cell.artifact.blake3", item.span(), "missing required key"),
            Some(v) => {
                if let Some(s) = self.string("cell.artifact.blake3", v) {
                    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                        blake3 = Some(s.to_ascii_lowercase());
                    } else {
                        self.error(
                            "cell.artifact.blake3",
                            v.span(),
                            format!(
                                "expected 64 hex digits, found {} characters{}",
                                s.chars().count(),
                                if s.chars().all(|c| c.is_ascii_hexdigit()) {
                                    ""
                                } else {
                                    " with non-hex characters"
                                }
                            ),
                        );
                    }
                }
            }
        }
        Some(Artifact {
            path: path?,
            blake3: blake3?,
        })
    }

    fn params(&mut self, item: Option<&Item>) -> BTreeMap<String, ParamSpec> {
        let mut out = BTreeMap::new();
        let Some(item) = item else { return out };
        let Some(table) = self.table("params", item) else { return out };
        for (name, item) in table.iter() {
            let field = format!("params.{name}");
            if !is_param_name(name) {
                let span = table.key(name).and_then(|k| k.span());
                self.error(
                    &field,
                    span,
                    format!("{name:?} is not a valid parameter name: use a-z, 0-9, '_' and '-', starting with a letter"),
                );
                continue;
            }
            let Some(p) = self.table(&field, item) else { continue };
            self.check_keys(&field, p, PARAM_KEYS);
            let kind = match p.get("type") {
                None => {
                    self.error(
                        format!("{field}.type"),
                        table.key(name).and_then(|k| k.span()).or_else(|| item.span()),
                        "missing required key",
                    );
                    None
                }
                Some(t) => self.one_of(&format!("{field}.type"), t, &ParamType::ALL),
            };
            let default = p.get("default").and_then(|d| {
                let text = match (d.as_str(), d.as_integer()) {
                    (Some(s), _) => s.to_owned(),
                    (None, Some(i)) => i.to_string(),
                    _ => {
                        self.error(
                            format!("{field}.default"),
                            d.span(),
                            format!("expected a string or an integer, found {}", describe(d)),
                        );
                        return None;
                    }
                };
                if let Some(kind) = kind {
                    if let Err(e) = kind.check(&text) {
                        self.error(format!("{field}.default"), d.span(), e);
                    }
                }
                Some(text)
            });
            let description = p
                .get("description")
                .and_then(|d| self.string(&format!("{field}.description"), d))
                .unwrap_or("")
                .to_owned();
            let secret = match p.get("secret") {
                None => false,
                Some(v) => match v.as_bool() {
                    Some(b) => b,
                    None => {
                        self.error(
                            format!("{field}.secret"),
                            v.span(),
                            format!("expected true or false, found {}", describe(v)),
                        );
                        false
                    }
                },
            };
            if secret {
                if let (Some(k), Some(t)) = (kind, p.get("type")) {
                    if k != ParamType::String {
                        self.error(
                            format!("{field}.type"),
                            t.span(),
                            format!("a secret is a string (type = \"string\"), not {k}"),
                        );
                    }
                }
                if let Some(d) = p.get("default") {
                    self.error(
                        format!("{field}.default"),
                        d.span(),
                        "a secret has no default: quantumd makes a random one for each run that gives none (a default would be the same, readable secret for every run)",
                    );
                }
            }
            // Declared, even if badly: keep it so its placeholders are not
            // also reported as undeclared.
            out.insert(
                name.to_owned(),
                ParamSpec {
                    kind: kind.unwrap_or(ParamType::String),
                    default,
                    description,
                    secret,
                },
            );
        }
        out
    }

    fn resources(&mut self, item: Option<&Item>) -> Resources {
        let mut r = Resources::default();
        let Some(item) = item else { return r };
        let Some(t) = self.table("resources", item) else { return r };
        self.check_keys("resources", t, RESOURCE_KEYS);
        let explicit = |k: &str| t.get(k).is_some();
        let (cpu_min_set, cpu_max_set, mem_min_set, mem_max_set) = (
            explicit("cpu-min"),
            explicit("cpu-max"),
            explicit("memory-min"),
            explicit("memory-max"),
        );
        if let Some(v) = t.get("cpu-min").and_then(|v| self.cores("resources.cpu-min", v)) {
            r.cpu_min = v;
        }
        if let Some(v) = t.get("cpu-max").and_then(|v| self.cores("resources.cpu-max", v)) {
            r.cpu_max = v;
        }
        if let Some(v) = t.get("memory-min").and_then(|v| self.size("resources.memory-min", v)) {
            r.memory_min = v;
        }
        if let Some(v) = t.get("memory-max").and_then(|v| self.size("resources.memory-max", v)) {
            if v.bytes() == 0 {
                self.error(
                    "resources.memory-max",
                    t.get("memory-max").and_then(Item::span),
                    "must be greater than 0",
                );
            } else {
                r.memory_max = v;
            }
        }
        if let Some(v) = t.get("io-weight").and_then(|v| self.integer("resources.io-weight", v, 1..=10_000)) {
            r.io_weight = v as u16;
        }
        if let Some(v) = t
            .get("tasks-max")
            .and_then(|v| self.integer("resources.tasks-max", v, 1..=4_194_304))
        {
            r.tasks_max = v as u32;
        }
        if let Some(v) = t.get("gpus").and_then(|v| self.integer("resources.gpus", v, 0..=64)) {
            r.gpus = v as u32;
        }
        let default_note = |set: bool| if set { "" } else { " (the default)" };
        if r.cpu_min > r.cpu_max {
            let (field, span) = if cpu_min_set {
                ("resources.cpu-min", t.get("cpu-min"))
            } else {
                ("resources.cpu-max", t.get("cpu-max"))
            };
            self.error(
                field,
                span.and_then(Item::span),
                format!(
                    "cpu-min {}{} is above cpu-max {}{}",
                    r.cpu_min,
                    default_note(cpu_min_set),
                    r.cpu_max,
                    default_note(cpu_max_set)
                ),
            );
        }
        if r.memory_min > r.memory_max {
            let (field, span) = if mem_min_set {
                ("resources.memory-min", t.get("memory-min"))
            } else {
                ("resources.memory-max", t.get("memory-max"))
            };
            self.error(
                field,
                span.and_then(Item::span),
                format!(
                    "memory-min {}{} is above memory-max {}{}",
                    r.memory_min,
                    default_note(mem_min_set),
                    r.memory_max,
                    default_note(mem_max_set)
                ),
            );
        }
        r
    }

    /// The `[lifecycle]` table, and `reach` with its span for the
    /// placeholder check.
    fn lifecycle<'a>(&mut self, item: Option<&'a Item>) -> (Lifecycle, Option<(String, &'a str, Span)>) {
        let mut l = Lifecycle::default();
        let Some(item) = item else { return (l, None) };
        let Some(t) = self.table("lifecycle", item) else { return (l, None) };
        self.check_keys("lifecycle", t, LIFECYCLE_KEYS);
        if let Some(v) = t.get("kind").and_then(|v| self.one_of("lifecycle.kind", v, &Kind::ALL)) {
            l.kind = v;
        }
        let mut reach_span = None;
        if let Some(item) = t.get("reach") {
            if let Some(s) = self.string("lifecycle.reach", item) {
                if l.kind == Kind::Task {
                    self.error(
                        "lifecycle.reach",
                        item.span(),
                        "only a service can be reached: a task (kind = \"task\") ends when its work is done",
                    );
                } else if s.trim().is_empty() {
                    self.error("lifecycle.reach", item.span(), "must not be empty");
                }
                l.reach = Some(s.to_owned());
                reach_span = Some(("lifecycle.reach".to_owned(), s, item.span()));
            }
        }
        if let Some(v) = t.get("idle-timeout").and_then(|v| self.duration("lifecycle.idle-timeout", v)) {
            l.idle_timeout = v;
        }
        if let Some(v) = t.get("restart").and_then(|v| self.one_of("lifecycle.restart", v, &Restart::ALL)) {
            l.restart = v;
        }
        if let Some(v) = t
            .get("max-restarts")
            .and_then(|v| self.integer("lifecycle.max-restarts", v, 0..=10_000))
        {
            l.max_restarts = v as u32;
        }
        if let Some(v) = t.get("restart-window").and_then(|v| self.duration("lifecycle.restart-window", v)) {
            if v.is_zero() {
                self.error(
                    "lifecycle.restart-window",
                    t.get("restart-window").and_then(Item::span),
                    "must be longer than 0",
                );
            } else {
                l.restart_window = v;
            }
        }
        (l, reach_span)
    }

    fn objectives(&mut self, item: Option<&Item>) -> Objectives {
        let mut o = Objectives::default();
        let Some(item) = item else { return o };
        let Some(t) = self.table("objectives", item) else { return o };
        self.check_keys("objectives", t, OBJECTIVES_KEYS);
        if let Some(v) = t.get("runq-latency-p99") {
            if let Some(s) = self.string_like("objectives.runq-latency-p99", v, "a latency such as \"5ms\"") {
                o.runq_latency_p99 = s
                    .parse::<Latency>()
                    .map_err(|e| self.error("objectives.runq-latency-p99", v.span(), e.to_string()))
                    .ok();
            }
        }
        o
    }

    fn state(&mut self, item: Option<&Item>) -> State {
        let mut state = State::default();
        let Some(item) = item else { return state };
        let Some(t) = self.table("state", item) else { return state };
        self.check_keys("state", t, STATE_KEYS);
        if let Some(v) = t.get("subvolume") {
            match v.as_bool() {
                Some(b) => state.subvolume = b,
                None => self.error(
                    "state.subvolume",
                    v.span(),
                    format!("expected true or false, found {}", describe(v)),
                ),
            }
        }
        state
    }

    fn channels(&mut self, provides: Option<&Item>, uses: Option<&Item>) -> Channels {
        let mut out = Channels::default();
        if let Some(t) = provides.and_then(|item| self.table("provides", item)) {
            self.check_keys("provides", t, PROVIDES_KEYS);
            for (i, (s, span)) in t
                .get("channels")
                .and_then(|v| self.strings("provides.channels", v))
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let field = format!("provides.channels[{i}]");
                if !is_channel_name(s) {
                    self.error(
                        field,
                        span,
                        format!("invalid channel name {s:?}: lower-case letters, digits and '-', starting with a letter, at most 63 (others reach it as CELL/{s})"),
                    );
                } else if out.provides.iter().any(|p| p == s) {
                    self.error(field, span, format!("channel {s:?} is listed twice"));
                } else {
                    out.provides.push(s.to_owned());
                }
            }
        }
        if let Some(t) = uses.and_then(|item| self.table("uses", item)) {
            self.check_keys("uses", t, USES_KEYS);
            for (i, (s, span)) in t
                .get("channels")
                .and_then(|v| self.strings("uses.channels", v))
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let field = format!("uses.channels[{i}]");
                match s.split_once('/') {
                    Some((cell, channel)) if is_channel_name(cell) && is_channel_name(channel) => {
                        if out.uses.iter().any(|u| u == s) {
                            self.error(field, span, format!("channel {s:?} is listed twice"));
                        } else {
                            out.uses.push(s.to_owned());
                        }
                    }
                    _ => self.error(
                        field,
                        span,
                        format!("expected CELL/CHANNEL (the cell that provides it and the channel's name, e.g. \"echo-server/echo\"), found {s:?}"),
                    ),
                }
            }
            if let Some(n) = t.get("rate").and_then(|v| self.integer("uses.rate", v, 1..=100_000)) {
                out.rate = n as u32;
            }
        }
        out
    }

    fn policy(&mut self, item: Option<&Item>) -> Policy {
        let mut policy = Policy::default();
        let Some(item) = item else { return policy };
        let Some(t) = self.table("policy", item) else { return policy };
        self.check_keys("policy", t, POLICY_KEYS);
        if let Some(v) = t
            .get("on-anomaly")
            .and_then(|v| self.one_of("policy.on-anomaly", v, &OnAnomaly::ALL))
        {
            policy.on_anomaly = v;
        }
        if let Some(v) = t.get("learning") {
            if let Some(d) = self.duration("policy.learning", v) {
                if d.is_zero() {
                    self.error(
                        "policy.learning",
                        v.span(),
                        "must be longer than 0: a baseline learned from nothing makes every program an anomaly (on-anomaly = \"ignore\" turns detection off)",
                    );
                } else {
                    policy.learning = d;
                }
            }
        }
        policy
    }

    /// Also returns the path strings with their spans, for the placeholder check.
    fn isolation<'a>(&mut self, item: Option<&'a Item>) -> (Isolation, Vec<(String, &'a str, Span)>) {
        let mut iso = Isolation::default();
        let mut paths = Vec::new();
        let Some(item) = item else { return (iso, paths) };
        let Some(t) = self.table("isolation", item) else {
            return (iso, paths);
        };
        self.check_keys("isolation", t, ISOLATION_KEYS);
        if let Some(v) = t.get("network").and_then(|v| self.one_of("isolation.network", v, &Network::ALL)) {
            iso.network = v;
        }
        if let Some(item) = t.get("network-allow") {
            if let Some(list) = self.strings("isolation.network-allow", item) {
                for (i, (s, span)) in list.into_iter().enumerate() {
                    match s.parse::<NetRule>() {
                        Ok(rule) => iso.network_allow.push(rule),
                        Err(e) => self.error(format!("isolation.network-allow[{i}]"), span, e),
                    }
                }
            }
            // Under "none" or "loopback" there is nothing the list could let
            // through; saying so beats silently ignoring it.
            if iso.network != Network::Host {
                let span = t.key("network-allow").and_then(|k| k.span()).or_else(|| item.span());
                self.error(
                    "isolation.network-allow",
                    span,
                    "a list of destinations needs network = \"host\" (under \"none\" or \"loopback\" the cell reaches none of them)",
                );
            }
        }
        if let Some(v) = t.get("user").and_then(|v| self.one_of("isolation.user", v, &UserMode::ALL)) {
            iso.user = v;
        }
        for (key, dest) in [("readable", &mut iso.readable), ("writable", &mut iso.writable)] {
            let field = format!("isolation.{key}");
            let Some(list) = t.get(key).and_then(|v| self.strings(&field, v)) else {
                continue;
            };
            for (i, (s, span)) in list.into_iter().enumerate() {
                let field = format!("{field}[{i}]");
                if !(s.starts_with('/') || s.starts_with('{')) {
                    self.error(
                        &field,
                        span.clone(),
                        format!("{s:?} must be an absolute path or start with a placeholder"),
                    );
                }
                paths.push((field, s, span));
                dest.push(s.to_owned());
            }
        }
        (iso, paths)
    }

    fn needs(&mut self, item: Option<&Item>) -> (Vec<CellName>, Vec<Span>) {
        let (mut names, mut spans) = (Vec::new(), Vec::new());
        let Some(item) = item else { return (names, spans) };
        let Some(t) = self.table("needs", item) else {
            return (names, spans);
        };
        self.check_keys("needs", t, NEEDS_KEYS);
        let Some(list) = t.get("cells").and_then(|v| self.strings("needs.cells", v)) else {
            return (names, spans);
        };
        for (i, (s, span)) in list.into_iter().enumerate() {
            match s.parse::<CellName>() {
                Ok(n) => {
                    names.push(n);
                    spans.push(span);
                }
                Err(e) => self.error(format!("needs.cells[{i}]"), span, e.to_string()),
            }
        }
        (names, spans)
    }

    fn children(&mut self, item: Option<&Item>) -> (Vec<ChildRef>, Vec<Span>, Vec<Span>, Vec<usize>) {
        let (mut out, mut manifest_spans, mut count_spans, mut index) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let Some(item) = item else {
            return (out, manifest_spans, count_spans, index);
        };
        let Some(array) = item.as_array_of_tables() else {
            self.error(
                "child",
                item.span(),
                format!("expected [[child]] entries (an array of tables), found {}", describe(item)),
            );
            return (out, manifest_spans, count_spans, index);
        };
        let mut seen = BTreeMap::new();
        for (i, t) in array.iter().enumerate() {
            let prefix = format!("child[{i}]");
            self.check_keys(&prefix, t, CHILD_KEYS);
            let header = t.span();
            let name = match t.get("name") {
                None => {
                    self.error(format!("{prefix}.name"), header.clone(), "missing required key");
                    None
                }
                Some(v) => self.string(&format!("{prefix}.name"), v).and_then(|s| {
                    let n = s
                        .parse::<CellName>()
                        .map_err(|e| self.error(format!("{prefix}.name"), v.span(), e.to_string()))
                        .ok()?;
                    if let Some(first) = seen.insert(s.to_owned(), i) {
                        self.error(
                            format!("{prefix}.name"),
                            v.span(),
                            format!("{s:?} is already the name of child[{first}]"),
                        );
                    }
                    Some(n)
                }),
            };
            let manifest = match t.get("manifest") {
                None => {
                    self.error(format!("{prefix}.manifest"), header.clone(), "missing required key");
                    None
                }
                Some(v) => self.string(&format!("{prefix}.manifest"), v).and_then(|s| {
                    if s.is_empty() || s.starts_with('/') {
                        self.error(
                            format!("{prefix}.manifest"),
                            v.span(),
                            format!("{s:?} must be a path relative to this manifest"),
                        );
                        None
                    } else {
                        Some((s.to_owned(), v.span()))
                    }
                }),
            };
            let count = match t.get("count") {
                None => Some((1, header.clone())),
                Some(v) => self.integer(&format!("{prefix}.count"), v, 1..=1024).map(|n| (n as u32, v.span())),
            };
            if let (Some(name), Some((manifest, mspan)), Some((count, cspan))) = (name, manifest, count) {
                out.push(ChildRef { name, manifest, count });
                manifest_spans.push(mspan);
                count_spans.push(cspan);
                index.push(i);
            }
        }
        (out, manifest_spans, count_spans, index)
    }
}
