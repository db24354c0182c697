//! `quantum-provider`: serves a directory of signed cell bundles over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use quantum_provider::{server, store::BundleStore};
use tokio::signal::unix::{signal, SignalKind};

/// Serve signed QuantumOS cell bundles over HTTP.
///
/// Bundles are files laid out as ROOT/NAME/VERSION.qcb, where NAME is a cell
/// name (1-63 of a-z, 0-9 and '-', starting with a letter) and VERSION a
/// semver version written canonically (1.2.0, 2.0.0-rc.1). Other files are
/// ignored. The provider does not check signatures: quantumd verifies every
/// bundle it fetches against its own trusted keys, so a provider needs no
/// secrets and may be any mirror.
#[derive(Debug, Parser)]
#[command(
    version,
    after_long_help = "\
ENDPOINTS:
    GET /v1/catalog                    JSON {\"bundles\": [{\"name\", \"version\", \"blake3\", \"size\"}]}
    GET /v1/bundles/NAME/VERSION       the bundle; ETag \"<blake3>\", If-None-Match gives 304
    GET /v1/bundles/NAME               307 redirect to the highest version
    Errors are JSON {\"error\": \"...\"}: 400 for a malformed name or version, 404 for an unknown one.

CATALOG:
    ROOT is scanned afresh for every catalog request and each bundle request looks at its own
    file, so a bundle published by writing a temporary file and renaming it into place is
    served at once. Hashes are cached by path, inode, mtime and size; SIGHUP drops that cache.

SIGNALS:
    SIGTERM, SIGINT   stop accepting connections, finish the requests in flight, exit 0
    SIGHUP            forget cached hashes (rehash every bundle on the next catalog request)

SYSTEMD:
    With Type=notify the provider reports READY=1 once it listens, and STOPPING=1 on shutdown.

EXAMPLES:
    quantum-provider --root /srv/quantumos/bundles
    quantum-provider --root ./bundles --listen [::]:7878
    curl http://127.0.0.1:7878/v1/catalog
"
)]
struct Args {
    /// Directory holding the bundles, as ROOT/NAME/VERSION.qcb.
    #[arg(long, value_name = "DIR", env = "QUANTUM_PROVIDER_ROOT")]
    root: PathBuf,

    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878", env = "QUANTUM_PROVIDER_LISTEN")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    // Fail at start, not at the first request, when ROOT is not a readable
    // directory; an empty one is fine (bundles may be published later).
    std::fs::read_dir(&args.root).with_context(|| format!("cannot read the bundle directory {}", args.root.display()))?;
    let store = Arc::new(BundleStore::new(&args.root));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr().context("cannot read the listening address")?;

    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hup_store = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    hup_store.forget_hashes();
                    tracing::info!("SIGHUP: forgot cached hashes");
                }
            }
        }
        tracing::info!("stopping: finishing requests in flight");
        notify(&[sd_notify::NotifyState::Stopping]);
        // The receiver is gone only if the server already ended.
        let _ = stop_tx.send(());
    });

    tracing::info!(root = %args.root.display(), listen = %local, "serving cell bundles");
    notify(&[sd_notify::NotifyState::Ready]);
    server::serve(listener, store, async {
        // A dropped sender (the signal task ended) also means stop.
        let _ = stop_rx.await;
    })
    .await
    .context("serving HTTP")?;
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd about a state change when it asked to be told
/// (`NOTIFY_SOCKET` set); a failure costs only the notification.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}
