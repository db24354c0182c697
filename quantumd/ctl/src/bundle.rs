//! `quantumctl bundle`: author keys, signing and checking cell bundles, in
//! this process (quantum-trust); no daemon is involved.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use quantum_trust::{AuthorKeys, Bundle, TrustedKeys};

use crate::cli::BundleCommand;

pub fn run(command: &BundleCommand) -> ExitCode {
    let result = match command {
        BundleCommand::Keygen { name, prefix } => keygen(name, prefix),
        BundleCommand::Sign {
            key,
            artifact,
            manifest,
            output,
        } => sign(key, artifact.as_deref(), manifest, output),
        BundleCommand::Verify { trusted_keys, bundle } => return verify(trusted_keys, bundle),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quantumctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn keygen(name: &str, prefix: &Path) -> Result<()> {
    let keys = AuthorKeys::generate(name).context("generating the keys")?;
    let secret = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    // The secret key is created 0600 from the start, never world-readable
    // for a moment, and never overwrites an existing one.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("cannot create {}", secret.display()))?;
    f.write_all(&keys.to_secret_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", secret.display()))?;
    fs::write(&public, keys.public().to_toml()).with_context(|| format!("cannot write {}", public.display()))?;
    println!("key id {}", keys.key_id());
    println!("secret key: {} (keep it private)", secret.display());
    println!(
        "public key: {} (install it in /etc/quantumos/trusted-keys.d/ on nodes that trust you)",
        public.display()
    );
    Ok(())
}

fn sign(key: &Path, artifact: Option<&Path>, manifest: &Path, output: &Path) -> Result<()> {
    let secret = fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let keys = AuthorKeys::from_secret_bytes(&secret).with_context(|| format!("{} is not a secret key", key.display()))?;
    let manifest_bytes = fs::read(manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    let artifact_bytes = match artifact {
        Some(a) => fs::read(a).with_context(|| format!("cannot read {}", a.display()))?,
        None => Vec::new(),
    };
    let mut bundle = Bundle::create(manifest_bytes, artifact_bytes).context("making the bundle")?;
    bundle.sign(&keys);
    // Refuse to write a bundle that would not verify with this very key (a
    // manifest whose artifact.blake3 does not match, say).
    let trusted: TrustedKeys = std::iter::once(keys.public().clone()).collect();
    bundle
        .verify(&trusted)
        .with_context(|| format!("the bundle would not verify; nothing written to {}", output.display()))?;
    fs::write(output, bundle.to_bytes()).with_context(|| format!("cannot write {}", output.display()))?;
    println!("{} signed by {} ({})", output.display(), keys.public().name(), keys.key_id());
    Ok(())
}

fn verify(trusted_keys: &Path, path: &Path) -> ExitCode {
    let trusted = match TrustedKeys::load(trusted_keys) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quantumctl: trusted keys {}: {e}", trusted_keys.display());
            return ExitCode::from(2);
        }
    };
    let bundle = match Bundle::read_file(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("quantumctl: {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    match bundle.verify(&trusted) {
        Ok(v) => {
            println!(
                "{}: ok: manifest {}, artifact {} ({} bytes), signed by {} ({}) with ML-DSA-65 and Ed25519",
                path.display(),
                v.manifest_blake3.to_hex(),
                v.artifact_blake3.to_hex(),
                v.artifact.len(),
                v.signer.name(),
                v.signer.key_id()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quantumctl: {}: does not verify: {e}", path.display());
            ExitCode::from(1)
        }
    }
}
