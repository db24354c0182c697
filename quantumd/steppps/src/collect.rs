//! One pass over everything: the node, each cell's cgroup, the GPUs, and
//! the TIME/EVENT figures the caller got from quantum-bpf.

use std::path::PathBuf;
use std::time::Instant;

use crate::cgroup::{CgroupError, CgroupReader};
use crate::figures::{Availability, EventFigures, Figures, TimeFigures};
use crate::gpu::Gpus;
use crate::kernfile::FileError;
use crate::proc::ProcReader;
use crate::sampler::{CellCgroup, Sampler};

/// Where the collector reads from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The cgroup v2 mount point (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The procfs mount point (`/proc`).
    pub proc_root: PathBuf,
}

impl Default for Sources {
    fn default() -> Sources {
        Sources {
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// Figures, and the cells whose cgroups could not be read (left out of the figures).
#[derive(Debug)]
pub struct Collection {
    /// What was read.
    pub figures: Figures,
    /// Instance and why its cgroup could not be read; a cell that ended
    /// between listing and reading shows up here as `NotFound`.
    pub errors: Vec<(String, CgroupError)>,
}

/// Reads figures and keeps what rates need between reads.
#[derive(Debug)]
pub struct Collector {
    cgroups: CgroupReader,
    proc: ProcReader,
    gpus: Gpus,
    sampler: Sampler,
}

impl Collector {
    /// A collector over `sources` with the GPU backend already probed.
    pub fn new(sources: Sources, gpus: Gpus) -> Collector {
        Collector {
            cgroups: CgroupReader::new(sources.cgroup_root),
            proc: ProcReader::new(sources.proc_root),
            gpus,
            sampler: Sampler::new(),
        }
    }

    /// Reads the node and the given cells now; fails only when procfs cannot be read.
    pub fn collect(
        &mut self,
        cells: &[CellCgroup],
        time: Availability<TimeFigures>,
        event: Availability<EventFigures>,
    ) -> Result<Collection, FileError> {
        let node = self.sampler.node(&self.proc.read()?);
        let mut figures = Figures {
            node,
            gpus: self.gpus.figures(),
            time,
            event,
            ..Figures::default()
        };
        let mut errors = Vec::new();
        for cell in cells {
            match self.cgroups.read(&cell.cgroup) {
                Ok(sample) => {
                    let f = self.sampler.cell(cell, sample, Instant::now());
                    figures.cells.insert(cell.instance.clone(), f);
                }
                Err(e) => errors.push((cell.instance.clone(), e)),
            }
        }
        self.sampler.retain(cells);
        Ok(Collection { figures, errors })
    }
}
