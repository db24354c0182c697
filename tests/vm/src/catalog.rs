//! The catalog smoke: every cell of the standard catalog does its job in a
//! booted QuantumOS guest. Each of the 20 cells is started with
//! `quantumctl run` on parameters that give it real work (a directory to
//! serve, back up, search, mirror or archive; an image, a document, a
//! script; a name for a DNS server in the guest), and judged by what it
//! did — the HTTP answer, the files it wrote, the SQL it answered, what it
//! printed to the journal — and by how it ended: a job exits on its own, a
//! service stops when told, and neither leaves its unit behind.
//!
//! The guest has no network (`-nic none`): a cell that needs the internet is
//! pointed at something in the guest where one exists (ping 127.0.0.1, a DNS
//! server on 127.0.0.1), and otherwise must fail with a clear message
//! (package-update).
//!
//! Run by tests/catalog.rs on the test image and by tests/iso_boot.rs on the
//! live ISO.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{eventually, report, Guest, Scenarios};

/// Runs every catalog scenario in `scenarios`' guest (QuantumOS booted,
/// its catalog installed under /usr/share/quantumos/cells): quantumd is
/// ready and holds the whole catalog, each cell does its job, and no cell
/// unit is left behind. `QUANTUM_VMTEST_ONLY=web-server,...` (see
/// [`Scenarios`]) runs only some.
pub fn run_all(scenarios: &mut Scenarios<'_>) {
    scenarios.run("quantumd-is-ready-and-the-image-holds-the-catalog", image_holds_the_catalog);
    for (cell, proves, scenario) in CELLS {
        scenarios.run(&format!("{cell}-{proves}"), *scenario);
    }
    scenarios.run("no-cell-unit-is-left-behind", nothing_left_behind);
}

/// One scenario: passes or says what went wrong.
pub type Scenario = fn(&Guest) -> Result<()>;

/// One smoke scenario per catalog cell: (cell, what it proves, scenario).
pub const CELLS: &[(&str, &str, Scenario)] = &[
    ("web-server", "serves-a-directory-over-http", web_server),
    ("file-backup", "snapshots-a-directory-twice-with-hard-links", file_backup),
    ("disk-usage", "ranks-the-biggest-directories", disk_usage),
    ("log-search", "finds-a-message-in-the-journal", log_search),
    ("system-monitor", "prints-live-samples-until-stopped", system_monitor),
    ("network-check", "pings-loopback", network_check),
    ("image-resize", "halves-a-png-into-a-jpeg", image_resize),
    ("document-convert", "turns-markdown-into-html", document_convert),
    ("archive", "creates-and-extracts-a-tar-zst", archive),
    ("file-sync", "mirrors-a-directory-deleting-stale-files", file_sync),
    ("scheduled-task", "runs-a-command-again-and-again", scheduled_task),
    ("package-update", "fails-clearly-offline", package_update),
    ("process-hog", "ranks-a-memory-hog-first-and-stops-it", process_hog),
    ("dns-lookup", "resolves-a-name-through-the-system-resolver", dns_lookup),
    (
        "password-generator",
        "makes-distinct-passwords-of-the-asked-kind",
        password_generator,
    ),
    ("file-search", "finds-files-by-name-and-by-content", file_search),
    ("checksum", "hashes-a-file-and-catches-a-corrupt-one", checksum),
    ("python-sandbox", "runs-a-script-without-network-or-writes", python_sandbox),
    ("gpu-status", "says-no-gpu-in-a-vm-without-one", gpu_status),
    ("sql-database", "answers-sql-on-loopback", sql_database),
];

// ----- helpers ---------------------------------------------------------------

/// How long a job may take under TCG, where pandoc, ImageMagick and apt are slow to start.
const JOB_LIMIT: Duration = Duration::from_secs(240);

/// `s` quoted for the guest's shell.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A cell instance started by `quantumctl run`.
struct Instance {
    id: String,
}

impl Instance {
    fn unit(&self) -> String {
        format!("quantum-{}.service", self.id)
    }
}

/// `quantumctl run CELL NAME=VALUE...` from the catalog installed in the image.
fn start(g: &Guest, cell: &str, params: &[(&str, &str)]) -> Result<Instance> {
    let args: Vec<String> = params.iter().map(|(k, v)| sh(&format!("{k}={v}"))).collect();
    let out = g.run_ok(&format!("quantumctl run {cell} {} --json", args.join(" ")))?;
    let info: Value = serde_json::from_str(&out).with_context(|| format!("quantumctl run printed no JSON: {out}"))?;
    let id = info["instance"].as_str().context("no instance in quantumctl's answer")?;
    ensure!(id.starts_with(&format!("{cell}.")), "started {id}, not an instance of {cell}");
    Ok(Instance { id: id.to_owned() })
}

/// The instance's newest entry in `quantumctl list`, whatever its state.
fn entry(g: &Guest, inst: &Instance) -> Result<Option<Value>> {
    let list: Value = serde_json::from_str(&g.run_ok("quantumctl list --json")?)?;
    Ok(list
        .as_array()
        .and_then(|a| a.iter().rev().find(|c| c["instance"] == inst.id.as_str()).cloned()))
}

fn wait_state(g: &Guest, inst: &Instance, states: &[&str], limit: Duration) -> Result<Value> {
    eventually(&format!("{} to be {states:?}", inst.id), limit, || {
        Ok(entry(g, inst)?.filter(|c| states.iter().any(|s| c["state"] == *s)))
    })
}

/// systemd no longer has the instance's unit (transient units are collected
/// when they end, and quantumd resets failed ones). Then the journal is
/// synced: journald answers a sync only after the output already queued, so
/// everything the instance printed can be read.
fn unit_gone(g: &Guest, inst: &Instance) -> Result<()> {
    let unit = inst.unit();
    eventually(&format!("{unit} to be gone"), Duration::from_secs(30), || {
        let left = g.run_ok(&format!("systemctl list-units --all --plain --no-legend {unit}"))?;
        Ok(left.trim().is_empty().then_some(()))
    })?;
    g.run_ok("journalctl --sync")?;
    Ok(())
}

/// What the instance's processes wrote to stdout and stderr, from the
/// journal.
fn output(g: &Guest, inst: &Instance) -> Result<String> {
    g.run_ok(&format!("journalctl --no-pager -o cat _SYSTEMD_UNIT={}", inst.unit()))
}

/// How a job ended and what it printed.
struct Finished {
    state: String,
    reason: String,
    output: String,
}

/// Runs a one-shot cell to its end; its unit must be gone afterwards.
fn job(g: &Guest, cell: &str, params: &[(&str, &str)]) -> Result<Finished> {
    let inst = start(g, cell, params)?;
    let end = wait_state(g, &inst, &["exited", "failed", "stopped"], JOB_LIMIT)?;
    unit_gone(g, &inst)?;
    Ok(Finished {
        state: end["state"].as_str().unwrap_or_default().to_owned(),
        reason: end["reason"].as_str().unwrap_or_default().to_owned(),
        output: output(g, &inst)?,
    })
}

/// Runs a one-shot cell that must succeed, and returns what it printed.
fn job_ok(g: &Guest, cell: &str, params: &[(&str, &str)]) -> Result<String> {
    let f = job(g, cell, params)?;
    ensure!(f.state == "exited", "{cell} {} ({}); it printed:\n{}", f.state, f.reason, f.output);
    Ok(f.output)
}

/// Starts a long-running cell, waits until quantumd reports it running, runs
/// `check` on it and stops it, also when `check` failed (so that one failed
/// scenario leaves nothing running into the next).
fn serving(g: &Guest, cell: &str, params: &[(&str, &str)], check: impl FnOnce(&Instance) -> Result<()>) -> Result<Instance> {
    let inst = start(g, cell, params)?;
    let checked = wait_state(g, &inst, &["running"], Duration::from_secs(60)).and_then(|_| check(&inst));
    let stopped = stop(g, &inst);
    checked?;
    stopped?;
    Ok(inst)
}

/// `quantumctl stop` ends a service: quantumd reports it stopped (not
/// failed) and its unit is gone.
fn stop(g: &Guest, inst: &Instance) -> Result<()> {
    let out = g.run_ok(&format!("quantumctl stop {}", inst.id))?;
    ensure!(out.trim() == format!("stopped {}", inst.id), "quantumctl stop printed {out:?}");
    let end = wait_state(g, inst, &["stopped", "exited", "failed"], Duration::from_secs(60))?;
    ensure!(end["state"] == "stopped", "{} after stop: {end}", inst.id);
    unit_gone(g, inst)
}

/// An HTTP GET from inside the guest; `None` when nothing answers.
fn http_get(g: &Guest, url: &str) -> Result<Option<String>> {
    let r = g.run(&format!(
        "python3 -c \"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen({}, timeout=3).read().decode())\"",
        sh(url)
    ))?;
    Ok(r.success().then_some(r.stdout))
}

/// Lines of `text` that contain `needle`.
fn lines_with<'t>(text: &'t str, needle: &str) -> Vec<&'t str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

// ----- scenarios -------------------------------------------------------------

fn image_holds_the_catalog(g: &Guest) -> Result<()> {
    let active = g.run_with_timeout("systemctl is-active quantumd.service", Duration::from_secs(60))?;
    ensure!(active.stdout.trim() == "active", "quantumd is {}", active.stdout.trim());
    let installed: BTreeSet<String> = g
        .run_ok("ls /usr/share/quantumos/cells")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let covered: BTreeSet<String> = CELLS.iter().map(|(cell, _, _)| (*cell).to_owned()).collect();
    ensure!(installed == covered, "the image's catalog is {installed:?}");
    Ok(())
}

fn web_server(g: &Guest) -> Result<()> {
    g.run_ok("mkdir -p /srv/catalog/web-server/sub && echo 'served by a cell' > /srv/catalog/web-server/index.html && echo deeper > /srv/catalog/web-server/sub/page.txt")?;
    serving(g, "web-server", &[("dir", "/srv/catalog/web-server"), ("port", "8181")], |_| {
        let index = eventually("the web server to answer", Duration::from_secs(120), || {
            http_get(g, "http://127.0.0.1:8181/index.html")
        })?;
        ensure!(index == "served by a cell\n", "/index.html is {index:?}");
        let page = http_get(g, "http://127.0.0.1:8181/sub/page.txt")?;
        ensure!(page.as_deref() == Some("deeper\n"), "/sub/page.txt is {page:?}");
        Ok(())
    })?;
    ensure!(
        http_get(g, "http://127.0.0.1:8181/index.html")?.is_none(),
        "still answering after stop"
    );
    Ok(())
}

fn file_backup(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/file-backup";
    // A file only its owner may read belongs in the backup too.
    g.run_ok(&format!(
        "rm -rf {base} && mkdir -p {base}/docs/sub {base}/backups && \
         echo first > {base}/docs/a.txt && echo unchanged > {base}/docs/sub/b.txt && \
         echo secret > {base}/docs/private && chown quantum:quantum {base}/docs/private && chmod 0600 {base}/docs/private"
    ))?;
    let params = [
        ("source", "/srv/catalog/file-backup/docs"),
        ("dest", "/srv/catalog/file-backup/backups"),
    ];
    let out = job_ok(g, "file-backup", &params)?;
    ensure!(
        out.contains(&format!("file-backup: {base}/docs -> {base}/backups/docs/")),
        "it printed: {out}"
    );
    let first = g.run_ok(&format!(
        "cd {base}/backups/docs/latest && cat a.txt sub/b.txt private && stat -c '%U %a' private"
    ))?;
    ensure!(
        first == "first\nunchanged\nsecret\nquantum 600\n",
        "the first snapshot holds {first:?}"
    );

    // Snapshots are named by the second: the next one must be a new one.
    g.run_ok(&format!("sleep 1; echo second > {base}/docs/a.txt"))?;
    job_ok(g, "file-backup", &params)?;
    let snapshots = g.run_ok(&format!("ls {base}/backups/docs"))?;
    let names: Vec<&str> = snapshots.split_whitespace().collect();
    ensure!(names.len() == 3 && names.contains(&"latest"), "the backup place holds {names:?}");
    let now = g.run_ok(&format!("cat {base}/backups/docs/latest/a.txt"))?;
    ensure!(now == "second\n", "the newest snapshot holds a.txt = {now:?}");
    // The unchanged file costs nothing: one inode shared by both snapshots.
    let inodes = g.run_ok(&format!("stat -c %i {base}/backups/docs/*Z/sub/b.txt | sort -u | wc -l"))?;
    ensure!(
        inodes.trim() == "1",
        "the unchanged file was copied, not linked ({} inodes)",
        inodes.trim()
    );
    Ok(())
}

fn disk_usage(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/disk-usage";
    g.run_ok(&format!(
        "rm -rf {base} && mkdir -p {base}/big {base}/small && head -c 3M /dev/zero > {base}/big/blob && echo x > {base}/small/note"
    ))?;
    let out = job_ok(g, "disk-usage", &[("path", base), ("depth", "1"), ("top", "5")])?;
    ensure!(out.starts_with("Filesystem"), "no df table first: {out}");
    // du's part, largest first. The whole directory and big/ may show the
    // same rounded size (3 MiB of data plus a few KiB, rounded up by -h), so
    // only small/ has a fixed place: last.
    let du: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('\t')).collect();
    let size = |path: &str| du.iter().find(|(_, p)| *p == path).map(|(s, _)| *s);
    ensure!(du.len() == 3, "du listed {du:?}");
    // small/ holds one block of file: 8.0K with its directory's own block,
    // 4.0K on tmpfs (the live system's writable layer), where directories
    // take none.
    ensure!(
        du[2].1 == format!("{base}/small") && matches!(du[2].0, "4.0K" | "8.0K"),
        "small/ is not last with 4.0K or 8.0K: {du:?}"
    );
    for path in [base.to_owned(), format!("{base}/big")] {
        ensure!(
            matches!(size(&path), Some("3.0M" | "3.1M")),
            "{path} is {:?}, not 3 MiB: {du:?}",
            size(&path)
        );
    }
    // As a person types it (issue 23): the answer on their own terminal,
    // quantumctl's exit status the cell's.
    let typed = g.run("runuser -u quantum -- quantumctl run disk-usage path=/var")?;
    ensure!(
        typed.code == 0 && typed.stdout.starts_with("Filesystem") && typed.stdout.lines().any(|l| l.ends_with("\t/var")),
        "`quantumctl run disk-usage path=/var` as user quantum: {typed}"
    );
    report(format_args!(
        "[qemu] quantum$ quantumctl run disk-usage path=/var\n{}",
        typed.stdout.trim_end()
    ));
    Ok(())
}

fn log_search(g: &Guest) -> Result<()> {
    let marker = format!("catalog-marker-{}", std::process::id());
    g.run_ok(&format!("logger -t qt-catalog -p user.warning 'log-search smoke {marker}'"))?;
    let out = job_ok(g, "log-search", &[("pattern", &marker), ("since", "1h"), ("priority", "warning")])?;
    let found = lines_with(&out, &marker);
    ensure!(
        found.len() == 1 && found[0].contains("qt-catalog") && found[0].contains(&format!("log-search smoke {marker}")),
        "log-search printed: {out}"
    );
    // A pattern nothing matches is an answer (no entries), not a failure.
    let none = job_ok(g, "log-search", &[("pattern", "no-such-message-anywhere-7f3a"), ("since", "1h")])?;
    ensure!(none.contains("-- No entries --"), "for no match it printed: {none}");
    Ok(())
}

fn system_monitor(g: &Guest) -> Result<()> {
    serving(g, "system-monitor", &[("interval", "1")], |mon| {
        // vmstat's sample lines start with the run-queue and blocked counts;
        // three of them arrive one second apart while it runs.
        let samples = eventually("three vmstat samples", Duration::from_secs(60), || {
            let out = output(g, mon)?;
            let samples: Vec<String> = out
                .lines()
                .filter(|l| {
                    let mut w = l.split_whitespace();
                    w.next().is_some_and(|r| r.parse::<u32>().is_ok()) && w.next().is_some_and(|b| b.parse::<u32>().is_ok())
                })
                .map(str::to_owned)
                .collect();
            Ok((samples.len() >= 3).then_some(samples))
        })?;
        let out = output(g, mon)?;
        ensure!(
            out.contains("free") && out.contains("UTC"),
            "no vmstat header with timestamps: {out}"
        );
        report(format_args!("[qemu] system-monitor: {}", samples[samples.len() - 1].trim()));
        Ok(())
    })?;
    Ok(())
}

fn network_check(g: &Guest) -> Result<()> {
    let out = job_ok(g, "network-check", &[("host", "127.0.0.1"), ("count", "2"), ("timeout", "2")])?;
    ensure!(
        out.contains("2 packets transmitted, 2 received, 0% packet loss"),
        "ping printed: {out}"
    );
    ensure!(lines_with(&out, "rtt min/avg/max").len() == 1, "no latency figures: {out}");
    Ok(())
}

fn image_resize(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/image-resize";
    g.run_ok(&format!(
        "rm -rf {base} && mkdir -p {base}/out && chmod 0777 {base}/out && convert -size 64x48 xc:red {base}/photo.png"
    ))?;
    let out = job_ok(
        g,
        "image-resize",
        &[
            ("input", "/srv/catalog/image-resize/photo.png"),
            ("size", "50%"),
            ("dest", "/srv/catalog/image-resize/out"),
            ("format", "jpg"),
        ],
    )?;
    ensure!(
        out.contains(&format!("image-resize: {base}/photo.png -> {base}/out/photo-resized.jpg")),
        "it printed: {out}"
    );
    let made = g.run_ok(&format!("identify -format '%m %wx%h' {base}/out/photo-resized.jpg"))?;
    ensure!(made == "JPEG 32x24", "the result is {made:?}, not a 32x24 JPEG");
    Ok(())
}

fn document_convert(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/document-convert";
    g.run_ok(&format!(
        "rm -rf {base} && mkdir -p {base}/out && chmod 0777 {base}/out && \
         printf '%s\\n' '---' 'title: Notes' '---' '# A heading' '' 'Some *emphasis* here.' > {base}/notes.md"
    ))?;
    let out = job_ok(
        g,
        "document-convert",
        &[
            ("input", "/srv/catalog/document-convert/notes.md"),
            ("to", "html"),
            ("dest", "/srv/catalog/document-convert/out"),
        ],
    )?;
    ensure!(
        out.contains(&format!("document-convert: {base}/notes.md -> {base}/out/notes.html")),
        "it printed: {out}"
    );
    let html = g.run_ok(&format!("cat {base}/out/notes.html"))?;
    for want in ["<title>Notes</title>", "<h1 id=\"a-heading\">A heading</h1>", "<em>emphasis</em>"] {
        ensure!(html.contains(want), "notes.html lacks {want}:\n{html}");
    }
    Ok(())
}

fn archive(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/archive";
    g.run_ok(&format!(
        "rm -rf {base} && mkdir -p {base}/docs/sub {base}/out {base}/unpacked && chmod 0777 {base}/out {base}/unpacked && \
         echo alpha > {base}/docs/a.txt && seq 1000 > {base}/docs/sub/numbers"
    ))?;
    let out = job_ok(
        g,
        "archive",
        &[
            ("mode", "create"),
            ("source", "/srv/catalog/archive/docs"),
            ("dest", "/srv/catalog/archive/out"),
            ("format", "tar.zst"),
        ],
    )?;
    ensure!(
        out.contains(&format!("archive: {base}/docs -> {base}/out/docs.tar.zst")),
        "it printed: {out}"
    );
    let kind = g.run_ok(&format!(
        "zstd -t {base}/out/docs.tar.zst 2>&1 && tar --zstd -tf {base}/out/docs.tar.zst | sort"
    ))?;
    ensure!(
        kind.contains("docs/a.txt") && kind.contains("docs/sub/numbers"),
        "the archive holds: {kind}"
    );
    let out = job_ok(
        g,
        "archive",
        &[
            ("mode", "extract"),
            ("source", "/srv/catalog/archive/out/docs.tar.zst"),
            ("dest", "/srv/catalog/archive/unpacked"),
        ],
    )?;
    ensure!(out.contains("extracted into"), "it printed: {out}");
    let diff = g.run(&format!("diff -r {base}/docs {base}/unpacked/docs"))?;
    ensure!(diff.success(), "the extracted tree differs from the original: {diff}");
    Ok(())
}

fn file_sync(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/file-sync";
    g.run_ok(&format!(
        "rm -rf {base} && mkdir -p {base}/src/sub {base}/mirror && \
         echo new > {base}/src/a.txt && echo deep > {base}/src/sub/b.txt && chown -R quantum {base}/src/sub && \
         echo outdated > {base}/mirror/a.txt && echo stale > {base}/mirror/stale.txt"
    ))?;
    let params = [("source", "/srv/catalog/file-sync/src"), ("dest", "/srv/catalog/file-sync/mirror")];
    let out = job_ok(g, "file-sync", &params)?;
    ensure!(out.contains("Number of deleted files: 1"), "rsync's summary: {out}");
    let diff = g.run(&format!("diff -r {base}/src {base}/mirror"))?;
    ensure!(diff.success(), "the mirror differs from the source: {diff}");
    let owner = g.run_ok(&format!("stat -c %U {base}/mirror/sub/b.txt"))?;
    ensure!(owner == "quantum\n", "the mirror's sub/b.txt belongs to {owner:?}, not quantum");
    // Once more after a change: only the change travels, also into the
    // subdirectory the first run created.
    g.run_ok(&format!("echo changed > {base}/src/sub/b.txt && rm {base}/src/a.txt"))?;
    let out = job_ok(g, "file-sync", &params)?;
    ensure!(
        out.contains("Number of regular files transferred: 1") && out.contains("Number of deleted files: 1"),
        "rsync's summary of the second run: {out}"
    );
    let diff = g.run(&format!("diff -r {base}/src {base}/mirror"))?;
    ensure!(diff.success(), "after the second run the mirror differs: {diff}");
    Ok(())
}

fn scheduled_task(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/scheduled-task";
    g.run_ok(&format!("rm -rf {base} && mkdir -p {base} && chmod 0777 {base}"))?;
    let params = [("command", "date +%s >> ticks; echo tick"), ("every", "2s"), ("workdir", base)];
    let task = serving(g, "scheduled-task", &params, |_| {
        eventually("three runs of the command", Duration::from_secs(90), || {
            let n = g.run_ok(&format!("cat {base}/ticks 2>/dev/null | wc -l"))?;
            Ok((n.trim().parse::<u32>()? >= 3).then_some(()))
        })
    })?;
    let out = output(g, &task)?;
    ensure!(
        lines_with(&out, "running: date +%s >> ticks; echo tick").len() >= 3
            && lines_with(&out, "exit status 0; next run in 2s").len() >= 2
            && out.lines().filter(|l| *l == "tick").count() >= 2,
        "its log: {out}"
    );
    // Stopped means stopped: no run after the stop, though one is due.
    let at_stop = g.run_ok(&format!("wc -l < {base}/ticks"))?;
    let later = g.run_ok(&format!("sleep 5; wc -l < {base}/ticks"))?;
    ensure!(
        at_stop == later,
        "it ran on after stop: {} then {} runs",
        at_stop.trim(),
        later.trim()
    );
    Ok(())
}

fn package_update(g: &Guest) -> Result<()> {
    // The guest has no network: apt cannot refresh its lists, and the cell
    // must say so and fail rather than report an up-to-date system.
    let f = job(g, "package-update", &[("mode", "check")])?;
    ensure!(
        f.state == "failed" && f.reason == "exited with status 100",
        "package-update ended {} ({}); it printed:\n{}",
        f.state,
        f.reason,
        f.output
    );
    ensure!(
        f.output.contains("E: Failed to fetch") && f.output.contains("package-update: cannot refresh the package lists"),
        "not the clear offline failure: {}",
        f.output
    );
    ensure!(!f.output.contains("up to date"), "claims the system is up to date: {}", f.output);
    Ok(())
}

fn process_hog(g: &Guest) -> Result<()> {
    // A process holding 300 MiB is the biggest in the guest.
    g.run_ok("systemd-run --unit=qt-hog -p Type=exec /usr/bin/python3 -c 'import time; b = b\"x\" * (300 << 20); time.sleep(600)'")?;
    let pid = eventually("the hog to hold its memory", Duration::from_secs(60), || {
        let pid = g.run_ok("systemctl show -P MainPID qt-hog")?.trim().to_owned();
        let rss = g.run(&format!("ps -o rss= -p {pid}"))?.stdout.trim().parse::<u64>().unwrap_or(0);
        Ok((rss > 300 << 10).then_some(pid))
    })?;
    let out = job_ok(
        g,
        "process-hog",
        &[("by", "memory"), ("top", "3"), ("pid", &pid), ("signal", "TERM")],
    )?;
    let table: Vec<&str> = out.lines().collect();
    ensure!(
        table.first().is_some_and(|l| l.contains("PID") && l.contains("RSS")),
        "no ps header: {out}"
    );
    let first = table.get(1).and_then(|l| l.split_whitespace().next()).unwrap_or_default();
    ensure!(first == pid, "the top process by memory is {first}, not the hog {pid}: {out}");
    ensure!(
        out.contains(&format!("process-hog: sent SIGTERM to process {pid}")),
        "it printed: {out}"
    );
    eventually("the hog to be gone", Duration::from_secs(30), || {
        Ok((!g.run(&format!("kill -0 {pid}"))?.success()).then_some(()))
    })?;
    g.run("systemctl reset-failed qt-hog 2>/dev/null; true")?;
    Ok(())
}

/// A DNS server for one name, on 127.0.0.1:53 in the guest: the guest has
/// no network, and dig asks the resolver in /etc/resolv.conf.
const DNS_SERVER: &str = r#"
import socket, struct
NAMES = {b"catalog.quantum.test": bytes([10, 0, 2, 42])}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
while True:
    q, peer = s.recvfrom(4096)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]])
        i += 1 + q[i]
    question = q[12:i + 5]
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    addr = NAMES.get(b".".join(labels).lower())
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + addr if addr and qtype == 1 else b""
    flags = 0x8180 | (0 if addr else 3)
    s.sendto(q[:2] + struct.pack("!HHHHH", flags, 1, 1 if answer else 0, 0, 0) + question + answer, peer)
"#;

fn dns_lookup(g: &Guest) -> Result<()> {
    g.run_ok(&format!(
        "mkdir -p /srv/catalog/dns-lookup && cat > /srv/catalog/dns-lookup/server.py <<'QTEOF'\n{DNS_SERVER}QTEOF\n\
         systemd-run --unit=qt-dns /usr/bin/python3 /srv/catalog/dns-lookup/server.py && \
         cp -a /etc/resolv.conf /run/qt-resolv.conf.saved 2>/dev/null; rm -f /etc/resolv.conf && echo 'nameserver 127.0.0.1' > /etc/resolv.conf"
    ))?;
    let result = (|| {
        eventually("the DNS server to listen", Duration::from_secs(60), || {
            Ok(g.run_ok("ss -Hunl 'sport = :53'")?.contains("127.0.0.1:53").then_some(()))
        })?;
        let found = job_ok(g, "dns-lookup", &[("name", "catalog.quantum.test"), ("type", "A")])?;
        let missing = job_ok(g, "dns-lookup", &[("name", "missing.quantum.test")])?;
        Ok::<_, anyhow::Error>((found, missing))
    })();
    g.run_ok("systemctl stop qt-dns; rm -f /etc/resolv.conf; if [ -e /run/qt-resolv.conf.saved ] || [ -L /run/qt-resolv.conf.saved ]; then mv /run/qt-resolv.conf.saved /etc/resolv.conf; fi")?;
    let (found, missing) = result?;
    ensure!(found.contains("status: NOERROR"), "dig printed: {found}");
    let answer: Vec<Vec<&str>> = found
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    ensure!(
        answer == [vec!["catalog.quantum.test.", "300", "IN", "A", "10.0.2.42"]],
        "the answer section is {answer:?}; dig printed: {found}"
    );
    ensure!(
        missing.contains("status: NXDOMAIN"),
        "for a name the server does not know, dig printed: {missing}"
    );
    Ok(())
}

fn password_generator(g: &Guest) -> Result<()> {
    let out = job_ok(
        g,
        "password-generator",
        &[("length", "24"), ("count", "3"), ("kind", "alphanumeric")],
    )?;
    let words: Vec<&str> = out.lines().collect();
    ensure!(words.len() == 3, "it printed {} lines: {out}", words.len());
    for w in &words {
        ensure!(
            w.len() == 24
                && w.chars().all(|c| c.is_ascii_alphanumeric())
                && w.chars().any(|c| c.is_ascii_lowercase())
                && w.chars().any(|c| c.is_ascii_uppercase())
                && w.chars().any(|c| c.is_ascii_digit()),
            "{w:?} is not a 24-character alphanumeric password with all three groups"
        );
    }
    let distinct: BTreeSet<&&str> = words.iter().collect();
    ensure!(distinct.len() == 3, "repeated passwords: {words:?}");
    Ok(())
}

fn file_search(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/file-search";
    g.run_ok(&format!(
        "rm -rf {base} && mkdir -p {base}/a/b && echo 'nothing here' > {base}/a/Report-2024.txt && \
         echo 'the needle is here' > {base}/a/b/notes.md && echo plain > {base}/other.txt"
    ))?;
    let by_name = job_ok(g, "file-search", &[("path", base), ("pattern", "report"), ("by", "name")])?;
    ensure!(by_name == format!("{base}/a/Report-2024.txt\n"), "by name it found: {by_name:?}");
    let by_content = job_ok(g, "file-search", &[("path", base), ("pattern", "NEEDLE"), ("by", "content")])?;
    ensure!(
        by_content == format!("{base}/a/b/notes.md\n"),
        "by content it found: {by_content:?}"
    );
    Ok(())
}

fn checksum(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/checksum";
    g.run_ok(&format!(
        "rm -rf {base} && mkdir -p {base}/files && echo hello > {base}/files/good.txt && echo original > {base}/files/bad.txt"
    ))?;
    // sha256 of "hello\n", known independently of the guest's tools.
    let hello = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    let out = job_ok(g, "checksum", &[("path", "/srv/catalog/checksum/files/good.txt")])?;
    ensure!(out == format!("{hello}  {base}/files/good.txt\n"), "it printed {out:?}");
    // A checksum list made now, then one file changes behind its back.
    g.run_ok(&format!(
        "cd {base}/files && sha256sum good.txt bad.txt > SHA256SUMS && echo tampered > bad.txt"
    ))?;
    let f = job(g, "checksum", &[("path", "/srv/catalog/checksum/files"), ("mode", "verify")])?;
    ensure!(
        f.state == "failed" && f.reason == "exited with status 1",
        "verifying a tampered file ended {} ({}): {}",
        f.state,
        f.reason,
        f.output
    );
    ensure!(
        f.output.contains("good.txt: OK") && f.output.contains("bad.txt: FAILED"),
        "verify printed: {}",
        f.output
    );
    Ok(())
}

fn python_sandbox(g: &Guest) -> Result<()> {
    let base = "/srv/catalog/python-sandbox";
    // The directory is world-writable: only the sandbox can stop the write.
    g.run_ok(&format!(
        "rm -rf {base} && mkdir -p {base} && chmod 0777 {base} && cat > {base}/script.py <<'QTEOF'
import os, socket
print('sandbox: sum of squares', sum(i * i for i in range(10)))
print('sandbox: dynamic user', os.getuid() >= 61184)
try:
    open('{base}/escaped', 'w')
    print('sandbox: wrote outside')
except OSError as e:
    print('sandbox: cannot write:', e.strerror)
try:
    socket.create_connection(('192.0.2.1', 80), timeout=3)
    print('sandbox: reached the network')
except OSError as e:
    print('sandbox: no network:', e.strerror or e)
with open('/tmp/scratch', 'w') as f:
    f.write('ok')
print('sandbox: private tmp works')
QTEOF"
    ))?;
    let out = job_ok(g, "python-sandbox", &[("script", "/srv/catalog/python-sandbox/script.py")])?;
    ensure!(
        out == "sandbox: sum of squares 285\nsandbox: dynamic user True\nsandbox: cannot write: Read-only file system\n\
                sandbox: no network: Network is unreachable\nsandbox: private tmp works\n",
        "the script printed:\n{out}"
    );
    ensure!(
        !g.run(&format!("test -e {base}/escaped"))?.success(),
        "the script wrote outside its sandbox"
    );
    Ok(())
}

fn gpu_status(g: &Guest) -> Result<()> {
    // The VM has QEMU's emulated VGA (bochs-drm): a display, not a GPU.
    let out = job_ok(g, "gpu-status", &[])?;
    ensure!(
        out.lines().count() == 1 && out.starts_with("no GPU found"),
        "in a VM without a GPU it printed: {out:?}"
    );
    Ok(())
}

fn sql_database(g: &Guest) -> Result<()> {
    let psql = "$(ls /usr/lib/postgresql/*/bin/psql | sort -V | tail -n 1)";
    // The password is a secret parameter: quantumd makes it and gives it to
    // the caller alone, in the answer to the run.
    let out = g.run_ok("quantumctl run sql-database port=5433 user=quantum --json")?;
    let answer: Value = serde_json::from_str(&out).with_context(|| format!("quantumctl run printed no JSON: {out}"))?;
    let id = answer["instance"].as_str().context("no instance in quantumctl's answer")?;
    let password = answer["secrets"]["password"]
        .as_str()
        .with_context(|| format!("no password in quantumctl's answer: {answer}"))?
        .to_owned();
    ensure!(
        password.len() == 32,
        "the password made for the run is {} characters",
        password.len()
    );
    let db = Instance { id: id.to_owned() };
    let url = format!("postgresql://quantum:{password}@127.0.0.1:5433/postgres");
    let checked = wait_state(g, &db, &["running"], Duration::from_secs(60)).and_then(|_| {
        let answer = eventually("PostgreSQL to accept connections", Duration::from_secs(180), || {
            let r = g.run(&format!(
                "{psql} {} -v ON_ERROR_STOP=1 -Atc 'CREATE TABLE t (x int); INSERT INTO t VALUES (6 * 7); SELECT x FROM t'",
                sh(&url)
            ))?;
            if r.stderr.contains("Connection refused") || r.stderr.contains("starting up") {
                return Ok(None);
            }
            Ok(Some(r))
        })?;
        // psql prints each statement's tag, then the query's rows.
        ensure!(answer.success() && answer.stdout.lines().last() == Some("42"), "psql: {answer}");
        // The password is what lets a client in.
        let wrong = g.run(&format!(
            "PGPASSWORD=wrong {psql} -h 127.0.0.1 -p 5433 -U quantum -d postgres -Atc 'SELECT 1'"
        ))?;
        ensure!(
            !wrong.success() && wrong.stderr.contains("password authentication failed"),
            "a wrong password: {wrong}"
        );
        // And it is nowhere anyone else on the node can read it: the
        // cell's output, the unit's properties, inspect, the trail, the
        // journal as a whole.
        let printed = output(g, &db)?;
        ensure!(
            printed.contains("sql-database: postgresql://quantum@127.0.0.1:5433/postgres"),
            "it printed:\n{printed}"
        );
        for (place, command) in [
            ("the unit's properties", format!("systemctl show {}", db.unit())),
            ("quantumctl inspect", format!("quantumctl inspect --json {id}")),
            ("the trail", "quantumctl trail show -n 0 --json".to_owned()),
            ("the journal", "journalctl --no-pager -o cat".to_owned()),
        ] {
            let text = g.run_ok(&command)?;
            ensure!(!text.contains(&password), "the password is in {place} ({command})");
        }
        Ok(())
    });
    let stopped = stop(g, &db);
    checked?;
    stopped?;
    let after = g.run(&format!("{psql} {} -Atc 'SELECT 1'", sh(&url)))?;
    ensure!(!after.success(), "the database still answers after stop: {after}");
    let kept = g.run_ok(&format!("ls /var/lib/quantumd/credentials/{id} 2>/dev/null || true"))?;
    ensure!(kept.trim().is_empty(), "the password is still kept after stop: {kept}");
    Ok(())
}

fn nothing_left_behind(g: &Guest) -> Result<()> {
    // Cell units are quantum-CELL.N.service (the test agent is not one).
    let units = g.run_ok("systemctl list-units --all --plain --no-legend 'quantum-*.*.service'")?;
    ensure!(units.trim().is_empty(), "cell units left:\n{units}");
    let list: Value = serde_json::from_str(&g.run_ok("quantumctl list --json")?)?;
    let live: Vec<&Value> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| !matches!(c["state"].as_str(), Some("exited" | "failed" | "stopped")))
                .collect()
        })
        .unwrap_or_default();
    if !live.is_empty() {
        bail!("quantumd still has live instances: {live:?}");
    }
    Ok(())
}
