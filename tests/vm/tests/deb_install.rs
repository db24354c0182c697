//! The Debian packages on a plain Debian: a bookworm guest without QuantumOS
//! (image variant `deb-guest`) installs them from a local repository with
//! `apt-get install quantumos`, quantumd comes up under systemd, `quantumctl
//! run web-server` serves a directory, and `apt-get purge` leaves the guest
//! as it was before: the same files, the same users and groups, no unit.
//! Between the two, an upgrade: the same packages under the next version
//! number (`+next1`, repacked with dpkg-deb) replace the installed ones with
//! a cell running, which must survive with the node identity and the trail.
//! There is no earlier release to upgrade from yet; this exercises the
//! maintainer scripts and the service restart, which is where upgrades
//! break. Once a release is archived, its .debs take the old side.
//!
//! The packages come from `make deb` ($QUANTUM_DEB_DIR, else
//! $QUANTUM_CACHE/deb); the share carries them into the guest as a flat apt
//! repository (`dpkg-scanpackages`). The guest has no network: its image
//! holds what the packages depend on already, and apt reads only the local
//! repository. `make test-deb-vm` builds the packages and the image and runs
//! this.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use quantum_vmtest::{eventually, report, Backend, Guest, Image, Scenarios, GUEST_SHARE};
use serde_json::Value;

const VARIANT: &str = "deb-guest";

/// What `apt-get install quantumos` must bring.
const PACKAGES: &[&str] = &[
    "quantumos",
    "quantumos-daemon",
    "quantumos-cli",
    "quantumos-cells",
    "quantumos-model",
];

/// apt with the share's repository as its only source: the guest's own
/// sources point at a Debian mirror it cannot reach. `-o` options change
/// nothing in the guest's /etc.
const APT: &str = "DEBIAN_FRONTEND=noninteractive apt-get -q -o Dir::Etc::SourceList=/mnt/share/quantumos.list \
                   -o Dir::Etc::SourceParts=/nonexistent -o APT::Get::List-Cleanup=0";

/// Everything on the root file system, for the before/after comparison.
/// Left out: /var/log, apt's and dpkg's own state and caches, which change
/// with any package installed and removed (what the packages could leave in
/// dpkg's database is checked on its own), and the backups the shadow tools
/// make of the accounts files whenever a user is added or removed (the
/// accounts files themselves are compared whole).
const LIST_FILES: &str = "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
     -o -path /mnt -o -path /var/log -o -path /var/lib/apt -o -path /var/cache/apt -o -path /var/lib/dpkg \
     -o -path /var/cache/debconf -o -path /var/cache/ldconfig \
     -o -path /etc/passwd- -o -path /etc/group- -o -path /etc/shadow- -o -path /etc/gshadow- \\) -prune -o -print \
     | LC_ALL=C sort";

/// The accounts files, compared whole before and after.
const ACCOUNTS: &str = "cat /etc/passwd /etc/group /etc/shadow /etc/gshadow";

#[test]
fn debs_install_run_and_purge_on_plain_bookworm() {
    let test = "deb install/purge";
    let Some((image, debs)) = inputs_or_skip(test) else {
        return;
    };
    let guest = Guest::boot(&image, Backend::Qemu).unwrap_or_else(|e| panic!("{e:#}"));
    if let Err(e) = guest.wait_ready() {
        panic!("{e:#}");
    }
    if let Err(e) = local_repository(&debs, guest.share()) {
        panic!("{e:#}");
    }
    let mut scenarios = Scenarios::new(&guest);
    scenarios.run("plain-guest-has-no-quantumos", plain_guest);
    scenarios.run("apt-install-quantumos", apt_install);
    scenarios.run("quantumd-ready-under-systemd", quantumd_ready);
    scenarios.run("quantumctl-run-web-server", run_web_server);
    scenarios.run("apt-upgrade-keeps-cells-identity-and-trail", apt_upgrade);
    scenarios.run("apt-purge-leaves-nothing", apt_purge);
    if let Err(e) = scenarios.finish() {
        panic!("{e:#}");
    }
}

/// The deb-guest image and the packages, or `None` (after saying why) when
/// either has not been built; with QUANTUM_VMTEST_REQUIRE_IMAGE=1, as `make
/// test-deb-vm` sets, a missing one fails instead.
fn inputs_or_skip(test: &str) -> Option<(Image, PathBuf)> {
    let required = std::env::var("QUANTUM_VMTEST_REQUIRE_IMAGE").is_ok_and(|v| v == "1");
    let image = match Image::locate(VARIANT) {
        Ok(Some(image)) => image,
        Ok(None) => {
            let why = format!("no {VARIANT} image at {}", Image::expected_location(VARIANT).display());
            assert!(!required, "{test}: {why} although QUANTUM_VMTEST_REQUIRE_IMAGE=1");
            report(format_args!("SKIPPED {test}: {why}; `make test-deb-vm` builds it and runs this"));
            return None;
        }
        Err(e) => panic!("{test}: the {VARIANT} image cannot be used: {e:#}"),
    };
    let debs = match std::env::var_os("QUANTUM_DEB_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Image::cache_dir().join("deb"),
    };
    let have_debs = fs::read_dir(&debs)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("quantumos-daemon_"))
        })
        .unwrap_or(false);
    if !have_debs {
        let why = format!("no quantumos packages in {}", debs.display());
        assert!(!required, "{test}: {why} although QUANTUM_VMTEST_REQUIRE_IMAGE=1");
        report(format_args!("SKIPPED {test}: {why}; `make deb` builds them"));
        return None;
    }
    Some((image, debs))
}

/// Copies the .debs into `share/repo/` with a Packages index, and writes the
/// apt source naming it (`/mnt/share/quantumos.list` in the guest).
fn local_repository(debs: &Path, share: &Path) -> Result<()> {
    let repo = share.join("repo");
    fs::create_dir_all(&repo).with_context(|| format!("creating {}", repo.display()))?;
    let mut copied = 0;
    for entry in fs::read_dir(debs).with_context(|| format!("reading {}", debs.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            fs::copy(&path, repo.join(path.file_name().context("a .deb without a name")?))
                .with_context(|| format!("copying {}", path.display()))?;
            copied += 1;
        }
    }
    index_repository(&repo)?;
    fs::write(
        share.join("quantumos.list"),
        format!("deb [trusted=yes] file:{GUEST_SHARE}/repo ./\n"),
    )
    .context("writing the apt source")?;
    report(format_args!("[qemu] local repository: {copied} packages from {}", debs.display()));
    next_version_repository(&repo, &share.join("repo-next"))?;
    fs::write(
        share.join("quantumos-next.list"),
        format!("deb [trusted=yes] file:{GUEST_SHARE}/repo ./\ndeb [trusted=yes] file:{GUEST_SHARE}/repo-next ./\n"),
    )
    .context("writing the apt source for the upgrade")?;
    Ok(())
}

/// The packages of `repo` again under version `V+next1` (their own and every
/// `(= V)` dependency between them) in `next`, with its Packages index.
fn next_version_repository(repo: &Path, next: &Path) -> Result<()> {
    fs::create_dir_all(next).with_context(|| format!("creating {}", next.display()))?;
    for entry in fs::read_dir(repo).with_context(|| format!("reading {}", repo.display()))? {
        let deb = entry?.path();
        if deb.extension().is_none_or(|e| e != "deb") {
            continue;
        }
        let tree = tempfile::tempdir().context("a directory to unpack into")?;
        let root = tree.path().join("root");
        run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&root))?;
        let control = root.join("DEBIAN/control");
        let text = fs::read_to_string(&control).with_context(|| format!("reading {}", control.display()))?;
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .with_context(|| format!("{}: no Version", deb.display()))?
            .to_owned();
        let next_version = format!("{version}+next1");
        let bumped: String = text
            .lines()
            .map(|l| {
                if l.starts_with("Version: ") {
                    format!("Version: {next_version}\n")
                } else {
                    format!("{}\n", l.replace(&format!("(= {version})"), &format!("(= {next_version})")))
                }
            })
            .collect();
        fs::write(&control, bumped).with_context(|| format!("writing {}", control.display()))?;
        let name = deb
            .file_name()
            .context("a .deb without a name")?
            .to_string_lossy()
            .replace(&format!("_{version}_"), &format!("_{next_version}_"));
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "-b"])
            .arg(&root)
            .arg(next.join(name)))?;
    }
    index_repository(next)
}

/// Writes `dir/Packages`, the index apt reads of a flat repository.
fn index_repository(dir: &Path) -> Result<()> {
    let scan = Command::new("dpkg-scanpackages")
        .args(["--multiversion", "."])
        .current_dir(dir)
        .output()
        .context("running dpkg-scanpackages (package dpkg-dev)")?;
    ensure!(
        scan.status.success(),
        "dpkg-scanpackages failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&scan.stderr)
    );
    fs::write(dir.join("Packages"), &scan.stdout).with_context(|| format!("writing the Packages index in {}", dir.display()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Nothing of QuantumOS before the install, and the snapshot of the file
/// system and accounts the purge is compared against.
fn plain_guest(g: &Guest) -> Result<()> {
    let found =
        g.run("dpkg-query -W 'quantumos*' 2>/dev/null; ls -d /usr/share/quantumos /etc/quantumos 2>/dev/null; getent passwd quantumd")?;
    ensure!(
        found.stdout.trim().is_empty(),
        "the plain guest already has QuantumOS:\n{}",
        found.stdout
    );
    g.run_ok(&format!("{LIST_FILES} > {GUEST_SHARE}/files-before.txt"))?;
    g.run_ok(&format!("{ACCOUNTS} > {GUEST_SHARE}/accounts-before.txt"))?;
    Ok(())
}

fn apt_install(g: &Guest) -> Result<()> {
    install_quantumos(g, APT, "")
}

/// `apt-get update` and `apt-get install -y quantumos` with `apt` (the
/// command with its sources); every package of [`PACKAGES`] must then be
/// installed at a version ending in `suffix`.
fn install_quantumos(g: &Guest, apt: &str, suffix: &str) -> Result<()> {
    let update = g.run_with_timeout(&format!("{apt} update"), Duration::from_secs(120))?;
    ensure!(update.success(), "apt-get update: {update}");
    let install = g.run_with_timeout(&format!("{apt} install -y quantumos"), Duration::from_secs(600))?;
    ensure!(install.success(), "apt-get install quantumos: {install}");
    let installed = g.run_ok("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' 'quantumos*'")?;
    report(format_args!("[qemu] installed:\n{}", installed.trim_end()));
    for package in PACKAGES {
        ensure!(
            installed
                .lines()
                .any(|l| l.starts_with(&format!("{package} ")) && l.ends_with(&format!("{suffix} ii "))),
            "{package} is not installed at a version ending in {suffix:?}:\n{installed}"
        );
    }
    Ok(())
}

/// quantumd.service is Type=notify: active means quantumd said READY=1. It
/// runs as its own user and owns its bus name.
fn quantumd_ready(g: &Guest) -> Result<()> {
    let show = g.run_ok("systemctl show quantumd.service -p ActiveState,SubState,User,UnitFileState")?;
    ensure!(
        show.contains("ActiveState=active") && show.contains("SubState=running"),
        "quantumd is not running:\n{show}\n{}",
        g.run("journalctl -b -u quantumd.service --no-pager | tail -n 40")?.stdout
    );
    ensure!(show.contains("User=quantumd"), "quantumd does not run as user quantumd:\n{show}");
    ensure!(show.contains("UnitFileState=enabled"), "quantumd.service is not enabled:\n{show}");
    let owner = g.run_ok("busctl status org.quantumos.Quantum1 | sed -n 's/^UID=//p'")?;
    let uid = g.run_ok("id -u quantumd")?;
    ensure!(
        owner.trim() == uid.trim(),
        "org.quantumos.Quantum1 is owned by uid {owner:?}, quantumd is {uid:?}"
    );
    Ok(())
}

fn run_web_server(g: &Guest) -> Result<()> {
    let id = start_web_server(g, "hello from a cell")?;
    stop_web_server(g, &id)
}

/// `quantumctl run web-server` on port 8080 serving a page that says
/// `text`, once it answers with it; returns the instance id.
fn start_web_server(g: &Guest, text: &str) -> Result<String> {
    g.run_ok(&format!("mkdir -p /srv/www && echo '{text}' > /srv/www/index.html"))?;
    let out = g.run_ok("quantumctl run web-server port=8080 dir=/srv/www --json")?;
    let info: Value = serde_json::from_str(&out).with_context(|| format!("quantumctl run printed no JSON: {out}"))?;
    let id = info["instance"].as_str().context("no instance in quantumctl's answer")?.to_owned();
    let page = fetch_page(g)?;
    ensure!(page.contains(text), "the cell served {page:?}");
    Ok(id)
}

fn stop_web_server(g: &Guest, id: &str) -> Result<()> {
    let stopped = g.run_ok(&format!("quantumctl stop {id}"))?;
    ensure!(stopped.trim() == format!("stopped {id}"), "quantumctl stop printed {stopped:?}");
    g.run_ok("rm -rf /srv/www")?;
    Ok(())
}

/// `apt-get install quantumos` from a source that also has version
/// `+next1`: every package moves to it, quantumd is restarted by the
/// maintainer scripts (a new process, still READY), the cell started before
/// is still running and re-adopted, and the node keeps its identity and its
/// trail, which still verifies and goes on from where it was.
fn apt_upgrade(g: &Guest) -> Result<()> {
    let id = start_web_server(g, "served across an upgrade")?;
    let identity: Value = serde_json::from_str(&g.run_ok("quantumctl identity --json")?)?;
    // verify seals what is pending, so that `trail show` sees all of it.
    g.run_ok("quantumctl trail verify")?;
    let trail_before = last_seq(g)?;
    let pid_before = g.run_ok("systemctl show -p MainPID --value quantumd.service")?;

    install_quantumos(g, &APT.replace("quantumos.list", "quantumos-next.list"), "+next1")?;

    let show = g.run_ok("systemctl show quantumd.service -p ActiveState,SubState,MainPID")?;
    ensure!(
        show.contains("ActiveState=active") && show.contains("SubState=running"),
        "quantumd after the upgrade:\n{show}"
    );
    ensure!(
        !show.contains(&format!("MainPID={}", pid_before.trim())),
        "quantumd was not restarted by the upgrade (MainPID {} before and after)",
        pid_before.trim()
    );
    let list = g.run_ok("quantumctl list --json")?;
    ensure!(list.contains(&format!("\"{id}\"")), "{id} is not listed after the upgrade:\n{list}");
    fetch_page(g)?;
    let after: Value = serde_json::from_str(&g.run_ok("quantumctl identity --json")?)?;
    ensure!(
        after["key_id"] == identity["key_id"],
        "the node identity changed: {identity} -> {after}"
    );
    g.run_ok("quantumctl trail verify")?;
    let trail_after = last_seq(g)?;
    ensure!(
        trail_after > trail_before,
        "the trail did not go on across the upgrade: last entry {trail_before} before, {trail_after} after"
    );

    stop_web_server(g, &id)
}

/// The sequence number of the newest trail entry.
fn last_seq(g: &Guest) -> Result<u64> {
    let out = g.run_ok("quantumctl trail show -n 1 --json")?;
    let entries: Value = serde_json::from_str(&out).with_context(|| format!("trail show printed no JSON: {out}"))?;
    entries[0]["seq"]
        .as_u64()
        .with_context(|| format!("no newest trail entry in {out}"))
}

/// The web-server cell's page at port 8080 (-B: no bytecode written, so that
/// the test itself leaves no files).
fn fetch_page(g: &Guest) -> Result<String> {
    eventually("the web-server cell to answer", Duration::from_secs(60), || {
        let r = g.run(
            "python3 -B -c \"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8080/', timeout=3).read().decode())\"",
        )?;
        Ok(r.success().then_some(r.stdout))
    })
}

/// `apt-get purge` of everything installed: afterwards the file system
/// (outside apt's, dpkg's and the logs' own state), the accounts files and
/// systemd's units are as they were before the install.
fn apt_purge(g: &Guest) -> Result<()> {
    let purge = g.run_with_timeout(&format!("{APT} purge -y {}", PACKAGES.join(" ")), Duration::from_secs(300))?;
    ensure!(purge.success(), "apt-get purge: {purge}");

    let mut problems = Vec::new();
    let left = g.run_ok("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n' 'quantumos*' 2>/dev/null | grep -v ' pn $' || true")?;
    if !left.trim().is_empty() {
        problems.push(format!("dpkg still knows:\n{left}"));
    }
    let info = g.run_ok("ls /var/lib/dpkg/info/ | grep '^quantumos' || true")?;
    if !info.trim().is_empty() {
        problems.push(format!("dpkg info files left:\n{info}"));
    }
    // The guest's own test agent is not QuantumOS's; a unit systemd still
    // names but has no file for and is not running ("not-found inactive")
    // is a reference it drops at its next garbage collection, not a leftover.
    let units = g.run_ok(
        "systemctl daemon-reload; systemctl list-units --all --plain --no-legend 'quantum*' \
         | grep -v '^quantum-test-agent\\.service ' | grep -Ev '^[^ ]+ +not-found +inactive +dead ' || true",
    )?;
    if !units.trim().is_empty() {
        // A unit that failed while it was stopped stays loaded; its journal
        // says why (a daemon that does not exit on SIGTERM is killed after
        // TimeoutStopSec and left "failed").
        let journal = g.run_ok("journalctl -b --no-pager -o short-monotonic -u 'quantum*' | tail -n 12")?;
        problems.push(format!("systemd still has units:\n{units}their journal ends:\n{journal}"));
    }
    let run = g.run_ok("ls -d /run/quantumd /run/systemd/transient/quantum* 2>/dev/null || true")?;
    if !run.trim().is_empty() {
        problems.push(format!("left in /run:\n{run}"));
    }
    g.run_ok(&format!("{LIST_FILES} > {GUEST_SHARE}/files-after.txt"))?;
    g.run_ok(&format!("{ACCOUNTS} > {GUEST_SHARE}/accounts-after.txt"))?;
    let files = diff(g, "files-before.txt", "files-after.txt")?;
    if !files.is_empty() {
        problems.push(format!("the file system differs from before the install:\n{files}"));
    }
    let accounts = diff(g, "accounts-before.txt", "accounts-after.txt")?;
    if !accounts.is_empty() {
        problems.push(format!("/etc/passwd, group, shadow or gshadow differ from before:\n{accounts}"));
    }
    if !problems.is_empty() {
        bail!("the purge left things behind:\n{}", problems.join("\n"));
    }
    Ok(())
}

/// The lines that differ between two files the guest wrote to the share
/// (`-` before, `+` after).
fn diff(g: &Guest, before: &str, after: &str) -> Result<String> {
    let read = |name: &str| -> Result<String> {
        let path = g.share().join(name);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let (before, after) = (read(before)?, read(after)?);
    let old: std::collections::BTreeSet<&str> = before.lines().collect();
    let new: std::collections::BTreeSet<&str> = after.lines().collect();
    let mut out = String::new();
    for line in old.difference(&new) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in new.difference(&old) {
        out.push_str(&format!("+ {line}\n"));
    }
    Ok(out)
}
