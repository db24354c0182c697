//! A cell's network allow-list on the real kernel: `NetPolicy` attached to a
//! real cgroup, a real process in it connecting to real sockets. Needs root
//! and a kernel with BTF (CI runs as root).
//!
//! The listeners live in the test process, outside the cgroup, so only the
//! process inside is judged.

mod common;

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{v2_root, Cgroup};
use quantum_bpf::{Destination, NetPolicy, MAX_DESTINATIONS};
use quantum_model::Protocol;

fn cell() -> Cgroup {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("qt-netpolicy-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    Cgroup::create(v2_root().join(name))
}

/// Runs `bash -c SCRIPT` inside `cgroup` (moved there before it execs).
fn run_in(cgroup: &Cgroup, script: &str) -> Output {
    let procs = File::options().write(true).open(cgroup.procs()).expect("open cgroup.procs");
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]).stdin(Stdio::null());
    // SAFETY: between fork and exec the closure only writes to a file opened before the fork.
    unsafe {
        cmd.pre_exec(move || (&procs).write_all(b"0"));
    }
    cmd.output().expect("run bash")
}

/// bash's /dev/tcp and /dev/udp connect(); exit 0 when it was allowed.
fn connects(cgroup: &Cgroup, proto: &str, host: &str, port: u16) -> (bool, String) {
    let out = run_in(cgroup, &format!("exec 3<>/dev/{proto}/{host}/{port}"));
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tcp(port: u16, net: Option<(IpAddr, u8)>) -> Destination {
    Destination {
        protocol: Protocol::Tcp,
        ports: (port, port),
        net,
    }
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn only_listed_destinations_are_reachable_and_the_rest_are_refused_and_counted() {
    let allowed = TcpListener::bind("127.0.0.1:0").expect("listen");
    let other = TcpListener::bind("127.0.0.1:0").expect("listen");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let (a, b, u) = (
        allowed.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let cgroup = cell();
    // Before the policy, everything is reachable: the test can tell.
    assert!(connects(&cgroup, "tcp", "127.0.0.1", b).0);

    let mut policy = NetPolicy::load(&[tcp(a, Some((LOCALHOST, 32)))]).expect("load the allow-list");
    policy.attach(&cgroup.0).expect("attach");

    let (ok, err) = connects(&cgroup, "tcp", "127.0.0.1", a);
    assert!(ok, "the listed destination was refused: {err}");
    let (ok, err) = connects(&cgroup, "tcp", "127.0.0.1", b);
    assert!(!ok && err.contains("Operation not permitted"), "another port: {ok} {err}");
    let (ok, err) = connects(&cgroup, "udp", "127.0.0.1", u);
    assert!(!ok && err.contains("Operation not permitted"), "udp to a tcp-only rule: {ok} {err}");
    // The same port over IPv6 is another host.
    let (ok, _) = connects(&cgroup, "tcp", "::1", a);
    assert!(!ok, "::1 is not 127.0.0.1");
    assert_eq!(policy.denied().expect("read the count"), 3);

    // Outside the cgroup nothing changed.
    assert!(std::net::TcpStream::connect(("127.0.0.1", b)).is_ok());

    // Dropping the policy detaches it.
    drop(policy);
    assert!(connects(&cgroup, "tcp", "127.0.0.1", b).0);
}

#[test]
fn prefixes_port_ranges_any_host_and_mapped_ipv4_addresses() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let (t, u) = (listener.local_addr().unwrap().port(), udp.local_addr().unwrap().port());
    let cgroup = cell();
    let mut policy = NetPolicy::load(&[
        Destination {
            protocol: Protocol::Tcp,
            ports: (t.saturating_sub(1).max(1), t.saturating_add(1)),
            net: Some(("127.0.0.0".parse().unwrap(), 8)),
        },
        Destination {
            protocol: Protocol::Udp,
            ports: (u, u),
            net: None,
        },
    ])
    .expect("load");
    policy.attach(&cgroup.0).expect("attach");
    assert!(connects(&cgroup, "tcp", "127.0.0.1", t).0, "inside 127.0.0.0/8 and the range");
    assert!(connects(&cgroup, "udp", "127.0.0.1", u).0, "udp to any host on its port");
    // A dual-stack socket reaching 127.0.0.1 as ::ffff:127.0.0.1 is judged as 127.0.0.1.
    let out = run_in(
        &cgroup,
        &format!("python3 -c 'import socket; s=socket.socket(socket.AF_INET6); s.connect((\"::ffff:127.0.0.1\", {t}))'"),
    );
    assert!(
        out.status.success(),
        "mapped address refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(policy.denied().unwrap(), 0);
}

#[test]
fn too_many_destinations_are_refused_before_anything_is_loaded() {
    let many = vec![tcp(80, None); MAX_DESTINATIONS + 1];
    let err = NetPolicy::load(&many).err().expect("65 destinations");
    assert!(err.to_string().contains("at most 64"), "{err}");
}

#[test]
fn pins_are_files_named_after_the_cell_on_bpffs_and_go_with_the_policy() {
    // A private bpffs instance, as systemd's /sys/fs/bpf is one.
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(dir.path())
        .status()
        .expect("run mount");
    assert!(status.success(), "mount -t bpf: {status}");
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());

    let mut policy = NetPolicy::load(&[tcp(443, None)]).expect("load");
    let pins = policy.pin(dir.path(), "quantum-web.1.service").expect("pin");
    let hooks: Vec<&str> = pins.iter().map(|(hook, _)| *hook).collect();
    assert_eq!(hooks, ["connect4", "connect6", "sendmsg4", "sendmsg6"]);
    for (hook, path) in &pins {
        assert_eq!(path, &dir.path().join(format!("quantum-web_1_service_{hook}")));
        assert!(path.exists(), "{} not pinned", path.display());
    }
    drop(policy);
    for (_, path) in &pins {
        assert!(!path.exists(), "{} left behind", path.display());
    }

    // After the start job: pins gone, the programs (and their counter) kept.
    let mut kept = NetPolicy::load(&[tcp(443, None)]).expect("load");
    let pins = kept.pin(dir.path(), "quantum-web.2.service").expect("pin");
    kept.unpin();
    for (_, path) in &pins {
        assert!(!path.exists(), "{} left after unpin", path.display());
    }
    assert_eq!(kept.denied().expect("the counter is still readable"), 0);
}
