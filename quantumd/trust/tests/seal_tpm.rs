//! The node identity sealed by a real TPM (swtpm), started by each test.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::str::FromStr as _;

use common::{closed_port, Swtpm};
use quantum_trust::seal::SEALED_FILE;
use quantum_trust::{Config, KeyStore, Origin, SealError, TpmSetting};
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{Digest, DigestValues};
use tss_esapi::{Context, TctiNameConf};

fn tpm_config(tpm: &Swtpm, dir: &std::path::Path, bind_pcr7: bool) -> Config {
    Config {
        tpm: TpmSetting::Tcti(tpm.tcti()),
        dir: dir.to_owned(),
        bind_pcr7,
    }
}

/// What a boot with a different Secure Boot configuration does to PCR 7.
fn extend_pcr7(tpm: &Swtpm) {
    let mut ctx = Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();
    let mut values = DigestValues::new();
    values.set(HashingAlgorithm::Sha256, Digest::try_from(vec![0x5a; 32]).unwrap());
    ctx.execute_with_nullauth_session(|ctx| ctx.pcr_extend(PcrHandle::Pcr7, values))
        .unwrap();
}

#[test]
fn a_sealed_identity_unseals_to_the_same_keys_and_signs() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(state.path());

    let store = KeyStore::open(&tpm_config(&tpm, dir.path(), false)).unwrap();
    assert!(store.is_tpm(), "{}", store.describe());
    assert_eq!(store.fallback_reason(), None);
    let description = store.describe();
    assert!(
        description.starts_with(&format!("TPM at {:?}: node identity sealed in ", tpm.tcti())),
        "{description}"
    );
    assert!(description.ends_with("(not bound to PCRs)"), "{description}");

    let (created, origin) = store.load_or_generate("node-a").unwrap();
    assert_eq!(origin, Origin::Generated);
    let sealed = dir.path().join(SEALED_FILE);
    assert_eq!(std::fs::metadata(&sealed).unwrap().permissions().mode() & 0o777, 0o600);

    let (unsealed, origin) = store.load_or_generate("node-a").unwrap();
    assert_eq!(origin, Origin::Loaded);
    assert_eq!(unsealed.public(), created.public());
    let signature = unsealed.sign(b"trail entry 1");
    created.public().verify(b"trail entry 1", &signature).unwrap();
}

#[test]
fn the_identity_unseals_again_after_the_tpm_restarts() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(state.path());
    let created = KeyStore::open(&tpm_config(&tpm, dir.path(), false))
        .unwrap()
        .regenerate("node-b")
        .unwrap();

    let tpm = tpm.restart();
    let store = KeyStore::open(&tpm_config(&tpm, dir.path(), false)).unwrap();
    let unsealed = store.load().unwrap();
    assert_eq!(unsealed.key_id(), created.key_id());
    created.public().verify(b"after reboot", &unsealed.sign(b"after reboot")).unwrap();
}

#[test]
fn with_pcr7_binding_a_changed_pcr7_refuses_unseal_and_says_how_to_recover() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(state.path());
    let store = KeyStore::open(&tpm_config(&tpm, dir.path(), true)).unwrap();
    assert!(store.describe().ends_with("(bound to PCR 7)"), "{}", store.describe());
    let created = store.regenerate("node-c").unwrap();
    assert_eq!(store.load().unwrap().key_id(), created.key_id(), "unchanged PCR 7 unseals");

    extend_pcr7(&tpm);
    let err = store.load().unwrap_err();
    assert!(matches!(err, SealError::PcrChanged { .. }), "{err:?}");
    assert!(err.is_permanent());
    let message = err.to_string();
    assert!(
        message.contains("PCR 7 (Secure Boot policy) changed since it was sealed"),
        "{message}"
    );
    assert!(message.contains("regenerate the identity"), "{message}");
    assert!(message.contains(&dir.path().join(SEALED_FILE).display().to_string()), "{message}");
    // load_or_generate must not paper over the failure with a new identity.
    assert!(matches!(store.load_or_generate("node-c"), Err(SealError::PcrChanged { .. })));

    // The documented recovery: regenerate, sealed to the new PCR 7 value.
    let replacement = store.regenerate("node-c").unwrap();
    assert_ne!(replacement.key_id(), created.key_id());
    assert_eq!(store.load().unwrap().key_id(), replacement.key_id());
}

#[test]
fn a_sealed_identity_does_not_unseal_on_another_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let first_state = tempfile::tempdir().unwrap();
    let first = Swtpm::start(first_state.path());
    KeyStore::open(&tpm_config(&first, dir.path(), false))
        .unwrap()
        .regenerate("node-d")
        .unwrap();
    drop(first);

    let other_state = tempfile::tempdir().unwrap();
    let other = Swtpm::start(other_state.path());
    let store = KeyStore::open(&tpm_config(&other, dir.path(), false)).unwrap();
    let err = store.load().unwrap_err();
    assert!(matches!(err, SealError::SealedByAnotherTpm { .. }), "{err:?}");
    assert!(err.is_permanent());
    let message = err.to_string();
    assert!(message.contains("sealed by another TPM (or this TPM was cleared"), "{message}");
    assert!(message.contains(&dir.path().join(SEALED_FILE).display().to_string()), "{message}");
    let identity_dir = dir.path().display().to_string();
    assert!(message.contains(&format!("move {identity_dir} aside")), "{message}");
    assert!(message.contains(&format!("`mv {identity_dir} {identity_dir}.old`")), "{message}");
    assert!(message.contains("restart quantumd"), "{message}");
    assert!(message.contains("new key id"), "{message}");
    // load_or_generate must not paper over the failure with a new identity.
    assert!(matches!(
        store.load_or_generate("node-d"),
        Err(SealError::SealedByAnotherTpm { .. })
    ));
}

#[test]
fn an_unreachable_tpm_is_an_error_once_an_identity_is_sealed_in_it() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(state.path());
    KeyStore::open(&tpm_config(&tpm, dir.path(), false))
        .unwrap()
        .regenerate("node-e")
        .unwrap();
    drop(tpm);

    let tcti = format!("swtpm:host=127.0.0.1,port={}", closed_port());
    let err = KeyStore::open(&Config {
        tpm: TpmSetting::Tcti(tcti.clone()),
        dir: dir.path().to_owned(),
        bind_pcr7: false,
    })
    .unwrap_err();
    assert!(matches!(err, SealError::TpmUnreachable { .. }), "{err:?}");
    assert!(!err.is_permanent(), "an unreachable TPM may answer at the next boot");
    assert!(err.to_string().contains("refusing to fall back to a file"), "{err}");
    assert!(err.to_string().contains(&tcti), "{err}");
}
