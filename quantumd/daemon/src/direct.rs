//! The direct socket: `org.quantumos.Quantum1` on a Unix socket of its own,
//! peer to peer, without dbus-daemon in between — what systemd's private
//! socket is to `systemctl`.
//!
//! A call over the system bus goes client -> dbus-daemon -> quantumd and
//! back, and quantumd must ask the bus who the caller is
//! (GetConnectionUnixUser) before it may act: three hops more per start
//! than a direct connection, on the path every `quantumctl run` waits for.
//! Here the kernel says who connected (SO_PEERCRED), and the client sends
//! no Hello. The interface, object path and access rules are the bus's:
//! each connection gets its own [`Quantum1`] whose [`Authorizer`] knows its
//! one caller, and polkit is asked about that process exactly as about a
//! bus name. Signals stay on the bus (the desktop assistant listens there).
//!
//! The socket comes from systemd (`quantumd.socket`, `/run/quantumd.sock`,
//! mode 0660 root:quantum: root and the members of `quantum`, the users
//! polkit lets run cells; everyone else uses the bus as before), or, off
//! systemd, from `--socket PATH`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::interface::Quantum1;
use crate::polkit::Peer;

/// `FileDescriptorName=` of quantumd.socket.
pub const FD_NAME: &str = "quantumd-direct";

#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("the sockets systemd passed (LISTEN_FDS): {0}")]
    Inherited(#[source] std::io::Error),
    #[error("cannot listen on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The listening socket: the one systemd passed under [`FD_NAME`], else a
/// new one at `path` (a stale socket file there is replaced), else none.
pub fn listener(path: Option<&Path>) -> Result<Option<tokio::net::UnixListener>, DirectError> {
    let mut passed = sd_notify::listen_fds_with_names().map_err(DirectError::Inherited)?;
    if let Some((fd, _)) = passed.find(|(_, name)| name == FD_NAME) {
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID
        // is ours) and nothing else in quantumd takes LISTEN_FDS.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let std_listener = std::os::unix::net::UnixListener::from(owned);
        std_listener.set_nonblocking(true).map_err(DirectError::Inherited)?;
        return tokio::net::UnixListener::from_std(std_listener)
            .map(Some)
            .map_err(DirectError::Inherited);
    }
    let Some(path) = path else { return Ok(None) };
    let bind_error = |source| DirectError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_error(e)),
    }
    tokio::net::UnixListener::bind(path).map(Some).map_err(bind_error)
}

/// Connections served at once; more are closed at once (the caller's
/// quantumctl says quantumd is unreachable). A member of `quantum` could
/// otherwise hold quantumd's memory and descriptors with idle connections;
/// systemd caps its private socket the same way (4096).
const MAX_CONNECTIONS: usize = 1024;

/// Serves every connection to `listener` until quantumd exits.
pub fn serve(listener: tokio::net::UnixListener, interface: Quantum1) {
    let counter = AtomicU64::new(1);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like pass; a busy-loop on a broken
                    // listener would not, so pause before trying again.
                    tracing::warn!(error = %e, "the direct socket could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(limit = MAX_CONNECTIONS, "too many direct connections; refusing one");
                continue;
            };
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let interface = interface.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, n, interface).await {
                    tracing::debug!(connection = n, error = %e, "a direct connection failed");
                }
                drop(slot);
            });
        }
    });
}

/// One client: authenticate it (D-Bus EXTERNAL, checked against the
/// socket's credentials), serve the interface, and drop everything when it
/// hangs up.
async fn connection(stream: tokio::net::UnixStream, n: u64, mut interface: Quantum1) -> zbus::Result<()> {
    let cred = stream.peer_cred().map_err(|e| zbus::Error::InputOutput(std::sync::Arc::new(e)))?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    interface.authorizer = interface.authorizer.for_peer(Peer::new(format!("direct:{n}"), cred.uid(), pid));
    let conn = zbus::connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())?
        .p2p()
        .serve_at(quantum_bus::OBJECT_PATH, interface)?
        .build()
        .await?;
    conn.closed().await;
    Ok(())
}
