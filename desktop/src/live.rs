//! The live view's words: a cell instance's state, STEPPPS figures and
//! recent events as the rows show them, and trail entries as lines. Pure
//! functions, so that the tests check what a person reads.

use std::collections::VecDeque;

use quantum_bus::{CellInfo, TrailEntry};
use quantum_steppps::{Availability, Figures};

/// Recent events kept per instance.
pub const EVENTS_KEPT: usize = 3;

/// Whether quantumd still has work for this instance (Stop makes sense).
pub fn is_live(cell: &CellInfo) -> bool {
    matches!(cell.state.as_str(), "starting" | "running" | "stopping")
}

/// "running · pid 812", or "exited: exited with status 0".
pub fn state_line(cell: &CellInfo) -> String {
    let mut s = cell.state.clone();
    if cell.pid != 0 && is_live(cell) {
        s.push_str(&format!(" · pid {}", cell.pid));
    }
    // "running as pid N" says again what the pid already says.
    if !cell.reason.is_empty() && !cell.reason.starts_with("running as pid") {
        s.push_str(&format!(" · {}", cell.reason));
    }
    s
}

/// An event line from a state change: the reason when it says the state
/// already ("running as pid 812"), else "state: reason".
pub fn change_line(state: &str, reason: &str) -> String {
    if reason.is_empty() {
        state.to_owned()
    } else if reason.starts_with(state) {
        reason.to_owned()
    } else {
        format!("{state}: {reason}")
    }
}

/// An event line from a security alert: "alert (exec): sh (pid 4) ran; ...",
/// and what was done when the cell's policy stopped it.
pub fn alert_line(kind: &str, response: &str, message: &str) -> String {
    let stopped = if response == "stop" { "; stopping it" } else { "" };
    format!("alert ({kind}): {message}{stopped}")
}

/// This process's uid (the owner of /proc/self), to recognise the user's
/// own entries in the trail.
pub fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// "CPU 0.02 cores · memory 12.5 MiB of 256 MiB · 3 tasks · run-queue p99 40 µs",
/// or None when the figures hold nothing for this instance yet.
pub fn figures_line(instance: &str, figures: &Figures) -> Option<String> {
    let cell = figures.cells.get(instance)?;
    let mut parts = Vec::new();
    // No rate until the second sample of the cell's cgroup.
    if let Some(c) = cell.rates.cpu_cores {
        parts.push(format!("CPU {c:.2} cores"));
    }
    if let Some(m) = cell.readings.memory_current {
        parts.push(format!("memory {}", bytes(m)));
    }
    if let Some(t) = cell.readings.pids_current {
        parts.push(format!("{t} task{}", if t == 1 { "" } else { "s" }));
    }
    if let Availability::Available(time) = &figures.time {
        if let Some(p99) = time.cells.get(instance).filter(|l| l.samples > 0).and_then(|l| l.p99_us) {
            parts.push(format!("run-queue wait p99 {}", micros(p99)));
        }
    }
    if let Availability::Available(events) = &figures.event {
        if let Some(e) = events.cells.get(instance) {
            parts.push(format!("{} exec, {} exit", e.exec, e.exit));
            if e.oom_kill > 0 {
                parts.push(format!("{} OOM kill{}", e.oom_kill, if e.oom_kill == 1 { "" } else { "s" }));
            }
        }
    }
    Some(parts.join(" · "))
}

/// Adds an event line, keeping the last [`EVENTS_KEPT`].
pub fn remember(events: &mut VecDeque<String>, time: &str, text: &str) {
    events.push_back(format!("{time} {text}"));
    while events.len() > EVENTS_KEPT {
        events.pop_front();
    }
}

/// `< 1 µs`, `63 µs`, `424.7 ms`, `1.2 s`.
pub fn micros(us: u64) -> String {
    match us {
        0 => "< 1 µs".to_owned(),
        1..=999 => format!("{us} µs"),
        1000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.1} s", us as f64 / 1e6),
    }
}

/// `12.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The trail entry's title and subtitle: "run web-server" and
/// "#5 · you · ok · DETAIL" (the error instead when it failed; the actor
/// as quantumd recorded it unless it is this process's uid).
pub fn trail_lines(entry: &TrailEntry, own_uid: Option<u32>) -> (String, String) {
    let title = if entry.cell.is_empty() {
        entry.action.clone()
    } else {
        format!("{} {}", entry.action, entry.cell)
    };
    let actor = match own_uid {
        Some(uid) if entry.actor == format!("uid:{uid}") => "you",
        _ => entry.actor.as_str(),
    };
    let mut sub = format!("#{} · {actor} · ", entry.seq);
    if entry.ok {
        sub.push_str("ok");
        if !entry.detail.is_empty() {
            sub.push_str(" · ");
            sub.push_str(&entry.detail);
        }
    } else {
        sub.push_str("failed: ");
        sub.push_str(&entry.error);
    }
    (title, sub)
}

/// The secrets quantumd made for a run that gave none (a database's
/// password), as the row shows them: "password: VALUE", by name. quantumd
/// says them once, in the answer to the run; the assistant keeps them for
/// as long as the instance runs, and nowhere else.
pub fn secret_lines(secrets: &std::collections::HashMap<String, String>) -> Vec<String> {
    let mut lines: Vec<_> = secrets.iter().map(|(name, value)| format!("{name}: {value}")).collect();
    lines.sort();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_line_says_what_and_whether_the_cell_is_being_stopped() {
        assert_eq!(alert_line("exec", "alert", "sh (pid 4) ran"), "alert (exec): sh (pid 4) ran");
        assert_eq!(
            alert_line("connect", "stop", "python3 (pid 5) connected to 10.0.0.1:22"),
            "alert (connect): python3 (pid 5) connected to 10.0.0.1:22; stopping it"
        );
    }

    fn info(state: &str, pid: u32, reason: &str) -> CellInfo {
        CellInfo {
            instance: "web-server.1".into(),
            cell: "web-server".into(),
            state: state.into(),
            reason: reason.into(),
            unit: "quantum-web-server.1.service".into(),
            pid,
            parent: String::new(),
            started_usec: 0,
        }
    }

    #[test]
    fn state_lines_say_what_a_person_needs() {
        assert_eq!(state_line(&info("running", 812, "")), "running · pid 812");
        assert_eq!(
            state_line(&info("exited", 0, "exited with status 0")),
            "exited · exited with status 0"
        );
        assert!(is_live(&info("starting", 0, "")));
        assert!(!is_live(&info("failed", 0, "")));
    }

    #[test]
    fn sizes_and_events() {
        assert_eq!(micros(0), "< 1 µs");
        assert_eq!(micros(63), "63 µs");
        assert_eq!(micros(424_673), "424.7 ms");
        assert_eq!(micros(1_250_000), "1.2 s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(13_107_200), "12.5 MiB");
        let mut e = VecDeque::new();
        for i in 0..5 {
            remember(&mut e, &format!("10:00:0{i}"), "running");
        }
        assert_eq!(e.len(), EVENTS_KEPT);
        assert_eq!(e.front().map(String::as_str), Some("10:00:02 running"));
    }

    #[test]
    fn figures_lines_read_the_steppps_json() {
        use quantum_steppps::figures::{CellFigures, EventCounts, EventFigures};
        let mut figures = Figures::default();
        let mut cell = CellFigures::default();
        cell.rates.cpu_cores = Some(0.25);
        cell.readings.memory_current = Some(13_107_200);
        cell.readings.pids_current = Some(3);
        figures.cells.insert("web-server.1".into(), cell);
        let mut events = EventFigures::default();
        events.cells.insert(
            "web-server.1".into(),
            EventCounts {
                exec: 2,
                exit: 1,
                exit_failed: 0,
                oom_kill: 0,
                connect: 0,
            },
        );
        figures.event = Availability::Available(events);
        assert_eq!(
            figures_line("web-server.1", &figures).as_deref(),
            Some("CPU 0.25 cores · memory 12.5 MiB · 3 tasks · 2 exec, 1 exit")
        );
        assert_eq!(figures_line("other.1", &figures), None);
    }

    #[test]
    fn the_users_own_trail_entries_say_you() {
        let entry = TrailEntry {
            seq: 5,
            time_ns: 0,
            actor: "uid:1000".into(),
            action: "run".into(),
            cell: "web-server".into(),
            manifest_hash: String::new(),
            ok: true,
            error: String::new(),
            detail: "web-server.1".into(),
        };
        assert_eq!(
            trail_lines(&entry, Some(1000)),
            ("run web-server".to_owned(), "#5 · you · ok · web-server.1".to_owned())
        );
        assert_eq!(trail_lines(&entry, Some(0)).1, "#5 · uid:1000 · ok · web-server.1");
    }

    #[test]
    fn made_secrets_are_shown_by_name_in_order() {
        let secrets = [
            ("user".to_owned(), "quantum".to_owned()),
            ("password".to_owned(), "s3cr3t".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(secret_lines(&secrets), ["password: s3cr3t", "user: quantum"]);
        assert!(secret_lines(&Default::default()).is_empty());
    }
}
