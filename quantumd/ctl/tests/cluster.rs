//! The cell network on one machine: three real etcd members (Debian's
//! etcd-server) on loopback and QuantumOS nodes, each a real quantumd on
//! its own bus with its own node identity, joining through
//! /etc/quantumos/cluster.toml's equivalent.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{catalog, free_port, json, trail, wait_for, Node};

/// Three etcd members, killed on drop.
struct Etcd {
    members: Vec<Option<Child>>,
    clients: Vec<u16>,
    commands: Vec<Command>,
    dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let commands = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let mut cmd = Command::new("etcd");
                cmd.arg(format!("--name=m{i}"))
                    .arg(format!("--data-dir={}", dir.path().join(format!("m{i}")).display()))
                    .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                    .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
                    .arg(format!("--initial-cluster={}", initial.join(",")))
                    .arg(format!("--initial-cluster-token=qtest-{}", std::process::id()))
                    .arg("--initial-cluster-state=new")
                    .stdout(Stdio::null());
                cmd
            })
            .collect();
        let mut etcd = Etcd {
            members: (0..3).map(|_| None).collect(),
            clients: ports.iter().map(|(c, _)| *c).collect(),
            commands,
            dir,
        };
        for i in 0..3 {
            etcd.start_member(i);
        }
        for &port in &etcd.clients {
            wait_for("an etcd member to be healthy", Duration::from_secs(30), || {
                healthy(port).then_some(())
            });
        }
        etcd
    }

    /// Starts member `i` (again: its data directory keeps what it had).
    fn start_member(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("m{i}.log")))
            .expect("log");
        let child = self.commands[i]
            .stderr(log)
            .spawn()
            .expect("etcd (apt install etcd-server; make deps)");
        self.members[i] = Some(child);
    }

    fn endpoints(&self) -> Vec<String> {
        self.clients.iter().map(|p| format!("http://127.0.0.1:{p}")).collect()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// etcd's `/health` on its client port.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.contains("\"health\":\"true\"")
}

fn cluster_file(dir: &Path, node: &str, endpoints: &[String], trusted: &Path) -> PathBuf {
    let path = dir.join(format!("cluster-{node}.toml"));
    std::fs::write(
        &path,
        format!(
            "endpoints = {endpoints:?}\nnode = \"{node}\"\nlease-ttl = 2\ntrusted-nodes = \"{}\"\nprefix = \"/qtest-{}\"\n",
            trusted.display(),
            std::process::id()
        ),
    )
    .expect("cluster file");
    path
}

fn status(node: &Node) -> serde_json::Value {
    json(&node.ok(&["cluster", "status", "--json"]))
}

fn names(status: &serde_json::Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect()
}

fn cluster_trail(node: &Node) -> Vec<String> {
    trail(node)
        .into_iter()
        .filter(|e| e["action"] == "cluster")
        .filter_map(|e| e["detail"].as_str().map(str::to_owned))
        .collect()
}

/// Starts a node on its own (to make its identity), and returns it with its
/// public keys.
fn node_with_key(cat: &Path) -> (Node, String) {
    let node = Node::start_configured(cat, "cluster = \"/nonexistent/cluster.toml\"\n");
    let key = node.ok(&["cluster", "key"]);
    assert!(key.starts_with("# QuantumOS public key"), "not a public key: {key}");
    (node, key)
}

#[test]
fn nodes_find_each_other_through_etcd_a_dead_one_is_gone_within_the_ttl_and_an_untrusted_one_is_refused() {
    let mut etcd = Etcd::start();
    let cat = catalog(&[]);
    let files = tempfile::tempdir().expect("tempdir");
    let trusted = files.path().join("nodes");
    std::fs::create_dir(&trusted).expect("mkdir");

    // Three nodes the administrator trusts (their .pub files, as
    // `quantumctl cluster key` prints them), and a fourth no one does.
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3", "n4"] {
        let (mut node, key) = node_with_key(cat.path());
        if name != "n4" {
            std::fs::write(trusted.join(format!("{name}.pub")), key).expect("trust");
        }
        let file = cluster_file(files.path(), name, &etcd.endpoints(), &trusted);
        node.kill_daemon();
        node.set_config(&format!("cluster = \"{}\"\n", file.display()));
        nodes.push(node);
    }
    let started = Instant::now();
    for node in &mut nodes[..3] {
        node.start_daemon();
    }
    for node in &nodes[..3] {
        wait_for("three nodes in every view", Duration::from_secs(30), || {
            let s = status(node);
            (s["state"] == "joined" && names(&s) == ["n1", "n2", "n3"]).then_some(())
        });
    }
    println!(
        "3 nodes joined and saw each other {:.1} s after their start",
        started.elapsed().as_secs_f64()
    );
    let s = status(&nodes[0]);
    assert_eq!(s["etcd-members"].as_array().map_or(0, Vec::len), 3, "{s}");
    assert_eq!(
        s["etcd-members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["leader"] == true)
            .count(),
        1,
        "one leader: {s}"
    );
    let me = &s["nodes"][0];
    assert_eq!(me["this-node"], true);
    assert!(
        me["cpus"].as_u64() >= Some(1) && me["memory-bytes"].as_u64() > Some(0),
        "capacity: {me}"
    );
    let text = nodes[0].ok(&["cluster", "status"]);
    assert!(
        text.contains("state:     joined") && text.contains("n1 *") && text.contains("n3"),
        "{text}"
    );

    // The untrusted node registers too; the others refuse its record.
    nodes[3].start_daemon();
    for node in &nodes[..3] {
        wait_for("n4 refused", Duration::from_secs(20), || {
            let s = status(node);
            let refused = s["refused"].as_array().cloned().unwrap_or_default();
            refused
                .iter()
                .any(|r| r["node"] == "n4" && r["why"].as_str().is_some_and(|w| w.contains("not among the trusted nodes")))
                .then_some(())
        });
        assert_eq!(names(&status(node)), ["n1", "n2", "n3"], "n4 is not believed");
    }

    // A node that dies (kill -9: no goodbye) is gone from every view once
    // its lease runs out.
    nodes[2].kill_daemon();
    let died = Instant::now();
    for node in &nodes[..2] {
        wait_for("n3 gone", Duration::from_secs(10), || {
            (!names(&status(node)).contains(&"n3".to_owned())).then_some(())
        });
    }
    let gone = died.elapsed();
    println!(
        "a killed node was gone from the others' views {:.2} s later (lease TTL 2 s)",
        gone.as_secs_f64()
    );
    assert!(gone < Duration::from_secs(5), "seed 002's 5 s: {gone:?}");

    // A node that stops leaves at once (its lease revoked).
    nodes[1].stop_daemon();
    let stopped = Instant::now();
    wait_for("n2 gone", Duration::from_secs(10), || {
        (!names(&status(&nodes[0])).contains(&"n2".to_owned())).then_some(())
    });
    println!("a stopped node was gone {:.2} s later", stopped.elapsed().as_secs_f64());

    assert!(stopped.elapsed() < Duration::from_secs(1), "leaving revokes the lease");

    // One etcd member of three lost: the cluster goes on (a node joins).
    etcd.kill(0);
    nodes[2].start_daemon();
    wait_for("n3 back with one etcd member down", Duration::from_secs(30), || {
        let s = status(&nodes[0]);
        (s["state"] == "joined" && names(&s) == ["n1", "n3"]).then_some(())
    });

    let entries = cluster_trail(&nodes[0]);
    for want in ["joined", "node up n2", "refused node n4", "node down n3", "node down n2"] {
        assert!(
            entries.iter().any(|e| e.starts_with(want)),
            "no {want:?} in n1's trail: {entries:?}"
        );
    }
}

/// Kills a node as a power cut would: quantumd and every cell it ran.
fn crash(node: &mut Node) {
    node.kill_daemon();
    let _ = std::fs::write(node.cgroup_root.join("cgroup.kill"), "1");
}

/// Placement id -> the node whose quantumd runs it, from every live node's
/// own word (its status names the instance it runs for a placement); and
/// how many sleepers each node runs in all.
fn held(nodes: &[&Node]) -> (std::collections::BTreeMap<String, Vec<String>>, Vec<usize>) {
    let mut by_id: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut running = Vec::new();
    for node in nodes {
        let s = status(node);
        for p in s["placements"].as_array().into_iter().flatten() {
            if p["instance"].as_str().is_some_and(|i| !i.is_empty()) {
                by_id
                    .entry(p["id"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .push(s["node"].as_str().unwrap_or_default().to_owned());
            }
        }
        running.push(
            node.list()
                .iter()
                .filter(|c| c["cell"] == "sleeper" && c["state"] == "running")
                .count(),
        );
    }
    (by_id, running)
}

#[test]
fn thirty_placed_cells_run_once_each_and_a_lost_nodes_cells_are_placed_again_within_five_seconds() {
    let mut etcd = Etcd::start();
    let cat = catalog(&[(
        "sleeper",
        "[cell]\nname = \"sleeper\"\nversion = \"1.0.0\"\ndescription = \"sleeps\"\nexec = [\"/bin/sleep\", \"600\"]\n\
         [resources]\nmemory-min = \"0\"\nmemory-max = \"16M\"\n[lifecycle]\nkind = \"service\"\nrestart = \"no\"\nidle-timeout = \"0\"\n",
    )]);
    let files = tempfile::tempdir().expect("tempdir");
    let trusted = files.path().join("nodes");
    std::fs::create_dir(&trusted).expect("mkdir");
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let (mut node, key) = node_with_key(cat.path());
        std::fs::write(trusted.join(format!("{name}.pub")), key).expect("trust");
        let file = cluster_file(files.path(), name, &etcd.endpoints(), &trusted);
        node.kill_daemon();
        node.set_config(&format!("cluster = \"{}\"\n", file.display()));
        node.start_daemon();
        nodes.push(node);
    }
    for node in &nodes {
        wait_for("three nodes", Duration::from_secs(30), || {
            (names(&status(node)) == ["n1", "n2", "n3"]).then_some(())
        });
    }

    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let p = json(&nodes[0].ok(&["cluster", "place", "sleeper", "--json"]));
        latencies.push(t.elapsed());
        ids.push(p["id"].as_str().expect("id").to_owned());
    }
    latencies.sort();
    println!(
        "30 placements through quantumctl: p50 {:.1} ms, max {:.1} ms (D-Bus call, compare-and-swap in etcd)",
        latencies[15].as_secs_f64() * 1e3,
        latencies[29].as_secs_f64() * 1e3
    );
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for("30 placements running, once each", Duration::from_secs(60), || {
        let (by_id, running) = held(&all);
        (by_id.len() == 30 && by_id.values().all(|n| n.len() == 1) && running.iter().sum::<usize>() == 30).then_some(())
    });
    let (by_id, running) = held(&all);
    println!("spread over n1, n2, n3: {running:?}");
    assert!(running.iter().all(|&r| r > 0), "every node runs some: {running:?}");
    assert_eq!(by_id.keys().cloned().collect::<Vec<_>>(), {
        let mut sorted = ids.clone();
        sorted.sort();
        sorted
    });

    // n3 is lost with its cells; n1 and n2 take them over.
    crash(&mut nodes[2]);
    let lost = Instant::now();
    let survivors: Vec<&Node> = nodes[..2].iter().collect();
    wait_for("all 30 running on n1 and n2, once each", Duration::from_secs(30), || {
        let (by_id, running) = held(&survivors);
        (by_id.len() == 30 && by_id.values().all(|n| n.len() == 1) && running.iter().sum::<usize>() == 30).then_some(())
    });
    let took = lost.elapsed();
    let (_, running) = held(&survivors);
    println!(
        "a lost node's cells ran again on the others {:.2} s after it died (lease TTL 2 s); n1, n2 now run {running:?}",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(5), "seed 002: re-placed within 5 s, took {took:?}");
    let moved: Vec<String> = cluster_trail(&nodes[0])
        .into_iter()
        .chain(cluster_trail(&nodes[1]))
        .filter(|e| e.starts_with("re-placed "))
        .collect();
    assert!(!moved.is_empty(), "the re-placements are in the trail");

    // Removing a placement stops its cell.
    let id = ids[0].clone();
    nodes[0].ok(&["cluster", "unplace", &id]);
    wait_for("29 running", Duration::from_secs(10), || {
        let (by_id, running) = held(&survivors);
        (!by_id.contains_key(&id) && running.iter().sum::<usize>() == 29).then_some(())
    });

    // etcd gone altogether: no node can tell whether the others took its
    // cells, so after the lease's TTL each stops them (fencing) rather
    // than risk running them twice; once etcd is back, every placement
    // runs again, once.
    for i in 0..3 {
        etcd.kill(i);
    }
    let cut = Instant::now();
    wait_for("every node fenced", Duration::from_secs(15), || {
        (held(&survivors).1.iter().sum::<usize>() == 0).then_some(())
    });
    println!(
        "cut off from etcd, the nodes stopped their placed cells {:.2} s later",
        cut.elapsed().as_secs_f64()
    );
    for i in 0..3 {
        etcd.start_member(i);
    }
    wait_for("29 running again, once each", Duration::from_secs(60), || {
        let (by_id, running) = held(&survivors);
        (by_id.len() == 29 && by_id.values().all(|n| n.len() == 1) && running.iter().sum::<usize>() == 29).then_some(())
    });
    assert!(
        cluster_trail(&nodes[0]).iter().any(|e| e.starts_with("fenced: ")),
        "the fencing is in the trail"
    );
}

#[test]
fn without_a_cluster_file_a_node_is_on_its_own_and_a_bad_one_is_named_not_fatal() {
    let cat = catalog(&[]);
    let files = tempfile::tempdir().expect("tempdir");
    let mut node = Node::start_configured(cat.path(), &format!("cluster = \"{}\"\n", files.path().join("none.toml").display()));
    let s = status(&node);
    assert_eq!(s["state"], "standalone");
    assert!(node.ok(&["cluster", "status"]).contains("in no cluster"));

    let bad = files.path().join("bad.toml");
    std::fs::write(&bad, "endpoints = [\"http://127.0.0.1:1\"]\nnode = \"n1\"\nlease-tll = 3\n").expect("write");
    node.kill_daemon();
    node.set_config(&format!("cluster = \"{}\"\n", bad.display()));
    node.start_daemon();
    let s = status(&node);
    assert_eq!(s["state"], "misconfigured");
    let error = s["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("{}:3:1: error: unknown field `lease-tll`", bad.display())),
        "{error}"
    );
    // The node still runs cells.
    assert!(node.ctl(&["list"]).status.success());
}
