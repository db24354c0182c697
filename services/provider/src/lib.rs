//! QuantumOS cell provider: a catalog of signed cell bundles served over
//! HTTP ([`server`], binary `quantum-provider`), and the client quantumd
//! fetches bundles with ([`client`]).
//!
//! A bundle is one file (manifest + artifact + signatures). Its format
//! belongs to `quantum-trust`; this crate treats bundles as opaque bytes and
//! identifies them by the blake3 of the file. Whether a bundle may be used is
//! decided by a verify closure the caller of [`client::Providers::fetch`]
//! passes in, so this crate never needs to know the trusted keys.
//!
//! Architecture invariant: no knowledge of the bundle format, of D-Bus or of
//! the daemon. API boundary: the HTTP protocol in [`protocol`] is spoken by
//! every provider and every quantumd, so it is versioned (`/v1/`).

pub mod protocol;

#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;

#[cfg(feature = "client")]
mod cache;
#[cfg(feature = "client")]
pub mod client;
