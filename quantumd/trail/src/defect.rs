//! What can be wrong with a trail on disk. One enum, shared by `open` (which
//! refuses), `entries` (which stops) and `verify` (which reports), so that
//! the three say the same thing about the same bytes.

use crate::entry::Digest;
use crate::record::DecodeError;
use crate::seal::{KeyId, SignatureError};
use crate::segment::HEADER_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Defect {
    #[error("segment header cut short: {len} of {HEADER_LEN} bytes")]
    HeaderTruncated { len: usize },
    #[error("not a trail segment (bad magic)")]
    BadMagic,
    #[error("segment format version {0}, this build reads version 1")]
    UnsupportedVersion(u16),
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    #[error("file name says the segment starts at entry {named}, its header says {header}")]
    NameMismatch { named: u64, header: u64 },
    #[error("record cut short: {available} bytes left, the record needs {needed}")]
    TornRecord { needed: usize, available: usize },
    #[error("record length field damaged ({len:#010x} / {check:#010x})")]
    FrameLength { len: u32, check: u32 },
    #[error("record of {len} bytes, more than the {max} a record may have")]
    FrameTooLarge { len: usize, max: usize },
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record unreadable: {0}")]
    Malformed(#[from] DecodeError),
    #[error("chain break: the record carries previous hash {found}, the record before it hashes to {expected}")]
    ChainBreak { expected: Digest, found: Digest },
    #[error("sequence break: expected entry {expected}, found {found}")]
    SeqGap { expected: u64, found: u64 },
    #[error("seal claims to cover entry {claims}, but the last entry before it is {last}")]
    SealCovers { claims: u64, last: u64 },
    #[error("seal before any entry")]
    SealWithoutEntries,
    #[error("seal signature by key {key_id}: {reason}")]
    Signature { key_id: KeyId, reason: SignatureError },
}
