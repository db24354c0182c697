//! Reading entries back, oldest first, for `trail show` and the PSYCHOLOGY
//! history.

use std::fs;
use std::path::Path;

use crate::chain::{walk, Chain, End};
use crate::defect::Defect;
use crate::entry::Entry;
use crate::record::Record;
use crate::segment::{self, parse_header, SegmentFile};
use crate::trail::{io_error, Error, Location};

/// Which entries to return. The default returns every one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only entries about this cell.
    pub cell: Option<String>,
    /// Only entries with this sequence number or a later one.
    pub since_seq: Option<u64>,
}

impl Filter {
    fn accepts(&self, e: &Entry) -> bool {
        self.since_seq.is_none_or(|s| e.seq >= s) && self.cell.as_ref().is_none_or(|c| e.cell.as_ref() == Some(c))
    }
}

/// The entries of a trail that pass a filter, oldest first. Reading checks
/// every record's checksum and the chain inside each segment and across
/// segments, so a damaged record ends the iteration with an error rather than
/// being shown; it does not check seal signatures ([`crate::verify`] does).
/// A torn record at the very end is taken as the end: it is either a crash
/// not yet repaired or a record being written right now.
pub struct Entries {
    segments: std::vec::IntoIter<SegmentFile>,
    remaining: usize,
    filter: Filter,
    chain: Option<Chain>,
    ready: std::vec::IntoIter<Entry>,
    // Damage found while loading a segment, returned after the entries
    // before it; then the iteration ends.
    pending: Option<Error>,
    failed: bool,
}

/// Reads the trail in `dir`; see [`Entries`].
pub fn entries(dir: &Path, filter: Filter) -> Result<Entries, Error> {
    let mut segments = segment::list(dir).map_err(io_error("list", dir))?;
    // Segments wholly before `since_seq` are skipped unread. The chain then
    // starts from the first segment read, at its header's word.
    let mut chain = Some(Chain::genesis());
    if let Some(since) = filter.since_seq {
        let skip = segments.windows(2).take_while(|w| w[1].first_seq <= since).count();
        if skip > 0 {
            segments.drain(..skip);
            chain = None;
        }
    }
    Ok(Entries {
        remaining: segments.len(),
        segments: segments.into_iter(),
        filter,
        chain,
        ready: Vec::new().into_iter(),
        pending: None,
        failed: false,
    })
}

impl Entries {
    /// The segment's entries that pass the filter, up to any damage, and the
    /// damage.
    fn load(&mut self, seg: &SegmentFile) -> (Vec<Entry>, Option<Error>) {
        match self.load_inner(seg) {
            Ok((entries, damage)) => (entries, damage),
            Err(e) => (Vec::new(), Some(e)),
        }
    }

    fn load_inner(&mut self, seg: &SegmentFile) -> Result<(Vec<Entry>, Option<Error>), Error> {
        let bytes = fs::read(&seg.path).map_err(io_error("read", &seg.path))?;
        let at = |offset: usize, seq: Option<u64>| Location {
            segment: seg.path.clone(),
            offset: offset as u64,
            seq,
        };
        let header = parse_header(&bytes).map_err(|defect| Error::Corrupt {
            at: at(0, Some(seg.first_seq)),
            defect,
        })?;
        if header.first_seq != seg.first_seq {
            let defect = Defect::NameMismatch {
                named: seg.first_seq,
                header: header.first_seq,
            };
            return Err(Error::Corrupt {
                at: at(0, Some(seg.first_seq)),
                defect,
            });
        }
        let mut chain = match self.chain.take() {
            Some(chain) => {
                chain.check_header(&header).map_err(|defect| Error::Corrupt {
                    at: at(0, Some(header.first_seq)),
                    defect,
                })?;
                chain
            }
            None => Chain::from_header(&header),
        };
        let mut out = Vec::new();
        let filter = &self.filter;
        let (end, _) = walk(&bytes, &mut chain, |record| {
            if let Record::Entry { entry, .. } = record {
                if filter.accepts(entry) {
                    out.push(entry.clone());
                }
            }
            Ok(())
        });
        let damage = match end {
            End::Clean => None,
            End::Torn { .. } if self.remaining == 0 => None,
            End::Torn { offset, defect } => Some(Error::Corrupt {
                at: at(offset, Some(chain.next_seq)),
                defect,
            }),
            End::Corrupt { offset, seq, defect } => Some(Error::Corrupt {
                at: at(offset, seq),
                defect,
            }),
        };
        self.chain = Some(chain);
        Ok((out, damage))
    }
}

impl Iterator for Entries {
    type Item = Result<Entry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.ready.next() {
                return Some(Ok(e));
            }
            if let Some(e) = self.pending.take() {
                self.failed = true;
                return Some(Err(e));
            }
            if self.failed {
                return None;
            }
            let seg = self.segments.next()?;
            self.remaining -= 1;
            let (entries, damage) = self.load(&seg);
            self.ready = entries.into_iter();
            self.pending = damage;
        }
    }
}
