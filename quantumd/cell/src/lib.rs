//! The QuantumOS cell SDK: channels between cells (Cell 0 IPC).
//!
//! A cell declares what it serves and what it talks to in its `cell.toml`:
//!
//! ```toml
//! [provides]
//! channels = ["echo"]          # others may connect to echo-server/echo
//!
//! [uses]
//! channels = ["echo-server/echo"]
//! ```
//!
//! quantumd then gives each instance a capability token (a macaroon bound
//! to the instance, see [`token`]) in `$QUANTUM_CHANNEL_TOKEN`, and the
//! broker socket in `$QUANTUM_CHANNELS`. A cell
//! asks the broker for a stream with its token; quantumd checks the token
//! and that the asking process really is in that instance's cgroup (the
//! kernel's SO_PEERCRED, not anything the cell says), then hands each side
//! one end of a fresh socket pair. Messages never pass through quantumd:
//! once connected, a stream costs what a Unix socket pair costs. quantumd
//! keeps a copy of the provider's end, so it can revoke a stream by
//! shutting it down.
//!
//! ```no_run
//! let channels = quantum_cell::Channels::from_env()?;
//! let (mut stream, server) = channels.connect("echo-server/echo")?;
//! stream.send(b"hello")?;
//! let mut reply = Vec::new();
//! stream.recv(&mut reply)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
pub mod token;
pub mod wire;

pub use client::{Channels, Error, Listener, Stream, MAX_FRAME};
pub use wire::Peer;
