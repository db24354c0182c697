//! Signed cell bundles: what verifies, and which named check refuses each kind of damage.

use quantum_trust::bundle::{cache_id_of, MAX_MANIFEST_BYTES};
use quantum_trust::{AuthorKeys, Bundle, BundleError, TrustedKeys};

const EXEC_MANIFEST: &str = r#"[cell]
name = "web-server"
version = "1.0.0"
description = "Serve a directory over HTTP"
exec = ["/usr/bin/python3", "-m", "http.server"]
"#;

const ARTIFACT: &[u8] = b"\x7fELF pretend this is a scraper binary";

fn artifact_manifest(artifact: &[u8]) -> Vec<u8> {
    format!(
        "[cell]\nname = \"scraper\"\nversion = \"0.1.0\"\ndescription = \"Scrape\"\nartifact = {{ path = \"bin/scraper\", blake3 = \"{}\" }}\n",
        blake3::hash(artifact)
    )
    .into_bytes()
}

struct Fixture {
    author: AuthorKeys,
    trusted: TrustedKeys,
    bundle: Bundle,
}

fn signed_artifact_bundle() -> Fixture {
    let author = AuthorKeys::generate("cell author").unwrap();
    let trusted: TrustedKeys = [author.public().clone()].into_iter().collect();
    let mut bundle = Bundle::create(artifact_manifest(ARTIFACT), ARTIFACT.to_vec()).unwrap();
    bundle.sign(&author);
    Fixture { author, trusted, bundle }
}

/// Replaces the first occurrence of `from` in `bytes` by `to` (same length).
fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from).expect("pattern present");
    bytes[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn a_signed_bundle_survives_the_file_format_and_verifies() {
    let Fixture { author, trusted, bundle } = signed_artifact_bundle();
    let bytes = bundle.to_bytes();
    let read = Bundle::from_bytes(&bytes).unwrap();
    assert_eq!(read, bundle);
    assert_eq!(read.to_bytes(), bytes, "the encoding is canonical");

    let verified = read.verify(&trusted).unwrap();
    assert_eq!(verified.manifest, artifact_manifest(ARTIFACT).as_slice());
    assert_eq!(verified.artifact, ARTIFACT);
    assert_eq!(verified.artifact_blake3, blake3::hash(ARTIFACT));
    assert_eq!(verified.signer.key_id(), author.key_id());
    assert_eq!(verified.signer.name(), "cell author");

    assert_eq!(bundle.cache_id(), cache_id_of(&bytes));
    assert_eq!(bundle.cache_id().0, blake3::hash(&bytes));
}

#[test]
fn an_exec_only_bundle_carries_an_empty_artifact() {
    let author = AuthorKeys::generate("a").unwrap();
    let mut bundle = Bundle::create(EXEC_MANIFEST.as_bytes().to_vec(), Vec::new()).unwrap();
    bundle.sign(&author);
    let trusted: TrustedKeys = [author.public().clone()].into_iter().collect();
    let read = Bundle::from_bytes(&bundle.to_bytes()).unwrap();
    assert!(read.verify(&trusted).unwrap().artifact.is_empty());
}

#[test]
fn the_same_inputs_give_the_same_unsigned_bytes() {
    let a = Bundle::create(EXEC_MANIFEST.as_bytes().to_vec(), Vec::new()).unwrap();
    let b = Bundle::create(EXEC_MANIFEST.as_bytes().to_vec(), Vec::new()).unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
    let bytes = a.to_bytes();
    assert_eq!(&bytes[..8], b"QOSBNDL1");
    // magic, then manifest section (tag, u64 length, bytes), then an empty artifact section.
    assert_eq!(bytes.len(), 8 + 9 + EXEC_MANIFEST.len() + 9);
}

#[test]
fn a_tampered_artifact_is_an_artifact_hash_mismatch() {
    let Fixture { trusted, bundle, .. } = signed_artifact_bundle();
    let mut bytes = bundle.to_bytes();
    patch(&mut bytes, b"pretend", b"PRETEND");
    let err = Bundle::from_bytes(&bytes).unwrap().verify(&trusted).unwrap_err();
    assert!(matches!(err, BundleError::ArtifactHashMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("artifact hash mismatch: the signature covers "),
        "{err}"
    );
}

#[test]
fn a_tampered_manifest_is_a_manifest_hash_mismatch() {
    let Fixture { trusted, bundle, .. } = signed_artifact_bundle();
    let mut bytes = bundle.to_bytes();
    patch(&mut bytes, b"name = \"scraper\"", b"name = \"scrapes\"");
    let err = Bundle::from_bytes(&bytes).unwrap().verify(&trusted).unwrap_err();
    assert!(matches!(err, BundleError::ManifestHashMismatch { .. }), "{err:?}");
    assert!(err.to_string().starts_with("manifest hash mismatch: "), "{err}");
}

#[test]
fn an_artifact_other_than_the_one_the_manifest_declares_is_refused_even_when_signed() {
    let author = AuthorKeys::generate("careless author").unwrap();
    let trusted: TrustedKeys = [author.public().clone()].into_iter().collect();
    let mut bundle = Bundle::create(artifact_manifest(b"the real binary"), ARTIFACT.to_vec()).unwrap();
    bundle.sign(&author);
    let err = bundle.verify(&trusted).unwrap_err();
    assert!(matches!(err, BundleError::DeclaredArtifactHashMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "the manifest declares artifact.blake3 = {}",
            blake3::hash(b"the real binary")
        )),
        "{err}"
    );

    let mut smuggled = Bundle::create(EXEC_MANIFEST.as_bytes().to_vec(), ARTIFACT.to_vec()).unwrap();
    smuggled.sign(&author);
    let err = smuggled.verify(&trusted).unwrap_err();
    assert!(
        matches!(err, BundleError::UndeclaredArtifact { len } if len == ARTIFACT.len() as u64),
        "{err:?}"
    );
}

#[test]
fn a_bundle_signed_by_an_untrusted_key_is_refused_naming_the_key() {
    let Fixture { bundle, .. } = signed_artifact_bundle();
    let stranger = AuthorKeys::generate("someone else").unwrap();
    let only_stranger: TrustedKeys = [stranger.public().clone()].into_iter().collect();
    let err = bundle.verify(&only_stranger).unwrap_err();
    let signer = bundle.signature().unwrap().key_id;
    assert!(matches!(err, BundleError::UntrustedKey { key_id } if key_id == signer), "{err:?}");
    assert_eq!(err.to_string(), format!("signed by unknown or untrusted key {signer}"));
}

#[test]
fn a_missing_ml_dsa_signature_is_refused() {
    let Fixture { trusted, mut bundle, .. } = signed_artifact_bundle();
    bundle.signature_mut().unwrap().ml_dsa = None;
    let read = Bundle::from_bytes(&bundle.to_bytes()).unwrap();
    let err = read.verify(&trusted).unwrap_err();
    assert!(matches!(err, BundleError::MissingMlDsaSignature { .. }), "{err:?}");
    assert!(err.to_string().starts_with("missing ML-DSA-65 signature"), "{err}");
}

#[test]
fn a_missing_ed25519_signature_is_refused() {
    let Fixture { trusted, mut bundle, .. } = signed_artifact_bundle();
    bundle.signature_mut().unwrap().ed25519 = None;
    let read = Bundle::from_bytes(&bundle.to_bytes()).unwrap();
    let err = read.verify(&trusted).unwrap_err();
    assert!(matches!(err, BundleError::MissingEd25519Signature { .. }), "{err:?}");
    assert!(err.to_string().starts_with("missing Ed25519 signature"), "{err}");
}

#[test]
fn a_damaged_signature_names_the_algorithm_that_failed() {
    let Fixture { trusted, bundle, .. } = signed_artifact_bundle();

    let mut bad_ml_dsa = bundle.clone();
    bad_ml_dsa.signature_mut().unwrap().ml_dsa.as_mut().unwrap()[7] ^= 0x01;
    let err = bad_ml_dsa.verify(&trusted).unwrap_err();
    assert!(matches!(err, BundleError::BadMlDsaSignature { .. }), "{err:?}");
    assert!(err.to_string().starts_with("bad ML-DSA-65 signature by \"cell author\""), "{err}");

    let mut bad_ed25519 = bundle.clone();
    bad_ed25519.signature_mut().unwrap().ed25519.as_mut().unwrap()[7] ^= 0x01;
    let err = bad_ed25519.verify(&trusted).unwrap_err();
    assert!(matches!(err, BundleError::BadEd25519Signature { .. }), "{err:?}");
}

#[test]
fn a_signature_by_another_trusted_author_cannot_be_transplanted() {
    // Mallory is trusted too, but re-labelling her signature as the author's must fail.
    let Fixture {
        mut trusted,
        mut bundle,
        author,
    } = signed_artifact_bundle();
    let mallory = AuthorKeys::generate("mallory").unwrap();
    trusted.insert(mallory.public().clone());
    let mut hers = bundle.clone();
    hers.sign(&mallory);
    let sig = bundle.signature_mut().unwrap();
    sig.ml_dsa = hers.signature().unwrap().ml_dsa.clone();
    sig.ed25519 = hers.signature().unwrap().ed25519.clone();
    assert_eq!(sig.key_id, author.key_id());
    assert!(matches!(
        bundle.verify(&trusted).unwrap_err(),
        BundleError::BadMlDsaSignature { .. }
    ));
}

#[test]
fn an_unsigned_bundle_is_refused() {
    let bundle = Bundle::create(EXEC_MANIFEST.as_bytes().to_vec(), Vec::new()).unwrap();
    let read = Bundle::from_bytes(&bundle.to_bytes()).unwrap();
    assert!(matches!(read.verify(&TrustedKeys::new()).unwrap_err(), BundleError::Unsigned));
}

#[test]
fn garbage_and_oversize_input_is_refused_with_a_reason() {
    let check = |bytes: &[u8], expect: &str| {
        let err = Bundle::from_bytes(bytes).unwrap_err();
        assert_eq!(err.to_string(), expect);
    };
    check(b"", "not a QuantumOS cell bundle: it does not start with \"QOSBNDL1\"");
    check(
        b"PK\x03\x04 a zip file",
        "not a QuantumOS cell bundle: it does not start with \"QOSBNDL1\"",
    );
    check(b"QOSBNDL1\x01\x05", "bundle is malformed at byte 8: truncated section header");
    check(
        b"QOSBNDL1\x01\x05\0\0\0\0\0\0\0abc",
        "bundle is malformed at byte 8: section 1 claims 5 bytes but 3 remain",
    );
    check(
        b"QOSBNDL1\x09\0\0\0\0\0\0\0\0",
        "bundle is malformed at byte 8: unknown section tag 9",
    );
    check(
        b"QOSBNDL1\x02\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0",
        "bundle is malformed at byte 17: section 1 is out of order or repeated",
    );
    check(
        b"QOSBNDL1\x01\0\0\0\0\0\0\0\0",
        "bundle is malformed at byte 17: the artifact section is missing",
    );
    let mut huge_manifest = b"QOSBNDL1\x01".to_vec();
    huge_manifest.extend_from_slice(&(MAX_MANIFEST_BYTES + 1).to_le_bytes());
    check(&huge_manifest, "manifest is 1048577 bytes, more than the limit of 1048576");
    let mut absurd = b"QOSBNDL1\x02".to_vec();
    absurd.extend_from_slice(&u64::MAX.to_le_bytes());
    check(&absurd, "artifact is 18446744073709551615 bytes, more than the limit of 2147483648");

    let too_big = Bundle::create(vec![b'#'; MAX_MANIFEST_BYTES as usize + 1], Vec::new()).unwrap_err();
    assert!(matches!(too_big, BundleError::TooLarge { what: "manifest", .. }), "{too_big:?}");
}

#[test]
fn a_bundle_file_is_read_and_its_size_checked_before_reading() {
    let Fixture { trusted, bundle, .. } = signed_artifact_bundle();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scraper.qbundle");
    std::fs::write(&path, bundle.to_bytes()).unwrap();
    Bundle::read_file(&path).unwrap().verify(&trusted).unwrap();

    let err = Bundle::read_file(&dir.path().join("absent.qbundle")).unwrap_err();
    assert!(err.to_string().ends_with("absent.qbundle: cannot read bundle"), "{err}");
}
