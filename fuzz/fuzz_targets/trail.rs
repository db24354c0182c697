//! Arbitrary bytes as a trail segment file: `verify`, `entries` and
//! `Trail::open` (with its torn-tail repair and sealing) must never panic,
//! and must agree with each other:
//!
//! - `entries` stops at exactly the place and defect `verify` names (unless
//!   that is a seal signature, which reading does not check), and returns
//!   every entry `verify` counted;
//! - `open` refuses only what `verify` finds wrong, and a trail `open`
//!   accepted (and repaired and sealed) verifies afterwards, apart from seals
//!   with bad signatures that were in the input.
//!
//! The segment is named after the first sequence number its header claims,
//! so that the header's name check is passed by any input that wants to.
//! Seals are "signed" with a keyed blake3 MAC in place of ML-DSA: libFuzzer
//! cannot forge either, and a MAC keeps every execution fast; the trail's own
//! tests use real ML-DSA-65 keys. `trail-fuzz-seeds` (an example of
//! quantum-trail) writes starting inputs signed the same way.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use quantum_trail::{
    entries, segment_file_name, verify, Config, Defect, Error, Filter, KeyId, SignError, SignatureError, Signer, Trail, Verifier, Warning,
};

/// Must match `quantumd/trail/examples/trail-fuzz-seeds.rs`.
const KEY: [u8; 32] = [7; 32];

struct MacSigner;

impl Signer for MacSigner {
    fn key_id(&self) -> KeyId {
        KeyId(KEY)
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(blake3::keyed_hash(&KEY, msg).as_bytes().to_vec())
    }
}

struct MacVerifier;

impl Verifier for MacVerifier {
    fn verify(&self, key_id: &KeyId, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
        if key_id.0 != KEY {
            return Err(SignatureError::UnknownKey);
        }
        if sig != blake3::keyed_hash(&KEY, msg).as_bytes() {
            return Err(SignatureError::Invalid);
        }
        Ok(())
    }
}

fn work_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("quantum-trail-fuzz-{}", std::process::id()))
    })
}

fn is_signature(d: &Defect) -> bool {
    matches!(d, Defect::Signature { .. })
}

fuzz_target!(|data: &[u8]| {
    let dir = work_dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("fuzz work directory");
    let first_seq = data.get(12..20).map_or(1, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let seg = dir.join(segment_file_name(first_seq));
    std::fs::write(&seg, data).expect("writing the segment");

    let report = verify(dir, &MacVerifier).expect("verify: I/O error on a plain file");
    let read: Vec<_> = entries(dir, Filter::default()).expect("entries: I/O error").collect();
    let (ok, err): (Vec<_>, Vec<_>) = read.into_iter().partition(Result::is_ok);
    assert!(err.len() <= 1, "entries went on after an error");
    match (&report.failure, err.first()) {
        (Some(f), _) if is_signature(&f.defect) => {}
        (Some(f), Some(Err(Error::Corrupt { at, defect }))) => {
            assert_eq!((at, defect), (&f.at, &f.defect), "entries and verify disagree on the damage");
            assert_eq!(
                ok.len() as u64,
                report.entries,
                "entries returned another count than verify checked"
            );
        }
        (None, None) => assert_eq!(
            ok.len() as u64,
            report.entries,
            "entries returned another count than verify checked"
        ),
        (f, e) => panic!("verify says {f:?}, entries says {e:?}"),
    }

    let torn_before = report.warnings.iter().any(|w| matches!(w, Warning::TornTail { .. }));
    match Trail::open(dir, Config::default(), Box::new(MacSigner)) {
        Ok((trail, opened)) => {
            drop(trail);
            let after = verify(dir, &MacVerifier).expect("verify after open: I/O error");
            if report.failure.is_none() {
                assert_eq!(opened.torn.is_some(), torn_before, "open and verify disagree on a torn tail");
                // What verify accepted, open must leave verifiable, sealed and untorn.
                assert!(after.is_ok(), "open broke a trail that verified: {:?}", after.failure);
                assert!(after.warnings.is_empty(), "open left warnings: {:?}", after.warnings);
                assert!(after.entries <= report.entries, "open invented entries");
                if !torn_before {
                    assert_eq!(after.entries, report.entries, "open dropped entries from an untorn trail");
                }
            }
        }
        Err(Error::Corrupt { .. }) => assert!(report.failure.is_some(), "open refused a trail verify accepts"),
        Err(e) => panic!("open failed on a plain file: {e}"),
    }
});
