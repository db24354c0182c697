//! The `quantum-provider` binary as systemd runs it: flags, logs, signals.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{http, json, Tree};
use quantum_provider::protocol::Catalog;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

const BIN: &str = env!("CARGO_BIN_EXE_quantum-provider");

/// Starts the binary on an ephemeral port and returns it with the address it
/// logged, reading its log until then.
async fn start(root: &std::path::Path) -> (Child, SocketAddr, Lines<BufReader<ChildStderr>>) {
    let mut child = Command::new(BIN)
        .args(["--root".as_ref(), root.as_os_str(), "--listen".as_ref(), "127.0.0.1:0".as_ref()])
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listen=").nth(1) {
                return rest.split_whitespace().next().unwrap().parse::<SocketAddr>().unwrap();
            }
        }
        panic!("the provider exited before it listened");
    })
    .await
    .unwrap();
    (child, addr, lines)
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id().unwrap()).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child's.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[tokio::test]
async fn the_binary_serves_the_catalog_survives_sighup_and_stops_cleanly_on_sigterm() {
    let tree = Tree::new();
    tree.put("checksum", "1.0.0", b"bundle");
    let (mut child, addr, mut log) = start(tree.root()).await;
    let catalog = || async { json::<Catalog>(http().get(format!("http://{addr}/v1/catalog")).send().await.unwrap()).await };
    assert_eq!(catalog().await.bundles.len(), 1);

    signal(&child, libc::SIGHUP);
    let hup = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("SIGHUP") {
                return;
            }
        }
    });
    hup.await.unwrap();
    assert_eq!(catalog().await.bundles[0].blake3, blake3::hash(b"bundle").to_hex().to_string());

    signal(&child, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Some(line) = log.next_line().await.unwrap() {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

#[tokio::test]
async fn the_binary_refuses_a_root_it_cannot_read_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let output = Command::new(BIN)
        .arg("--root")
        .arg(&missing)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .await
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot read the bundle directory {}", missing.display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn help_documents_the_layout_endpoints_and_signals() {
    let output = Command::new(BIN).arg("--help").output().await.unwrap();

    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "ROOT/NAME/VERSION.qcb",
        "--root <DIR>",
        "--listen <ADDR>",
        "127.0.0.1:7878",
        "GET /v1/catalog",
        "SIGHUP",
        "SIGTERM",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
