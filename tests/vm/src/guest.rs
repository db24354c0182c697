//! A booted guest: a QEMU virtual machine or a systemd-nspawn container
//! running the image's systemd as PID 1, with the test agent
//! (`tests/vm/guest/quantum-test-agent`) taking commands through a shared
//! directory (see `agent.rs`).

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agent::{AgentChannel, Output};
use crate::image::Image;
use crate::iso::{machine_command, ovmf_files, swtpm_command, Firmware, Machine, MachineFiles};

/// The line the agent prints on the console once it takes commands.
pub const READY_LINE: &str = "QUANTUM-TEST-AGENT-READY";
/// The line the agent prints when it cannot start (no share).
const FAILED_LINE: &str = "QUANTUM-TEST-AGENT-FAILED";
/// Where the guest sees the share.
pub const GUEST_SHARE: &str = "/mnt/share";

/// How the guest is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// QEMU with TCG (no KVM here): the image's own kernel, real cgroup v2
    /// limits, 35-120 s to boot.
    Qemu,
    /// systemd-nspawn on the host's kernel: boots in seconds, but shares the
    /// host's cgroup setup (hybrid here, so no enforced limits).
    Nspawn,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
            Backend::Nspawn => "nspawn",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "qemu" | "vm" => Ok(Backend::Qemu),
            "nspawn" | "container" => Ok(Backend::Nspawn),
            _ => bail!("unknown backend '{s}' (expected qemu or nspawn)"),
        }
    }
}

/// What the container's root directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NspawnRoot {
    /// The image's tree read-only under a tmpfs overlay
    /// (`--volatile=overlay`): instant, and the cached tree is never changed.
    VolatileOverlay,
    /// A full copy of the image's tree in the guest's work directory.
    Copy,
}

/// Settings of one boot. `BootConfig::for_backend` gives the defaults.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// How long `wait_ready` waits for the agent's readiness line.
    /// `QUANTUM_VM_READY_TIMEOUT` (seconds) overrides the default.
    pub ready_timeout: Duration,
    /// The time limit of `Guest::run`; the agent kills a command past it.
    pub command_timeout: Duration,
    /// How long `Drop` waits for a clean poweroff before it kills.
    pub shutdown_grace: Duration,
    /// Guest memory for QEMU; `None` takes the image's `VM_MEMORY_MIB`.
    pub memory_mib: Option<u32>,
    /// vCPUs for QEMU; `None` takes the image's `VM_CPUS`.
    pub cpus: Option<u32>,
    pub nspawn_root: NspawnRoot,
    /// Words appended to the image's kernel command line (QEMU only), e.g.
    /// `systemd.mask=quantumd.service` for the boot-time baseline.
    pub extra_cmdline: Vec<String>,
    /// A kernel to boot instead of the image's (QEMU only): a bzImage with
    /// everything the root filesystem needs built in (virtio-blk, ext4),
    /// booted without an initramfs, e.g. the QuantumOS kernel of `kernel/`.
    pub kernel: Option<PathBuf>,
    /// Keep the work directory (console log, share) after the guest is gone.
    /// `QUANTUM_VMTEST_KEEP=1` sets it.
    pub keep_work_dir: bool,
}

impl BootConfig {
    pub fn for_backend(backend: Backend) -> BootConfig {
        // A TCG boot takes 35-120 s; quantumd's start timeout (90 s) may come
        // on top when it hangs, since the agent starts after it.
        let ready_default = match backend {
            Backend::Qemu => 420,
            Backend::Nspawn => 120,
        };
        let ready_timeout = std::env::var("QUANTUM_VM_READY_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(ready_default);
        BootConfig {
            ready_timeout: Duration::from_secs(ready_timeout),
            command_timeout: Duration::from_secs(300),
            shutdown_grace: match backend {
                Backend::Qemu => Duration::from_secs(20),
                Backend::Nspawn => Duration::from_secs(10),
            },
            memory_mib: None,
            cpus: None,
            nspawn_root: NspawnRoot::VolatileOverlay,
            extra_cmdline: Vec::new(),
            kernel: None,
            keep_work_dir: std::env::var("QUANTUM_VMTEST_KEEP").is_ok_and(|v| v == "1"),
        }
    }
}

/// Where the guest's console goes.
#[derive(Debug, Clone)]
pub enum Console {
    /// Into a log file (tests).
    File(PathBuf),
    /// On this terminal, interactive (`make vm-run`).
    Terminal,
}

/// The QEMU command line for an image: TCG, direct kernel boot, the disk as
/// a throw-away snapshot, the share over 9p. With `config.kernel` that
/// kernel boots instead of the image's, without the image's initramfs (the
/// image's command line names the root device and filesystem, which such
/// a kernel has built in).
pub fn qemu_command(image: &Image, config: &BootConfig, share: &Path, console: &Console) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-name", "quantumos-test", "-machine", "pc", "-accel", "tcg,thread=multi"])
        .args(["-smp", &config.cpus.unwrap_or(image.cpus).to_string()])
        .args(["-m", &format!("{}M", config.memory_mib.unwrap_or(image.memory_mib))])
        .args(["-nographic", "-no-reboot", "-nic", "none"]);
    match &config.kernel {
        Some(kernel) => {
            cmd.arg("-kernel").arg(kernel);
        }
        None => {
            cmd.arg("-kernel").arg(&image.kernel);
            if let Some(initrd) = &image.initrd {
                cmd.arg("-initrd").arg(initrd);
            }
        }
    }
    cmd.args(["-append", &kernel_cmdline(&image.cmdline, &config.extra_cmdline)])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on,cache=unsafe",
            qemu_escape(&image.disk)
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=share,security_model=none,id=share",
            qemu_escape(share)
        ))
        .args(["-device", "virtio-rng-pci"]);
    match console {
        Console::File(log) => {
            cmd.args(["-monitor", "none", "-serial"]).arg(format!("file:{}", log.display()));
        }
        // Ctrl-A X quits, Ctrl-A C reaches the monitor.
        Console::Terminal => {
            cmd.args(["-serial", "mon:stdio"]);
        }
    }
    cmd
}

fn kernel_cmdline(base: &str, extra: &[String]) -> String {
    let mut words = vec![base.trim().to_owned()];
    words.extend(extra.iter().cloned());
    words.join(" ")
}

/// QEMU separates option values with commas; a comma in a path is doubled.
fn qemu_escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The systemd-nspawn command line booting `root` with the share bound at
/// /mnt/share. `--register=no --keep-unit` because the host's PID 1 is not
/// systemd (no machined, no scopes).
pub fn nspawn_command(root: &Path, volatile: bool, share: &Path, console: &Console) -> Command {
    let mut cmd = Command::new("systemd-nspawn");
    cmd.args(["--boot", "--register=no", "--keep-unit"])
        .arg(format!("--machine={}", machine_name()))
        .arg("--hostname=quantumos")
        .arg("-D")
        .arg(root)
        .arg(format!("--bind={}:{GUEST_SHARE}", share.display()))
        .args(["--private-network", "--resolv-conf=off", "--timezone=off", "--link-journal=no"]);
    if volatile {
        cmd.arg("--volatile=overlay");
    }
    cmd.arg(match console {
        Console::File(_) => "--console=read-only",
        Console::Terminal => "--console=interactive",
    });
    cmd
}

/// A booted guest. Dropping it powers the guest off, and kills it for sure
/// when that does not finish within `BootConfig::shutdown_grace`.
///
/// Boot one guest per test binary and run the scenarios in sequence on it:
/// the child process is tied to the thread that booted it (it is killed if
/// that thread dies), so a guest must not outlive the test function that
/// booted it; a `static` guest would never be dropped.
pub struct Guest {
    backend: Backend,
    config: BootConfig,
    /// The composed image booted; `None` for a `Machine` (ISO, installed
    /// disk), which `what` names instead.
    image: Option<Image>,
    /// What was booted, for messages.
    what: String,
    work: Option<tempfile::TempDir>,
    work_path: PathBuf,
    share: PathBuf,
    console_log: PathBuf,
    process: Mutex<Option<Child>>,
    /// Processes the guest needs beside QEMU (swtpm), ended after it.
    helpers: Vec<Child>,
    pid: u32,
    agent: AgentChannel,
    booted_at: Instant,
}

impl Guest {
    /// Boots `image` with the default settings of `backend`.
    pub fn boot(image: &Image, backend: Backend) -> Result<Guest> {
        Self::boot_with(image, backend, BootConfig::for_backend(backend))
    }

    pub fn boot_with(image: &Image, backend: Backend, config: BootConfig) -> Result<Guest> {
        let work = tempfile::Builder::new()
            .prefix(&format!("quantum-vmtest-{backend}-"))
            .tempdir()
            .context("creating the guest's work directory")?;
        let work_path = work.path().to_path_buf();
        let share = work_path.join("share");
        let agent = AgentChannel::new(&share)?;
        let console_log = work_path.join("console.log");
        let log = File::create(&console_log).context("creating the console log")?;

        let mut cmd = match backend {
            Backend::Qemu => {
                let mut cmd = qemu_command(image, &config, &share, &Console::File(console_log.clone()));
                // QEMU's own messages (not the guest's) go beside the console log.
                let own = File::create(work_path.join("qemu.log")).context("creating qemu.log")?;
                cmd.stdout(Stdio::from(own.try_clone()?)).stderr(Stdio::from(own));
                cmd
            }
            Backend::Nspawn => {
                let (root, volatile) = match config.nspawn_root {
                    NspawnRoot::VolatileOverlay => (image.tree.clone(), true),
                    NspawnRoot::Copy => {
                        let root = work_path.join("root");
                        copy_tree(&image.tree, &root)?;
                        (root, false)
                    }
                };
                let mut cmd = nspawn_command(&root, volatile, &share, &Console::File(console_log.clone()));
                // The container's console comes out on nspawn's stdout.
                cmd.stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
                cmd
            }
        };
        cmd.stdin(Stdio::null());
        die_with_parent(&mut cmd);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {program} (is it installed? make deps)"))?;
        let pid = child.id();
        let kernel = match (&config.kernel, backend) {
            (Some(kernel), Backend::Qemu) => format!(" with kernel {}", kernel.display()),
            _ => String::new(),
        };
        crate::report(format_args!(
            "[{backend}] booting image {} ({}){kernel} as pid {pid}; console: {}",
            image.short_hash(),
            image.variant,
            console_log.display()
        ));
        let (work, work_path) = if config.keep_work_dir {
            (None, work.keep())
        } else {
            (Some(work), work_path)
        };
        Ok(Guest {
            backend,
            config,
            image: Some(image.clone()),
            what: format!("image {} ({})", image.short_hash(), image.variant),
            work,
            work_path,
            share,
            console_log,
            process: Mutex::new(Some(child)),
            helpers: Vec::new(),
            pid,
            agent,
            booted_at: Instant::now(),
        })
    }

    /// Boots a QEMU `Machine` (firmware boot from an ISO or a disk, see
    /// `iso.rs`): swtpm first when it has a TPM, then QEMU. Readiness,
    /// commands and shutdown work as for a composed image.
    pub fn boot_machine(machine: &Machine, config: BootConfig) -> Result<Guest> {
        let work = tempfile::Builder::new()
            .prefix(&format!("quantum-vmtest-{}-", machine.label))
            .tempdir()
            .context("creating the guest's work directory")?;
        let work_path = work.path().to_path_buf();
        let share = work_path.join("share");
        let agent = AgentChannel::new(&share)?;
        let console_log = work_path.join("console.log");
        File::create(&console_log).context("creating the console log")?;

        let mut helpers = Vec::new();
        let tpm_socket = work_path.join("swtpm.sock");
        if machine.tpm {
            let state = machine.tpm_state.clone().unwrap_or_else(|| work_path.join("tpm"));
            fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
            let log = File::create(work_path.join("swtpm.log")).context("creating swtpm.log")?;
            let mut cmd = swtpm_command(&state, &tpm_socket);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log));
            die_with_parent(&mut cmd);
            let child = cmd.spawn().context("starting swtpm (package swtpm: make deps)")?;
            helpers.push(child);
            // QEMU fails at once when the socket is not there yet.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !tpm_socket.exists() {
                if Instant::now() >= deadline {
                    for mut helper in helpers {
                        let _ = helper.kill();
                        let _ = helper.wait();
                    }
                    bail!("swtpm did not create {} within 10 s", tpm_socket.display());
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        let ovmf_vars = work_path.join("OVMF_VARS.fd");
        if machine.firmware == Firmware::Uefi {
            // Each boot gets a fresh, writable copy of the variable store.
            let (_, template) = ovmf_files()?;
            fs::copy(&template, &ovmf_vars).with_context(|| format!("copying {}", template.display()))?;
        }
        let files = MachineFiles {
            share: &share,
            console_log: &console_log,
            ovmf_vars: (machine.firmware == Firmware::Uefi).then_some(ovmf_vars.as_path()),
            tpm_socket: machine.tpm.then_some(tpm_socket.as_path()),
        };
        let mut cmd = machine_command(machine, &files)?;
        let own = File::create(work_path.join("qemu.log")).context("creating qemu.log")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(own.try_clone()?))
            .stderr(Stdio::from(own));
        die_with_parent(&mut cmd);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                for mut helper in helpers {
                    let _ = helper.kill();
                    let _ = helper.wait();
                }
                return Err(e).context("starting qemu-system-x86_64 (is it installed? make deps)");
            }
        };
        let pid = child.id();
        crate::report(format_args!(
            "[qemu] booting {} ({} firmware{}) as pid {pid}; console: {}",
            machine.label,
            machine.firmware,
            if machine.tpm { ", swtpm" } else { "" },
            console_log.display()
        ));
        let (work, work_path) = if config.keep_work_dir {
            (None, work.keep())
        } else {
            (Some(work), work_path)
        };
        Ok(Guest {
            backend: Backend::Qemu,
            config,
            image: None,
            what: machine.label.clone(),
            work,
            work_path,
            share,
            console_log,
            process: Mutex::new(Some(child)),
            helpers,
            pid,
            agent,
            booted_at: Instant::now(),
        })
    }

    /// The pid of the QEMU or systemd-nspawn process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The composed image this guest booted.
    ///
    /// # Panics
    /// For a guest booted from a `Machine` (`Guest::boot_machine`), which has
    /// no composed image: a test asks for what it booted itself.
    pub fn image(&self) -> &Image {
        match &self.image {
            Some(image) => image,
            None => panic!("{} was not booted from a composed image", self.what),
        }
    }

    /// What was booted (`image <hash> (<variant>)` or the machine's label).
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The host side of the share (`/mnt/share` in the guest).
    pub fn share(&self) -> &Path {
        &self.share
    }

    /// The guest's work directory: console.log, share/, qemu.log.
    pub fn work_dir(&self) -> &Path {
        &self.work_path
    }

    /// Waits until the agent has started (its `ready` file in the share) and
    /// returns the time from boot to ready. Fails early when the guest dies, when the
    /// agent reports that it cannot start, or after `ready_timeout`.
    pub fn wait_ready(&self) -> Result<Duration> {
        let deadline = self.booted_at + self.config.ready_timeout;
        let mut seen = 0u64;
        let mut carry = String::new();
        let mut line_seen = false;
        loop {
            // Read only what is new, keeping a line's worth of the old text
            // in case the readiness line was split across two reads.
            let new = read_from(&self.console_log, &mut seen)?;
            let text = format!("{carry}{new}");
            if text.contains(FAILED_LINE) {
                bail!("[{}] the test agent could not start\n{}", self.backend, self.console_tail(40));
            }
            // The `ready` file in this boot's own share is the signal; the
            // console line is best effort: console-getty's vhangup() of
            // /dev/console can swallow a write that races with it (seen
            // under nspawn on a loaded CI machine: the agent started, the
            // line never came).
            line_seen |= text.contains(READY_LINE);
            if self.agent.agent_started() {
                let took = self.booted_at.elapsed();
                crate::report(format_args!("[{}] ready after {:.1} s", self.backend, took.as_secs_f64()));
                return Ok(took);
            }
            let mut keep_from = text.len().saturating_sub(256);
            while !text.is_char_boundary(keep_from) {
                keep_from += 1;
            }
            carry = text[keep_from..].to_owned();
            if let Some(status) = self.exit_status()? {
                bail!(
                    "[{}] the guest exited ({status}) before it was ready\n{}",
                    self.backend,
                    self.console_tail(60)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "[{}] the test agent did not start within {} s (no `ready` in the share; \
                     {READY_LINE} {} on the console)\n{}",
                    self.backend,
                    self.config.ready_timeout.as_secs(),
                    if line_seen { "seen" } else { "not seen either" },
                    self.console_tail(60)
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs `script` (bash) in the guest as root, with the default timeout.
    pub fn run(&self, script: &str) -> Result<Output> {
        self.run_with_timeout(script, self.config.command_timeout)
    }

    /// Runs `script` (bash) in the guest as root; the agent kills it after
    /// `timeout` (exit code 124, or 137 when it had to SIGKILL).
    pub fn run_with_timeout(&self, script: &str, timeout: Duration) -> Result<Output> {
        self.agent
            .run(script, timeout, || self.exit_status())
            .with_context(|| format!("[{}] running a command in the guest\n{}", self.backend, self.console_tail(30)))
    }

    /// Runs `script` and returns its stdout; a non-zero exit is an error
    /// carrying the command, its code, stdout and stderr.
    pub fn run_ok(&self, script: &str) -> Result<String> {
        let output = self.run(script)?;
        if !output.success() {
            bail!("[{}] `{script}` failed: {output}", self.backend);
        }
        Ok(output.stdout)
    }

    /// `systemd-analyze security UNIT`: its overall exposure level and the
    /// line that gave it (every unit the project ships aims at <= 2.0).
    pub fn exposure(&self, unit: &str) -> Result<(f64, String)> {
        let out = self.run(&format!("systemd-analyze security --no-pager {unit}"))?;
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .with_context(|| format!("systemd-analyze security printed no exposure level for {unit}: {out}"))?
            .trim()
            .to_owned();
        let level = line
            .split(':')
            .nth(1)
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no number in {line:?}"))?;
        Ok((level, line))
    }

    /// This boot's journal, for failure reports.
    pub fn journal(&self) -> Result<String> {
        self.run_ok("journalctl -b --no-pager -o short-monotonic")
    }

    /// The whole console log so far.
    pub fn console(&self) -> String {
        fs::read(&self.console_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the console, framed for a report.
    pub fn console_tail(&self, lines: usize) -> String {
        let console = self.console();
        let all: Vec<&str> = console.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- last {} lines of the console ({})\n{}",
            all.len() - start,
            self.console_log.display(),
            all[start..].join("\n")
        )
    }

    /// Everything useful after a failure: failed units, the end of the
    /// journal and of the console. Never fails; problems are written in.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let mut section = |title: &str, script: &str| {
            out.push_str(&format!("--- {title}\n"));
            match self.run_with_timeout(script, Duration::from_secs(60)) {
                Ok(o) => {
                    out.push_str(o.stdout.trim_end());
                    if !o.stderr.trim().is_empty() {
                        out.push_str(&format!("\n(stderr) {}", o.stderr.trim_end()));
                    }
                }
                Err(e) => out.push_str(&format!("(could not ask the guest: {e:#})")),
            }
            out.push('\n');
        };
        section("failed units", "systemctl --failed --no-pager --no-legend");
        section(
            "journal (last 150 lines)",
            "journalctl -b --no-pager -o short-monotonic | tail -n 150",
        );
        out.push_str(&self.console_tail(40));
        out
    }

    /// Powers the guest off now (the same as dropping it).
    pub fn poweroff(self) {}

    /// `Some(status)` once the QEMU or nspawn process has exited.
    fn exit_status(&self) -> Result<Option<ExitStatus>> {
        let mut process = self.process.lock().unwrap_or_else(|e| e.into_inner());
        match process.as_mut() {
            Some(child) => child.try_wait().context("checking on the guest process"),
            None => bail!("the guest has been shut down"),
        }
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.process.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut asked = false;
        if matches!(child.try_wait(), Ok(None)) {
            // A clean poweroff through the agent, when it is up; otherwise
            // nspawn turns SIGTERM into a poweroff of the container, and a
            // QEMU guest is simply killed (its disk is a throw-away snapshot).
            if self.agent.agent_started() {
                asked = self.agent.submit("systemctl poweroff --no-block", Duration::from_secs(30)).is_ok();
            } else if self.backend == Backend::Nspawn {
                // SAFETY: plain kill(2) on our own child's pid, which has not
                // been reaped yet (try_wait said it is running).
                asked = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) } == 0;
            }
            let deadline = Instant::now() + self.config.shutdown_grace;
            while asked && Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(100));
            }
        }
        if matches!(child.try_wait(), Ok(None)) {
            if asked {
                crate::report(format_args!("[{}] did not power off in time: killing it", self.backend));
            }
            // The container's init is nspawn's child in its own PID
            // namespace: killing it ends everything in the container.
            let inits = children_of(self.pid);
            for &pid in &inits {
                // SAFETY: kill(2) on a pid read from /proc just now.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
            // A PID namespace's init takes its whole namespace down before
            // it is gone, which takes a while on a busy host; a guest is
            // only dropped once nothing of it runs.
            let deadline = Instant::now() + Duration::from_secs(30);
            while inits.iter().any(|&pid| still_running(pid)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.wait();
        // swtpm ends by itself when QEMU disconnects (--terminate); this is
        // for a QEMU that never connected.
        for mut helper in self.helpers.drain(..) {
            if matches!(helper.try_wait(), Ok(None)) {
                let _ = helper.kill();
            }
            let _ = helper.wait();
        }
        if self.work.is_none() {
            crate::report(format_args!(
                "[{}] kept the work directory {}",
                self.backend,
                self.work_path.display()
            ));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Has the kernel kill the child when the test process dies without running
/// `Drop` (abort, SIGKILL), so that no QEMU or swtpm outlives a test.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the
    // parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A container name unique on this host while this process runs (nspawn
/// keeps per-machine state under /run by this name).
fn machine_name() -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    format!("quantum-test-{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed))
}

/// Reads `path` from `offset` to its end, advancing `offset`.
fn read_from(path: &Path, offset: &mut u64) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.seek(SeekFrom::Start(*offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    *offset += bytes.len() as u64;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether `pid` exists and is not a zombie (a zombie has no command line).
fn still_running(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// The direct children of a process, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.flatten() {
        if let Ok(list) = fs::read_to_string(task.path().join("children")) {
            children.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    children
}

/// Copies a root tree with owners, modes, links and xattrs (cp -a).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!("copying {} to {} failed ({status})", from.display(), to.display());
    }
    Ok(())
}
