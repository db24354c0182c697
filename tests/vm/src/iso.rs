//! The QuantumOS live ISO as `image-builder/build-iso.sh` leaves it in the
//! cache (`$QUANTUM_CACHE/iso/current/iso.env`), and the QEMU machines the
//! ISO tests boot: firmware (SeaBIOS or OVMF), a CD-ROM, blank or installed
//! disks, a TPM (swtpm) and the fw_cfg switch that lets the test agent run.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::env_file::EnvFile;
use crate::guest::Guest;
use crate::image::Image;

/// A built live ISO.
#[derive(Debug, Clone)]
pub struct IsoImage {
    /// The directory of `iso.env` (`$QUANTUM_CACHE/iso/<hash>`).
    pub dir: PathBuf,
    pub variant: String,
    /// The content hash the ISO is cached under.
    pub hash: String,
    /// The ISO file itself.
    pub iso: PathBuf,
    pub kernel_version: String,
    /// The fw_cfg item name that switches the test agent on
    /// (`opt/org.quantumos.test`); empty when the ISO has no test hook.
    pub test_fw_cfg: String,
    pub memory_mib: u32,
    pub cpus: u32,
}

impl IsoImage {
    /// Where the current ISO is expected: `QUANTUM_ISO` (a directory or its
    /// `iso.env`) if set, else the cache's `iso/current`.
    pub fn expected_location() -> PathBuf {
        match std::env::var_os("QUANTUM_ISO") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => Image::cache_dir().join("iso").join("current"),
        }
    }

    /// The current ISO, or `None` when none has been built. An ISO that
    /// exists but cannot be read is an error, not `None`.
    pub fn locate() -> Result<Option<IsoImage>> {
        let location = Self::expected_location();
        let env_file = if location.is_dir() { location.join("iso.env") } else { location };
        if !env_file.is_file() {
            return Ok(None);
        }
        Self::load(&env_file).map(Some)
    }

    /// Reads an `iso.env` written by the build script.
    pub fn load(env_file: &Path) -> Result<IsoImage> {
        let env = EnvFile::read(env_file)?;
        Ok(IsoImage {
            variant: env.get("VARIANT")?.to_owned(),
            hash: env.get("ISO_HASH")?.to_owned(),
            iso: env.existing_path("ISO")?,
            kernel_version: env.get("KERNEL_VERSION")?.to_owned(),
            test_fw_cfg: env.get_or_empty("TEST_FW_CFG").to_owned(),
            memory_mib: env.number("VM_MEMORY_MIB", 2048)?,
            cpus: env.number("VM_CPUS", 2)?,
            dir: env.dir,
        })
    }

    /// The short form of the hash, for messages.
    pub fn short_hash(&self) -> &str {
        &self.hash[..self.hash.len().min(12)]
    }

    /// A machine booting this ISO from a CD-ROM with `firmware`, a TPM and
    /// the test agent switched on.
    pub fn machine(&self, firmware: Firmware) -> Machine {
        Machine {
            label: format!("iso-{}", firmware.name()),
            firmware,
            cdrom: Some(self.iso.clone()),
            disks: Vec::new(),
            tpm: true,
            tpm_state: None,
            test_fw_cfg: (!self.test_fw_cfg.is_empty()).then(|| self.test_fw_cfg.clone()),
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            vga: None,
        }
    }
}

/// The firmware a machine starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's SeaBIOS: legacy BIOS boot (El Torito / MBR + BIOS boot partition).
    Bios,
    /// OVMF (package ovmf): UEFI boot, no Secure Boot.
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where OVMF's code and (template) variable store are, in the layouts of
/// Debian's `ovmf` package; `QUANTUM_OVMF_CODE` / `QUANTUM_OVMF_VARS`
/// override.
pub fn ovmf_files() -> Result<(PathBuf, PathBuf)> {
    if let (Some(code), Some(vars)) = (std::env::var_os("QUANTUM_OVMF_CODE"), std::env::var_os("QUANTUM_OVMF_VARS")) {
        return Ok((PathBuf::from(code), PathBuf::from(vars)));
    }
    for (code, vars) in [
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ] {
        if Path::new(code).is_file() && Path::new(vars).is_file() {
            return Ok((PathBuf::from(code), PathBuf::from(vars)));
        }
    }
    bail!("no OVMF firmware in /usr/share/OVMF (package ovmf: make deps)")
}

/// A QEMU machine that is not a composed disk image with a direct kernel
/// boot: firmware boots from its own media (the ISO, an installed disk).
#[derive(Debug, Clone)]
pub struct Machine {
    /// For messages and the work directory's name (`iso-bios`, `disk-uefi`).
    pub label: String,
    pub firmware: Firmware,
    /// An ISO attached as a CD-ROM, the first boot device.
    pub cdrom: Option<PathBuf>,
    /// Raw disks attached as virtio disks (`/dev/vda`, ...), written in place
    /// (not snapshots: the installer's disk is booted afterwards).
    pub disks: Vec<PathBuf>,
    /// Attach a TPM 2.0 (swtpm) as `/dev/tpm0`.
    pub tpm: bool,
    /// Where swtpm keeps the TPM's state. `None`: in the boot's own work
    /// directory, a new TPM each boot. Boots of one installed disk share
    /// one, as they would share one machine's TPM: quantumd's identity is
    /// sealed to it, and another TPM cannot unseal it.
    pub tpm_state: Option<PathBuf>,
    /// The fw_cfg item that switches the image's test agent on.
    pub test_fw_cfg: Option<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// QEMU's `-vga` model, the machine's screen (`virtio` for a Wayland
    /// desktop: bookworm's wlroots cannot drive the default `std` VGA,
    /// bochs-drm); `None` leaves QEMU's default.
    pub vga: Option<String>,
}

/// What `machine_command` needs that the guest's work directory holds.
pub(crate) struct MachineFiles<'a> {
    pub share: &'a Path,
    pub console_log: &'a Path,
    /// A writable copy of OVMF's variable store (UEFI only).
    pub ovmf_vars: Option<&'a Path>,
    /// swtpm's control socket (with a TPM only).
    pub tpm_socket: Option<&'a Path>,
}

/// The QEMU command line of a `Machine`: q35, TCG, firmware boot.
pub(crate) fn machine_command(machine: &Machine, files: &MachineFiles<'_>) -> Result<Command> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-name", &format!("quantumos-{}", machine.label)])
        .args(["-machine", "q35", "-accel", "tcg,thread=multi"])
        .args(["-smp", &machine.cpus.to_string()])
        .args(["-m", &format!("{}M", machine.memory_mib)])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .args(["-device", "virtio-rng-pci"]);
    if let Some(vga) = &machine.vga {
        cmd.args(["-vga", vga]);
    }
    if machine.firmware == Firmware::Uefi {
        let (code, _) = ovmf_files()?;
        let vars = files.ovmf_vars.context("a UEFI machine needs a copy of OVMF's variables")?;
        cmd.arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", qemu_escape(&code)))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", qemu_escape(vars)));
    }
    let mut boot_index = 0;
    if let Some(iso) = &machine.cdrom {
        cmd.arg("-drive")
            .arg(format!(
                "file={},format=raw,media=cdrom,readonly=on,if=none,id=cd0",
                qemu_escape(iso)
            ))
            .args(["-device", &format!("ide-cd,drive=cd0,bus=ide.0,bootindex={boot_index}")]);
        boot_index += 1;
    }
    for (n, disk) in machine.disks.iter().enumerate() {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=none,id=disk{n},cache=unsafe", qemu_escape(disk)))
            .args(["-device", &format!("virtio-blk-pci,drive=disk{n},bootindex={boot_index}")]);
        boot_index += 1;
    }
    if let Some(item) = &machine.test_fw_cfg {
        cmd.args(["-fw_cfg", &format!("name={item},string=1")]);
    }
    if machine.tpm {
        let socket = files.tpm_socket.context("a machine with a TPM needs swtpm's socket")?;
        cmd.arg("-chardev")
            .arg(format!("socket,id=chrtpm,path={}", qemu_escape(socket)))
            .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]);
    }
    cmd.arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=share,security_model=none,id=share",
            qemu_escape(files.share)
        ))
        .args(["-monitor", "none", "-serial"])
        .arg(format!("file:{}", files.console_log.display()));
    Ok(cmd)
}

/// The swtpm command serving a TPM 2.0 on `socket`, its state in `state`;
/// it ends when QEMU disconnects (`--terminate`).
pub(crate) fn swtpm_command(state: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new("swtpm");
    cmd.args(["socket", "--tpm2", "--terminate"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", socket.display()));
    cmd
}

/// QEMU separates option values with commas; a comma in a path is doubled.
fn qemu_escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Creates a sparse raw disk of `size_mib` at `path`: the installer's target.
pub fn blank_disk(path: &Path, size_mib: u64) -> Result<()> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size_mib * 1024 * 1024)
        .with_context(|| format!("sizing {} to {size_mib} MiB", path.display()))?;
    Ok(())
}

/// swtpm's TPM 2.0 reaches the guest as /dev/tpm0 and the resource
/// manager, and quantumd (through the ISOs' drop-in,
/// packaging/systemd/quantumd-tpm.conf) seals the node identity to it.
pub fn identity_sealed_by_tpm(g: &Guest) -> Result<()> {
    let out = g.run("ls -l /dev/tpm0 /dev/tpmrm0")?;
    anyhow::ensure!(out.success(), "no TPM device in the guest: {out}");
    let identity = g.run_ok("quantumctl identity")?;
    anyhow::ensure!(
        identity
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["sealed", "by", "a", "TPM:", "yes"]),
        "quantumd did not seal its identity to the TPM:\n{identity}\n{}",
        g.run("journalctl -b -u quantumd.service --no-pager | grep -i tpm | tail -n 5")?
            .stdout
    );
    Ok(())
}
