//! Benchmark of the intent engine: accuracy on the evaluation set, time per
//! intent (p50/p95) and model load time, on one core unless told otherwise.
//!
//!     intent-bench [--catalog DIR] [--set FILE] [--threads N] [--rounds N]
//!
//! Build it with `--release`; `make bench` runs it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quantum_intent::{evaluation, Catalog, Config, Encoder, Engine};

struct Args {
    catalog: PathBuf,
    set: PathBuf,
    threads: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = Args {
        catalog: repo.join("packaging/cells"),
        set: repo.join("tests/data/intents.tsv"),
        threads: 1,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--catalog" => args.catalog = PathBuf::from(value()?),
            "--set" => args.set = PathBuf::from(value()?),
            "--threads" => args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--rounds" => args.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "-h" | "--help" => {
                println!("intent-bench [--catalog DIR] [--set FILE] [--threads N] [--rounds N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("intent-bench: {e}");
        std::process::exit(2);
    });
    // candle sizes its thread pool from RAYON_NUM_THREADS when it first
    // runs, so this must be set before anything is loaded.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    }
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("intent-bench: {e}");
        std::process::exit(1)
    };

    let config = Config::new(&args.catalog);
    let model_dir = quantum_intent::find_model_dir(&config.model_dirs).unwrap_or_else(|e| fail(&e));

    // Model load: the median of a few loads (the file cache is warm after the first).
    let mut loads = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let encoder = Encoder::load(&model_dir).unwrap_or_else(|e| fail(&e));
        loads.push(started.elapsed());
        drop(encoder);
    }
    loads.sort();

    // Catalog embeddings without a cache (what a first start pays), then
    // from the cache (every later start).
    let catalog = Catalog::load(&args.catalog).unwrap_or_else(|e| fail(&e));
    let cache = tempdir();
    let encoder = Encoder::load(&model_dir).unwrap_or_else(|e| fail(&e));
    let cold = Instant::now();
    let engine = Engine::new(encoder, catalog.clone(), Some(&cache), config.tuning).unwrap_or_else(|e| fail(&e));
    let cold = cold.elapsed();
    let encoder = Encoder::load(&model_dir).unwrap_or_else(|e| fail(&e));
    let warm = Instant::now();
    let warm_engine = Engine::new(encoder, catalog.clone(), Some(&cache), config.tuning).unwrap_or_else(|e| fail(&e));
    let warm = warm.elapsed();
    assert_eq!(
        warm_engine.load_report().index.computed,
        0,
        "the second start should read every embedding from the cache"
    );
    drop(warm_engine);
    let _ = std::fs::remove_dir_all(&cache);

    let text = std::fs::read_to_string(&args.set).unwrap_or_else(|e| fail(&format!("{}: {e}", args.set.display())));
    let cases = evaluation::parse(&text).unwrap_or_else(|e| fail(&format!("{}: {e}", args.set.display())));

    let mut summary = evaluation::Summary::default();
    let mut times = Vec::new();
    // Calibration: (confidence, right?) of every answer.
    let mut calibration = Vec::new();
    for round in 0..args.rounds.max(1) {
        for case in &cases {
            let started = Instant::now();
            let plan = engine.ask(&case.intent).unwrap_or_else(|e| fail(&e));
            times.push(started.elapsed());
            if round == 0 {
                let right = evaluation::judge(case, &plan) == evaluation::Outcome::Correct;
                calibration.push((plan.confidence, right));
                summary.add(case, &plan);
            }
        }
    }
    times.sort();

    println!(
        "intent engine benchmark ({} thread{}, {} cells, {} requests x {} rounds)",
        args.threads,
        if args.threads == 1 { "" } else { "s" },
        catalog.cells.len(),
        cases.len(),
        args.rounds.max(1)
    );
    println!("  model             {}", model_dir.display());
    println!(
        "  model load        {} (median of 3; first {})",
        ms(loads[1]),
        ms(*loads.iter().max().unwrap_or(&Duration::ZERO))
    );
    println!("  catalog embedding {} cold, {} from the cache", ms(cold), ms(warm));
    println!(
        "  time per intent   p50 {}  p95 {}  max {}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.95)),
        ms(*times.last().unwrap_or(&Duration::ZERO))
    );
    println!("  accuracy          {summary}");
    println!("  calibration (confidence bucket: answers, right)");
    for (lo, hi) in [(0.0, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.01)] {
        let bucket: Vec<_> = calibration.iter().filter(|(c, _)| *c >= lo && *c < hi).collect();
        let right = bucket.iter().filter(|(_, r)| *r).count();
        if !bucket.is_empty() {
            println!(
                "    [{lo:.1}, {:.1}): {:>3} answers, {:>5.1}% right",
                hi.min(1.0),
                bucket.len(),
                100.0 * right as f64 / bucket.len() as f64
            );
        }
    }
    for miss in &summary.misses {
        println!("  miss: {miss}");
    }
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("intent-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
