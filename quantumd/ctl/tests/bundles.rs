//! Signed cell bundles run by quantumd, end to end: a bundle signed by a
//! trusted author runs; a tampered artifact, a tampered manifest, an
//! untrusted key, a missing or broken signature are each refused with the
//! check that failed, and each refusal is in the trail. Providers are real
//! `quantum-provider` processes on loopback; one serves a tampered bundle
//! and quantumd goes on to the next.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quantum_trust::Bundle;
use support::{bin, catalog, json, sh_cell, trail, wait_for, Node};

fn ctl(args: &[&str]) {
    let out = Command::new(bin("quantumctl")).args(args).output().expect("quantumctl");
    assert!(out.status.success(), "quantumctl {args:?}: {out:?}");
}

/// An author: a key pair made by `quantumctl bundle keygen`.
struct Author {
    key: PathBuf,
    public: PathBuf,
}

fn author(dir: &Path, name: &str) -> Author {
    let base = dir.join(name);
    ctl(&["bundle", "keygen", "--name", name, base.to_str().unwrap()]);
    Author {
        key: base.with_extension("key"),
        public: base.with_extension("pub"),
    }
}

/// A directory cells can write their marker files into: they run as an
/// unprivileged user, and a temporary directory is its owner's alone.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    dir
}

/// A cell whose artifact is a shell script that writes `marker` then
/// sleeps, signed by `author` into `out`.
fn signed_cell(dir: &Path, name: &str, version: &str, marker: &Path, author: &Author, out: &Path) {
    let work = dir.join(format!("src-{name}-{version}"));
    std::fs::create_dir_all(&work).unwrap();
    let artifact = format!(
        "#!/bin/sh\necho \"hello from {name} {version}\" > {}\nexec sleep 600\n",
        marker.display()
    );
    std::fs::write(work.join("run.sh"), &artifact).unwrap();
    let manifest = format!(
        "[cell]\nname = \"{name}\"\nversion = \"{version}\"\ndescription = \"bundle test cell\"\n\
         artifact = {{ path = \"bin/run.sh\", blake3 = \"{}\" }}\n",
        blake3::hash(artifact.as_bytes()).to_hex()
    );
    std::fs::write(work.join("cell.toml"), manifest).unwrap();
    ctl(&[
        "bundle",
        "sign",
        "--key",
        author.key.to_str().unwrap(),
        "--artifact",
        work.join("run.sh").to_str().unwrap(),
        work.join("cell.toml").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
}

/// Rewrites a bundle through `damage`, as an attacker (or a bad disk) would.
fn damaged(src: &Path, dst: &Path, damage: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(src).unwrap();
    damage(&mut bytes);
    std::fs::write(dst, bytes).unwrap();
}

/// Flips one bit of the first occurrence of `needle` in `bytes`.
fn flip_in(bytes: &mut [u8], needle: &[u8]) {
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the bundle", String::from_utf8_lossy(needle)));
    bytes[at] ^= 1;
}

/// `quantumctl run SOURCE`, expected to be refused: returns its stderr.
fn refused(node: &Node, source: &Path) -> String {
    let out = node.ctl(&["run", source.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{} was not refused: {out:?}", source.display());
    stderr
}

#[test]
fn a_signed_bundle_runs_and_each_broken_one_is_refused_with_the_failed_check_in_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let trusted = d.join("trusted-keys.d");
    std::fs::create_dir_all(&trusted).unwrap();
    let alice = author(d, "alice");
    std::fs::copy(&alice.public, trusted.join("alice.pub")).unwrap();
    let mallory = author(d, "mallory");

    let shared = shared_dir();
    let marker = shared.path().join("hello.out");
    let good = d.join("hello.qcb");
    signed_cell(d, "hello", "1.0.0", &marker, &alice, &good);

    let cat = catalog(&[]);
    let node = Node::start_configured(cat.path(), &format!("trusted-keys = {:?}\n", trusted.display().to_string()));

    // Signed by a trusted author: it runs, from its unpacked copy.
    let started = json(&node.ok(&["run", good.to_str().unwrap(), "--json"]));
    assert_eq!(started["cell"], "hello", "{started}");
    let said = wait_for("the bundle's artifact to run", Duration::from_secs(20), || {
        std::fs::read_to_string(&marker).ok().filter(|s| !s.is_empty())
    });
    assert_eq!(said.trim(), "hello from hello 1.0.0");
    assert_eq!(node.live_cgroups().len(), 1);
    let entries = trail(&node);
    let verified = entries.iter().find(|e| e["action"] == "bundle").expect("a bundle entry");
    let detail = verified["detail"].as_str().unwrap();
    assert!(detail.contains("signed by alice"), "{verified}");
    let bundle_hash = blake3::hash(&std::fs::read(&good).unwrap()).to_hex();
    assert!(detail.contains(bundle_hash.as_str()), "{verified}");
    node.ok(&["stop", "hello"]);

    // Each way a bundle can be broken, and the check that must say so.
    let bundle = || Bundle::read_file(&good).unwrap();
    // (name, how to make the broken bundle at a path, what the refusal says)
    type Case<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "tampered-artifact",
            Box::new(|p| damaged(&good, p, |b| flip_in(b, b"hello from"))),
            "artifact hash mismatch",
        ),
        (
            "tampered-manifest",
            Box::new(|p| damaged(&good, p, |b| flip_in(b, b"bundle test cell"))),
            "manifest hash mismatch",
        ),
        (
            "wrong-key",
            Box::new(|p| signed_cell(d, "hello", "1.0.0", &marker, &mallory, p)),
            "untrusted key",
        ),
        (
            "no-ml-dsa",
            Box::new(|p| {
                let mut b = bundle();
                b.signature_mut().unwrap().ml_dsa = None;
                std::fs::write(p, b.to_bytes()).unwrap();
            }),
            "missing ML-DSA-65 signature",
        ),
        (
            "no-ed25519",
            Box::new(|p| {
                let mut b = bundle();
                b.signature_mut().unwrap().ed25519 = None;
                std::fs::write(p, b.to_bytes()).unwrap();
            }),
            "missing Ed25519 signature",
        ),
        (
            "bad-ml-dsa",
            Box::new(|p| {
                let mut b = bundle();
                b.signature_mut().unwrap().ml_dsa.as_mut().unwrap()[100] ^= 1;
                std::fs::write(p, b.to_bytes()).unwrap();
            }),
            "bad ML-DSA-65 signature",
        ),
        (
            "unsigned",
            Box::new(|p| {
                let b = bundle();
                let plain = Bundle::create(b.manifest().to_vec(), b.artifact().to_vec()).unwrap();
                std::fs::write(p, plain.to_bytes()).unwrap();
            }),
            "not signed",
        ),
    ];
    std::fs::remove_file(&marker).unwrap();
    for (name, make, check) in &cases {
        let path = d.join(format!("{name}.qcb"));
        make(&path);
        let why = refused(&node, &path);
        assert!(why.contains(check), "{name}: the refusal must say \"{check}\": {why}");
        let last = trail(&node).pop().unwrap();
        assert_eq!(last["action"], "refuse", "{name}: {last}");
        assert_eq!(last["cell"], path.to_str().unwrap(), "{name}: {last}");
        assert!(last["error"].as_str().unwrap().contains(check), "{name}: {last}");
    }
    assert!(!marker.exists(), "a refused bundle ran");
    assert!(node.live_cgroups().is_empty());

    // The manifest alone, with the artifact beside it: nothing vouches for
    // the file, so it does not run either.
    let bare = d.join("src-hello-1.0.0");
    std::fs::create_dir_all(bare.join("bin")).unwrap();
    std::fs::copy(bare.join("run.sh"), bare.join("bin/run.sh")).unwrap();
    let why = refused(&node, &bare.join("cell.toml"));
    assert!(why.contains("artifacts run only from a signed bundle"), "{why}");

    // A root cell from an arbitrary path is refused; the catalog's may.
    let root_cell = d.join("rooted");
    std::fs::create_dir_all(&root_cell).unwrap();
    std::fs::write(
        root_cell.join("cell.toml"),
        sh_cell("rooted", "exec sleep 600", "[isolation]\nuser = \"root\""),
    )
    .unwrap();
    let why = refused(&node, &root_cell.join("cell.toml"));
    assert!(why.contains("only catalog cells and signed bundles may"), "{why}");

    let report = json(&node.ok(&["trail", "verify", "--json"]));
    assert_eq!(report["ok"], true, "{report}");
}

/// A `quantum-provider` on an ephemeral loopback port, serving `root`.
struct Provider {
    child: Child,
    url: String,
}

impl Provider {
    fn start(root: &Path) -> Provider {
        let mut child = Command::new(bin("quantum-provider"))
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stderr(Stdio::piped())
            .spawn()
            .expect("quantum-provider");
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok);
        let addr: SocketAddr = lines
            .find_map(|line| line.split("listen=").nth(1)?.split_whitespace().next()?.parse().ok())
            .expect("the provider logs the address it listens on");
        // Keep draining its log: a closed pipe would fail its next write.
        std::thread::spawn(move || lines.for_each(drop));
        Provider {
            child,
            url: format!("http://{addr}/"),
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_provider_serving_a_tampered_bundle_is_skipped_and_the_next_one_serves_the_cell() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let trusted = d.join("trusted-keys.d");
    std::fs::create_dir_all(&trusted).unwrap();
    let alice = author(d, "alice");
    std::fs::copy(&alice.public, trusted.join("alice.pub")).unwrap();

    let shared = shared_dir();
    let marker = shared.path().join("fetched.out");
    let good = d.join("good.qcb");
    signed_cell(d, "fetched", "1.0.0", &marker, &alice, &good);
    // Two mirrors of the same catalog; the first one's copy lost a bit.
    let (bad_root, good_root) = (d.join("mirror-bad"), d.join("mirror-good"));
    for root in [&bad_root, &good_root] {
        std::fs::create_dir_all(root.join("fetched")).unwrap();
    }
    std::fs::copy(&good, good_root.join("fetched/1.0.0.qcb")).unwrap();
    damaged(&good, &bad_root.join("fetched/1.0.0.qcb"), |b| flip_in(b, b"hello from"));
    let bad = Provider::start(&bad_root);
    let mirror = Provider::start(&good_root);

    let cat = catalog(&[]);
    let config = format!(
        "trusted-keys = {:?}\nproviders = [{:?}, {:?}]\n",
        trusted.display().to_string(),
        bad.url,
        mirror.url
    );
    let node = Node::start_configured(cat.path(), &config);

    // Not in the catalog: fetched, the first provider's copy fails
    // verification, the second one's runs.
    let started = json(&node.ok(&["run", "fetched", "--json"]));
    assert_eq!(started["cell"], "fetched", "{started}");
    let said = wait_for("the fetched artifact to run", Duration::from_secs(20), || {
        std::fs::read_to_string(&marker).ok().filter(|s| !s.is_empty())
    });
    assert_eq!(said.trim(), "hello from fetched 1.0.0");
    let entries = trail(&node);
    let verified = entries.iter().find(|e| e["action"] == "bundle").expect("a bundle entry");
    let detail = verified["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("downloaded from {}", mirror.url)), "{detail}");
    assert!(
        detail.contains(&bad.url) && detail.contains("artifact hash mismatch"),
        "the failover and its reason must be recorded: {detail}"
    );
    assert!(node.log().contains("provider failed"), "{}", node.log());
    node.ok(&["stop", "fetched"]);

    // A version no provider has: refused, naming what each said.
    let out = node.ctl(&["run", "fetched@2.0.0"]);
    assert_eq!(out.status.code(), Some(1));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("no provider delivered fetched 2.0.0"), "{why}");
    assert!(why.contains("blacklisted"), "the bad provider must still be skipped: {why}");
    assert_eq!(trail(&node).pop().unwrap()["action"], "refuse");

    // Both providers gone: the verified copy in the cache still runs.
    drop(bad);
    drop(mirror);
    std::fs::remove_file(&marker).unwrap();
    node.ok(&["run", "fetched"]);
    wait_for("the cached bundle to run", Duration::from_secs(20), || {
        std::fs::read_to_string(&marker).ok().filter(|s| !s.is_empty())
    });
    let last_bundle = trail(&node).into_iter().rev().find(|e| e["action"] == "bundle").unwrap();
    assert!(
        last_bundle["detail"].as_str().unwrap().contains("served from the cache"),
        "{last_bundle}"
    );
}
