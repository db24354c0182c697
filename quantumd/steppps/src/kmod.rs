//! Figures from the QuantumOS `steppps` kernel module (`kmod/steppps/`),
//! which exposes them as one text record in `/dev/steppps`:
//!
//! ```text
//! generation 7
//! samples 1234
//! interval_ms 250
//! sampled_at_ms 308500
//! loadavg 0.42 0.17 0.05
//! cpus_online 2
//! mem_total_kb 473560
//! mem_free_kb 431988
//! ```
//!
//! The module is optional: without it (Debian's kernel, the module not
//! loaded, a sandbox that does not show the device) [`KmodError::NotLoaded`]
//! or [`KmodError::Denied`] say why, and the node figures come from /proc
//! and eBPF as before.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::figures::KernelFigures;
use crate::kernfile::{self, FileError, LineError};

/// Where the module's device appears.
pub const DEVICE: &str = "/dev/steppps";

/// The device answers a read with the whole record or `EINVAL`; a record
/// is at most 512 bytes, so one read into this much always gets it.
const READ_BUFFER: usize = 4096;

/// Why the module's figures could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// No device, or a device whose module has been unloaded since it was
    /// opened or bound into a sandbox (ENODEV, ENXIO).
    #[error("{path} is not there (the steppps kernel module is not loaded)")]
    NotLoaded {
        /// The device.
        path: PathBuf,
    },
    /// The device exists but may not be opened here: a service's device
    /// policy does not allow it (quantumd.service without the steppps
    /// drop-in), or allowed the device of a module unloaded since.
    #[error("{path} may not be opened here (a device policy without it, or its module was unloaded since this service started)")]
    Denied {
        /// The device.
        path: PathBuf,
        /// What open(2) said.
        #[source]
        source: io::Error,
    },
    /// Reading failed otherwise, or the record did not parse.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Reads `/dev/steppps` (or a fixture file standing in for it).
#[derive(Clone, Debug)]
pub struct KmodReader {
    path: PathBuf,
}

impl KmodReader {
    /// A reader of the device at `path`.
    pub fn new(path: PathBuf) -> KmodReader {
        KmodReader { path }
    }

    /// The device (or file) read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and parses one record.
    ///
    /// One `read(2)` at offset 0 with a buffer that holds any record: the
    /// device refuses a smaller buffer with `EINVAL` (it never hands out
    /// half a record), and `read_to_string`'s first, small probe read
    /// would be one.
    pub fn read(&self) -> Result<KernelFigures, KmodError> {
        let mut file = std::fs::File::open(&self.path).map_err(|e| self.open_error(e))?;
        let mut buf = vec![0u8; READ_BUFFER];
        let n = loop {
            match file.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.open_error(e)),
            }
        };
        let text = std::str::from_utf8(&buf[..n]).map_err(|_| LineError::new(1, "the record is not UTF-8").in_file(&self.path))?;
        let mut figures = parse(text).map_err(|e| KmodError::File(e.in_file(&self.path)))?;
        figures.device = self.path.display().to_string();
        Ok(figures)
    }

    fn open_error(&self, source: io::Error) -> KmodError {
        let gone = source.kind() == io::ErrorKind::NotFound || matches!(source.raw_os_error(), Some(libc::ENODEV | libc::ENXIO));
        if gone {
            return KmodError::NotLoaded { path: self.path.clone() };
        }
        if source.kind() == io::ErrorKind::PermissionDenied {
            return KmodError::Denied {
                path: self.path.clone(),
                source,
            };
        }
        KmodError::File(FileError::Read {
            path: self.path.clone(),
            source,
        })
    }
}

/// Fails when a key's slot is filled already.
fn once<T>(slot: &Option<T>, line: usize, key: &str) -> Result<(), LineError> {
    match slot {
        Some(_) => Err(LineError::new(line, format!("`{key}` appears twice"))),
        None => Ok(()),
    }
}

/// Parses one record. Keys may come in any order; unknown keys are
/// skipped (a newer module may add some); each known key must be there once.
pub(crate) fn parse(text: &str) -> Result<KernelFigures, LineError> {
    let mut generation = None;
    let mut samples = None;
    let mut interval_ms = None;
    let mut sampled_at_ms = None;
    let mut load = None;
    let mut cpus_online = None;
    let mut mem_total_kb = None;
    let mut mem_free_kb = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(' ')
            .ok_or_else(|| LineError::new(n, format!("expected `KEY VALUE`, found `{line}`")))?;
        match key {
            "generation" => {
                once(&generation, n, key)?;
                generation = Some(kernfile::number::<u64>(n, key, value)?);
            }
            "samples" => {
                once(&samples, n, key)?;
                samples = Some(kernfile::number::<u64>(n, key, value)?);
            }
            "interval_ms" => {
                once(&interval_ms, n, key)?;
                interval_ms = Some(kernfile::number::<u64>(n, key, value)?);
            }
            "sampled_at_ms" => {
                once(&sampled_at_ms, n, key)?;
                sampled_at_ms = Some(kernfile::number::<u64>(n, key, value)?);
            }
            "cpus_online" => {
                once(&cpus_online, n, key)?;
                cpus_online = Some(kernfile::number::<u32>(n, key, value)?);
            }
            "mem_total_kb" => {
                once(&mem_total_kb, n, key)?;
                mem_total_kb = Some(kernfile::number::<u64>(n, key, value)?);
            }
            "mem_free_kb" => {
                once(&mem_free_kb, n, key)?;
                mem_free_kb = Some(kernfile::number::<u64>(n, key, value)?);
            }
            "loadavg" => {
                once(&load, n, key)?;
                let words: Vec<&str> = value.split(' ').collect();
                let [one, five, fifteen] = words[..] else {
                    return Err(LineError::new(n, format!("`loadavg`: expected 3 numbers, found `{value}`")));
                };
                load = Some([
                    kernfile::number::<f64>(n, "loadavg 1 minute", one)?,
                    kernfile::number::<f64>(n, "loadavg 5 minutes", five)?,
                    kernfile::number::<f64>(n, "loadavg 15 minutes", fifteen)?,
                ]);
            }
            _ => {}
        }
    }
    let line_count = text.lines().count().max(1);
    let missing = |key: &str| LineError::new(line_count, format!("no `{key}` line"));
    let [load_one, load_five, load_fifteen] = load.ok_or_else(|| missing("loadavg"))?;
    let kib = |v: u64| v.saturating_mul(1024);
    Ok(KernelFigures {
        device: String::new(),
        generation: generation.ok_or_else(|| missing("generation"))?,
        samples: samples.ok_or_else(|| missing("samples"))?,
        interval_ms: interval_ms.ok_or_else(|| missing("interval_ms"))?,
        sampled_at_ms: sampled_at_ms.ok_or_else(|| missing("sampled_at_ms"))?,
        load_one,
        load_five,
        load_fifteen,
        cpus_online: cpus_online.ok_or_else(|| missing("cpus_online"))?,
        memory_total_bytes: kib(mem_total_kb.ok_or_else(|| missing("mem_total_kb"))?),
        memory_free_bytes: kib(mem_free_kb.ok_or_else(|| missing("mem_free_kb"))?),
    })
}
