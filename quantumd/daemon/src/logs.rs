//! Cell output for `quantumctl logs`: the journal under systemd (entries of
//! the cells' units, this boot), each instance's own log file under the
//! cgroup backend. A request streams on a thread of its own (sd-journal
//! handles are not `Send`) into a pipe the caller passed over D-Bus, so a
//! member of `quantum` reads what quantumd (in group systemd-journal) may
//! read, and only for the cells polkit lets them see. The stream ends after
//! the last line, or, when following, once every instance has ended (`done`)
//! and its last lines are out, or when the caller closes the pipe.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a follower looks for new output when nothing woke it.
const FOLLOW_TICK: Duration = Duration::from_millis(200);

/// Where the cells' output is kept.
#[derive(Debug, Clone)]
pub enum Source {
    /// systemd's journal, by unit (the systemd backend).
    Journal,
    /// `DIR/<instance>.log`, written by the cells themselves (the cgroup
    /// backend gives each one its file as stdout and stderr).
    Files(PathBuf),
}

/// How long after quantumd saw an instance end journald may still be
/// writing what it printed.
const JOURNAL_LAG_USEC: u64 = 10_000_000;

/// One instance whose output is asked for.
#[derive(Debug, Clone)]
pub struct Target {
    pub instance: String,
    pub unit: String,
    /// Its life (µs since the epoch): instance ids, and so unit names, come
    /// back after quantumd restarts, so a unit's journal entries are this
    /// instance's only within it.
    pub started_usec: u64,
    pub ended_usec: Option<u64>,
}

impl Target {
    fn lived_at(&self, usec: u64) -> bool {
        usec >= self.started_usec && self.ended_usec.is_none_or(|end| usec <= end + JOURNAL_LAG_USEC)
    }
}

#[derive(Debug)]
pub struct Request {
    pub targets: Vec<Target>,
    /// The last `lines` lines (of all targets together); 0 for all.
    pub lines: u32,
    /// Only lines written from then on (µs since the epoch); 0 for all.
    /// The journal only: the cgroup backend's files carry no times.
    pub since_usec: u64,
    pub follow: bool,
    pub json: bool,
    /// Set once every target has ended: a follower then writes what is
    /// left and stops.
    pub done: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("cannot open the journal")]
    Journal(#[source] std::io::Error),
    #[error("cannot start a log reader")]
    Thread(#[source] std::io::Error),
}

/// One line of output.
struct Line {
    time_usec: Option<u64>,
    instance: String,
    message: String,
}

/// Starts streaming `request` from `source` into `out`; returns once the
/// reader is open (an unreadable journal is the caller's error, not an
/// empty stream).
pub fn spawn(source: &Source, request: Request, out: OwnedFd) -> Result<(), LogsError> {
    let source = source.clone();
    let (opened, open_result) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("logs".into())
        .spawn(move || {
            let mut sink = Sink {
                out: File::from(out),
                json: request.json,
                prefix: request.targets.len() > 1,
            };
            let result = match &source {
                Source::Journal => match open_journal(&request.targets) {
                    Ok(journal) => {
                        let _ = opened.send(Ok(()));
                        stream_journal(journal, &request, &mut sink)
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                },
                Source::Files(dir) => {
                    let _ = opened.send(Ok(()));
                    stream_files(dir, &request, &mut sink)
                }
            };
            if let Err(e) = result {
                // Mostly the caller closing its end early.
                tracing::debug!(error = %e, "log stream ended");
            }
        })
        .map_err(LogsError::Thread)?;
    open_result
        .recv()
        .unwrap_or_else(|_| Err(LogsError::Thread(std::io::Error::other("the log reader died"))))
}

/// Writes lines to the caller's pipe.
struct Sink {
    out: File,
    json: bool,
    /// Several instances: say whose each line is.
    prefix: bool,
}

impl Sink {
    fn write(&mut self, line: &Line) -> std::io::Result<()> {
        let text = if self.json {
            serde_json::json!({
                "time-usec": line.time_usec,
                "instance": line.instance,
                "message": line.message,
            })
            .to_string()
        } else if self.prefix {
            format!("{}: {}", line.instance, line.message)
        } else {
            line.message.clone()
        };
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\n")
    }

    /// Whether the reader has gone (the pipe's other end is closed).
    fn reader_gone(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.out.as_fd().as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
    }
}

fn open_journal(targets: &[Target]) -> Result<systemd::journal::Journal, LogsError> {
    let mut journal = systemd::journal::OpenOptions::default()
        .system(true)
        .local_only(true)
        .open()
        .map_err(LogsError::Journal)?;
    // unit = a OR unit = b ...; which entries of a unit are the instance's
    // is decided by time (Target::lived_at). Not _BOOT_ID: quantumd's
    // sandbox (ProtectKernelTunables=) may show another boot id than
    // journald's in a container.
    for t in targets {
        journal.match_add("_SYSTEMD_UNIT", t.unit.as_str()).map_err(LogsError::Journal)?;
    }
    Ok(journal)
}

fn stream_journal(mut journal: systemd::journal::Journal, request: &Request, sink: &mut Sink) -> std::io::Result<()> {
    // The instance an entry is from: its unit's, alive at that time.
    let instance_of = |unit: &str, usec: u64| {
        request
            .targets
            .iter()
            .find(|t| t.unit == unit && t.lived_at(usec))
            .map(|t| t.instance.clone())
    };
    if request.lines > 0 {
        journal.seek_tail()?;
        // Back over the last N entries, then read forward from there.
        let mut back = 0;
        while back < request.lines && journal.previous()? > 0 {
            back += 1;
        }
        if back == request.lines {
            // previous() left us on the first wanted entry; step back once
            // more so that the forward read starts with it.
            if journal.previous()? == 0 {
                journal.seek_head()?;
            }
        } else {
            journal.seek_head()?;
        }
    } else {
        // Nothing of these instances is older than the first one.
        let first = request.targets.iter().map(|t| t.started_usec).min().unwrap_or(0);
        journal.seek_realtime_usec(first.max(request.since_usec))?;
    }
    // After every target has ended, a few more passes: journald may not
    // yet have written what the cells printed last.
    let mut grace = 3;
    loop {
        if request.done.load(Ordering::Acquire) {
            if grace == 0 {
                return Ok(());
            }
            grace -= 1;
        }
        while let Some(entry) = journal.next_entry()? {
            let unit = entry.get("_SYSTEMD_UNIT").map_or("", String::as_str);
            let usec = journal.timestamp_usec()?;
            if usec < request.since_usec {
                continue;
            }
            let Some(instance) = instance_of(unit, usec) else { continue };
            sink.write(&Line {
                time_usec: Some(usec),
                instance,
                message: entry.get("MESSAGE").cloned().unwrap_or_default(),
            })?;
        }
        if !request.follow || sink.reader_gone() {
            return Ok(());
        }
        journal.wait(Some(FOLLOW_TICK))?;
    }
}

/// The log file of an instance under the cgroup backend.
pub fn file_of(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.log"))
}

fn stream_files(dir: &Path, request: &Request, sink: &mut Sink) -> std::io::Result<()> {
    // Everything there is now, instance after instance, then the last N.
    let mut lines = Vec::new();
    let mut offsets = Vec::new();
    for t in &request.targets {
        let path = file_of(dir, &t.instance);
        let mut offset = 0;
        if let Ok(f) = File::open(&path) {
            let mut reader = BufReader::new(f);
            let mut buf = String::new();
            while reader.read_line(&mut buf)? > 0 {
                if !buf.ends_with('\n') {
                    // A line still being written: the follower takes it later.
                    break;
                }
                offset += buf.len() as u64;
                lines.push(Line {
                    time_usec: None,
                    instance: t.instance.clone(),
                    message: buf.trim_end_matches('\n').to_owned(),
                });
                buf.clear();
            }
        }
        offsets.push((path, t.instance.clone(), offset));
    }
    let skip = if request.lines > 0 {
        lines.len().saturating_sub(request.lines as usize)
    } else {
        0
    };
    for line in &lines[skip..] {
        sink.write(line)?;
    }
    if !request.follow {
        return Ok(());
    }
    loop {
        let ended = request.done.load(Ordering::Acquire);
        for (path, instance, offset) in &mut offsets {
            let Ok(mut f) = File::open(&*path) else { continue };
            f.seek(SeekFrom::Start(*offset))?;
            let mut new = String::new();
            f.read_to_string(&mut new)?;
            // Whole lines only, unless the instance has ended.
            let whole = if ended { new.len() } else { new.rfind('\n').map_or(0, |i| i + 1) };
            for message in new[..whole].lines() {
                sink.write(&Line {
                    time_usec: None,
                    instance: instance.clone(),
                    message: message.to_owned(),
                })?;
            }
            *offset += whole as u64;
        }
        if ended || sink.reader_gone() {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_TICK);
    }
}
