//! Foreground runs: a task cell gets this process's standard input, output
//! and error (passed to quantumd as file descriptors, so the cell writes
//! straight to the terminal or pipe), and quantumctl waits for it and exits
//! with its status, as `systemd-run --pipe --wait` does. Ctrl-C (or SIGTERM,
//! or the terminal going away) stops the cell.

use std::collections::HashMap;
use std::os::fd::AsFd;

use anyhow::anyhow;
use quantum_bus::{Assembled, Ended, Quantum1Proxy, RunOptions, Started};
use tokio::signal::unix::{signal, Signal, SignalKind};
use zbus::zvariant::Fd;

use crate::client::request_failed;

/// How long one `Wait` call may last; quantumctl asks again after it, so
/// no bus timeout ever ends a long task's wait.
const WAIT_SLICE_MS: u32 = 30_000;

/// Starts `source` attached to this process's stdio.
pub async fn start(
    proxy: &Quantum1Proxy<'_>,
    source: &str,
    params: HashMap<String, String>,
    cwd: &str,
    options: RunOptions,
) -> Result<Assembled, anyhow::Error> {
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    proxy
        .run_attached_with(
            source,
            params,
            cwd,
            options.to_wire(),
            Fd::from(stdin.as_fd()),
            Fd::from(stdout.as_fd()),
            Fd::from(stderr.as_fd()),
        )
        .await
        .map_err(|e| request_failed(&format!("cannot run {source}"), e))
}

/// SIGINT, SIGTERM and SIGHUP, caught from before a foreground run starts:
/// one that comes while the cell is being started still stops it (and
/// quantumctl may have been started with SIGINT ignored, as a background
/// job of a script is).
pub struct Interrupts {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Interrupts {
    pub fn catch() -> Result<Interrupts, anyhow::Error> {
        Ok(Interrupts {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next of them, as its signal number.
    async fn recv(&mut self) -> u8 {
        tokio::select! {
            _ = self.interrupt.recv() => libc_signal::INT,
            _ = self.terminate.recv() => libc_signal::TERM,
            _ = self.hangup.recv() => libc_signal::HUP,
        }
    }
}

/// Waits for every attached instance in `started` to end, in order, and
/// returns the exit status quantumctl should end with: the first failing
/// cell's status, else 0. A signal stops every instance still running.
pub async fn wait_all(proxy: &Quantum1Proxy<'_>, started: &[Started], interrupts: &mut Interrupts) -> Result<u8, anyhow::Error> {
    let mut code = 0u8;
    let attached: Vec<&str> = started.iter().filter(|s| s.attached).map(|s| s.info.instance.as_str()).collect();
    for (i, instance) in attached.iter().enumerate() {
        let ended = tokio::select! {
            ended = wait_for(proxy, instance) => ended?,
            signal = interrupts.recv() => return stop_all(proxy, &attached[i..], signal).await,
        };
        if ended.state != "exited" || ended.status != 0 {
            eprintln!("quantumctl: {instance} {}", ended.reason);
            if code == 0 {
                code = status_code(&ended);
            }
        }
    }
    Ok(code)
}

async fn wait_for(proxy: &Quantum1Proxy<'_>, instance: &str) -> Result<Ended, anyhow::Error> {
    loop {
        let ended = proxy
            .wait(instance, WAIT_SLICE_MS)
            .await
            .map_err(|e| request_failed(&format!("cannot follow {instance}"), e))?;
        if ended.ended {
            return Ok(ended);
        }
    }
}

/// Stops what was still running after a signal; exits as a shell would
/// after that signal (128+N).
async fn stop_all(proxy: &Quantum1Proxy<'_>, instances: &[&str], signal: u8) -> Result<u8, anyhow::Error> {
    for instance in instances {
        if let Err(e) = proxy.stop(instance).await {
            // Already ended between the signal and the stop: nothing to do.
            if !matches!(e, quantum_bus::Error::NotFound(_)) {
                return Err(anyhow!("{:#}", request_failed(&format!("cannot stop {instance}"), e)));
            }
        }
        eprintln!("quantumctl: stopped {instance}");
    }
    Ok(128 + signal)
}

/// The cell's status as quantumctl's own: 1..=255, never 0 for a failure.
fn status_code(ended: &Ended) -> u8 {
    match u8::try_from(ended.status) {
        Ok(0) | Err(_) => 1,
        Ok(n) => n,
    }
}

/// Signal numbers for the exit status after a signal (Linux values).
mod libc_signal {
    pub const HUP: u8 = 1;
    pub const INT: u8 = 2;
    pub const TERM: u8 = 15;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(state: &str, status: i32) -> Ended {
        Ended {
            ended: true,
            status,
            state: state.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn a_failure_never_exits_zero() {
        assert_eq!(status_code(&ended("failed", 3)), 3);
        assert_eq!(status_code(&ended("failed", 137)), 137);
        assert_eq!(status_code(&ended("failed", -1)), 1);
        assert_eq!(status_code(&ended("stopped", 0)), 1);
        assert_eq!(status_code(&ended("failed", 300)), 1);
    }
}
