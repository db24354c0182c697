//! The trusted key directory, /etc/quantumos/trusted-keys.d/*.pub.

use quantum_trust::{KeyError, KeyPair, TrustedKeys};

#[test]
fn every_pub_file_in_the_directory_is_trusted_and_other_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let alice = KeyPair::generate("alice").unwrap();
    let bob = KeyPair::generate("bob").unwrap();
    std::fs::write(dir.path().join("alice.pub"), alice.public().to_toml()).unwrap();
    std::fs::write(dir.path().join("bob.pub"), bob.public().to_toml()).unwrap();
    std::fs::write(dir.path().join("README"), "not a key").unwrap();
    std::fs::write(dir.path().join("carol.pub~"), "editor backup").unwrap();

    let trusted = TrustedKeys::load(dir.path()).unwrap();
    assert_eq!(trusted.len(), 2);
    let found = trusted.get(&alice.key_id()).unwrap();
    assert_eq!(&found.keys, alice.public());
    assert_eq!(found.path.as_deref(), Some(dir.path().join("alice.pub").as_path()));
    assert_eq!(trusted.get(&bob.key_id()).unwrap().keys.name(), "bob");
}

#[test]
fn a_bad_pub_file_fails_the_load_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alice.pub"), KeyPair::generate("alice").unwrap().public().to_toml()).unwrap();
    std::fs::write(dir.path().join("broken.pub"), "name = \"broken\"\n").unwrap();
    let err = TrustedKeys::load(dir.path()).unwrap_err();
    let path = dir.path().join("broken.pub");
    assert!(matches!(&err, KeyError::BadFile { path: p, .. } if *p == path), "{err:?}");
    assert_eq!(err.to_string(), format!("{}: bad public key file", path.display()));
}

#[test]
fn the_same_key_in_two_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = KeyPair::generate("alice").unwrap().public().to_toml();
    std::fs::write(dir.path().join("a.pub"), &text).unwrap();
    std::fs::write(dir.path().join("b.pub"), &text).unwrap();
    let err = TrustedKeys::load(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: key ", dir.path().join("b.pub").display())),
        "{err}"
    );
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("trusted-keys.d");
    let err = TrustedKeys::load(&missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: cannot read the trusted key directory", missing.display())
    );
}
