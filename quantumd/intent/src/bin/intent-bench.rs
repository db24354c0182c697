//! Benchmark of the intent engine, on one core unless told otherwise: the
//! accuracy on the tuning set (a training score), the k-fold cross-validated
//! accuracy of the choice of tunables on it, the accuracy and out-of-scope
//! refusal rate on each held-out set (aggregates only: their misses are never
//! printed), time per intent (p50/p95) and model load time.
//!
//!     intent-bench [--catalog DIR] [--set FILE]... [--heldout FILE|none]... [--adapter FILE|none] [--reranker FILE|none] [--folds K] [--threads N] [--rounds N] [--no-grid] [--by-set]
//!     intent-bench --train [--output FILE] [--adapter-output FILE | --keep-adapter [--adapter FILE|none]] [--catalog DIR] [--set FILE]... [--folds K | --by-set]
//!
//! The engine answers with its learned re-ranker (`data/reranker.bin`,
//! [`quantum_intent::rerank`]); the benchmark cross-validates both the
//! hand-tuned score's grid of tunables (skipped with `--no-grid`: about three
//! minutes) and the re-ranker's hyper-parameters.
//!
//! `--train` first fine-tunes the encoder on the tuning data (adapters,
//! [`quantum_intent::adapter`], written to `--adapter-output`, by default
//! the crate's `data/adapter.safetensors`; `--keep-adapter` keeps that file
//! as it is), then, on the adapted encoder's embeddings, chooses the
//! re-ranker's hyper-parameters by k-fold cross-validation on the tuning
//! data, trains it on all of it and writes it to `--output` (by default the
//! crate's `data/reranker.bin`). The next build carries both. It never reads
//! a held-out set. Deterministic: the same data, catalog and model give the
//! same files. The cross-validation of a re-ranker trained so is no longer
//! a held-out figure (the adapters saw every fold); the held-out sets are.
//!
//! The held-out set scored by default is set 5 ([`evaluation::HELDOUT_SET`],
//! whose floor the tests hold). The first `--heldout` replaces it, later ones
//! add to the list; `--heldout none` scores none (what a tuning run uses).
//!
//! Build it with `--release`; `make bench` runs it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quantum_intent::adapter::{self, TrainOptions};
use quantum_intent::evaluation::{self, Grid, Memo, RerankerGrid, Split};
use quantum_intent::rerank::{self, Ranker};
use quantum_intent::{AdapterSource, Catalog, Config, Encoder, Engine, RerankerSource};

struct Args {
    catalog: PathBuf,
    /// The tuning data: every `--set`, or [`evaluation::TUNING_SETS`].
    sets: Vec<PathBuf>,
    /// The held-out sets to score; empty with `--heldout none`, while tuning.
    heldout: Vec<PathBuf>,
    folds: usize,
    threads: usize,
    rounds: usize,
    /// Skip the hand-tuned score's grid.
    no_grid: bool,
    /// Cross-validate by file of the tuning data rather than by folds.
    by_set: bool,
    /// Train the re-ranker and write it here, scoring nothing else.
    train: Option<PathBuf>,
    /// Where `--train` writes the encoder's adapters.
    adapter_output: PathBuf,
    /// `--train` keeps the adapters in `adapter_output` and trains only the
    /// re-ranker.
    keep_adapter: bool,
    /// The adapters to score with (`--adapter FILE|none`), or to train the
    /// re-ranker on with `--keep-adapter`.
    adapter: AdapterSource,
    /// The re-ranker to score with (`--reranker FILE|none`).
    reranker: RerankerSource,
}

const USAGE: &str =
    "intent-bench [--catalog DIR] [--set FILE]... [--heldout FILE|none]... [--adapter FILE|none] [--reranker FILE|none] [--folds K] [--threads N] [--rounds N] [--no-grid] [--by-set]
       intent-bench --train [--output FILE] [--adapter-output FILE | --keep-adapter [--adapter FILE|none]] [--catalog DIR] [--set FILE]... [--folds K | --by-set]";

/// A `FILE|none` argument: `none` is no file.
fn file_or_none(value: String) -> Option<PathBuf> {
    (value != "none").then(|| PathBuf::from(value))
}

fn parse_args() -> Result<Args, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = Args {
        catalog: repo.join("packaging/cells"),
        sets: Vec::new(),
        heldout: vec![repo.join(evaluation::HELDOUT_SET)],
        folds: 5,
        threads: 1,
        rounds: 3,
        no_grid: false,
        by_set: false,
        train: None,
        adapter_output: Path::new(env!("CARGO_MANIFEST_DIR")).join("data/adapter.safetensors"),
        keep_adapter: false,
        adapter: AdapterSource::Builtin,
        reranker: RerankerSource::Builtin,
    };
    let mut heldout_given = false;
    let mut output = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--catalog" => args.catalog = PathBuf::from(value()?),
            "--set" => args.sets.push(PathBuf::from(value()?)),
            "--heldout" => {
                let path = PathBuf::from(value()?);
                if !heldout_given {
                    args.heldout.clear();
                    heldout_given = true;
                }
                if path.as_os_str() != "none" {
                    args.heldout.push(path);
                }
            }
            "--folds" => args.folds = value()?.parse().map_err(|e| format!("--folds: {e}"))?,
            "--threads" => args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--rounds" => args.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--no-grid" => args.no_grid = true,
            "--by-set" => args.by_set = true,
            "--train" => args.train = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/reranker.bin")),
            "--output" => output = Some(PathBuf::from(value()?)),
            "--adapter-output" => args.adapter_output = PathBuf::from(value()?),
            "--keep-adapter" => args.keep_adapter = true,
            "--reranker" => args.reranker = file_or_none(value()?).map_or(RerankerSource::Off, RerankerSource::File),
            "--adapter" => args.adapter = file_or_none(value()?).map_or(AdapterSource::Off, AdapterSource::File),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.sets.is_empty() {
        args.sets = evaluation::TUNING_SETS.iter().map(|s| repo.join(s)).collect();
    }
    match (&mut args.train, output) {
        (Some(path), Some(o)) => *path = o,
        (None, Some(_)) => return Err("--output goes with --train".to_owned()),
        _ => {}
    }
    if args.train.is_some() {
        // Training never reads a held-out set.
        args.heldout.clear();
    }
    Ok(args)
}

impl Args {
    fn split(&self) -> Split {
        if self.by_set {
            Split::BySet
        } else {
            Split::Stratified(self.folds)
        }
    }

    fn split_name(&self) -> String {
        if self.by_set {
            "leave-one-set-out".to_owned()
        } else {
            format!("{}-fold", self.folds)
        }
    }
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

    let mut config = Config::new(&args.catalog);
    config.adapter = args.adapter.clone();
    if let Some(output) = &args.train {
        train(&args, &config, output).unwrap_or_else(|e| fail(&e));
        return;
    }
    let model_dir = quantum_intent::find_model_dir(&config.model_dirs).unwrap_or_else(|e| fail(&e));

    // Model load: the median of a few loads (the file cache is warm after the first).
    let mut loads = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let encoder = Encoder::load_with(&model_dir, &config.adapter).unwrap_or_else(|e| fail(&e));
        loads.push(started.elapsed());
        drop(encoder);
    }
    loads.sort();

    // Catalog embeddings without a cache (what a first start pays), then
    // from the cache (every later start).
    let catalog = Catalog::load(&args.catalog).unwrap_or_else(|e| fail(&e));
    let cache = tempdir();
    let encoder = Encoder::load_with(&model_dir, &config.adapter).unwrap_or_else(|e| fail(&e));
    let cold = Instant::now();
    let mut engine = Engine::new(encoder, catalog.clone(), Some(&cache), config.tuning).unwrap_or_else(|e| fail(&e));
    let ranker = engine.use_reranker(&args.reranker);
    let cold = cold.elapsed();
    let encoder = Encoder::load_with(&model_dir, &config.adapter).unwrap_or_else(|e| fail(&e));
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

    let cases = evaluation::read_all(&args.sets).unwrap_or_else(|e| fail(&e));

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

    // The choice of tunables, cross-validated, and made again on the whole
    // tuning set (where the defaults came from).
    let memo = Memo::new(engine.encoder());
    let grid = if args.no_grid {
        let default = engine.tuning();
        Grid {
            shapes: vec![default],
            thresholds: vec![default.threshold],
        }
    } else {
        Grid::default()
    };
    let started = Instant::now();
    let cv = evaluation::cross_validate(&engine, &cases, args.split(), &grid, &memo).unwrap_or_else(|e| fail(&e));
    let selected = cv.selected;
    let cv_time = started.elapsed();
    let started = Instant::now();
    let learned =
        evaluation::cross_validate_reranker(&engine, &cases, args.split(), &RerankerGrid::default(), &memo).unwrap_or_else(|e| fail(&e));
    let learned_time = started.elapsed();

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
    match ranker {
        Ranker::Learned { examples } => println!("  scorer            the learned re-ranker ({examples} examples)"),
        Ranker::Fallback(why) => println!("  scorer            the hand-tuned score: {why}"),
    }
    println!(
        "  time per intent   p50 {}  p95 {}  max {}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.95)),
        ms(*times.last().unwrap_or(&Duration::ZERO))
    );
    let sets: Vec<String> = args.sets.iter().map(|p| p.display().to_string()).collect();
    println!("  tuning data       {} (a training score: tuned on it)", sets.join(" + "));
    println!("    accuracy        {summary}");
    println!(
        "  {} CV, hand-tuned score: mean accuracy {:.1}% on the held fold ({:.1}% on the folds it was tuned on), refused {:.1}%; {} tunings tried, {}",
        args.split_name(),
        100.0 * cv.mean_accuracy(),
        100.0 * cv.mean_train_accuracy(),
        100.0 * cv.refusal_rate(),
        grid.len(),
        ms(cv_time)
    );
    for (i, fold) in cv.folds.iter().enumerate() {
        println!(
            "    fold {i}: {:.1}% of {} ({:.1}% on the other folds) with {:?}",
            100.0 * fold.held.accuracy(),
            fold.held.total,
            100.0 * fold.train_accuracy,
            fold.tuning
        );
    }
    let default = engine.tuning();
    print_learned(&learned, &args.split_name(), learned_time);
    println!(
        "    hand-tuned score chosen on the whole tuning set: {selected:?}{}",
        if selected == default {
            " (the default)"
        } else {
            "; the default differs"
        }
    );
    if args.heldout.is_empty() {
        println!("  held-out set      not scored (--heldout none)");
    }
    for path in &args.heldout {
        match evaluation::read(path) {
            Err(e) => println!("  held-out set      not scored: {e}"),
            Ok(heldout) => {
                let scored = evaluation::score_with(&engine, &heldout, engine.method(), engine.encoder()).unwrap_or_else(|e| fail(&e));
                println!(
                    "  held-out set      {} (written before the tuning, never used to tune; aggregates only)",
                    path.display()
                );
                println!("    accuracy        {scored}");
                let per: Vec<String> = scored.per_stratum.iter().map(|(s, (r, n))| format!("{s} {r}/{n}")).collect();
                println!("    per expected cell: {}", per.join(", "));
            }
        }
    }
    println!("  calibration on the tuning set (confidence bucket: answers, right)");
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
        println!("  tuning-set miss: {miss}");
    }
    for (i, fold) in learned.folds.iter().enumerate() {
        for miss in &fold.misses {
            println!("  re-ranker cross-validation miss, fold {i}: {miss}");
        }
    }
    if selected != default {
        let again = evaluation::score(&engine, &cases, &selected, &memo).unwrap_or_else(|e| fail(&e));
        println!("  tuning set under the tuning chosen on it: {again}");
        for miss in &again.misses {
            println!("  tuning-set miss (chosen tuning): {miss}");
        }
    }
}

fn print_learned(cv: &evaluation::RerankerValidation, split: &str, time: Duration) {
    println!(
        "  {split} CV, learned re-ranker: mean accuracy {:.1}% on the held fold, refused {:.1}% (target {:.1}%); {}",
        100.0 * cv.mean_accuracy(),
        100.0 * cv.refusal_rate(),
        100.0 * rerank::REFUSAL_TARGET,
        ms(time)
    );
    println!(
        "    as if each request's cell were new (no examples): {:.1}% ({} of {})",
        100.0 * cv.new_cell_accuracy(),
        cv.new_cell.0,
        cv.new_cell.1
    );
    for p in &cv.table {
        println!(
            "    {:?} {:?} l2 {}: {:.1}%, refused {:.1}% at refusal offset {}",
            p.choice.neighbourhood,
            p.choice.features,
            p.choice.l2,
            100.0 * p.accuracy,
            100.0 * p.refused,
            p.choice.refuse_offset
        );
    }
    let s = cv.selected.choice;
    println!(
        "    chosen: {:?} {:?} l2 {} refusal offset {} ({:.1}%, refused {:.1}%)",
        s.neighbourhood,
        s.features,
        s.l2,
        s.refuse_offset,
        100.0 * cv.selected.accuracy,
        100.0 * cv.selected.refused
    );
}

/// `--train`: cross-validates the re-ranker's hyper-parameters on the tuning
/// data, trains it on all of it and writes it.
fn train(args: &Args, config: &Config, output: &Path) -> Result<(), String> {
    let mut config = config.clone();
    config.reranker = RerankerSource::Off;
    if !args.keep_adapter {
        train_adapter(args, &config)?;
        config.adapter = AdapterSource::File(args.adapter_output.clone());
    }
    let engine = Engine::load(&config).map_err(|e| e.to_string())?;
    let cases = evaluation::read_all(&args.sets)?;
    let memo = Memo::new(engine.encoder());
    let started = Instant::now();
    let cv =
        evaluation::cross_validate_reranker(&engine, &cases, args.split(), &RerankerGrid::default(), &memo).map_err(|e| e.to_string())?;
    print_learned(&cv, &args.split_name(), started.elapsed());
    let names: Vec<String> = engine.catalog().cells.iter().map(|c| c.name().to_owned()).collect();
    let sets: Vec<String> = args
        .sets
        .iter()
        .map(|p| p.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()))
        .collect();
    let s = cv.selected;
    let note = format!(
        "written by intent-bench --train on {} ({} requests, {} examples); {} CV {:.1}% top-1, refused {:.1}%; {:?}, {:?}, l2 {}, refusal offset {}",
        sets.join(" + "),
        cases.len(),
        cv.model.examples.len(),
        args.split_name(),
        100.0 * cv.mean_accuracy(),
        100.0 * cv.refusal_rate(),
        s.choice.neighbourhood,
        s.choice.features,
        s.choice.l2,
        s.choice.refuse_offset
    );
    rerank::write(output, &cv.model, engine.encoder().fingerprint(), &names, &note).map_err(|e| format!("{}: {e}", output.display()))?;
    println!("  wrote {}", output.display());
    Ok(())
}

/// Fine-tunes the encoder's adapters on the tuning data's single-cell and
/// out-of-scope requests and writes them to `args.adapter_output`.
fn train_adapter(args: &Args, config: &Config) -> Result<(), String> {
    let mut base = config.clone();
    base.adapter = AdapterSource::Off;
    let engine = Engine::load(&base).map_err(|e| e.to_string())?;
    let names: Vec<&str> = engine.catalog().cells.iter().map(|c| c.name()).collect();
    let mut classes: Vec<Vec<String>> = engine
        .catalog()
        .cells
        .iter()
        .map(|c| quantum_intent::index::phrases(c).into_iter().map(|(_, p)| p).collect())
        .collect();
    classes.push(quantum_intent::engine::out_of_scope());
    let refuse = names.len();
    let requests: Vec<(String, usize)> = evaluation::read_all(&args.sets)?
        .iter()
        .filter(|c| c.cells.len() <= 1)
        .filter_map(|c| {
            let class = match c.cells.first() {
                None => refuse,
                Some(cell) => names.iter().position(|n| n == cell)?,
            };
            Some((engine.model_text(&c.intent), class))
        })
        .collect();
    let options = TrainOptions::default();
    println!(
        "adapters: rank {} on the query and value projections, {} epochs over {} requests, {} classes",
        options.rank,
        options.epochs,
        requests.len(),
        classes.len()
    );
    let dir = quantum_intent::find_model_dir(&config.model_dirs).map_err(|e| e.to_string())?;
    adapter::train(
        &dir,
        engine.encoder().base_fingerprint(),
        &requests,
        &classes,
        &options,
        &args.adapter_output,
        &mut |line| println!("  {line}"),
    )
    .map_err(|e| format!("{e}: {}", std::error::Error::source(&e).map_or_else(String::new, |s| s.to_string())))?;
    println!("  wrote {}", args.adapter_output.display());
    Ok(())
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("intent-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
