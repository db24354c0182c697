//! What a cell and quantumd's channel broker say to each other on the
//! broker socket.
//!
//! The socket is `SOCK_SEQPACKET`: one message is one JSON document (at
//! most [`MAX_MESSAGE`] bytes) and carries at most one file descriptor, the
//! stream it hands over. A cell sends one [`Request`]; the broker answers
//! one [`Reply`]. A `connect` connection ends there (the stream came with
//! the reply); a `listen` connection stays open, and the broker sends an
//! [`Reply::Incoming`] with a stream for every peer that connects, until
//! either side closes it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The environment variable naming the broker socket in a cell's
/// environment (quantumd sets it for every cell that provides or uses a
/// channel).
pub const SOCKET_ENV: &str = "QUANTUM_CHANNELS";
/// Where the broker listens on a QuantumOS node
/// (`quantumd-channels.socket`).
pub const DEFAULT_SOCKET: &str = "/run/quantumd-channels.sock";
/// The environment variable holding the cell's token. Not a secret, so not
/// a systemd credential: the token names its instance, and the broker
/// honours it only from a process in that instance's cgroup, so a copy
/// read by anyone else opens nothing (and in systemd 252 every unit's
/// credentials are a mount in the host's namespace, which made each cell
/// start ~60 % slower under TCG).
pub const TOKEN_ENV: &str = "QUANTUM_CHANNEL_TOKEN";
/// The largest message either side sends on the broker socket.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// What a cell asks of the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Serve `channel`, one of the cell's own `[provides] channels` (the
    /// bare name): every peer that connects arrives on this connection.
    Listen { channel: String, token: String },
    /// A stream to `channel`, `CELL/CHANNEL`, one of the cell's
    /// `[uses] channels`.
    Connect { channel: String, token: String },
}

/// What the broker answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// A `listen` was accepted; peers follow as `Incoming`.
    Listening,
    /// A `connect` was accepted; the message carries the stream.
    Connected { peer: Peer },
    /// A peer connected to a listened channel; the message carries the
    /// stream.
    Incoming { peer: Peer },
    /// The request was refused, and why (also recorded in the trail).
    Refused { reason: String },
}

/// The cell instance at the other end of a stream, as quantumd knows it
/// (from the kernel's SO_PEERCRED and the cell's cgroup, never from what
/// the peer says about itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub instance: String,
    pub cell: String,
}

/// Sends `msg`, with `pass` as SCM_RIGHTS when given. On a non-blocking
/// socket a full queue is `WouldBlock`, as for `write`.
pub fn send(socket: BorrowedFd<'_>, msg: &impl Serialize, pass: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "message larger than MAX_MESSAGE"));
    }
    let iov = [io::IoSlice::new(&bytes)];
    let fds;
    let cmsg;
    let cmsgs: &[ControlMessage<'_>] = match pass {
        Some(fd) => {
            fds = [fd.as_raw_fd()];
            cmsg = [ControlMessage::ScmRights(&fds)];
            &cmsg
        }
        None => &[],
    };
    socket::sendmsg::<()>(socket.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one message and the descriptor it carries, if any; `None` at
/// end of stream. A message that is not a `T`, or larger than
/// [`MAX_MESSAGE`], is `InvalidData` (its descriptors are closed).
pub fn recv<T: DeserializeOwned>(socket: BorrowedFd<'_>) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let (len, truncated, mut fds) = {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in this
                // process for this message; nothing else owns them.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, truncated, fds)
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message too large"));
    }
    let msg = serde_json::from_slice(&buf[..len]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let fd = if fds.is_empty() { None } else { Some(fds.swap_remove(0)) };
    Ok(Some((msg, fd)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    #[test]
    fn a_reply_arrives_with_the_stream_it_carries() {
        let (a, b) = seqpacket_pair();
        let (mine, theirs) = UnixStream::pair().expect("pair");
        let peer = Peer {
            instance: "echo-server.3".into(),
            cell: "echo-server".into(),
        };
        send(a.as_fd(), &Reply::Connected { peer: peer.clone() }, Some(theirs.as_fd())).expect("send");
        drop(theirs);
        let (reply, fd) = recv::<Reply>(b.as_fd()).expect("recv").expect("a message");
        assert_eq!(reply, Reply::Connected { peer });
        let mut got = UnixStream::from(fd.expect("a descriptor"));
        use std::io::{Read, Write};
        (&mine).write_all(b"hi").expect("write");
        let mut buf = [0u8; 2];
        got.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn a_request_is_json_with_its_op() {
        let r = Request::Connect {
            channel: "echo-server/echo".into(),
            token: "T".into(),
        };
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(json, r#"{"op":"connect","channel":"echo-server/echo","token":"T"}"#);
    }

    #[test]
    fn end_of_stream_is_none_and_garbage_is_invalid_data() {
        let (a, b) = seqpacket_pair();
        socket::send(a.as_raw_fd(), b"not json", MsgFlags::empty()).expect("send");
        let e = recv::<Reply>(b.as_fd()).expect_err("garbage");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        drop(a);
        assert!(recv::<Reply>(b.as_fd()).expect("eof").is_none());
    }
}
