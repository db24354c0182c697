//! Cell 0 IPC: cells talk over streams quantumd's broker hands out, only
//! as their capability tokens allow (the real kernel's SO_PEERCRED and
//! cgroups, the cgroup v2 backend; the VM tier does the same under
//! systemd, with the broker socket from quantumd-channels.socket and the
//! token as a LoadCredential=).
//!
//! The cells run `quantum-cell-echo`, the SDK's example pair: `serve echo`
//! on one side, `ping echo-server/echo` (or `probe`) on the other.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{bin, catalog, json, open_dir, trail, wait_for, Node};

/// The example binary, copied where the cells' users may run it.
fn echo_binary(dir: &Path) -> String {
    let to = dir.join("quantum-cell-echo");
    std::fs::copy(bin("quantum-cell-echo"), &to).expect("copy quantum-cell-echo (cargo build --workspace --bins)");
    to.display().to_string()
}

fn server(exe: &str) -> String {
    format!(
        "[cell]\nname = \"echo-server\"\nversion = \"1.0.0\"\ndescription = \"echoes frames\"\nexec = [\"{exe}\", \"serve\", \"echo\"]\n\
         [lifecycle]\nkind = \"service\"\nrestart = \"no\"\n[provides]\nchannels = [\"echo\"]\n"
    )
}

/// A task that runs `args` against the server's channel.
fn client(name: &str, exe: &str, args: &[&str], uses: &str) -> String {
    let argv: Vec<String> = std::iter::once(exe.to_owned())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect();
    format!(
        "[cell]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"talks to the echo server\"\nexec = {argv:?}\n\
         [lifecycle]\nkind = \"task\"\nrestart = \"no\"\n[uses]\nchannels = [{uses}]\n"
    )
}

/// A task that uses echo-server/echo.
fn uses_echo(name: &str, exe: &str, args: &[&str]) -> String {
    client(name, exe, args, "\"echo-server/echo\"")
}

fn run(node: &Node, cell: &str) -> String {
    json(&node.ok(&["run", "--json", cell]))["instance"]
        .as_str()
        .expect("instance")
        .to_owned()
}

fn ended(node: &Node, id: &str) -> bool {
    node.list()
        .iter()
        .any(|c| c["instance"] == id && c["state"] != "running" && c["state"] != "starting")
}

fn wait_ended(node: &Node, id: &str, within: Duration) {
    wait_for(&format!("{id} to end"), within, || ended(node, id).then_some(()));
}

fn listening(node: &Node) -> Vec<serde_json::Value> {
    json(&node.ok(&["channels", "--json"]))["listening"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn streams(node: &Node) -> Vec<serde_json::Value> {
    json(&node.ok(&["channels", "--json"]))["streams"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn channel_entries(node: &Node) -> Vec<String> {
    trail(node)
        .into_iter()
        .filter(|e| e["action"] == "channel")
        .map(|e| e["detail"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn start_server(node: &Node) -> String {
    let id = run(node, "echo-server");
    wait_for("the server to listen", Duration::from_secs(20), || {
        listening(node).iter().any(|l| l["instance"] == id.as_str()).then_some(())
    });
    id
}

#[test]
fn two_cells_talk_through_a_brokered_stream_and_the_trail_records_who_and_what() {
    let bins = open_dir();
    let exe = echo_binary(bins.path());
    let cat = catalog(&[
        ("echo-server", &server(&exe)),
        (
            "echo-client",
            &uses_echo("echo-client", &exe, &["ping", "echo-server/echo", "200", "64"]),
        ),
    ]);
    let node = Node::start(cat.path());
    let server = start_server(&node);
    assert_eq!(
        listening(&node),
        [serde_json::json!({"instance": server, "channel": "echo-server/echo"})]
    );

    let client = run(&node, "echo-client");
    wait_ended(&node, &client, Duration::from_secs(30));
    assert!(node.instances("exited").contains(&client), "{:?}\n{}", node.list(), node.log());
    let out = node.ok(&["logs", &client]);
    let figures = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no figures in {out}"));
    let figures = json(figures);
    assert_eq!(figures["path"], "channel");
    assert_eq!(figures["round_trips"], 200);
    assert!(out.contains(&format!("connected to {server} (echo-server)")), "{out}");

    let entries = channel_entries(&node);
    assert!(entries.contains(&format!("listen {server}: echo-server/echo")), "{entries:?}");
    assert!(
        entries.contains(&format!("connect {client} -> {server}: echo-server/echo")),
        "{entries:?}"
    );
    // The client's end went when it exited: quantumd let go of the stream.
    wait_for("the stream to be let go of", Duration::from_secs(10), || {
        streams(&node).is_empty().then_some(())
    });
}

#[test]
fn a_forged_expired_foreign_or_stolen_token_is_refused_and_recorded() {
    let bins = open_dir();
    let exe = echo_binary(bins.path());
    let probe = |name: &str, channel: &str, how: &str| uses_echo(name, &exe, &["probe", channel, how]);
    let cat = catalog(&[
        ("echo-server", &server(&exe)),
        ("genuine", &probe("genuine", "echo-server/echo", "as-is")),
        ("forger", &probe("forger", "echo-server/echo", "forged")),
        ("stale", &probe("stale", "echo-server/echo", "expired")),
        ("wanderer", &probe("wanderer", "echo-server/admin", "as-is")),
        (
            "keeper",
            "[cell]\nname = \"keeper\"\nversion = \"1.0.0\"\ndescription = \"holds its token\"\nexec = [\"/bin/sleep\", \"60\"]\n\
             [uses]\nchannels = [\"echo-server/echo\"]\n",
        ),
    ]);
    let node = Node::start(cat.path());
    start_server(&node);

    let answer = |cell: &str| {
        let id = run(&node, cell);
        wait_ended(&node, &id, Duration::from_secs(30));
        let out = node.ok(&["logs", &id]);
        (
            id,
            out.lines()
                .find(|l| l.starts_with("connected") || l.starts_with("refused"))
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let (_, genuine) = answer("genuine");
    assert_eq!(genuine, "connected");
    let (forger, forged) = answer("forger");
    assert!(forged.starts_with("refused: the token does not verify"), "{forged}");
    let (stale, expired) = answer("stale");
    assert!(expired.starts_with("refused: the token expired"), "{expired}");
    let (wanderer, foreign) = answer("wanderer");
    assert!(
        foreign.starts_with("refused: the token does not use channel \"echo-server/admin\""),
        "{foreign}"
    );

    // A genuine token, read out of its cell's environment by someone on the
    // node (root here), is refused: the asking process is in no cell's
    // cgroup.
    let keeper = run(&node, "keeper");
    let token = wait_for("the keeper's token", Duration::from_secs(10), || {
        let pid = node.list().iter().find(|c| c["instance"] == keeper.as_str())?["pid"].as_u64()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"QUANTUM_CHANNEL_TOKEN="))
            .map(|t| String::from_utf8_lossy(t).into_owned())
    });
    let socket = node.channels.path().join("channels.sock");
    let stolen = quantum_cell::Channels::new(&socket, token).connect("echo-server/echo");
    match stolen {
        Err(quantum_cell::Error::Refused(why)) => assert!(why.starts_with("only cells may use channels"), "{why}"),
        other => panic!("a stolen token was not refused: {other:?}"),
    }

    let entries = channel_entries(&node);
    for (who, why) in [
        (forger.as_str(), "does not verify"),
        (stale.as_str(), "expired"),
        (wanderer.as_str(), "does not use channel"),
        ("pid ", "only cells may use channels"),
    ] {
        assert!(
            entries.iter().any(|e| e.starts_with(&format!("refused: {who}")) && e.contains(why)),
            "no refusal of {who} ({why}) in {entries:?}"
        );
    }
    node.ok(&["stop", &keeper]);
}

#[test]
fn revoking_an_instance_closes_its_open_stream_and_refuses_it_from_then_on() {
    let bins = open_dir();
    let exe = echo_binary(bins.path());
    let cat = catalog(&[
        ("echo-server", &server(&exe)),
        (
            "echo-client",
            &uses_echo("echo-client", &exe, &["ping", "echo-server/echo", "10", "64", "--until-closed"]),
        ),
        (
            "other-client",
            &uses_echo("other-client", &exe, &["ping", "echo-server/echo", "10", "64", "--until-closed"]),
        ),
    ]);
    let node = Node::start(cat.path());
    let server = start_server(&node);
    let client = run(&node, "echo-client");
    let other = run(&node, "other-client");
    wait_for("both streams", Duration::from_secs(20), || {
        (streams(&node).len() == 2).then_some(())
    });

    let said = node.ok(&["channels", "revoke", &client]);
    assert_eq!(said.trim(), format!("revoked the channels of {client}; 1 open stream closed"));
    // The client sees its stream end and exits; the other keeps talking.
    wait_ended(&node, &client, Duration::from_secs(10));
    let out = node.ok(&["logs", &client]);
    assert!(out.contains(&format!("the stream to {server} was closed")), "{out}");
    let left = streams(&node);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["consumer"], other.as_str());
    assert!(!ended(&node, &other));

    let entries = channel_entries(&node);
    assert!(
        entries
            .iter()
            .any(|e| e.starts_with(&format!("revoke {client}: all channels; 1 open stream closed"))),
        "{entries:?}"
    );

    // Stopping the provider ends the streams it served, although quantumd
    // holds a copy of their ends.
    node.ok(&["stop", &server]);
    wait_ended(&node, &other, Duration::from_secs(10));
    let out = node.ok(&["logs", &other]);
    assert!(out.contains(&format!("the stream to {server} was closed")), "{out}");
    wait_for("no streams", Duration::from_secs(10), || streams(&node).is_empty().then_some(()));
}

#[test]
fn a_cell_without_a_listener_is_told_so_and_a_cell_without_channels_gets_no_token() {
    let bins = open_dir();
    let exe = echo_binary(bins.path());
    let cat = catalog(&[
        (
            "echo-client",
            &uses_echo("echo-client", &exe, &["probe", "echo-server/echo", "as-is"]),
        ),
        (
            "plain",
            &client("plain", &exe, &["probe", "echo-server/echo", "as-is"], "").replace("[uses]\nchannels = []\n", ""),
        ),
    ]);
    let node = Node::start(cat.path());
    let id = run(&node, "echo-client");
    wait_ended(&node, &id, Duration::from_secs(30));
    let out = node.ok(&["logs", &id]);
    assert!(
        out.contains("refused: no instance of echo-server is listening on echo-server/echo"),
        "{out}"
    );

    let id = run(&node, "plain");
    wait_ended(&node, &id, Duration::from_secs(30));
    let out = node.ok(&["logs", &id]);
    assert!(out.contains("was not given a channel token"), "{out}");
}

/// 256 cells: 128 echo servers and 128 clients, each client doing its round
/// trips over its own stream at the same time as the others.
#[test]
fn two_hundred_fifty_six_cells_talk_in_pairs_at_once() {
    const PAIRS: usize = 128;
    let bins = open_dir();
    let exe = echo_binary(bins.path());
    let cat = catalog(&[
        ("echo-server", &server(&exe)),
        (
            "echo-client",
            &uses_echo("echo-client", &exe, &["ping", "echo-server/echo", "100", "64"]),
        ),
    ]);
    // `list` keeps the last 64 ended instances by default: keep them all.
    let node = Node::start_configured(cat.path(), "keep-ended = 512\n");
    for _ in 0..PAIRS {
        run(&node, "echo-server");
    }
    wait_for("128 listeners", Duration::from_secs(120), || {
        (listening(&node).len() == PAIRS).then_some(())
    });
    let clients: Vec<String> = (0..PAIRS).map(|_| run(&node, "echo-client")).collect();
    wait_for("128 clients to end", Duration::from_secs(300), || {
        clients.iter().all(|c| ended(&node, c)).then_some(())
    });
    let exited = node.instances("exited");
    let failed: Vec<&String> = clients.iter().filter(|c| !exited.contains(c)).collect();
    assert!(failed.is_empty(), "clients that did not exit 0: {failed:?}\n{}", node.log());
    // Round robin: every server was somebody's peer.
    let entries = channel_entries(&node);
    let served: std::collections::BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.starts_with("connect "))
        .filter_map(|e| e.split(" -> ").nth(1)?.split(':').next())
        .collect();
    assert_eq!(served.len(), PAIRS, "servers that got a stream: {}", served.len());
}
