//! The provider's HTTP protocol, spoken over real loopback connections.

mod common;

use common::{http, json, raw_get, Provider, Tree};
use quantum_provider::protocol::{Catalog, CatalogEntry, ErrorBody};
use reqwest::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use reqwest::StatusCode;

fn entry(name: &str, version: &str, bytes: &[u8]) -> CatalogEntry {
    CatalogEntry {
        name: name.to_owned(),
        version: version.parse().unwrap(),
        blake3: blake3::hash(bytes).to_hex().to_string(),
        size: bytes.len() as u64,
    }
}

#[tokio::test]
async fn catalog_lists_every_bundle_with_its_blake3_and_size_sorted_by_name_and_version() {
    let tree = Tree::new();
    tree.put("web-server", "1.10.0", b"web 1.10");
    tree.put("web-server", "1.2.0", b"web 1.2");
    tree.put("checksum", "0.1.0-rc.1", b"checksum rc");
    let provider = Provider::start(tree.root()).await;

    let response = http().get(format!("{}v1/catalog", provider.url())).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let catalog: Catalog = json(response).await;

    assert_eq!(
        catalog.bundles,
        vec![
            entry("checksum", "0.1.0-rc.1", b"checksum rc"),
            entry("web-server", "1.2.0", b"web 1.2"),
            entry("web-server", "1.10.0", b"web 1.10"),
        ]
    );
}

#[tokio::test]
async fn catalog_skips_what_does_not_follow_the_layout() {
    let tree = Tree::new();
    tree.put("web-server", "1.0.0", b"web");
    tree.put("Bad_Name", "1.0.0", b"bad name");
    tree.put("web-server", "1.0", b"not semver");
    tree.put("web-server", "01.0.0", b"not canonical");
    std::fs::write(tree.root().join("web-server/1.1.0.tar"), b"other extension").unwrap();
    std::fs::create_dir(tree.root().join("web-server/2.0.0.qcb")).unwrap();
    std::fs::write(tree.root().join("README"), b"a file at the top").unwrap();
    let provider = Provider::start(tree.root()).await;

    let catalog: Catalog = json(http().get(format!("{}v1/catalog", provider.url())).send().await.unwrap()).await;

    assert_eq!(catalog.bundles, vec![entry("web-server", "1.0.0", b"web")]);
}

#[tokio::test]
async fn catalog_sees_a_bundle_published_while_serving_and_its_replacement() {
    let tree = Tree::new();
    let provider = Provider::start(tree.root()).await;
    let catalog = || async { json::<Catalog>(http().get(format!("{}v1/catalog", provider.url())).send().await.unwrap()).await };
    assert_eq!(catalog().await.bundles, vec![]);

    tree.put("checksum", "1.0.0", b"first");
    assert_eq!(catalog().await.bundles, vec![entry("checksum", "1.0.0", b"first")]);

    // Published the safe way: a new file renamed over the old one.
    let tmp = tree.root().join("checksum/.tmp");
    std::fs::write(&tmp, b"second").unwrap();
    std::fs::rename(&tmp, tree.path("checksum", "1.0.0")).unwrap();
    assert_eq!(catalog().await.bundles, vec![entry("checksum", "1.0.0", b"second")]);
}

#[tokio::test]
async fn bundle_by_name_and_version_is_the_file_with_its_blake3_as_etag() {
    let tree = Tree::new();
    let hash = tree.put("web-server", "1.2.0", b"\x00bundle bytes\xff");
    tree.put("web-server", "1.3.0", b"other");
    let provider = Provider::start(tree.root()).await;

    let response = http()
        .get(format!("{}v1/bundles/web-server/1.2.0", provider.url()))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/octet-stream");
    assert_eq!(response.headers()[ETAG].to_str().unwrap(), format!("\"{}\"", hash.to_hex()));
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"\x00bundle bytes\xff");
}

#[tokio::test]
async fn bundle_by_name_alone_redirects_to_the_highest_semver_version() {
    let tree = Tree::new();
    tree.put("web-server", "1.9.0", b"1.9");
    tree.put("web-server", "1.10.0", b"1.10");
    tree.put("web-server", "2.0.0-rc.1", b"2.0 rc");
    tree.put("web-server", "1.10.0-rc.1", b"1.10 rc");
    let provider = Provider::start(tree.root()).await;

    let response = http().get(format!("{}v1/bundles/web-server", provider.url())).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(response.headers()[LOCATION], "web-server/2.0.0-rc.1");

    // Followed, as any client would.
    let followed = reqwest::get(format!("{}v1/bundles/web-server", provider.url())).await.unwrap();
    assert_eq!(followed.url().path(), "/v1/bundles/web-server/2.0.0-rc.1");
    assert_eq!(followed.bytes().await.unwrap().as_ref(), b"2.0 rc");
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_gives_304_and_a_stale_one_gives_the_bytes() {
    let tree = Tree::new();
    let hash = tree.put("checksum", "1.0.0", b"bundle");
    let provider = Provider::start(tree.root()).await;
    let url = format!("{}v1/bundles/checksum/1.0.0", provider.url());
    let etag = format!("\"{}\"", hash.to_hex());

    let current = http().get(&url).header(IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(current.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(current.headers()[ETAG].to_str().unwrap(), etag);
    assert!(current.bytes().await.unwrap().is_empty());

    let stale = format!("\"{}\"", blake3::hash(b"older bundle").to_hex());
    let changed = http().get(&url).header(IF_NONE_MATCH, stale).send().await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(changed.bytes().await.unwrap().as_ref(), b"bundle");
}

#[tokio::test]
async fn if_none_match_sees_a_bundle_replaced_after_it_was_hashed() {
    let tree = Tree::new();
    let old = tree.put("checksum", "1.0.0", b"old");
    let provider = Provider::start(tree.root()).await;
    let url = format!("{}v1/bundles/checksum/1.0.0", provider.url());
    let old_tag = format!("\"{}\"", old.to_hex());
    assert_eq!(
        http().get(&url).header(IF_NONE_MATCH, &old_tag).send().await.unwrap().status(),
        StatusCode::NOT_MODIFIED
    );

    let tmp = tree.root().join("checksum/.tmp");
    std::fs::write(&tmp, b"new").unwrap();
    std::fs::rename(&tmp, tree.path("checksum", "1.0.0")).unwrap();

    let response = http().get(&url).header(IF_NONE_MATCH, &old_tag).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[ETAG].to_str().unwrap(),
        format!("\"{}\"", blake3::hash(b"new").to_hex())
    );
}

#[tokio::test]
async fn unknown_cells_and_versions_are_404_with_a_json_error() {
    let tree = Tree::new();
    tree.put("checksum", "1.0.0", b"bundle");
    let provider = Provider::start(tree.root()).await;

    for path in [
        "v1/bundles/checksum/2.0.0",
        "v1/bundles/archive/1.0.0",
        "v1/bundles/archive",
        "v1/nothing",
    ] {
        let response = http().get(format!("{}{path}", provider.url())).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: ErrorBody = json(response).await;
        assert!(!body.error.is_empty(), "{path}");
    }
}

#[tokio::test]
async fn malformed_names_and_versions_are_400_with_a_json_error() {
    let tree = Tree::new();
    tree.put("checksum", "1.0.0", b"bundle");
    let provider = Provider::start(tree.root()).await;

    for path in [
        "v1/bundles/Checksum/1.0.0",
        "v1/bundles/1checksum",
        "v1/bundles/checksum/1.0",
        "v1/bundles/checksum/latest",
    ] {
        let response = http().get(format!("{}{path}", provider.url())).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: ErrorBody = json(response).await;
        assert!(!body.error.is_empty(), "{path}");
    }
}

/// `..`, encoded dots and encoded or literal slashes, sent byte for byte:
/// every one is refused before any path is built, and the secret next to
/// ROOT is never served.
#[tokio::test]
async fn path_traversal_attempts_are_400_and_never_reach_the_filesystem() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir_all(root.join("checksum")).unwrap();
    std::fs::write(root.join("checksum/1.0.0.qcb"), b"bundle").unwrap();
    std::fs::write(outer.path().join("1.0.0.qcb"), b"SECRET").unwrap();
    std::fs::create_dir_all(outer.path().join("x")).unwrap();
    std::fs::write(outer.path().join("x/1.0.0.qcb"), b"SECRET").unwrap();
    let provider = Provider::start(&root).await;

    for target in [
        "/v1/bundles/../1.0.0",
        "/v1/bundles/%2e%2e/1.0.0",
        "/v1/bundles/%2E%2E/1.0.0",
        "/v1/bundles/..",
        "/v1/bundles/%2e%2e",
        "/v1/bundles/..%2fx/1.0.0",
        "/v1/bundles/..%2Fx/1.0.0",
        "/v1/bundles/checksum/..%2f..%2f1.0.0",
        "/v1/bundles/checksum/%2e%2e",
        "/v1/bundles/../../x/1.0.0",
        "/v1/bundles/checksum/1.0.0/extra",
        "/v1/bundles/%2fetc%2fpasswd/1.0.0",
        "/v1/bundles/checksum%00/1.0.0",
        "/v1/bundles/%ff/1.0.0",
    ] {
        let (status, body) = raw_get(provider.addr, target).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("\"error\""), "{target}: {body}");
        assert!(!body.contains("SECRET"), "{target}: {body}");
    }
}
