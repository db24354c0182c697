//! Node totals from procfs: CPU time, memory, load and pressure.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::kernfile::{self, FileError, LineError, PressureSet};

/// The `cpu` line of /proc/stat, in clock ticks, reduced to what a busy
/// fraction needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent doing anything but idling or waiting for IO.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// /proc/loadavg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LoadAvg {
    /// Over 1 minute.
    pub one: f64,
    /// Over 5 minutes.
    pub five: f64,
    /// Over 15 minutes.
    pub fifteen: f64,
    /// Tasks runnable now.
    pub runnable: u64,
    /// Tasks in total.
    pub tasks: u64,
}

/// One reading of the node's procfs files.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeSample {
    /// Online CPUs (the `cpuN` lines of /proc/stat).
    pub cpus: u32,
    /// All CPUs together.
    pub cpu: CpuTimes,
    /// `MemTotal`, bytes.
    pub memory_total: u64,
    /// `MemAvailable`, bytes.
    pub memory_available: u64,
    /// /proc/loadavg.
    pub load: LoadAvg,
    /// /proc/pressure/*, where the kernel has PSI.
    pub pressure: PressureSet,
}

/// Reads procfs mounted at a root (`/proc`, or a fixture tree).
#[derive(Clone, Debug)]
pub struct ProcReader {
    root: PathBuf,
}

impl ProcReader {
    /// A reader of the procfs at `root`.
    pub fn new(root: PathBuf) -> ProcReader {
        ProcReader { root }
    }

    /// Reads stat, meminfo, loadavg and pressure/*.
    pub fn read(&self) -> Result<NodeSample, FileError> {
        let (cpus, cpu) = parse_required(&self.root.join("stat"), parse_stat)?;
        let (memory_total, memory_available) = {
            let path = self.root.join("meminfo");
            parse_meminfo(&path, &kernfile::read_required(&path)?)?
        };
        let load = parse_required(&self.root.join("loadavg"), parse_loadavg)?;
        let pressure = PressureSet::read(&self.root.join("pressure"), str::to_owned)?;
        Ok(NodeSample {
            cpus,
            cpu,
            memory_total,
            memory_available,
            load,
            pressure,
        })
    }
}

fn parse_required<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T, LineError>) -> Result<T, FileError> {
    parse(&kernfile::read_required(path)?).map_err(|e| e.in_file(path))
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`.
fn parse_stat(text: &str) -> Result<(u32, CpuTimes), LineError> {
    let mut times = None;
    let mut cpus = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("cpu") => {
                let fields = words
                    .enumerate()
                    .map(|(k, w)| kernfile::number::<u64>(n, &format!("cpu field {}", k + 1), w))
                    .collect::<Result<Vec<_>, _>>()?;
                if fields.len() < 8 {
                    return Err(LineError::new(n, format!("expected at least 8 cpu fields, found {}", fields.len())));
                }
                // guest and guest_nice are already inside user and nice: summing them would count twice.
                let total: u64 = fields[..8].iter().sum();
                let idle = fields[3] + fields[4];
                times = Some(CpuTimes { busy: total - idle, total });
            }
            Some(word) if word.starts_with("cpu") && word[3..].parse::<u32>().is_ok() => cpus += 1,
            _ => {}
        }
    }
    let times = times.ok_or_else(|| LineError::new(1, "no `cpu` line"))?;
    Ok((cpus, times))
}

fn parse_meminfo(path: &Path, text: &str) -> Result<(u64, u64), FileError> {
    let mut total = None;
    let mut available = None;
    for (i, line) in text.lines().enumerate() {
        let Some((key, rest)) = line.split_once(':') else {
            return Err(LineError::new(i + 1, format!("expected `KEY: VALUE`, found `{line}`")).in_file(path));
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let kib = match rest.split_whitespace().collect::<Vec<_>>()[..] {
            [value, "kB"] => kernfile::number::<u64>(i + 1, key, value).map_err(|e| e.in_file(path))?,
            _ => return Err(LineError::new(i + 1, format!("`{key}`: expected `N kB`, found `{}`", rest.trim())).in_file(path)),
        };
        *slot = Some(kib * 1024);
    }
    let missing = |key| FileError::MissingKey {
        path: path.to_owned(),
        key,
    };
    Ok((
        total.ok_or_else(|| missing("MemTotal"))?,
        available.ok_or_else(|| missing("MemAvailable"))?,
    ))
}

/// `0.52 0.58 0.59 1/389 12345`.
fn parse_loadavg(text: &str) -> Result<LoadAvg, LineError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [one, five, fifteen, tasks, _last_pid] = words[..] else {
        return Err(LineError::new(1, format!("expected 5 fields, found {}", words.len())));
    };
    let Some((runnable, total)) = tasks.split_once('/') else {
        return Err(LineError::new(1, format!("expected RUNNABLE/TASKS, found `{tasks}`")));
    };
    Ok(LoadAvg {
        one: kernfile::number(1, "1-minute load", one)?,
        five: kernfile::number(1, "5-minute load", five)?,
        fifteen: kernfile::number(1, "15-minute load", fifteen)?,
        runnable: kernfile::number(1, "runnable tasks", runnable)?,
        tasks: kernfile::number(1, "tasks", total)?,
    })
}
