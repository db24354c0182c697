//! Per-cell SPACE from the cgroup v2 interface files.
//!
//! Each file belongs to a controller; a file whose controller is not enabled
//! for the cgroup is absent, and its figure is `None`. Only content that does
//! not match the kernel's documented format is an error.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::kernfile::{self, FileError, Limit, LineError, PressureSet};

/// What went wrong reading one cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup directory does not exist (the cell has ended, or was never started).
    #[error("no cgroup at {0}")]
    NotFound(PathBuf),
    /// One of its files could not be read or parsed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// `cpu.stat` (always present; the throttling keys only with the cpu controller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CpuStat {
    /// CPU time used, microseconds.
    pub usage_usec: u64,
    /// Time throttled by `cpu.max`, microseconds.
    pub throttled_usec: Option<u64>,
    /// Periods in which it was throttled.
    pub nr_throttled: Option<u64>,
}

/// `memory.events`: how often the cgroup hit its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MemoryEvents {
    /// Times usage was about to exceed `memory.max`.
    pub max: u64,
    /// Times the OOM killer was invoked because of `memory.max`.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
}

/// `io.stat`, summed over devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IoStat {
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// One reading of a cgroup's files; `None` where the file does not exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CgroupSample {
    /// `cpu.stat`.
    pub cpu: Option<CpuStat>,
    /// `memory.current`, bytes.
    pub memory_current: Option<u64>,
    /// `memory.max`.
    pub memory_max: Option<Limit>,
    /// `memory.events`.
    pub memory_events: Option<MemoryEvents>,
    /// `cpu.pressure`, `memory.pressure`, `io.pressure`.
    pub pressure: PressureSet,
    /// `io.stat`.
    pub io: Option<IoStat>,
    /// `pids.current`.
    pub pids_current: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<Limit>,
}

/// Reads cgroups below a cgroup v2 mount point (`/sys/fs/cgroup` on a
/// unified host; a temporary tree in tests).
#[derive(Clone, Debug)]
pub struct CgroupReader {
    root: PathBuf,
}

impl CgroupReader {
    /// A reader of the hierarchy mounted at `root`.
    pub fn new(root: PathBuf) -> CgroupReader {
        CgroupReader { root }
    }

    /// The hierarchy's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the cgroup at `cgroup` (relative to the root, for example
    /// `quantum.slice/quantum-web\x2dserver.1.service`; a leading `/` is allowed).
    pub fn read(&self, cgroup: &str) -> Result<CgroupSample, CgroupError> {
        let dir = self.root.join(cgroup.trim_start_matches('/'));
        if !dir.is_dir() {
            return Err(CgroupError::NotFound(dir));
        }
        Ok(CgroupSample {
            cpu: parse_file(&dir, "cpu.stat", parse_cpu_stat)?,
            memory_current: parse_file(&dir, "memory.current", kernfile::single_number)?,
            memory_max: parse_file(&dir, "memory.max", Limit::parse)?,
            memory_events: parse_file(&dir, "memory.events", parse_memory_events)?,
            pressure: PressureSet::read(&dir, |resource| format!("{resource}.pressure"))?,
            io: parse_file(&dir, "io.stat", parse_io_stat)?,
            pids_current: parse_file(&dir, "pids.current", kernfile::single_number)?,
            pids_max: parse_file(&dir, "pids.max", Limit::parse)?,
        })
    }
}

fn parse_file<T>(dir: &Path, name: &str, parse: impl FnOnce(&str) -> Result<T, LineError>) -> Result<Option<T>, FileError> {
    let path = dir.join(name);
    match kernfile::read_optional(&path)? {
        None => Ok(None),
        Some(text) => parse(&text).map(Some).map_err(|e| e.in_file(&path)),
    }
}

fn parse_cpu_stat(text: &str) -> Result<CpuStat, LineError> {
    let mut usage = None;
    let mut stat = CpuStat::default();
    kernfile::flat_keyed(text, |n, key, value| {
        match key {
            "usage_usec" => usage = Some(kernfile::number(n, key, value)?),
            "throttled_usec" => stat.throttled_usec = Some(kernfile::number(n, key, value)?),
            "nr_throttled" => stat.nr_throttled = Some(kernfile::number(n, key, value)?),
            _ => {}
        }
        Ok(())
    })?;
    // usage_usec is written by the core, whatever the controllers: without it the file is not cpu.stat.
    stat.usage_usec = usage.ok_or_else(|| LineError::new(1, "no `usage_usec` line"))?;
    Ok(stat)
}

fn parse_memory_events(text: &str) -> Result<MemoryEvents, LineError> {
    let mut events = MemoryEvents::default();
    kernfile::flat_keyed(text, |n, key, value| {
        match key {
            "max" => events.max = kernfile::number(n, key, value)?,
            "oom" => events.oom = kernfile::number(n, key, value)?,
            "oom_kill" => events.oom_kill = kernfile::number(n, key, value)?,
            // low, high, oom_group_kill, sock_throttled: not figures we report.
            _ => {}
        }
        Ok(())
    })?;
    Ok(events)
}

/// `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..` per device.
fn parse_io_stat(text: &str) -> Result<IoStat, LineError> {
    let mut sum = IoStat::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut words = line.split_whitespace();
        let Some(device) = words.next() else { continue };
        if device
            .split_once(':')
            .is_none_or(|(maj, min)| maj.parse::<u32>().is_err() || min.parse::<u32>().is_err())
        {
            return Err(LineError::new(n, format!("expected a MAJOR:MINOR device, found `{device}`")));
        }
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(LineError::new(n, format!("expected `KEY=VALUE`, found `{word}`")));
            };
            let slot = match key {
                "rbytes" => &mut sum.rbytes,
                "wbytes" => &mut sum.wbytes,
                "rios" => &mut sum.rios,
                "wios" => &mut sum.wios,
                _ => continue,
            };
            *slot = slot.saturating_add(kernfile::number(n, key, value)?);
        }
    }
    Ok(sum)
}
