//! Loading the programs and reading what they collect.

use std::collections::HashMap;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Once;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, PrintLevel, RingBuffer, RingBufferBuilder};

use crate::cgroup::{CgroupError, Scope};
use crate::event::Event;
use crate::histogram::{Histogram, SLOTS};
use crate::skel::events::{EventsSkel, EventsSkelBuilder};
use crate::skel::runqlat::{RunqlatSkel, RunqlatSkelBuilder};
use crate::skel::Owned;

/// Default ring buffer size: a few thousand events, enough to ride out a
/// fork storm between two polls of a busy event loop.
pub const DEFAULT_RINGBUF_BYTES: usize = 256 * 1024;
/// Default number of cgroups the latency map holds.
pub const DEFAULT_MAX_CGROUPS: u32 = 1024;

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const MOUNTINFO: &str = "/proc/self/mountinfo";

// Shared with intf.h (enum qt_stat).
const QT_STAT_EVENTS_DROPPED: u32 = 0;
const QT_STAT_SAMPLES_LOST: u32 = 1;

/// What to load.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cgroup v2 directory whose subtree is watched (quantum.slice).
    /// Tasks elsewhere leave the programs after a few loads and are never counted.
    pub ancestor_cgroup: PathBuf,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ringbuf_bytes: usize,
    /// Most cgroups the latency histograms can hold at once; samples of
    /// further cgroups are counted in [`Stats::samples_lost`].
    pub max_cgroups: u32,
}

impl Options {
    /// Watches `ancestor_cgroup` with the default sizes.
    pub fn new(ancestor_cgroup: PathBuf) -> Options {
        Options {
            ancestor_cgroup,
            ringbuf_bytes: DEFAULT_RINGBUF_BYTES,
            max_cgroups: DEFAULT_MAX_CGROUPS,
        }
    }
}

/// Why the programs could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// This host or process cannot run them (no BTF, no privilege, a
    /// missing tracepoint): quantumd runs on and marks TIME and EVENT
    /// figures unavailable, giving this reason.
    #[error("eBPF unavailable: {reason}")]
    Unavailable {
        /// Why, for a person.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's field name.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The ancestor cgroup is not usable.
    #[error("ancestor cgroup")]
    Cgroup(#[from] CgroupError),
    /// libbpf failed in a way that is a bug here, not a property of the host
    /// (a verifier rejection, for instance: libbpf's log is in the debug traces).
    #[error("{step}")]
    Bpf {
        /// What was being done.
        step: &'static str,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
}

/// Why reading the maps or the ring buffer failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A map or ring buffer operation failed.
    #[error("{op}")]
    Bpf {
        /// What was being done.
        op: &'static str,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// A map value does not have the size the programs write.
    #[error("{map} value of {len} bytes, expected {expected}")]
    ValueSize {
        /// The map's name.
        map: &'static str,
        /// The size read.
        len: usize,
        /// The size expected.
        expected: usize,
    },
}

/// Loss counters, summed over CPUs since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events thrown away because the ring buffer was full.
    pub events_dropped: u64,
    /// Latency samples thrown away because the histogram map was full.
    pub samples_lost: u64,
    /// Ring buffer records that did not decode (a build mismatch; logged).
    pub events_undecodable: u64,
}

/// The loaded and attached TIME and EVENT programs.
///
/// Events are consumed from a libbpf ring buffer whose epoll descriptor is
/// this value's file descriptor ([`AsRawFd`]): it becomes readable when
/// events are waiting. quantumd wraps it in `tokio::io::unix::AsyncFd`, and
/// on readiness calls [`Telemetry::drain_events`] and clears the readiness;
/// no thread of its own is needed. Outside tokio, [`Telemetry::poll_events`]
/// blocks up to a timeout.
pub struct Telemetry {
    // Field order is drop order: the ring buffer goes before the maps it reads.
    ring: RingBuffer<'static>,
    received: mpsc::Receiver<Event>,
    undecodable: mpsc::Receiver<()>,
    undecodable_count: u64,
    events: Owned<EventsSkel<'static>>,
    runqlat: Owned<RunqlatSkel<'static>>,
    scope: Scope,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("scope", &self.scope).finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Loads and attaches the programs, watching `options.ancestor_cgroup`.
    pub fn load(options: &Options) -> Result<Telemetry, LoadError> {
        check_options(options)?;
        check_btf(Path::new(BTF_PATH))?;
        let scope = Scope::of(&options.ancestor_cgroup, Path::new(MOUNTINFO))?;
        route_libbpf_logs();

        // SAFETY: the slot is passed only to the generated open, whose
        // skeleton (and the loaded one it becomes) is what the closure returns.
        let runqlat = unsafe {
            Owned::new(|slot| {
                let mut open = RunqlatSkelBuilder::default()
                    .open(slot)
                    .map_err(|e| bpf_error("opening runqlat.bpf.o", e))?;
                if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                    rodata.target_ancestor_cgid = scope.cgroup_id;
                    rodata.target_level = scope.level;
                }
                open.maps
                    .runq_hist
                    .set_max_entries(options.max_cgroups)
                    .map_err(|e| bpf_error("sizing runq_hist", e))?;
                let mut skel = open.load().map_err(|e| bpf_error("loading runqlat.bpf.o", e))?;
                skel.attach().map_err(|e| bpf_error("attaching runqlat.bpf.o", e))?;
                Ok::<_, LoadError>(skel)
            })?
        };

        // SAFETY: as above.
        let events = unsafe {
            Owned::new(|slot| {
                let mut open = EventsSkelBuilder::default()
                    .open(slot)
                    .map_err(|e| bpf_error("opening events.bpf.o", e))?;
                if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                    rodata.target_ancestor_cgid = scope.cgroup_id;
                    rodata.target_level = scope.level;
                }
                let bytes = u32::try_from(options.ringbuf_bytes).map_err(|_| LoadError::InvalidOption {
                    option: "ringbuf_bytes",
                    reason: "above 4 GiB".into(),
                })?;
                open.maps
                    .events
                    .set_max_entries(bytes)
                    .map_err(|e| bpf_error("sizing the events ring buffer", e))?;
                let mut skel = open.load().map_err(|e| bpf_error("loading events.bpf.o", e))?;
                skel.attach().map_err(|e| bpf_error("attaching events.bpf.o", e))?;
                Ok::<_, LoadError>(skel)
            })?
        };

        let (send, received) = mpsc::channel();
        let (send_undecodable, undecodable) = mpsc::channel();
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&events.maps.events, move |record: &[u8]| {
                match Event::decode(record) {
                    Ok(event) => {
                        // The receiver lives in the same Telemetry as this callback: sending cannot fail while it runs.
                        let _ = send.send(event);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "undecodable event record");
                        let _ = send_undecodable.send(());
                    }
                }
                0
            })
            .map_err(|e| bpf_error("adding the events ring buffer", e))?;
        let ring = builder.build().map_err(|e| bpf_error("creating the ring buffer consumer", e))?;

        tracing::info!(ancestor = %options.ancestor_cgroup.display(), cgroup_id = scope.cgroup_id, level = scope.level, "eBPF telemetry attached");
        Ok(Telemetry {
            ring,
            received,
            undecodable,
            undecodable_count: 0,
            events,
            runqlat,
            scope,
        })
    }

    /// The watched ancestor cgroup.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Run-queue latency per cgroup id since load (or since the cgroup was
    /// [forgotten](Telemetry::forget_cgroup)), summed over CPUs. Only cgroups
    /// at or under the ancestor appear, and only once one of their tasks waited.
    pub fn runq_latency(&self) -> Result<HashMap<u64, Histogram>, ReadError> {
        let map = &self.runqlat.maps.runq_hist;
        let mut out = HashMap::new();
        for key in map.keys() {
            let Some(key_bytes) = <[u8; 8]>::try_from(key.as_slice()).ok() else {
                return Err(ReadError::ValueSize {
                    map: "runq_hist key",
                    len: key.len(),
                    expected: 8,
                });
            };
            // A cgroup forgotten between listing and lookup is simply gone.
            let Some(per_cpu) = map.lookup_percpu(&key, MapFlags::ANY).map_err(|source| ReadError::Bpf {
                op: "reading runq_hist",
                source,
            })?
            else {
                continue;
            };
            let mut sum = Histogram::default();
            for value in &per_cpu {
                sum.merge(&decode_hist(value)?);
            }
            out.insert(u64::from_ne_bytes(key_bytes), sum);
        }
        Ok(out)
    }

    /// Drops a cgroup's histogram (when its cell is gone), making room for others.
    pub fn forget_cgroup(&self, cgroup_id: u64) -> Result<(), ReadError> {
        match self.runqlat.maps.runq_hist.delete(&cgroup_id.to_ne_bytes()) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map_err(|source| ReadError::Bpf {
                op: "deleting from runq_hist",
                source,
            }),
        }
    }

    /// Events waiting now, without blocking.
    pub fn drain_events(&mut self) -> Result<Vec<Event>, ReadError> {
        let rc = self.ring.consume_raw();
        self.collect(rc, "consuming the events ring buffer")
    }

    /// Waits up to `timeout` for events, then returns those waiting (maybe none).
    pub fn poll_events(&mut self, timeout: Duration) -> Result<Vec<Event>, ReadError> {
        let rc = self.ring.poll_raw(timeout);
        self.collect(rc, "polling the events ring buffer")
    }

    fn collect(&mut self, rc: i32, op: &'static str) -> Result<Vec<Event>, ReadError> {
        // A signal interrupting the wait is not a failure; what arrived is still returned.
        if rc < 0 && rc != -libc::EINTR {
            return Err(ReadError::Bpf {
                op,
                source: libbpf_rs::Error::from_raw_os_error(-rc),
            });
        }
        self.undecodable_count += self.undecodable.try_iter().count() as u64;
        Ok(self.received.try_iter().collect())
    }

    /// Events lost to a full ring buffer since load.
    pub fn dropped_events(&self) -> Result<u64, ReadError> {
        sum_stat(&self.events.maps.stats, QT_STAT_EVENTS_DROPPED)
    }

    /// All loss counters.
    pub fn stats(&self) -> Result<Stats, ReadError> {
        Ok(Stats {
            events_dropped: self.dropped_events()?,
            samples_lost: sum_stat(&self.runqlat.maps.stats, QT_STAT_SAMPLES_LOST)?,
            events_undecodable: self.undecodable_count,
        })
    }
}

impl AsRawFd for Telemetry {
    /// The ring buffer's epoll descriptor: readable while events wait.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.epoll_fd()
    }
}

impl AsFd for Telemetry {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the epoll descriptor belongs to `self.ring` and stays open
        // until it is dropped, which the borrow of `self` prevents.
        unsafe { BorrowedFd::borrow_raw(self.ring.epoll_fd()) }
    }
}

fn decode_hist(value: &[u8]) -> Result<Histogram, ReadError> {
    let expected = (SLOTS + 1) * size_of::<u64>();
    if value.len() < expected {
        return Err(ReadError::ValueSize {
            map: "runq_hist",
            len: value.len(),
            expected,
        });
    }
    let mut words = value.chunks_exact(8).map(|w| {
        let mut b = [0; 8];
        b.copy_from_slice(w);
        u64::from_ne_bytes(b)
    });
    let mut h = Histogram::default();
    for slot in h.buckets.iter_mut() {
        *slot = words.next().unwrap_or_default();
    }
    h.sum_ns = words.next().unwrap_or_default();
    Ok(h)
}

fn sum_stat(map: &impl MapCore, index: u32) -> Result<u64, ReadError> {
    let per_cpu = map
        .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
        .map_err(|source| ReadError::Bpf {
            op: "reading stats",
            source,
        })?
        .unwrap_or_default();
    let mut total = 0u64;
    for value in per_cpu {
        let bytes = <[u8; 8]>::try_from(value.get(..8).unwrap_or_default()).map_err(|_| ReadError::ValueSize {
            map: "stats",
            len: value.len(),
            expected: 8,
        })?;
        total = total.wrapping_add(u64::from_ne_bytes(bytes));
    }
    Ok(total)
}

fn check_options(options: &Options) -> Result<(), LoadError> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if !options.ringbuf_bytes.is_power_of_two() || options.ringbuf_bytes < page {
        return Err(LoadError::InvalidOption {
            option: "ringbuf_bytes",
            reason: format!(
                "{} is not a power of two of at least one page ({page} bytes)",
                options.ringbuf_bytes
            ),
        });
    }
    if options.max_cgroups == 0 {
        return Err(LoadError::InvalidOption {
            option: "max_cgroups",
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// CO-RE relocations and tp_btf attachment both need the kernel's BTF.
pub(crate) fn check_btf(path: &Path) -> Result<(), LoadError> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(LoadError::Unavailable {
            reason: format!(
                "the kernel's BTF ({}) cannot be read ({e}): a kernel built with CONFIG_DEBUG_INFO_BTF is needed",
                path.display()
            ),
        }),
    }
}

/// Turns a libbpf failure into `Unavailable` where it is the host's or the
/// process's doing, and into `Bpf` where it would be ours.
pub(crate) fn bpf_error(step: &'static str, source: libbpf_rs::Error) -> LoadError {
    match source.kind() {
        // The verifier also answers EACCES for a bad program, so a refusal
        // counts as "not permitted" only when the privileges are really missing.
        ErrorKind::PermissionDenied => match missing_privilege(&proc_status()) {
            Some(missing) => LoadError::Unavailable {
                reason: format!("{step}: permission denied ({source}); the process lacks {missing}"),
            },
            None => LoadError::Bpf { step, source },
        },
        ErrorKind::NotFound | ErrorKind::Unsupported => LoadError::Unavailable {
            reason: format!("{step}: the kernel lacks a tracepoint, map type or helper these programs need ({source})"),
        },
        _ => LoadError::Bpf { step, source },
    }
}

fn proc_status() -> String {
    std::fs::read_to_string("/proc/self/status").unwrap_or_default()
}

/// Which capabilities loading needs but the `CapEff` line of a
/// /proc/PID/status text lacks: CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON.
pub(crate) fn missing_privilege(status: &str) -> Option<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        None
    } else {
        Some("CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run quantumd as root or grant them with AmbientCapabilities=")
    }
}

/// libbpf writes to stderr by default; here its messages become traces.
fn route_libbpf_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        fn forward(level: PrintLevel, msg: String) {
            let msg = msg.trim_end();
            match level {
                PrintLevel::Warn => tracing::warn!(target: "libbpf", "{msg}"),
                PrintLevel::Info => tracing::debug!(target: "libbpf", "{msg}"),
                PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
            }
        }
        libbpf_rs::set_print(Some((PrintLevel::Debug, forward)));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_can_move_into_an_async_task_or_thread() {
        fn send<T: Send>() {}
        send::<Telemetry>();
    }

    #[test]
    fn a_missing_btf_file_makes_telemetry_unavailable() {
        let err = check_btf(Path::new("/nonexistent/btf/vmlinux"));
        assert!(
            matches!(&err, Err(LoadError::Unavailable { reason }) if reason.contains("CONFIG_DEBUG_INFO_BTF")),
            "{err:?}"
        );
    }

    #[test]
    fn privilege_is_root_or_bpf_with_perfmon() {
        assert_eq!(missing_privilege("Name:\tx\nCapEff:\t000001ffffffffff\n"), None);
        assert_eq!(
            missing_privilege("CapEff:\t0000000000200000\n"),
            None,
            "CAP_SYS_ADMIN alone suffices"
        );
        assert_eq!(
            missing_privilege("CapEff:\t000000c000000000\n"),
            None,
            "CAP_BPF + CAP_PERFMON suffice"
        );
        assert!(missing_privilege("CapEff:\t0000008000000000\n").is_some(), "CAP_BPF alone does not");
        assert!(missing_privilege("CapEff:\t0000000000000000\n").is_some());
        assert!(missing_privilege("").is_some());
    }

    #[test]
    fn ring_buffer_sizes_must_be_page_multiples_that_are_powers_of_two() {
        let with = |bytes| Options {
            ringbuf_bytes: bytes,
            ..Options::new(PathBuf::from("/x"))
        };
        assert!(check_options(&with(4096)).is_ok());
        assert!(check_options(&with(DEFAULT_RINGBUF_BYTES)).is_ok());
        for bad in [0, 1000, 2048, 3 * 4096] {
            assert!(
                matches!(
                    check_options(&with(bad)),
                    Err(LoadError::InvalidOption {
                        option: "ringbuf_bytes",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
