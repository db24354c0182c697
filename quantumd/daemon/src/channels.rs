//! The channel broker (Cell 0 IPC): cells talk to each other over streams
//! quantumd hands out, and only as their tokens allow.
//!
//! Every instance of a cell with `[provides]` or `[uses]` channels gets a
//! token at plan time ([`Broker::mint`]): a macaroon under quantumd's
//! channel key (`<state-dir>/channels/key`, 0600, made once) whose caveats
//! bind it to the instance and say what it may serve and reach
//! (`quantum_cell::token`). It goes to the cell in its environment
//! (`quantum_cell::wire::TOKEN_ENV`, which says why not a credential).
//!
//! A cell asks on the broker socket (`SOCK_SEQPACKET`,
//! `/run/quantumd-channels.sock` from `quantumd-channels.socket`, open to
//! every local user: the token and the kernel's word are the access
//! control). The broker checks, in order: the connecting process
//! (SO_PEERCRED) is in a cell's cgroup; the token verifies under the key
//! (else it was forged or altered); it names that very instance; it has not
//! expired; the channel is among those it provides (`listen`) or uses
//! (`connect`); the instance was not revoked; it is within its rate. A
//! refusal is answered with the reason and recorded in the trail (at most
//! once a second per asker, with the count of those left out).
//!
//! An accepted `connect` gets one end of a new socket pair; the other goes
//! to a listening instance of the providing cell (round robin) on its
//! listening connection. Messages never pass through quantumd. It keeps a
//! copy of the provider's end: revoking an instance ([`Broker::revoke`],
//! `quantumctl channels revoke`), or the provider's instance ending
//! ([`Broker::ended`]), shuts the stream down, and both ends see it end. A
//! watcher thread polls those copies for the hang-up alone (EPOLLRDHUP, not
//! EPOLLIN, so messages never wake quantumd) and lets go of a stream as
//! soon as either side has closed it.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libmacaroon::{Format, Macaroon, MacaroonKey, Verifier};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, sockopt, SockFlag, SockType};
use quantum_cell::token::Caveat;
use quantum_cell::wire::{self, Peer, Reply, Request};
use tokio::io::unix::AsyncFd;

use crate::trail::Recorder;

/// `FileDescriptorName=` of quantumd-channels.socket.
pub const FD_NAME: &str = "quantumd-channels";
/// How long a minted token is good for. A stream outlives its token; a
/// cell running longer than this can no longer open new ones (a restart
/// of its instance keeps its unit's environment, and so its token).
const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// A request must arrive this soon after the connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many requests are waited for at once; more connections
/// are closed at once (a cell that opens connections and says nothing
/// cannot make quantumd hold more than this).
const MAX_PENDING: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the channel key {} is damaged ({len} bytes, not 32); remove it to make a new one (tokens already given out stop working)", path.display())]
    BadKey { path: PathBuf, len: usize },
    #[error("the sockets systemd passed (LISTEN_FDS): {0}")]
    Inherited(#[source] io::Error),
    #[error("the channel broker's watcher: {0}")]
    Watcher(#[source] io::Error),
    #[error("minting a channel token: {0}")]
    Mint(String),
    #[error("keeping the revocation")]
    Store(#[source] crate::store::StoreError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ChannelError + 'a {
    move |source| ChannelError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// An open stream, as `quantumctl channels` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub consumer: String,
    pub provider: String,
    pub channel: String,
    pub opened_usec: u64,
}

enum Watched {
    /// quantumd's copy of the provider's end.
    Stream { info: StreamInfo, end: OwnedFd },
    /// A provider's listening connection.
    Listener {
        instance: String,
        channel: String,
        control: OwnedFd,
    },
}

#[derive(Default)]
struct State {
    watched: HashMap<u64, Watched>,
    /// `CELL/CHANNEL` -> listening connections (keys into `watched`).
    listening: HashMap<String, Vec<u64>>,
    /// Round robin over each channel's listeners.
    turn: HashMap<String, usize>,
    next_key: u64,
    /// Revoked: `INSTANCE` (everything) or `INSTANCE CELL/CHANNEL`.
    revoked: BTreeSet<String>,
    /// Requests this second, per instance: (second, count).
    rate: HashMap<String, (u64, u32)>,
    /// When a refusal was last recorded for each asker (an instance, or
    /// `uid U` for processes outside cells: a pid would give every new
    /// process a key of its own), and how many were left out since.
    refusals: HashMap<String, (Instant, u32)>,
}

struct Shared {
    key: MacaroonKey,
    socket: PathBuf,
    revoked_file: PathBuf,
    trail: Option<Recorder>,
    epoll: Epoll,
    state: Mutex<State>,
    /// Connections whose request is being waited for or handled.
    pending: std::sync::atomic::AtomicUsize,
}

/// The broker: shared by the cell loop (mint, ended), the interface (list,
/// revoke) and its own tasks (the socket, the watcher).
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("socket", &self.shared.socket)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn now_usec() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The channel key, made on first use.
fn load_key(dir: &Path) -> Result<MacaroonKey, ChannelError> {
    let path = dir.join("key");
    match fs::read(&path) {
        Ok(bytes) => {
            let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| ChannelError::BadKey {
                path: path.clone(),
                len: bytes.len(),
            })?;
            Ok(MacaroonKey::from(raw))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw).map_err(|e| ChannelError::Mint(e.to_string()))?;
            let tmp = dir.join("key.tmp");
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            f.write_all(&raw).and_then(|()| f.sync_all()).map_err(io_err("write", &tmp))?;
            fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
            Ok(MacaroonKey::from(raw))
        }
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// The instance whose unit's cgroup `pid` is in, if it is a cell's.
fn instance_of_pid(pid: i32) -> Result<String, String> {
    let path = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let cgroup = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("{path} names no cgroup v2 path"))?;
    let leaf = cgroup.rsplit('/').next().unwrap_or_default();
    crate::runtime::instance_of_unit(leaf)
        .map(str::to_owned)
        .ok_or_else(|| format!("process {pid} is not in a cell (its cgroup is {cgroup})"))
}

/// What a request asks, for [`check`].
#[derive(Debug, Clone, Copy)]
enum Op<'a> {
    /// The bare channel name, of the asker's own cell.
    Listen(&'a str),
    /// `CELL/CHANNEL`.
    Connect(&'a str),
}

impl Op<'_> {
    fn channel(&self) -> &str {
        match self {
            Op::Listen(c) | Op::Connect(c) => c,
        }
    }
}

/// Whether `token` lets `instance` do `op` at `now`: the rate it may do it
/// at, or why not.
fn check(key: &MacaroonKey, token: &str, instance: &str, op: Op<'_>, now: u64) -> Result<u32, String> {
    let m = Macaroon::deserialize(token.trim()).map_err(|e| format!("not a channel token ({e})"))?;
    // The signature first, every caveat accepted: whether the chain of
    // HMACs holds says nothing about what the caveats allow, and a token
    // that fails here was made or changed without the key.
    let mut chain = Verifier::default();
    chain.satisfy_general(|_| true);
    chain
        .verify(&m, key, &[])
        .map_err(|_| "the token does not verify under this node's channel key (forged, altered, or minted by another node)".to_owned())?;
    if !m.third_party_caveats().is_empty() {
        return Err("the token has third-party caveats, which quantumd does not discharge".to_owned());
    }
    let mut named = None;
    let mut rate = u32::MAX;
    for c in m.first_party_caveats().iter().filter_map(|c| c.as_first_party()) {
        let text = String::from_utf8_lossy(c.predicate());
        let caveat = Caveat::parse(&text).ok_or_else(|| format!("the token has a caveat quantumd does not know: {text:?}"))?;
        match caveat {
            Caveat::Instance(i) => {
                if i != instance {
                    return Err(format!("the token is instance {i}'s, and the asking process is in {instance}"));
                }
                named = Some(i);
            }
            Caveat::Cell(c) => {
                let cell = c.split('@').next().unwrap_or_default();
                if instance.rsplit_once('.').map(|(n, _)| n) != Some(cell) {
                    return Err(format!("the token is for cell {c}, and the asking process is in {instance}"));
                }
            }
            Caveat::Expires(t) => {
                if now >= t {
                    return Err(format!("the token expired at {t} (seconds since 1970; now {now})"));
                }
            }
            Caveat::Provides(list) => {
                if let Op::Listen(ch) = op {
                    if !list.iter().any(|p| p == ch) {
                        return Err(format!(
                            "the token does not provide channel {ch:?} (it provides: {})",
                            if list.is_empty() { "none".to_owned() } else { list.join(", ") }
                        ));
                    }
                }
            }
            Caveat::Uses(list) => {
                if let Op::Connect(ch) = op {
                    if !list.iter().any(|u| u == ch) {
                        return Err(format!(
                            "the token does not use channel {ch:?} (it uses: {})",
                            if list.is_empty() { "none".to_owned() } else { list.join(", ") }
                        ));
                    }
                }
            }
            Caveat::Channel(c) => {
                if c != op.channel() {
                    return Err(format!("the token is narrowed to channel {c:?}, not {:?}", op.channel()));
                }
            }
            Caveat::Rate(n) => rate = rate.min(n),
        }
    }
    if named.is_none() {
        return Err("the token names no instance".to_owned());
    }
    // A token always carries its rate; one that somehow lost it is held
    // to the default rather than to none.
    Ok(if rate == u32::MAX {
        quantum_model::Channels::DEFAULT_RATE
    } else {
        rate
    })
}

impl Broker {
    /// The broker with its key and revocations from `<state_dir>/channels`;
    /// `socket` is where cells are told to find it.
    pub fn open(state_dir: &Path, socket: PathBuf, trail: Option<Recorder>) -> Result<Broker, ChannelError> {
        let dir = state_dir.join("channels");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        let key = load_key(&dir)?;
        let revoked_file = dir.join("revoked");
        let revoked = match fs::read_to_string(&revoked_file) {
            Ok(text) => text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io_err("read", &revoked_file)(e)),
        };
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| ChannelError::Watcher(e.into()))?;
        let broker = Broker {
            shared: Arc::new(Shared {
                key,
                socket,
                revoked_file,
                trail,
                epoll,
                state: Mutex::new(State {
                    revoked,
                    ..State::default()
                }),
                pending: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        let watcher = broker.clone();
        std::thread::Builder::new()
            .name("channel-watch".into())
            .spawn(move || watcher.watch())
            .map_err(ChannelError::Watcher)?;
        Ok(broker)
    }

    /// Where cells find the broker (`$QUANTUM_CHANNELS`).
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still
        // consistent (every change is one insert or remove).
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token for `instance` of the cell `m` (see the module's doc).
    pub fn mint(&self, instance: &str, m: &quantum_model::Manifest) -> Result<String, ChannelError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| ChannelError::Mint(e.to_string()))?;
        let id = format!("{instance}/{}", nonce.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let mint = |e: libmacaroon::MacaroonError| ChannelError::Mint(e.to_string());
        let mut t = Macaroon::create(Some("quantumd"), &self.shared.key, id).map_err(mint)?;
        for c in [
            Caveat::Instance(instance.to_owned()),
            Caveat::Cell(format!("{}@{}", m.name, m.version)),
            Caveat::Provides(m.channels.provides.clone()),
            Caveat::Uses(m.channels.uses.clone()),
            Caveat::Expires(now_secs() + TOKEN_LIFETIME.as_secs()),
            Caveat::Rate(m.channels.rate),
        ] {
            t.add_first_party_caveat(c.to_string()).map_err(mint)?;
        }
        t.serialize(Format::V2).map_err(mint)
    }

    /// A `channel` trail entry about `instance` (its cell's, so that
    /// `quantumctl trail show --cell` finds it), when it is a cell's.
    fn record(&self, actor: &str, instance: &str, detail: String) {
        if let Some(t) = &self.shared.trail {
            let mut e = crate::trail::entry(actor, &quantum_trail::Action::CHANNEL).detail(detail);
            if let Some(cell) = crate::runtime::instance_of_unit(&crate::runtime::unit_name(instance)).and_then(|i| i.rsplit_once('.')) {
                e = e.cell(cell.0);
            }
            t.record(e);
        }
    }

    /// A refusal, in the trail at most once a second per `limit_key`.
    fn refused(&self, asker: &str, limit_key: &str, channel: &str, reason: &str) {
        tracing::info!(asker, channel, reason, "channel request refused");
        let left_out = {
            let mut state = self.state();
            let now = Instant::now();
            match state.refusals.get_mut(limit_key) {
                Some(entry) if now.duration_since(entry.0) < Duration::from_secs(1) => {
                    entry.1 += 1;
                    return;
                }
                Some(entry) => std::mem::replace(entry, (now, 0)).1,
                None => {
                    state.refusals.insert(limit_key.to_owned(), (now, 0));
                    0
                }
            }
        };
        let more = if left_out > 0 {
            format!(" ({left_out} more refused before this)")
        } else {
            String::new()
        };
        self.record(asker, asker, format!("refused: {asker}: {channel}: {reason}{more}"));
    }

    /// Watches the provider ends and listening connections for their
    /// hang-up, and lets go of them.
    fn watch(self) {
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let n = match self.shared.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "the channel watcher failed; closed streams are let go of only when their instance ends");
                    return;
                }
            };
            let mut state = self.state();
            for ev in &events[..n] {
                self.forget(&mut state, ev.data());
            }
        }
    }

    /// Stops watching `key` and closes quantumd's descriptor.
    fn forget(&self, state: &mut State, key: u64) -> Option<Watched> {
        let w = state.watched.remove(&key)?;
        let fd = match &w {
            Watched::Stream { end, .. } => end.as_fd(),
            Watched::Listener { control, .. } => control.as_fd(),
        };
        // Explicitly: the cell holds the same open socket, so closing our
        // descriptor would not take it out of the epoll set.
        let _ = self.shared.epoll.delete(fd);
        if let Watched::Listener { channel, .. } = &w {
            if let Some(list) = state.listening.get_mut(channel) {
                list.retain(|k| *k != key);
            }
        }
        Some(w)
    }

    /// Watches `w`'s own descriptor (the one [`Broker::forget`] deletes:
    /// epoll knows a registration by descriptor number and file both).
    fn watch_fd(&self, state: &mut State, w: Watched) -> io::Result<u64> {
        let key = state.next_key;
        state.next_key += 1;
        let flags = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
        let fd = match &w {
            Watched::Stream { end, .. } => end.as_fd(),
            Watched::Listener { control, .. } => control.as_fd(),
        };
        self.shared.epoll.add(fd, EpollEvent::new(flags, key))?;
        state.watched.insert(key, w);
        Ok(key)
    }

    fn is_revoked(state: &State, instance: &str, channel: &str) -> bool {
        state.revoked.contains(instance) || state.revoked.contains(&format!("{instance} {channel}"))
    }

    /// Within the instance's rate (counts this request).
    fn within_rate(state: &mut State, instance: &str, rate: u32) -> bool {
        let now = now_secs();
        let e = state.rate.entry(instance.to_owned()).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= rate
    }

    /// Handles one request on a new connection: the reply and the stream
    /// to send with it, or `None` when it was sent already; `Err` is the
    /// refusal.
    fn decide(&self, conn: &OwnedFd, instance: &str, req: &Request) -> Result<Option<(Reply, Option<OwnedFd>)>, String> {
        let (token, op) = match req {
            Request::Listen { channel, token } => (token, Op::Listen(channel)),
            Request::Connect { channel, token } => (token, Op::Connect(channel)),
        };
        let rate = check(&self.shared.key, token, instance, op, now_secs())?;
        let cell = crate::runtime::cell_of_instance(instance).to_owned();
        let full = match op {
            Op::Listen(ch) => format!("{cell}/{ch}"),
            Op::Connect(ch) => ch.to_owned(),
        };
        let mut state = self.state();
        if Self::is_revoked(&state, instance, &full) {
            return Err(format!("{instance}'s channels were revoked"));
        }
        if !Self::within_rate(&mut state, instance, rate) {
            return Err(format!("more than {rate} channel requests a second (the token's rate)"));
        }
        match op {
            Op::Listen(_) => {
                let control = conn
                    .try_clone()
                    .map_err(|e| format!("quantumd could not keep the connection: {e}"))?;
                // Answered before it is listed (under the lock), so that no
                // peer's stream can arrive ahead of the answer.
                wire::send(conn.as_fd(), &Reply::Listening, None).map_err(|e| format!("answering: {e}"))?;
                let key = self
                    .watch_fd(
                        &mut state,
                        Watched::Listener {
                            instance: instance.to_owned(),
                            channel: full.clone(),
                            control,
                        },
                    )
                    .map_err(|e| format!("quantumd could not watch the connection: {e}"))?;
                state.listening.entry(full.clone()).or_default().push(key);
                drop(state);
                self.record(instance, instance, format!("listen {instance}: {full}"));
                Ok(None)
            }
            Op::Connect(ch) => {
                let (provider_cell, _) = ch.split_once('/').ok_or_else(|| format!("{ch:?} is not CELL/CHANNEL"))?;
                let (mine, theirs) = socket::socketpair(socket::AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                    .map_err(|e| format!("quantumd could not make a socket pair: {e}"))?;
                let me = Peer {
                    instance: instance.to_owned(),
                    cell: cell.clone(),
                };
                // Round robin over the listeners; one that cannot take the
                // stream (gone, or its queue full) is passed over.
                let keys = state.listening.get(ch).cloned().unwrap_or_default();
                let start = state.turn.get(ch).copied().unwrap_or(0);
                let mut chosen = None;
                for i in 0..keys.len() {
                    let key = keys[(start + i) % keys.len()];
                    if let Some(Watched::Listener { instance: p, control, .. }) = state.watched.get(&key) {
                        if Self::is_revoked(&state, p, ch) {
                            continue;
                        }
                        if wire::send(control.as_fd(), &Reply::Incoming { peer: me.clone() }, Some(theirs.as_fd())).is_ok() {
                            chosen = Some((p.clone(), (start + i + 1) % keys.len()));
                            break;
                        }
                    }
                }
                let Some((provider, next)) = chosen else {
                    return Err(format!("no instance of {provider_cell} is listening on {ch} (is it running?)"));
                };
                state.turn.insert(ch.to_owned(), next);
                let info = StreamInfo {
                    consumer: instance.to_owned(),
                    provider: provider.clone(),
                    channel: ch.to_owned(),
                    opened_usec: now_usec(),
                };
                // quantumd keeps `theirs`, the provider's end (the provider
                // got its own descriptor of it by SCM_RIGHTS): shutting it
                // down ends the stream for both. The consumer's end, `mine`,
                // goes with the reply and is not kept.
                self.watch_fd(&mut state, Watched::Stream { info, end: theirs })
                    .map_err(|e| format!("quantumd could not watch the stream: {e}"))?;
                drop(state);
                self.record(instance, instance, format!("connect {instance} -> {provider}: {ch}"));
                let peer = Peer {
                    instance: provider,
                    cell: provider_cell.to_owned(),
                };
                Ok(Some((Reply::Connected { peer }, Some(mine))))
            }
        }
    }

    /// Shuts down and lets go of the streams and listeners `pick` selects.
    fn close_where(&self, state: &mut State, pick: impl Fn(&Watched) -> bool) -> usize {
        let keys: Vec<u64> = state.watched.iter().filter(|(_, w)| pick(w)).map(|(k, _)| *k).collect();
        let mut streams = 0;
        for key in keys {
            match self.forget(state, key) {
                Some(Watched::Stream { end, .. }) => {
                    let _ = socket::shutdown(end.as_raw_fd(), socket::Shutdown::Both);
                    streams += 1;
                }
                Some(Watched::Listener { control, .. }) => {
                    let _ = socket::shutdown(control.as_raw_fd(), socket::Shutdown::Both);
                }
                None => {}
            }
        }
        streams
    }

    /// Revokes `instance`'s channels (`channel` empty: all of them) for as
    /// long as the instance lives: its open streams and listeners are shut
    /// down, and its token is refused from now on, also after a restart of
    /// quantumd. The number of streams closed.
    pub fn revoke(&self, instance: &str, channel: &str, actor: &str) -> Result<usize, ChannelError> {
        let entry = if channel.is_empty() {
            instance.to_owned()
        } else {
            format!("{instance} {channel}")
        };
        let closed = {
            let mut state = self.state();
            if state.revoked.insert(entry) {
                let text: String = state.revoked.iter().map(|l| format!("{l}\n")).collect();
                crate::store::write_atomically(&self.shared.revoked_file, text.as_bytes(), true).map_err(ChannelError::Store)?;
            }
            let concerns = |i: &str, ch: &str| i == instance && (channel.is_empty() || ch == channel);
            self.close_where(&mut state, |w| match w {
                Watched::Stream { info, .. } => concerns(&info.consumer, &info.channel) || concerns(&info.provider, &info.channel),
                Watched::Listener {
                    instance: i, channel: ch, ..
                } => concerns(i, ch),
            })
        };
        let what = if channel.is_empty() {
            "all channels".to_owned()
        } else {
            channel.to_owned()
        };
        self.record(
            actor,
            instance,
            format!(
                "revoke {instance}: {what}; {closed} open stream{} closed",
                if closed == 1 { "" } else { "s" }
            ),
        );
        Ok(closed)
    }

    /// `instance` ended: the streams it served are shut down (quantumd's
    /// copy of their ends would otherwise keep them open for the peer), and
    /// its listeners are let go of.
    pub fn ended(&self, instance: &str) {
        let mut state = self.state();
        self.close_where(&mut state, |w| match w {
            Watched::Stream { info, .. } => info.provider == instance || info.consumer == instance,
            Watched::Listener { instance: i, .. } => i == instance,
        });
        state.rate.remove(instance);
        state.refusals.remove(instance);
    }

    /// The open streams, oldest first, and who listens on what
    /// (`(instance, CELL/CHANNEL)`).
    pub fn list(&self) -> (Vec<StreamInfo>, Vec<(String, String)>) {
        let state = self.state();
        let mut streams = Vec::new();
        let mut listening = Vec::new();
        for w in state.watched.values() {
            match w {
                Watched::Stream { info, .. } => streams.push(info.clone()),
                Watched::Listener { instance, channel, .. } => listening.push((instance.clone(), channel.clone())),
            }
        }
        streams.sort_by(|a, b| (a.opened_usec, &a.consumer).cmp(&(b.opened_usec, &b.consumer)));
        listening.sort();
        (streams, listening)
    }

    /// Serves the broker socket: each connection is one request, answered
    /// in its own task.
    pub fn serve(&self, listener: OwnedFd) -> Result<(), ChannelError> {
        let listener = register(listener).map_err(ChannelError::Inherited)?;
        let broker = self.clone();
        tokio::spawn(async move {
            loop {
                let conn = {
                    let mut ready = match listener.readable().await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "the channel broker's socket failed; no new channel requests are served");
                            return;
                        }
                    };
                    match ready.try_io(|l| {
                        socket::accept4(l.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK).map_err(io::Error::from)
                    }) {
                        // SAFETY: accept4 just returned this new descriptor.
                        Ok(Ok(fd)) => unsafe { OwnedFd::from_raw_fd(fd) },
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "accepting a channel request");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Err(_would_block) => continue,
                    }
                };
                use std::sync::atomic::Ordering;
                if broker.shared.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
                    broker.shared.pending.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("{MAX_PENDING} channel requests are pending already; a connection was closed");
                    continue;
                }
                let broker = broker.clone();
                tokio::spawn(async move {
                    broker.handle(conn).await;
                    broker.shared.pending.fetch_sub(1, Ordering::AcqRel);
                });
            }
        });
        Ok(())
    }

    async fn handle(&self, conn: OwnedFd) {
        let (pid, uid) = match socket::getsockopt(&conn, sockopt::PeerCredentials) {
            Ok(c) => (c.pid(), c.uid()),
            Err(e) => {
                tracing::warn!(error = %e, "no credentials for a channel request; closed");
                return;
            }
        };
        let conn = match register(conn) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait on a channel request; closed");
                return;
            }
        };
        let asked = tokio::time::timeout(REQUEST_TIMEOUT, async {
            loop {
                let mut ready = conn.readable().await?;
                if let Ok(got) = ready.try_io(|c| wire::recv::<Request>(c.as_fd())) {
                    return got;
                }
            }
        })
        .await;
        let who = instance_of_pid(pid);
        let asker = who.clone().unwrap_or_else(|_| format!("pid {pid} (uid {uid})"));
        let limit_key = who.clone().unwrap_or_else(|_| format!("uid {uid}"));
        let req = match asked {
            Ok(Ok(Some((req, _)))) => req,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                let reason = format!("not a channel request: {e}");
                let _ = wire::send(conn.get_ref().as_fd(), &Reply::Refused { reason: reason.clone() }, None);
                self.refused(&asker, &limit_key, "-", &reason);
                return;
            }
            Err(_) => {
                tracing::info!(asker, "a channel request did not come within 5 s; closed");
                return;
            }
        };
        let channel = match &req {
            Request::Listen { channel, .. } | Request::Connect { channel, .. } => channel.clone(),
        };
        let decided = match &who {
            Ok(instance) => self.decide(conn.get_ref(), instance, &req),
            Err(why) => Err(format!("only cells may use channels: {why}")),
        };
        match decided {
            Ok(None) => {}
            Ok(Some((reply, stream))) => {
                if let Err(e) = wire::send(conn.get_ref().as_fd(), &reply, stream.as_ref().map(|s| s.as_fd())) {
                    tracing::warn!(asker, channel, error = %e, "answering a channel request");
                }
            }
            Err(reason) => {
                let _ = wire::send(conn.get_ref().as_fd(), &Reply::Refused { reason: reason.clone() }, None);
                self.refused(&asker, &limit_key, &channel, &reason);
            }
        }
    }
}

/// The broker's listening socket: the one systemd passed under
/// [`FD_NAME`], else a new one at `path` (mode 0666: whoever connects is
/// judged by token and cgroup, not by file permissions).
pub fn listener(path: &Path) -> Result<OwnedFd, ChannelError> {
    let mut passed = sd_notify::listen_fds_with_names().map_err(ChannelError::Inherited)?;
    if let Some((fd, _)) = passed.find(|(_, name)| name == FD_NAME) {
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID
        // is ours); only this function takes the one named FD_NAME.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        set_nonblocking(&owned).map_err(ChannelError::Inherited)?;
        return Ok(owned);
    }
    let failed = |e: nix::errno::Errno| io_err("listen on", path)(e.into());
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("replace", path)(e)),
    }
    let fd = socket::socket(
        socket::AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(failed)?;
    let addr = socket::UnixAddr::new(path).map_err(failed)?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(failed)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).map_err(io_err("open up", path))?;
    socket::listen(&fd, socket::Backlog::new(1024).unwrap_or(socket::Backlog::MAXCONN)).map_err(failed)?;
    Ok(fd)
}

/// `fd` in tokio's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open, and is the same descriptor, for as
    // long as the AsyncFd that owns it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantum_cell::token::attenuate;

    fn manifest() -> quantum_model::Manifest {
        quantum_model::parse_manifest(
            "[cell]\nname = \"echo-client\"\nversion = \"1.2.0\"\ndescription = \"d\"\nexec = [\"/bin/true\"]\n\
             [provides]\nchannels = [\"figures\"]\n[uses]\nchannels = [\"echo-server/echo\"]\nrate = 7\n",
        )
        .expect("manifest")
    }

    fn broker() -> (tempfile::TempDir, Broker) {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Broker::open(dir.path(), dir.path().join("channels.sock"), None).expect("broker");
        (dir, b)
    }

    #[test]
    fn a_minted_token_lets_its_instance_do_what_the_manifest_says_and_nothing_else() {
        let (_d, b) = broker();
        let t = b.mint("echo-client.4", &manifest()).expect("mint");
        let key = &b.shared.key;
        let now = now_secs();
        assert_eq!(check(key, &t, "echo-client.4", Op::Connect("echo-server/echo"), now), Ok(7));
        assert_eq!(check(key, &t, "echo-client.4", Op::Listen("figures"), now), Ok(7));
        let e = check(key, &t, "echo-client.4", Op::Connect("sql-database/query"), now).expect_err("another channel");
        assert!(e.contains("does not use channel \"sql-database/query\""), "{e}");
        let e = check(key, &t, "echo-client.4", Op::Listen("echo"), now).expect_err("not provided");
        assert!(e.contains("does not provide channel \"echo\""), "{e}");
        let e = check(key, &t, "web-server.2", Op::Connect("echo-server/echo"), now).expect_err("stolen");
        assert!(e.contains("instance echo-client.4's"), "{e}");
        let e = check(
            key,
            &t,
            "echo-client.4",
            Op::Connect("echo-server/echo"),
            now + TOKEN_LIFETIME.as_secs(),
        )
        .expect_err("expired");
        assert!(e.contains("expired"), "{e}");
    }

    #[test]
    fn a_forged_or_altered_token_does_not_verify() {
        let (_d, b) = broker();
        let t = b.mint("echo-client.4", &manifest()).expect("mint");
        // Minted under another key: the same caveats, not this node's.
        let (_d2, other) = broker();
        let forged = other.mint("echo-client.4", &manifest()).expect("mint");
        let e = check(&b.shared.key, &forged, "echo-client.4", Op::Connect("echo-server/echo"), now_secs()).expect_err("forged");
        assert!(e.contains("does not verify"), "{e}");
        // A caveat rewritten in the serialized token.
        let bytes = libmacaroon::Macaroon::deserialize(&t).expect("token");
        let mut widened = libmacaroon::Macaroon::create(Some("quantumd"), &MacaroonKey::from([0u8; 32]), bytes.identifier()).expect("m");
        widened.add_first_party_caveat("instance = echo-client.4").expect("c");
        widened.add_first_party_caveat("uses = sql-database/query").expect("c");
        let widened = widened.serialize(Format::V2).expect("s");
        let e = check(
            &b.shared.key,
            &widened,
            "echo-client.4",
            Op::Connect("sql-database/query"),
            now_secs(),
        )
        .expect_err("altered");
        assert!(e.contains("does not verify"), "{e}");
        let e = check(&b.shared.key, "hello", "echo-client.4", Op::Connect("x/y"), now_secs()).expect_err("garbage");
        assert!(e.contains("not a channel token"), "{e}");
    }

    #[test]
    fn a_holder_narrows_its_token_and_the_narrowing_holds() {
        let (_d, b) = broker();
        let t = b.mint("echo-client.4", &manifest()).expect("mint");
        let key = &b.shared.key;
        let now = now_secs();
        let only_figures = attenuate(&t, &Caveat::Channel("figures".into())).expect("narrow");
        assert_eq!(check(key, &only_figures, "echo-client.4", Op::Listen("figures"), now), Ok(7));
        let e = check(key, &only_figures, "echo-client.4", Op::Connect("echo-server/echo"), now).expect_err("narrowed");
        assert!(e.contains("narrowed to channel"), "{e}");
        let past = attenuate(&t, &Caveat::Expires(now - 1)).expect("narrow");
        assert!(check(key, &past, "echo-client.4", Op::Listen("figures"), now)
            .expect_err("expired")
            .contains("expired"));
        let slower = attenuate(&t, &Caveat::Rate(2)).expect("narrow");
        assert_eq!(check(key, &slower, "echo-client.4", Op::Listen("figures"), now), Ok(2));
    }

    #[test]
    fn the_key_survives_a_restart_and_a_damaged_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Broker::open(dir.path(), dir.path().join("s"), None).expect("broker");
        let t = b.mint("echo-client.4", &manifest()).expect("mint");
        let again = Broker::open(dir.path(), dir.path().join("s"), None).expect("broker");
        assert_eq!(
            check(&again.shared.key, &t, "echo-client.4", Op::Listen("figures"), now_secs()),
            Ok(7)
        );
        fs::write(dir.path().join("channels/key"), b"short").expect("damage");
        let e = Broker::open(dir.path(), dir.path().join("s"), None).expect_err("damaged");
        assert!(e.to_string().contains("5 bytes, not 32"), "{e}");
    }

    #[test]
    fn a_revocation_is_kept_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Broker::open(dir.path(), dir.path().join("s"), None).expect("broker");
        assert_eq!(b.revoke("echo-client.4", "", "root").expect("revoke"), 0);
        let again = Broker::open(dir.path(), dir.path().join("s"), None).expect("broker");
        assert!(Broker::is_revoked(&again.state(), "echo-client.4", "echo-server/echo"));
        assert!(!Broker::is_revoked(&again.state(), "echo-client.5", "echo-server/echo"));
    }

    #[test]
    fn refusals_are_recorded_at_most_once_a_second_per_instance_or_uid() {
        let (_d, b) = broker();
        b.refused("a.1", "a.1", "x/y", "why");
        b.refused("a.1", "a.1", "x/y", "why");
        // Processes outside cells share their user's limit, whatever their pid.
        b.refused("pid 5 (uid 7)", "uid 7", "x/y", "why");
        b.refused("pid 6 (uid 7)", "uid 7", "x/y", "why");
        let state = b.state();
        assert_eq!(state.refusals.len(), 2);
        assert_eq!(state.refusals["a.1"].1, 1, "the second refusal of a.1 is left out");
        assert_eq!(state.refusals["uid 7"].1, 1);
    }

    #[test]
    fn the_rate_counts_requests_per_second() {
        let mut state = State::default();
        assert!((0..3).all(|_| Broker::within_rate(&mut state, "a.1", 3)));
        assert!(!Broker::within_rate(&mut state, "a.1", 3));
        assert!(Broker::within_rate(&mut state, "b.1", 3));
    }
}
