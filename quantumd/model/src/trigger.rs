//! `trigger.toml` -> [`Trigger`]: STEPPPS SCRIPT, a cell run when something
//! happens rather than when someone asks.
//!
//! ```toml
//! [trigger]
//! name = "nightly-disk-report"
//! description = "What fills /var, every night"
//! cell = "disk-usage"              # a catalog name, or the absolute path of a cell.toml
//! on-calendar = "*-*-* 03:00"      # exactly one on-* key
//!
//! [params]
//! path = "/var"
//! ```
//!
//! The four kinds ([`On`]): `on-calendar` and `on-path-changed` become
//! systemd timer and path units (systemd has them, and it watches paths
//! quantumd may not read); `on-event` (another cell's end) and
//! `on-threshold` (a STEPPPS figure past a value for a while) are watched
//! by quantumd's event loop, where those figures are. Problems are reported
//! like a manifest's, `FILE:LINE:COL: error: FIELD: MESSAGE`, all at once.

use std::collections::BTreeMap;
use std::fmt;

use toml_edit::{ImDocument, Item, TableLike};

use crate::diagnostic::Diagnostic;
use crate::manifest::CellName;
use crate::parse::{describe, syntax_error, Walker};
use crate::units::{ByteSize, Duration};

const TOP_KEYS: &[&str] = &["trigger", "params"];
const TRIGGER_KEYS: &[&str] = &[
    "name",
    "description",
    "cell",
    "on-calendar",
    "on-path-changed",
    "on-event",
    "on-threshold",
];
const ON_KEYS: &[&str] = &["on-calendar", "on-path-changed", "on-event", "on-threshold"];
const EVENT_KEYS: &[&str] = &["cell", "state"];
const THRESHOLD_KEYS: &[&str] = &["figure", "cell", "above", "below", "for"];

/// A validated trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// Its name; the rules of a cell's name (it names systemd units).
    pub name: CellName,
    pub description: String,
    /// The cell it runs: a catalog name or an absolute manifest path.
    pub cell: String,
    /// The run's parameters, as `quantumctl run CELL name=value` gives them.
    pub params: BTreeMap<String, String>,
    pub on: On,
}

/// When a trigger fires.
#[derive(Debug, Clone, PartialEq)]
pub enum On {
    /// A systemd calendar expression (`systemd.time(7)`): "daily",
    /// "Mon *-*-* 09:00", "*:0/15". systemd checks it when the timer is made.
    Calendar(String),
    /// A file or directory: fires when it is written and closed, created,
    /// removed or renamed, or (a directory) when an entry in it is.
    PathChanged(String),
    /// Another cell's instance reached `state`.
    Event {
        cell: CellName,
        state: EventState,
    },
    Threshold(Threshold),
}

/// Cell events a trigger can follow: what `CellStateChanged` says, and how
/// an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// Started (a restart too).
    Started,
    /// Ended successfully.
    Exited,
    /// Ended otherwise: a status, a signal, the OOM killer, a failed start.
    Failed,
    /// Killed by the OOM killer (its memory-max reached); also `failed`.
    OutOfMemory,
    /// Refused for a while after ending too often.
    Blacklisted,
}

impl EventState {
    pub const ALL: [(&'static str, EventState); 5] = [
        ("started", EventState::Started),
        ("exited", EventState::Exited),
        ("failed", EventState::Failed),
        ("out-of-memory", EventState::OutOfMemory),
        ("blacklisted", EventState::Blacklisted),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, s)| *s == self).map_or("?", |(n, _)| n)
    }
}

/// A STEPPPS figure past a bound for at least `hold`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub figure: Figure,
    /// The cell whose instances are watched (any one past the bound fires);
    /// `None` for a figure of the node.
    pub cell: Option<CellName>,
    pub bound: Bound,
    /// How long the figure must stay past the bound ("0": the first
    /// sample past it fires).
    pub hold: Duration,
}

impl Threshold {
    /// Whether `value` is past the bound.
    pub fn crossed(&self, value: f64) -> bool {
        match self.bound {
            Bound::Above(v) => value > v,
            Bound::Below(v) => value < v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Above(f64),
    Below(f64),
}

/// The figures a threshold can watch. Pressures are the kernel's PSI
/// "some" average over 10 s, in percent (of the node, or of the cell's
/// cgroup); sizes are bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    MemoryPressure,
    CpuPressure,
    IoPressure,
    /// Node only: memory available for new work.
    MemoryAvailable,
    /// Node only: percent of all CPUs' time busy.
    CpuBusy,
    /// Node only: the 1-minute load average.
    Load,
    /// Cell only: memory in use (memory.current).
    Memory,
    /// Cell only: CPU cores in use.
    Cpu,
}

impl Figure {
    pub const ALL: [(&'static str, Figure); 8] = [
        ("memory-pressure", Figure::MemoryPressure),
        ("cpu-pressure", Figure::CpuPressure),
        ("io-pressure", Figure::IoPressure),
        ("memory-available", Figure::MemoryAvailable),
        ("cpu-busy", Figure::CpuBusy),
        ("load", Figure::Load),
        ("memory", Figure::Memory),
        ("cpu", Figure::Cpu),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, f)| *f == self).map_or("?", |(n, _)| n)
    }

    /// Whether the figure is a cell's (`cell` required) or the node's
    /// (`cell` refused); pressures are both.
    fn scope(self) -> Scope {
        match self {
            Figure::MemoryPressure | Figure::CpuPressure | Figure::IoPressure => Scope::Both,
            Figure::MemoryAvailable | Figure::CpuBusy | Figure::Load => Scope::Node,
            Figure::Memory | Figure::Cpu => Scope::Cell,
        }
    }

    /// Whether its bound is a size ("512M") rather than a number.
    fn is_size(self) -> bool {
        matches!(self, Figure::Memory | Figure::MemoryAvailable)
    }
}

enum Scope {
    Node,
    Cell,
    Both,
}

impl fmt::Display for On {
    /// One line for `quantumctl trigger list`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            On::Calendar(spec) => write!(f, "on-calendar {spec}"),
            On::PathChanged(path) => write!(f, "on-path-changed {path}"),
            On::Event { cell, state } => write!(f, "on-event {} {}", cell.as_str(), state.as_str()),
            On::Threshold(t) => {
                let value = |v: f64| {
                    if t.figure.is_size() {
                        ByteSize(v as u64).to_string()
                    } else {
                        format!("{v}")
                    }
                };
                let of = t.cell.as_ref().map(|c| format!(" of {}", c.as_str())).unwrap_or_default();
                let (word, v) = match t.bound {
                    Bound::Above(v) => ("above", v),
                    Bound::Below(v) => ("below", v),
                };
                write!(
                    f,
                    "on-threshold {}{of} {word} {} for {}s",
                    t.figure.as_str(),
                    value(v),
                    t.hold.secs()
                )
            }
        }
    }
}

/// Parses and validates one `trigger.toml`, reporting every problem.
pub fn parse_trigger(src: &str) -> Result<Trigger, Vec<Diagnostic>> {
    let mut w = Walker { diags: Vec::new() };
    let doc = match ImDocument::parse(src) {
        Ok(doc) => doc,
        Err(e) => return Err(vec![syntax_error(&e)]),
    };
    let root = doc.as_table();
    w.check_keys("", root, TOP_KEYS);
    let trigger = match root.get("trigger") {
        None => {
            w.error("trigger", None, "missing required table [trigger]");
            None
        }
        Some(item) => w.table("trigger", item).and_then(|t| {
            let header = root.key("trigger").and_then(|k| k.span()).or_else(|| item.span());
            trigger_table(&mut w, t, header)
        }),
    };
    let params = params(&mut w, root.get("params"));
    match trigger {
        Some((name, description, cell, on)) if w.diags.is_empty() => {
            if let On::Event { cell: watched, .. } = &on {
                // A cell that fires on its own end runs for ever.
                if watched.as_str() == cell {
                    return Err(vec![Diagnostic::new(
                        "trigger.on-event.cell",
                        None,
                        format!("a trigger cannot run {cell} on {cell}'s own events: each run would fire the next"),
                    )]);
                }
            }
            Ok(Trigger {
                name,
                description,
                cell,
                params,
                on,
            })
        }
        _ => Err(w.diags),
    }
}

type Header = Option<std::ops::Range<usize>>;

fn trigger_table(w: &mut Walker, t: &dyn TableLike, header: Header) -> Option<(CellName, String, String, On)> {
    w.check_keys("trigger", t, TRIGGER_KEYS);
    for key in ["name", "cell"] {
        if t.get(key).is_none() {
            w.error(format!("trigger.{key}"), header.clone(), "missing required key");
        }
    }
    let name = t.get("name").and_then(|v| {
        let s = w.string("trigger.name", v)?;
        s.parse::<CellName>()
            .map_err(|e| w.error("trigger.name", v.span(), e.to_string()))
            .ok()
    });
    let description = t
        .get("description")
        .and_then(|v| w.string("trigger.description", v))
        .unwrap_or_default()
        .to_owned();
    let cell = t.get("cell").and_then(|v| {
        let s = w.string("trigger.cell", v)?;
        let ok = if s.starts_with('/') {
            s.ends_with(".toml")
        } else {
            s.parse::<CellName>().is_ok()
        };
        if !ok {
            w.error(
                "trigger.cell",
                v.span(),
                format!("{s:?} is neither a catalog cell's name nor the absolute path of a cell.toml"),
            );
            return None;
        }
        Some(s.to_owned())
    });
    let given: Vec<&str> = ON_KEYS.iter().copied().filter(|k| t.get(k).is_some()).collect();
    let on = match given.as_slice() {
        [] => {
            w.error(
                "trigger",
                header,
                format!("missing when it fires: give one of {}", ON_KEYS.join(", ")),
            );
            None
        }
        [key] => on(w, key, t.get(key)?),
        [_, second, ..] => {
            let span = t.key(second).and_then(|k| k.span());
            w.error(
                format!("trigger.{second}"),
                span,
                format!("a trigger fires on one thing: give only one of {}", given.join(", ")),
            );
            None
        }
    };
    Some((name?, description, cell?, on?))
}

fn on(w: &mut Walker, key: &str, item: &Item) -> Option<On> {
    let field = format!("trigger.{key}");
    match key {
        "on-calendar" => {
            let s = w.string(&field, item)?;
            if s.trim().is_empty() || s.contains(['\n', '\r']) {
                w.error(
                    &field,
                    item.span(),
                    "expected a calendar expression such as \"daily\" or \"*-*-* 03:00\" (systemd.time(7))",
                );
                return None;
            }
            Some(On::Calendar(s.trim().to_owned()))
        }
        "on-path-changed" => {
            let s = w.string(&field, item)?;
            let normal = s.starts_with('/') && !s.split('/').any(|c| c == ".." || c == ".") && !s.contains(['\n', '\r']);
            if !normal || s == "/" {
                w.error(
                    &field,
                    item.span(),
                    format!("{s:?} is not an absolute path without . or .. (and not / itself)"),
                );
                return None;
            }
            Some(On::PathChanged(s.trim_end_matches('/').to_owned()))
        }
        "on-event" => {
            let t = w.table(&field, item)?;
            w.check_keys(&field, t, EVENT_KEYS);
            let cell = required(w, &field, t, item, "cell").and_then(|v| {
                let s = w.string(&format!("{field}.cell"), v)?;
                s.parse::<CellName>()
                    .map_err(|e| w.error(format!("{field}.cell"), v.span(), e.to_string()))
                    .ok()
            });
            let state = required(w, &field, t, item, "state").and_then(|v| w.one_of(&format!("{field}.state"), v, &EventState::ALL));
            Some(On::Event {
                cell: cell?,
                state: state?,
            })
        }
        "on-threshold" => {
            let t = w.table(&field, item)?;
            w.check_keys(&field, t, THRESHOLD_KEYS);
            let figure = required(w, &field, t, item, "figure").and_then(|v| w.one_of(&format!("{field}.figure"), v, &Figure::ALL));
            let cell = match t.get("cell") {
                None => Some(None),
                Some(v) => w.string(&format!("{field}.cell"), v).and_then(|s| {
                    s.parse::<CellName>()
                        .map(Some)
                        .map_err(|e| w.error(format!("{field}.cell"), v.span(), e.to_string()))
                        .ok()
                }),
            };
            if let (Some(f), Some(c)) = (figure, &cell) {
                let span = t.get("figure").and_then(Item::span);
                match (f.scope(), c) {
                    (Scope::Node, Some(_)) => w.error(
                        format!("{field}.cell"),
                        t.get("cell").and_then(Item::span),
                        format!("{} is a figure of the node, not of a cell: remove cell", f.as_str()),
                    ),
                    (Scope::Cell, None) => w.error(
                        format!("{field}.figure"),
                        span,
                        format!("{} is a figure of a cell: say which with cell = \"NAME\"", f.as_str()),
                    ),
                    _ => {}
                }
            }
            let bound = match (t.get("above"), t.get("below")) {
                (Some(a), None) => figure.and_then(|f| value(w, &format!("{field}.above"), a, f)).map(Bound::Above),
                (None, Some(b)) => figure.and_then(|f| value(w, &format!("{field}.below"), b, f)).map(Bound::Below),
                (None, None) => {
                    w.error(&field, item.span(), "missing the bound: give above = VALUE or below = VALUE");
                    None
                }
                (Some(_), Some(b)) => {
                    w.error(format!("{field}.below"), b.span(), "give above or below, not both");
                    None
                }
            };
            let hold = match t.get("for") {
                None => Some(Duration(0)),
                Some(v) => w.duration(&format!("{field}.for"), v),
            };
            Some(On::Threshold(Threshold {
                figure: figure?,
                cell: cell?,
                bound: bound?,
                hold: hold?,
            }))
        }
        _ => None,
    }
}

fn required<'a>(w: &mut Walker, field: &str, t: &'a dyn TableLike, item: &Item, key: &str) -> Option<&'a Item> {
    let v = t.get(key);
    if v.is_none() {
        w.error(format!("{field}.{key}"), item.span(), "missing required key");
    }
    v
}

/// A bound: a size for memory figures, else a non-negative number.
fn value(w: &mut Walker, field: &str, item: &Item, figure: Figure) -> Option<f64> {
    if figure.is_size() {
        return w.size(field, item).map(|b| b.0 as f64);
    }
    let v = match (item.as_float(), item.as_integer()) {
        (Some(f), _) => f,
        (None, Some(i)) => i as f64,
        _ => {
            w.error(field, item.span(), format!("expected a number, found {}", describe(item)));
            return None;
        }
    };
    let max = match figure {
        Figure::MemoryPressure | Figure::CpuPressure | Figure::IoPressure | Figure::CpuBusy => 100.0,
        _ => f64::MAX,
    };
    if !(0.0..=max).contains(&v) || !v.is_finite() {
        w.error(field, item.span(), format!("{v} is out of range 0..={max} for {}", figure.as_str()));
        return None;
    }
    Some(v)
}

/// `[params]`: the run's parameters; strings, integers or booleans.
fn params(w: &mut Walker, item: Option<&Item>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(t) = item.and_then(|i| w.table("params", i)) else {
        return out;
    };
    for (name, v) in t.iter() {
        let field = format!("params.{name}");
        let text = match (v.as_str(), v.as_integer(), v.as_bool()) {
            (Some(s), _, _) => s.to_owned(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(b)) => b.to_string(),
            _ => {
                w.error(
                    field,
                    v.span(),
                    format!("expected a string, an integer or a boolean, found {}", describe(v)),
                );
                continue;
            }
        };
        out.insert(name.to_owned(), text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::{Located, SourceMap};

    fn errors(src: &str) -> Vec<String> {
        let map = SourceMap::new(src);
        parse_trigger(src)
            .expect_err("the trigger must be refused")
            .iter()
            .map(|d| Located::resolve("t.toml", src, &map, d).to_string())
            .collect()
    }

    #[test]
    fn a_calendar_trigger_with_params_is_read_whole() {
        let t = parse_trigger(
            "[trigger]\nname = \"nightly\"\ndescription = \"d\"\ncell = \"disk-usage\"\non-calendar = \"*-*-* 03:00\"\n\n[params]\npath = \"/var\"\ndepth = 2\n",
        )
        .expect("valid");
        assert_eq!(t.name.as_str(), "nightly");
        assert_eq!(t.cell, "disk-usage");
        assert_eq!(t.on, On::Calendar("*-*-* 03:00".into()));
        assert_eq!(t.params.get("path").map(String::as_str), Some("/var"));
        assert_eq!(t.params.get("depth").map(String::as_str), Some("2"));
    }

    #[test]
    fn thresholds_take_sizes_for_memory_and_numbers_for_pressure() {
        let t = parse_trigger(
            "[trigger]\nname = \"big\"\ncell = \"process-hog\"\non-threshold = { figure = \"memory\", cell = \"web-server\", above = \"64M\", for = \"5s\" }\n",
        )
        .expect("valid");
        let On::Threshold(th) = t.on else { panic!("{:?}", t.on) };
        assert_eq!(th.bound, Bound::Above(64.0 * 1024.0 * 1024.0));
        assert_eq!(th.hold, Duration(5));
        assert!(th.crossed(65.0 * 1024.0 * 1024.0) && !th.crossed(1.0));
        let t =
            parse_trigger("[trigger]\nname = \"p\"\ncell = \"process-hog\"\non-threshold = { figure = \"memory-pressure\", above = 20 }\n")
                .expect("valid");
        assert_eq!(t.on.to_string(), "on-threshold memory-pressure above 20 for 0s");
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let src =
            "[trigger]\nname = \"Bad Name\"\ncell = \"disk-usage\"\non-calendar = \"daily\"\non-path-changed = \"/srv\"\ncolour = 1\n";
        let e = errors(src);
        assert!(e.iter().any(|l| l.starts_with("t.toml:2:8: error: trigger.name:")), "{e:?}");
        assert!(
            e.iter()
                .any(|l| l.starts_with("t.toml:5:1: error: trigger.on-path-changed: a trigger fires on one thing")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|l| l.starts_with("t.toml:6:1: error: trigger.colour: unknown key")),
            "{e:?}"
        );
    }

    #[test]
    fn a_trigger_without_when_or_what_is_refused() {
        let e = errors("[trigger]\nname = \"x\"\n");
        assert!(e.iter().any(|l| l.contains("trigger.cell: missing required key")), "{e:?}");
        assert!(e.iter().any(|l| l.contains("missing when it fires")), "{e:?}");
    }

    #[test]
    fn scope_bound_and_path_mistakes_are_named() {
        let e = errors("[trigger]\nname = \"x\"\ncell = \"a\"\non-threshold = { figure = \"memory\", above = \"lots\" }\n");
        assert!(e.iter().any(|l| l.contains("figure of a cell")), "{e:?}");
        assert!(
            e.iter()
                .any(|l| l.contains("trigger.on-threshold.above") && l.contains("not a size")),
            "{e:?}"
        );
        let e = errors("[trigger]\nname = \"x\"\ncell = \"a\"\non-threshold = { figure = \"load\", cell = \"b\", below = 1 }\n");
        assert!(e.iter().any(|l| l.contains("figure of the node")), "{e:?}");
        let e = errors("[trigger]\nname = \"x\"\ncell = \"a\"\non-path-changed = \"srv/../in\"\n");
        assert!(e.iter().any(|l| l.contains("not an absolute path")), "{e:?}");
        let e = errors("[trigger]\nname = \"x\"\ncell = \"a\"\non-event = { cell = \"b\", state = \"oom\" }\n");
        assert!(
            e.iter()
                .any(|l| l.contains("trigger.on-event.state") && l.contains("out-of-memory")),
            "{e:?}"
        );
    }

    #[test]
    fn a_cell_cannot_fire_on_its_own_events() {
        let e = errors("[trigger]\nname = \"x\"\ncell = \"a\"\non-event = { cell = \"a\", state = \"failed\" }\n");
        assert!(e.iter().any(|l| l.contains("own events")), "{e:?}");
    }
}
