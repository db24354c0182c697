//! The soak tier (`make soak`; not part of `make test`: it takes 30
//! minutes): security-ai's false-alert side, on the real catalog, the real
//! kernel's eBPF and the cgroup v2 backend (root, like the host tier).
//! `QUANTUM_SOAK_SECS` shortens it.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{alerts, free_port, get, json, wait_for, Node};

/// The false-alert side: the real catalog's cells doing ordinary work for
/// `QUANTUM_SOAK_SECS` (default 1800: the 30 minutes) raise no
/// alert.
#[test]
fn clean_soak_of_catalog_cells_raises_no_alert() {
    let secs: u64 = std::env::var("QUANTUM_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1800);
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/cells");
    let node = Node::start(&catalog);
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    let out = work.path().join("out");
    std::fs::create_dir_all(data.join("sub")).expect("mkdir");
    std::fs::create_dir_all(&out).expect("mkdir");
    for i in 0..50 {
        std::fs::write(data.join(format!("note-{i}.txt")), format!("line {i}\nfoo bar {i}\n")).expect("write");
    }
    std::fs::write(data.join("sub/report.md"), "# report\nfoo\n").expect("write");
    for f in std::fs::read_dir(&data).expect("ls").flatten() {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o755));
    }
    let _ = std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755));
    let _ = std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777));

    let port = free_port();
    let d = data.display().to_string();
    node.ok(&["run", "web-server", &format!("port={port}"), &format!("dir={d}")]);
    node.ok(&["run", "system-monitor", "interval=1"]);
    wait_for("the web server to answer", Duration::from_secs(30), || get(port).then_some(()));

    let o = out.display().to_string();
    let note = data.join("note-1.txt").display().to_string();
    let tasks: Vec<Vec<String>> = [
        vec!["file-search", "pattern=note", &format!("path={d}")],
        vec!["file-search", "pattern=foo", &format!("path={d}"), "by=content"],
        vec!["checksum", &format!("path={note}")],
        vec!["checksum", &format!("path={note}"), "algorithm=b2"],
        vec!["disk-usage", &format!("path={d}")],
        vec!["archive", &format!("source={d}"), &format!("dest={o}"), "format=tar.gz"],
        vec!["archive", &format!("source={d}"), &format!("dest={o}"), "format=zip"],
        vec!["password-generator", "length=24"],
    ]
    .iter()
    .map(|t| t.iter().map(|s| (*s).to_owned()).collect())
    .collect();

    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut runs, mut failed, mut requests) = (0u64, 0u64, 0u64);
    let mut next_report = Instant::now();
    while Instant::now() < deadline {
        for t in &tasks {
            let args: Vec<&str> = std::iter::once("run").chain(t.iter().map(String::as_str)).collect();
            let out = node.ctl(&args);
            runs += 1;
            if !out.status.success() {
                failed += 1;
            }
            for _ in 0..5 {
                requests += u64::from(get(port));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_dir_all(&out).and_then(|()| std::fs::create_dir_all(&out));
        let _ = std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777));
        if Instant::now() >= next_report {
            eprintln!(
                "soak: {runs} task runs ({failed} failed), {requests} requests, {} alerts",
                alerts(&node).len()
            );
            next_report = Instant::now() + Duration::from_secs(60);
        }
    }
    let found = alerts(&node);
    eprintln!(
        "soak over {secs} s: {runs} task runs ({failed} failed), {requests} requests, {} alerts",
        found.len()
    );
    // What was judged rather than learned: the cells whose learning ended.
    let mut learned = Vec::new();
    for e in std::fs::read_dir(node.state_dir().join("baselines"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let b = json(&std::fs::read_to_string(e.path()).unwrap_or_default());
        let name = e.file_name().to_string_lossy().trim_end_matches(".json").to_owned();
        eprintln!("  {name}: learned {} after {} ms; {}", b["learned"], b["learned-ms"], b["execs"]);
        if b["learned"] == true {
            learned.push(name);
        }
    }
    assert_eq!(found, Vec::<serde_json::Value>::new(), "{}", node.log());
    if secs >= 600 {
        assert!(
            learned.iter().any(|c| c.starts_with("web-server@")),
            "the web server was judged, not only learned: {learned:?}"
        );
    }
    assert!(
        requests > 0 && runs > failed,
        "the soak did work: {runs} runs, {failed} failed, {requests} requests"
    );
}
