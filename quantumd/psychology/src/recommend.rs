//! Recommended `[resources]` from a cell's usage history, in the manner of
//! Kubernetes' VPA recommender: percentiles of what runs used, a safety
//! margin on top, rounded to a unit a person would write, held within
//! bounds the caller sets, with the evidence and a confidence.
//!
//! | key | from | rounding |
//! |---|---|---|
//! | `memory-max` | p99 of the runs' memory peaks x (1 + margin) | up to 1M below 64M, 4M below 1G, 64M above |
//! | `memory-min` | p50 of the runs' memory peaks | *down* to the same steps, at most `memory-max` |
//! | `cpu-min` | p90 of the runs' average cores x (1 + margin) (VPA's CPU target) | up to 0.01 |
//! | `cpu-max` | p99 of the runs' busiest-second cores x (1 + margin) | up to 0.05, at least `cpu-min` |
//! | `tasks-max` | the most tasks any run had x (1 + margin) | up to a whole task |
//!
//! `memory-max` becomes a hard limit (MemoryMax=, the OOM killer beyond
//! it), so it covers the 99th percentile rather than VPA's 95th. A run the
//! OOM killer ended only says its peak was at least the limit it had, so
//! its peak counts x1.2, as VPA bumps a container's memory after an OOM.
//! Percentiles are nearest-rank: the p-th percentile of n sorted values is
//! the `ceil(p/100 x n)`-th smallest, always a value some run really had.

use serde::{Deserialize, Serialize};

use crate::sample::{ExitKind, Sample};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// How an OOM-killed run's memory peak counts.
pub const OOM_BUMP: f64 = 1.2;

/// The limits a recommendation is held within, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Bounds {
    pub memory_floor: u64,
    pub memory_ceiling: u64,
    pub cpu_floor: f64,
    pub cpu_ceiling: f64,
    pub tasks_floor: u32,
    pub tasks_ceiling: u32,
}

impl Default for Bounds {
    /// Floors a cell can start with (a shell and a small program fit in
    /// 8M; eight tasks leave room for a pipeline); ceilings a caller
    /// narrows to its machine.
    fn default() -> Self {
        Bounds {
            memory_floor: 8 * MIB,
            memory_ceiling: 1 << 40,
            cpu_floor: 0.01,
            cpu_ceiling: 4096.0,
            tasks_floor: 8,
            tasks_ceiling: 1 << 22,
        }
    }
}

/// How the recommender decides.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Policy {
    /// Added on top of the percentiles (0.15 = +15 %).
    pub margin: f64,
    /// Fewer runs than this: "not enough history".
    pub min_samples: usize,
    /// From this many runs on (and at least `min_samples`): high confidence.
    pub confident_samples: usize,
    pub bounds: Bounds,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            margin: 0.15,
            min_samples: 10,
            confident_samples: 50,
            bounds: Bounds::default(),
        }
    }
}

/// How far a recommendation can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confidence {
    /// Fewer runs than the policy's minimum: the figures are shown, but
    /// are not to be applied.
    NotEnoughHistory,
    /// Enough runs to apply, few enough that the tails may move.
    Low,
    High,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::NotEnoughHistory => "not enough history",
            Confidence::Low => "low",
            Confidence::High => "high",
        }
    }
}

/// The recommended `[resources]` keys; `None` (absent in the JSON) where
/// no run measured the figure it comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Resources {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_min: Option<u64>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// Cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_min: Option<f64>,
    /// Cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_max: Option<u32>,
}

/// The percentiles of one figure over the runs that measured it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Spread {
    /// Runs that measured it.
    pub runs: usize,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    /// Nearest-rank percentiles of `values`; `None` when empty.
    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(Spread {
            runs: values.len(),
            p50: percentile(&values, 50.0),
            p90: percentile(&values, 90.0),
            p95: percentile(&values, 95.0),
            p99: percentile(&values, 99.0),
            max: values[values.len() - 1],
        })
    }
}

/// Nearest rank: the `ceil(p/100 x n)`-th smallest of `sorted` (non-empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// What the recommendation rests on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Evidence {
    /// Memory peaks, bytes (OOM-killed runs' x[`OOM_BUMP`]).
    pub memory_peak: Option<Spread>,
    /// Average cores per run.
    pub cpu_average: Option<Spread>,
    /// Busiest-second cores per run.
    pub cpu_peak: Option<Spread>,
    /// Most tasks at once per run.
    pub tasks_peak: Option<Spread>,
    /// Run-queue latency p99 per run, microseconds (shown, not used for a key:
    /// `[objectives]` is where latency is asked for).
    pub runq_p99_us: Option<Spread>,
    /// Run lengths, seconds.
    pub run_seconds: Option<Spread>,
    /// Runs by how they ended (`exited`, `failed`, `stopped`, `oom-killed`, `running`).
    pub exits: std::collections::BTreeMap<String, usize>,
    /// The hours of the week (UTC, 0 = Monday 00:00) most runs started
    /// in, busiest first, at most three.
    pub busiest_hours: Vec<HourCount>,
    /// Where a bound changed a figure, or a key could not be recommended.
    pub notes: Vec<String>,
}

/// Runs that started in one hour of the week.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HourCount {
    pub hour_of_week: u8,
    pub runs: usize,
}

/// A recommendation for one cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Recommendation {
    pub cell: String,
    /// Runs in the history.
    pub samples: usize,
    pub confidence: Confidence,
    /// The policy's minimum number of runs.
    pub min_samples: usize,
    /// The safety margin applied.
    pub margin: f64,
    pub resources: Resources,
    pub evidence: Evidence,
}

/// Recommends `[resources]` for `cell` from its `samples`.
pub fn recommend(cell: &str, samples: &[Sample], policy: &Policy) -> Recommendation {
    let b = &policy.bounds;
    let grow = 1.0 + policy.margin.max(0.0);
    let mut notes = Vec::new();
    let figure = |f: &dyn Fn(&Sample) -> Option<f64>| Spread::of(samples.iter().filter_map(f).collect());

    let memory_peak = figure(&|s| {
        s.memory_peak.map(|p| {
            if s.exit == ExitKind::OomKilled {
                p as f64 * OOM_BUMP
            } else {
                p as f64
            }
        })
    });
    let cpu_average = figure(&|s| s.cpu_average_cores);
    let cpu_peak = figure(&|s| s.cpu_peak_cores);
    let tasks_peak = figure(&|s| s.tasks_peak.map(|t| t as f64));
    let runq = figure(&|s| s.runq_p99_us.map(|t| t as f64));
    let run_seconds = figure(&|s| Some(s.run_ms as f64 / 1000.0));

    let mut resources = Resources::default();
    if let Some(m) = memory_peak {
        let max = clamp_u64(
            "memory-max",
            round_memory_up(m.p99 * grow),
            b.memory_floor,
            b.memory_ceiling,
            &mut notes,
            |v| quantum_model::ByteSize(v).to_string(),
        );
        let min = round_memory_down(m.p50).clamp(b.memory_floor, b.memory_ceiling).min(max);
        resources.memory_max = Some(max);
        resources.memory_min = Some(min);
    } else {
        notes.push("no run measured memory (no memory controller?): memory-min and memory-max not recommended".into());
    }
    if let (Some(avg), Some(peak)) = (cpu_average, cpu_peak) {
        let min = clamp_f64("cpu-min", round_up(avg.p90 * grow, 0.01), b.cpu_floor, b.cpu_ceiling, &mut notes);
        let max = clamp_f64("cpu-max", round_up(peak.p99 * grow, 0.05), b.cpu_floor, b.cpu_ceiling, &mut notes).max(min);
        resources.cpu_min = Some(min);
        resources.cpu_max = Some(max);
    } else {
        notes.push("no run was sampled long enough to measure CPU: cpu-min and cpu-max not recommended".into());
    }
    if let Some(t) = tasks_peak {
        let want = (t.max * grow).ceil().min(f64::from(u32::MAX)) as u64;
        let tasks = clamp_u64(
            "tasks-max",
            want,
            u64::from(b.tasks_floor),
            u64::from(b.tasks_ceiling),
            &mut notes,
            |v| v.to_string(),
        );
        resources.tasks_max = Some(u32::try_from(tasks).unwrap_or(u32::MAX));
    } else {
        notes.push("no run measured its tasks (no pids controller?): tasks-max not recommended".into());
    }

    let mut exits = std::collections::BTreeMap::new();
    let mut hours = [0usize; 168];
    for s in samples {
        *exits.entry(s.exit.as_str().to_owned()).or_insert(0) += 1;
        hours[usize::from(s.hour_of_week()) % 168] += 1;
    }
    let mut busiest: Vec<HourCount> = hours
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(h, &n)| HourCount {
            hour_of_week: h as u8,
            runs: n,
        })
        .collect();
    busiest.sort_by(|a, b| b.runs.cmp(&a.runs).then(a.hour_of_week.cmp(&b.hour_of_week)));
    busiest.truncate(3);

    let n = samples.len();
    let confidence = if n < policy.min_samples {
        Confidence::NotEnoughHistory
    } else if n < policy.confident_samples {
        Confidence::Low
    } else {
        Confidence::High
    };
    Recommendation {
        cell: cell.to_owned(),
        samples: n,
        confidence,
        min_samples: policy.min_samples,
        margin: policy.margin,
        resources,
        evidence: Evidence {
            memory_peak,
            cpu_average,
            cpu_peak,
            tasks_peak,
            runq_p99_us: runq,
            run_seconds,
            exits,
            busiest_hours: busiest,
            notes,
        },
    }
}

/// The step a memory figure of `bytes` is rounded to: fine where a
/// megabyte matters, coarse where it does not.
fn memory_step(bytes: u64) -> u64 {
    if bytes < 64 * MIB {
        MIB
    } else if bytes < GIB {
        4 * MIB
    } else {
        64 * MIB
    }
}

fn round_memory_up(bytes: f64) -> u64 {
    let b = bytes.max(0.0).ceil().min(u64::MAX as f64) as u64;
    let step = memory_step(b);
    b.div_ceil(step).saturating_mul(step)
}

fn round_memory_down(bytes: f64) -> u64 {
    let b = bytes.max(0.0).floor().min(u64::MAX as f64) as u64;
    b / memory_step(b) * memory_step(b)
}

/// Up to a multiple of `step` (0.01 or 0.05 cores), computed in hundredths
/// so that float noise (0.1 x 1.15 = 0.11499999) cannot add a step.
fn round_up(cores: f64, step: f64) -> f64 {
    let centis = (cores * 100.0 - 1e-6).ceil().max(0.0);
    let step_centis = (step * 100.0).round();
    (centis / step_centis).ceil() * step_centis / 100.0
}

fn clamp_u64(key: &str, v: u64, floor: u64, ceiling: u64, notes: &mut Vec<String>, show: impl Fn(u64) -> String) -> u64 {
    if v < floor {
        notes.push(format!("{key}: raised from {} to the floor {}", show(v), show(floor)));
        floor
    } else if v > ceiling {
        notes.push(format!(
            "{key}: held at the ceiling {} (the history asks for {})",
            show(ceiling),
            show(v)
        ));
        ceiling
    } else {
        v
    }
}

fn clamp_f64(key: &str, v: f64, floor: f64, ceiling: f64, notes: &mut Vec<String>) -> f64 {
    if v < floor {
        notes.push(format!("{key}: raised from {v} to the floor {floor}"));
        floor
    } else if v > ceiling {
        notes.push(format!("{key}: held at the ceiling {ceiling} (the history asks for {v})"));
        ceiling
    } else {
        v
    }
}

impl Recommendation {
    /// The `[resources]` block as TOML a person can paste into cell.toml,
    /// with the evidence as comments. Without enough history the keys are
    /// commented out too, so that pasting it changes nothing.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let apply = self.confidence != Confidence::NotEnoughHistory;
        out.push_str(&format!(
            "# Recommended for {}: {} runs, confidence {}",
            self.cell,
            self.samples,
            self.confidence.as_str()
        ));
        if !apply {
            out.push_str(&format!(
                " (at least {} runs are needed; the keys are commented out)",
                self.min_samples
            ));
        }
        out.push('\n');
        let key = if apply { "" } else { "# " };
        out.push_str("[resources]\n");
        let r = &self.resources;
        let mut any = false;
        let mut line = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push_str(&format!("{key}{k} = {v}\n"));
                any = true;
            }
        };
        line("cpu-min", r.cpu_min.map(show_cores));
        line("cpu-max", r.cpu_max.map(show_cores));
        line("memory-min", r.memory_min.map(|b| format!("{:?}", show_bytes_exact(b))));
        line("memory-max", r.memory_max.map(|b| format!("{:?}", show_bytes_exact(b))));
        line("tasks-max", r.tasks_max.map(|t| t.to_string()));
        if !any {
            out.push_str("# (nothing measured yet)\n");
        }
        out.push_str(&format!("# Evidence (margin +{:.0} %):\n", self.margin * 100.0));
        for line in self.evidence_lines() {
            out.push_str("#   ");
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// The evidence, one line per figure, for a person.
    pub fn evidence_lines(&self) -> Vec<String> {
        let e = &self.evidence;
        let mut lines = Vec::new();
        let spread = |name: &str, s: &Option<Spread>, show: &dyn Fn(f64) -> String| -> String {
            match s {
                Some(s) => format!(
                    "{name}: p50 {}  p90 {}  p95 {}  p99 {}  max {}  ({} runs)",
                    show(s.p50),
                    show(s.p90),
                    show(s.p95),
                    show(s.p99),
                    show(s.max),
                    s.runs
                ),
                None => format!("{name}: not measured"),
            }
        };
        lines.push(spread("memory peak", &e.memory_peak, &|b| show_bytes(b)));
        lines.push(spread("cpu average (cores)", &e.cpu_average, &|c| format!("{c:.2}")));
        lines.push(spread("cpu busiest second (cores)", &e.cpu_peak, &|c| format!("{c:.2}")));
        lines.push(spread("tasks peak", &e.tasks_peak, &|t| format!("{t:.0}")));
        lines.push(spread("run-queue latency p99 (us)", &e.runq_p99_us, &|t| format!("{t:.0}")));
        lines.push(spread("run length (s)", &e.run_seconds, &|t| format!("{t:.1}")));
        if !e.exits.is_empty() {
            let ends: Vec<String> = e.exits.iter().map(|(k, n)| format!("{n} {k}")).collect();
            lines.push(format!("runs ended: {}", ends.join(", ")));
        }
        if e.exits.contains_key(ExitKind::OomKilled.as_str()) {
            lines.push(format!("OOM-killed runs' peaks count x{OOM_BUMP}"));
        }
        if !e.busiest_hours.is_empty() {
            let hours: Vec<String> = e
                .busiest_hours
                .iter()
                .map(|h| format!("{} ({} runs)", show_hour(h.hour_of_week), h.runs))
                .collect();
            lines.push(format!("busiest start hours (UTC): {}", hours.join(", ")));
        }
        lines.extend(e.notes.iter().cloned());
        lines
    }
}

/// 0.25 -> "0.25", 2 -> "2" (as a manifest writes cores).
fn show_cores(c: f64) -> String {
    let centis = (c * 100.0).round() as u64;
    if centis.is_multiple_of(100) {
        format!("{}", centis / 100)
    } else {
        format!("{}", centis as f64 / 100.0)
    }
}

/// A recommended size, exact, as a manifest writes it ("132M", "2G").
fn show_bytes_exact(b: u64) -> String {
    quantum_model::ByteSize(b).to_string()
}

/// A measured size, for reading (one decimal in its unit).
fn show_bytes(b: f64) -> String {
    for (unit, size) in [("G", GIB as f64), ("M", MIB as f64), ("K", 1024.0)] {
        if b >= size {
            return format!("{:.1}{unit}", b / size);
        }
    }
    format!("{b:.0}")
}

fn show_hour(h: u8) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    format!("{} {:02}:00", DAYS[usize::from(h / 24) % 7], h % 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_values_runs_really_had() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 100.0);
        assert_eq!(percentile(&v, 95.0), 190.0);
        assert_eq!(percentile(&v, 99.0), 198.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.0), 1.0);
    }

    #[test]
    fn memory_rounds_to_megabytes_then_coarser_steps() {
        assert_eq!(round_memory_up(10.2 * MIB as f64), 11 * MIB);
        assert_eq!(round_memory_up(64.0 * MIB as f64 + 1.0), 68 * MIB);
        assert_eq!(round_memory_up(GIB as f64 + 1.0), GIB + 64 * MIB);
        assert_eq!(round_memory_down(67.9 * MIB as f64), 64 * MIB);
        assert_eq!(round_memory_down(63.9 * MIB as f64), 63 * MIB);
    }

    #[test]
    fn cores_round_up_without_float_noise() {
        assert_eq!(round_up(0.1 * 1.15, 0.01), 0.12);
        assert_eq!(round_up(0.10, 0.01), 0.1);
        assert_eq!(round_up(0.51, 0.05), 0.55);
        assert_eq!(round_up(0.5, 0.05), 0.5);
    }
}
