//! Cell identity documents: issued by the node, handed to the unit as JSON, verified with expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quantum_trust::{IdentityDocument, IdentityError, NodeKeys, SignatureError, SignedIdentity};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const ISSUED: u64 = 1_750_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn issue(node: &NodeKeys) -> SignedIdentity {
    let manifest = blake3::hash(b"[cell]\nname = \"web-server\"\n");
    IdentityDocument::issue("web-server", &manifest, "web-server.3", node, at(ISSUED), HOUR).unwrap()
}

#[test]
fn an_issued_document_travels_as_json_and_verifies_until_it_expires() {
    let node = NodeKeys::generate("node-1").unwrap();
    let json = issue(&node).to_json();
    assert!(
        json.starts_with(r#"{"format":"quantumos-cell-identity-v1","document":{"cell":"web-server","manifest-blake3":""#),
        "{json}"
    );

    let received = SignedIdentity::from_json(&json).unwrap();
    let doc = received.verify(node.public(), at(ISSUED + 10)).unwrap();
    assert_eq!(doc.cell, "web-server");
    assert_eq!(doc.instance_id, "web-server.3");
    assert_eq!(doc.node_key_id, node.key_id().to_string());
    assert_eq!(doc.manifest_blake3, blake3::hash(b"[cell]\nname = \"web-server\"\n").to_string());
    assert_eq!((doc.issued, doc.not_after), (ISSUED, ISSUED + 3600));

    received.verify(node.public(), at(ISSUED + 3599)).unwrap();
    let err = received.verify(node.public(), at(ISSUED + 3600)).unwrap_err();
    assert!(
        matches!(err, IdentityError::Expired { not_after, .. } if not_after == ISSUED + 3600),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "identity document for web-server.3 expired at {} (unix seconds); it is now {}",
            ISSUED + 3600,
            ISSUED + 3600
        )
    );
}

#[test]
fn a_document_from_the_future_beyond_clock_skew_is_refused() {
    let node = NodeKeys::generate("node-1").unwrap();
    let doc = issue(&node);
    doc.verify(node.public(), at(ISSUED - 60)).unwrap();
    let err = doc.verify(node.public(), at(ISSUED - 61)).unwrap_err();
    assert!(matches!(err, IdentityError::NotYetValid { .. }), "{err:?}");
}

#[test]
fn a_document_edited_in_transit_fails_its_signatures() {
    let node = NodeKeys::generate("node-1").unwrap();
    let json = issue(&node).to_json();
    let stretched = json.replace(
        &format!("\"not-after\":{}", ISSUED + 3600),
        &format!("\"not-after\":{}", ISSUED + 360_000),
    );
    assert_ne!(stretched, json);
    let err = SignedIdentity::from_json(&stretched)
        .unwrap()
        .verify(node.public(), at(ISSUED))
        .unwrap_err();
    assert!(matches!(err, IdentityError::Signature(SignatureError::Both { .. })), "{err:?}");

    let renamed = json.replace("\"instance-id\":\"web-server.3\"", "\"instance-id\":\"web-server.4\"");
    let err = SignedIdentity::from_json(&renamed)
        .unwrap()
        .verify(node.public(), at(ISSUED))
        .unwrap_err();
    assert!(matches!(err, IdentityError::Signature(_)), "{err:?}");
}

#[test]
fn a_document_is_checked_against_the_node_that_issued_it() {
    let node = NodeKeys::generate("node-1").unwrap();
    let other = NodeKeys::generate("node-2").unwrap();
    let err = issue(&node).verify(other.public(), at(ISSUED)).unwrap_err();
    assert!(
        matches!(err, IdentityError::WrongNode { document, node: n } if document == node.key_id() && n == other.key_id()),
        "{err:?}"
    );
}

#[test]
fn malformed_json_is_refused_with_the_field_named() {
    let node = NodeKeys::generate("node-1").unwrap();
    let json = issue(&node).to_json();
    assert!(matches!(SignedIdentity::from_json("{}"), Err(IdentityError::Json(_))));
    let err = SignedIdentity::from_json(&json.replace("quantumos-cell-identity-v1", "something-else")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "identity document has format \"something-else\", expected \"quantumos-cell-identity-v1\""
    );
    let err = SignedIdentity::from_json(&json.replace("\"manifest-blake3\":\"", "\"manifest-blake3\":\"zz")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "identity document field manifest-blake3 is invalid: must be 64 hex digits"
    );
}
