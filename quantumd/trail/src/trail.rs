//! The writer: opening (with recovery), appending, sealing, rotating.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use crate::chain::{walk, Chain, End};
use crate::defect::Defect;
use crate::entry::{Digest, EntryError, NewEntry};
use crate::record::{encode_entry, encode_seal};
use crate::seal::{seal_message, Seal, SignError, Signer, MAX_SIGNATURE};
use crate::segment::{self, append_frame, encode_header, parse_header, Header, HEADER_LEN};

/// Where in the trail something is: a segment file, a byte offset in it, and
/// the entry there (for an unreadable record, the entry expected there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub segment: PathBuf,
    pub offset: u64,
    pub seq: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.segment.display(), self.offset)?;
        if let Some(seq) = self.seq {
            write!(f, " (entry {seq})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("trail {} is held by another process", dir.display())]
    Locked { dir: PathBuf },
    /// Damage that is not a torn tail: `open` leaves the trail as it is
    /// rather than cut away records that may be evidence.
    #[error("{at}: {defect}")]
    Corrupt { at: Location, defect: Defect },
    #[error("entry not appended")]
    Entry(#[from] EntryError),
    #[error("cannot seal entries up to {covers_seq}")]
    Sign {
        covers_seq: u64,
        #[source]
        source: SignError,
    },
    #[error("cannot seal entries up to {covers_seq}: the signer returned {len} bytes, more than {MAX_SIGNATURE}")]
    SignatureTooLong { covers_seq: u64, len: usize },
    #[error("trail {} takes no more entries: a failed write could not be undone", dir.display())]
    Broken { dir: PathBuf },
}

pub(crate) fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// When to rotate and when to seal without being asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// A segment that has reached this size gets no further entries; the next
    /// one starts a new segment.
    pub segment_bytes: u64,
    /// Seal after this many unsealed entries even if `seal` is not called.
    pub seal_every: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            segment_bytes: 16 * 1024 * 1024,
            seal_every: 4096,
        }
    }
}

/// A torn tail that `open` cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where the cut was made; `seq` is the first entry that was lost (if the
    /// torn record was an entry and not a seal).
    pub at: Location,
    pub bytes_dropped: u64,
    pub defect: Defect,
}

/// A seal that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealInfo {
    pub first_seq: u64,
    pub covers_seq: u64,
    pub segment: PathBuf,
}

/// What `open` found and did, for the daemon to log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// The directory held no segment and a first one was made.
    pub created: bool,
    /// Segments whose header a crash cut short (so they held no record),
    /// removed.
    pub removed_segments: Vec<PathBuf>,
    pub torn: Option<TornTail>,
    /// Entries a crash left unsealed, sealed now.
    pub sealed: Option<SealInfo>,
    /// The sequence number the next entry gets.
    pub next_seq: u64,
}

/// An open trail: the one writer of its directory.
pub struct Trail {
    dir: PathBuf,
    config: Config,
    signer: Box<dyn Signer + Send>,
    // Held for the lock (flock on the directory), released when dropped.
    _lock: File,
    file: File,
    segment: PathBuf,
    segment_len: u64,
    chain: Chain,
    buf: Vec<u8>,
    broken: bool,
}

impl fmt::Debug for Trail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trail")
            .field("dir", &self.dir)
            .field("segment", &self.segment)
            .field("chain", &self.chain)
            .finish()
    }
}

impl Trail {
    /// Opens the trail in `dir` (made if missing) for appending, after
    /// recovery: a segment whose header was cut short is removed, a torn
    /// record at the end of the last segment is cut off, and entries a crash
    /// left unsealed are sealed. Any other damage in the last segment is
    /// refused with [`Error::Corrupt`] and nothing is changed. Earlier
    /// segments are not read; [`crate::verify`] checks them.
    pub fn open(dir: &Path, config: Config, signer: Box<dyn Signer + Send>) -> Result<(Trail, OpenReport), Error> {
        fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        let lock = lock(dir)?;
        let mut report = OpenReport::default();
        let mut segments = segment::list(dir).map_err(io_error("list", dir))?;

        let (path, chain, len) = loop {
            let Some(last) = segments.pop() else {
                let header = Header {
                    first_seq: 1,
                    prev: Digest::GENESIS,
                };
                let path = create_segment(dir, &header)?;
                info!(segment = %path.display(), "new trail");
                report.created = true;
                break (path, Chain::from_header(&header), HEADER_LEN as u64);
            };
            let bytes = fs::read(&last.path).map_err(io_error("read", &last.path))?;
            let at = |offset: usize, seq: Option<u64>| Location {
                segment: last.path.clone(),
                offset: offset as u64,
                seq,
            };
            let header = match parse_header(&bytes) {
                Ok(h) => h,
                // Only a crash while rotating leaves a short header, and a
                // segment is given records only after its header is synced.
                Err(Defect::HeaderTruncated { len }) => {
                    warn!(segment = %last.path.display(), len, "removing a segment whose header a crash cut short");
                    fs::remove_file(&last.path).map_err(io_error("remove", &last.path))?;
                    sync_dir(dir)?;
                    report.removed_segments.push(last.path);
                    continue;
                }
                Err(defect) => {
                    return Err(Error::Corrupt {
                        at: at(0, Some(last.first_seq)),
                        defect,
                    })
                }
            };
            if header.first_seq != last.first_seq {
                let defect = Defect::NameMismatch {
                    named: last.first_seq,
                    header: header.first_seq,
                };
                return Err(Error::Corrupt {
                    at: at(0, Some(last.first_seq)),
                    defect,
                });
            }
            let mut chain = Chain::from_header(&header);
            let (end, good) = walk(&bytes, &mut chain, |_| Ok(()));
            match end {
                End::Clean => {}
                End::Torn { offset, defect } => {
                    let dropped = bytes.len() - offset;
                    let torn = TornTail {
                        at: at(offset, Some(chain.next_seq)),
                        bytes_dropped: dropped as u64,
                        defect,
                    };
                    warn!(at = %torn.at, bytes = dropped, defect = %torn.defect, "cutting off a torn record left by a crash");
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&last.path)
                        .map_err(io_error("open", &last.path))?;
                    file.set_len(offset as u64).map_err(io_error("truncate", &last.path))?;
                    file.sync_all().map_err(io_error("sync", &last.path))?;
                    report.torn = Some(torn);
                }
                End::Corrupt { offset, seq, defect } => {
                    return Err(Error::Corrupt {
                        at: at(offset, seq),
                        defect,
                    })
                }
            }
            break (last.path, chain, good as u64);
        };

        let file = OpenOptions::new().append(true).open(&path).map_err(io_error("open", &path))?;
        let mut trail = Trail {
            dir: dir.to_owned(),
            config,
            signer,
            _lock: lock,
            file,
            segment: path,
            segment_len: len,
            chain,
            buf: Vec::with_capacity(4096),
            broken: false,
        };
        if trail.chain.unsealed().is_some() {
            report.sealed = trail.seal()?;
            if let Some(s) = &report.sealed {
                info!(first = s.first_seq, last = s.covers_seq, "sealed entries a crash left unsealed");
            }
        }
        report.next_seq = trail.chain.next_seq;
        Ok((trail, report))
    }

    /// Appends an entry, stamped with the next sequence number and the
    /// current time, and returns its sequence number. The record is handed to
    /// the kernel with one write(2) before this returns, so it survives a
    /// crash of the process; it survives a power loss once a seal after it
    /// has been written (see the crate docs). Seals by itself every
    /// `Config::seal_every` entries.
    pub fn append(&mut self, new: NewEntry) -> Result<u64, Error> {
        if self.broken {
            return Err(Error::Broken { dir: self.dir.clone() });
        }
        let entry = new.into_entry(self.chain.next_seq, now_ns());
        entry.validate()?;
        if self.segment_len >= self.config.segment_bytes && self.segment_len > HEADER_LEN as u64 {
            self.rotate()?;
        }
        self.buf.clear();
        let prev = self.chain.head;
        let hash = append_frame(&mut self.buf, |out| encode_entry(&prev, &entry, out));
        self.write_buf()?;
        let record = crate::record::Record::Entry { prev, entry };
        // The chain accepts what was just built from it; a failure here would
        // be a bug in this file, and is reported rather than hidden.
        if let Err(defect) = self.chain.step(&record, hash) {
            return Err(Error::Corrupt {
                at: self.here(None),
                defect,
            });
        }
        let seq = self.chain.next_seq - 1;
        if self.unsealed() >= self.config.seal_every {
            self.seal()?;
        }
        Ok(seq)
    }

    /// Writes a seal over the chain head if any entry is unsealed, then
    /// fsyncs the segment: the group commit. quantumd calls it from a timer
    /// so that no entry stays unsealed for long.
    pub fn seal(&mut self) -> Result<Option<SealInfo>, Error> {
        if self.broken {
            return Err(Error::Broken { dir: self.dir.clone() });
        }
        let Some((first_seq, covers_seq)) = self.chain.unsealed() else {
            return Ok(None);
        };
        let time_ns = now_ns();
        let key_id = self.signer.key_id();
        let head = self.chain.head;
        let signature = self
            .signer
            .sign(&seal_message(&head, covers_seq, time_ns, &key_id))
            .map_err(|source| Error::Sign { covers_seq, source })?;
        if signature.len() > MAX_SIGNATURE {
            return Err(Error::SignatureTooLong {
                covers_seq,
                len: signature.len(),
            });
        }
        let seal = Seal {
            head,
            covers_seq,
            time_ns,
            key_id,
            signature,
        };
        self.buf.clear();
        let hash = append_frame(&mut self.buf, |out| encode_seal(&seal, out));
        self.write_buf()?;
        if let Err(defect) = self.chain.step(&crate::record::Record::Seal(seal), hash) {
            return Err(Error::Corrupt {
                at: self.here(Some(covers_seq)),
                defect,
            });
        }
        self.file.sync_data().map_err(io_error("sync", &self.segment))?;
        debug!(first_seq, covers_seq, "sealed");
        Ok(Some(SealInfo {
            first_seq,
            covers_seq,
            segment: self.segment.clone(),
        }))
    }

    /// Seals what is unsealed and closes the trail.
    pub fn close(mut self) -> Result<(), Error> {
        self.seal().map(drop)
    }

    /// The hash of the last record written.
    pub fn head(&self) -> Digest {
        self.chain.head
    }

    /// The sequence number of the last entry, if there is one.
    pub fn last_seq(&self) -> Option<u64> {
        self.chain.last_entry
    }

    /// How many entries wait for a seal.
    pub fn unsealed(&self) -> u64 {
        self.chain.unsealed().map_or(0, |(first, last)| last - first + 1)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being appended to.
    pub fn segment(&self) -> &Path {
        &self.segment
    }

    fn here(&self, seq: Option<u64>) -> Location {
        Location {
            segment: self.segment.clone(),
            offset: self.segment_len,
            seq,
        }
    }

    fn write_buf(&mut self) -> Result<(), Error> {
        if let Err(source) = self.file.write_all(&self.buf) {
            // A partial record would read as a torn tail and be cut off at
            // the next open, but every record appended after it would go with
            // it: undo it now, or take no more entries.
            if self.file.set_len(self.segment_len).is_err() {
                self.broken = true;
            }
            return Err(Error::Io {
                op: "append to",
                path: self.segment.clone(),
                source,
            });
        }
        self.segment_len += self.buf.len() as u64;
        Ok(())
    }

    /// Seals the full segment (so that every segment but the last ends
    /// sealed, and `open` need read only the last one), then starts the next.
    fn rotate(&mut self) -> Result<(), Error> {
        self.seal()?;
        let header = Header {
            first_seq: self.chain.next_seq,
            prev: self.chain.head,
        };
        let path = create_segment(&self.dir, &header)?;
        self.file = OpenOptions::new().append(true).open(&path).map_err(io_error("open", &path))?;
        debug!(from = %self.segment.display(), to = %path.display(), "rotated");
        self.segment = path;
        self.segment_len = HEADER_LEN as u64;
        Ok(())
    }
}

/// Makes a segment holding only its header, synced with its directory entry
/// before any record goes into it.
fn create_segment(dir: &Path, header: &Header) -> Result<PathBuf, Error> {
    let path = dir.join(segment::file_name(header.first_seq));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_error("create", &path))?;
    file.write_all(&encode_header(header)).map_err(io_error("write", &path))?;
    file.sync_all().map_err(io_error("sync", &path))?;
    sync_dir(dir)?;
    Ok(path)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("sync", dir))
}

/// One writer per directory: an advisory lock on the directory itself, so
/// that a second quantumd (or a test) fails at open instead of interleaving
/// records.
fn lock(dir: &Path) -> Result<File, Error> {
    let file = File::open(dir).map_err(io_error("open", dir))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for
    // the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Err(Error::Locked { dir: dir.to_owned() });
        }
        return Err(Error::Io {
            op: "lock",
            path: dir.to_owned(),
            source: err,
        });
    }
    Ok(file)
}

fn now_ns() -> u64 {
    // A clock before 1970 is recorded as 0 rather than refused: the trail
    // must keep recording on a machine with a bad clock.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
