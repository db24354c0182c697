//! Pre-warmed cells: a cell's unit started before anyone asks for it, its
//! sandbox, cgroup, limits and dynamic user already set up by systemd, its
//! main process a small waiter (`quantumd warm-exec`) that blocks on a
//! socket. Claiming it is one message: the run's command line, environment
//! and (for a foreground run) the caller's stdin, stdout and stderr; the
//! waiter puts the descriptors in place and `exec`s the cell's program, in
//! the same process, unit and cgroup. A start then costs a message and an
//! `exec` instead of systemd's fork, namespace and cgroup setup.
//!
//! The socket is one end of a `socketpair` that quantumd passes to systemd
//! as the unit's standard input (as a foreground run's stdin), so nothing
//! on the file system names it and nothing but quantumd can claim the
//! unit. When quantumd lets go of its end (it gives the unit up, or dies)
//! the waiter reads end-of-file and exits 0: a warm unit never outlives
//! its quantumd's interest in it.
//!
//! Which cells are kept warm, and when, is `cells.rs`'s (see `prewarm`).

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::runtime::UnitSpec;

/// The largest claim message: a command line and an environment.
const MAX_CLAIM: usize = 256 * 1024;

/// What a claim tells the waiter.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
}

/// A unit kept warm for a cell.
#[derive(Debug)]
pub struct WarmUnit {
    /// Its instance id: the id the run that claims it gets.
    pub instance: String,
    /// The spec it was started with (its argv is the waiter's).
    pub spec: UnitSpec,
    /// The manifest it was started from.
    pub manifest_blake3: String,
    /// quantumd's end of the claim socket.
    pub socket: OwnedFd,
    pub pid: u32,
    pub since: Instant,
    /// Why it is warm, for the trail and the log.
    pub why: String,
}

/// The socket pair of a warm unit: (quantumd's end, the unit's stdin).
pub fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

/// Whether a run of `asked` may take the warm unit `warm`: the same
/// sandbox, limits and slice (what systemd set up), whatever the command
/// line, environment and standard streams.
pub fn fits(warm: &UnitSpec, asked: &UnitSpec) -> bool {
    warm.cell == asked.cell
        && warm.slice == asked.slice
        && warm.limits == asked.limits
        && warm.sandbox == asked.sandbox
        && warm.state == asked.state
}

/// Hands the run to the waiter: its command line, environment and, for a
/// foreground run, the caller's descriptors.
pub fn claim(socket: &OwnedFd, spec: &UnitSpec) -> std::io::Result<()> {
    let body = serde_json::to_vec(&Claim {
        argv: spec.argv.clone(),
        env: spec.env.clone(),
    })
    .map_err(std::io::Error::other)?;
    if body.len() > MAX_CLAIM {
        return Err(std::io::Error::other(format!(
            "a claim of {} bytes is over {MAX_CLAIM}",
            body.len()
        )));
    }
    let fds: Vec<RawFd> = spec
        .stdio
        .as_ref()
        .map(|s| s.fds().iter().map(AsRawFd::as_raw_fd).collect())
        .unwrap_or_default();
    let iov = [IoSlice::new(&body)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    socket::sendmsg::<()>(socket.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(std::io::Error::from)?;
    Ok(())
}

/// `quantumd warm-exec`: waits on standard input for a claim, then becomes
/// the cell's program. Returns only on error (or with `Ok` when quantumd let
/// go without claiming: nothing to run).
pub fn serve() -> anyhow::Result<()> {
    use anyhow::Context;
    let mut buf = vec![0u8; MAX_CLAIM];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(0, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .context("waiting for a claim on standard input")?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().context("reading the claim's descriptors")? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just gave this process these
                // descriptors; nothing else owns them.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Ok(());
    }
    let claim: Claim = serde_json::from_slice(&buf[..len]).context("the claim is not JSON")?;
    anyhow::ensure!(!claim.argv.is_empty(), "the claim has no command");
    match fds.as_slice() {
        [stdin, stdout, stderr] => {
            for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
                dup_onto(fd.as_fd(), target)?;
            }
        }
        [] => {
            // Standard input was the claim socket; the cell gets none.
            let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
            dup_onto(null.as_fd(), 0)?;
        }
        other => anyhow::bail!("a claim with {} descriptors (expected 0 or 3)", other.len()),
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&claim.argv[0])
        .args(&claim.argv[1..])
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| !claim.env.contains_key(k)))
        .envs(&claim.env)
        .exec();
    Err(anyhow::Error::new(err).context(format!("cannot execute {}", claim.argv[0])))
}

fn dup_onto(fd: std::os::fd::BorrowedFd<'_>, target: RawFd) -> anyhow::Result<()> {
    // SAFETY: dup2 onto 0, 1 or 2 of this single-threaded process, which
    // is about to exec; the old descriptor there is closed by design.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(anyhow::Error::new(std::io::Error::last_os_error()).context(format!("dup2 onto {target}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_carries_the_command_environment_and_descriptors() {
        let (ours, theirs) = socket_pair().expect("socketpair");
        let (r, w) = std::io::pipe().expect("pipe");
        let (r2, w2) = (r.try_clone().expect("dup"), w.try_clone().expect("dup"));
        let spec = UnitSpec {
            instance: "a.1".into(),
            cell: "a".into(),
            unit: "quantum-a.1.service".into(),
            slice: "quantum.slice".into(),
            description: String::new(),
            argv: vec!["/bin/echo".into(), "hi".into()],
            env: BTreeMap::from([("QUANTUM_CELL".into(), "a".into())]),
            limits: crate::runtime::Limits {
                memory_min: 0,
                memory_max: 0,
                cpu_quota_centis: 0,
                cpu_weight: 100,
                io_weight: 100,
                tasks_max: 0,
            },
            sandbox: crate::runtime::Sandbox {
                user: quantum_model::UserMode::Dynamic,
                network: quantum_model::Network::None,
                network_allow: vec![],
                readable: vec![],
                writable: vec![],
                inaccessible: vec![],
            },
            state: false,
            credentials: None,
            stdio: Some(crate::runtime::Stdio::new(OwnedFd::from(r), OwnedFd::from(w), OwnedFd::from(w2))),
            stdin: None,
        };
        claim(&ours, &spec).expect("claim");
        let mut buf = vec![0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(theirs.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).expect("recvmsg");
        let fds: Vec<RawFd> = msg
            .cmsgs()
            .expect("cmsgs")
            .flat_map(|c| match c {
                ControlMessageOwned::ScmRights(f) => f,
                _ => vec![],
            })
            .collect();
        assert_eq!(fds.len(), 3);
        let n = msg.bytes;
        let claim: Claim = serde_json::from_slice(&buf[..n]).expect("json");
        assert_eq!(claim.argv, ["/bin/echo", "hi"]);
        assert_eq!(claim.env.get("QUANTUM_CELL").map(String::as_str), Some("a"));
        for fd in fds {
            // SAFETY: received above, owned by nobody else.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        drop(r2);
    }
}
