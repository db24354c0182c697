//! A cell's network allow-list, enforced in the kernel: `netpolicy.bpf.c`
//! on the cell's cgroup refuses (EPERM) every connect() and addressed
//! sendmsg() that no [`Destination`] allows.
//!
//! One [`NetPolicy`] per cell, its destinations frozen into the program at
//! load. It is put in place either by [`NetPolicy::attach`] (the cgroup
//! backend: the links live as long as the value) or by [`NetPolicy::pin`]
//! and systemd's `BPFProgram=` (the systemd backend: systemd attaches the
//! pinned programs before the cell's first instruction and holds them by
//! descriptor, so the pins are needed only while the unit starts; the
//! value is kept after [`NetPolicy::unpin`] to read [`NetPolicy::denied`]).

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags};
use quantum_model::Protocol;

use crate::skel::netpolicy::{types, NetpolicySkel, NetpolicySkelBuilder};
use crate::skel::Owned;
use crate::telemetry::{bpf_error, check_btf, LoadError};

/// How many destinations one cell may list (the program's rule array).
pub const MAX_DESTINATIONS: usize = 64;

/// Where a cell may connect or send: a protocol, an inclusive port range and
/// an address prefix (`None`: any address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub protocol: Protocol,
    pub ports: (u16, u16),
    pub net: Option<(IpAddr, u8)>,
}

/// The kinds of attachment, as systemd's `BPFProgram=` names them.
const HOOKS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// A loaded allow-list program.
pub struct NetPolicy {
    skel: Owned<NetpolicySkel<'static>>,
    links: Vec<Link>,
    pins: Vec<PathBuf>,
}

impl NetPolicy {
    /// Loads the programs with `destinations` frozen in (at most
    /// [`MAX_DESTINATIONS`]). Nothing is attached yet.
    pub fn load(destinations: &[Destination]) -> Result<NetPolicy, LoadError> {
        if destinations.len() > MAX_DESTINATIONS {
            return Err(LoadError::InvalidOption {
                option: "destinations",
                reason: format!("{} listed, at most {MAX_DESTINATIONS}", destinations.len()),
            });
        }
        check_btf(Path::new("/sys/kernel/btf/vmlinux"))?;
        // SAFETY: the slot is passed only to the generated open, whose
        // skeleton (and nothing else) keeps it.
        let skel = unsafe {
            Owned::new(|slot| {
                let mut open = NetpolicySkelBuilder::default()
                    .open(slot)
                    .map_err(|e| bpf_error("opening netpolicy.bpf.o", e))?;
                let rodata = open.maps.rodata_data.as_deref_mut().ok_or_else(|| LoadError::Unavailable {
                    reason: "netpolicy.bpf.o has no .rodata to hold the destinations".into(),
                })?;
                rodata.rule_count = destinations.len() as u32;
                for (slot, d) in rodata.rules.iter_mut().zip(destinations) {
                    *slot = rule(d);
                }
                open.load().map_err(|e| bpf_error("loading netpolicy.bpf.o", e))
            })?
        };
        Ok(NetPolicy {
            skel,
            links: Vec::new(),
            pins: Vec::new(),
        })
    }

    /// Attaches the programs to the cgroup directory `cgroup`, for as long
    /// as this value lives. Tasks already in it are covered from now on.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), LoadError> {
        let dir = File::open(cgroup).map_err(|e| LoadError::Unavailable {
            reason: format!("opening the cgroup {}: {e}", cgroup.display()),
        })?;
        let fd = dir.as_raw_fd();
        let mut links = Vec::new();
        for (_, prog) in self.programs() {
            links.push(
                prog.attach_cgroup(fd)
                    .map_err(|e| bpf_error("attaching the network allow-list", e))?,
            );
        }
        self.links.extend(links);
        Ok(())
    }

    /// Pins the programs in `dir` (on a bpffs mount) as `NAME_connect4`,
    /// `NAME_connect6`, ... and returns systemd's `BPFProgram=` values for
    /// them (`("connect4", path)`, ...). bpffs refuses names with a dot
    /// (EPERM: dots are reserved there), so every '.' of NAME becomes '_'
    /// (`quantum-web.1.service` -> `quantum-web_1_service_connect4`). The
    /// pins are removed when this value is dropped.
    pub fn pin(&mut self, dir: &Path, name: &str) -> Result<Vec<(&'static str, PathBuf)>, LoadError> {
        let mut pinned = Vec::new();
        let mut result = Ok(());
        for (hook, prog) in self.programs() {
            let path = dir.join(format!("{}_{hook}", name.replace('.', "_")));
            // A pin left by a daemon that died would make this one fail.
            let _ = std::fs::remove_file(&path);
            if let Err(e) = prog.pin(&path) {
                result = Err(bpf_error("pinning the network allow-list", e));
                break;
            }
            pinned.push((hook, path));
        }
        // Recorded either way, so that Drop removes what was pinned.
        self.pins.extend(pinned.iter().map(|(_, p)| p.clone()));
        result.map(|()| pinned)
    }

    /// Removes the pins now, keeping the programs loaded: once systemd
    /// holds them by descriptor, the value is kept only for [`denied`](NetPolicy::denied).
    pub fn unpin(&mut self) {
        for path in self.pins.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The four programs, each with the attachment it is for.
    fn programs(&mut self) -> [(&'static str, &mut libbpf_rs::ProgramMut<'static>); 4] {
        let progs = &mut self.skel.progs;
        [
            (HOOKS[0], &mut progs.qt_connect4),
            (HOOKS[1], &mut progs.qt_connect6),
            (HOOKS[2], &mut progs.qt_sendmsg4),
            (HOOKS[3], &mut progs.qt_sendmsg6),
        ]
    }

    /// Connections and datagrams refused since load.
    pub fn denied(&self) -> Result<u64, crate::ReadError> {
        let value = self
            .skel
            .maps
            .denied
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| crate::ReadError::Bpf {
                op: "reading the allow-list's refusal count",
                source,
            })?
            .unwrap_or_default();
        let bytes: [u8; 8] = value.as_slice().try_into().map_err(|_| crate::ReadError::ValueSize {
            map: "denied",
            len: value.len(),
            expected: 8,
        })?;
        Ok(u64::from_ne_bytes(bytes))
    }
}

impl Drop for NetPolicy {
    fn drop(&mut self) {
        for path in &self.pins {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The program's form of a destination.
fn rule(d: &Destination) -> types::qt_net_rule {
    let mut r = types::qt_net_rule {
        port_lo: d.ports.0,
        port_hi: d.ports.1,
        protocol: match d.protocol {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        },
        ..Default::default()
    };
    match d.net {
        None => r.family = 0,
        Some((IpAddr::V4(a), len)) => {
            r.family = 4;
            r.prefix = len.min(32);
            r.addr[0] = u32::from_ne_bytes(a.octets());
        }
        Some((IpAddr::V6(a), len)) => {
            r.family = 6;
            r.prefix = len.min(128);
            for (w, chunk) in r.addr.iter_mut().zip(a.octets().chunks_exact(4)) {
                *w = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
        }
    }
    r
}
