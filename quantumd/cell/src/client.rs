//! The cell's side: ask the broker for streams, serve a channel, and talk
//! in length-prefixed frames.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sys::socket::{self, SockFlag, SockType};

use crate::wire::{self, Peer, Reply, Request};

/// The largest frame [`Stream::recv`] accepts (a bigger length is a
/// protocol error, not an allocation).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "${} is not set: this cell was not given a channel token (does its cell.toml list [provides] or [uses] channels?)",
        wire::TOKEN_ENV
    )]
    NoToken,
    #[error("cannot reach the channel broker at {}: {source}", socket.display())]
    Broker {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refused: {0}")]
    Refused(String),
    #[error("the broker closed the connection (quantumd stopped, or the token was revoked)")]
    Closed,
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
}

/// A cell's access to channels: the broker's socket and the cell's token.
#[derive(Debug, Clone)]
pub struct Channels {
    socket: PathBuf,
    token: String,
}

impl Channels {
    /// What quantumd gives a cell: the socket in `$QUANTUM_CHANNELS`
    /// (default [`wire::DEFAULT_SOCKET`]) and the token in
    /// `$QUANTUM_CHANNEL_TOKEN`.
    pub fn from_env() -> Result<Channels, Error> {
        let socket = std::env::var_os(wire::SOCKET_ENV).map_or_else(|| PathBuf::from(wire::DEFAULT_SOCKET), PathBuf::from);
        let token = std::env::var(wire::TOKEN_ENV).map_err(|_| Error::NoToken)?;
        Ok(Channels::new(socket, token.trim().to_owned()))
    }

    pub fn new(socket: impl Into<PathBuf>, token: impl Into<String>) -> Channels {
        Channels {
            socket: socket.into(),
            token: token.into(),
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The same access with another token (an attenuated one, say).
    pub fn with_token(&self, token: impl Into<String>) -> Channels {
        Channels::new(self.socket.clone(), token)
    }

    fn ask(&self, request: &Request) -> Result<(OwnedFd, Reply, Option<OwnedFd>), Error> {
        let broker = |source| Error::Broker {
            socket: self.socket.clone(),
            source,
        };
        let fd =
            socket::socket(socket::AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(|e| broker(e.into()))?;
        let addr = socket::UnixAddr::new(&self.socket).map_err(|e| broker(e.into()))?;
        socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(|e| broker(e.into()))?;
        wire::send(fd.as_fd(), request, None).map_err(broker)?;
        match wire::recv::<Reply>(fd.as_fd()).map_err(broker)? {
            None => Err(Error::Closed),
            Some((Reply::Refused { reason }, _)) => Err(Error::Refused(reason)),
            Some((reply, passed)) => Ok((fd, reply, passed)),
        }
    }

    /// A stream to `channel` (`CELL/CHANNEL`, one of the cell's
    /// `[uses] channels`), and who serves it.
    pub fn connect(&self, channel: &str) -> Result<(Stream, Peer), Error> {
        let (_, reply, passed) = self.ask(&Request::Connect {
            channel: channel.to_owned(),
            token: self.token.clone(),
        })?;
        match (reply, passed) {
            (Reply::Connected { peer }, Some(fd)) => Ok((Stream::from_fd(fd).map_err(|e| Error::Protocol(e.to_string()))?, peer)),
            (other, _) => Err(Error::Protocol(format!("{other:?} without a stream"))),
        }
    }

    /// Serves `channel` (one of the cell's `[provides] channels`): peers
    /// arrive through [`Listener::accept`].
    pub fn listen(&self, channel: &str) -> Result<Listener, Error> {
        let (fd, reply, _) = self.ask(&Request::Listen {
            channel: channel.to_owned(),
            token: self.token.clone(),
        })?;
        match reply {
            Reply::Listening => Ok(Listener { control: fd }),
            other => Err(Error::Protocol(format!("{other:?} to a listen"))),
        }
    }
}

/// A served channel: the broker hands each connecting peer's stream here.
#[derive(Debug)]
pub struct Listener {
    control: OwnedFd,
}

impl Listener {
    /// The next peer's stream (blocks). [`Error::Closed`] when the broker
    /// closed the listening connection (quantumd stopped or revoked it).
    pub fn accept(&self) -> Result<(Stream, Peer), Error> {
        let got = wire::recv::<Reply>(self.control.as_fd()).map_err(|e| Error::Protocol(e.to_string()))?;
        match got {
            None => Err(Error::Closed),
            Some((Reply::Incoming { peer }, Some(fd))) => Ok((Stream::from_fd(fd).map_err(|e| Error::Protocol(e.to_string()))?, peer)),
            Some((Reply::Refused { reason }, _)) => Err(Error::Refused(reason)),
            Some((other, _)) => Err(Error::Protocol(format!("{other:?} on a listening connection"))),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.control.as_fd()
    }
}

/// One end of a channel stream: frames of bytes, each a 32-bit
/// little-endian length and that many bytes. Dropping it shuts the stream
/// down for both ends (so that the peer sees its end even though quantumd
/// holds a copy of the provider's end to revoke it by).
#[derive(Debug)]
pub struct Stream {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Stream {
    fn from_fd(fd: OwnedFd) -> io::Result<Stream> {
        Stream::from_unix(UnixStream::from(fd))
    }

    /// Frames over any connected stream socket (the benchmark's raw
    /// baseline is a plain socket pair).
    pub fn from_unix(socket: UnixStream) -> io::Result<Stream> {
        let writer = socket.try_clone()?;
        Ok(Stream {
            reader: BufReader::with_capacity(64 * 1024, socket),
            writer,
        })
    }

    /// Sends one frame.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&n| n as usize <= MAX_FRAME)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame larger than MAX_FRAME"))?
            .to_le_bytes();
        let total = len.len() + frame.len();
        let mut sent = self.writer.write_vectored(&[IoSlice::new(&len), IoSlice::new(frame)])?;
        // A stream socket may take part of a large frame; the rest follows.
        while sent < total {
            let n = if sent < len.len() {
                self.writer.write_vectored(&[IoSlice::new(&len[sent..]), IoSlice::new(frame)])?
            } else {
                self.writer.write(&frame[sent - len.len()..])?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += n;
        }
        Ok(())
    }

    /// Receives one frame into `buf` (replacing what it held); `false` at
    /// the end of the stream.
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        let mut len = [0u8; 4];
        match self.reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
        }
        buf.resize(len, 0);
        self.reader.read_exact(buf)?;
        Ok(true)
    }

    /// Sends a value as one frame (postcard).
    pub fn send_msg<T: serde::Serialize>(&mut self, value: &T) -> io::Result<()> {
        let bytes = postcard::to_stdvec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.send(&bytes)
    }

    /// Receives a value sent with [`Stream::send_msg`]; `None` at the end.
    pub fn recv_msg<T: serde::de::DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        let mut buf = Vec::new();
        if !self.recv(&mut buf)? {
            return Ok(None);
        }
        postcard::from_bytes(&buf)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_arrive_whole_and_in_order_and_the_end_is_seen() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (mut a, mut b) = (Stream::from_unix(a).expect("a"), Stream::from_unix(b).expect("b"));
        let big = vec![7u8; 1 << 20];
        let writer = std::thread::spawn(move || {
            a.send(b"one").expect("send");
            a.send(&[]).expect("empty");
            a.send(&big).expect("big");
            a.send_msg(&("two", 2u32)).expect("msg");
        });
        let mut buf = Vec::new();
        assert!(b.recv(&mut buf).expect("recv"));
        assert_eq!(buf, b"one");
        assert!(b.recv(&mut buf).expect("recv"));
        assert!(buf.is_empty());
        assert!(b.recv(&mut buf).expect("recv"));
        assert_eq!(buf.len(), 1 << 20);
        assert_eq!(b.recv_msg::<(String, u32)>().expect("msg"), Some(("two".to_owned(), 2)));
        writer.join().expect("writer");
        assert!(!b.recv(&mut buf).expect("end"));
    }

    #[test]
    fn dropping_a_stream_ends_it_for_the_peer_even_while_a_copy_is_open() {
        let (a, b) = UnixStream::pair().expect("pair");
        let copy = a.try_clone().expect("copy (the broker's)");
        let (a, mut b) = (Stream::from_unix(a).expect("a"), Stream::from_unix(b).expect("b"));
        drop(a);
        let mut buf = Vec::new();
        assert!(!b.recv(&mut buf).expect("end"));
        drop(copy);
    }

    #[test]
    fn a_frame_longer_than_the_limit_is_refused_not_allocated() {
        let (mut a, b) = UnixStream::pair().expect("pair");
        let mut b = Stream::from_unix(b).expect("b");
        a.write_all(&u32::MAX.to_le_bytes()).expect("write");
        let e = b.recv(&mut Vec::new()).expect_err("too long");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn without_a_token_the_error_says_what_is_missing() {
        // SAFETY (of the test): no other test in this crate reads it.
        std::env::remove_var(wire::TOKEN_ENV);
        let e = Channels::from_env().expect_err("no token");
        assert!(e.to_string().contains("[provides] or [uses] channels"), "{e}");
    }
}
