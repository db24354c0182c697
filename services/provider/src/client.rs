//! The client quantumd fetches bundles with: an ordered list of providers,
//! failover with a blacklist, and a verified local cache.
//!
//! [`Providers::fetch`] asks each provider in order. A provider that cannot
//! be reached, times out, answers with an HTTP error, serves bytes that do
//! not match the blake3 in its ETag, or serves a bundle the caller's verify
//! closure rejects is blacklisted for [`Options::blacklist_for`] with the
//! reason, and the next one is asked. A `404` is recorded but does not
//! blacklist: the provider works, it just does not have that bundle.
//!
//! A verified bundle is written to the cache (see `cache.rs`) and the caller
//! gets its path there. When the cache already holds a version, the request
//! carries `If-None-Match` and a `304` is served from the cache; when every
//! provider fails, a cached copy is served and [`Origin::Cache`] says so.
//! Cached bytes are hashed and verified again before they are handed out.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use quantum_model::CellName;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;
use semver::Version;
use url::Url;

use crate::cache::Cache;
pub use crate::cache::CacheError;
use crate::protocol::{self, ErrorBody};

/// How the client talks to providers.
#[derive(Debug, Clone)]
pub struct Options {
    /// Limit on one whole request to one provider, body included.
    pub timeout: Duration,
    /// How long a provider that failed is skipped.
    pub blacklist_for: Duration,
    /// Largest bundle accepted; a provider sending more is failing.
    pub max_bundle_size: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: Duration::from_secs(30),
            blacklist_for: Duration::from_secs(600),
            max_bundle_size: 1 << 30,
        }
    }
}

/// Why the providers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a valid provider URL")]
    BadUrl { url: String, source: url::ParseError },
    #[error("provider {url}: only http:// is supported (https needs reqwest's TLS support, which is not built in; bundles are signed, so plain http keeps them intact)")]
    UnsupportedScheme { url: String },
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Why one provider did not deliver a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureReason {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("transfer failed: {0}")]
    Transfer(String),
    #[error("does not have it: {0}")]
    NotFound(String),
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("sent no ETag naming the bundle's blake3")]
    MissingEtag,
    #[error("sent bytes with blake3 {actual} but advertised {advertised}")]
    HashMismatch { advertised: String, actual: String },
    #[error("sent more than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("does not speak the provider protocol: {0}")]
    Protocol(String),
    #[error("the bundle was rejected: {0}")]
    Rejected(String),
    #[error("skipped, blacklisted for another {}s ({reason})", remaining.as_secs_f32().ceil())]
    Blacklisted { reason: Box<FailureReason>, remaining: Duration },
}

impl FailureReason {
    /// Whether the provider is to be skipped for a while: everything but "it
    /// does not have that bundle", and a skip is not a new failure.
    fn blacklists(&self) -> bool {
        !matches!(self, FailureReason::NotFound(_) | FailureReason::Blacklisted { .. })
    }
}

/// One provider's failure during a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub provider: String,
    pub reason: FailureReason,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.provider, self.reason)
    }
}

/// A provider being skipped, as [`Providers::blacklist`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blacklisted {
    pub provider: String,
    pub reason: FailureReason,
    pub until: Instant,
}

/// Where a fetched bundle came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Downloaded from this provider just now.
    Downloaded { provider: String },
    /// This provider said the cached copy is current (`304`).
    NotModified { provider: String },
    /// No provider delivered it; this is the copy fetched earlier.
    Cache,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Downloaded { provider } => write!(f, "downloaded from {provider}"),
            Origin::NotModified { provider } => write!(f, "served from the cache, current at {provider}"),
            Origin::Cache => f.write_str("served from the cache because no provider delivered it; it may be out of date"),
        }
    }
}

/// A verified bundle in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `CACHE/bundles/<blake3 hex>.qcb`.
    pub path: PathBuf,
    pub blake3: blake3::Hash,
    /// The version fetched: the one asked for, or the latest one found.
    pub version: Version,
    pub origin: Origin,
    /// The providers that failed before this one delivered (or all of them,
    /// for [`Origin::Cache`]), in the order they were asked.
    pub failures: Vec<Failure>,
}

impl Fetched {
    /// The provider that vouched for these bytes, if one did.
    pub fn provider(&self) -> Option<&str> {
        match &self.origin {
            Origin::Downloaded { provider } | Origin::NotModified { provider } => Some(provider),
            Origin::Cache => None,
        }
    }
}

/// Why a bundle could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no provider delivered {name} {wanted}: {}{}", list(failures), cache.as_deref().map(|c| format!("; cache: {c}")).unwrap_or_default())]
    AllFailed {
        name: CellName,
        /// The version asked for, or "(latest)".
        wanted: String,
        failures: Vec<Failure>,
        /// Why the cache could not stand in.
        cache: Option<String>,
    },
    /// The bundle was fetched and verified but cannot be stored.
    #[error("cannot cache {name} {version}")]
    Cache {
        name: CellName,
        version: Version,
        source: CacheError,
    },
    #[error("a cache task failed")]
    Task(#[from] tokio::task::JoinError),
}

fn list(failures: &[Failure]) -> String {
    if failures.is_empty() {
        return "no providers are configured".to_owned();
    }
    failures.iter().map(Failure::to_string).collect::<Vec<_>>().join("; ")
}

#[derive(Debug)]
struct Provider {
    base: Url,
    label: String,
}

/// The providers quantumd fetches bundles from, in order of preference.
#[derive(Debug)]
pub struct Providers {
    providers: Vec<Provider>,
    http: reqwest::Client,
    cache: Cache,
    options: Options,
    /// Provider index -> why and until when it is skipped.
    blacklist: Mutex<HashMap<usize, (FailureReason, Instant)>>,
}

/// What one provider answered.
enum Answer {
    Bundle {
        version: Version,
        bytes: Vec<u8>,
        hash: blake3::Hash,
    },
    NotModified {
        version: Version,
        hash: blake3::Hash,
    },
}

impl Providers {
    /// Providers at `urls` (`http://host:port/` or with a path prefix),
    /// asked in this order, caching under `cache_dir` (created if missing).
    pub fn new<I, S>(urls: I, cache_dir: impl AsRef<Path>, options: Options) -> Result<Providers, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let providers = urls
            .into_iter()
            .map(|url| parse_provider(url.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            // The latest version is a redirect to its own URL; a provider
            // may also hand bundles off to a mirror. More hops is a loop.
            .redirect(reqwest::redirect::Policy::limited(4))
            .user_agent(concat!("quantumd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Http)?;
        let cache = Cache::open(cache_dir.as_ref())?;
        Ok(Providers {
            providers,
            http,
            cache,
            options,
            blacklist: Mutex::new(HashMap::new()),
        })
    }

    /// The providers being skipped now, with why and until when.
    pub fn blacklist(&self) -> Vec<Blacklisted> {
        let now = Instant::now();
        let mut list: Vec<_> = self
            .lock_blacklist()
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(&i, (reason, until))| {
                (
                    i,
                    Blacklisted {
                        provider: self.providers[i].label.clone(),
                        reason: reason.clone(),
                        until: *until,
                    },
                )
            })
            .collect();
        list.sort_by_key(|(i, _)| *i);
        list.into_iter().map(|(_, b)| b).collect()
    }

    /// Fetches `name` at `version` (the highest version a provider has when
    /// `None`), accepting only bytes for which `verify` returns `Ok`. See
    /// the module documentation for the order of things. `verify` runs on
    /// the calling task, so it should be what it is meant to be: a digest
    /// and signature check, not slow I/O.
    pub async fn fetch<F>(&self, name: &CellName, version: Option<&Version>, verify: F) -> Result<Fetched, FetchError>
    where
        F: Fn(&[u8]) -> Result<(), String>,
    {
        let cached = {
            let (cache, n, v) = (self.cache.clone(), name.clone(), version.cloned());
            match tokio::task::spawn_blocking(move || cache.lookup(&n, v.as_ref())).await? {
                Ok(cached) => cached,
                Err(err) => {
                    tracing::warn!(cell = %name, error = %err, "cannot read the bundle cache; fetching without it");
                    None
                }
            }
        };

        let mut failures = Vec::new();
        for (index, provider) in self.providers.iter().enumerate() {
            if let Some(reason) = self.skip(index) {
                failures.push(Failure {
                    provider: provider.label.clone(),
                    reason,
                });
                continue;
            }
            let known = cached.as_ref().map(|(_, hash)| *hash);
            match self.try_provider(provider, name, version, known, &verify).await {
                Ok(Delivered {
                    path,
                    version,
                    hash,
                    origin,
                }) => {
                    tracing::info!(cell = %name, %version, blake3 = %hash, %origin, "fetched bundle");
                    return Ok(Fetched {
                        path,
                        blake3: hash,
                        version,
                        origin,
                        failures,
                    });
                }
                Err(Attempt::Local(err)) => return Err(err),
                Err(Attempt::Provider(reason)) => {
                    tracing::warn!(cell = %name, provider = %provider.label, reason = %reason, "provider failed");
                    if reason.blacklists() {
                        let until = Instant::now() + self.options.blacklist_for;
                        self.lock_blacklist().insert(index, (reason.clone(), until));
                    }
                    failures.push(Failure {
                        provider: provider.label.clone(),
                        reason,
                    });
                }
            }
        }

        let wanted = version.map_or_else(|| "(latest)".to_owned(), Version::to_string);
        let all_failed = |failures, cache| FetchError::AllFailed {
            name: name.clone(),
            wanted: wanted.clone(),
            failures,
            cache,
        };
        let Some((version, hash)) = cached else {
            return Err(all_failed(failures, Some("not cached".to_owned())));
        };
        match self.cached_copy(hash, &verify).await? {
            Ok(path) => {
                tracing::warn!(cell = %name, %version, blake3 = %hash, "every provider failed; serving the cached bundle");
                Ok(Fetched {
                    path,
                    blake3: hash,
                    version,
                    origin: Origin::Cache,
                    failures,
                })
            }
            Err(why) => Err(all_failed(failures, Some(why))),
        }
    }

    /// `Some(reason)` while provider `index` is blacklisted; forgets an
    /// expired entry.
    fn skip(&self, index: usize) -> Option<FailureReason> {
        let mut blacklist = self.lock_blacklist();
        let (reason, until) = blacklist.get(&index)?;
        let now = Instant::now();
        if *until > now {
            return Some(FailureReason::Blacklisted {
                reason: Box::new(reason.clone()),
                remaining: *until - now,
            });
        }
        tracing::info!(provider = %self.providers[index].label, "blacklist expired; trying the provider again");
        blacklist.remove(&index);
        None
    }

    async fn try_provider<F>(
        &self,
        provider: &Provider,
        name: &CellName,
        version: Option<&Version>,
        known: Option<blake3::Hash>,
        verify: &F,
    ) -> Result<Delivered, Attempt>
    where
        F: Fn(&[u8]) -> Result<(), String>,
    {
        let mut answer = self.ask(provider, name, version, known).await?;
        if let Answer::NotModified { version: v, hash } = &answer {
            match self.cached_copy(*hash, verify).await.map_err(Attempt::Local)? {
                Ok(path) => {
                    self.remember(name, v, hash).await;
                    let origin = Origin::NotModified {
                        provider: provider.label.clone(),
                    };
                    return Ok(Delivered {
                        path,
                        version: v.clone(),
                        hash: *hash,
                        origin,
                    });
                }
                // The copy the provider confirmed went bad here; this is not
                // the provider's fault, so ask it once more for the bytes.
                Err(why) => {
                    tracing::warn!(cell = %name, reason = %why, "the cached bundle is unusable; downloading it again");
                    answer = self.ask(provider, name, version, None).await?;
                }
            }
        }
        let Answer::Bundle { version, bytes, hash } = answer else {
            return Err(Attempt::Provider(FailureReason::Protocol(
                "answered 304 to a request without If-None-Match".to_owned(),
            )));
        };
        verify(&bytes).map_err(|why| Attempt::Provider(FailureReason::Rejected(why)))?;
        let (cache, n, v) = (self.cache.clone(), name.clone(), version.clone());
        let path = tokio::task::spawn_blocking(move || cache.store(&n, &v, &bytes, &hash))
            .await
            .map_err(|err| Attempt::Local(err.into()))?
            .map_err(|source| {
                Attempt::Local(FetchError::Cache {
                    name: name.clone(),
                    version: version.clone(),
                    source,
                })
            })?;
        Ok(Delivered {
            path,
            version,
            hash,
            origin: Origin::Downloaded {
                provider: provider.label.clone(),
            },
        })
    }

    /// One request to one provider, checked against the protocol: the ETag
    /// names the blake3 of the body, the final URL names the version.
    async fn ask(
        &self,
        provider: &Provider,
        name: &CellName,
        version: Option<&Version>,
        known: Option<blake3::Hash>,
    ) -> Result<Answer, Attempt> {
        let path = match version {
            Some(version) => protocol::bundle_path(name, version),
            None => format!("v1/bundles/{name}"),
        };
        let url = provider
            .base
            .join(&path)
            .map_err(|err| protocol_error(format!("cannot build a URL from {path}: {err}")))?;
        let mut request = self.http.get(url);
        if let Some(hash) = known {
            request = request.header(IF_NONE_MATCH, protocol::etag(&hash));
        }
        let mut response = request.send().await.map_err(|err| self.transport_error(&err))?;

        let version = match version {
            Some(version) => version.clone(),
            None => version_from_url(response.url(), name)?,
        };
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(protocol::parse_etag);
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            let Some(hash) = known else {
                return Err(protocol_error("answered 304 to a request without If-None-Match".to_owned()));
            };
            // A 304 whose tag is not the one we sent confirms nothing.
            if etag.is_some_and(|e| e != hash) {
                return Err(protocol_error(
                    "answered 304 with an ETag other than the one asked about".to_owned(),
                ));
            }
            return Ok(Answer::NotModified { version, hash });
        }
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| status.canonical_reason().unwrap_or("error").to_owned());
            return Err(Attempt::Provider(if status == StatusCode::NOT_FOUND {
                FailureReason::NotFound(message)
            } else {
                FailureReason::Http {
                    status: status.as_u16(),
                    message,
                }
            }));
        }
        let advertised = etag.ok_or(Attempt::Provider(FailureReason::MissingEtag))?;

        let limit = self.options.max_bundle_size;
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(Attempt::Provider(FailureReason::TooLarge { limit }));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| self.transport_error(&err))? {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(Attempt::Provider(FailureReason::TooLarge { limit }));
            }
            bytes.extend_from_slice(&chunk);
        }
        let hash = blake3::hash(&bytes);
        if hash != advertised {
            return Err(Attempt::Provider(FailureReason::HashMismatch {
                advertised: advertised.to_hex().to_string(),
                actual: hash.to_hex().to_string(),
            }));
        }
        Ok(Answer::Bundle { version, bytes, hash })
    }

    /// The cached bundle with this hash, re-hashed and re-verified (trusted
    /// keys may have changed since it was fetched); `Err(why)` when it
    /// cannot stand in.
    async fn cached_copy<F>(&self, hash: blake3::Hash, verify: &F) -> Result<Result<PathBuf, String>, FetchError>
    where
        F: Fn(&[u8]) -> Result<(), String>,
    {
        let cache = self.cache.clone();
        let loaded = tokio::task::spawn_blocking(move || cache.load(&hash)).await?;
        Ok(match loaded {
            Ok((path, bytes)) => match verify(&bytes) {
                Ok(()) => Ok(path),
                Err(why) => Err(format!("the cached copy was rejected: {why}")),
            },
            Err(err) => Err(error_chain(&err)),
        })
    }

    /// Records a version a `304` confirmed (for the latest version, that
    /// may be one not yet recorded); failing only costs a later 304.
    async fn remember(&self, name: &CellName, version: &Version, hash: &blake3::Hash) {
        let (cache, n, v, h) = (self.cache.clone(), name.clone(), version.clone(), *hash);
        match tokio::task::spawn_blocking(move || cache.remember(&n, &v, &h)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %error_chain(&err), "cannot record a cached bundle"),
            Err(err) => tracing::warn!(error = %err, "cannot record a cached bundle"),
        }
    }

    fn transport_error(&self, err: &reqwest::Error) -> Attempt {
        Attempt::Provider(if err.is_timeout() {
            FailureReason::Timeout(self.options.timeout)
        } else if err.is_connect() {
            FailureReason::Unreachable(error_chain(err))
        } else {
            FailureReason::Transfer(error_chain(err))
        })
    }

    fn lock_blacklist(&self) -> MutexGuard<'_, HashMap<usize, (FailureReason, Instant)>> {
        // Every update is a single insert or remove; a panic elsewhere
        // cannot leave the map half-changed.
        self.blacklist.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one provider delivered, verified and in the cache.
struct Delivered {
    path: PathBuf,
    version: Version,
    hash: blake3::Hash,
    origin: Origin,
}

/// A provider's fault (try the next one) or ours (stop: the next provider
/// would not fare better).
enum Attempt {
    Provider(FailureReason),
    Local(FetchError),
}

fn protocol_error(message: String) -> Attempt {
    Attempt::Provider(FailureReason::Protocol(message))
}

/// The version a request for the latest bundle was redirected to: the URL
/// must end in `/NAME/VERSION`.
fn version_from_url(url: &Url, name: &CellName) -> Result<Version, Attempt> {
    let mut segments = url.path_segments().into_iter().flatten().rev();
    let (last, before) = (segments.next(), segments.next());
    match (last.map(Version::parse), before) {
        (Some(Ok(version)), Some(n)) if n == name.as_str() => Ok(version),
        _ => Err(protocol_error(format!(
            "the latest bundle's URL {url} does not end in /{name}/VERSION"
        ))),
    }
}

fn parse_provider(url: &str) -> Result<Provider, ClientError> {
    let mut base = Url::parse(url).map_err(|source| ClientError::BadUrl {
        url: url.to_owned(),
        source,
    })?;
    if base.scheme() != "http" {
        return Err(ClientError::UnsupportedScheme { url: url.to_owned() });
    }
    // Without a trailing slash, joining would replace the last segment of
    // a path prefix instead of appending to it.
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    Ok(Provider {
        label: base.to_string(),
        base,
    })
}

/// An error with its causes, which reqwest keeps out of its Display.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
