//! Turning successive readings into rates.
//!
//! The kernel exports counters (CPU microseconds, bytes read); what a person
//! or the scheduler wants is a rate. The sampler keeps the previous reading
//! of the node and of each cgroup, with the moment it was taken.

use std::collections::HashMap;
use std::time::Instant;

use crate::cgroup::CgroupSample;
use crate::figures::{CellFigures, CellRates, NodeFigures};
use crate::proc::{CpuTimes, NodeSample};

/// Which cell instance a cgroup belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellCgroup {
    /// The cell's name (`web-server`).
    pub cell: String,
    /// The instance (`web-server.1`).
    pub instance: String,
    /// Its cgroup, relative to the cgroup v2 root.
    pub cgroup: String,
}

/// The previous readings.
#[derive(Debug, Default)]
pub struct Sampler {
    node: Option<CpuTimes>,
    cells: HashMap<String, (Instant, CgroupSample)>,
}

impl Sampler {
    /// A sampler with no history: the first figures have no rates.
    pub fn new() -> Sampler {
        Sampler::default()
    }

    /// Node figures from a reading; the busy fraction is over the time since the previous one.
    ///
    /// /proc/stat counts ticks of all CPUs, so the fraction needs no clock.
    pub fn node(&mut self, sample: &NodeSample) -> NodeFigures {
        let cpu_busy = self.node.and_then(|prev| {
            let total = sample.cpu.total.checked_sub(prev.total)?;
            let busy = sample.cpu.busy.checked_sub(prev.busy)?;
            (total > 0).then(|| busy as f64 / total as f64)
        });
        self.node = Some(sample.cpu);
        NodeFigures {
            cpus: sample.cpus,
            cpu_busy,
            memory_total_bytes: sample.memory_total,
            memory_available_bytes: sample.memory_available,
            load: sample.load,
            pressure: sample.pressure,
        }
    }

    /// Cell figures from a reading of its cgroup taken at `at`; rates are
    /// over the time since the previous reading of the same cgroup.
    pub fn cell(&mut self, cell: &CellCgroup, sample: CgroupSample, at: Instant) -> CellFigures {
        let rates = match self.cells.get(&cell.cgroup) {
            Some((then, prev)) => rates(prev, &sample, at.saturating_duration_since(*then).as_secs_f64()),
            None => CellRates::default(),
        };
        self.cells.insert(cell.cgroup.clone(), (at, sample));
        CellFigures {
            cell: cell.cell.clone(),
            cgroup: cell.cgroup.clone(),
            rates,
            readings: sample,
        }
    }

    /// Forgets cgroups not in `live`, so that ended cells do not accumulate.
    pub fn retain(&mut self, live: &[CellCgroup]) {
        self.cells.retain(|cgroup, _| live.iter().any(|c| &c.cgroup == cgroup));
    }
}

/// Per-second rates from two readings `seconds` apart.
fn rates(prev: &CgroupSample, now: &CgroupSample, seconds: f64) -> CellRates {
    if seconds <= 0.0 {
        return CellRates::default();
    }
    // A counter that went backwards means a new cgroup under the same name: no rate rather than a negative one.
    let per_second = |a: Option<u64>, b: Option<u64>| Some(b?.checked_sub(a?)? as f64 / seconds);
    let cpu = |f: fn(&crate::cgroup::CpuStat) -> Option<u64>| per_second(prev.cpu.as_ref().and_then(f), now.cpu.as_ref().and_then(f));
    let io = |f: fn(&crate::cgroup::IoStat) -> u64| per_second(prev.io.as_ref().map(f), now.io.as_ref().map(f));
    CellRates {
        cpu_cores: cpu(|c| Some(c.usage_usec)).map(|usec| usec / 1e6),
        cpu_throttled: cpu(|c| c.throttled_usec).map(|usec| usec / 1e6),
        io_read_bytes_per_second: io(|s| s.rbytes),
        io_write_bytes_per_second: io(|s| s.wbytes),
    }
}
