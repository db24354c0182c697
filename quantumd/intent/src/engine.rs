//! The engine: loads the model and the catalog once, then turns requests
//! into plans.
//!
//! A request is split into steps at words that order them ("then", "after
//! that"). Each step is embedded and compared with every phrase of every
//! cell; a cell's score mixes its best phrase with the mean of the next few
//! (see [`Tuning`]), plus a small prior from words the step shares with the
//! cell's own manifest text (weighted by how rare each word is across the
//! catalog). Under this hand-tuned score ([`Tuning`]) the best cell is
//! taken when its score clears a threshold; the confidence is a logistic
//! function of the score and of the margin to the runner-up.
//!
//! What decides by default is the learned re-ranker ([`crate::rerank`]): a
//! softmax over every cell and "refuse", trained on the tuning data, whose
//! features are those similarities, the prior, today's score and the
//! nearest tuning requests of each cell; the confidence is its
//! probability. When its weights cannot be used (another model, an
//! unreadable file, [`RerankerSource::Off`]) the hand-tuned score decides,
//! and [`LoadReport::ranker`] says why.
//!
//! The work is split so the evaluation can try many tunings cheaply:
//! [`Engine::prepare`] reads and embeds a request (everything that does not
//! depend on a tunable), [`Engine::decide_with`] chooses (under a [`Tuning`]
//! or by a re-ranker; [`Engine::decide_by`] with any per-step verdict), and
//! [`Engine::plan`] fills the chosen cells' parameters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::adapter::AdapterSource;
use crate::catalog::Catalog;
use crate::encoder::{cosine, find_model_dir, model_search_path, Embed, Encoder};
use crate::error::Error;
use crate::index::{self, CellEmbeddings, IndexStats};
use crate::params;
use crate::plan::{Plan, PlannedCell};
use crate::rerank::{self, FallbackReason, Ranker, Reranker, Verdict};
use crate::spelling::Speller;

/// The reason given when nothing fits.
pub const NOTHING_FITS: &str = "nothing in the catalog can do that";

/// Tunables of the matcher. The defaults are chosen on
/// tests/data/intents.tsv and cross-validated there (see
/// [`crate::evaluation`] and the bench binary `intent-bench`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Weight of a cell's best phrase; the mean of the `pool` phrases after
    /// it gets `1 - best_weight`.
    pub best_weight: f32,
    /// How many runner-up phrases of a cell are averaged (1: the second
    /// best only). A request that meets several of a cell's phrases is
    /// surer of that cell than one that meets a single phrase by chance.
    pub pool: usize,
    /// Weight of the lexical prior.
    pub lexical_weight: f32,
    /// The reject class (see [`OUT_OF_SCOPE`]): a request whose nearest
    /// out-of-scope phrase is closer than the best cell's best phrase plus
    /// this margin is refused. Larger refuses less.
    pub reject_margin: f32,
    /// Taken off a cell's score when the request leads with a verb that
    /// opens some out-of-scope phrase ("train", "translate", "reboot") and
    /// that none of the cell's own phrases uses.
    pub action_penalty: f32,
    /// Added to a cell that repeats its work (a parameter named `every` or
    /// `interval`) when the request asks for something over and over
    /// ("every 5 minutes", "hourly").
    pub periodic_bonus: f32,
    /// Score at which a cell is accepted (confidence 0.5 at zero margin).
    pub threshold: f32,
    /// Logistic slope of the confidence on the score.
    pub slope: f32,
    /// Logistic slope of the confidence on the margin to the runner-up
    /// (a tie gives 0.5).
    pub margin_slope: f32,
}

impl Default for Tuning {
    /// Chosen by `intent-bench` on the tuning data ([`crate::evaluation::TUNING_SETS`])
    /// from [`crate::evaluation::Grid`], and cross-validated there (5
    /// folds): a cell is scored by its best phrase (0.4) and the mean of the
    /// five after it (0.6), so a cell that several phrases meet wins over
    /// one that a single phrase meets by chance, plus 0.3 x the
    /// shared-words prior, less 0.2 when the request leads with an
    /// out-of-scope verb the cell never uses, plus 0.05 for a repeating cell
    /// when the request asks for repetition; the request is refused when the
    /// best score is under 0.40 or when an out-of-scope phrase is nearer to
    /// it than the cell's best phrase by more than 0.05 (by more than -0.15
    /// after such a verb).
    fn default() -> Self {
        Tuning {
            best_weight: 0.4,
            pool: 5,
            lexical_weight: 0.3,
            reject_margin: 0.05,
            action_penalty: 0.2,
            periodic_bonus: 0.05,
            threshold: 0.40,
            slope: 20.0,
            margin_slope: 40.0,
        }
    }
}

impl Tuning {
    /// Confidence that the best cell is right, from its score and its margin
    /// over the runner-up.
    ///
    /// Two parts: how likely some cell fits at all (a logistic of the best
    /// score around the threshold, 0.5 there), times how likely the best cell
    /// rather than the runner-up is the one (a logistic of the margin: 0.5
    /// for a tie).
    fn confidence(&self, scores: &[Score]) -> f32 {
        self.fit_probability(scores) * self.choice_probability(scores)
    }

    fn fit_probability(&self, scores: &[Score]) -> f32 {
        sigmoid(self.slope * (best_score(scores) - self.threshold))
    }

    /// Whether the best cell is good enough to be taken: its score clears
    /// the threshold, and no out-of-scope phrase is nearer to the request
    /// than the cell's best phrase (by the margin).
    fn accepts(&self, scores: &[Score], reject: &[f32]) -> bool {
        best_score(scores) >= self.threshold && !self.rejects(scores, reject)
    }

    fn rejects(&self, scores: &[Score], reject: &[f32]) -> bool {
        scores.first().is_some_and(|s| nearest(reject) > s.best + self.margin(s))
    }

    /// How much nearer than the cell's best phrase an out-of-scope phrase
    /// must be to refuse: less when the request leads with a verb the cell
    /// never uses (the verb is evidence that it asks for something else).
    fn margin(&self, s: &Score) -> f32 {
        self.reject_margin - if s.foreign { self.action_penalty } else { 0.0 }
    }

    /// A cell's semantic score from its phrases' similarities, best first:
    /// the best one mixed with the mean of the `pool` after it.
    fn pooled(&self, sims: &[f32]) -> f32 {
        let best = sims.first().copied().unwrap_or(0.0);
        let runners = &sims[1.min(sims.len())..(1 + self.pool.max(1)).min(sims.len())];
        let rest = if runners.is_empty() {
            best
        } else {
            runners.iter().sum::<f32>() / runners.len() as f32
        };
        self.best_weight * best + (1.0 - self.best_weight) * rest
    }

    fn choice_probability(&self, scores: &[Score]) -> f32 {
        let best = best_score(scores);
        let margin = scores.get(1).map_or(1.0, |s| best - s.score);
        sigmoid(self.margin_slope * margin)
    }
}

/// Where the engine finds its model, catalog and cache.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding `NAME/cell.toml` for each cell.
    pub catalog_dir: PathBuf,
    /// Directories searched for the model, in order; by default
    /// [`model_search_path`].
    pub model_dirs: Vec<PathBuf>,
    /// Where catalog embeddings are cached; `None` keeps them in memory.
    pub cache_dir: Option<PathBuf>,
    pub tuning: Tuning,
    /// Where the learned re-ranker comes from; by default the one built in.
    pub reranker: RerankerSource,
    /// Where the encoder's adapters come from; by default the ones built in.
    pub adapter: AdapterSource,
}

/// Where the engine takes its learned re-ranker ([`crate::rerank`]) from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerankerSource {
    /// The one built into the binary (`data/reranker.bin`).
    Builtin,
    /// A weights file written by `intent-bench --train --output FILE`.
    File(PathBuf),
    /// None: the hand-tuned score ([`Tuning`]) decides.
    Off,
}

impl Config {
    pub fn new(catalog_dir: &Path) -> Config {
        Config {
            catalog_dir: catalog_dir.to_owned(),
            model_dirs: model_search_path(),
            cache_dir: default_cache_dir(),
            tuning: Tuning::default(),
            reranker: RerankerSource::Builtin,
            adapter: AdapterSource::Builtin,
        }
    }
}

/// `$QUANTUM_INTENT_CACHE`, else `$XDG_CACHE_HOME/quantumos/intent`, else
/// `~/.cache/quantumos/intent`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("QUANTUM_INTENT_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("quantumos/intent"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/quantumos/intent"))
}

/// How long loading took, for `quantumctl` and quantumd to report.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    pub model: Duration,
    pub catalog: Duration,
    pub index: IndexStats,
    /// Which scorer decides: the learned re-ranker, or the hand-tuned score
    /// and why.
    pub ranker: Ranker,
}

/// A cell's score for one step of a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub cell: usize,
    pub score: f32,
    pub semantic: f32,
    pub lexical: f32,
    /// Similarity of the step with the cell's nearest phrase.
    pub best: f32,
    /// The step leads with an out-of-scope verb the cell never uses.
    pub foreign: bool,
}

/// What one cell has in common with one step of a request, before any
/// tunable is applied.
#[derive(Debug, Clone)]
pub(crate) struct CellFeatures {
    /// Cosine similarity of the step with each of the cell's phrases, best
    /// first.
    pub(crate) sims: Vec<f32>,
    /// Share of the step's word weight (IDF) that the cell's words carry.
    pub(crate) lexical: f32,
    /// The step leads with an out-of-scope verb the cell never uses.
    pub(crate) foreign: bool,
    /// The step asks for repetition and the cell repeats its work.
    pub(crate) periodic: bool,
    /// Share of the step's settings (`port=9000`, `unit: cron.service`,
    /// [`params::assignments`]) that name one of the cell's parameters
    /// with a value of its type; zero when the step has none. People who
    /// write settings name the parameters, whatever words the model reads
    /// around them.
    pub(crate) named: f32,
}

/// What every cell has in common with one step.
#[derive(Debug, Clone)]
pub struct Features {
    pub(crate) cells: Vec<CellFeatures>,
    /// Similarity of the step with the nearest out-of-scope phrase (none
    /// when the reject class is empty).
    pub(crate) reject: Vec<f32>,
    /// The step's embedding, for the re-ranker's nearest-neighbour
    /// features.
    pub(crate) vector: Vec<f32>,
}

impl Features {
    /// Every cell's score under `t`, best first.
    pub(crate) fn rank(&self, t: &Tuning) -> Vec<Score> {
        let mut scores: Vec<Score> = self
            .cells
            .iter()
            .enumerate()
            .map(|(cell, f)| {
                let best = f.sims.first().copied().unwrap_or(0.0);
                let semantic = t.pooled(&f.sims);
                let penalty = if f.foreign { t.action_penalty } else { 0.0 } - if f.periodic { t.periodic_bonus } else { 0.0 };
                Score {
                    cell,
                    score: semantic + t.lexical_weight * f.lexical - penalty,
                    semantic,
                    lexical: f.lexical,
                    best,
                    foreign: f.foreign,
                }
            })
            .collect();
        scores.sort_by(|a, b| b.score.total_cmp(&a.score));
        scores
    }
}

/// A request read and embedded, ready to be decided under any tuning.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The request, trimmed.
    intent: String,
    /// Its ordered steps with their features, when it has more than one.
    steps: Vec<(String, Features)>,
    /// The features of the whole request, when prepared.
    whole: Option<Features>,
}

impl Prepared {
    /// The number of ordered steps (zero for a request of one).
    pub fn steps(&self) -> usize {
        self.steps.len()
    }

    /// The features of every part prepared: each step, then the whole
    /// request when prepared.
    pub fn parts(&self) -> Vec<(Part, &Features)> {
        let mut out: Vec<(Part, &Features)> = self.steps.iter().enumerate().map(|(i, (_, f))| (Part::Step(i), f)).collect();
        out.extend(self.whole.as_ref().map(|f| (Part::Whole, f)));
        out
    }
}

/// What the engine chose for a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Choice {
    Refuse,
    /// One cell for the whole request.
    Whole(usize),
    /// One cell per step.
    Steps(Vec<usize>),
}

/// A choice and how sure the engine is of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub choice: Choice,
    pub confidence: f32,
}

/// The loaded engine.
pub struct Engine {
    encoder: Encoder,
    catalog: Catalog,
    embeddings: Vec<CellEmbeddings>,
    /// Content words of each cell's manifest text.
    cell_words: Vec<HashSet<String>>,
    /// The embeddings of the reject class, [`OUT_OF_SCOPE`].
    reject: Vec<Vec<f32>>,
    /// Mends typing slips against every word the engine knows.
    speller: Speller,
    /// The verbs that open out-of-scope phrases, stemmed.
    reject_verbs: HashSet<String>,
    /// Words of each cell's description and capabilities, stemmed: the
    /// actions it says it performs.
    phrase_words: Vec<HashSet<String>>,
    /// Whether each cell repeats its work at an interval.
    repeats: Vec<bool>,
    /// Inverse document frequency of each word over the cells.
    idf: HashMap<String, f32>,
    tuning: Tuning,
    /// The learned re-ranker, when one is loaded; the hand-tuned score
    /// decides otherwise.
    learned: Option<Reranker>,
    report: LoadReport,
}

/// Which part of a prepared request a step's features belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The whole request.
    Whole,
    /// The `i`th of its ordered steps.
    Step(usize),
}

/// How a step is decided: by the hand-tuned score under a tuning, or by a
/// learned re-ranker.
#[derive(Debug, Clone, Copy)]
pub enum Method<'a> {
    Tuned(&'a Tuning),
    Learned(&'a Reranker),
}

impl Engine {
    /// Finds the model, reads the catalog, and embeds the catalog (or reads
    /// the embeddings from the cache).
    pub fn load(config: &Config) -> Result<Engine, Error> {
        let dir = find_model_dir(&config.model_dirs)?;
        let encoder = Encoder::load_with(&dir, &config.adapter)?;
        let catalog = Catalog::load(&config.catalog_dir)?;
        let mut engine = Engine::new(encoder, catalog, config.cache_dir.as_deref(), config.tuning)?;
        engine.use_reranker(&config.reranker);
        Ok(engine)
    }

    /// Loads the learned re-ranker from `source`, or falls back to the
    /// hand-tuned score with a warning on stderr when it cannot be used
    /// (unreadable, another format, another model or tuning). Says which
    /// scorer now decides.
    pub fn use_reranker(&mut self, source: &RerankerSource) -> Ranker {
        let names: Vec<&str> = self.catalog.cells.iter().map(|c| c.name()).collect();
        let bytes = match source {
            RerankerSource::Off => Err(FallbackReason::Off),
            RerankerSource::Builtin => Ok(rerank::BUILTIN.to_vec()),
            RerankerSource::File(path) => std::fs::read(path).map_err(|_| FallbackReason::Missing),
        };
        let loaded = bytes.and_then(|b| rerank::read(&b, self.encoder.fingerprint(), &names, &Tuning::default()));
        let ranker = match loaded {
            Ok(r) => {
                let ranker = Ranker::Learned {
                    examples: r.examples.len(),
                };
                self.learned = Some(r);
                ranker
            }
            Err(reason) => {
                if reason != FallbackReason::Off {
                    // The engine still answers, as it did before the
                    // re-ranker: worth a warning, not an error.
                    eprintln!("quantum-intent: warning: {reason}; the hand-tuned score decides instead");
                }
                self.learned = None;
                Ranker::Fallback(reason)
            }
        };
        self.report.ranker = ranker;
        ranker
    }

    /// The learned re-ranker, when one is loaded.
    pub fn reranker(&self) -> Option<&Reranker> {
        self.learned.as_ref()
    }

    /// How the engine decides: the learned re-ranker when loaded, else the
    /// hand-tuned score.
    pub fn method(&self) -> Method<'_> {
        match &self.learned {
            Some(r) => Method::Learned(r),
            None => Method::Tuned(&self.tuning),
        }
    }

    pub fn new(encoder: Encoder, catalog: Catalog, cache_dir: Option<&Path>, tuning: Tuning) -> Result<Engine, Error> {
        let started = Instant::now();
        let (embeddings, stats) = index::build(&encoder, &catalog, cache_dir)?;
        let out = out_of_scope();
        let reject = index::embed_texts(&encoder, &out, cache_dir)?;
        let reject_verbs = out.iter().filter_map(|p| lead_verb(p)).collect();
        // Every word the engine knows: the catalog's phrases, names and
        // parameter descriptions, and the reject class.
        let mut known: Vec<&str> = out.iter().map(String::as_str).collect();
        for (e, cell) in embeddings.iter().zip(&catalog.cells) {
            known.extend(e.phrases.iter().map(|(_, p)| p.as_str()));
            known.push(cell.name());
            known.extend(cell.manifest.params.iter().flat_map(|(n, s)| [n.as_str(), s.description.as_str()]));
        }
        let speller = Speller::new(known).leave(encoder.vocabulary_words());
        let repeats = catalog
            .cells
            .iter()
            .map(|c| c.manifest.params.keys().any(|n| matches!(n.as_str(), "every" | "interval")))
            .collect();
        let phrase_words = embeddings
            .iter()
            .map(|e| e.phrases.iter().flat_map(|(_, p)| content_words(p)).collect())
            .collect();
        // The words of a cell: its name, its phrases and what its parameters
        // say.
        let cell_words: Vec<HashSet<String>> = embeddings
            .iter()
            .zip(&catalog.cells)
            .map(|(e, cell)| {
                let mut words: HashSet<String> = e.phrases.iter().flat_map(|(_, p)| content_words(p)).collect();
                words.extend(content_words(cell.name()));
                for spec in cell.manifest.params.values() {
                    words.extend(content_words(&spec.description));
                }
                words
            })
            .collect();
        let n = cell_words.len() as f32;
        let mut df: HashMap<String, usize> = HashMap::new();
        for words in &cell_words {
            for w in words {
                *df.entry(w.clone()).or_default() += 1;
            }
        }
        let idf = df.into_iter().map(|(w, d)| (w, ((n + 1.0) / (d as f32 + 0.5)).ln())).collect();
        let report = LoadReport {
            model: encoder.load_time(),
            catalog: started.elapsed(),
            index: stats,
            ranker: Ranker::Fallback(FallbackReason::Off),
        };
        Ok(Engine {
            encoder,
            catalog,
            embeddings,
            cell_words,
            reject,
            speller,
            reject_verbs,
            phrase_words,
            repeats,
            idf,
            tuning,
            learned: None,
            report,
        })
    }

    /// What the model is shown of a request: its slips mended and its
    /// values masked (see [`model_text`]).
    pub fn model_text(&self, text: &str) -> String {
        model_text(&self.speller.correct(text))
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub fn load_report(&self) -> LoadReport {
        self.report
    }

    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    pub fn set_tuning(&mut self, tuning: Tuning) {
        self.tuning = tuning;
    }

    /// Every cell's score for `text`, best first.
    pub fn rank(&self, text: &str) -> Result<Vec<Score>, Error> {
        let shown = self.model_text(text);
        let v = self.encoder.embed(&shown)?;
        Ok(self.features(text, &shown, &v).rank(&self.tuning))
    }

    /// How the whole of `text` is scored, as text: what the model is shown,
    /// the nearest out-of-scope phrase, and the five best cells with their
    /// score, best phrase similarity and lexical share. For people tuning
    /// the catalog (`--example rank`), not for programs.
    pub fn explain(&self, text: &str) -> Result<String, Error> {
        let shown = self.model_text(text);
        let v = self.encoder.embed(&shown)?;
        let features = self.features(text, &shown, &v);
        let out = out_of_scope();
        let nearest_reject = self
            .reject
            .iter()
            .zip(&out)
            .map(|(pv, p)| (cosine(&v, pv), p))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let mut lines = vec![format!("  model text: {shown}")];
        if let Some(r) = &self.learned {
            let v = r.verdict(&features);
            let chosen = v.cell.map_or("refuse", |c| self.catalog.cells[c].name());
            lines.push(format!("  learned re-ranker: {chosen} ({:.2})", v.probability));
        }
        if let Some((sim, phrase)) = nearest_reject {
            lines.push(format!("  nearest out-of-scope: {sim:.3} {phrase:?}"));
        }
        for s in features.rank(&self.tuning).iter().take(5) {
            let e = &self.embeddings[s.cell];
            let best_phrase = e
                .vectors
                .iter()
                .zip(&e.phrases)
                .map(|(pv, (_, p))| (cosine(&v, pv), p))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, p)| p.as_str())
                .unwrap_or("");
            lines.push(format!(
                "  {:<20} score {:.3} best {:.3} lexical {:.2}{} nearest {best_phrase:?}",
                self.catalog.cells[s.cell].name(),
                s.score,
                s.best,
                s.lexical,
                if features.cells[s.cell].foreign { " foreign-verb" } else { "" },
            ));
        }
        Ok(lines.join("\n"))
    }

    /// What every cell has in common with a step, before any tunable:
    /// `raw` is the step as written, `text` what the model was shown of it
    /// ([`Engine::model_text`]) and `v` its embedding.
    fn features(&self, raw: &str, text: &str, v: &[f32]) -> Features {
        let settings = params::assignments(raw);
        // Sorted, so the sums below are the same from run to run (a hash
        // set's order is not), and so is a model trained on them.
        let mut words: Vec<String> = content_words(text).into_iter().collect();
        words.sort_unstable();
        let verb = lead_verb(text).filter(|v| self.reject_verbs.contains(v));
        let periodic = asks_repetition(text);
        let total_idf: f32 = words.iter().map(|w| self.idf.get(w).copied().unwrap_or(MAX_IDF)).sum();
        let cells = self
            .embeddings
            .iter()
            .enumerate()
            .map(|(cell, e)| {
                let mut sims: Vec<f32> = e.vectors.iter().map(|pv| cosine(v, pv)).collect();
                sims.sort_by(|a, b| b.total_cmp(a));
                let shared: f32 = words
                    .iter()
                    .filter(|w| self.cell_words[cell].contains(*w))
                    .map(|w| self.idf.get(w).copied().unwrap_or(0.0))
                    .sum();
                CellFeatures {
                    sims,
                    lexical: if total_idf > 0.0 { shared / total_idf } else { 0.0 },
                    // A repeating cell runs whatever the request repeats
                    // ("every 5 minutes ping the db"): its verb is the
                    // command's, not a sign of another job.
                    foreign: verb.as_ref().is_some_and(|v| !self.phrase_words[cell].contains(v)) && !(periodic && self.repeats[cell]),
                    periodic: periodic && self.repeats[cell],
                    named: named_share(&settings, &self.catalog.cells[cell].manifest),
                }
            })
            .collect();
        let mut reject: Vec<f32> = self.reject.iter().map(|pv| cosine(v, pv)).collect();
        reject.sort_by(|a, b| b.total_cmp(a));
        reject.truncate(1);
        Features {
            cells,
            reject,
            vector: v.to_vec(),
        }
    }

    /// Reads and embeds a request: its steps when it has several, and the
    /// whole request when it has one or when `whole` asks for it.
    pub fn prepare(&self, intent: &str, embed: &dyn Embed, whole: bool) -> Result<Prepared, Error> {
        let intent = intent.trim().to_owned();
        let mut prepared = Prepared {
            steps: Vec::new(),
            whole: None,
            intent,
        };
        if prepared.intent.is_empty() {
            return Ok(prepared);
        }
        let steps = split_steps(&prepared.intent);
        if steps.len() > 1 {
            let masked: Vec<String> = steps.iter().map(|s| self.model_text(s)).collect();
            let texts: Vec<&str> = masked.iter().map(String::as_str).collect();
            let vectors = embed.embed_batch(&texts)?;
            prepared.steps = steps
                .into_iter()
                .zip(masked.iter().zip(&vectors))
                .map(|(step, (text, v))| {
                    let features = self.features(&step, text, v);
                    (step, features)
                })
                .collect();
        }
        if prepared.steps.is_empty() || whole {
            self.prepare_whole(&mut prepared, embed)?;
        }
        Ok(prepared)
    }

    fn prepare_whole(&self, prepared: &mut Prepared, embed: &dyn Embed) -> Result<(), Error> {
        let text = self.model_text(&prepared.intent);
        let v = embed.embed_batch(&[&text])?.pop().unwrap_or_default();
        prepared.whole = Some(self.features(&prepared.intent, &text, &v));
        Ok(())
    }

    /// What the engine answers to a prepared request under `tuning` (the
    /// hand-tuned score); `None` when the steps do not all fit and the whole
    /// request, not prepared, is needed.
    pub fn decide(&self, prepared: &Prepared, tuning: &Tuning) -> Option<Decision> {
        self.decide_with(prepared, Method::Tuned(tuning))
    }

    /// What the engine answers to a prepared request by `method`.
    pub fn decide_with(&self, prepared: &Prepared, method: Method<'_>) -> Option<Decision> {
        match method {
            Method::Tuned(t) => self.decide_by(prepared, &mut |_, f| tuned_verdict(t, f)),
            Method::Learned(r) => self.decide_by(prepared, &mut |_, f| r.verdict(f)),
        }
    }

    /// What the engine answers to a prepared request when each part is
    /// decided by `verdict`; `None` when the steps do not all fit and the
    /// whole request, not prepared, is needed.
    ///
    /// Each step of a request of several must fit some cell; otherwise the
    /// request is taken as one.
    pub fn decide_by(&self, prepared: &Prepared, verdict: &mut dyn FnMut(Part, &Features) -> Verdict) -> Option<Decision> {
        if prepared.intent.is_empty() {
            return Some(Decision {
                choice: Choice::Refuse,
                confidence: 1.0,
            });
        }
        if !prepared.steps.is_empty() {
            let mut cells = Vec::with_capacity(prepared.steps.len());
            let mut confidence = 1.0f32;
            for (i, (_, features)) in prepared.steps.iter().enumerate() {
                let Verdict {
                    cell: Some(cell),
                    probability,
                } = verdict(Part::Step(i), features)
                else {
                    break;
                };
                confidence = confidence.min(probability);
                cells.push(cell);
            }
            if cells.len() == prepared.steps.len() {
                return Some(Decision {
                    choice: Choice::Steps(cells),
                    confidence,
                });
            }
        }
        let whole = prepared.whole.as_ref()?;
        let v = verdict(Part::Whole, whole);
        Some(Decision {
            choice: v.cell.map_or(Choice::Refuse, Choice::Whole),
            confidence: v.probability,
        })
    }

    /// The plan of a decision: the chosen cells with their parameters; a
    /// refusal, with the reason, when a chosen cell cannot make what the
    /// request asks of it ([`params::unservable`]: "convert it to pdf").
    pub fn plan(&self, prepared: &Prepared, decision: &Decision) -> Plan {
        let texts: Vec<(usize, &str)> = match &decision.choice {
            Choice::Refuse => Vec::new(),
            Choice::Whole(cell) => vec![(*cell, prepared.intent.as_str())],
            Choice::Steps(chosen) => prepared
                .steps
                .iter()
                .zip(chosen)
                .map(|((step, _), &c)| (c, step.as_str()))
                .collect(),
        };
        for (cell, text) in texts {
            if let Some(why) = params::unservable(&self.catalog.cells[cell].manifest, text) {
                return Plan {
                    intent: prepared.intent.clone(),
                    cells: Vec::new(),
                    confidence: decision.confidence,
                    reason: Some(why),
                };
            }
        }
        let intent = prepared.intent.clone();
        let confidence = decision.confidence;
        match &decision.choice {
            Choice::Refuse => Plan {
                intent,
                cells: Vec::new(),
                confidence,
                reason: Some(NOTHING_FITS.to_owned()),
            },
            Choice::Whole(cell) => Plan {
                cells: vec![self.planned_cell(*cell, &intent)],
                intent,
                confidence,
                reason: None,
            },
            Choice::Steps(chosen) => {
                let mut cells = Vec::with_capacity(chosen.len());
                let mut previous: Option<params::Candidate> = None;
                for ((step, _), &cell) in prepared.steps.iter().zip(chosen) {
                    let mut planned = self.planned_cell(cell, step);
                    carry_reference(&mut planned, &self.catalog.cells[cell].manifest, step, previous.as_ref());
                    previous = first_reference(step).or(previous);
                    cells.push(planned);
                }
                // Two steps in a row that land on the same cell are one
                // request said twice ("check for updates, then install
                // them"): one step, the later words winning.
                cells.dedup_by(|later, kept| {
                    if later.name != kept.name {
                        return false;
                    }
                    kept.params.append(&mut later.params);
                    kept.missing.retain(|m| !kept.params.contains_key(m));
                    true
                });
                Plan {
                    intent,
                    cells,
                    confidence,
                    reason: None,
                }
            }
        }
    }

    /// Turns a request into a plan, or a refusal with a reason.
    pub fn ask(&self, intent: &str) -> Result<Plan, Error> {
        self.ask_with(intent, self.method(), &self.encoder)
    }

    /// [`Engine::ask`] decided by `method`, with texts embedded by `embed`.
    pub fn ask_with(&self, intent: &str, method: Method<'_>, embed: &dyn Embed) -> Result<Plan, Error> {
        let mut prepared = self.prepare(intent, embed, false)?;
        let decision = match self.decide_with(&prepared, method) {
            Some(d) => d,
            None => {
                self.prepare_whole(&mut prepared, embed)?;
                self.decide_with(&prepared, method).expect("the whole request is prepared")
            }
        };
        Ok(self.plan(&prepared, &decision))
    }

    fn planned_cell(&self, cell: usize, text: &str) -> PlannedCell {
        let manifest = &self.catalog.cells[cell].manifest;
        // Slips mended here too ("chekc for updates"); values are never
        // touched by the speller.
        let params = params::fill(manifest, &self.speller.correct(text));
        let missing = missing_params(manifest, &params);
        let defaults = manifest
            .params
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.default.clone()?)))
            .collect();
        PlannedCell {
            name: manifest.name.as_str().to_owned(),
            params,
            missing,
            defaults,
        }
    }
}

/// The hand-tuned score's verdict on one step: its best cell when that
/// clears the threshold and the reject class, with the confidence of
/// [`Tuning::confidence`]; else a refusal, as sure as the best cell is
/// unlikely to fit or an out-of-scope phrase is nearer.
fn tuned_verdict(tuning: &Tuning, features: &Features) -> Verdict {
    let scores = features.rank(tuning);
    if tuning.accepts(&scores, &features.reject) {
        return Verdict {
            cell: Some(scores[0].cell),
            probability: tuning.confidence(&scores),
        };
    }
    let nearer = scores
        .first()
        .map_or(0.0, |s| nearest(&features.reject) - s.best - tuning.margin(s));
    Verdict {
        cell: None,
        probability: (1.0 - tuning.fit_probability(&scores)).max(sigmoid(tuning.margin_slope * nearer)),
    }
}

fn missing_params(manifest: &quantum_model::Manifest, params: &BTreeMap<String, String>) -> Vec<String> {
    manifest
        .params
        .iter()
        .filter(|(n, s)| s.default.is_none() && !params.contains_key(*n))
        .map(|(n, _)| n.clone())
        .collect()
}

/// "compress it", "hash its contents", "then ping it": a later step that
/// refers to what the step before it named gets that value for its first
/// parameter of the same sort (a required path, or a host) left unset.
fn carry_reference(planned: &mut PlannedCell, manifest: &quantum_model::Manifest, step: &str, previous: Option<&params::Candidate>) {
    let Some(previous) = previous else { return };
    let words: Vec<String> = step
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .collect();
    let refers = words
        .iter()
        .any(|w| matches!(w.as_str(), "it" | "its" | "them" | "that" | "those" | "result"));
    // "then search for *.log files there": the place named before is where
    // the step works, even where that place has a default.
    let there = words.iter().any(|w| w == "there");
    if !refers && !there {
        return;
    }
    let target = manifest
        .params
        .iter()
        .find(|(n, s)| {
            !planned.params.contains_key(*n)
                && match previous.kind {
                    params::Kind::Path => {
                        s.kind == quantum_model::ParamType::Path
                            && (s.default.is_none() || (there && s.description.to_ascii_lowercase().contains("directory")))
                    }
                    params::Kind::Host => s.kind == quantum_model::ParamType::String && params::is_host_param(n, s),
                    _ => false,
                }
        })
        .map(|(n, _)| n.clone());
    if let Some(name) = target {
        planned.params.insert(name.clone(), previous.value.clone());
        planned.missing.retain(|m| *m != name);
    }
}

/// Share of `settings` that name a parameter of `manifest` (never a
/// secret one) with a value of its type.
fn named_share(settings: &[params::Assignment], manifest: &quantum_model::Manifest) -> f32 {
    if settings.is_empty() {
        return 0.0;
    }
    let named = settings.iter().filter(|a| params::setting_value(manifest, a).is_some()).count();
    named as f32 / settings.len() as f32
}

/// What the model is shown of a request: its values masked.
pub fn model_text(text: &str) -> String {
    let (tokens, candidates) = params::scan(text);
    params::masked(&tokens, &candidates)
}

/// The first path or host a step names, for a later step to refer to.
fn first_reference(text: &str) -> Option<params::Candidate> {
    params::scan(text)
        .1
        .into_iter()
        .find(|c| matches!(c.kind, params::Kind::Path | params::Kind::Host))
}

/// Words that order steps: "X then Y", "X; after that Y".
const STEP_BREAKS: &[&str] = &[
    ", and then ",
    " and then ",
    ", then ",
    "; then ",
    " then ",
    "; after that ",
    ", after that ",
    " after that ",
    ". after that ",
    " and afterwards ",
    ", afterwards ",
    " afterwards ",
    " and after that ",
    " followed by ",
    " and finally ",
    ", finally ",
    "; ",
    ". then ",
    ". ",
];

/// Whether a sentence says how things are rather than asks for something:
/// it opens with its subject ("My laptop ...", "The images ...", "I've
/// been sent ..."), not with a verb or a request ("Back it up", "Could
/// you ...", "I want ...").
fn states(sentence: &str) -> bool {
    let mut words = sentence
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\''));
    let first = words.next().unwrap_or("");
    let second = words.next().unwrap_or("");
    matches!(
        first,
        "my" | "our" | "the" | "this" | "these" | "those" | "there" | "there's" | "it" | "it's" | "its" | "we've" | "i've" | "i'm"
    ) || (first == "i" && matches!(second, "have" | "got" | "was" | "am" | "had" | "received" | "keep"))
}

/// Words before "then" that make it a time ("around then"), not an order.
const THEN_AS_TIME: &[&str] = &["around", "since", "until", "till", "by", "from", "before", "back", "just", "even"];

/// Splits a request into its ordered steps.
pub fn split_steps(text: &str) -> Vec<String> {
    let mut steps = vec![text.to_owned()];
    for sep in STEP_BREAKS {
        steps = steps
            .into_iter()
            .flat_map(|s| {
                let lower = s.to_ascii_lowercase();
                let mut parts = Vec::new();
                let mut start = 0;
                let mut sentence = 0;
                for (i, _) in lower.match_indices(sep) {
                    // "My laptop keeps dropping the VPN. Can you look in
                    // the journal?": a sentence that says how things are
                    // is what the next one asks about, not a step of its
                    // own.
                    if *sep == ". " {
                        let statement = states(&lower[sentence..i]);
                        sentence = i + sep.len();
                        if statement {
                            continue;
                        }
                    }
                    // "around then", "since then", "by then": a time, not
                    // an order of steps.
                    if sep.trim() == "then" && lower[..i].split_whitespace().last().is_some_and(|w| THEN_AS_TIME.contains(&w)) {
                        continue;
                    }
                    parts.push(s[start..i].to_owned());
                    start = i + sep.len();
                }
                parts.push(s[start..].to_owned());
                parts
            })
            .map(|s| s.trim().trim_end_matches(['.', ',', ';']).trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
    }
    steps
}

/// The reject class: requests no cell of a system catalog serves, by kind
/// (talk, general knowledge, messaging, media, desktop, devices, accounts,
/// software, harmful asks), one phrase per line. A data file rather than a
/// word list: each phrase is embedded, so a request is refused for being
/// *like* one of them, in any words.
pub const OUT_OF_SCOPE: &str = include_str!("../data/out-of-scope.txt");

/// The phrases of [`OUT_OF_SCOPE`].
pub fn out_of_scope() -> Vec<String> {
    OUT_OF_SCOPE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// IDF given to words no cell uses.
const MAX_IDF: f32 = 3.0;

const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "with", "from", "by", "at", "as", "is", "are", "be", "was", "were", "it",
    "its", "this", "that", "these", "those", "my", "me", "i", "you", "your", "we", "our", "can", "could", "would", "please", "what",
    "which", "who", "how", "why", "where", "when", "do", "does", "did", "some", "any", "all", "every", "each", "there", "here", "into",
    "onto", "up", "out", "so", "if", "not", "no", "just", "want", "need", "like", "get", "give", "make", "let", "one", "s", "t", "m",
    "than", "then", "after", "them", "they", "their", "have", "has", "had", "will", "shall", "should", "about", "over", "under", "between",
    "use", "using", "now", "right", "new", "way", "much", "many", "more", "most", "too", "very", "also", "only", "another", "other",
];

/// Whether a request asks for something over and over: a duration after
/// "every", "each" or "per", or "hourly", "daily", "twice a day".
fn asks_repetition(text: &str) -> bool {
    params::scan(text).1.iter().any(|c| {
        c.kind == params::Kind::Duration
            && (c.before.last().is_some_and(|w| matches!(w.as_str(), "every" | "each" | "per"))
                || text
                    .split_whitespace()
                    .map(|w| w.trim_matches(|ch: char| !ch.is_ascii_alphabetic()).to_ascii_lowercase())
                    .any(|w| matches!(w.as_str(), "hourly" | "daily" | "nightly" | "weekly" | "twice" | "every" | "each")))
    })
}

/// Words that lead into a request without being its verb.
const LEAD_INS: &[&str] = &[
    "please", "pls", "plz", "kindly", "can", "could", "would", "will", "you", "u", "i", "we", "want", "wanna", "need", "to", "help", "me",
    "let", "let's", "like", "just", "quickly", "hey", "ok", "okay", "so", "now", "go", "ahead", "and", "try", "d", "ll", "id", "i'd",
];

/// The stemmed verb a request leads with ("please translate this" ->
/// "translat"), if it leads with a word that is not a question or a filler.
fn lead_verb(text: &str) -> Option<String> {
    let word = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '\'' || c == '-'))
        .map(|w| w.trim_matches(['\'', '-']).to_ascii_lowercase())
        .filter(|w| !w.is_empty())
        .find(|w| !LEAD_INS.contains(&w.as_str()))?;
    if STOP_WORDS.contains(&word.as_str()) || !word.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    Some(stem(&word))
}

/// Lower-case content words with plurals folded.
fn content_words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .map(|w| w.to_ascii_lowercase())
        .filter(|w| w.len() > 1 && !STOP_WORDS.contains(&w.as_str()) && !w.bytes().all(|b| b.is_ascii_digit()))
        .map(|w| stem(&w))
        .collect()
}

/// A crude stemmer: enough to meet "backups"/"backup", "compressing"/"compress".
/// Applied until nothing changes, so "warnings" and "warning" meet.
fn stem(w: &str) -> String {
    let mut s = w.to_owned();
    'again: loop {
        for suffix in ["ing", "ed", "es", "s"] {
            if s.len() > suffix.len() + 3 && s.ends_with(suffix) {
                s.truncate(s.len() - suffix.len());
                continue 'again;
            }
        }
        return s;
    }
}

fn nearest(sims: &[f32]) -> f32 {
    sims.first().copied().unwrap_or(f32::MIN)
}

fn best_score(scores: &[Score]) -> f32 {
    scores.first().map_or(0.0, |s| s.score)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_split_at_ordering_words() {
        assert_eq!(split_steps("back up ~/docs then compress it"), ["back up ~/docs", "compress it"]);
        assert_eq!(
            split_steps("back up /etc and then check for system updates."),
            ["back up /etc", "check for system updates"]
        );
        assert_eq!(
            split_steps("mirror ~/work to /mnt/usb; after that show the disk usage"),
            ["mirror ~/work to /mnt/usb", "show the disk usage"]
        );
        assert_eq!(
            split_steps("compress ~/reports and afterwards compute its sha256"),
            ["compress ~/reports", "compute its sha256"]
        );
        // "and" alone does not order anything: "cpu and memory" is one request.
        assert_eq!(split_steps("show cpu and memory usage"), ["show cpu and memory usage"]);
        // A sentence that says how things are belongs to the request after it.
        assert_eq!(
            split_steps("My backup drive is at /mnt/bk. Copy ~/notes there. Then hash the copy."),
            ["My backup drive is at /mnt/bk. Copy ~/notes there", "hash the copy"]
        );
        assert_eq!(
            split_steps("Back up ~/a to /mnt/b. Hash the copy."),
            ["Back up ~/a to /mnt/b", "Hash the copy"]
        );
        assert_eq!(split_steps("keep ~/a and ~/b in sync"), ["keep ~/a and ~/b in sync"]);
        // "then" as a time is no order.
        assert_eq!(
            split_steps("what did the logs say around then for cron.service"),
            ["what did the logs say around then for cron.service"]
        );
    }

    #[test]
    fn stems_meet() {
        assert_eq!(stem("warnings"), stem("warning"));
        assert_eq!(stem("backups"), stem("backup"));
        assert_eq!(stem("compressing"), stem("compress"));
        let words = content_words("Show me the biggest folders, please!");
        assert!(
            words.contains("biggest") && words.contains("folder") && !words.contains("the"),
            "{words:?}"
        );
    }

    #[test]
    fn confidence_is_a_probability() {
        for x in [-100.0f32, -1.0, 0.0, 1.0, 100.0] {
            let p = sigmoid(x);
            assert!((0.0..=1.0).contains(&p));
        }
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-6);
    }
}
