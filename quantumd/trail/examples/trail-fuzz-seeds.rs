//! Writes starting inputs for the `trail` fuzz target (fuzz/fuzz_targets/trail.rs):
//! small real segment files, sealed with the target's keyed-blake3 stand-in
//! signature, plus damaged copies (torn, flipped, zero-filled).
//!
//! `cargo run -p quantum-trail --example trail-fuzz-seeds -- fuzz/corpus/trail`

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use quantum_trail::{Action, Config, KeyId, NewEntry, SignError, Signer, Trail};

/// Must match the fuzz target.
const KEY: [u8; 32] = [7; 32];

struct MacSigner;

impl Signer for MacSigner {
    fn key_id(&self) -> KeyId {
        KeyId(KEY)
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(blake3::keyed_hash(&KEY, msg).as_bytes().to_vec())
    }
}

/// The bytes of a one-segment trail: `entries` entries with a seal after
/// every `seal_every`, the rest left unsealed.
fn segment(work: &Path, name: &str, entries: u64, seal_every: u64) -> Result<Vec<u8>> {
    let dir = work.join(name);
    let (mut trail, _) = Trail::open(
        &dir,
        Config {
            seal_every,
            ..Config::default()
        },
        Box::new(MacSigner),
    )?;
    for i in 0..entries {
        let e = match i % 3 {
            0 => NewEntry::new("uid:1000", Action::RUN).cell("web-server"),
            1 => NewEntry::new("quantumd", Action::RESTART).cell("web-server").detail("exit code 1"),
            _ => NewEntry::new("uid:1000", Action::REFUSE).cell("scraper").error("bad signature"),
        };
        trail.append(e)?;
    }
    let seg = trail.segment().to_owned();
    drop(trail);
    std::fs::read(&seg).with_context(|| format!("reading {}", seg.display()))
}

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).context("usage: trail-fuzz-seeds OUT_DIR")?);
    std::fs::create_dir_all(&out)?;
    let work = std::env::temp_dir().join(format!("trail-fuzz-seeds-{}", std::process::id()));
    let sealed = segment(&work, "sealed", 6, 3)?;
    let unsealed = segment(&work, "unsealed", 5, 3)?;
    let empty = segment(&work, "empty", 0, 3)?;
    let mut seeds = vec![("sealed", sealed.clone()), ("unsealed", unsealed.clone()), ("empty", empty)];
    seeds.push(("torn", sealed[..sealed.len() - 9].to_vec()));
    let mut flipped = sealed.clone();
    flipped[sealed.len() / 2] ^= 1;
    seeds.push(("flipped", flipped));
    let mut zeros = unsealed;
    zeros.extend_from_slice(&[0; 200]);
    seeds.push(("zero-filled", zeros));
    for (name, bytes) in &seeds {
        std::fs::write(out.join(format!("seed-{name}")), bytes)?;
    }
    std::fs::remove_dir_all(&work)?;
    println!("{} seeds written to {}", seeds.len(), out.display());
    Ok(())
}
