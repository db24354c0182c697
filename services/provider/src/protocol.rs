//! The provider's HTTP protocol, shared by server and client.
//!
//! - `GET /v1/catalog` -> `200` [`Catalog`] as JSON.
//! - `GET /v1/bundles/{name}/{version}` -> `200` the bundle bytes
//!   (`application/octet-stream`) with `ETag: "<blake3 hex>"`; `304` when
//!   `If-None-Match` names that tag.
//! - `GET /v1/bundles/{name}` -> `307` to the highest version's URL, so every
//!   bundle has exactly one URL and one ETag.
//! - Errors: `400` for a malformed name or version, `404` for an unknown
//!   one, both with an [`ErrorBody`].
//!
//! The ETag is the blake3 of the body, not an opaque token: a client checks
//! the bytes it received against it, and an `If-None-Match` match means
//! "identical bytes" whatever the version.

use serde::{Deserialize, Serialize};

/// File name extension of a bundle: `ROOT/NAME/VERSION.qcb` on a provider.
pub const BUNDLE_EXTENSION: &str = "qcb";

/// Media type of a bundle body.
pub const BUNDLE_CONTENT_TYPE: &str = "application/octet-stream";

/// `GET /v1/catalog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Sorted by name, then by ascending version.
    pub bundles: Vec<CatalogEntry>,
}

/// One bundle a provider offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub name: String,
    pub version: semver::Version,
    /// Lower-case hex blake3 of the bundle file.
    pub blake3: String,
    /// Size of the bundle file in bytes.
    pub size: u64,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The path of a bundle relative to a provider's base URL.
pub fn bundle_path(name: &quantum_model::CellName, version: &semver::Version) -> String {
    format!("v1/bundles/{name}/{version}")
}

/// The `ETag` header value for a bundle with this hash.
pub fn etag(hash: &blake3::Hash) -> String {
    format!("\"{}\"", hash.to_hex())
}

/// The hash an `ETag` header value names, if it is one of ours (a strong tag
/// holding 64 hex digits).
pub fn parse_etag(value: &str) -> Option<blake3::Hash> {
    let hex = value.trim().strip_prefix('"')?.strip_suffix('"')?;
    blake3::Hash::from_hex(hex).ok()
}

/// Whether an `If-None-Match` header value names this hash. Handles lists
/// and `*`; weak tags (`W/"..."`) compare weakly, as RFC 9110 asks for
/// `If-None-Match`.
pub fn if_none_match_names(header: &str, hash: &blake3::Hash) -> bool {
    header.split(',').map(str::trim).any(|tag| {
        if tag == "*" {
            return true;
        }
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        parse_etag(tag).is_some_and(|h| h == *hash)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_round_trips_through_parse() {
        let h = blake3::hash(b"bundle");
        assert_eq!(parse_etag(&etag(&h)), Some(h));
    }

    #[test]
    fn etag_without_quotes_or_with_bad_hex_is_not_ours() {
        let h = blake3::hash(b"bundle");
        assert_eq!(parse_etag(&h.to_hex()), None);
        assert_eq!(parse_etag("\"xyz\""), None);
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let h = blake3::hash(b"bundle");
        let other = blake3::hash(b"other");
        assert!(if_none_match_names(&format!("{}, {}", etag(&other), etag(&h)), &h));
        assert!(if_none_match_names(&format!("W/{}", etag(&h)), &h));
        assert!(if_none_match_names("*", &h));
        assert!(!if_none_match_names(&etag(&other), &h));
        assert!(!if_none_match_names("", &h));
    }
}
