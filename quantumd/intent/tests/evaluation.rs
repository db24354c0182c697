//! Scores the evaluation sets with the real model and holds the engine to
//! accuracy floors: the tuning data ([`evaluation::TUNING_SETS`], every miss
//! printed) and held-out set 12 (tests/data/intents-heldout-12.tsv, never used
//! to tune: only its aggregate figures are printed).
//!
//! The model must be present: `scripts/fetch-model.sh` puts it where this
//! test looks (the Makefile runs the script before the tests). Without it the
//! test fails and says so; it is never skipped.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use quantum_intent::rerank::{self, FallbackReason, Ranker};
use quantum_intent::{evaluation, AdapterSource, Config, Engine, RerankerSource};

/// Share of the tuning data's cases whose cells (or refusal) and expected
/// parameters are all right, decided by the learned re-ranker. A training
/// score (the engine was tuned, and the re-ranker trained, on these sets,
/// [`evaluation::TUNING_SETS`]): measured at 97.8 % (3637 of 3717, sets 1
/// to 14, with the encoder's adapters; 98.2 % with sets 1 to 13 before
/// them).
const FLOOR: f64 = 0.976;
/// Share of the tuning data's out-of-scope requests that must be refused
/// (they hold requests close to what the catalog does, "delete the tmp
/// folder"): measured at 99.9 % (760 of 761), a training score.
const REFUSAL_FLOOR: f64 = 0.985;

/// Mean 5-fold cross-validated accuracy of the hand-tuned score's choice of
/// tunables on the tuning data (the score the engine falls back to without
/// its re-ranker): measured at 96.2 % over the grid around the default
/// pooling and 96.3 % with the default tuning, sets 1 to 11 (with the
/// default tuning in intent-bench: 95.2 % with sets 1 to 13, 95.6 % with 1
/// to 12; 97.0 % with sets 1 to 10, 97.6 % with 1 to 9: each new author's
/// requests are harder for it than the last).
const CV_FLOOR: f64 = 0.95;

/// How much better than the default tuning the grid's cross-validated
/// choice may be before the default must follow it: half a point. With
/// tuning sets 1 to 9 the grid chose lexical weight 0.2 and threshold 0.38
/// over the default's 0.3 and 0.40, within that.
const DEFAULT_TUNING_SLACK: f64 = 0.005;

/// Share of held-out set 12's cases all right (a plan judged by what its
/// cells run with, defaults included). Measured once, after round 13 was
/// frozen (47869be): 88.7 % (275 of 310; 86.5 % with every expected value
/// stated; cells right 92.3 %). Set 11 had 89.4 % with round 12, set 10
/// 89.4 % with round 11, set 9 91.0 % with round 10. The goal of issue 17
/// is 97 %: not met. The floor sits just under the measurement (five more
/// misses fail it), so a regression fails the test.
const HELDOUT_FLOOR: f64 = 0.872;
/// Share of held-out set 12's out-of-scope requests refused: measured at
/// 86.7 % (52 of 60; set 11 had 88.3 % with round 12, set 10 91.7 % with
/// round 11), short of the goal of 95 %; one more miss is tolerated (a
/// float difference on another CPU can move a borderline request).
const HELDOUT_REFUSAL_FLOOR: f64 = 0.85;

/// How the learned re-ranker is cross-validated: one fold per file of the
/// tuning data, as `intent-bench --train --by-set` chose it.
const SPLIT: evaluation::Split = evaluation::Split::BySet;

/// Mean leave-one-set-out accuracy of the learned re-ranker on the tuning
/// data, each set decided by a re-ranker trained (with its examples) on the
/// others: measured at 97.4 % with sets 1 to 14 and the encoder's adapters
/// (which were trained on every set, so this is no longer a held-out
/// figure; 97.0 % with sets 1 to 13 before them).
const RERANKER_CV_FLOOR: f64 = 0.968;

/// The requests for one cell, decided as if that cell had been added after
/// the training (no examples of it): measured at 95.8 % (leave-one-set-out,
/// sets 1 to 14, with the adapters; 94.3 % with sets 1 to 13 before them).
const NEW_CELL_FLOOR: f64 = 0.935;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(config: &Config) -> Engine {
    match Engine::load(config) {
        Ok(engine) => engine,
        Err(e) => panic!("{e}\n(in a source checkout: run scripts/fetch-model.sh, then the tests again)"),
    }
}

/// The engine over the standard catalog, loaded once for all tests; its
/// embedding cache lives in the target directory, so later runs skip the
/// catalog's forward passes.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new(&repo().join("packaging/cells"));
        config.cache_dir = Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("intent-cache"));
        load(&config)
    })
}

/// A catalog of a few standard cells, copied into `dir`: cheap to embed.
fn small_catalog(dir: &Path) -> PathBuf {
    let catalog = dir.join("cells");
    for name in ["web-server", "network-check", "disk-usage"] {
        std::fs::create_dir_all(catalog.join(name)).unwrap();
        std::fs::copy(
            repo().join("packaging/cells").join(name).join("cell.toml"),
            catalog.join(name).join("cell.toml"),
        )
        .unwrap();
    }
    catalog
}

#[test]
fn tuning_set_meets_the_floor() {
    let cases =
        evaluation::read_all(&evaluation::TUNING_SETS.iter().map(|s| repo().join(s)).collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{e}"));
    assert!(cases.len() >= 120, "the tuning set has {} cases, fewer than 120", cases.len());

    let engine = engine();
    let mut summary = evaluation::Summary::default();
    for case in &cases {
        let plan = engine.ask(&case.intent).expect("the engine answers");
        summary.add(case, &plan);
    }
    for miss in &summary.misses {
        println!("miss: {miss}");
    }
    let refusals = summary.refusals_correct as f64 / summary.refusals_expected.max(1) as f64;
    println!("tuning data: accuracy {summary}");
    assert!(summary.refusals_expected >= 20, "fewer than 20 out-of-scope requests in the set");
    assert!(
        summary.accuracy() >= FLOOR,
        "accuracy {:.3} is below the floor {FLOOR}",
        summary.accuracy()
    );
    assert!(
        refusals >= REFUSAL_FLOOR,
        "only {:.3} of the out-of-scope requests were refused",
        refusals
    );
}

/// The held-out set, never used to tune: only its aggregate figures are
/// printed, never its misses (they would make it a second tuning set). A
/// missing file fails the test.
#[test]
fn heldout_set_meets_the_floor() {
    let cases = evaluation::read(&repo().join(evaluation::HELDOUT_SET)).unwrap_or_else(|e| panic!("{e}"));
    assert!(cases.len() >= 120, "the held-out set has {} cases, fewer than 120", cases.len());
    let engine = engine();
    let mut summary = evaluation::Summary::default();
    for case in &cases {
        summary.add(case, &engine.ask(&case.intent).expect("the engine answers"));
    }
    println!("held-out set ({}): accuracy {summary}", evaluation::HELDOUT_SET);
    assert!(
        summary.refusals_expected >= 20,
        "fewer than 20 out-of-scope requests in the held-out set"
    );
    assert!(
        summary.accuracy() >= HELDOUT_FLOOR,
        "held-out accuracy {:.3} is below the floor {HELDOUT_FLOOR}",
        summary.accuracy()
    );
    assert!(
        summary.refusal_rate() >= HELDOUT_REFUSAL_FLOOR,
        "only {:.3} of the held-out out-of-scope requests were refused (floor {HELDOUT_REFUSAL_FLOOR})",
        summary.refusal_rate()
    );
}

/// The choice of tunables, 5-fold cross-validated over the tuning data:
/// each fold scored with the tuning chosen on the other four, and the choice
/// made on all of it must be the engine's default. The grid here keeps the
/// default's pooling ([`evaluation::Grid::around`]) so that a debug build
/// takes seconds, not minutes; `intent-bench` cross-validates over the full
/// grid (97.8 %, refused 97.1 %). Measured here at 97.9 %.
#[test]
fn cross_validated_choice_holds() {
    let paths: Vec<PathBuf> = evaluation::TUNING_SETS.iter().map(|s| repo().join(s)).collect();
    let cases = evaluation::read_all(&paths).unwrap_or_else(|e| panic!("{e}"));
    let engine = engine();
    let memo = evaluation::Memo::new(engine.encoder());
    let grid = evaluation::Grid::around(&engine.tuning());
    let cv = evaluation::cross_validate(engine, &cases, evaluation::Split::Stratified(5), &grid, &memo).expect("the engine answers");
    println!(
        "5-fold CV ({} tunings around the default pooling): mean accuracy {:.1}% on the held fold ({:.1}% on the folds tuned on), refused {:.1}%",
        grid.len(),
        100.0 * cv.mean_accuracy(),
        100.0 * cv.mean_train_accuracy(),
        100.0 * cv.refusal_rate()
    );
    // The hand-tuned score no longer decides (the re-ranker does, trained
    // with that score among its features), so its tunables are not moved
    // with every new tuning set: moving them means training the re-ranker
    // again. They must stay near the grid's choice, cross-validated alike.
    let fixed = evaluation::Grid {
        shapes: vec![engine.tuning()],
        thresholds: vec![engine.tuning().threshold],
    };
    let default = evaluation::cross_validate(engine, &cases, evaluation::Split::Stratified(5), &fixed, &memo).expect("the engine answers");
    println!(
        "the default tuning, 5-fold CV: {:.1}%, refused {:.1}%; the grid's choice {:?}",
        100.0 * default.mean_accuracy(),
        100.0 * default.refusal_rate(),
        cv.selected
    );
    assert!(
        cv.mean_accuracy() - default.mean_accuracy() <= DEFAULT_TUNING_SLACK,
        "the grid's choice {:?} beats the default tuning by {:.1} points: make it the default and train the re-ranker again",
        cv.selected,
        100.0 * (cv.mean_accuracy() - default.mean_accuracy())
    );
    assert!(
        cv.mean_accuracy() >= CV_FLOOR,
        "cross-validated accuracy {:.3} is below {CV_FLOOR}",
        cv.mean_accuracy()
    );
}

#[test]
fn refusal_says_why() {
    let engine = engine();
    let plan = engine.ask("book me a flight to Lisbon").unwrap();
    assert!(plan.cells.is_empty());
    assert_eq!(plan.reason.as_deref(), Some(quantum_intent::engine::NOTHING_FITS));
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["cells"], serde_json::json!([]));
    assert!(json["reason"].is_string());
}

#[test]
fn plan_matches_the_json_contract() {
    let engine = engine();
    let plan = engine.ask("serve /srv/www on port 8080").unwrap();
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["intent"], "serve /srv/www on port 8080");
    assert_eq!(
        json["cells"],
        serde_json::json!([{"name": "web-server", "params": {"dir": "/srv/www", "port": "8080"}}])
    );
    let confidence = json["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&confidence), "confidence {confidence}");
    assert!(json.get("reason").is_none());
}

#[test]
fn missing_model_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(&repo().join("packaging/cells"));
    config.model_dirs = vec![dir.path().join("nowhere")];
    let err = Engine::load(&config).err().expect("no model there");
    let text = err.to_string();
    assert!(text.contains("scripts/fetch-model.sh"), "{text}");
    assert!(text.contains("quantumos-model"), "{text}");
    assert!(text.contains(&dir.path().join("nowhere").display().to_string()), "{text}");
}

#[test]
fn catalog_embeddings_are_cached_by_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(&small_catalog(dir.path()));
    config.cache_dir = Some(dir.path().join("cache"));
    let first = load(&config);
    let cells = first.catalog().cells.len();
    assert_eq!(first.load_report().index.computed, cells);
    let second = Engine::load(&config).unwrap();
    let report = second.load_report().index;
    assert_eq!((report.cached, report.computed), (cells, 0), "{report:?}");
    // Same answers from cached embeddings.
    let a = first.ask("what's eating my disk").unwrap();
    let b = second.ask("what's eating my disk").unwrap();
    assert_eq!(a, b);

    // An edited manifest misses the cache; the others still hit.
    let edited = config.catalog_dir.join("disk-usage/cell.toml");
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, text.replace("Show what uses the disk", "Show what fills the disk")).unwrap();
    let third = load(&config).load_report().index;
    assert_eq!((third.cached, third.computed), (cells - 1, 1), "{third:?}");
}

#[test]
fn unwritable_cache_falls_back_to_memory() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the cache directory should be: nothing can be written.
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, b"").unwrap();
    let mut config = Config::new(&small_catalog(dir.path()));
    config.cache_dir = Some(blocked.join("intent"));
    let engine = load(&config);
    let report = engine.load_report().index;
    assert_eq!(report.unsaved, engine.catalog().cells.len(), "{report:?}");
    assert_eq!(engine.ask("ping 1.1.1.1").unwrap().cell_names(), ["network-check"]);
}

/// The learned re-ranker that ships (`data/reranker.bin`), 5-fold
/// cross-validated with its own hyper-parameters (every refusal offset
/// tried, chosen by the rule `intent-bench --train` uses): each fold decided
/// by a re-ranker trained without it, its examples included. The offset
/// chosen must be the shipped one and the weights trained on all the tuning
/// data the shipped ones (to float tolerance): the file is what the training
/// command makes of today's data, catalog and model.
#[test]
fn reranker_cross_validates_and_is_reproducible() {
    let engine = engine();
    assert!(
        matches!(engine.load_report().ranker, Ranker::Learned { .. }),
        "the engine does not run the learned re-ranker: {:?}",
        engine.load_report().ranker
    );
    let shipped = engine.reranker().expect("a learned re-ranker");
    let paths: Vec<PathBuf> = evaluation::TUNING_SETS.iter().map(|s| repo().join(s)).collect();
    let cases = evaluation::read_all(&paths).unwrap_or_else(|e| panic!("{e}"));
    let memo = evaluation::Memo::new(engine.encoder());
    let grid = evaluation::RerankerGrid::only(shipped.features, shipped.l2, shipped.neighbourhood);
    let cv = evaluation::cross_validate_reranker(engine, &cases, SPLIT, &grid, &memo).expect("the engine answers");
    println!(
        "leave-one-set-out CV of the learned re-ranker: mean accuracy {:.1}%, refused {:.1}%, as if the cell were new {:.1}% ({} of {})",
        100.0 * cv.mean_accuracy(),
        100.0 * cv.refusal_rate(),
        100.0 * cv.new_cell_accuracy(),
        cv.new_cell.0,
        cv.new_cell.1
    );
    assert!(
        cv.mean_accuracy() >= RERANKER_CV_FLOOR,
        "cross-validated accuracy {:.3} is below {RERANKER_CV_FLOOR}",
        cv.mean_accuracy()
    );
    assert!(
        cv.refusal_rate() >= rerank::REFUSAL_TARGET,
        "cross-validated refusal {:.3} is below the hand-tuned score's {}",
        cv.refusal_rate(),
        rerank::REFUSAL_TARGET
    );
    assert!(
        cv.new_cell_accuracy() >= NEW_CELL_FLOOR,
        "requests for a cell without examples: {:.3}, below {NEW_CELL_FLOOR}",
        cv.new_cell_accuracy()
    );
    assert_eq!(
        cv.model.refuse_offset, shipped.refuse_offset,
        "the shipped refusal offset is not the one chosen"
    );
    for (j, (a, b)) in cv.model.weights.iter().zip(&shipped.weights).enumerate() {
        assert!(
            (a - b).abs() < 0.02,
            "weight {j}: trained {a}, shipped {b}: run intent-bench --train (see the crate's README)"
        );
    }
    assert_eq!(cv.model.examples.len(), shipped.examples.len());
}

/// Without its weights (a file that is not there, or not a re-ranker) the
/// engine warns and answers with the hand-tuned score.
#[test]
fn missing_or_bad_reranker_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(&small_catalog(dir.path()));
    config.cache_dir = Some(dir.path().join("cache"));
    config.reranker = RerankerSource::File(dir.path().join("nowhere.bin"));
    let engine = load(&config);
    assert_eq!(engine.load_report().ranker, Ranker::Fallback(FallbackReason::Missing));
    assert!(engine.reranker().is_none());
    assert_eq!(engine.ask("ping 1.1.1.1").unwrap().cell_names(), ["network-check"]);

    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, b"QINTRR01 not a re-ranker").unwrap();
    config.reranker = RerankerSource::File(bad);
    let engine = load(&config);
    assert_eq!(engine.load_report().ranker, Ranker::Fallback(FallbackReason::Malformed));
    assert_eq!(engine.ask("ping 1.1.1.1").unwrap().cell_names(), ["network-check"]);
}

/// The built-in re-ranker over a catalog of three cells: the examples of the
/// cells it lacks are dropped, and it still answers.
#[test]
fn reranker_follows_a_smaller_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(&small_catalog(dir.path()));
    config.cache_dir = Some(dir.path().join("cache"));
    let small = load(&config);
    let Ranker::Learned { examples } = small.load_report().ranker else {
        panic!("{:?}", small.load_report().ranker)
    };
    assert!(examples < engine().reranker().unwrap().examples.len(), "{examples}");
    assert_eq!(small.ask("ping 1.1.1.1").unwrap().cell_names(), ["network-check"]);
    assert_eq!(small.ask("serve /srv/www on port 8080").unwrap().cell_names(), ["web-server"]);
    assert!(small.ask("book me a flight to Lisbon").unwrap().cells.is_empty());
}

/// The built-in adapters are merged into the model, and the re-ranker is
/// the one trained on the adapted encoder's embeddings. Adapters that cannot
/// be read are left out with a warning: the base model answers, and the
/// re-ranker, which names the adapted encoder, steps aside for the
/// hand-tuned score.
#[test]
fn adapters_are_built_in_and_a_bad_file_falls_back_to_the_base_model() {
    assert!(engine().encoder().adapted(), "the built-in adapters were not applied");
    assert_ne!(engine().encoder().fingerprint(), engine().encoder().base_fingerprint());

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(&small_catalog(dir.path()));
    config.cache_dir = Some(dir.path().join("cache"));
    for bad in [dir.path().join("nowhere.safetensors"), dir.path().join("bad.safetensors")] {
        std::fs::write(dir.path().join("bad.safetensors"), b"not adapters").unwrap();
        config.adapter = AdapterSource::File(bad);
        let engine = load(&config);
        assert!(!engine.encoder().adapted());
        assert_eq!(engine.encoder().fingerprint(), engine.encoder().base_fingerprint());
        assert_eq!(engine.load_report().ranker, Ranker::Fallback(FallbackReason::OtherModel));
        assert_eq!(engine.ask("ping 1.1.1.1").unwrap().cell_names(), ["network-check"]);
    }
}
