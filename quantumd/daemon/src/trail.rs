//! Recording into the quantum trail (crate quantum-trail) from the daemon.
//!
//! The trail is written by one thread of its own: the event loop hands it
//! entries over a channel and never waits for a write(2), a signature or an
//! fdatasync. The thread appends each entry as it comes (one write each, so
//! a crash of quantumd loses nothing that reached the thread) and seals the
//! chain head at most every 100 ms while there is something unsealed — the
//! group commit that keeps the trail fast under many cell starts.
//!
//! Readers (`TrailShow`, `TrailVerify`) read the segment files directly:
//! quantum-trail's readers take no lock and see every whole record.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use quantum_trail::{Action, Digest, NewEntry, Trail};

use crate::identity::Identity;

/// How often at most the chain head is signed and synced.
const SEAL_INTERVAL: Duration = Duration::from_millis(100);

enum Message {
    Append(NewEntry),
    /// Seal now, then answer (shutdown, tests).
    Flush(std_mpsc::Sender<()>),
    /// Answer once everything sent before is appended (not sealed).
    Appended(std_mpsc::Sender<()>),
}

/// A handle to the trail's writer thread; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: std_mpsc::Sender<Message>,
}

impl Recorder {
    /// Opens (and repairs a torn tail of) the trail in `dir` and starts its
    /// writer. Damage other than a torn tail is an error: quantumd then
    /// refuses to change anything until a person has looked at the trail.
    pub fn open(dir: &Path, identity: &Identity) -> Result<Recorder, quantum_trail::Error> {
        let (mut trail, report) = Trail::open(dir, quantum_trail::Config::default(), Box::new(identity.signer()))?;
        if let Some(torn) = &report.torn {
            tracing::warn!(trail = %dir.display(), ?torn, "the trail ended in a torn write (a power cut?): the torn record was cut off");
        }
        if let Some(sealed) = &report.sealed {
            tracing::info!(?sealed, "sealed trail entries a crash left unsealed");
        }
        tracing::info!(trail = %dir.display(), next_seq = report.next_seq, "trail open");
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("quantum-trail".into())
            .spawn(move || {
                write_loop(&mut trail, &rx);
                if let Err(e) = trail.close() {
                    tracing::error!(error = %crate::command::error_chain(&e), "closing the trail");
                }
            })
            .map_err(|source| quantum_trail::Error::Io {
                op: "start the writer thread for",
                path: dir.to_owned(),
                source,
            })?;
        Ok(Recorder { tx })
    }

    pub fn record(&self, entry: NewEntry) {
        if self.tx.send(Message::Append(entry)).is_err() {
            tracing::error!("the trail writer is gone; an entry was not recorded");
        }
    }

    /// Seals what was appended and waits until it is on disk.
    pub async fn flush(&self) {
        self.ask(Message::Flush).await;
    }

    /// Waits until every entry recorded so far is in the trail's files, so
    /// that a reader sees what was done before it asked.
    pub async fn appended(&self) {
        self.ask(Message::Appended).await;
    }

    async fn ask(&self, message: fn(std_mpsc::Sender<()>) -> Message) {
        let (tx, rx) = std_mpsc::channel();
        if self.tx.send(message(tx)).is_ok() {
            let _ = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10))).await;
        }
    }
}

fn write_loop(trail: &mut Trail, rx: &std_mpsc::Receiver<Message>) {
    let mut last_seal = Instant::now();
    loop {
        let wait = SEAL_INTERVAL.saturating_sub(last_seal.elapsed());
        match rx.recv_timeout(if trail.unsealed() > 0 { wait } else { Duration::from_secs(3600) }) {
            Ok(Message::Append(entry)) => {
                if let Err(e) = trail.append(entry) {
                    tracing::error!(error = %crate::command::error_chain(&e), "cannot append to the trail");
                }
            }
            Ok(Message::Flush(done)) => {
                seal(trail);
                last_seal = Instant::now();
                let _ = done.send(());
            }
            Ok(Message::Appended(done)) => {
                let _ = done.send(());
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                seal(trail);
                return;
            }
        }
        if trail.unsealed() > 0 && last_seal.elapsed() >= SEAL_INTERVAL {
            seal(trail);
            last_seal = Instant::now();
        }
    }
}

fn seal(trail: &mut Trail) {
    if let Err(e) = trail.seal() {
        tracing::error!(error = %crate::command::error_chain(&e), "cannot seal the trail");
    }
}

/// An entry of `action` by `actor`.
pub fn entry(actor: &str, action: &Action) -> NewEntry {
    NewEntry::new(actor, action.clone())
}

/// The trail's form of a manifest hash.
pub fn digest(hash: &blake3::Hash) -> Digest {
    Digest(*hash.as_bytes())
}
