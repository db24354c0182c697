//! `/metrics`: the STEPPPS figures as Prometheus text, on a loopback port or
//! a Unix socket. Off by default; only loopback, because the figures name
//! every cell and there is no authentication (a Unix socket's file mode is
//! its access control).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::routing::get;
use axum::Router;

use crate::steppps::Steppps;

/// Where `/metrics` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics = {0:?}: expected a loopback ADDRESS:PORT (such as 127.0.0.1:9464) or an absolute Unix socket path")]
    BadEndpoint(String),
    #[error(
        "metrics = {0:?}: only loopback addresses are served (the figures have no authentication); use a Unix socket to share them further"
    )]
    NotLoopback(String),
    #[error("cannot listen on {what}")]
    Listen { what: String, source: std::io::Error },
}

impl Endpoint {
    /// Parses the `metrics` setting; `Ok(None)` when it is empty (off).
    pub fn parse(setting: &str) -> Result<Option<Endpoint>, MetricsError> {
        if setting.is_empty() {
            return Ok(None);
        }
        if setting.starts_with('/') {
            return Ok(Some(Endpoint::Unix(PathBuf::from(setting))));
        }
        let addr: SocketAddr = setting.parse().map_err(|_| MetricsError::BadEndpoint(setting.to_owned()))?;
        if !addr.ip().is_loopback() {
            return Err(MetricsError::NotLoopback(setting.to_owned()));
        }
        Ok(Some(Endpoint::Tcp(addr)))
    }
}

/// Binds now (so that a bad setting fails quantumd's start) and serves in
/// a task.
pub async fn serve(endpoint: Endpoint, steppps: Steppps) -> Result<(), MetricsError> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let steppps = steppps.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    quantum_steppps::prometheus(&steppps.figures(None)),
                )
            }
        }),
    );
    match endpoint {
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Listen {
                what: addr.to_string(),
                source,
            })?;
            tracing::info!(%addr, "serving STEPPPS figures at /metrics");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "/metrics stopped");
                }
            });
        }
        Endpoint::Unix(path) => {
            let listen_error = |source| MetricsError::Listen {
                what: path.display().to_string(),
                source,
            };
            // A socket left by a previous quantumd is in the way.
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(listen_error(e)),
                _ => {}
            }
            let listener = tokio::net::UnixListener::bind(&path).map_err(listen_error)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o660)).map_err(listen_error)?;
            tracing::info!(socket = %path.display(), "serving STEPPPS figures at /metrics");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "/metrics stopped");
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_on_loopback_or_a_socket_only() {
        assert_eq!(Endpoint::parse("").unwrap(), None);
        assert_eq!(
            Endpoint::parse("127.0.0.1:9464").unwrap(),
            Some(Endpoint::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(
            Endpoint::parse("/run/quantumd/metrics.sock").unwrap(),
            Some(Endpoint::Unix("/run/quantumd/metrics.sock".into()))
        );
        assert!(matches!(Endpoint::parse("0.0.0.0:9464"), Err(MetricsError::NotLoopback(_))));
        assert!(matches!(Endpoint::parse("localhost"), Err(MetricsError::BadEndpoint(_))));
    }
}
