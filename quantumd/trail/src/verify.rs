//! `verify`: every segment, every record, every seal signature.

use std::fmt;
use std::fs;
use std::path::Path;

use crate::chain::{walk, Chain, End};
use crate::defect::Defect;
use crate::entry::Digest;
use crate::record::Record;
use crate::seal::Verifier;
use crate::segment::{self, parse_header};
use crate::trail::{io_error, Error, Location};

/// The first thing wrong with a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub at: Location,
    pub defect: Defect,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.defect)
    }
}

/// Not wrong, but worth saying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Entries after the last seal: chained, but no signature vouches for
    /// them yet (quantumd seals them within its seal interval, or at its next
    /// start after a crash).
    Unsealed { first_seq: u64, last_seq: u64 },
    /// A torn record at the very end: a crash not yet repaired by `open`, or
    /// a record being written while `verify` read.
    TornTail { at: Location, bytes: u64, defect: Defect },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Unsealed { first_seq, last_seq } => write!(f, "entries {first_seq}..={last_seq} are not sealed yet"),
            Warning::TornTail { at, bytes, defect } => write!(f, "{at}: torn record at the end ({bytes} bytes): {defect}"),
        }
    }
}

/// What `verify` found. The counts cover what was checked before the first
/// failure, if there was one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub entries: u64,
    pub seals: u64,
    pub last_seq: Option<u64>,
    /// The last entry a valid seal vouches for.
    pub last_sealed_seq: Option<u64>,
    /// The chain head: compare it with the head quantumd holds to see that
    /// nothing was cut from the end.
    pub head: Digest,
    pub failure: Option<Failure>,
    pub warnings: Vec<Warning>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Checks the trail in `dir` from its first record to its last: segment
/// headers and names, every record's checksum and encoding, the hash chain
/// and sequence numbers (within and across segments, from genesis), and
/// every seal's signature through `verifier`. Stops at the first failure and
/// names it. I/O errors (an unreadable directory or segment) are `Err`;
/// everything wrong with the contents is in the report.
///
/// What no trail can show by itself: records cut from the end. The report's
/// `head` and `last_seq` are there to compare with what quantumd holds.
pub fn verify(dir: &Path, verifier: &dyn Verifier) -> Result<VerifyReport, Error> {
    let segments = segment::list(dir).map_err(io_error("list", dir))?;
    let mut chain = Chain::genesis();
    let mut report = VerifyReport {
        segments: 0,
        entries: 0,
        seals: 0,
        last_seq: None,
        last_sealed_seq: None,
        head: chain.head,
        failure: None,
        warnings: Vec::new(),
    };
    let count = segments.len();
    for (i, seg) in segments.iter().enumerate() {
        let bytes = fs::read(&seg.path).map_err(io_error("read", &seg.path))?;
        report.segments += 1;
        let at = |offset: usize, seq: Option<u64>| Location {
            segment: seg.path.clone(),
            offset: offset as u64,
            seq,
        };
        let checked_header = parse_header(&bytes).and_then(|h| {
            if h.first_seq != seg.first_seq {
                return Err(Defect::NameMismatch {
                    named: seg.first_seq,
                    header: h.first_seq,
                });
            }
            chain.check_header(&h)
        });
        if let Err(defect) = checked_header {
            report.failure = Some(Failure {
                at: at(0, Some(seg.first_seq)),
                defect,
            });
            break;
        }
        let (end, _) = walk(&bytes, &mut chain, |record| match record {
            // The chain already checked that the seal's head is the real
            // head, so a valid signature vouches for every record before it.
            Record::Seal(seal) => verifier
                .verify(&seal.key_id, &seal.message(), &seal.signature)
                .map_err(|reason| Defect::Signature {
                    key_id: seal.key_id,
                    reason,
                }),
            Record::Entry { .. } => Ok(()),
        });
        match end {
            End::Clean => {}
            End::Torn { offset, defect } if i + 1 == count => {
                let bytes = (bytes.len() - offset) as u64;
                report.warnings.push(Warning::TornTail {
                    at: at(offset, Some(chain.next_seq)),
                    bytes,
                    defect,
                });
            }
            // A crash tears only the end of the trail: anywhere else a torn
            // record is damage.
            End::Torn { offset, defect } => {
                report.failure = Some(Failure {
                    at: at(offset, Some(chain.next_seq)),
                    defect,
                })
            }
            End::Corrupt { offset, seq, defect } => {
                report.failure = Some(Failure {
                    at: at(offset, seq),
                    defect,
                })
            }
        }
        if report.failure.is_some() {
            break;
        }
    }
    report.entries = chain.entries;
    report.seals = chain.seals;
    report.last_seq = chain.last_entry;
    report.last_sealed_seq = chain.last_sealed;
    report.head = chain.head;
    if report.failure.is_none() {
        if let Some((first_seq, last_seq)) = chain.unsealed() {
            report.warnings.push(Warning::Unsealed { first_seq, last_seq });
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mldsa::{MlDsa65Keyring, MlDsa65Signer};
    use crate::record::{decode, encode_entry, encode_seal};
    use crate::segment::{append_frame, encode_header, read_frame, Frame, Header, HEADER_LEN};
    use crate::{Action, Config, NewEntry, SignatureError, Trail};

    /// A trail of 50 entries and one seal in one segment, and its key ring.
    fn sealed_trail(dir: &Path) -> (std::path::PathBuf, MlDsa65Keyring) {
        let (signer, public) = MlDsa65Signer::generate();
        let mut ring = MlDsa65Keyring::new();
        ring.add(&public).unwrap();
        let (mut trail, _) = Trail::open(
            dir,
            Config {
                seal_every: u64::MAX,
                ..Config::default()
            },
            Box::new(signer),
        )
        .unwrap();
        for i in 0..50 {
            trail
                .append(NewEntry::new("uid:1000", Action::RUN).cell(format!("cell-{i}")))
                .unwrap();
        }
        let seg = trail.segment().to_owned();
        trail.close().unwrap();
        (seg, ring)
    }

    /// Rewrites the segment the way someone who knows the format would:
    /// entry 20 gets another actor, and with `rechain` every later record's
    /// `prev` is recomputed so that the chain itself is consistent again.
    fn forge(seg: &Path, rechain: bool) {
        let bytes = fs::read(seg).unwrap();
        let header = parse_header(&bytes).unwrap();
        let mut out = encode_header(&Header { ..header }).to_vec();
        let (mut offset, mut head) = (HEADER_LEN, header.prev);
        while let Frame::Record { payload, end, .. } = read_frame(&bytes, offset) {
            let record = decode(payload).unwrap();
            let prev = if rechain { head } else { *record.prev() };
            head = match record {
                Record::Entry { mut entry, .. } => {
                    if entry.seq == 20 {
                        entry.actor = "uid:0".into();
                    }
                    append_frame(&mut out, |o| encode_entry(&prev, &entry, o))
                }
                Record::Seal(mut seal) => {
                    seal.head = prev;
                    append_frame(&mut out, |o| encode_seal(&seal, o))
                }
            };
            offset = end;
        }
        fs::write(seg, out).unwrap();
    }

    #[test]
    fn an_entry_rewritten_with_a_valid_checksum_breaks_the_chain_at_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ring) = sealed_trail(dir.path());
        forge(&seg, false);
        let failure = verify(dir.path(), &ring).unwrap().failure.expect("rewrite not detected");
        assert_eq!(failure.at.seq, Some(21));
        assert!(matches!(failure.defect, Defect::ChainBreak { .. }), "{failure}");
    }

    #[test]
    fn an_entry_rewritten_and_rechained_is_caught_by_the_seal_signature() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ring) = sealed_trail(dir.path());
        forge(&seg, true);
        let report = verify(dir.path(), &ring).unwrap();
        let failure = report.failure.expect("rechained rewrite not detected");
        assert_eq!(failure.at.seq, Some(50));
        assert!(
            matches!(
                failure.defect,
                Defect::Signature {
                    reason: SignatureError::Invalid,
                    ..
                }
            ),
            "{failure}"
        );
        assert_eq!(report.entries, 50);
        assert_eq!(report.last_sealed_seq, None);
    }
}
