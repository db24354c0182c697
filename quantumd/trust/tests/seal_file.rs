//! The owner-only key file: the fallback when there is no TPM.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::closed_port;
use quantum_trust::seal::{FileStore, SecretStore, KEY_FILE};
use quantum_trust::{Config, KeyPair, KeyStore, Origin, SealError, TpmSetting};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn without_a_tpm_the_file_store_is_used_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let tcti = format!("swtpm:host=127.0.0.1,port={}", closed_port());
    let store = KeyStore::open(&Config {
        tpm: TpmSetting::Tcti(tcti.clone()),
        dir: dir.path().to_owned(),
        bind_pcr7: false,
    })
    .unwrap();

    assert!(!store.is_tpm());
    let reason = store.fallback_reason().unwrap();
    assert!(reason.starts_with(&format!("no TPM answers at {tcti:?}: ")), "{reason}");
    let key_file = dir.path().join(KEY_FILE);
    assert_eq!(
        store.describe(),
        format!("file {} (owner-only 0600, not protected by a TPM): {reason}", key_file.display())
    );

    let (created, origin) = store.load_or_generate("node-f").unwrap();
    assert_eq!(origin, Origin::Generated);
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let (loaded, origin) = store.load_or_generate("node-f").unwrap();
    assert_eq!(origin, Origin::Loaded);
    assert_eq!(loaded.public(), created.public());
    created.public().verify(b"m", &loaded.sign(b"m")).unwrap();
}

#[test]
fn a_tpm_turned_off_in_the_configuration_is_the_reason_given() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(&Config {
        tpm: TpmSetting::Off,
        dir: dir.path().to_owned(),
        bind_pcr7: false,
    })
    .unwrap();
    assert_eq!(store.fallback_reason(), Some("the TPM is turned off in the configuration"));
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(KEY_FILE);
    let store = FileStore::new(path.clone(), None);
    store.store(&KeyPair::generate("node-g").unwrap()).unwrap();

    for mode in [0o644, 0o640, 0o604, 0o660] {
        chmod(&path, mode);
        let err = store.load().unwrap_err();
        assert!(matches!(err, SealError::InsecureMode { mode: m, .. } if m == mode), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{}: key file mode is {mode:04o}; refusing to use it", path.display())),
            "{message}"
        );
    }
    chmod(&path, 0o600);
    store.load().unwrap();
    chmod(&path, 0o400);
    store.load().unwrap();
}

#[test]
fn a_key_file_owned_by_someone_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(KEY_FILE);
    let store = FileStore::new(path.clone(), None);
    store.store(&KeyPair::generate("node-h").unwrap()).unwrap();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let other = if me == 0 { 1 } else { 0 };
    if me != 0 {
        // Only root can give a file away; the project's test machines run as root.
        eprintln!("not root: cannot create a key file owned by someone else; owner check not exercised");
        return;
    }
    std::os::unix::fs::chown(&path, Some(other), None).unwrap();
    let err = store.load().unwrap_err();
    assert!(
        matches!(err, SealError::WrongOwner { owner, expected, .. } if owner == other && expected == me),
        "{err:?}"
    );
}

#[test]
fn a_symlink_in_place_of_the_key_file_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("elsewhere.key");
    FileStore::new(real.clone(), None)
        .store(&KeyPair::generate("node-i").unwrap())
        .unwrap();
    let link = dir.path().join(KEY_FILE);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = FileStore::new(link, None).load().unwrap_err();
    assert!(matches!(err, SealError::Io { action: "open", .. }), "{err:?}");
}

#[test]
fn a_corrupted_key_file_is_reported_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(&Config {
        tpm: TpmSetting::Off,
        dir: dir.path().to_owned(),
        bind_pcr7: false,
    })
    .unwrap();
    store.regenerate("node-j").unwrap();
    let path = dir.path().join(KEY_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&path, &bytes).unwrap();

    let err = store.load_or_generate("node-j").unwrap_err();
    assert!(matches!(err, SealError::BadKeys { .. }), "{err:?}");
    assert!(err.to_string().starts_with(&path.display().to_string()), "{err}");
}
