//! The usage history on disk: one redb file, `DIR/history.redb`.
//!
//! One table maps `(cell, sequence)` to an encoded [`Sample`]; a cell's
//! samples are one contiguous key range, oldest first. Every
//! [`Store::record`] is one write transaction, committed durably (fsync)
//! before it returns: redb's commit flips a checksummed header slot only
//! after the new pages are on disk, so a crash or a torn write in the middle
//! of a record loses that record and nothing before it.

use std::path::{Path, PathBuf};

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::sample::{DecodeError, Sample};

/// `(cell name, per-cell sequence)` -> [`Sample::encode`] bytes.
const SAMPLES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("samples");

/// The file inside the directory the caller gives.
pub const FILE_NAME: &str = "history.redb";

/// How many samples a cell keeps unless the caller says otherwise: enough
/// for a p99 resting on ten runs, small enough (75 KB a cell) to never matter.
pub const DEFAULT_KEEP: usize = 1000;

/// Why the history could not be read or written. Every variant names the
/// store's file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the directory of the usage history {path}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// The file is not a redb database, or its header and both commit
    /// slots are damaged. quantumd leaves such a file alone (evidence) and
    /// says so rather than replacing it.
    #[error("the usage history {path} is corrupt (move it away to start a new history)")]
    Corrupt { path: PathBuf, source: Box<redb::Error> },
    /// A stored sample whose bytes are not a sample.
    #[error("the usage history {path} holds a bad sample for cell {cell:?} (#{seq})")]
    BadSample {
        path: PathBuf,
        cell: String,
        seq: u64,
        source: DecodeError,
    },
    /// Anything else redb reports (I/O errors, the file locked by another
    /// process).
    #[error("the usage history {path} cannot be {action}")]
    Database {
        path: PathBuf,
        action: &'static str,
        source: Box<redb::Error>,
    },
}

/// The usage history of every cell on this node.
#[derive(Debug)]
pub struct Store {
    db: redb::Database,
    path: PathBuf,
    keep: usize,
}

impl Store {
    /// Opens (creating it if needed) the history in `dir`, keeping the
    /// last `keep` samples of each cell (at least 1).
    pub fn open(dir: &Path, keep: usize) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = redb::Database::create(&path).map_err(|e| {
            let e = redb::Error::from(e);
            if is_corruption(&e) {
                StoreError::Corrupt {
                    path: path.clone(),
                    source: Box::new(e),
                }
            } else {
                StoreError::Database {
                    path: path.clone(),
                    action: "opened",
                    source: Box::new(e),
                }
            }
        })?;
        Ok(Store {
            db,
            path,
            keep: keep.max(1),
        })
    }

    /// A store on `backend` (tests: a disk that loses power).
    #[cfg(test)]
    fn with_backend(backend: impl redb::StorageBackend, path: &Path, keep: usize) -> Result<Store, StoreError> {
        let db = redb::Builder::new().create_with_backend(backend).map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            source: Box::new(e.into()),
        })?;
        Ok(Store {
            db,
            path: path.to_owned(),
            keep,
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one sample to `cell`'s history, dropping its oldest beyond
    /// the cap, durably.
    pub fn record(&self, cell: &str, sample: &Sample) -> Result<(), StoreError> {
        let err = |source: redb::Error| self.error("written", source);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut table = txn.open_table(SAMPLES).map_err(|e| err(e.into()))?;
            let range = (cell, 0)..=(cell, u64::MAX);
            let (next, count) = {
                let mut keys = table.range(range.clone()).map_err(|e| err(e.into()))?;
                let last = match keys.next_back() {
                    Some(entry) => Some(entry.map_err(|e| err(e.into()))?.0.value().1),
                    None => None,
                };
                // The range was consumed from the back by one: count it afresh.
                let count = table.range(range.clone()).map_err(|e| err(e.into()))?.count();
                (last.map_or(0, |s| s + 1), count)
            };
            table.insert((cell, next), sample.encode().as_slice()).map_err(|e| err(e.into()))?;
            let excess = (count + 1).saturating_sub(self.keep);
            if excess > 0 {
                let oldest: Vec<u64> = table
                    .range(range)
                    .map_err(|e| err(e.into()))?
                    .take(excess)
                    .map(|entry| entry.map(|(k, _)| k.value().1))
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(e.into()))?;
                for seq in oldest {
                    table.remove((cell, seq)).map_err(|e| err(e.into()))?;
                }
            }
        }
        // Durability::Immediate is redb's default: the commit is on disk
        // when this returns.
        txn.commit().map_err(|e| err(e.into()))
    }

    /// `cell`'s samples, oldest first.
    pub fn samples(&self, cell: &str) -> Result<Vec<Sample>, StoreError> {
        let err = |source: redb::Error| self.error("read", source);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = match txn.open_table(SAMPLES) {
            Ok(t) => t,
            // Nothing was ever recorded.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(err(e.into())),
        };
        let mut out = Vec::new();
        for entry in table.range((cell, 0)..=(cell, u64::MAX)).map_err(|e| err(e.into()))? {
            let (k, v) = entry.map_err(|e| err(e.into()))?;
            let sample = Sample::decode(v.value()).map_err(|source| StoreError::BadSample {
                path: self.path.clone(),
                cell: cell.to_owned(),
                seq: k.value().1,
                source,
            })?;
            out.push(sample);
        }
        Ok(out)
    }

    /// How many samples the whole store holds (all cells).
    pub fn len(&self) -> Result<u64, StoreError> {
        let err = |source: redb::Error| self.error("read", source);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        match txn.open_table(SAMPLES) {
            Ok(t) => t.len().map_err(|e| err(e.into())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(err(e.into())),
        }
    }

    /// Whether nothing was ever recorded (or everything was dropped).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.len().map(|n| n == 0)
    }

    fn error(&self, action: &'static str, source: redb::Error) -> StoreError {
        if is_corruption(&source) {
            StoreError::Corrupt {
                path: self.path.clone(),
                source: Box::new(source),
            }
        } else {
            StoreError::Database {
                path: self.path.clone(),
                action,
                source: Box::new(source),
            }
        }
    }
}

/// redb reports a file that is not (or no longer) a database as
/// `Corrupted`, or as an I/O error of kind `InvalidData` from its header
/// checks.
fn is_corruption(e: &redb::Error) -> bool {
    match e {
        redb::Error::Corrupted(_) => true,
        redb::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::sample::ExitKind;

    /// What reached the disk while the log was on: a write, or `None` for a sync.
    type Event = Option<(u64, Vec<u8>)>;

    /// A disk that can log every write and sync, so that a test can
    /// rebuild what the platters held had power been lost at any point.
    #[derive(Debug, Default)]
    struct Disk {
        bytes: Vec<u8>,
        /// While logging: `Some((offset, data))` per write, `None` per sync.
        log: Option<Vec<Event>>,
    }

    #[derive(Debug, Clone, Default)]
    struct Backend(Arc<Mutex<Disk>>);

    impl Backend {
        fn from_image(bytes: Vec<u8>) -> Backend {
            Backend(Arc::new(Mutex::new(Disk { bytes, log: None })))
        }
        fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl redb::StorageBackend for Backend {
        fn len(&self) -> Result<u64, std::io::Error> {
            Ok(self.disk().bytes.len() as u64)
        }
        fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, std::io::Error> {
            let d = self.disk();
            let start = offset as usize;
            Ok(d.bytes[start..start + len].to_vec())
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            // A length change is metadata the file system journals: it
            // survives the power cut in this model.
            self.disk().bytes.resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self, _eventual: bool) -> Result<(), std::io::Error> {
            if let Some(log) = &mut self.disk().log {
                log.push(None);
            }
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            let mut d = self.disk();
            let start = offset as usize;
            d.bytes[start..start + data.len()].copy_from_slice(data);
            if let Some(log) = &mut d.log {
                log.push(Some((offset, data.to_vec())));
            }
            Ok(())
        }
    }

    fn run(i: u64) -> Sample {
        Sample {
            started_unix: 1_704_067_200 + i,
            run_ms: i,
            exit: ExitKind::Exited,
            memory_peak: Some(i << 20),
            memory_p50: None,
            memory_p95: None,
            cpu_average_cores: None,
            cpu_peak_cores: None,
            runq_p99_us: None,
            tasks_peak: None,
        }
    }

    /// Power is lost in the middle of recording the 21st sample, at every
    /// write of its commit in turn, with that write torn in half: the
    /// store always opens, with the first 20 samples whole, and the 21st
    /// either whole or absent.
    #[test]
    fn a_torn_write_loses_at_most_the_sample_being_written() {
        let path = Path::new("/torn/history.redb");
        let backend = Backend::default();
        let store = Store::with_backend(backend.clone(), path, 1000).unwrap();
        for i in 0..20 {
            store.record("file-sync", &run(i)).unwrap();
        }
        let before = backend.disk().bytes.clone();
        backend.disk().log = Some(Vec::new());
        store.record("file-sync", &run(20)).unwrap();
        let log = backend.disk().log.take().unwrap();
        let final_len = backend.disk().bytes.len();
        drop(store);
        let writes = log.iter().filter(|e| e.is_some()).count();
        assert!(writes > 0);
        let expected: Vec<Sample> = (0..20).map(run).collect();
        for cut in 0..=writes {
            // The image: every write before the cut, then half of the cut one.
            let mut image = before.clone();
            image.resize(image.len().max(final_len), 0);
            for (offset, data) in log.iter().flatten().take(cut) {
                image[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
            }
            if let Some((offset, data)) = log.iter().flatten().nth(cut) {
                let half = data.len() / 2;
                image[*offset as usize..*offset as usize + half].copy_from_slice(&data[..half]);
            }
            let store = Store::with_backend(Backend::from_image(image), path, 1000)
                .unwrap_or_else(|e| panic!("power cut at write {cut} of {writes}: {e:?}"));
            let got = store.samples("file-sync").unwrap();
            assert!(got.len() == 20 || got.len() == 21, "cut at write {cut}: {} samples", got.len());
            assert_eq!(got[..20], expected[..], "cut at write {cut}");
            if got.len() == 21 {
                assert_eq!(got[20], run(20), "cut at write {cut}");
            }
        }
    }
}
