//! trail-bench: what batch sealing buys, measured against the obvious
//! alternative in the same run, and how long `verify` takes on a million
//! entries.
//!
//! `cargo run --release -p quantum-trail --bin trail-bench [DIR]`
//!
//! DIR (default: a fresh directory under $TMPDIR) should be on the disk the
//! trail lives on in production, since seals fsync. Everything written there
//! is removed at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use quantum_trail::mldsa::{MlDsa65Keyring, MlDsa65Signer};
use quantum_trail::{verify, Action, Config, Digest, NewEntry, Signer, Trail};

const BATCHED: u64 = 200_000;
const SIGN_EACH: u64 = 2_000;
const SEAL_EACH: u64 = 300;
const VERIFY: u64 = 1_000_000;
/// The seal timer quantumd runs.
const SEAL_INTERVAL: Duration = Duration::from_millis(100);

fn main() -> Result<()> {
    let root = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("trail-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run(&root);
    let cleanup = std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()));
    result.and(cleanup)
}

fn run(root: &Path) -> Result<()> {
    let (signer, public) = MlDsa65Signer::generate();
    let mut keyring = MlDsa65Keyring::new();
    keyring.add(&public)?;
    // One key for every trail in the run, as on a node.
    let secret_signer = || -> Box<dyn Signer + Send> { Box::new(signer.clone()) };
    println!(
        "trail-bench: ML-DSA-65 seals, entries like quantumd's (actor, action, cell, manifest hash), data in {}",
        root.display()
    );

    // Batched: what quantumd does.
    let dir = root.join("batched");
    let (mut trail, _) = Trail::open(&dir, Config::default(), secret_signer())?;
    let (elapsed, seals) = append_batched(&mut trail, BATCHED)?;
    trail.close()?;
    let batched = rate(BATCHED, elapsed);
    println!(
        "append, sealed every 4096 entries or 100 ms:    {:>9.0} appends/s  ({BATCHED} entries, {seals} timer seals, {:.2} s)",
        batched,
        elapsed.as_secs_f64()
    );

    // The alternative without seals: one ML-DSA signature per entry (over the
    // chain head after it), fsync still batched.
    let dir = root.join("sign-each");
    let (mut trail, _) = Trail::open(&dir, Config::default(), secret_signer())?;
    let start = Instant::now();
    let mut sigs = 0usize;
    for i in 0..SIGN_EACH {
        trail.append(entry(i))?;
        sigs += signer.sign(&trail.head().0)?.len();
    }
    let elapsed = start.elapsed();
    trail.close()?;
    let sign_each = rate(SIGN_EACH, elapsed);
    println!(
        "append + one signature per entry:               {:>9.0} appends/s  -> batched is {:.1}x faster ({} signature bytes/entry)",
        sign_each,
        batched / sign_each,
        sigs as u64 / SIGN_EACH
    );

    // The alternative with per-entry durability: a seal (signature and
    // fdatasync) after every entry.
    let dir = root.join("seal-each");
    let (mut trail, _) = Trail::open(
        &dir,
        Config {
            seal_every: 1,
            ..Config::default()
        },
        secret_signer(),
    )?;
    let start = Instant::now();
    for i in 0..SEAL_EACH {
        trail.append(entry(i))?;
    }
    let elapsed = start.elapsed();
    trail.close()?;
    let seal_each = rate(SEAL_EACH, elapsed);
    println!(
        "append + seal (signature, fdatasync) per entry: {:>9.0} appends/s  -> batched is {:.0}x faster",
        seal_each,
        batched / seal_each
    );

    // verify of a million entries, against reading the same bytes.
    let dir = root.join("verify");
    let (mut trail, _) = Trail::open(&dir, Config::default(), secret_signer())?;
    let start = Instant::now();
    append_batched(&mut trail, VERIFY)?;
    trail.close()?;
    let built = start.elapsed();
    // Verify reads from the page cache here, as on a node that wrote the
    // trail recently; the read-only figure is taken the same way, so the
    // ratio compares like with like.
    let start = Instant::now();
    let report = verify(&dir, &keyring)?;
    let verified = start.elapsed();
    anyhow::ensure!(report.is_ok() && report.entries == VERIFY, "verify failed: {:?}", report.failure);
    let start = Instant::now();
    let mut bytes = 0u64;
    for seg in std::fs::read_dir(&dir)? {
        bytes += std::fs::read(seg?.path())?.len() as u64;
    }
    let read = start.elapsed();
    let one = signer.sign(b"probe")?;
    let probe_id = quantum_trail::mldsa::key_id(&public);
    let start = Instant::now();
    for _ in 0..200 {
        quantum_trail::Verifier::verify(&keyring, &probe_id, b"probe", &one).map_err(|e| anyhow::anyhow!("probe signature: {e}"))?;
    }
    let per_check = start.elapsed() / 200;
    println!(
        "verify {VERIFY} entries ({} seals, {} segments, {:.0} MB; written in {:.1} s): {:.2} s (goal < 10 s); \
         reading the bytes alone {:.2} s ({:.1}x); a signature check per entry would add {:.0} s",
        report.seals,
        report.segments,
        bytes as f64 / 1e6,
        built.as_secs_f64(),
        verified.as_secs_f64(),
        read.as_secs_f64(),
        verified.as_secs_f64() / read.as_secs_f64(),
        (per_check * VERIFY as u32).as_secs_f64()
    );
    Ok(())
}

/// Appends `n` entries, sealing when the 100 ms timer would fire (the trail
/// seals by itself every 4096); returns the time taken and the timer seals.
fn append_batched(trail: &mut Trail, n: u64) -> Result<(Duration, u64)> {
    let start = Instant::now();
    let mut last_seal = start;
    let mut seals = 0;
    for i in 0..n {
        trail.append(entry(i))?;
        // Reading the clock costs ~20 ns; checking every 64 entries keeps it
        // out of the figure while firing within a fraction of a millisecond.
        if i % 64 == 0 && last_seal.elapsed() >= SEAL_INTERVAL {
            if trail.seal()?.is_some() {
                seals += 1;
            }
            last_seal = Instant::now();
        }
    }
    trail.seal()?;
    Ok((start.elapsed(), seals))
}

fn entry(i: u64) -> NewEntry {
    const CELLS: [&str; 4] = ["web-server", "file-backup", "disk-usage", "log-search"];
    let cell = CELLS[(i % 4) as usize];
    NewEntry::new("uid:1000", Action::RUN)
        .cell(cell)
        .manifest_hash(Digest(*blake3::hash(cell.as_bytes()).as_bytes()))
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}
