//! Segment files: naming, the file header, and the frames records sit in.
//!
//! ```text
//! header (56 bytes): magic "QTRAIL\r\n" | version u16 = 1 | reserved u16 = 0
//!                    | first_seq u64 | prev (32) | checksum u32
//! frame:             len u32 | !len u32 | check u64 | payload (len bytes)
//! ```
//!
//! The header's checksum is the first 4 bytes of blake3 over the 52 bytes
//! before it; `prev` is the chain head the segment continues from. A frame's
//! `check` is the first 8 bytes of the payload's record hash, so the one hash
//! per record serves both the chain and the torn-write check. The length is
//! stored twice (the second time inverted) so that a damaged length is
//! recognised as such, and so that looking for the next intact frame after a
//! damaged one costs a comparison per byte, not a hash.

use std::io;
use std::path::{Path, PathBuf};

use crate::defect::Defect;
use crate::entry::Digest;
use crate::record::record_hash;

pub const MAGIC: [u8; 8] = *b"QTRAIL\r\n";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 56;
pub const FRAME_HEADER: usize = 16;
/// Largest payload a frame may hold: an entry at its limits (two 16 KiB
/// texts) or a seal fits with room to spare.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// What a segment's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sequence number of the first entry in the segment (and its name).
    pub first_seq: u64,
    /// The hash of the last record before this segment (genesis for the first).
    pub prev: Digest,
}

pub fn encode_header(h: &Header) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&h.first_seq.to_le_bytes());
    out[20..52].copy_from_slice(&h.prev.0);
    let sum = blake3::hash(&out[..52]);
    out[52..].copy_from_slice(&sum.as_bytes()[..4]);
    out
}

pub fn parse_header(bytes: &[u8]) -> Result<Header, Defect> {
    if bytes.len() < HEADER_LEN {
        return Err(Defect::HeaderTruncated { len: bytes.len() });
    }
    if bytes[..8] != MAGIC {
        return Err(Defect::BadMagic);
    }
    let sum = blake3::hash(&bytes[..52]);
    if bytes[52..HEADER_LEN] != sum.as_bytes()[..4] {
        return Err(Defect::HeaderChecksum);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION || bytes[10..12] != [0, 0] {
        return Err(Defect::UnsupportedVersion(version));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[12..20]);
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&bytes[20..52]);
    Ok(Header {
        first_seq: u64::from_le_bytes(seq),
        prev: Digest(prev),
    })
}

/// `00000000000000000001.seg`: the first sequence number in decimal, padded
/// to the 20 digits of `u64::MAX` so that names sort like numbers.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment file found in the trail directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_seq: u64,
    pub path: PathBuf,
}

/// The segments in `dir`, oldest first. Other files are not the trail's and
/// are left alone.
pub fn list(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        if let Some(first_seq) = name.to_str().and_then(parse_file_name) {
            out.push(SegmentFile {
                first_seq,
                path: item.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// One step through a segment's frames.
#[derive(Debug)]
pub enum Frame<'a> {
    /// An intact frame; the next one starts at `end`.
    Record { payload: &'a [u8], hash: Digest, end: usize },
    /// The segment ends exactly here.
    End,
    /// The bytes at this offset are not an intact frame.
    Bad(Defect),
}

pub fn read_frame(bytes: &[u8], offset: usize) -> Frame<'_> {
    let rest = bytes.get(offset..).unwrap_or_default();
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < FRAME_HEADER {
        return Frame::Bad(Defect::TornRecord {
            needed: FRAME_HEADER,
            available: rest.len(),
        });
    }
    let len = u32_at(rest, 0);
    let check = u32_at(rest, 4);
    if len != !check {
        return Frame::Bad(Defect::FrameLength { len, check });
    }
    let len = len as usize;
    if len > MAX_PAYLOAD {
        return Frame::Bad(Defect::FrameTooLarge { len, max: MAX_PAYLOAD });
    }
    let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Frame::Bad(Defect::TornRecord {
            needed: FRAME_HEADER + len,
            available: rest.len(),
        });
    };
    let hash = record_hash(payload);
    if hash.0[..8] != rest[8..16] {
        return Frame::Bad(Defect::Checksum);
    }
    Frame::Record {
        payload,
        hash,
        end: offset + FRAME_HEADER + len,
    }
}

/// The offset of the first intact frame that starts after `offset`, if any:
/// whether damage is a torn tail (nothing intact after it) or corruption in
/// the middle (intact records follow).
pub fn next_intact_frame(bytes: &[u8], offset: usize) -> Option<usize> {
    let mut at = offset + 1;
    while at + FRAME_HEADER <= bytes.len() {
        let len = u32_at(bytes, at);
        // The cheap test first: only a plausible length is worth a hash.
        if len == !u32_at(bytes, at + 4) && (len as usize) <= MAX_PAYLOAD && matches!(read_frame(bytes, at), Frame::Record { .. }) {
            return Some(at);
        }
        at += 1;
    }
    None
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Appends a frame to `out` whose payload `encode` writes, and returns the
/// record's hash.
pub(crate) fn append_frame(out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) -> Digest {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    encode(out);
    let payload = &out[start + FRAME_HEADER..];
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let len = payload.len() as u32;
    let hash = record_hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&(!len).to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&hash.0[..8]);
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_any_flipped_bit_is_caught() {
        let h = Header {
            first_seq: 4097,
            prev: Digest([5; 32]),
        };
        let bytes = encode_header(&h);
        assert_eq!(parse_header(&bytes), Ok(h));
        for i in 0..HEADER_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(parse_header(&bad).is_err(), "flip at byte {i} not caught");
        }
    }

    #[test]
    fn file_names_sort_like_sequence_numbers() {
        assert_eq!(file_name(1), "00000000000000000001.seg");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("1.seg"), None);
        assert_eq!(parse_file_name("0000000000000000000a.seg"), None);
        assert!(file_name(999) < file_name(1000));
    }

    #[test]
    fn a_frame_cut_anywhere_reads_as_torn() {
        let mut buf = Vec::new();
        append_frame(&mut buf, |out| out.extend_from_slice(b"payload"));
        for len in 1..buf.len() {
            assert!(
                matches!(read_frame(&buf[..len], 0), Frame::Bad(Defect::TornRecord { .. })),
                "cut at {len}"
            );
        }
        assert!(matches!(read_frame(&buf, 0), Frame::Record { end, .. } if end == buf.len()));
    }

    #[test]
    fn an_intact_frame_is_found_after_a_damaged_length() {
        let mut buf = Vec::new();
        append_frame(&mut buf, |out| out.extend_from_slice(b"first"));
        let second = buf.len();
        append_frame(&mut buf, |out| out.extend_from_slice(b"second"));
        buf[0] ^= 0xff;
        assert!(matches!(read_frame(&buf, 0), Frame::Bad(Defect::FrameLength { .. })));
        assert_eq!(next_intact_frame(&buf, 0), Some(second));
        assert_eq!(next_intact_frame(&buf, second), None);
    }
}
