//! The quantum trail: quantumd's append-only, tamper-evident record of
//! everything it assembled or refused.
//!
//! # Model
//!
//! An [`Entry`] says who asked (`actor`), what was done or refused
//! (`action`), about which cell and manifest, and how it ended. Every record
//! carries the hash of the record before it (the first chains from
//! [`Digest::GENESIS`]), so changing, removing or reordering any record
//! breaks the chain at the record after it. Signing every entry with ML-DSA-65
//! would cost ~0.1 ms each, so the trail signs in batches instead: a **seal**
//! is a record holding one signature over the chain head, which covers every
//! earlier record because the chain is cumulative. [`Trail::append`] seals by
//! itself every [`Config::seal_every`] entries (4096), quantumd calls
//! [`Trail::seal`] from a 100 ms timer, the writer seals before it rotates to
//! a new segment, and [`Trail::open`] seals what a crash left unsealed. The
//! signed message is domain-separated ([`seal_message`]); signing goes
//! through [`Signer`] and checking through [`Verifier`], so the node's key
//! (in a TPM or a root-only file) never passes through this crate.
//!
//! # On disk
//!
//! A directory (`/var/lib/quantumd/trail` in production) of segment files
//! named after their first entry's sequence number, `00000000000000000001.seg`,
//! each starting with a 56-byte header (magic, format version, first
//! sequence number, the chain head it continues from, checksum). A segment
//! that has reached [`Config::segment_bytes`] (16 MiB) takes no further
//! entries. Each record is a frame, `len | !len | check | payload`, where
//! `check` is the first 8 bytes of the record's keyed blake3 hash (the same
//! hash the next record chains to), so a torn or damaged record is
//! recognised on its own. The byte layouts are in the `segment` and `record`
//! modules; the encoding is canonical (one entry, one byte string, one hash).
//!
//! # Durability (fsync policy)
//!
//! - Each append is one write(2) of one whole record, before `append`
//!   returns: a crash of quantumd itself loses nothing.
//! - Each seal is followed by fdatasync of the segment: the group commit.
//!   After a power loss, at most the entries appended since the last seal
//!   can be missing, and at most the last record can be torn.
//! - A new segment is written with its header and fsynced, with its
//!   directory, before any record goes into it, and the old segment is
//!   sealed (and so synced) first.
//!
//! # Recovery at open, and what counts as corruption
//!
//! [`Trail::open`] reads the last segment only, and repairs exactly what a
//! crash can leave there:
//!
//! - a segment whose header is cut short (a crash while rotating: it holds
//!   no record) is removed;
//! - a damaged record at the end with no intact record after it (a torn
//!   write: cut short, or filled with zeros or garbage) is cut off, and only
//!   it; every complete record before it stays. [`OpenReport::torn`] says
//!   where, how many bytes, and which entry was lost;
//! - entries after the last seal are then sealed ([`OpenReport::sealed`]),
//!   so that they are signed from now on. They were chained and
//!   checksummed, so sealing them vouches that this node found them intact.
//!
//! Anything else (a damaged record with intact records after it, a record
//! that does not continue the chain, a bad header) cannot be a torn write.
//! `open` then refuses with [`Error::Corrupt`] naming the segment, offset and
//! entry, and changes nothing: cutting the damage away would destroy
//! evidence along with it. The trail has to be looked at (`quantumctl trail
//! verify`) and moved aside by a person before quantumd records again.
//! Damage in earlier segments is not looked for at open (that would read the
//! whole trail at every start); [`verify`] finds it.
//!
//! # Verification
//!
//! [`verify`] walks every segment from genesis: headers, checksums, the
//! chain and sequence numbers, and every seal signature (one signature check
//! per seal, not per entry), and names the first failure (segment, byte
//! offset, entry, [`Defect`]). Entries after the last seal are a warning
//! ([`Warning::Unsealed`]), as is a torn record at the very end (a crash
//! `open` has not repaired yet, or a record being written). No file format
//! can show that records were cut from the end; [`VerifyReport::head`] and
//! `last_seq` are there to compare with the head quantumd holds.
//!
//! [`entries`] reads entries back, oldest first, filtered by cell or
//! sequence number, checking checksums and the chain but not signatures.
//!
//! # Concurrency
//!
//! One writer per directory, enforced with an advisory lock (flock) on the
//! directory; readers and `verify` need no lock.

mod chain;
mod defect;
mod entry;
pub mod mldsa;
mod read;
mod record;
mod seal;
mod segment;
mod trail;
mod verify;

pub use defect::Defect;
pub use entry::{Action, Digest, Entry, EntryError, NewEntry, Outcome, MAX_ACTION, MAX_ACTOR, MAX_CELL, MAX_TEXT};
pub use read::{entries, Entries, Filter};
pub use record::DecodeError;
pub use seal::{seal_message, KeyId, Seal, SignError, SignatureError, Signer, Verifier, MAX_SIGNATURE};
pub use segment::{file_name as segment_file_name, FRAME_HEADER, HEADER_LEN, MAX_PAYLOAD};
pub use trail::{Config, Error, Location, OpenReport, SealInfo, TornTail, Trail};
pub use verify::{verify, Failure, VerifyReport, Warning};
