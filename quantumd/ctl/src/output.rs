//! How quantumctl prints things for people (and `--json` for programs).

use std::fmt::Write;

use quantum_bus::{Assembled, CellDetail, CellInfo, Started};
use serde::Serialize;

pub fn json<T: Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("quantumctl: cannot encode JSON: {e}"),
    }
}

/// `run --json`: the started instance, plus `asked` and `substitution`
/// when another cell runs in place of the one asked for, and `secrets`
/// when quantumd made some for it.
pub fn run_json(a: &Assembled) -> serde_json::Value {
    let mut v = serde_json::to_value(&a.started.info).unwrap_or_default();
    if let Some(object) = v.as_object_mut() {
        if !a.asked.is_empty() {
            object.insert("asked".into(), a.asked.clone().into());
            object.insert("substitution".into(), a.substitution.clone().into());
        }
        if !a.started.secrets.is_empty() {
            let secrets: std::collections::BTreeMap<_, _> = a.started.secrets.iter().collect();
            object.insert("secrets".into(), serde_json::to_value(secrets).unwrap_or_default());
        }
    }
    v
}

/// The secrets quantumd made for a run, one `NAME: VALUE` line each, and
/// where they are (not) kept; empty when it made none.
pub fn secrets(s: &Started) -> String {
    if s.secrets.is_empty() {
        return String::new();
    }
    let mut names: Vec<_> = s.secrets.iter().collect();
    names.sort();
    let mut out = String::new();
    for (name, value) in names {
        let _ = writeln!(out, "{name}: {value}");
    }
    let _ = writeln!(
        out,
        "(made for {} and shown only here: not in the journal, the trail or `quantumctl inspect`)",
        s.info.instance
    );
    out
}

pub fn started(i: &CellInfo) -> String {
    match i.state.as_str() {
        "running" | "starting" => format!("started {} ({}, pid {})", i.instance, i.unit, i.pid),
        other => format!("{} {}: {}", i.instance, other, i.reason),
    }
}

pub fn table(cells: &[CellInfo]) -> String {
    let mut out = String::new();
    if cells.is_empty() {
        return "no cells\n".to_owned();
    }
    let w = cells.iter().map(|c| c.instance.len()).max().unwrap_or(8).max(8);
    let _ = writeln!(out, "{:<w$}  {:<10}  {:>7}  REASON", "INSTANCE", "STATE", "PID");
    for c in cells {
        let pid = if c.pid == 0 { "-".to_owned() } else { c.pid.to_string() };
        let _ = writeln!(out, "{:<w$}  {:<10}  {:>7}  {}", c.instance, c.state, pid, c.reason);
    }
    out
}

pub fn detail(d: &CellDetail) -> String {
    let i = &d.info;
    let mut out = String::new();
    let _ = writeln!(out, "{} ({} {})", i.instance, i.cell, d.version);
    let _ = writeln!(out, "  state:     {} — {}", i.state, i.reason);
    let _ = writeln!(out, "  unit:      {}", i.unit);
    let _ = writeln!(out, "  pid:       {}", i.pid);
    if !i.parent.is_empty() {
        let _ = writeln!(out, "  parent:    {}", i.parent);
    }
    let _ = writeln!(out, "  manifest:  {}", d.manifest_path);
    let _ = writeln!(out, "  command:   {}", d.argv.join(" "));
    if !d.reach.is_empty() {
        let _ = writeln!(out, "  reach:     {}", d.reach);
    }
    let mut params: Vec<_> = d.params.iter().collect();
    params.sort();
    for (k, v) in params {
        let _ = writeln!(out, "  param:     {k} = {v}");
    }
    if !d.needs.is_empty() {
        let _ = writeln!(out, "  needs:     {}", d.needs.join(", "));
    }
    if !d.children.is_empty() {
        let _ = writeln!(out, "  children:  {}", d.children.join(", "));
    }
    let _ = writeln!(out, "  restarts:  {}", d.restarts);
    let mut props: Vec<_> = d.properties.iter().collect();
    props.sort();
    for (k, v) in props {
        let _ = writeln!(out, "  {k}: {v}");
    }
    out
}

pub fn identity(id: &quantum_bus::NodeIdentity) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node key id:         {}", id.key_id);
    let _ = writeln!(out, "ML-DSA-65 key:       {}", id.ml_dsa_fingerprint);
    let _ = writeln!(out, "Ed25519 key:         {}", id.ed25519_fingerprint);
    let _ = writeln!(out, "secret keys:         {}", id.store);
    let _ = writeln!(out, "sealed by a TPM:     {}", if id.tpm { "yes" } else { "no" });
    out
}

/// What a `quantumctl cell` command did, then the state's snapshots.
pub fn cell_state(op: &str, name: &str, r: &quantum_bus::CellStateReport) -> String {
    let mut out = String::new();
    match op {
        "snapshot" => {
            let _ = writeln!(out, "snapshot {name} of {} taken", r.cell);
        }
        "rollback" => {
            let _ = writeln!(out, "{} rolled back to snapshot {name}", r.cell);
        }
        "delete" => {
            let _ = writeln!(out, "snapshot {name} of {} deleted", r.cell);
        }
        _ => {}
    }
    let _ = writeln!(
        out,
        "state:      {}{}",
        r.current,
        if r.btrfs {
            " (btrfs subvolume)"
        } else {
            " (not btrfs: no snapshots)"
        }
    );
    if r.snapshots.is_empty() {
        let _ = writeln!(out, "snapshots:  none");
    } else {
        let _ = writeln!(out, "snapshots:  {}", r.snapshots.join(" "));
    }
    out
}

/// A snapshot name for now, UTC: `2026-11-29T07-30-05` (no colons, so that
/// it is a valid snapshot name).
pub fn snapshot_name_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc(secs * 1_000_000_000)
        .replace(':', "-")
        .replace(' ', "T")
        .trim_end_matches('Z')
        .to_owned()
}

pub fn trail(entries: &[quantum_bus::TrailEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let result = if e.ok { "ok".to_owned() } else { format!("FAILED: {}", e.error) };
        let cell = if e.cell.is_empty() { "-" } else { &e.cell };
        let _ = write!(
            out,
            "{:>6}  {}  {:<9} {:<10} {:<18} {result}",
            e.seq,
            utc(e.time_ns),
            e.actor,
            e.action,
            cell
        );
        if !e.detail.is_empty() {
            let _ = write!(out, "  ({})", e.detail);
        }
        out.push('\n');
    }
    if entries.is_empty() {
        out.push_str("no entries\n");
    }
    out
}

/// One line per alert: when, the instance, what, and what was done.
pub fn alert(a: &quantum_bus::Alert) -> String {
    let done = if a.response == "stop" { "  [stopped]" } else { "" };
    format!(
        "{:>6}  {}  {:<22} {:<8} {}{done}\n",
        a.seq,
        utc(a.time_ns),
        a.instance,
        a.kind,
        a.message
    )
}

/// `channels`: who listens on what, then the open streams.
pub fn channels(t: &quantum_bus::ChannelTable) -> String {
    let mut out = String::new();
    if t.listening.is_empty() {
        out.push_str("no cell is listening on a channel\n");
    } else {
        out.push_str(&format!("{:<28} {}\n", "LISTENING", "CHANNEL"));
        for l in &t.listening {
            out.push_str(&format!("{:<28} {}\n", l.instance, l.channel));
        }
    }
    if t.streams.is_empty() {
        out.push_str("no open streams\n");
    } else {
        out.push_str(&format!("\n{:<24} {:<24} {:<28} {}\n", "CONSUMER", "PROVIDER", "CHANNEL", "OPENED"));
        for s in &t.streams {
            out.push_str(&format!(
                "{:<24} {:<24} {:<28} {}\n",
                s.consumer,
                s.provider,
                s.channel,
                utc(s.opened_usec.saturating_mul(1000))
            ));
        }
    }
    out
}

/// `cluster status`.
pub fn cluster(s: &quantum_bus::ClusterStatus) -> String {
    let mut out = String::new();
    match s.state.as_str() {
        "standalone" => {
            out.push_str(&format!("standalone: this node is in no cluster ({} does not exist)\n", s.config));
            return out;
        }
        "misconfigured" => {
            out.push_str(&format!("standalone: the cluster file is not used: {}\n", s.error));
            return out;
        }
        _ => {}
    }
    let since = if s.since_usec > 0 {
        format!(" since {}", utc(s.since_usec.saturating_mul(1000)))
    } else {
        String::new()
    };
    out.push_str(&format!("node:      {} (key {})\n", s.node, s.key_id));
    out.push_str(&format!("state:     {}{since}\n", s.state));
    if !s.error.is_empty() {
        out.push_str(&format!("error:     {}\n", s.error));
    }
    out.push_str(&format!("etcd:      {}\n", s.endpoints.join(", ")));
    out.push_str(&format!("lease:     {} s\n", s.lease_ttl_s));
    if !s.etcd_members.is_empty() {
        out.push_str("\nETCD MEMBER          ID                LEADER  CLIENT URLS\n");
        for m in &s.etcd_members {
            out.push_str(&format!(
                "{:<20} {:<17} {:<7} {}\n",
                m.name,
                m.id,
                if m.leader { "yes" } else { "" },
                m.client_urls.join(", ")
            ));
        }
    }
    out.push('\n');
    out.push_str(&cluster_nodes(&s.nodes));
    if !s.placements.is_empty() {
        out.push_str(&format!(
            "\n{:<28} {:<20} {:<20} {}\n",
            "PLACEMENT", "CELL", "NODE", "INSTANCE HERE"
        ));
        for p in &s.placements {
            out.push_str(&format!("{:<28} {:<20} {:<20} {}\n", p.id, p.cell, p.node, p.instance));
        }
    }
    if !s.refused.is_empty() {
        out.push_str("\nREFUSED              WHY\n");
        for r in &s.refused {
            out.push_str(&format!("{:<20} {}\n", r.node, r.why));
        }
    }
    out
}

/// `cluster nodes`.
pub fn cluster_nodes(nodes: &[quantum_bus::ClusterNode]) -> String {
    if nodes.is_empty() {
        return "no nodes\n".to_owned();
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut out = format!(
        "{:<20} {:>4} {:>17} {:>4}  {:<9} {}\n",
        "NODE", "CPUS", "MEMORY FREE/TOTAL", "GPUS", "VERSION", "KEY"
    );
    for n in nodes {
        let name = if n.this_node { format!("{} *", n.name) } else { n.name.clone() };
        out.push_str(&format!(
            "{:<20} {:>4} {:>17} {:>4}  {:<9} {}\n",
            name,
            n.cpus,
            format!("{:.1}/{:.1} GiB", gib(n.memory_available_bytes), gib(n.memory_bytes)),
            n.gpus,
            n.version,
            n.key_id.get(..16).unwrap_or(&n.key_id)
        ));
    }
    out
}

/// `trigger list`: one block per trigger.
pub fn triggers(list: &[quantum_bus::TriggerInfo]) -> String {
    let mut out = String::new();
    for t in list {
        let params = if t.params.is_empty() {
            String::new()
        } else {
            format!(" {}", t.params.join(" "))
        };
        let _ = writeln!(out, "{}: runs {}{params}", t.name, t.cell);
        if !t.description.is_empty() {
            let _ = writeln!(out, "  {}", t.description);
        }
        let _ = writeln!(out, "  when     {}", t.on);
        let _ = writeln!(out, "  watched  by {}", t.armed_by);
        let _ = writeln!(out, "  from     {} (added by {})", t.origin, t.added_by);
        let last = if t.fired == 0 {
            "never".to_owned()
        } else {
            format!("{} times, last at {}", t.fired, utc(t.last_fired_usec.saturating_mul(1000)))
        };
        let _ = writeln!(out, "  fired    {last}");
        if !t.last_result.is_empty() {
            let _ = writeln!(out, "  last     {}", t.last_result);
        }
    }
    out
}

pub fn trail_report(r: &quantum_bus::TrailReport) -> String {
    let mut out = String::new();
    if r.ok {
        let _ = writeln!(
            out,
            "the trail verifies: {} entries in {} segment(s), {} seal(s), last sealed entry {}",
            r.entries, r.segments, r.seals, r.last_sealed_seq
        );
    } else {
        let _ = writeln!(out, "the trail does NOT verify: {}", r.failure);
        let _ = writeln!(out, "checked before it: {} entries, {} seal(s)", r.entries, r.seals);
    }
    let _ = writeln!(out, "head: {}", r.head);
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` UTC from nanoseconds since the epoch.
fn utc(time_ns: u64) -> String {
    let secs = time_ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn or_dash<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

/// The `quantumctl steppps` view: the node, then one line per instance.
/// The STEPPPS view; `verbose` keeps the full reason a figure is missing.
pub fn steppps(f: &quantum_steppps::Figures, verbose: bool) -> String {
    use quantum_steppps::Availability;
    let mut out = String::new();
    let n = &f.node;
    let _ = writeln!(
        out,
        "node: {} CPUs, {} busy, load {:.2} {:.2} {:.2}, memory {} available of {}",
        n.cpus,
        or_dash(n.cpu_busy, |b| format!("{:.0}%", b * 100.0)),
        n.load.one,
        n.load.five,
        n.load.fifteen,
        bytes(n.memory_available_bytes),
        bytes(n.memory_total_bytes),
    );
    let gpu = match &f.gpus {
        Availability::Available(g) => format!("gpus: {}", g.devices.len()),
        // "no NVIDIA driver (NVML did not load: libnvidia-ml.so.1: ...)":
        // the loader's detail is for --verbose and --json.
        Availability::Unavailable { unavailable } if !verbose => {
            format!("gpus: none ({})", unavailable.split(" (").next().unwrap_or(unavailable))
        }
        Availability::Unavailable { unavailable } => format!("gpus: none ({unavailable})"),
    };
    let _ = writeln!(out, "{gpu}");
    // Most kernels have no steppps module: its absence is news only to
    // someone asking for --verbose.
    match &f.kernel {
        Availability::Available(k) => {
            let _ = writeln!(
                out,
                "kernel module: {} ({} samples every {} ms, generation {})",
                k.device, k.samples, k.interval_ms, k.generation
            );
        }
        Availability::Unavailable { unavailable } if verbose => {
            let _ = writeln!(out, "kernel module: unavailable ({unavailable})");
        }
        Availability::Unavailable { .. } => {}
    }
    if let Availability::Unavailable { unavailable } = &f.time {
        let _ = writeln!(out, "TIME: unavailable ({unavailable})");
    }
    if let Availability::Unavailable { unavailable } = &f.event {
        let _ = writeln!(out, "EVENT: unavailable ({unavailable})");
    }
    let time = f.time.available();
    let event = f.event.available();
    if let Some(e) = event {
        if e.dropped > 0 {
            let _ = writeln!(out, "EVENT: {} events lost (ring buffer full)", e.dropped);
        }
    }
    if f.cells.is_empty() {
        let _ = writeln!(out, "no cells running");
        return out;
    }
    let w = f.cells.keys().map(String::len).max().unwrap_or(8).max(8);
    let _ = writeln!(
        out,
        "\n{:<w$}  {:>6}  {:>9}  {:>9}  {:>5}  {:>9}  {:>9}  {:>6}  {:>5}  {:>4}",
        "INSTANCE", "CPU", "MEMORY", "MEM MAX", "TASKS", "IO R/s", "IO W/s", "RUNQ99", "EXEC", "FAIL"
    );
    for (instance, c) in &f.cells {
        let r = &c.readings;
        let runq = time.and_then(|t| t.cells.get(instance)).and_then(|l| l.p99_us).map_or_else(
            || "-".to_owned(),
            |us| {
                if us >= 1000 {
                    format!("{}ms", us / 1000)
                } else {
                    format!("{us}us")
                }
            },
        );
        let ev = event.and_then(|e| e.cells.get(instance)).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<w$}  {:>6}  {:>9}  {:>9}  {:>5}  {:>9}  {:>9}  {:>6}  {:>5}  {:>4}",
            instance,
            or_dash(c.rates.cpu_cores, |v| format!("{:.0}%", v * 100.0)),
            or_dash(r.memory_current, bytes),
            or_dash(r.memory_max, |l| match l {
                quantum_steppps::Limit::Unlimited => "max".to_owned(),
                quantum_steppps::Limit::Value(v) => bytes(v),
            }),
            or_dash(r.pids_current, |v| v.to_string()),
            or_dash(c.rates.io_read_bytes_per_second, |v| bytes(v as u64)),
            or_dash(c.rates.io_write_bytes_per_second, |v| bytes(v as u64)),
            runq,
            ev.exec,
            ev.exit_failed + ev.oom_kill,
        );
    }
    out
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_formats_epoch_leap_days_and_today() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400 * 1_000_000_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_437_296 * 1_000_000_000), "2026-11-23 12:34:56");
    }
}
