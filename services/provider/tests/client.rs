//! The client quantumd uses: failover, blacklist and cache, against real
//! providers on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{closed_port, Provider, Tree};
use quantum_model::CellName;
use quantum_provider::client::{FailureReason, FetchError, Options, Origin, Providers};
use semver::Version;

const BUNDLE: &[u8] = b"QCB1 manifest + artifact + signatures";

fn cell() -> CellName {
    "web-server".parse().unwrap()
}

fn v(text: &str) -> Version {
    text.parse().unwrap()
}

/// What quantumd's verify closure does, reduced to its essence: accept only
/// the bundle we expect.
fn expect(hash: blake3::Hash) -> impl Fn(&[u8]) -> Result<(), String> {
    move |bytes| {
        let actual = blake3::hash(bytes);
        if actual == hash {
            Ok(())
        } else {
            Err(format!("blake3 {actual} is not the expected {hash}"))
        }
    }
}

fn options() -> Options {
    Options {
        timeout: Duration::from_secs(5),
        blacklist_for: Duration::from_secs(600),
        ..Options::default()
    }
}

fn tampered() -> Vec<u8> {
    let mut bytes = BUNDLE.to_vec();
    bytes[7] ^= 0x01;
    bytes
}

#[tokio::test]
async fn a_fetched_bundle_is_verified_and_cached_under_its_blake3() {
    let tree = Tree::new();
    let hash = tree.put("web-server", "1.0.0", BUNDLE);
    let provider = Provider::start(tree.root()).await;
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([provider.url()], cache.path(), options()).unwrap();

    let fetched = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();

    assert_eq!(fetched.origin, Origin::Downloaded { provider: provider.url() });
    assert_eq!(fetched.provider(), Some(provider.url().as_str()));
    assert_eq!(fetched.blake3, hash);
    assert_eq!(fetched.version, v("1.0.0"));
    assert_eq!(fetched.path, cache.path().join("bundles").join(format!("{}.qcb", hash.to_hex())));
    assert_eq!(std::fs::read(&fetched.path).unwrap(), BUNDLE);
    assert!(fetched.failures.is_empty());
}

#[tokio::test]
async fn fetching_without_a_version_gets_the_highest_one() {
    let tree = Tree::new();
    tree.put("web-server", "1.9.0", b"1.9");
    let hash = tree.put("web-server", "1.10.0", b"1.10");
    let provider = Provider::start(tree.root()).await;
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([provider.url()], cache.path(), options()).unwrap();

    let fetched = providers.fetch(&cell(), None, expect(hash)).await.unwrap();

    assert_eq!(fetched.version, v("1.10.0"));
    assert_eq!(std::fs::read(&fetched.path).unwrap(), b"1.10");
}

#[tokio::test]
async fn a_second_fetch_of_an_unchanged_bundle_is_a_304_served_from_the_cache() {
    let tree = Tree::new();
    let hash = tree.put("web-server", "1.0.0", BUNDLE);
    let provider = Provider::start(tree.root()).await;
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([provider.url()], cache.path(), options()).unwrap();
    providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();

    let again = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();
    let latest = providers.fetch(&cell(), None, expect(hash)).await.unwrap();

    assert_eq!(again.origin, Origin::NotModified { provider: provider.url() });
    assert_eq!(std::fs::read(&again.path).unwrap(), BUNDLE);
    assert_eq!(latest.origin, Origin::NotModified { provider: provider.url() });
    assert_eq!(latest.version, v("1.0.0"));
}

#[tokio::test]
async fn a_304_for_a_cached_copy_that_went_bad_downloads_the_bundle_again() {
    let tree = Tree::new();
    let hash = tree.put("web-server", "1.0.0", BUNDLE);
    let provider = Provider::start(tree.root()).await;
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([provider.url()], cache.path(), options()).unwrap();
    let first = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();
    std::fs::write(&first.path, b"bit rot").unwrap();

    let again = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();

    assert_eq!(again.origin, Origin::Downloaded { provider: provider.url() });
    assert_eq!(std::fs::read(&again.path).unwrap(), BUNDLE);
    assert!(providers.blacklist().is_empty());
}

#[tokio::test]
async fn a_provider_serving_a_tampered_bundle_is_blacklisted_and_the_next_one_delivers() {
    let (evil_tree, good_tree) = (Tree::new(), Tree::new());
    evil_tree.put("web-server", "1.0.0", &tampered());
    let hash = good_tree.put("web-server", "1.0.0", BUNDLE);
    let (evil, good) = (Provider::start(evil_tree.root()).await, Provider::start(good_tree.root()).await);
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([evil.url(), good.url()], cache.path(), options()).unwrap();

    let before = Instant::now();
    let fetched = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();

    assert_eq!(fetched.origin, Origin::Downloaded { provider: good.url() });
    assert_eq!(std::fs::read(&fetched.path).unwrap(), BUNDLE);
    assert_eq!(fetched.failures.len(), 1);
    assert_eq!(fetched.failures[0].provider, evil.url());
    let rejected = FailureReason::Rejected(format!("blake3 {} is not the expected {hash}", blake3::hash(&tampered())));
    assert_eq!(fetched.failures[0].reason, rejected);

    let blacklist = providers.blacklist();
    assert_eq!(blacklist.len(), 1);
    assert_eq!(blacklist[0].provider, evil.url());
    assert_eq!(blacklist[0].reason, rejected);
    assert!(blacklist[0].until >= before + Duration::from_secs(600) && blacklist[0].until <= Instant::now() + Duration::from_secs(600));

    // While blacklisted, the provider is not asked at all.
    let again = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();
    assert_eq!(again.origin, Origin::NotModified { provider: good.url() });
    assert!(matches!(&again.failures[0].reason, FailureReason::Blacklisted { reason, .. } if **reason == rejected));
}

#[tokio::test]
async fn a_provider_whose_bytes_do_not_match_its_etag_is_blacklisted_before_verification() {
    use axum::http::header::ETAG;
    // A provider that advertises one hash and sends other bytes.
    let lying = axum::Router::new().route(
        "/v1/bundles/{name}/{version}",
        axum::routing::get(|| async { ([(ETAG, format!("\"{}\"", blake3::hash(BUNDLE).to_hex()))], tampered()) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, lying).await });
    let tree = Tree::new();
    let hash = tree.put("web-server", "1.0.0", BUNDLE);
    let good = Provider::start(tree.root()).await;
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([liar.clone(), good.url()], cache.path(), options()).unwrap();
    let verified = std::sync::atomic::AtomicUsize::new(0);

    let fetched = providers
        .fetch(&cell(), Some(&v("1.0.0")), |bytes: &[u8]| {
            verified.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            expect(hash)(bytes)
        })
        .await
        .unwrap();

    assert_eq!(fetched.origin, Origin::Downloaded { provider: good.url() });
    let mismatch = FailureReason::HashMismatch {
        advertised: hash.to_hex().to_string(),
        actual: blake3::hash(&tampered()).to_hex().to_string(),
    };
    assert_eq!(fetched.failures[0].reason, mismatch);
    assert_eq!(providers.blacklist()[0].reason, mismatch);
    // Only the good provider's bytes reached the verify closure.
    assert_eq!(verified.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_provider_that_is_down_is_blacklisted_and_the_next_one_delivers() {
    let tree = Tree::new();
    let hash = tree.put("web-server", "1.0.0", BUNDLE);
    let good = Provider::start(tree.root()).await;
    let down = closed_port();
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([down.clone(), good.url()], cache.path(), options()).unwrap();

    let fetched = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();

    assert_eq!(fetched.origin, Origin::Downloaded { provider: good.url() });
    assert_eq!(fetched.failures.len(), 1);
    assert_eq!(fetched.failures[0].provider, down);
    assert!(
        matches!(fetched.failures[0].reason, FailureReason::Unreachable(_)),
        "{:?}",
        fetched.failures
    );
    let blacklist = providers.blacklist();
    assert_eq!(blacklist.len(), 1);
    assert_eq!(blacklist[0].provider, down);
}

#[tokio::test]
async fn a_provider_that_never_answers_times_out_and_is_blacklisted() {
    // Accepts connections (the kernel's backlog does) but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/", silent.local_addr().unwrap());
    let tree = Tree::new();
    let hash = tree.put("web-server", "1.0.0", BUNDLE);
    let good = Provider::start(tree.root()).await;
    let cache = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(300);
    let providers = Providers::new([silent_url.clone(), good.url()], cache.path(), Options { timeout, ..options() }).unwrap();

    let fetched = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();

    assert_eq!(fetched.origin, Origin::Downloaded { provider: good.url() });
    assert_eq!(fetched.failures[0].provider, silent_url);
    assert_eq!(fetched.failures[0].reason, FailureReason::Timeout(timeout));
    assert_eq!(providers.blacklist()[0].provider, silent_url);
    drop(silent);
}

#[tokio::test]
async fn a_provider_without_the_bundle_is_passed_over_but_not_blacklisted() {
    let (empty_tree, tree) = (Tree::new(), Tree::new());
    let hash = tree.put("web-server", "1.0.0", BUNDLE);
    let (empty, good) = (Provider::start(empty_tree.root()).await, Provider::start(tree.root()).await);
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([empty.url(), good.url()], cache.path(), options()).unwrap();

    let fetched = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();

    assert_eq!(fetched.origin, Origin::Downloaded { provider: good.url() });
    assert!(
        matches!(fetched.failures[0].reason, FailureReason::NotFound(_)),
        "{:?}",
        fetched.failures
    );
    assert!(providers.blacklist().is_empty());
}

#[tokio::test]
async fn a_blacklisted_provider_is_asked_again_once_its_time_is_up() {
    let (first_tree, second_tree) = (Tree::new(), Tree::new());
    first_tree.put("web-server", "1.0.0", &tampered());
    let hash = second_tree.put("web-server", "1.0.0", BUNDLE);
    let (first, second) = (Provider::start(first_tree.root()).await, Provider::start(second_tree.root()).await);
    let cache = tempfile::tempdir().unwrap();
    let blacklist_for = Duration::from_millis(400);
    let providers = Providers::new(
        [first.url(), second.url()],
        cache.path(),
        Options {
            blacklist_for,
            ..options()
        },
    )
    .unwrap();
    let blake3_of = |bytes: &[u8]| blake3::hash(bytes);

    providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();
    assert_eq!(providers.blacklist()[0].provider, first.url());
    first_tree.put("web-server", "2.0.0", b"two");
    second_tree.put("web-server", "2.0.0", b"two");
    let skipped = providers
        .fetch(&cell(), Some(&v("2.0.0")), expect(blake3_of(b"two")))
        .await
        .unwrap();
    assert_eq!(skipped.provider(), Some(second.url().as_str()));
    assert!(
        matches!(skipped.failures[0].reason, FailureReason::Blacklisted { .. }),
        "{:?}",
        skipped.failures
    );

    // Once the time is up, the first provider (now serving good bundles) is
    // first again: version 3 exists only there.
    tokio::time::sleep(blacklist_for + Duration::from_millis(100)).await;
    assert!(providers.blacklist().is_empty());
    first_tree.put("web-server", "3.0.0", b"three");
    let retried = providers
        .fetch(&cell(), Some(&v("3.0.0")), expect(blake3_of(b"three")))
        .await
        .unwrap();
    assert_eq!(retried.origin, Origin::Downloaded { provider: first.url() });
    assert!(retried.failures.is_empty());
}

#[tokio::test]
async fn when_every_provider_is_down_a_cached_bundle_is_served_and_says_so() {
    let tree = Tree::new();
    let hash = tree.put("web-server", "1.0.0", BUNDLE);
    let provider = Provider::start(tree.root()).await;
    let url = provider.url();
    let down = closed_port();
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([down.clone(), url.clone()], cache.path(), options()).unwrap();
    providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();
    provider.stop().await;

    // A fresh client (quantumd restarted) with the same cache.
    let providers = Providers::new([down.clone(), url.clone()], cache.path(), options()).unwrap();
    let fetched = providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();
    let latest = providers.fetch(&cell(), None, expect(hash)).await.unwrap();

    assert_eq!(fetched.origin, Origin::Cache);
    assert_eq!(fetched.provider(), None);
    assert!(fetched
        .origin
        .to_string()
        .contains("served from the cache because no provider delivered it"));
    assert_eq!(std::fs::read(&fetched.path).unwrap(), BUNDLE);
    let failed: Vec<_> = fetched.failures.iter().map(|f| f.provider.clone()).collect();
    assert_eq!(failed, vec![down, url]);
    assert!(
        fetched.failures.iter().all(|f| matches!(f.reason, FailureReason::Unreachable(_))),
        "{:?}",
        fetched.failures
    );
    assert_eq!((latest.origin, latest.version), (Origin::Cache, v("1.0.0")));
}

#[tokio::test]
async fn a_cached_bundle_the_verify_closure_now_rejects_is_not_served() {
    let tree = Tree::new();
    let hash = tree.put("web-server", "1.0.0", BUNDLE);
    let provider = Provider::start(tree.root()).await;
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([provider.url()], cache.path(), options()).unwrap();
    providers.fetch(&cell(), Some(&v("1.0.0")), expect(hash)).await.unwrap();
    provider.stop().await;

    let err = providers
        .fetch(&cell(), Some(&v("1.0.0")), |_: &[u8]| Err("the signing key was revoked".to_owned()))
        .await
        .unwrap_err();

    assert!(
        err.to_string()
            .contains("the cached copy was rejected: the signing key was revoked"),
        "{err}"
    );
}

#[tokio::test]
async fn when_every_provider_is_down_and_nothing_is_cached_the_error_names_each_failure() {
    let (down1, down2) = (closed_port(), closed_port());
    let cache = tempfile::tempdir().unwrap();
    let providers = Providers::new([down1.clone(), down2.clone()], cache.path(), options()).unwrap();

    let err = providers
        .fetch(&cell(), Some(&v("1.0.0")), expect(blake3::hash(BUNDLE)))
        .await
        .unwrap_err();

    let FetchError::AllFailed {
        name,
        wanted,
        failures,
        cache,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((name, wanted.as_str()), (&cell(), "1.0.0"));
    assert_eq!(
        failures.iter().map(|f| f.provider.clone()).collect::<Vec<_>>(),
        vec![down1.clone(), down2.clone()]
    );
    assert!(
        failures.iter().all(|f| matches!(f.reason, FailureReason::Unreachable(_))),
        "{failures:?}"
    );
    assert_eq!(cache.as_deref(), Some("not cached"));
    let text = err.to_string();
    assert!(text.starts_with("no provider delivered web-server 1.0.0: "), "{text}");
    assert!(
        text.contains(&format!("{down1}: unreachable: ")) && text.contains(&format!("{down2}: unreachable: ")),
        "{text}"
    );

    // Asked again at once, both are skipped as blacklisted, still named.
    let again = providers.fetch(&cell(), None, expect(blake3::hash(BUNDLE))).await.unwrap_err();
    let FetchError::AllFailed { failures, wanted, .. } = &again else {
        panic!("{again:?}")
    };
    assert_eq!(wanted, "(latest)");
    assert!(
        failures.iter().all(|f| matches!(f.reason, FailureReason::Blacklisted { .. })),
        "{failures:?}"
    );
}

#[test]
fn provider_urls_must_be_http_and_are_normalised_to_end_in_a_slash() {
    let cache = tempfile::tempdir().unwrap();
    assert!(Providers::new(["https://mirror.example/"], cache.path(), options()).is_err());
    assert!(Providers::new(["not a url"], cache.path(), options()).is_err());
    let providers = Providers::new(["http://127.0.0.1:1/quantum"], cache.path(), options()).unwrap();
    assert!(format!("{providers:?}").contains("http://127.0.0.1:1/quantum/"));
}
