//! The host side of the test agent's protocol (`tests/vm/guest/quantum-test-agent`).
//!
//! The host writes `cmd/N.timeout` and then `cmd/N.sh` (renamed into place
//! complete) into the shared directory; the agent runs the scripts in order
//! and renames `N.out`, `N.err` and, last, `N.rc` into `cmd/`. The protocol
//! needs nothing in the guest but bash and a shared directory, and keeps
//! working while D-Bus, the network or quantumd are broken, which is exactly
//! when a test needs to look inside.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How much longer than a command's timeout the host waits for its result:
/// the agent SIGKILLs 10 s after the timeout, and a busy TCG guest is slow.
const RESULT_GRACE: Duration = Duration::from_secs(30);

/// The result of a command run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit status; 124 or 137 when the agent killed it for its timeout.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exit code {}", self.code)?;
        if !self.stdout.is_empty() {
            writeln!(f, "--- stdout\n{}", self.stdout.trim_end())?;
        }
        if !self.stderr.is_empty() {
            writeln!(f, "--- stderr\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

/// The command channel through one share directory.
#[derive(Debug)]
pub struct AgentChannel {
    cmd_dir: PathBuf,
    ready_file: PathBuf,
    next: Mutex<u64>,
}

impl AgentChannel {
    /// Prepares `share` (creates `cmd/`); commands are numbered from 1.
    pub fn new(share: &Path) -> Result<AgentChannel> {
        let cmd_dir = share.join("cmd");
        fs::create_dir_all(&cmd_dir).with_context(|| format!("creating {}", cmd_dir.display()))?;
        Ok(AgentChannel {
            cmd_dir,
            ready_file: share.join("ready"),
            next: Mutex::new(1),
        })
    }

    /// Whether the agent has started on this share (it writes `ready` just
    /// before it prints its readiness line).
    pub fn agent_started(&self) -> bool {
        self.ready_file.exists()
    }

    /// Hands `script` to the agent and returns its number, without waiting.
    pub fn submit(&self, script: &str, timeout: Duration) -> Result<u64> {
        let n = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let n = *next;
            *next += 1;
            n
        };
        let secs = timeout.as_secs().max(1);
        fs::write(self.cmd_dir.join(format!("{n}.timeout")), format!("{secs}\n")).context("writing the command's timeout")?;
        let tmp = self.cmd_dir.join(format!(".{n}.sh.tmp"));
        fs::write(&tmp, script).context("writing the command")?;
        fs::rename(&tmp, self.cmd_dir.join(format!("{n}.sh"))).context("renaming the command into place")?;
        Ok(n)
    }

    /// Runs `script` and waits for its result. `guest_exited` is asked while
    /// waiting and ends the wait with an error once it returns a status.
    pub fn run(&self, script: &str, timeout: Duration, mut guest_exited: impl FnMut() -> Result<Option<ExitStatus>>) -> Result<Output> {
        let n = self.submit(script, timeout)?;
        let rc_file = self.cmd_dir.join(format!("{n}.rc"));
        let deadline = Instant::now() + timeout + RESULT_GRACE;
        while !rc_file.exists() {
            if let Some(status) = guest_exited()? {
                bail!("the guest exited ({status}) while running command {n}: {script}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent gave no result within {} s for command {n}: {script}",
                    (timeout + RESULT_GRACE).as_secs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        let read = |ext: &str| -> Result<String> {
            let path = self.cmd_dir.join(format!("{n}.{ext}"));
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        let rc = read("rc")?;
        let code = rc
            .trim()
            .parse()
            .with_context(|| format!("the agent wrote a bad exit code '{}'", rc.trim()))?;
        Ok(Output {
            code,
            stdout: read("out")?,
            stderr: read("err")?,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The real agent script, run on the host on a plain directory: the
    //! protocol is tested here in milliseconds, the guests only prove that
    //! the agent starts and the share works.

    use std::process::{Child, Command, Stdio};

    use super::*;

    struct LocalAgent {
        child: Child,
        _dir: tempfile::TempDir,
        channel: AgentChannel,
    }

    impl Drop for LocalAgent {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn spawn_agent(share: &Path) -> Child {
        let dir = share.parent().unwrap();
        let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/quantum-test-agent");
        Command::new("bash")
            .arg(agent)
            .env("QUANTUM_TEST_SHARE", share)
            .env("QUANTUM_TEST_RUN_DIR", dir.join("run"))
            .env("QUANTUM_TEST_CONSOLE", dir.join("console"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Waits until the agent has written `ready` and printed its readiness
    /// line (in that order).
    fn wait_started(agent: &LocalAgent) {
        let console = agent._dir.path().join("console");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let printed = fs::read_to_string(&console).unwrap_or_default();
            if agent.channel.agent_started() && printed.contains(crate::READY_LINE) {
                return;
            }
            assert!(Instant::now() < deadline, "the agent did not start; console: {printed:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn start_agent() -> LocalAgent {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        fs::create_dir_all(&share).unwrap();
        fs::create_dir_all(dir.path().join("run")).unwrap();
        let channel = AgentChannel::new(&share).unwrap();
        let child = spawn_agent(&share);
        // Owned by LocalAgent before anything can panic, so Drop kills it.
        let agent = LocalAgent { child, _dir: dir, channel };
        wait_started(&agent);
        agent
    }

    fn run(agent: &LocalAgent, script: &str, timeout: Duration) -> Output {
        agent.channel.run(script, timeout, || Ok(None)).unwrap()
    }

    #[test]
    fn code_stdout_and_stderr_come_back_apart() {
        let agent = start_agent();
        let out = run(&agent, "echo out; echo err >&2; printf 'ünï\\n'; exit 7", Duration::from_secs(20));
        assert_eq!(
            out,
            Output {
                code: 7,
                stdout: "out\nünï\n".into(),
                stderr: "err\n".into()
            }
        );
    }

    #[test]
    fn commands_run_in_order_and_see_no_stdin() {
        let agent = start_agent();
        let first = run(&agent, "read -r x; echo \"read:$?\"", Duration::from_secs(20));
        assert_eq!(first.stdout, "read:1\n");
        for i in 2..5 {
            let out = run(&agent, &format!("echo {i}"), Duration::from_secs(20));
            assert_eq!(out.stdout, format!("{i}\n"));
        }
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_and_the_next_runs() {
        let agent = start_agent();
        let started = Instant::now();
        let out = run(&agent, "sleep 30", Duration::from_secs(1));
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
        assert_eq!(out.code, 124);
        assert!(out.stderr.contains("timed out after 1s"), "stderr: {:?}", out.stderr);
        assert_eq!(run(&agent, "echo next", Duration::from_secs(20)).stdout, "next\n");
    }

    #[test]
    fn a_restarted_agent_continues_after_the_last_result() {
        let mut agent = start_agent();
        assert_eq!(run(&agent, "echo 1", Duration::from_secs(20)).stdout, "1\n");
        agent.child.kill().unwrap();
        agent.child.wait().unwrap();
        let share = agent.channel.cmd_dir.parent().unwrap().to_path_buf();
        fs::remove_file(share.join("ready")).unwrap();
        fs::remove_file(agent._dir.path().join("console")).unwrap();
        agent.child = spawn_agent(&share);
        wait_started(&agent);
        // Command 1 is not run again: its result stays as it was.
        assert_eq!(run(&agent, "echo 2", Duration::from_secs(20)).stdout, "2\n");
        assert_eq!(fs::read_to_string(agent.channel.cmd_dir.join("1.out")).unwrap(), "1\n");
    }

    #[test]
    fn a_dead_guest_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let channel = AgentChannel::new(dir.path()).unwrap();
        let err = channel
            .run("true", Duration::from_secs(60), || Ok(Some(ExitStatus::default())))
            .unwrap_err();
        assert!(format!("{err:#}").contains("the guest exited"), "{err:#}");
    }
}
