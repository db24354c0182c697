//! `[isolation] network-allow`: a cell on the host's network reaches the
//! destinations its manifest lists and nothing else (cgroup v2 backend, the
//! allow-list program on the real kernel; needs root like the other tiers
//! here). The listeners are this test's own, outside the cell.

mod support;

use std::net::TcpListener;

use support::{catalog, Node};

fn bash_cell(name: &str, script: &str, isolation: &str) -> String {
    format!(
        "[cell]\nname = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"test cell {name}\"\nexec = [\"/bin/bash\", \"-c\", {script:?}]\n\
         [lifecycle]\nkind = \"task\"\nrestart = \"no\"\n[isolation]\n{isolation}\n"
    )
}

#[test]
fn a_cell_reaches_the_listed_destinations_and_is_refused_the_rest() {
    let listed = TcpListener::bind("127.0.0.1:0").expect("listen");
    let other = TcpListener::bind("127.0.0.1:0").expect("listen");
    let (a, b) = (listed.local_addr().unwrap().port(), other.local_addr().unwrap().port());
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{a} && echo listed: connected; \
         exec 4<>/dev/tcp/localhost/{a} && echo by name: connected; \
         (exec 5<>/dev/tcp/127.0.0.1/{b}) 2>/dev/null || echo other: refused"
    );
    // `localhost` is resolved by quantumd when the cell starts.
    let cat = catalog(&[
        (
            "fetcher",
            &bash_cell(
                "fetcher",
                &script,
                &format!("network = \"host\"\nnetwork-allow = [\"tcp:{a}@localhost\"]"),
            ),
        ),
        (
            "open",
            &bash_cell(
                "open",
                &format!("exec 5<>/dev/tcp/127.0.0.1/{b} && echo connected"),
                "network = \"host\"",
            ),
        ),
    ]);
    let node = Node::start(cat.path());

    let out = node.ctl(&["run", "fetcher"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", node.log());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "listed: connected\nby name: connected\nother: refused\n",
        "{}",
        node.log()
    );
    // The same connection from a cell without a list goes through: the
    // refusal above was the list's.
    let out = node.ctl(&["run", "open"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "connected\n", "{out:?}\n{}", node.log());
}
