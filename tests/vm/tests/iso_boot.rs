//! The QuantumOS live ISO (`make iso`, image-builder/build-iso.sh) boots and
//! works, under QEMU (TCG) with a TPM (swtpm) attached:
//!
//!   1. BIOS (SeaBIOS) from the CD-ROM, a blank virtio disk beside it:
//!      quantumd reaches READY (Type=notify, active), the TPM is there,
//!      `quantumctl run web-server` answers HTTP; the installer refuses
//!      without confirmation, then `quantumos-install --yes /dev/vda`
//!      partitions, copies and installs GRUB onto the disk
//!   2. UEFI (OVMF) from the CD-ROM: quantumd READY, the TPM, and the
//!      catalog smoke (quantum_vmtest::catalog): every catalog cell does its
//!      job on the live system
//!   3. the installed disk alone (no ISO), with BIOS and then with UEFI: a
//!      btrfs root, not a live system, quantumd READY
//!
//! The harness reaches the live system through the test agent that the ISO
//! carries switched off: its unit runs only when QEMU sets the fw_cfg item
//! named in iso.env (TEST_FW_CFG), and it reads commands from a 9p share
//! only the hypervisor can attach (see image-builder/variants/iso/README).
//!
//! A missing ISO skips the test with a message, unless
//! QUANTUM_VMTEST_REQUIRE_IMAGE=1 (`make test-iso` sets it, having built it).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use quantum_vmtest::{blank_disk, eventually, identity_sealed_by_tpm, report, BootConfig, Firmware, Guest, IsoImage, Machine, Scenarios};
use serde_json::Value;

/// The installer's target: room for the ~1 GB live root with margin.
const DISK_MIB: u64 = 4096;

#[test]
fn iso_boots_bios_and_uefi_installs_and_the_disk_boots() {
    let test = "iso boot";
    let Some(iso) = iso_or_skip(test) else {
        return;
    };
    report(format_args!(
        "[iso] {} ({}), kernel {}",
        iso.iso.display(),
        iso.short_hash(),
        iso.kernel_version
    ));
    let disks = tempfile::Builder::new()
        .prefix("quantum-vmtest-iso-disk-")
        .tempdir()
        .unwrap_or_else(|e| panic!("a directory for the installer's disk: {e}"));
    let disk = disks.path().join("disk.raw");
    if let Err(e) = blank_disk(&disk, DISK_MIB) {
        panic!("{e:#}");
    }
    let mut times = Vec::new();
    let mut failures = Vec::new();

    // 1. BIOS, live, then the installer onto the blank disk.
    let mut bios = iso.machine(Firmware::Bios);
    bios.disks.push(disk.clone());
    let installed = match boot(&bios, &mut times) {
        Ok(guest) => {
            let mut scenarios = Scenarios::new(&guest);
            scenarios.run("bios-live-quantumd-ready", quantumd_ready);
            scenarios.run("bios-live-tpm", identity_sealed_by_tpm);
            scenarios.run("bios-live-web-server", web_server);
            scenarios.run("installer-asks-first", installer_asks_first);
            let mut installed = false;
            scenarios.run("installer-to-blank-disk", |g| {
                install(g, &mut times)?;
                installed = true;
                Ok(())
            });
            if let Err(e) = scenarios.finish() {
                failures.push(format!("{e:#}"));
            }
            installed
        }
        Err(e) => {
            failures.push(format!("BIOS boot of the ISO: {e:#}"));
            false
        }
    };

    // 2. UEFI, live.
    match boot(&iso.machine(Firmware::Uefi), &mut times) {
        Ok(guest) => {
            let mut scenarios = Scenarios::new(&guest);
            scenarios.run("uefi-live-quantumd-ready", quantumd_ready);
            scenarios.run("uefi-live-tpm", identity_sealed_by_tpm);
            // The catalog smoke, as on the test image: every cell of the
            // catalog does its job on the live system as shipped.
            quantum_vmtest::catalog::run_all(&mut scenarios);
            if let Err(e) = scenarios.finish() {
                failures.push(format!("{e:#}"));
            }
        }
        Err(e) => failures.push(format!("UEFI boot of the ISO: {e:#}")),
    }

    // 3. The installed disk on its own, with either firmware: the installer
    //    wrote GRUB for both (BIOS boot partition, and the ESP's removable
    //    path, which needs no firmware boot entry).
    if installed {
        // One machine: both boots see the same TPM.
        let tpm_state = disks.path().join("tpm");
        for firmware in [Firmware::Bios, Firmware::Uefi] {
            let machine = Machine {
                label: format!("disk-{}", firmware.name()),
                firmware,
                cdrom: None,
                disks: vec![disk.clone()],
                tpm: true,
                tpm_state: Some(tpm_state.clone()),
                test_fw_cfg: (!iso.test_fw_cfg.is_empty()).then(|| iso.test_fw_cfg.clone()),
                memory_mib: iso.memory_mib,
                cpus: iso.cpus,
                vga: None,
            };
            match boot(&machine, &mut times) {
                Ok(guest) => {
                    let mut scenarios = Scenarios::new(&guest);
                    let prefix = format!("installed-{}", firmware.name());
                    scenarios.run(&format!("{prefix}-root-is-btrfs-not-live"), installed_root);
                    scenarios.run(&format!("{prefix}-quantumd-ready"), quantumd_ready);
                    if let Err(e) = scenarios.finish() {
                        failures.push(format!("{e:#}"));
                    }
                }
                Err(e) => failures.push(format!("{} boot of the installed disk: {e:#}", firmware.name())),
            }
        }
    } else {
        failures.push("the installed disk was not booted: the install did not succeed".to_owned());
    }

    report(format_args!("[iso] figures (TCG):"));
    for (what, took) in &times {
        report(format_args!("[iso]   {what}: {:.1} s", took.as_secs_f64()));
    }
    assert!(failures.is_empty(), "{test}:\n{}", failures.join("\n\n"));
}

/// The current ISO, or `None` (after saying why) when none has been built;
/// with QUANTUM_VMTEST_REQUIRE_IMAGE=1 a missing one fails instead.
fn iso_or_skip(test: &str) -> Option<IsoImage> {
    match IsoImage::locate() {
        Ok(Some(iso)) => Some(iso),
        Ok(None) => {
            let why = format!("no ISO at {}", IsoImage::expected_location().display());
            assert!(
                !std::env::var("QUANTUM_VMTEST_REQUIRE_IMAGE").is_ok_and(|v| v == "1"),
                "{test}: {why} although QUANTUM_VMTEST_REQUIRE_IMAGE=1"
            );
            report(format_args!("SKIPPED {test}: {why}; `make test-iso` builds it and runs this"));
            None
        }
        Err(e) => panic!("{test}: the ISO cannot be used: {e:#}"),
    }
}

/// Boots `machine` and waits for the agent; records the time to ready.
fn boot(machine: &Machine, times: &mut Vec<(String, Duration)>) -> Result<Guest> {
    let mut config = BootConfig::for_backend(quantum_vmtest::Backend::Qemu);
    // Firmware, GRUB's menu, a 40 MB initramfs and the squashfs from an
    // emulated CD-ROM come on top of a disk image's boot under TCG.
    if std::env::var_os("QUANTUM_VM_READY_TIMEOUT").is_none() {
        config.ready_timeout = Duration::from_secs(600);
    }
    config.command_timeout = Duration::from_secs(300);
    let guest = Guest::boot_machine(machine, config)?;
    let took = guest.wait_ready()?;
    times.push((format!("{} boot to agent ready (QEMU start to prompt)", machine.label), took));
    // quantumd's READY=1, in the guest's clock (from kernel start).
    if let Ok(out) = guest.run("systemctl show -p ActiveEnterTimestampMonotonic --value quantumd.service") {
        if let Ok(us) = out.stdout.trim().parse::<u64>() {
            if us > 0 {
                times.push((
                    format!("{} kernel start to quantumd READY", machine.label),
                    Duration::from_micros(us),
                ));
            }
        }
    }
    Ok(guest)
}

/// quantumd.service is Type=notify: active (running) means it said READY=1.
fn quantumd_ready(g: &Guest) -> Result<()> {
    let show = eventually("quantumd to be active", Duration::from_secs(180), || {
        let show = g.run_ok("systemctl show quantumd.service -p ActiveState,SubState,Type,UnitFileState")?;
        if show.contains("ActiveState=activating") {
            return Ok(None);
        }
        Ok(Some(show))
    })?;
    ensure!(
        show.contains("ActiveState=active") && show.contains("SubState=running"),
        "quantumd is not running:\n{show}\n{}",
        g.run("journalctl -b -u quantumd.service --no-pager | tail -n 40")?.stdout
    );
    ensure!(show.contains("Type=notify"), "quantumd.service is not Type=notify:\n{show}");
    ensure!(show.contains("UnitFileState=enabled"), "quantumd.service is not enabled:\n{show}");
    let active = g.run_ok("systemctl is-active quantumd.service")?;
    ensure!(active.trim() == "active", "systemctl is-active quantumd: {active}");
    Ok(())
}

/// `quantumctl run web-server` serves a directory over HTTP inside.
fn web_server(g: &Guest) -> Result<()> {
    g.run_ok("mkdir -p /srv/www && echo 'hello from the ISO' > /srv/www/index.html")?;
    let out = g.run_ok("quantumctl run web-server port=8080 dir=/srv/www --json")?;
    let info: Value = serde_json::from_str(&out).with_context(|| format!("quantumctl run printed no JSON: {out}"))?;
    let id = info["instance"].as_str().context("no instance in quantumctl's answer")?.to_owned();
    let page = eventually("the web-server cell to answer", Duration::from_secs(120), || {
        let r = g.run(
            "python3 -B -c \"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8080/', timeout=3).read().decode())\"",
        )?;
        Ok(r.success().then_some(r.stdout))
    })?;
    ensure!(page.contains("hello from the ISO"), "the cell served {page:?}");
    let stopped = g.run_ok(&format!("quantumctl stop {id}"))?;
    ensure!(stopped.trim() == format!("stopped {id}"), "quantumctl stop printed {stopped:?}");
    Ok(())
}

/// Without --yes the installer asks, and anything but "yes" leaves the
/// disk untouched.
fn installer_asks_first(g: &Guest) -> Result<()> {
    let out = g.run("echo no | quantumos-install /dev/vda")?;
    ensure!(!out.success(), "the installer went ahead on 'no': {out}");
    ensure!(out.stderr.contains("not confirmed"), "the installer's refusal: {out}");
    let parts = g.run_ok("lsblk -nro NAME /dev/vda | wc -l")?;
    ensure!(parts.trim() == "1", "/dev/vda was changed although not confirmed: {parts}");
    Ok(())
}

fn install(g: &Guest, times: &mut Vec<(String, Duration)>) -> Result<()> {
    let started = Instant::now();
    let out = g.run_with_timeout("quantumos-install --yes /dev/vda", Duration::from_secs(1200))?;
    let took = started.elapsed();
    ensure!(out.success(), "quantumos-install --yes /dev/vda: {out}");
    report(format_args!("[iso] installer:\n{}", out.stdout.trim_end()));
    ensure!(out.stdout.contains("installed QuantumOS"), "the installer did not finish: {out}");
    times.push(("quantumos-install /dev/vda".to_owned(), took));
    let table = g.run_ok("sfdisk -d /dev/vda")?;
    ensure!(
        table.contains("21686148-6449-6E6F-744E-656564454649")
            && table.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
            && table.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        "the partition table lacks the BIOS boot, ESP or root partition:\n{table}"
    );
    g.run_ok("sync")?;
    Ok(())
}

/// The installed system: root on btrfs from /dev/vda3, no live-boot mounts,
/// the ESP mounted from fstab.
fn installed_root(g: &Guest) -> Result<()> {
    let root = g.run_ok("findmnt -no SOURCE,FSTYPE /")?;
    ensure!(
        root.contains("/dev/vda3") && root.contains("btrfs"),
        "/ is not btrfs on /dev/vda3: {root}"
    );
    let live = g.run("test -e /run/live/medium")?;
    ensure!(!live.success(), "the installed system looks like the live one (/run/live/medium)");
    let esp = g.run_ok("findmnt -no SOURCE,FSTYPE /boot/efi")?;
    ensure!(esp.contains("/dev/vda2") && esp.contains("vfat"), "/boot/efi: {esp}");
    Ok(())
}
