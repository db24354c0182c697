//! Small, predictable processes for quantum-bpf's tests and benchmark: the
//! behaviours the telemetry must observe, one subcommand each.
//!
//! ```text
//! bpf-workload spin                 burn CPU until killed
//! bpf-workload wake-loop MICROS     sleep MICROS, wake, repeat until killed
//! bpf-workload exit CODE            exit with CODE
//! bpf-workload sleep                sleep until killed
//! bpf-workload eat-memory           allocate and touch memory until killed
//! bpf-workload fork-exit COUNT      fork COUNT children that exit at once, reaping each
//! bpf-workload load CGROUP_DIR      try Telemetry::load and say what happened
//! bpf-workload connect ADDR:PORT    open a TCP connection to ADDR:PORT (exit 1 if refused)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use quantum_bpf::{LoadError, Options, Telemetry};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let number = |i: usize| arg(i).and_then(|s| s.parse::<u64>().ok());
    match (arg(0), number(1)) {
        (Some("spin"), _) => loop {
            std::hint::spin_loop();
        },
        (Some("wake-loop"), Some(micros)) => loop {
            std::thread::sleep(Duration::from_micros(micros));
        },
        (Some("exit"), Some(code)) => ExitCode::from(code as u8),
        (Some("sleep"), _) => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        (Some("eat-memory"), _) => eat_memory(),
        (Some("fork-exit"), Some(count)) => fork_exit(count),
        (Some("connect"), _) => match arg(1).and_then(|a| a.parse::<std::net::SocketAddr>().ok()) {
            Some(to) => match std::net::TcpStream::connect(to) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("connect {to}: {e}");
                    ExitCode::from(1)
                }
            },
            None => usage(),
        },
        (Some("load"), _) => match arg(1) {
            Some(dir) => load(PathBuf::from(dir)),
            None => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: bpf-workload spin | wake-loop MICROS | exit CODE | sleep | eat-memory | fork-exit COUNT | connect ADDR:PORT | load CGROUP_DIR");
    ExitCode::from(2)
}

fn eat_memory() -> ExitCode {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really charged, not just reserved.
        hoard.push(vec![1u8; 1 << 20]);
    }
}

fn fork_exit(count: u64) -> ExitCode {
    for _ in 0..count {
        // SAFETY: this program is single-threaded, and the child only calls _exit.
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            -1 => {
                eprintln!("fork: {}", std::io::Error::last_os_error());
                return ExitCode::FAILURE;
            }
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child with a valid status pointer.
                unsafe { libc::waitpid(child, &mut status, 0) };
            }
        }
    }
    ExitCode::SUCCESS
}

/// Prints `loaded`, `unavailable: REASON` (exit 3) or `error: ...` (exit 1).
fn load(dir: PathBuf) -> ExitCode {
    match Telemetry::load(&Options::new(dir)) {
        Ok(_) => {
            println!("loaded");
            ExitCode::SUCCESS
        }
        Err(LoadError::Unavailable { reason }) => {
            println!("unavailable: {reason}");
            ExitCode::from(3)
        }
        Err(e) => {
            println!("error: {e}: {:?}", std::error::Error::source(&e));
            ExitCode::FAILURE
        }
    }
}
