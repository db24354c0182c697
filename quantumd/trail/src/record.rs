//! The canonical bytes of a record (the payload inside a frame) and its hash.
//!
//! ```text
//! entry: 0x01 | prev (32) | seq u64 | time_ns u64 | actor str16 | action str8
//!        | cell opt(str8) | manifest_hash opt(32) | result (0x00 | 0x01 str16) | detail opt(str16)
//! seal:  0x02 | prev (32) | covers_seq u64 | time_ns u64 | key_id (32) | signature bytes16
//! ```
//!
//! Integers are little-endian; `strN`/`bytesN` are a uN length then the bytes
//! (strings UTF-8); `opt(x)` is 0x00, or 0x01 then x. The decoder accepts
//! exactly what the encoder writes (no trailing bytes, no other flag values,
//! fields within their limits), so one entry has one encoding and one hash.

use std::sync::LazyLock;

use crate::entry::{Action, Digest, Entry, EntryError, Outcome};
use crate::seal::{KeyId, Seal, MAX_SIGNATURE};

const KIND_ENTRY: u8 = 1;
const KIND_SEAL: u8 = 2;

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Entry {
        prev: Digest,
        entry: Entry,
    },
    /// A seal's `prev` is `seal.head`.
    Seal(Seal),
}

impl Record {
    pub fn prev(&self) -> &Digest {
        match self {
            Record::Entry { prev, .. } => prev,
            Record::Seal(seal) => &seal.head,
        }
    }
}

/// Why a payload is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends inside {field}")]
    Truncated { field: &'static str },
    #[error("unknown record kind {0:#04x}")]
    UnknownKind(u8),
    #[error("{field}: flag byte {value:#04x} is neither 0 nor 1")]
    BadFlag { field: &'static str, value: u8 },
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("signature of {len} bytes, more than {max}")]
    SignatureTooLong { len: usize, max: usize },
    #[error(transparent)]
    Invalid(#[from] EntryError),
    #[error("{count} bytes after the end of the record")]
    TrailingBytes { count: usize },
}

static RECORD_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| blake3::derive_key("quantumos trail record hash v1", b""));

/// The record's hash: what the next record carries as `prev`, what a seal
/// signs, and (its first 8 bytes) the frame checksum. Keyed, so that a trail
/// hash is never equal to the plain blake3 of the same bytes elsewhere.
pub fn record_hash(payload: &[u8]) -> Digest {
    Digest(*blake3::keyed_hash(&RECORD_KEY, payload).as_bytes())
}

/// Appends the payload of an entry record to `out`. The entry must have
/// passed [`Entry::validate`] (lengths are then within their prefixes).
pub(crate) fn encode_entry(prev: &Digest, e: &Entry, out: &mut Vec<u8>) {
    out.push(KIND_ENTRY);
    out.extend_from_slice(&prev.0);
    out.extend_from_slice(&e.seq.to_le_bytes());
    out.extend_from_slice(&e.time_ns.to_le_bytes());
    put_str16(out, &e.actor);
    put_str8(out, e.action.as_str());
    match &e.cell {
        None => out.push(0),
        Some(cell) => {
            out.push(1);
            put_str8(out, cell);
        }
    }
    match &e.manifest_hash {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&h.0);
        }
    }
    match &e.result {
        Outcome::Ok => out.push(0),
        Outcome::Error(text) => {
            out.push(1);
            put_str16(out, text);
        }
    }
    match &e.detail {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            put_str16(out, d);
        }
    }
}

/// Appends the payload of a seal record to `out`. The signature must be at
/// most [`MAX_SIGNATURE`] bytes.
pub(crate) fn encode_seal(seal: &Seal, out: &mut Vec<u8>) {
    out.push(KIND_SEAL);
    out.extend_from_slice(&seal.head.0);
    out.extend_from_slice(&seal.covers_seq.to_le_bytes());
    out.extend_from_slice(&seal.time_ns.to_le_bytes());
    out.extend_from_slice(&seal.key_id.0);
    put_bytes16(out, &seal.signature);
}

// Lengths are bounded by validation (MAX_CELL < 256, MAX_TEXT and
// MAX_SIGNATURE < 65536), so the casts below cannot truncate.
fn put_str8(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() <= usize::from(u8::MAX));
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    put_bytes16(out, s.as_bytes());
}

fn put_bytes16(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(b.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// Decodes a payload; see the module docs for the layout.
pub fn decode(payload: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader { rest: payload };
    let kind = r.u8("kind")?;
    let record = match kind {
        KIND_ENTRY => {
            let prev = Digest(r.array("prev")?);
            let seq = r.u64("seq")?;
            let time_ns = r.u64("time")?;
            let actor = r.str16("actor")?;
            let action = Action::new(r.str8("action")?)?;
            let cell = if r.flag("cell")? { Some(r.str8("cell")?.to_owned()) } else { None };
            let manifest_hash = if r.flag("manifest hash")? {
                Some(Digest(r.array("manifest hash")?))
            } else {
                None
            };
            let result = if r.flag("result")? {
                Outcome::Error(r.str16("error text")?.to_owned())
            } else {
                Outcome::Ok
            };
            let detail = if r.flag("detail")? {
                Some(r.str16("detail")?.to_owned())
            } else {
                None
            };
            let entry = Entry {
                seq,
                time_ns,
                actor: actor.to_owned(),
                action,
                cell,
                manifest_hash,
                result,
                detail,
            };
            entry.validate()?;
            Record::Entry { prev, entry }
        }
        KIND_SEAL => {
            let head = Digest(r.array("prev")?);
            let covers_seq = r.u64("covered seq")?;
            let time_ns = r.u64("time")?;
            let key_id = KeyId(r.array("key id")?);
            let len = usize::from(r.u16("signature")?);
            if len > MAX_SIGNATURE {
                return Err(DecodeError::SignatureTooLong { len, max: MAX_SIGNATURE });
            }
            let signature = r.take(len, "signature")?.to_vec();
            Record::Seal(Seal {
                head,
                covers_seq,
                time_ns,
                key_id,
                signature,
            })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if !r.rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: r.rest.len() });
    }
    Ok(record)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::BadFlag { field, value }),
        }
    }

    fn str8(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u8(field)?);
        self.utf8(len, field)
    }

    fn str16(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u16(field)?);
        self.utf8(len, field)
    }

    fn utf8(&mut self, len: usize, field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(len, field)?).map_err(|_| DecodeError::NotUtf8 { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::NewEntry;

    fn full_entry() -> Entry {
        NewEntry::new("uid:1000", Action::REFUSE)
            .cell("web-server")
            .manifest_hash(Digest([7; 32]))
            .error("signature does not verify")
            .detail("key 1234")
            .into_entry(42, 1_700_000_000_000_000_000)
    }

    #[test]
    fn entries_decode_to_what_was_encoded() {
        for e in [full_entry(), NewEntry::new("quantumd", Action::RUN).into_entry(1, 0)] {
            let mut buf = Vec::new();
            encode_entry(&Digest([9; 32]), &e, &mut buf);
            assert_eq!(
                decode(&buf),
                Ok(Record::Entry {
                    prev: Digest([9; 32]),
                    entry: e
                })
            );
        }
    }

    #[test]
    fn seals_decode_to_what_was_encoded() {
        let seal = Seal {
            head: Digest([1; 32]),
            covers_seq: 9,
            time_ns: 5,
            key_id: KeyId([2; 32]),
            signature: vec![3; 3309],
        };
        let mut buf = Vec::new();
        encode_seal(&seal, &mut buf);
        assert_eq!(decode(&buf), Ok(Record::Seal(seal)));
    }

    #[test]
    fn every_proper_prefix_of_a_record_is_refused() {
        let mut buf = Vec::new();
        encode_entry(&Digest::GENESIS, &full_entry(), &mut buf);
        for len in 0..buf.len() {
            assert!(decode(&buf[..len]).is_err(), "prefix of {len} bytes decoded");
        }
    }

    #[test]
    fn trailing_bytes_and_odd_flags_are_refused_so_the_encoding_stays_canonical() {
        let mut buf = Vec::new();
        encode_entry(&Digest::GENESIS, &NewEntry::new("quantumd", Action::RUN).into_entry(1, 0), &mut buf);
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::TrailingBytes { count: 1 }));
        // The detail flag is the last byte of an entry without detail.
        let last = buf.len() - 1;
        buf[last] = 2;
        assert_eq!(decode(&buf), Err(DecodeError::BadFlag { field: "detail", value: 2 }));
    }

    #[test]
    fn the_record_hash_is_not_plain_blake3() {
        assert_ne!(record_hash(b"x").0, *blake3::hash(b"x").as_bytes());
    }
}
