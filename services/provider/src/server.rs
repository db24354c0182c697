//! The HTTP front of a [`BundleStore`]: the protocol of [`crate::protocol`]
//! on axum. Handlers validate the name and version, run the blocking store
//! call on the blocking pool, and map the outcome to a status; nothing else.

use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use quantum_model::CellName;
use semver::Version;

use crate::protocol::{self, Catalog, ErrorBody, BUNDLE_CONTENT_TYPE};
use crate::store::{BundleStore, StoreError};

/// Why a request failed, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the bundle store task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Store(_) | ApiError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let error = if status.is_server_error() {
            // The operator needs the path and OS error; the client gets no
            // more than that the provider failed, without our file layout.
            tracing::error!(error = %self, source = ?std::error::Error::source(&self), "request failed");
            "internal error of the provider".to_owned()
        } else {
            self.to_string()
        };
        (status, Json(ErrorBody { error })).into_response()
    }
}

/// The provider's routes over `store`.
pub fn router(store: Arc<BundleStore>) -> Router {
    Router::new()
        .route("/v1/catalog", get(catalog))
        .route("/v1/bundles/{name}", get(latest))
        .route("/v1/bundles/{name}/{version}", get(bundle))
        .fallback(fallback)
        .with_state(store)
}

/// Serves `store` on `listener` until `shutdown` completes, then finishes
/// the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<BundleStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store)).with_graceful_shutdown(shutdown).await
}

async fn catalog(State(store): State<Arc<BundleStore>>) -> Result<Json<Catalog>, ApiError> {
    let catalog = tokio::task::spawn_blocking(move || store.catalog()).await??;
    Ok(Json(catalog))
}

/// Redirects to the highest version, so that every bundle has one URL and
/// one ETag. The `Location` is relative (`NAME/VERSION` resolved against
/// `/v1/bundles/NAME`), which keeps working behind a reverse proxy that
/// serves the provider under a path prefix.
async fn latest(State(store): State<Arc<BundleStore>>, path: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    let name = parse_name(&name)?;
    let found = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || store.latest(&name)).await??
    };
    let version = found.ok_or_else(|| ApiError::NotFound(format!("no bundle of cell {name}")))?;
    let location = HeaderValue::try_from(format!("{name}/{version}"))
        .map_err(|_| ApiError::BadRequest(format!("version {version} cannot be written in a header")))?;
    tracing::debug!(cell = %name, %version, "latest");
    Ok((StatusCode::TEMPORARY_REDIRECT, [(LOCATION, location)]).into_response())
}

async fn bundle(
    State(store): State<Arc<BundleStore>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((name, version)) = path.map_err(|err| ApiError::BadRequest(err.body_text()))?;
    let name = parse_name(&name)?;
    let version = Version::parse(&version).map_err(|err| ApiError::BadRequest(format!("{version:?} is not a semver version: {err}")))?;
    let not_found = || ApiError::NotFound(format!("no bundle {name} {version}"));

    // A header that is not visible ASCII cannot name one of our tags.
    if let Some(wanted) = headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let (store, n, v) = (store.clone(), name.clone(), version.clone());
        let hash = tokio::task::spawn_blocking(move || store.hash_of(&n, &v))
            .await??
            .ok_or_else(not_found)?;
        if protocol::if_none_match_names(wanted, &hash) {
            tracing::debug!(cell = %name, %version, "not modified");
            return Ok((StatusCode::NOT_MODIFIED, [(ETAG, etag_header(&hash)), (CACHE_CONTROL, no_cache())]).into_response());
        }
    }

    let found = {
        let (n, v) = (name.clone(), version.clone());
        tokio::task::spawn_blocking(move || store.read(&n, &v)).await??
    };
    let bundle = found.ok_or_else(not_found)?;
    tracing::debug!(cell = %name, %version, blake3 = %bundle.hash, size = bundle.bytes.len(), "serving");
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(BUNDLE_CONTENT_TYPE)),
        (ETAG, etag_header(&bundle.hash)),
        (CACHE_CONTROL, no_cache()),
    ];
    Ok((headers, bundle.bytes).into_response())
}

/// Anything else under `/v1/bundles/` has the wrong number of segments (a
/// literal `..`, an extra `/`): a malformed request, not a missing bundle.
async fn fallback(uri: Uri) -> ApiError {
    if uri.path().starts_with("/v1/bundles/") {
        ApiError::BadRequest("a bundle is addressed as /v1/bundles/NAME or /v1/bundles/NAME/VERSION".to_owned())
    } else {
        ApiError::NotFound(format!("no such endpoint {}", uri.path()))
    }
}

fn parse_name(name: &str) -> Result<CellName, ApiError> {
    name.parse::<CellName>().map_err(|err| ApiError::BadRequest(err.to_string()))
}

fn etag_header(hash: &blake3::Hash) -> HeaderValue {
    HeaderValue::try_from(protocol::etag(hash)).unwrap_or_else(|_| unreachable!("a quoted hex string is a valid header value"))
}

/// Caches may keep a bundle but must revalidate it: the ETag makes that one
/// cheap round trip, and a replaced bundle is never served stale.
fn no_cache() -> HeaderValue {
    HeaderValue::from_static("no-cache")
}
