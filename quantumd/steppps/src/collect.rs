//! One pass over everything: the node, each cell's cgroup, the GPUs, the
//! `steppps` kernel module when it is loaded, and the TIME/EVENT figures
//! the caller got from quantum-bpf.

use std::path::PathBuf;
use std::time::Instant;

use crate::cgroup::{CgroupError, CgroupReader};
use crate::figures::{Availability, EventFigures, Figures, KernelFigures, TimeFigures};
use crate::gpu::Gpus;
use crate::kernfile::FileError;
use crate::kmod::{KmodError, KmodReader};
use crate::proc::ProcReader;
use crate::sampler::{CellCgroup, Sampler};

/// Where the collector reads from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The cgroup v2 mount point (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The procfs mount point (`/proc`).
    pub proc_root: PathBuf,
    /// The `steppps` kernel module's device ([`crate::kmod::DEVICE`]);
    /// `None` does not look for it.
    pub kmod_device: Option<PathBuf>,
}

impl Default for Sources {
    fn default() -> Sources {
        Sources {
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            proc_root: PathBuf::from("/proc"),
            kmod_device: Some(PathBuf::from(crate::kmod::DEVICE)),
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
    kmod: Option<KmodReader>,
    /// Whether the device was readable at the previous read, so that a
    /// change (module loaded or unloaded) is logged once.
    kmod_readable: Option<bool>,
}

impl Collector {
    /// A collector over `sources` with the GPU backend already probed. It
    /// reads the kernel module's device once here, to log whether it is
    /// used, and again at every collection (the module may come and go).
    pub fn new(sources: Sources, gpus: Gpus) -> Collector {
        let mut collector = Collector {
            cgroups: CgroupReader::new(sources.cgroup_root),
            proc: ProcReader::new(sources.proc_root),
            gpus,
            sampler: Sampler::new(),
            kmod: sources.kmod_device.map(KmodReader::new),
            kmod_readable: None,
        };
        collector.kernel();
        collector
    }

    /// The kernel module's figures, or why there are none; logs when the
    /// device becomes readable or stops being readable.
    fn kernel(&mut self) -> Availability<KernelFigures> {
        let Some(reader) = &self.kmod else {
            return Availability::unavailable("the steppps kernel module's device is not read (none configured)");
        };
        let result = reader.read();
        let readable = result.is_ok();
        if self.kmod_readable != Some(readable) {
            match &result {
                Ok(k) => tracing::info!(
                    device = %reader.path().display(),
                    generation = k.generation,
                    interval_ms = k.interval_ms,
                    "STEPPPS: reading node figures from the steppps kernel module"
                ),
                Err(e) => tracing::info!(
                    reason = %error_chain(e),
                    "STEPPPS: the steppps kernel module is not used; node figures from /proc, TIME and EVENT from eBPF"
                ),
            }
        } else if let Err(e @ KmodError::File(_)) = &result {
            tracing::debug!(error = %error_chain(e), "reading the steppps kernel module failed again");
        }
        self.kmod_readable = Some(readable);
        match result {
            Ok(k) => Availability::Available(k),
            Err(e) => Availability::unavailable(error_chain(&e)),
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
        let kernel = self.kernel();
        let mut figures = Figures {
            node,
            gpus: self.gpus.figures(),
            time,
            event,
            kernel,
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

/// An error and its sources on one line (`a: b: c`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
