//! STEPPPS SCRIPT: the triggers quantumd keeps, and when each fires.
//!
//! A trigger (`trigger.toml`, parsed by `quantum_model::trigger`) runs a
//! cell when something happens. Two places define them:
//!
//! - `/etc/quantumos/triggers/*.toml`, the admin's, read at start and never
//!   changed by quantumd (`trigger remove` refuses them);
//! - quantumd's state directory (`triggers/NAME.toml`), written by
//!   `quantumctl trigger add` and removed by `trigger remove`, so that they
//!   outlive restarts and reboots.
//!
//! `on-calendar` and `on-path-changed` are armed as systemd timer and path
//! units (the runtime does that: `quantum-trigger-NAME.timer|path`, which
//! start `quantum-trigger-NAME.service`, a `/bin/true` that does nothing
//! but tell quantumd through its job's `JobRemoved` that the trigger
//! elapsed). `on-event` and `on-threshold` are decided here, from the
//! cells' state changes and from each second's STEPPPS figures. Either way
//! the cell is run by quantumd as any run is (manifest checks, identity,
//! trail), with the actor `trigger:NAME`.
//!
//! This module holds no I/O but the definition files; the runtime and the
//! run are the caller's (`cells.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quantum_model::trigger::{EventState, Figure, On, Threshold};
use quantum_model::{parse_trigger, Located, SourceMap, Trigger};
use quantum_steppps::figures::Figures;

/// The first line of a definition quantumd wrote: who added it.
const ADDED_BY: &str = "# quantumd: added by ";

/// A trigger never fires twice within this: a burst of events (many
/// instances of one cell failing at once) runs its cell once.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("{0}")]
    Invalid(String),
    #[error("there is already a trigger named {name} (from {origin}); remove it first")]
    Exists { name: String, origin: String },
    #[error("no trigger is named {0}")]
    NotFound(String),
    #[error("trigger {name} is the admin's ({origin}): remove that file instead")]
    Admin { name: String, origin: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// One trigger and what it has done.
#[derive(Debug, Clone)]
pub struct Armed {
    pub trigger: Trigger,
    /// The file it was read from.
    pub origin: PathBuf,
    /// Whether it is the admin's (under /etc).
    pub admin: bool,
    /// Who added it (`uid:N`), or "admin".
    pub added_by: String,
    pub fired: u64,
    /// When it last fired, µs since the epoch (0: never).
    pub last_fired_usec: u64,
    /// The instance its last firing started, or why none started.
    pub last_result: String,
    /// Since when a threshold's figure has been past its bound.
    crossing_since: Option<Instant>,
    /// A threshold fired and waits for its figure to come back before it
    /// may fire again (one run per crossing, not one per second).
    latched: bool,
    last_fire: Option<Instant>,
}

impl Armed {
    fn new(trigger: Trigger, origin: PathBuf, admin: bool, added_by: String) -> Armed {
        Armed {
            trigger,
            origin,
            admin,
            added_by,
            fired: 0,
            last_fired_usec: 0,
            last_result: String::new(),
            crossing_since: None,
            latched: false,
            last_fire: None,
        }
    }

    /// Whether systemd arms it (a timer or path unit) rather than quantumd.
    pub fn by_systemd(&self) -> bool {
        matches!(self.trigger.on, On::Calendar(_) | On::PathChanged(_))
    }

    /// Counts a firing unless it came too soon after the last one.
    fn fire(&mut self, now: Instant) -> bool {
        if self.last_fire.is_some_and(|t| now.duration_since(t) < MIN_INTERVAL) {
            return false;
        }
        self.last_fire = Some(now);
        self.fired += 1;
        self.last_fired_usec = crate::cells::now_usec();
        true
    }
}

/// Every trigger, by name.
pub struct Triggers {
    state_dir: PathBuf,
    armed: BTreeMap<String, Armed>,
}

/// Validates `src` (named `path` in diagnostics): the diagnostics, one per
/// line, in the manifest's `PATH:LINE:COL: error: FIELD: MESSAGE` form.
pub fn validate(path: &str, src: &str) -> Result<Trigger, String> {
    parse_trigger(src).map_err(|diags| {
        let map = SourceMap::new(src);
        diags
            .iter()
            .map(|d| Located::resolve(path, src, &map, d).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

impl Triggers {
    /// Reads both directories. A definition that does not parse, or whose
    /// name another already has, is skipped and said in the returned
    /// problems (quantumd logs them and runs on: one bad file must not
    /// stop the node).
    pub fn load(admin_dir: &Path, state_dir: &Path) -> (Triggers, Vec<String>) {
        let mut t = Triggers {
            state_dir: state_dir.to_owned(),
            armed: BTreeMap::new(),
        };
        let mut problems = Vec::new();
        for (dir, admin) in [(admin_dir, true), (state_dir, false)] {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    problems.push(format!("cannot read {}: {e}", dir.display()));
                    continue;
                }
            };
            files.sort();
            for path in files {
                let src = match std::fs::read_to_string(&path) {
                    Ok(s) => s,
                    Err(e) => {
                        problems.push(format!("cannot read {}: {e}", path.display()));
                        continue;
                    }
                };
                let trigger = match validate(&path.display().to_string(), &src) {
                    Ok(tr) => tr,
                    Err(diags) => {
                        problems.push(diags);
                        continue;
                    }
                };
                let name = trigger.name.as_str().to_owned();
                if let Some(first) = t.armed.get(&name) {
                    problems.push(format!(
                        "{}: trigger {name} is already defined in {}; this one is ignored",
                        path.display(),
                        first.origin.display()
                    ));
                    continue;
                }
                let added_by = if admin {
                    "admin".to_owned()
                } else {
                    src.lines()
                        .next()
                        .and_then(|l| l.strip_prefix(ADDED_BY))
                        .unwrap_or("unknown")
                        .to_owned()
                };
                t.armed.insert(name, Armed::new(trigger, path, admin, added_by));
            }
        }
        (t, problems)
    }

    /// Validates and keeps a new trigger, written to the state directory
    /// (atomically: a crash leaves the old set or the new one).
    pub fn add(&mut self, src: &str, file: &str, actor: &str) -> Result<&Armed, TriggerError> {
        let trigger = validate(file, src).map_err(TriggerError::Invalid)?;
        let name = trigger.name.as_str().to_owned();
        if let Some(a) = self.armed.get(&name) {
            return Err(TriggerError::Exists {
                name,
                origin: a.origin.display().to_string(),
            });
        }
        let path = self.state_dir.join(format!("{name}.toml"));
        let io = |action: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |source| TriggerError::Io { action, path, source }
        };
        std::fs::create_dir_all(&self.state_dir).map_err(io("create", &self.state_dir))?;
        let tmp = self.state_dir.join(format!(".{name}.toml.new"));
        let actor_line = actor.replace(['\n', '\r'], " ");
        std::fs::write(&tmp, format!("{ADDED_BY}{actor_line}\n{src}")).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        let armed = Armed::new(trigger, path, false, actor.to_owned());
        Ok(self.armed.entry(name).or_insert(armed))
    }

    /// Forgets a trigger added with `add` and deletes its file.
    pub fn remove(&mut self, name: &str) -> Result<Armed, TriggerError> {
        let Some(a) = self.armed.get(name) else {
            return Err(TriggerError::NotFound(name.to_owned()));
        };
        if a.admin {
            return Err(TriggerError::Admin {
                name: name.to_owned(),
                origin: a.origin.display().to_string(),
            });
        }
        match std::fs::remove_file(&a.origin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TriggerError::Io {
                    action: "remove",
                    path: a.origin.display().to_string(),
                    source,
                })
            }
        }
        self.armed.remove(name).ok_or_else(|| TriggerError::NotFound(name.to_owned()))
    }

    pub fn get(&self, name: &str) -> Option<&Armed> {
        self.armed.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Armed> {
        self.armed.values()
    }

    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    /// systemd says the timer or path unit of `name` elapsed: the trigger
    /// to run, if it still exists.
    pub fn elapsed(&mut self, name: &str, now: Instant) -> Option<Trigger> {
        let a = self.armed.get_mut(name)?;
        (a.by_systemd() && a.fire(now)).then(|| a.trigger.clone())
    }

    /// An instance of `cell` reached `state`: the triggers to run.
    pub fn on_event(&mut self, cell: &str, state: EventState, now: Instant) -> Vec<Trigger> {
        let mut out = Vec::new();
        for a in self.armed.values_mut() {
            if let On::Event { cell: c, state: s } = &a.trigger.on {
                if c.as_str() == cell && *s == state && a.fire(now) {
                    out.push(a.trigger.clone());
                }
            }
        }
        out
    }

    /// Whether any trigger watches figures (the caller then reads them).
    pub fn watches_figures(&self) -> bool {
        self.armed.values().any(|a| matches!(a.trigger.on, On::Threshold(_)))
    }

    /// This second's figures: the thresholds that have now been past their
    /// bound for their whole `for`, each once per crossing.
    pub fn on_figures(&mut self, figures: &Figures, now: Instant) -> Vec<Trigger> {
        let mut out = Vec::new();
        for a in self.armed.values_mut() {
            let On::Threshold(t) = &a.trigger.on else { continue };
            let crossed = figure_values(figures, t).into_iter().any(|v| t.crossed(v));
            if !crossed {
                a.crossing_since = None;
                a.latched = false;
                continue;
            }
            let since = *a.crossing_since.get_or_insert(now);
            if !a.latched && now.duration_since(since) >= t.hold.as_std() && a.fire(now) {
                a.latched = true;
                out.push(a.trigger.clone());
            }
        }
        out
    }

    /// Records how a firing's run went, for `trigger list`.
    pub fn ran(&mut self, name: &str, result: String) {
        if let Some(a) = self.armed.get_mut(name) {
            a.last_result = result;
        }
    }
}

/// The values of the threshold's figure now: one for a node figure, one
/// per running instance of the cell for a cell figure. A figure not
/// measured here (no PSI, the first sample) gives none: an unknown value
/// never fires.
fn figure_values(f: &Figures, t: &Threshold) -> Vec<f64> {
    let pressure = |p: &quantum_steppps::PressureSet, figure: Figure| {
        match figure {
            Figure::MemoryPressure => p.memory.as_ref(),
            Figure::CpuPressure => p.cpu.as_ref(),
            Figure::IoPressure => p.io.as_ref(),
            _ => None,
        }
        .map(|p| p.some.avg10)
    };
    let Some(cell) = &t.cell else {
        let n = &f.node;
        let v = match t.figure {
            Figure::MemoryAvailable => Some(n.memory_available_bytes as f64),
            Figure::CpuBusy => n.cpu_busy.map(|b| b * 100.0),
            Figure::Load => Some(n.load.one),
            other => pressure(&n.pressure, other),
        };
        return v.into_iter().collect();
    };
    f.cells
        .values()
        .filter(|c| c.cell == cell.as_str())
        .filter_map(|c| match t.figure {
            Figure::Memory => c.readings.memory_current.map(|m| m as f64),
            Figure::Cpu => c.rates.cpu_cores,
            other => pressure(&c.readings.pressure, other),
        })
        .collect()
}

/// The name of the trigger whose systemd unit this is
/// (`quantum-trigger-NAME.service|timer|path`); cell units always carry an
/// instance number after a dot, trigger names never have one.
pub fn trigger_of_unit(unit: &str) -> Option<&str> {
    let rest = unit.strip_prefix("quantum-trigger-")?;
    let (name, kind) = rest.rsplit_once('.')?;
    (matches!(kind, "service" | "timer" | "path") && !name.is_empty() && !name.contains('.')).then_some(name)
}

/// The units of trigger `name`: the timer or path unit, and the service
/// it starts.
pub fn unit_names(name: &str, on: &On) -> Option<(String, String)> {
    let kind = match on {
        On::Calendar(_) => "timer",
        On::PathChanged(_) => "path",
        _ => return None,
    };
    Some((format!("quantum-trigger-{name}.{kind}"), format!("quantum-trigger-{name}.service")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantum_steppps::figures::CellFigures;

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let (admin, state) = (d.path().join("etc"), d.path().join("state"));
        (d, admin, state)
    }

    const HOG: &str = "[trigger]\nname = \"hog\"\ncell = \"process-hog\"\non-threshold = { figure = \"memory\", cell = \"web-server\", above = \"10M\", for = \"2s\" }\n";

    #[test]
    fn an_added_trigger_outlives_a_restart_and_remembers_who_added_it() {
        let (_d, admin, state) = dirs();
        let (mut t, problems) = Triggers::load(&admin, &state);
        assert!(problems.is_empty() && t.is_empty());
        t.add(HOG, "hog.toml", "uid:1000").expect("added");
        let (again, problems) = Triggers::load(&admin, &state);
        assert!(problems.is_empty(), "{problems:?}");
        let a = again.get("hog").expect("still there");
        assert_eq!(a.added_by, "uid:1000");
        assert!(!a.admin);
        assert!(matches!(t.add(HOG, "hog.toml", "uid:0"), Err(TriggerError::Exists { .. })));
        t.remove("hog").expect("removed");
        assert!(Triggers::load(&admin, &state).0.is_empty());
    }

    #[test]
    fn the_admins_triggers_cannot_be_removed_and_a_bad_file_is_skipped_and_said() {
        let (_d, admin, state) = dirs();
        std::fs::create_dir_all(&admin).expect("mkdir");
        std::fs::write(admin.join("hog.toml"), HOG).expect("write");
        std::fs::write(admin.join("bad.toml"), "[trigger]\nname = 1\n").expect("write");
        let (mut t, problems) = Triggers::load(&admin, &state);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("bad.toml:2:8: error: trigger.name:"), "{problems:?}");
        assert!(matches!(t.remove("hog"), Err(TriggerError::Admin { .. })));
        assert!(matches!(t.remove("nothing"), Err(TriggerError::NotFound(_))));
    }

    fn figures_with(cell: &str, memory: u64) -> Figures {
        let mut f = Figures::default();
        let mut c = CellFigures {
            cell: cell.to_owned(),
            ..CellFigures::default()
        };
        c.readings.memory_current = Some(memory);
        f.cells.insert(format!("{cell}.1"), c);
        f
    }

    #[test]
    fn a_threshold_fires_once_per_crossing_after_its_hold() {
        let (_d, admin, state) = dirs();
        let (mut t, _) = Triggers::load(&admin, &state);
        t.add(HOG, "hog.toml", "uid:0").expect("added");
        let start = Instant::now();
        let high = figures_with("web-server", 20 << 20);
        let low = figures_with("web-server", 1 << 20);
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(t.on_figures(&high, at(0)).is_empty(), "not yet held for 2 s");
        assert!(t.on_figures(&high, at(1)).is_empty());
        assert_eq!(t.on_figures(&high, at(2)).len(), 1, "held for 2 s");
        assert!(t.on_figures(&high, at(3)).is_empty(), "once per crossing");
        assert!(t.on_figures(&low, at(4)).is_empty());
        assert!(t.on_figures(&high, at(5)).is_empty(), "a new crossing holds again");
        assert_eq!(t.on_figures(&high, at(7)).len(), 1);
        assert!(
            t.on_figures(&figures_with("other", 20 << 20), at(20)).is_empty(),
            "another cell's figure"
        );
        assert_eq!(t.get("hog").map(|a| a.fired), Some(2));
    }

    #[test]
    fn events_fire_their_triggers_but_not_twice_in_a_second() {
        let (_d, admin, state) = dirs();
        let (mut t, _) = Triggers::load(&admin, &state);
        let src = "[trigger]\nname = \"oom\"\ncell = \"system-monitor\"\non-event = { cell = \"web-server\", state = \"out-of-memory\" }\n";
        t.add(src, "oom.toml", "uid:0").expect("added");
        let now = Instant::now();
        assert!(t.on_event("web-server", EventState::Failed, now).is_empty());
        assert_eq!(t.on_event("web-server", EventState::OutOfMemory, now).len(), 1);
        assert!(t.on_event("web-server", EventState::OutOfMemory, now).is_empty());
        assert_eq!(t.on_event("web-server", EventState::OutOfMemory, now + MIN_INTERVAL).len(), 1);
        assert!(t.elapsed("oom", now + 3 * MIN_INTERVAL).is_none(), "not a systemd trigger");
    }

    #[test]
    fn trigger_units_are_told_apart_from_cell_units() {
        assert_eq!(trigger_of_unit("quantum-trigger-nightly.service"), Some("nightly"));
        assert_eq!(trigger_of_unit("quantum-trigger-nightly.timer"), Some("nightly"));
        assert_eq!(
            trigger_of_unit("quantum-trigger-x.3.service"),
            None,
            "instance 3 of a cell named trigger-x"
        );
        assert_eq!(trigger_of_unit("quantum-web-server.1.service"), None);
    }
}
