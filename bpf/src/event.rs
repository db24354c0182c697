//! Process events (STEPPPS EVENT) as they come out of the ring buffer.

use std::mem::{offset_of, size_of};
use std::time::Duration;

use crate::skel::events::types::qt_event;

/// One process event in a cgroup under the telemetry's ancestor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Process (thread-group) id.
    pub pid: u32,
    /// The process's cgroup v2 id (see [`crate::cgroup_id`]).
    pub cgroup_id: u64,
    /// The process's `comm` (executable name, at most 15 bytes) when the event happened.
    pub comm: String,
    /// [`EventKind::Exec`] and [`EventKind::Connect`]: the leaf name of the
    /// process's cgroup (a cell's unit, `quantum-web.1.service`), which
    /// outlives the cgroup; empty otherwise.
    pub cgroup: String,
    /// When it happened, on the CLOCK_MONOTONIC clock.
    pub monotonic: Duration,
    /// What happened.
    pub kind: EventKind,
}

/// What happened to the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// It called execve(2); `comm` is the new program's.
    Exec,
    /// Its last thread exited.
    Exit(ExitStatus),
    /// The OOM killer chose it (its `Exit` with SIGKILL follows).
    OomKill,
    /// It began a TCP connection to this destination (connect(2); the
    /// socket entered SYN_SENT). IPv4 destinations of IPv6 sockets are
    /// IPv4-mapped IPv6 addresses here.
    Connect(std::net::SocketAddr),
}

/// How a process ended, as wait(2) would report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(u8),
    /// A signal killed it.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Decodes a wait(2) status word (`task_struct::exit_code`).
    pub fn from_wait_status(status: u32) -> Self {
        match status & 0x7f {
            0 => ExitStatus::Code(((status >> 8) & 0xff) as u8),
            signal => ExitStatus::Signal {
                signal: signal as i32,
                core_dumped: status & 0x80 != 0,
            },
        }
    }
}

// Shared with intf.h.
const QT_CGROUP_NAME_LEN: usize = 128;
// Shared with intf.h (enum qt_event_kind).
const QT_EVENT_EXEC: u32 = 1;
const QT_EVENT_EXIT: u32 = 2;
const QT_EVENT_OOM_KILL: u32 = 3;
const QT_EVENT_CONNECT: u32 = 4;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A ring buffer record that is not a `struct qt_event` this crate knows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than `struct qt_event`.
    #[error("event record of {len} bytes, expected at least {expected}")]
    Short {
        /// The record's length.
        len: usize,
        /// `size_of::<qt_event>()`.
        expected: usize,
    },
    /// The kind is none of `enum qt_event_kind`.
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    /// A connect record's address family is neither AF_INET nor AF_INET6.
    #[error("connect event of address family {0}")]
    UnknownFamily(u16),
}

fn u32_at(record: &[u8], offset: usize) -> u32 {
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&record[offset..offset + 4]);
    u32::from_ne_bytes(bytes)
}

fn u64_at(record: &[u8], offset: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&record[offset..offset + 8]);
    u64::from_ne_bytes(bytes)
}

/// A connect record's destination.
fn destination(record: &[u8]) -> Result<std::net::SocketAddr, DecodeError> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let at = offset_of!(qt_event, daddr);
    let addr = &record[at..at + 16];
    let port = {
        let at = offset_of!(qt_event, dport);
        u16::from_ne_bytes([record[at], record[at + 1]])
    };
    let family = {
        let at = offset_of!(qt_event, family);
        u16::from_ne_bytes([record[at], record[at + 1]])
    };
    // The address bytes are in network order, as the kernel keeps them.
    match family {
        AF_INET => Ok(SocketAddr::from((Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]), port))),
        AF_INET6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(addr);
            Ok(SocketAddr::from((Ipv6Addr::from(octets), port)))
        }
        other => Err(DecodeError::UnknownFamily(other)),
    }
}

impl Event {
    /// Decodes one ring buffer record. Offsets come from the skeleton's
    /// generated `qt_event`, so they follow intf.h without unsafe casts.
    pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
        let expected = size_of::<qt_event>();
        if record.len() < expected {
            return Err(DecodeError::Short {
                len: record.len(),
                expected,
            });
        }
        let status = u32_at(record, offset_of!(qt_event, exit_status));
        let kind = match u32_at(record, offset_of!(qt_event, kind)) {
            QT_EVENT_EXEC => EventKind::Exec,
            QT_EVENT_EXIT => EventKind::Exit(ExitStatus::from_wait_status(status)),
            QT_EVENT_OOM_KILL => EventKind::OomKill,
            QT_EVENT_CONNECT => EventKind::Connect(destination(record)?),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        let comm_at = offset_of!(qt_event, comm);
        let comm = &record[comm_at..comm_at + size_of::<[i8; 16]>()];
        let comm = comm.split(|&b| b == 0).next().unwrap_or_default();
        let cgroup_at = offset_of!(qt_event, cgroup);
        let cgroup = &record[cgroup_at..cgroup_at + size_of::<[i8; QT_CGROUP_NAME_LEN]>()];
        let cgroup = cgroup.split(|&b| b == 0).next().unwrap_or_default();
        Ok(Event {
            pid: u32_at(record, offset_of!(qt_event, pid)),
            cgroup_id: u64_at(record, offset_of!(qt_event, cgroup_id)),
            comm: String::from_utf8_lossy(comm).into_owned(),
            cgroup: String::from_utf8_lossy(cgroup).into_owned(),
            monotonic: Duration::from_nanos(u64_at(record, offset_of!(qt_event, timestamp_ns))),
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, pid: u32, cgroup_id: u64, status: u32, comm: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; size_of::<qt_event>()];
        r[offset_of!(qt_event, cgroup_id)..][..8].copy_from_slice(&cgroup_id.to_ne_bytes());
        r[offset_of!(qt_event, timestamp_ns)..][..8].copy_from_slice(&5_000u64.to_ne_bytes());
        r[offset_of!(qt_event, kind)..][..4].copy_from_slice(&kind.to_ne_bytes());
        r[offset_of!(qt_event, pid)..][..4].copy_from_slice(&pid.to_ne_bytes());
        r[offset_of!(qt_event, exit_status)..][..4].copy_from_slice(&status.to_ne_bytes());
        r[offset_of!(qt_event, comm)..][..comm.len()].copy_from_slice(comm);
        r
    }

    #[test]
    fn wait_statuses_decode_like_wait2() {
        assert_eq!(ExitStatus::from_wait_status(0), ExitStatus::Code(0));
        assert_eq!(ExitStatus::from_wait_status(7 << 8), ExitStatus::Code(7));
        assert_eq!(
            ExitStatus::from_wait_status(9),
            ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_wait_status(11 | 0x80),
            ExitStatus::Signal {
                signal: 11,
                core_dumped: true
            }
        );
    }

    #[test]
    fn an_exit_record_decodes_to_an_exit_event() {
        let r = record(QT_EVENT_EXIT, 42, 7777, 3 << 8, b"sleep");
        assert_eq!(
            Event::decode(&r),
            Ok(Event {
                pid: 42,
                cgroup_id: 7777,
                comm: "sleep".into(),
                cgroup: String::new(),
                monotonic: Duration::from_nanos(5_000),
                kind: EventKind::Exit(ExitStatus::Code(3)),
            })
        );
    }

    #[test]
    fn an_exec_record_names_the_cgroup_it_ran_in() {
        let mut r = record(QT_EVENT_EXEC, 9, 12, 0, b"sh");
        r[offset_of!(qt_event, cgroup)..][..21].copy_from_slice(b"quantum-web.1.service");
        let e = Event::decode(&r).expect("decodes");
        assert_eq!(
            (e.kind, e.comm.as_str(), e.cgroup.as_str()),
            (EventKind::Exec, "sh", "quantum-web.1.service")
        );
    }

    #[test]
    fn a_connect_record_decodes_its_destination_in_either_family() {
        let mut r = record(QT_EVENT_CONNECT, 9, 12, 0, b"curl");
        r[offset_of!(qt_event, daddr)..][..4].copy_from_slice(&[203, 0, 113, 5]);
        r[offset_of!(qt_event, dport)..][..2].copy_from_slice(&4444u16.to_ne_bytes());
        r[offset_of!(qt_event, family)..][..2].copy_from_slice(&AF_INET.to_ne_bytes());
        let e = Event::decode(&r).expect("decodes");
        assert_eq!(e.kind, EventKind::Connect("203.0.113.5:4444".parse().expect("addr")));

        let v6: std::net::Ipv6Addr = "2001:db8::7".parse().expect("v6");
        r[offset_of!(qt_event, daddr)..][..16].copy_from_slice(&v6.octets());
        r[offset_of!(qt_event, family)..][..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        let e = Event::decode(&r).expect("decodes");
        assert_eq!(e.kind, EventKind::Connect("[2001:db8::7]:4444".parse().expect("addr")));

        r[offset_of!(qt_event, family)..][..2].copy_from_slice(&1u16.to_ne_bytes());
        assert_eq!(Event::decode(&r), Err(DecodeError::UnknownFamily(1)));
    }

    #[test]
    fn a_full_length_comm_needs_no_terminator() {
        let r = record(QT_EVENT_EXEC, 1, 1, 0, b"abcdefghijklmnop");
        assert_eq!(Event::decode(&r).map(|e| e.comm), Ok("abcdefghijklmnop".to_owned()));
    }

    #[test]
    fn short_records_and_unknown_kinds_are_errors() {
        let r = record(QT_EVENT_OOM_KILL, 1, 1, 0, b"x");
        assert_eq!(
            Event::decode(&r[..10]),
            Err(DecodeError::Short {
                len: 10,
                expected: r.len()
            })
        );
        assert_eq!(Event::decode(&record(99, 1, 1, 0, b"x")), Err(DecodeError::UnknownKind(99)));
    }
}
