//! `quantumd systemd-gate`: the small root service through which quantumd,
//! unprivileged, drives systemd.
//!
//! Why it exists: systemd asks polkit about every StartTransientUnit from a
//! non-root caller on the bus. That check (a round trip to polkitd, which
//! runs the rules' JavaScript) cost more than everything else on a cell's
//! start path together, and systemd-run as root never pays it: root
//! talks to systemd on its private socket, `/run/systemd/private`, where
//! the kernel vouches for the caller. The gate is root and holds that
//! connection for quantumd: quantumd connects to the gate's socket
//! (quantumd-gate.socket, owned by user quantumd, mode 0600) and speaks
//! D-Bus to systemd through it, peer to peer.
//!
//! It is a filter, not a pipe: [`policy`] lets through only the calls
//! quantumd makes, only for units named `quantum-*`, and only the signals
//! about those units. On bookworm's systemd (252) polkit cannot see a
//! transient unit's name, so the gate is where that rule is enforced; the
//! polkit grant that let user quantumd manage units over the bus is gone.
//!
//! Messages keep their serials, bodies and file descriptors (foreground
//! runs), so quantumd's replies match its calls and its descriptors reach
//! systemd without being copied; only systemd's sender field is cut from
//! what comes back (see [`relay`]). One systemd connection per quantumd connection:
//! when either side hangs up, so does the other (systemd closes private
//! connections on `daemon-reexec`; quantumd then restarts and reconnects).

pub mod policy;
mod wire;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use futures_util::StreamExt;

use policy::Verdict;

/// Where quantumd finds the gate (quantumd-gate.socket).
pub const SOCKET: &str = "/run/quantumd-gate.sock";
/// systemd's private socket: root only.
pub const SYSTEMD_PRIVATE: &str = "/run/systemd/private";

/// Serves the gate on the socket systemd passed (or `listen`, off systemd)
/// until killed.
pub async fn run(listen: Option<&Path>, systemd: &Path) -> anyhow::Result<()> {
    let listener = listener(listen)?;
    let allowed = owner_of(&listener)?;
    tracing::info!(socket = ?listener.local_addr().ok(), allowed_uid = allowed, "the systemd gate is serving");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the gate could not accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "no credentials for a gate connection; closed");
                continue;
            }
        };
        // The socket's mode already keeps others out; this holds even if
        // someone loosens it in a drop-in.
        if uid != allowed && uid != 0 {
            tracing::warn!(uid, allowed, "refused a gate connection from a user other than the socket's owner");
            continue;
        }
        let systemd = systemd.to_owned();
        tokio::spawn(async move {
            match relay(stream, &systemd).await {
                Ok(()) => tracing::info!(uid, "a gate connection ended"),
                Err(e) => tracing::warn!(uid, error = format!("{e:#}"), "a gate connection failed"),
            }
        });
    }
}

/// The socket systemd passed, else a new one at `path`.
fn listener(path: Option<&Path>) -> anyhow::Result<tokio::net::UnixListener> {
    let mut passed = sd_notify::listen_fds().context("the sockets systemd passed (LISTEN_FDS)")?;
    if let Some(fd) = passed.next() {
        // SAFETY: systemd passed this descriptor to this process, and it is
        // the only one the gate takes.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let std_listener = std::os::unix::net::UnixListener::from(owned);
        std_listener.set_nonblocking(true)?;
        return Ok(tokio::net::UnixListener::from_std(std_listener)?);
    }
    let path = path.context("no socket passed by systemd and no --listen PATH given")?;
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))
}

/// The uid that owns the socket file: the one user (besides root) the
/// gate serves — quantumd, as quantumd-gate.socket sets it.
fn owner_of(listener: &tokio::net::UnixListener) -> anyhow::Result<u32> {
    let addr = listener.local_addr().context("the gate socket's address")?;
    let path: PathBuf = addr.as_pathname().context("the gate socket has no path")?.to_owned();
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .uid())
}

/// One quantumd connection, paired with one connection to systemd.
///
/// The systemd side is a raw D-Bus socket, not a zbus connection: systemd
/// stamps everything it sends on its private socket with the sender
/// `org.freedesktop.systemd1`, which is not a unique name, and zbus panics
/// when it reads such a header (it does so for every reply it receives).
/// So messages from systemd are taken off the socket whole, their sender
/// field dropped ([`wire::without_sender`]), and only then looked at.
async fn relay(stream: tokio::net::UnixStream, systemd_path: &Path) -> anyhow::Result<()> {
    use zbus::connection::socket::{ReadHalf, Socket, WriteHalf};

    let mut systemd = tokio::net::UnixStream::connect(systemd_path)
        .await
        .with_context(|| format!("cannot connect to systemd at {}", systemd_path.display()))?;
    wire::authenticate(&mut systemd).await.context("D-Bus handshake with systemd")?;
    let (mut systemd_in, mut systemd_out) = systemd.split().take();
    // Reading is not cancel-safe (a message may be half read), so it has a
    // task of its own rather than a branch of the select below.
    let (tx, mut from_systemd) = tokio::sync::mpsc::channel::<zbus::Result<zbus::Message>>(256);
    let reader = tokio::spawn(async move {
        let (mut bytes, mut fds) = (Vec::new(), Vec::new());
        for seq in 1.. {
            let msg = systemd_in.receive_message(seq, &mut bytes, &mut fds).await;
            let failed = msg.is_err();
            if tx.send(msg).await.is_err() || failed {
                break;
            }
        }
    });
    let _reader = AbortOnDrop(reader);

    // The stream is made with the connection: a message that arrived
    // before a stream existed would be dropped (quantumd's first call
    // follows its handshake at once).
    let mut from_quantumd = zbus::connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())?
        .p2p()
        .build_message_stream()
        .await
        .context("D-Bus handshake with quantumd")?;
    let quantumd = zbus::Connection::from(&from_quantumd);
    loop {
        tokio::select! {
            msg = from_quantumd.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let msg = msg.context("reading from quantumd")?;
                match policy::outbound(&msg) {
                    Verdict::Forward => systemd_out.send_message(&msg).await.context("writing to systemd")?,
                    Verdict::Refuse(why) => {
                        tracing::warn!(refused = %why, "the gate refused a call from quantumd");
                        let header = msg.header();
                        if !header.primary().flags().contains(zbus::message::Flags::NoReplyExpected) {
                            let reply = zbus::Message::error(&header, "org.freedesktop.DBus.Error.AccessDenied")?
                                .build(&(format!("quantumd-gate: {why}"),))?;
                            quantumd.send(&reply).await.context("writing to quantumd")?;
                        }
                    }
                }
            }
            msg = from_systemd.recv() => {
                let msg = msg
                    .context("systemd closed the connection (daemon-reexec?)")?
                    .context("reading from systemd")?;
                let msg = wire::without_sender(&msg).context("a message from systemd")?;
                if policy::inbound(&msg) {
                    quantumd.send(&msg).await.context("writing to quantumd")?;
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
