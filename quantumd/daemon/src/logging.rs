//! Logging policy: `error!` — quantumd or a cell cannot do what it was asked
//! and a person should look; `warn!` — something unexpected that quantumd
//! handled (an adopted orphan, a blacklisted cell); `info!` — a change of
//! state a person may want in the journal (cell started/ended, backend
//! chosen); `debug!` — detail for developers. Never log secrets or parameter
//! values of type string (they may be tokens).
//!
//! Under systemd (JOURNAL_STREAM set) logs go to the journal with structured
//! fields; elsewhere to stderr. `RUST_LOG` filters, default `info`.

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    match journald {
        Some(layer) => tracing_subscriber::registry().with(filter).with(layer).init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}
