//! The trail as quantumd and `quantumctl trail` use it, on real files, with
//! real ML-DSA-65 keys.

use std::fs;
use std::path::{Path, PathBuf};

use pqcrypto_mldsa::mldsa65;
use pqcrypto_traits::sign::{PublicKey as _, SecretKey as _};
use quantum_trail::mldsa::{MlDsa65Keyring, MlDsa65Signer};
use quantum_trail::{
    entries, verify, Action, Config, Defect, Digest, Entry, Error, Filter, KeyId, NewEntry, OpenReport, Outcome, SignError, SignatureError,
    Signer, Trail, VerifyReport, Warning, FRAME_HEADER, HEADER_LEN,
};

/// An ML-DSA-65 key pair kept as bytes, so a test can reopen a trail with
/// the same key as often as it likes.
struct Key {
    public: Vec<u8>,
    secret: Vec<u8>,
}

impl Key {
    fn generate() -> Key {
        let (pk, sk) = mldsa65::keypair();
        Key {
            public: pk.as_bytes().to_vec(),
            secret: sk.as_bytes().to_vec(),
        }
    }

    fn signer(&self) -> Box<dyn Signer + Send> {
        Box::new(MlDsa65Signer::from_bytes(&self.public, &self.secret).unwrap())
    }

    fn keyring(&self) -> MlDsa65Keyring {
        let mut ring = MlDsa65Keyring::new();
        ring.add(&self.public).unwrap();
        ring
    }
}

/// A seal made with one key but labelled with another's id: what a stolen
/// or wrong key would produce.
struct Impostor {
    claims: KeyId,
    signs_with: MlDsa65Signer,
}

impl Signer for Impostor {
    fn key_id(&self) -> KeyId {
        self.claims
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        self.signs_with.sign(msg)
    }
}

/// Never seals by itself: tests decide where seals go.
fn manual() -> Config {
    Config {
        seal_every: u64::MAX,
        ..Config::default()
    }
}

fn open(dir: &Path, key: &Key, config: Config) -> (Trail, OpenReport) {
    Trail::open(dir, config, key.signer()).unwrap()
}

fn run(cell: &str) -> NewEntry {
    NewEntry::new("uid:1000", Action::RUN)
        .cell(cell)
        .manifest_hash(Digest(*blake3::hash(cell.as_bytes()).as_bytes()))
}

fn append_n(trail: &mut Trail, n: u64) {
    for i in 0..n {
        trail.append(run(&format!("cell-{}", i % 7))).unwrap();
    }
}

fn all(dir: &Path) -> Vec<Entry> {
    entries(dir, Filter::default()).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Byte offsets of the records of a segment, read from the frame lengths
/// (`len u32 | !len u32 | check u64 | payload`).
fn record_offsets(path: &Path) -> Vec<usize> {
    let bytes = fs::read(path).unwrap();
    let mut at = HEADER_LEN;
    let mut out = Vec::new();
    while at + FRAME_HEADER <= bytes.len() {
        out.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += FRAME_HEADER + len;
    }
    out
}

fn assert_clean(report: &VerifyReport) {
    assert!(report.is_ok(), "verify failed: {}", report.failure.as_ref().unwrap());
    assert!(report.warnings.is_empty(), "warnings: {:?}", report.warnings);
}

#[test]
fn reopening_continues_the_chain_and_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, report) = open(dir.path(), &key, manual());
    assert!(report.created);
    assert_eq!(report.next_seq, 1);
    append_n(&mut trail, 3);
    trail.seal().unwrap();
    let head = trail.head();
    trail.close().unwrap();

    let (mut trail, report) = open(dir.path(), &key, manual());
    assert!(!report.created && report.torn.is_none() && report.sealed.is_none());
    assert_eq!(report.next_seq, 4);
    assert_eq!(trail.head(), head);
    assert_eq!(trail.append(NewEntry::new("quantumd", Action::STOP).cell("cell-0")).unwrap(), 4);
    append_n(&mut trail, 1);
    trail.close().unwrap();

    assert_eq!(seqs(&all(dir.path())), [1, 2, 3, 4, 5]);
    let report = verify(dir.path(), &key.keyring()).unwrap();
    assert_clean(&report);
    assert_eq!(
        (report.entries, report.seals, report.last_seq, report.last_sealed_seq),
        (5, 2, Some(5), Some(5))
    );
}

#[test]
fn entries_read_back_exactly_as_appended() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, manual());
    let refused = NewEntry::new("uid:1000", Action::REFUSE)
        .cell("scraper")
        .manifest_hash(Digest([0xab; 32]))
        .error("artifact signature does not verify")
        .detail("bundle from https://cells.example/scraper");
    trail.append(refused.clone()).unwrap();
    trail.append(NewEntry::new("quantumd", Action::new("prewarm").unwrap())).unwrap();
    trail.close().unwrap();

    let got = all(dir.path());
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].actor.as_str(), &got[0].action, got[0].cell.as_deref()),
        ("uid:1000", &Action::REFUSE, Some("scraper"))
    );
    assert_eq!(got[0].manifest_hash, refused.manifest_hash);
    assert_eq!(got[0].result, Outcome::Error("artifact signature does not verify".into()));
    assert_eq!(got[0].detail, refused.detail);
    assert_eq!(got[1].action.as_str(), "prewarm");
    assert!(got[0].time_ns > 0 && got[0].time_ns <= got[1].time_ns);
}

#[test]
fn an_invalid_entry_is_refused_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, manual());
    let err = trail.append(NewEntry::new("uid:1000\nforged line", Action::RUN)).unwrap_err();
    assert!(matches!(err, Error::Entry(_)), "{err}");
    assert_eq!(trail.append(run("web-server")).unwrap(), 1);
}

#[test]
fn full_segments_rotate_and_the_chain_runs_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(
        dir.path(),
        &key,
        Config {
            segment_bytes: 2048,
            seal_every: 25,
        },
    );
    append_n(&mut trail, 200);
    trail.close().unwrap();

    let segs = segments(dir.path());
    assert!(segs.len() > 5, "only {} segments", segs.len());
    // Each segment is named after its first entry, and all entries are there.
    let got = all(dir.path());
    assert_eq!(seqs(&got), (1..=200).collect::<Vec<_>>());
    for seg in &segs {
        let first: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert!(got.iter().any(|e| e.seq == first), "{} names no entry", seg.display());
    }
    let report = verify(dir.path(), &key.keyring()).unwrap();
    assert_clean(&report);
    assert_eq!(report.segments, segs.len());
    assert_eq!(report.entries, 200);

    // Reopening appends to the last segment, not to a new one.
    let (mut trail, report) = open(
        dir.path(),
        &key,
        Config {
            segment_bytes: 2048,
            seal_every: 25,
        },
    );
    assert_eq!(report.next_seq, 201);
    append_n(&mut trail, 1);
    trail.close().unwrap();
    assert_clean(&verify(dir.path(), &key.keyring()).unwrap());
}

#[test]
fn a_removed_segment_is_a_chain_break_at_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(
        dir.path(),
        &key,
        Config {
            segment_bytes: 2048,
            seal_every: 25,
        },
    );
    append_n(&mut trail, 100);
    trail.close().unwrap();
    let segs = segments(dir.path());
    fs::remove_file(&segs[1]).unwrap();

    let failure = verify(dir.path(), &key.keyring()).unwrap().failure.unwrap();
    assert_eq!(failure.at.segment, segs[2]);
    assert_eq!(failure.at.offset, 0);
    assert!(matches!(failure.defect, Defect::ChainBreak { .. }), "{failure}");
}

#[test]
fn a_torn_tail_is_cut_off_keeping_every_complete_record_and_the_rest_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, manual());
    append_n(&mut trail, 10);
    trail.seal().unwrap();
    append_n(&mut trail, 5);
    let seg = trail.segment().to_owned();
    // A power loss: the process is gone without sealing, and the last write
    // reached the disk only in part.
    drop(trail);
    let len = fs::metadata(&seg).unwrap().len();
    let last = *record_offsets(&seg).last().unwrap() as u64;
    fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 7).unwrap();

    let (trail, report) = open(dir.path(), &key, manual());
    let torn = report.torn.expect("torn tail not reported");
    assert_eq!(
        (torn.at.segment.as_path(), torn.at.offset, torn.at.seq),
        (seg.as_path(), last, Some(15))
    );
    assert_eq!(torn.bytes_dropped, len - 7 - last);
    assert!(matches!(torn.defect, Defect::TornRecord { .. }));
    let sealed = report.sealed.expect("the unsealed survivors were not sealed");
    assert_eq!((sealed.first_seq, sealed.covers_seq), (11, 14));
    assert_eq!(report.next_seq, 15);
    drop(trail);

    assert_eq!(seqs(&all(dir.path())), (1..=14).collect::<Vec<_>>());
    assert_clean(&verify(dir.path(), &key.keyring()).unwrap());
}

#[test]
fn a_tail_filled_with_zeros_by_the_filesystem_is_torn_too() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, manual());
    append_n(&mut trail, 4);
    let seg = trail.segment().to_owned();
    drop(trail);
    let len = fs::metadata(&seg).unwrap().len();
    fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len + 4096).unwrap();

    // Before repair, verify says it is torn at the end, not broken.
    let report = verify(dir.path(), &key.keyring()).unwrap();
    assert!(report.is_ok());
    assert!(
        report.warnings.iter().any(|w| matches!(w, Warning::TornTail { bytes: 4096, .. })),
        "{:?}",
        report.warnings
    );
    assert!(report
        .warnings
        .iter()
        .any(|w| matches!(w, Warning::Unsealed { first_seq: 1, last_seq: 4 })));

    let (_, report) = open(dir.path(), &key, manual());
    assert_eq!(report.torn.unwrap().bytes_dropped, 4096);
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        len + report.sealed.map(|_| seal_len(&seg, len)).unwrap()
    );
    assert_clean(&verify(dir.path(), &key.keyring()).unwrap());
}

/// The size of the seal record that starts at `at`.
fn seal_len(seg: &Path, at: u64) -> u64 {
    let bytes = fs::read(seg).unwrap();
    let at = at as usize;
    FRAME_HEADER as u64 + u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()))
}

#[test]
fn a_segment_whose_header_a_crash_cut_short_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, manual());
    append_n(&mut trail, 3);
    trail.close().unwrap();
    let stray = dir.path().join("00000000000000000004.seg");
    fs::write(&stray, b"QTRAIL").unwrap();

    let (mut trail, report) = open(dir.path(), &key, manual());
    assert_eq!(report.removed_segments, std::slice::from_ref(&stray));
    assert!(!stray.exists());
    assert_eq!(trail.append(run("web-server")).unwrap(), 4);
    trail.close().unwrap();
    assert_clean(&verify(dir.path(), &key.keyring()).unwrap());
}

#[test]
fn a_flipped_byte_mid_file_is_named_by_verify_and_refused_by_open() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, manual());
    append_n(&mut trail, 50);
    let seg = trail.segment().to_owned();
    trail.close().unwrap();
    // Records are entries 1..=50, then the seal: entry 20 is the 20th.
    let at = record_offsets(&seg)[19];
    let mut bytes = fs::read(&seg).unwrap();
    bytes[at + FRAME_HEADER + 60] ^= 0x04;
    fs::write(&seg, &bytes).unwrap();

    let failure = verify(dir.path(), &key.keyring()).unwrap().failure.expect("flip not detected");
    assert_eq!(
        (failure.at.segment.as_path(), failure.at.offset, failure.at.seq),
        (seg.as_path(), at as u64, Some(20))
    );
    assert_eq!(failure.defect, Defect::Checksum);
    assert!(failure.to_string().contains("(entry 20): record checksum mismatch"), "{failure}");

    // Not a torn tail: open refuses and changes nothing.
    match Trail::open(dir.path(), manual(), key.signer()) {
        Err(Error::Corrupt {
            at: loc,
            defect: Defect::Checksum,
        }) => assert_eq!((loc.offset, loc.seq), (at as u64, Some(20))),
        other => panic!("open did not refuse: {other:?}"),
    }
    assert_eq!(fs::read(&seg).unwrap(), bytes);

    // Reading shows what is before the damage, then says where it is.
    let read: Vec<_> = entries(dir.path(), Filter::default()).unwrap().collect();
    assert_eq!(read.len(), 20);
    assert!(read[..19].iter().all(Result::is_ok));
    assert!(matches!(&read[19], Err(Error::Corrupt { at, .. }) if at.seq == Some(20)));
}

#[test]
fn a_damaged_length_mid_file_is_not_mistaken_for_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, manual());
    append_n(&mut trail, 30);
    let seg = trail.segment().to_owned();
    trail.close().unwrap();
    let at = record_offsets(&seg)[9];
    let mut bytes = fs::read(&seg).unwrap();
    bytes[at + 1] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();

    let failure = verify(dir.path(), &key.keyring())
        .unwrap()
        .failure
        .expect("damaged length not detected");
    assert_eq!((failure.at.offset, failure.at.seq), (at as u64, Some(10)));
    assert!(matches!(failure.defect, Defect::FrameLength { .. }), "{failure}");
    assert!(matches!(
        Trail::open(dir.path(), manual(), key.signer()),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn a_removed_middle_record_is_a_chain_break_at_the_one_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, manual());
    append_n(&mut trail, 50);
    let seg = trail.segment().to_owned();
    trail.close().unwrap();
    let offsets = record_offsets(&seg);
    let (from, to) = (offsets[19], offsets[20]);
    let mut bytes = fs::read(&seg).unwrap();
    bytes.drain(from..to);
    fs::write(&seg, &bytes).unwrap();

    let failure = verify(dir.path(), &key.keyring()).unwrap().failure.expect("removal not detected");
    assert_eq!((failure.at.offset, failure.at.seq), (from as u64, Some(21)));
    assert!(matches!(failure.defect, Defect::ChainBreak { .. }), "{failure}");
}

#[test]
fn a_seal_by_an_untrusted_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (node, stranger) = (Key::generate(), Key::generate());
    let (mut trail, _) = open(dir.path(), &stranger, manual());
    append_n(&mut trail, 5);
    trail.close().unwrap();

    let report = verify(dir.path(), &node.keyring()).unwrap();
    let failure = report.failure.expect("untrusted seal accepted");
    assert_eq!(failure.at.seq, Some(5));
    assert!(
        matches!(
            failure.defect,
            Defect::Signature {
                reason: SignatureError::UnknownKey,
                ..
            }
        ),
        "{failure}"
    );
    assert_eq!(report.last_sealed_seq, None);
}

#[test]
fn a_seal_signed_with_the_wrong_key_under_the_right_id_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (node, thief) = (Key::generate(), Key::generate());
    let (mut trail, _) = open(dir.path(), &node, manual());
    append_n(&mut trail, 5);
    trail.close().unwrap();
    let impostor = Impostor {
        claims: quantum_trail::mldsa::key_id(&node.public),
        signs_with: MlDsa65Signer::from_bytes(&thief.public, &thief.secret).unwrap(),
    };
    let (mut trail, _) = Trail::open(dir.path(), manual(), Box::new(impostor)).unwrap();
    append_n(&mut trail, 5);
    trail.close().unwrap();

    let report = verify(dir.path(), &node.keyring()).unwrap();
    let failure = report.failure.expect("forged seal accepted");
    assert_eq!(failure.at.seq, Some(10));
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
    // The honest seal before it still counts.
    assert_eq!(report.last_sealed_seq, Some(5));
}

#[test]
fn entries_after_the_last_seal_are_a_warning_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, manual());
    append_n(&mut trail, 3);
    trail.seal().unwrap();
    append_n(&mut trail, 2);
    let report = verify(dir.path(), &key.keyring()).unwrap();
    assert!(report.is_ok());
    assert_eq!(report.warnings, [Warning::Unsealed { first_seq: 4, last_seq: 5 }]);
    assert_eq!(trail.unsealed(), 2);
    assert_eq!(report.head, trail.head());
}

#[test]
fn append_seals_by_itself_every_seal_every_entries() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(
        dir.path(),
        &key,
        Config {
            seal_every: 10,
            ..Config::default()
        },
    );
    append_n(&mut trail, 35);
    assert_eq!(trail.unsealed(), 5);
    let report = verify(dir.path(), &key.keyring()).unwrap();
    assert_eq!((report.seals, report.last_sealed_seq), (3, Some(30)));
}

#[test]
fn a_long_trail_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(dir.path(), &key, Config::default());
    append_n(&mut trail, 100_000);
    trail.close().unwrap();
    let report = verify(dir.path(), &key.keyring()).unwrap();
    assert_clean(&report);
    assert_eq!((report.entries, report.last_seq), (100_000, Some(100_000)));
    assert_eq!(report.seals, 100_000u64.div_ceil(4096));
}

#[test]
fn entries_filter_by_cell_and_sequence_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (mut trail, _) = open(
        dir.path(),
        &key,
        Config {
            segment_bytes: 1024,
            seal_every: 8,
        },
    );
    for i in 0..60 {
        let cell = if i % 3 == 0 { "web-server" } else { "database" };
        trail.append(run(cell)).unwrap();
    }
    trail.append(NewEntry::new("quantumd", Action::IDENTITY)).unwrap();
    trail.close().unwrap();

    let web: Vec<Entry> = entries(
        dir.path(),
        Filter {
            cell: Some("web-server".into()),
            ..Filter::default()
        },
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(seqs(&web), (0..20).map(|i| 3 * i + 1).collect::<Vec<_>>());
    assert!(web.iter().all(|e| e.cell.as_deref() == Some("web-server")));

    let late: Vec<Entry> = entries(
        dir.path(),
        Filter {
            cell: Some("web-server".into()),
            since_seq: Some(50),
        },
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(seqs(&late), [52, 55, 58]);
    let tail: Vec<Entry> = entries(
        dir.path(),
        Filter {
            since_seq: Some(60),
            ..Filter::default()
        },
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(seqs(&tail), [60, 61]);
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let (trail, _) = open(dir.path(), &key, manual());
    assert!(matches!(Trail::open(dir.path(), manual(), key.signer()), Err(Error::Locked { .. })));
    drop(trail);
    assert!(Trail::open(dir.path(), manual(), key.signer()).is_ok());
}

#[test]
fn a_signer_failure_leaves_the_entries_unsealed_and_reported() {
    struct Broken;
    impl Signer for Broken {
        fn key_id(&self) -> KeyId {
            KeyId([1; 32])
        }
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, SignError> {
            Err(SignError {
                reason: "TPM not answering".into(),
            })
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut trail, _) = Trail::open(dir.path(), manual(), Box::new(Broken)).unwrap();
    trail.append(run("web-server")).unwrap();
    let err = trail.seal().unwrap_err();
    assert!(matches!(&err, Error::Sign { covers_seq: 1, .. }), "{err}");
    assert_eq!(trail.unsealed(), 1);
    // The next seal, with a working signer, covers it.
    drop(trail);
    let key = Key::generate();
    let (_, report) = open(dir.path(), &key, manual());
    assert_eq!(report.sealed.map(|s| (s.first_seq, s.covers_seq)), Some((1, 1)));
    assert_clean(&verify(dir.path(), &key.keyring()).unwrap());
}
