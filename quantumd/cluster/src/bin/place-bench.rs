//! place-bench (`make bench`): how long a placement takes to commit
//! (`Cluster::place`: choosing the node, the placement's JSON, one
//! compare-and-swap transaction) against a bare etcd transaction of the
//! same shape on its own client, alternated in one run, against one etcd
//! member on loopback started here (Debian's etcd-server). Goal (issue 20):
//! at most 1.5x; seed 002: a consensus commit under 100 ms.
//!
//!   place-bench [N]     N commits each way (default 500)

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use quantum_cluster::{Cluster, ClusterConfig, Connection};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(23790)
}

fn quantile(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let dir = std::env::temp_dir().join(format!("place-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (client_port, peer_port) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client_port}");
    let mut etcd = Command::new("etcd")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
        .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("etcd (apt install etcd-server): {e}"))?;
    let result = bench(n, &endpoint, &dir).await;
    let _ = etcd.kill();
    let _ = etcd.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(n: usize, endpoint: &str, dir: &std::path::Path) -> Result<(), String> {
    let file = dir.join("cluster.toml");
    let text = format!(
        "endpoints = [\"{endpoint}\"]\nnode = \"bench\"\ntrusted-nodes = \"{}\"\nprefix = \"/bench\"\n",
        dir.join("nodes").display()
    );
    let config = ClusterConfig::parse(&file, &text).map_err(|e| e.to_string())?;
    let keys = Arc::new(quantum_trust::KeyPair::generate("bench").map_err(|e| e.to_string())?);
    let (events, mut drain) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { while drain.recv().await.is_some() {} });
    let cluster = Cluster::start(config, keys, "bench", events);
    let started = Instant::now();
    while cluster.status().connection != Connection::Joined || cluster.status().nodes.is_empty() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("not joined: {:?}", cluster.status().error));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut bare = Client::connect([endpoint], None).await.map_err(|e| e.to_string())?;
    let (mut placed, mut raw) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t = Instant::now();
        cluster.place("bench", BTreeMap::new()).await?;
        placed.push(t.elapsed());
        let key = format!("/bare/cells/bench-{i:08x}");
        let value = format!(
            "{{\"id\":\"bench-{i:08x}\",\"cell\":\"bench\",\"params\":{{}},\"node\":\"bench\",\"by\":\"bench\",\"placed-usec\":0}}"
        );
        let t = Instant::now();
        let done = bare
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, value, None)]),
            )
            .await
            .map_err(|e| e.to_string())?;
        raw.push(t.elapsed());
        if !done.succeeded() {
            return Err("the bare transaction's compare failed".into());
        }
    }
    let (p50, p99) = (quantile(&mut placed, 0.5), quantile(&mut placed, 0.99));
    let (r50, r99) = (quantile(&mut raw, 0.5), quantile(&mut raw, 0.99));
    println!(
        "placement commit ({n} each, one etcd member on loopback): Cluster::place p50 {p50:.2} ms, p99 {p99:.2} ms vs a bare etcd compare-and-swap p50 {r50:.2} ms, p99 {r99:.2} ms: {:.2}x at p50, {:.2}x at p99 (goal <= 1.5x; seed 002: < 100 ms)",
        p50 / r50,
        p99 / r99
    );
    cluster.leave().await;
    Ok(())
}
