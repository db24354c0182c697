//! What verifying a cell bundle costs, against the obvious alternative measured in the same run:
//! just hashing the artifact with blake3 (which verification must do anyway). Also the raw
//! sign/verify times of ML-DSA-65 against Ed25519.
//!
//! `cargo run --release -p quantum-trust --bin bundle-bench`

use std::hint::black_box;
use std::time::{Duration, Instant};

use quantum_trust::{AuthorKeys, Bundle, TrustedKeys};

/// The median of `runs` timings of `f`, after one warm-up run.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn time(f: &mut impl FnMut()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// Times `a` and `b` alternately, so that both see the same machine load (the build machines
/// are shared), and returns their median times and the median of the per-run ratios a / b.
fn paired(runs: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration, f64) {
    a();
    b();
    let mut a_times = Vec::with_capacity(runs);
    let mut b_times = Vec::with_capacity(runs);
    let mut ratios = Vec::with_capacity(runs);
    for _ in 0..runs {
        let ta = time(&mut a);
        let tb = time(&mut b);
        a_times.push(ta);
        b_times.push(tb);
        ratios.push(ratio(ta, tb));
    }
    a_times.sort();
    b_times.sort();
    ratios.sort_by(f64::total_cmp);
    (a_times[runs / 2], b_times[runs / 2], ratios[runs / 2])
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let author = AuthorKeys::generate("bench author")?;
    let trusted: TrustedKeys = [author.public().clone()].into_iter().collect();

    let dir = std::env::temp_dir().join(format!("bundle-bench.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("bundle verify vs plain blake3 of the same artifact (median times; ratio = median of per-run bundle / blake3, measured alternately)");
    println!("  in memory: Bundle::verify vs blake3::hash of the artifact");
    println!("  from file: Bundle::read_file + verify vs reading the artifact file + blake3 (b3sum), page cache warm");
    println!(
        "{:>10} {:>5} {:>12} {:>12} {:>7} {:>14} {:>14} {:>7}",
        "artifact", "runs", "blake3", "verify", "ratio", "b3sum file", "bundle file", "ratio"
    );
    for (label, size, runs) in [("1 MiB", 1usize << 20, 101), ("64 MiB", 64 << 20, 11)] {
        let mut artifact = vec![0u8; size];
        getrandom::fill(&mut artifact)?;
        let manifest = format!(
            "[cell]\nname = \"bench\"\nversion = \"1.0.0\"\ndescription = \"bench\"\nartifact = {{ path = \"bin/bench\", blake3 = \"{}\" }}\n",
            blake3::hash(&artifact)
        );
        let mut bundle = Bundle::create(manifest.into_bytes(), artifact.clone())?;
        bundle.sign(&author);
        let bundle_path = dir.join(format!("{label}.qbundle").replace(' ', ""));
        let artifact_path = dir.join(format!("{label}.bin").replace(' ', ""));
        std::fs::write(&bundle_path, bundle.to_bytes())?;
        std::fs::write(&artifact_path, &artifact)?;

        let (verify, hash, memory_ratio) = paired(
            runs,
            || {
                black_box(bundle.verify(&trusted).map(|v| v.artifact_blake3).ok());
            },
            || {
                black_box(blake3::hash(black_box(&artifact)));
            },
        );
        let (bundle_file, b3sum_file, file_ratio) = paired(
            runs,
            || {
                let parsed = Bundle::read_file(&bundle_path).ok();
                black_box(parsed.as_ref().map(|b| b.verify(&trusted).is_ok()));
            },
            || {
                black_box(std::fs::read(&artifact_path).map(|bytes| blake3::hash(&bytes)).ok());
            },
        );
        if bundle.verify(&trusted).is_err() {
            return Err("the benchmark bundle does not verify".into());
        }
        println!(
            "{label:>10} {runs:>5} {:>12} {:>12} {:>6.2}x {:>14} {:>14} {:>6.2}x",
            ms(hash),
            ms(verify),
            memory_ratio,
            ms(b3sum_file),
            ms(bundle_file),
            file_ratio
        );
    }
    std::fs::remove_dir_all(&dir)?;

    println!();
    println!("signatures over a 32-byte message (median of runs; ratio = ML-DSA-65 / Ed25519)");
    let message = *blake3::hash(b"message").as_bytes();
    let ml_dsa_key = pqcrypto_mldsa::mldsa65::keypair();
    let ed_key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let ml_sig = pqcrypto_mldsa::mldsa65::detached_sign(&message, &ml_dsa_key.1);
    let ed_sig = ed25519_dalek::Signer::sign(&ed_key, &message);
    let ed_pub = ed_key.verifying_key();

    let ml_sign = median(501, || {
        black_box(pqcrypto_mldsa::mldsa65::detached_sign(black_box(&message), &ml_dsa_key.1));
    });
    let ml_verify = median(1001, || {
        black_box(pqcrypto_mldsa::mldsa65::verify_detached_signature(&ml_sig, black_box(&message), &ml_dsa_key.0).is_ok());
    });
    let ed_sign = median(1001, || {
        black_box(ed25519_dalek::Signer::sign(&ed_key, black_box(&message)));
    });
    let ed_verify = median(1001, || {
        black_box(ed_pub.verify_strict(black_box(&message), &ed_sig).is_ok());
    });
    let dual_sign = median(501, || {
        black_box(author.sign(black_box(&message)));
    });
    let dual = author.sign(&message);
    let dual_verify = median(1001, || {
        black_box(author.public().verify(black_box(&message), &dual).is_ok());
    });
    println!("{:>10} {:>12} {:>12} {:>7}", "", "ML-DSA-65", "Ed25519", "ratio");
    println!(
        "{:>10} {:>12} {:>12} {:>6.2}x",
        "sign",
        us(ml_sign),
        us(ed_sign),
        ratio(ml_sign, ed_sign)
    );
    println!(
        "{:>10} {:>12} {:>12} {:>6.2}x",
        "verify",
        us(ml_verify),
        us(ed_verify),
        ratio(ml_verify, ed_verify)
    );
    println!("dual (both) sign {}, verify {}", us(dual_sign), us(dual_verify));
    Ok(())
}
