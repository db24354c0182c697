//! Walking a segment's records while checking the chain: the one loop behind
//! `open` (which repairs a torn tail or refuses) and `verify` (which also
//! checks seal signatures and reports).

use crate::defect::Defect;
use crate::entry::{Digest, Entry};
use crate::record::{decode, Record};
use crate::seal::Seal;
use crate::segment::{next_intact_frame, read_frame, Frame, Header, HEADER_LEN};

/// Where the chain stands after the records walked so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    /// Hash of the last record (entry or seal).
    pub head: Digest,
    pub next_seq: u64,
    pub last_entry: Option<u64>,
    pub last_sealed: Option<u64>,
    pub entries: u64,
    pub seals: u64,
}

impl Chain {
    pub fn genesis() -> Chain {
        Chain {
            head: Digest::GENESIS,
            next_seq: 1,
            last_entry: None,
            last_sealed: None,
            entries: 0,
            seals: 0,
        }
    }

    /// Takes a segment's header at its word: used by `open`, which reads only
    /// the last segment. Everything before the segment counts as sealed,
    /// since the writer seals before it rotates.
    pub fn from_header(h: &Header) -> Chain {
        let last = h.first_seq.checked_sub(1).filter(|&s| s > 0);
        Chain {
            head: h.prev,
            next_seq: h.first_seq,
            last_entry: last,
            last_sealed: last,
            entries: 0,
            seals: 0,
        }
    }

    /// Entries after the last seal, as (first, last) sequence numbers.
    pub fn unsealed(&self) -> Option<(u64, u64)> {
        let last = self.last_entry?;
        let first = self.last_sealed.map_or(Some(1), |s| s.checked_add(1))?;
        (first <= last).then_some((first, last))
    }

    /// Checks that `h` continues the chain where it stands.
    pub fn check_header(&self, h: &Header) -> Result<(), Defect> {
        if h.prev != self.head {
            return Err(Defect::ChainBreak {
                expected: self.head,
                found: h.prev,
            });
        }
        if h.first_seq != self.next_seq {
            return Err(Defect::SeqGap {
                expected: self.next_seq,
                found: h.first_seq,
            });
        }
        Ok(())
    }

    /// Checks one record against the chain and advances past it.
    pub fn step(&mut self, record: &Record, hash: Digest) -> Result<(), Defect> {
        self.check(record)?;
        self.advance(record, hash);
        Ok(())
    }

    /// Checks that `record` continues the chain where it stands.
    pub fn check(&self, record: &Record) -> Result<(), Defect> {
        if *record.prev() != self.head {
            return Err(Defect::ChainBreak {
                expected: self.head,
                found: *record.prev(),
            });
        }
        match record {
            Record::Entry { entry, .. } if entry.seq != self.next_seq => Err(Defect::SeqGap {
                expected: self.next_seq,
                found: entry.seq,
            }),
            Record::Entry { .. } => Ok(()),
            Record::Seal(seal) => match self.last_entry {
                None => Err(Defect::SealWithoutEntries),
                Some(last) if seal.covers_seq != last => Err(Defect::SealCovers {
                    claims: seal.covers_seq,
                    last,
                }),
                Some(_) => Ok(()),
            },
        }
    }

    /// Moves past a record that [`Chain::check`] accepted.
    fn advance(&mut self, record: &Record, hash: Digest) {
        match record {
            Record::Entry { entry, .. } => {
                self.last_entry = Some(entry.seq);
                self.next_seq = entry.seq.saturating_add(1);
                self.entries += 1;
            }
            Record::Seal(seal) => {
                self.last_sealed = Some(seal.covers_seq);
                self.seals += 1;
            }
        }
        self.head = hash;
    }
}

/// How a walk through a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Every byte was an intact record that continues the chain.
    Clean,
    /// A damaged record at `offset` with nothing intact after it: what a
    /// write cut short by a crash leaves.
    Torn { offset: usize, defect: Defect },
    /// Damage with intact records after it, or an intact record that does
    /// not continue the chain (or that `visit` refused): not a crash.
    Corrupt { offset: usize, seq: Option<u64>, defect: Defect },
}

/// Walks the records of one segment (header already checked) through
/// `chain`, calling `visit` for each record the chain accepts, before the
/// chain moves past it; an `Err` from `visit` stops the walk as corruption at
/// that record. Returns how the walk ended and the offset just past the last
/// record accepted.
pub(crate) fn walk(bytes: &[u8], chain: &mut Chain, mut visit: impl FnMut(&Record) -> Result<(), Defect>) -> (End, usize) {
    let mut offset = HEADER_LEN;
    loop {
        match read_frame(bytes, offset) {
            Frame::End => return (End::Clean, offset),
            Frame::Bad(defect) => {
                let end = if next_intact_frame(bytes, offset).is_some() {
                    End::Corrupt {
                        offset,
                        seq: Some(chain.next_seq),
                        defect,
                    }
                } else {
                    End::Torn { offset, defect }
                };
                return (end, offset);
            }
            Frame::Record { payload, hash, end } => {
                let record = match decode(payload) {
                    Ok(r) => r,
                    Err(e) => {
                        return (
                            End::Corrupt {
                                offset,
                                seq: Some(chain.next_seq),
                                defect: e.into(),
                            },
                            offset,
                        )
                    }
                };
                let seq = record_seq(&record);
                if let Err(defect) = chain.check(&record).and_then(|()| visit(&record)) {
                    return (
                        End::Corrupt {
                            offset,
                            seq: Some(seq),
                            defect,
                        },
                        offset,
                    );
                }
                chain.advance(&record, hash);
                offset = end;
            }
        }
    }
}

/// The sequence number a failure at this record is reported under: an
/// entry's own, or for a seal the entry it claims to cover.
pub(crate) fn record_seq(r: &Record) -> u64 {
    match r {
        Record::Entry {
            entry: Entry { seq, .. }, ..
        } => *seq,
        Record::Seal(Seal { covers_seq, .. }) => *covers_seq,
    }
}
