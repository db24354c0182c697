//! A real software TPM for the tests: `swtpm socket --tpm2` on free local ports, killed when the
//! guard is dropped (also when a test panics).

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm. Dropping it kills the process.
pub struct Swtpm {
    child: Child,
    port: u16,
    state: PathBuf,
}

/// Two consecutive free ports (swtpm's data port and its control port right after it).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = first.local_addr().expect("local address").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}

/// A local port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

impl Swtpm {
    /// Starts swtpm keeping its state in `state` (reused across restarts), and waits until its
    /// data port accepts connections. Retries on other ports if another process took ours
    /// between choosing and binding.
    pub fn start(state: &Path) -> Swtpm {
        for _ in 0..5 {
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start swtpm (is swtpm installed?)");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_status)) = child.try_wait() {
                    break; // Lost the port race; try other ports.
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Swtpm {
                        child,
                        port,
                        state: state.to_owned(),
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("swtpm did not listen on port {port} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("swtpm failed to start five times");
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Stops this swtpm and starts a new one from the same state directory, as after a reboot.
    pub fn restart(self) -> Swtpm {
        let state = self.state.clone();
        drop(self);
        Swtpm::start(&state)
    }
}

impl Drop for Swtpm {
    /// SIGTERM first so swtpm saves its state like a TPM at power-off; SIGKILL if it lingers.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
