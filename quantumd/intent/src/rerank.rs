//! The learned re-ranker: a listwise softmax over every cell of the catalog
//! plus "refuse", trained on the tuning data, that decides each step in
//! place of the hand-tuned score of [`Tuning`].
//!
//! Why a re-ranker and not more phrases or tunables: every earlier round
//! added phrases and tunables that fitted the tuning phrasings, and the
//! held-out set stayed where it was. A model with a few dozen weights over
//! *class-agnostic* features cannot memorise phrasings; it learns how much
//! each kind of evidence is worth.
//!
//! Each (step, cell) candidate is described by features that say nothing
//! about which cell it is ([`CELL_FEATURES`]): the similarity of the step
//! with the cell's best phrase and with its next few, the shared-words
//! prior, the out-of-scope-verb and repetition flags, today's score and its
//! margin over the other cells, how much nearer the cell's best phrase is
//! than the nearest out-of-scope phrase, and how near the step comes to the
//! tuning requests labelled with that cell (a nearest-neighbour feature
//! over the examples shipped with the weights). A cell an administrator adds
//! later has no examples: its neighbour features read as "no evidence
//! either way" (zero gain over its best phrase), and the training shows the
//! model such cells on purpose (see [`ABSENT_EVERY`]), so it is not ruled
//! out for having none. The refusal is one more candidate with its own
//! features ([`REFUSE_FEATURES`]): the nearest out-of-scope phrase, the
//! nearest refused tuning request, and how the best cell looks.
//!
//! A training example's neighbour features are computed without its own
//! request (nor copies of it), so they look as they will for a request the
//! tuning data does not hold; a hyper-parameter ([`Neighbourhood`]) may
//! also leave out its whole file of the tuning data.
//!
//! The model is linear in those features, so the softmax is a multinomial
//! logistic regression with one shared weight vector (a cell's logit is
//! the weights times its features; the refusal's has a bias). Linear on
//! purpose: with ~1,600 requests whose phrasings the catalog's phrases were
//! written against, a model with more capacity would learn the phrasings
//! again; a linear one over class-agnostic features can only learn how much
//! each kind of evidence weighs. It is fitted with L2 by Newton's method
//! (deterministic: no random start, fixed order, features summed in a fixed
//! order), and its L2 weight, its feature set, its neighbourhood and the
//! offset added to the refusal's logit are chosen by cross-validation on the
//! tuning data only, one fold per file of it (see
//! [`crate::evaluation::cross_validate_reranker`]). The refusal offset is
//! chosen so the cross-validated out-of-scope refusal does not fall below
//! the hand-tuned scorer's ([`REFUSAL_TARGET`]).
//!
//! The weights, the standardisation and the examples (their embeddings
//! quantised to one byte per dimension, with their labels by cell name)
//! ship in `data/reranker.bin` (about 0.7 MB), built into the binary like
//! the reject class (`data/out-of-scope.txt`): the binary and its weights
//! cannot drift apart, and no package installs or finds a file for it.
//! `intent-bench --train --by-set` writes it; a file elsewhere can be
//! loaded instead ([`crate::engine::RerankerSource::File`]). The file
//! records the model it was embedded with and the tuning of the features:
//! another model, an unreadable file or another tuning falls back to the
//! hand-tuned score with a warning ([`Ranker::Fallback`]). Examples labelled
//! with a cell the catalog no longer has are dropped; cells the catalog
//! gained have none.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::{Features, Tuning};

/// The re-ranker shipped with the engine, written by `intent-bench --train`.
pub const BUILTIN: &[u8] = include_bytes!("../data/reranker.bin");

const MAGIC: &[u8; 8] = b"QINTRR01";

/// The features of a cell candidate, in order.
pub const CELL_FEATURES: &[&str] = &[
    "best phrase",
    "mean of the next 2 phrases",
    "mean of the next 5 phrases",
    "shared-words prior",
    "out-of-scope verb",
    "repetition",
    "today's score",
    "margin over the best other cell",
    "ranked first today",
    "nearest example gain",
    "nearest 3 examples gain",
    "nearer than out-of-scope",
    "nearest example overall",
    "settings naming its parameters",
];

/// The features of the refusal candidate, in order.
pub const REFUSE_FEATURES: &[&str] = &[
    "bias",
    "nearest out-of-scope phrase",
    "nearest refused example",
    "nearest 3 refused examples",
    "best cell's score",
    "best cell's best phrase",
    "best cell's out-of-scope verb",
    "out-of-scope nearer than the best cell",
    "refused example nearer than any cell's",
    "nearest example overall",
];

const CELLS: usize = 14;
/// All features: a cell candidate fills the first [`CELLS`], the refusal the
/// rest.
pub const DIM: usize = CELLS + 10;

/// The features that read the examples (the nearest-neighbour features).
const NEIGHBOUR_FEATURES: &[usize] = &[9, 10, 12, CELLS + 2, CELLS + 3, CELLS + 8, CELLS + 9];

/// One training example in this many is shown with one cell's examples
/// hidden (the cell chosen by the example's index), as if that cell had
/// been added after the training: a new cell must still be chosen on its
/// phrases alone.
pub const ABSENT_EVERY: usize = 4;

/// The cross-validated out-of-scope refusal of the hand-tuned scorer on the
/// tuning data (97.1 %, 5 folds, at 86141dc): the refusal offset is chosen
/// so the re-ranker's does not fall below it.
pub const REFUSAL_TARGET: f64 = 0.971;

/// Which features a model may use: a hyper-parameter chosen by
/// cross-validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeatureSet {
    /// Every feature.
    All,
    /// No nearest-neighbour feature: the phrases, the prior and today's
    /// score only.
    NoNeighbours,
}

impl FeatureSet {
    pub const ALL: [FeatureSet; 2] = [FeatureSet::All, FeatureSet::NoNeighbours];

    fn uses(self, j: usize) -> bool {
        match self {
            FeatureSet::All => true,
            FeatureSet::NoNeighbours => !NEIGHBOUR_FEATURES.contains(&j),
        }
    }
}

/// Which tuning requests a training example may have as neighbours: a
/// hyper-parameter, since it decides how much the model trusts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Neighbourhood {
    /// Any but its own request (and copies of it).
    OtherRequests,
    /// Only those of the other files of the tuning data: a file's
    /// neighbouring lines are often variations of one phrasing, nearer to
    /// each other than a new request will be to any of them.
    OtherSets,
}

impl Neighbourhood {
    pub const ALL: [Neighbourhood; 2] = [Neighbourhood::OtherRequests, Neighbourhood::OtherSets];
}

/// Which scorer the engine runs, for `quantumctl` and quantumd to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranker {
    /// The learned re-ranker, with this many examples.
    Learned { examples: usize },
    /// The hand-tuned score ([`Tuning`]), because the re-ranker is off or
    /// could not be used.
    Fallback(FallbackReason),
}

/// Why the engine runs the hand-tuned score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// Turned off in the configuration.
    Off,
    /// The weights file could not be read.
    Missing,
    /// The weights file is not a re-ranker of this format.
    Malformed,
    /// The weights were trained with another embedding model.
    OtherModel,
    /// The weights were trained over features of another tuning.
    OtherTuning,
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FallbackReason::Off => "the learned re-ranker is turned off",
            FallbackReason::Missing => "the learned re-ranker's weights cannot be read",
            FallbackReason::Malformed => "the learned re-ranker's weights are not in a format this engine reads",
            FallbackReason::OtherModel => "the learned re-ranker was trained with another embedding model",
            FallbackReason::OtherTuning => "the learned re-ranker was trained over another tuning of the score",
        })
    }
}

/// Tuning requests with their labels: the neighbours of the
/// nearest-neighbour features.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub dim: usize,
    /// `len * dim` values, one embedding after another.
    pub vectors: Vec<f32>,
    /// The cell of each example (an index into the catalog), `None` for a
    /// refusal.
    pub labels: Vec<Option<usize>>,
}

impl Examples {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn push(&mut self, vector: &[f32], label: Option<usize>) {
        self.dim = vector.len();
        self.vectors.extend_from_slice(vector);
        self.labels.push(label);
    }

    fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

/// An embedding as it is stored: each dimension in one signed byte, scaled
/// by the largest magnitude. Training quantises too, so the model is fitted
/// on what it will read.
pub fn quantised(v: &[f32]) -> Vec<f32> {
    let (scale, bytes) = quantise(v);
    bytes.iter().map(|&b| f32::from(b) * scale).collect()
}

fn quantise(v: &[f32]) -> (f32, Vec<i8>) {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    (scale, v.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8).collect())
}

/// How near a step comes to the examples, per cell and for the refusals.
#[derive(Debug, Clone)]
pub struct Neighbours {
    /// The three nearest similarities of each cell's examples, best first
    /// (fewer when it has fewer).
    cells: Vec<Vec<f32>>,
    refused: Vec<f32>,
    /// The label of the nearest example of all, if any.
    nearest: Option<Option<usize>>,
}

/// The neighbours of `v` among `examples`, leaving out those `skip` names
/// (training leaves out the example's own request), and treating cell
/// `absent`'s examples as missing.
pub fn neighbours(examples: &Examples, v: &[f32], cells: usize, skip: &dyn Fn(usize, f32) -> bool, absent: Option<usize>) -> Neighbours {
    let mut out = Neighbours {
        cells: vec![Vec::new(); cells],
        refused: Vec::new(),
        nearest: None,
    };
    let mut nearest = f32::MIN;
    for i in 0..examples.len() {
        let label = examples.labels[i];
        if label.is_some() && label == absent {
            continue;
        }
        let sim: f32 = examples.vector(i).iter().zip(v).map(|(a, b)| a * b).sum();
        if skip(i, sim) {
            continue;
        }
        if sim > nearest {
            nearest = sim;
            out.nearest = Some(label);
        }
        let top = match label {
            Some(c) if c < cells => &mut out.cells[c],
            Some(_) => continue,
            None => &mut out.refused,
        };
        insert_top3(top, sim);
    }
    out
}

fn insert_top3(top: &mut Vec<f32>, sim: f32) {
    if top.len() == 3 && sim <= top[2] {
        return;
    }
    let at = top.iter().position(|&s| sim > s).unwrap_or(top.len());
    top.insert(at, sim);
    top.truncate(3);
}

fn mean(values: &[f32]) -> f32 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f32>() / values.len() as f32
    }
}

/// The candidates of one step: a row of [`DIM`] features per cell, then
/// the refusal's row.
pub fn candidates(features: &Features, base: &Tuning, nb: &Neighbours) -> Vec<[f32; DIM]> {
    let n = features.cells.len();
    let mut score = vec![0.0f32; n];
    let ranked = features.rank(base);
    for s in &ranked {
        score[s.cell] = s.score;
    }
    let top = ranked.first().map_or(0, |s| s.cell);
    let second = ranked.get(1).map_or(f32::MIN, |s| s.score);
    let oos = features.reject.first().copied().unwrap_or(0.0);
    let mut rows = Vec::with_capacity(n + 1);
    let mut best_gain = f32::MIN;
    for (c, f) in features.cells.iter().enumerate() {
        let best = f.sims.first().copied().unwrap_or(0.0);
        let next = |k: usize| mean(&f.sims[1.min(f.sims.len())..(1 + k).min(f.sims.len())]);
        let other = if c == top { second } else { score[top] };
        let near = &nb.cells[c];
        // No examples: no evidence either way, a gain of zero.
        let (gain1, gain3) = if near.is_empty() {
            (0.0, 0.0)
        } else {
            (near[0] - best, mean(near) - best)
        };
        best_gain = best_gain.max(near.first().copied().unwrap_or(best));
        let mut row = [0.0f32; DIM];
        row[..CELLS].copy_from_slice(&[
            best,
            next(2),
            next(5),
            f.lexical,
            f32::from(u8::from(f.foreign)),
            f32::from(u8::from(f.periodic)),
            score[c],
            score[c] - other.max(-1.0),
            f32::from(u8::from(c == top)),
            gain1,
            gain3,
            best - oos,
            f32::from(u8::from(nb.nearest == Some(Some(c)))),
            f.named,
        ]);
        rows.push(row);
    }
    let top_features = features.cells.get(top);
    let top_best = top_features.and_then(|f| f.sims.first().copied()).unwrap_or(0.0);
    let refused1 = nb.refused.first().copied().unwrap_or(oos);
    let mut row = [0.0f32; DIM];
    row[CELLS..].copy_from_slice(&[
        1.0,
        oos,
        refused1,
        if nb.refused.is_empty() { oos } else { mean(&nb.refused) },
        ranked.first().map_or(0.0, |s| s.score),
        top_best,
        f32::from(u8::from(top_features.is_some_and(|f| f.foreign))),
        oos - top_best,
        refused1 - best_gain.max(-1.0),
        f32::from(u8::from(nb.nearest == Some(None))),
    ]);
    rows.push(row);
    rows
}

/// A trained re-ranker.
#[derive(Debug, Clone)]
pub struct Reranker {
    /// The tuning of today's score, which some features read.
    pub base: Tuning,
    pub features: FeatureSet,
    /// Which tuning requests its training examples had as neighbours.
    pub neighbourhood: Neighbourhood,
    /// The L2 weight it was trained with.
    pub l2: f64,
    /// Standardisation: a feature's value `x` enters as `(x - mean) / scale`.
    pub mean: [f32; DIM],
    pub scale: [f32; DIM],
    pub weights: [f32; DIM],
    /// Added to the refusal's logit: larger refuses more.
    pub refuse_offset: f32,
    pub examples: Examples,
}

/// What the re-ranker makes of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The chosen cell, `None` to refuse.
    pub cell: Option<usize>,
    /// The probability of the choice under the softmax.
    pub probability: f32,
}

impl Reranker {
    /// The logits of each candidate (the refusal last, without the
    /// offset).
    pub fn logits(&self, rows: &[[f32; DIM]]) -> Vec<f32> {
        let last = rows.len().saturating_sub(1);
        rows.iter()
            .enumerate()
            .map(|(r, row)| {
                let range = if r == last { CELLS..DIM } else { 0..CELLS };
                range.map(|j| self.weights[j] * (row[j] - self.mean[j]) / self.scale[j]).sum()
            })
            .collect()
    }

    /// The neighbours of a step among the shipped examples.
    pub fn neighbours(&self, features: &Features) -> Neighbours {
        neighbours(&self.examples, &features.vector, features.cells.len(), &|_, _| false, None)
    }

    /// The choice for one step.
    pub fn verdict(&self, features: &Features) -> Verdict {
        let rows = candidates(features, &self.base, &self.neighbours(features));
        verdict(&self.logits(&rows), self.refuse_offset)
    }
}

/// The choice from candidates' logits (the refusal last) under a refusal
/// offset: the most probable candidate, and its probability.
pub fn verdict(logits: &[f32], refuse_offset: f32) -> Verdict {
    let last = logits.len() - 1;
    let logit = |i: usize| if i == last { logits[i] + refuse_offset } else { logits[i] };
    let max = (0..logits.len()).map(logit).fold(f32::MIN, f32::max);
    let total: f32 = (0..logits.len()).map(|i| (logit(i) - max).exp()).sum();
    // Ties go to the first: a cell before the refusal.
    let best = (0..logits.len()).fold(0, |b, i| if logit(i) > logit(b) { i } else { b });
    Verdict {
        cell: (best != last).then_some(best),
        probability: 1.0 / total,
    }
}

/// What the file holds besides the examples' vectors.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    /// Hex BLAKE3 fingerprint of the embedding model.
    model: String,
    base: [f32; 8],
    base_pool: usize,
    features: FeatureSet,
    neighbourhood: Neighbourhood,
    l2: f64,
    feature_names: Vec<String>,
    mean: Vec<f32>,
    scale: Vec<f32>,
    weights: Vec<f32>,
    refuse_offset: f32,
    /// The label of each example: a cell's name, or `-`.
    labels: Vec<String>,
    dim: usize,
    /// How the model was chosen, for people reading the file.
    note: String,
}

fn tuning_values(t: &Tuning) -> [f32; 8] {
    [
        t.best_weight,
        t.lexical_weight,
        t.reject_margin,
        t.action_penalty,
        t.periodic_bonus,
        t.threshold,
        t.slope,
        t.margin_slope,
    ]
}

/// Writes a re-ranker whose examples are labelled by `cell_names`.
pub fn write(path: &Path, r: &Reranker, model: &[u8; 32], cell_names: &[String], note: &str) -> std::io::Result<()> {
    let meta = Meta {
        model: hex(model),
        base: tuning_values(&r.base),
        base_pool: r.base.pool,
        features: r.features,
        neighbourhood: r.neighbourhood,
        l2: r.l2,
        feature_names: CELL_FEATURES.iter().chain(REFUSE_FEATURES).map(|s| (*s).to_owned()).collect(),
        mean: r.mean.to_vec(),
        scale: r.scale.to_vec(),
        weights: r.weights.to_vec(),
        refuse_offset: r.refuse_offset,
        labels: r
            .examples
            .labels
            .iter()
            .map(|l| l.map_or_else(|| "-".to_owned(), |c| cell_names[c].clone()))
            .collect(),
        dim: r.examples.dim,
        note: note.to_owned(),
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&json);
    for i in 0..r.examples.len() {
        let (scale, q) = quantise(r.examples.vector(i));
        bytes.extend_from_slice(&scale.to_le_bytes());
        bytes.extend(q.iter().map(|&b| b as u8));
    }
    std::fs::write(path, bytes)
}

/// Reads a re-ranker for a catalog whose cells are `cell_names`, embedded
/// by the model `model`, with features over `base`.
pub fn read(bytes: &[u8], model: &[u8; 32], cell_names: &[&str], base: &Tuning) -> Result<Reranker, FallbackReason> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(FallbackReason::Malformed)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or(FallbackReason::Malformed)?;
    let len = u32::from_le_bytes(*len) as usize;
    let json = rest.get(..len).ok_or(FallbackReason::Malformed)?;
    let meta: Meta = serde_json::from_slice(json).map_err(|_| FallbackReason::Malformed)?;
    let vectors = &rest[len..];
    let names_match = meta
        .feature_names
        .iter()
        .map(String::as_str)
        .eq(CELL_FEATURES.iter().chain(REFUSE_FEATURES).copied());
    let n = meta.labels.len();
    if !names_match || meta.mean.len() != DIM || meta.scale.len() != DIM || meta.weights.len() != DIM || vectors.len() != n * (4 + meta.dim)
    {
        return Err(FallbackReason::Malformed);
    }
    if meta.model != hex(model) {
        return Err(FallbackReason::OtherModel);
    }
    if meta.base != tuning_values(base) || meta.base_pool != base.pool {
        return Err(FallbackReason::OtherTuning);
    }
    let index: HashMap<&str, usize> = cell_names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut examples = Examples::default();
    for (label, chunk) in meta.labels.iter().zip(vectors.chunks_exact(4 + meta.dim)) {
        let label = match label.as_str() {
            "-" => None,
            // A cell the catalog no longer has: its examples say nothing.
            name => match index.get(name) {
                Some(&c) => Some(c),
                None => continue,
            },
        };
        let scale = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let v: Vec<f32> = chunk[4..].iter().map(|&b| f32::from(b as i8) * scale).collect();
        examples.push(&v, label);
    }
    let array = |v: &[f32]| -> [f32; DIM] { v.try_into().expect("length checked") };
    Ok(Reranker {
        base: *base,
        features: meta.features,
        neighbourhood: meta.neighbourhood,
        l2: meta.l2,
        mean: array(&meta.mean),
        scale: array(&meta.scale),
        weights: array(&meta.weights),
        refuse_offset: meta.refuse_offset,
        examples,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One training example: its candidates' rows (the refusal last) and the
/// index of the right one.
#[derive(Debug, Clone)]
pub struct Sample {
    pub rows: Vec<[f32; DIM]>,
    pub label: usize,
}

/// The standardisation of `samples`: each cell feature over the cell rows,
/// each refusal feature over the refusal rows (the bias left as it is).
pub fn standardisation(samples: &[Sample]) -> ([f32; DIM], [f32; DIM]) {
    let mut sum = [0.0f64; DIM];
    let mut sq = [0.0f64; DIM];
    let mut count = [0.0f64; DIM];
    for s in samples {
        let last = s.rows.len() - 1;
        for (r, row) in s.rows.iter().enumerate() {
            let range = if r == last { CELLS..DIM } else { 0..CELLS };
            for j in range {
                sum[j] += f64::from(row[j]);
                sq[j] += f64::from(row[j]).powi(2);
                count[j] += 1.0;
            }
        }
    }
    let mut mean = [0.0f32; DIM];
    let mut scale = [1.0f32; DIM];
    for j in 0..DIM {
        if j == CELLS || count[j] == 0.0 {
            continue;
        }
        let m = sum[j] / count[j];
        let var = (sq[j] / count[j] - m * m).max(0.0);
        mean[j] = m as f32;
        scale[j] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
    }
    (mean, scale)
}

/// Fits the weights of a listwise softmax to `samples` (rows already
/// standardised, masked features zero) with L2 weight `l2` (the bias is
/// barely regularised), by Newton's method with a backtracking line search.
/// Deterministic: it starts from zero and visits the samples in order.
pub fn fit(samples: &[Sample], l2: f64) -> [f64; DIM] {
    let reg = |j: usize| if j == CELLS { 1e-6 } else { l2 };
    let loss = |w: &[f64; DIM]| -> f64 {
        let mut total = 0.0;
        for s in samples {
            let logits: Vec<f64> = s.rows.iter().map(|row| dot(w, row)).collect();
            let max = logits.iter().copied().fold(f64::MIN, f64::max);
            let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            total += lse - logits[s.label];
        }
        total + (0..DIM).map(|j| 0.5 * reg(j) * w[j] * w[j]).sum::<f64>()
    };
    let mut w = [0.0f64; DIM];
    let mut current = loss(&w);
    for _ in 0..100 {
        let mut grad = [0.0f64; DIM];
        let mut hess = vec![[0.0f64; DIM]; DIM];
        for s in samples {
            let logits: Vec<f64> = s.rows.iter().map(|row| dot(&w, row)).collect();
            let max = logits.iter().copied().fold(f64::MIN, f64::max);
            let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            let mut m = [0.0f64; DIM];
            for (row, e) in s.rows.iter().zip(&exps) {
                let p = e / total;
                for a in 0..DIM {
                    let xa = f64::from(row[a]);
                    if xa == 0.0 {
                        continue;
                    }
                    m[a] += p * xa;
                    for b in 0..DIM {
                        hess[a][b] += p * xa * f64::from(row[b]);
                    }
                }
            }
            for a in 0..DIM {
                grad[a] += m[a] - f64::from(s.rows[s.label][a]);
                for b in 0..DIM {
                    hess[a][b] -= m[a] * m[b];
                }
            }
        }
        for j in 0..DIM {
            grad[j] += reg(j) * w[j];
            hess[j][j] += reg(j);
        }
        let step = solve(hess, grad);
        let slope: f64 = step.iter().zip(&grad).map(|(d, g)| d * g).sum();
        let mut t = 1.0;
        let mut next = w;
        let mut value = current;
        for _ in 0..30 {
            for j in 0..DIM {
                next[j] = w[j] - t * step[j];
            }
            value = loss(&next);
            if value <= current - 1e-4 * t * slope {
                break;
            }
            t *= 0.5;
        }
        if value > current {
            break;
        }
        let gain = current - value;
        w = next;
        current = value;
        if gain < 1e-9 * (1.0 + current.abs()) {
            break;
        }
    }
    w
}

fn dot(w: &[f64; DIM], row: &[f32; DIM]) -> f64 {
    w.iter().zip(row).map(|(a, &b)| a * f64::from(b)).sum()
}

/// Solves `a x = b` for a symmetric positive definite `a` (Cholesky).
fn solve(mut a: Vec<[f64; DIM]>, b: [f64; DIM]) -> [f64; DIM] {
    for j in 0..DIM {
        let mut d = a[j][j];
        for v in &a[j][..j] {
            d -= v * v;
        }
        let d = d.max(1e-12).sqrt();
        a[j][j] = d;
        for i in j + 1..DIM {
            let mut s = a[i][j];
            for (p, q) in a[i][..j].iter().zip(&a[j][..j]) {
                s -= p * q;
            }
            a[i][j] = s / d;
        }
    }
    let mut y = [0.0f64; DIM];
    for i in 0..DIM {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i][k] * y[k];
        }
        y[i] = s / a[i][i];
    }
    let mut x = [0.0f64; DIM];
    for i in (0..DIM).rev() {
        let mut s = y[i];
        for k in i + 1..DIM {
            s -= a[k][i] * x[k];
        }
        x[i] = s / a[i][i];
    }
    x
}

/// Standardises `samples` in place and zeroes the features `set` leaves
/// out.
pub fn prepare_samples(samples: &mut [Sample], mean: &[f32; DIM], scale: &[f32; DIM], set: FeatureSet) {
    for s in samples {
        let last = s.rows.len() - 1;
        for (r, row) in s.rows.iter_mut().enumerate() {
            let range = if r == last { CELLS..DIM } else { 0..CELLS };
            for j in 0..DIM {
                row[j] = if range.contains(&j) && set.uses(j) {
                    (row[j] - mean[j]) / scale[j]
                } else {
                    0.0
                };
            }
        }
    }
}

/// Trains a re-ranker on `samples` (raw rows) under `set` and `l2`.
pub fn train(samples: &[Sample], set: FeatureSet, l2: f64) -> ([f32; DIM], [f32; DIM], [f32; DIM]) {
    let (mean, scale) = standardisation(samples);
    let mut standard = samples.to_vec();
    prepare_samples(&mut standard, &mean, &scale, set);
    let w = fit(&standard, l2);
    let mut weights = [0.0f32; DIM];
    for j in 0..DIM {
        weights[j] = if set.uses(j) { w[j] as f32 } else { 0.0 };
    }
    (mean, scale, weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_inverts_a_spd_matrix() {
        let mut a = vec![[0.0f64; DIM]; DIM];
        let mut b = [0.0f64; DIM];
        for i in 0..DIM {
            a[i][i] = 2.0 + i as f64;
            if i + 1 < DIM {
                a[i][i + 1] = 0.5;
                a[i + 1][i] = 0.5;
            }
            b[i] = i as f64 - 3.0;
        }
        let x = solve(a.clone(), b);
        for i in 0..DIM {
            let ax: f64 = (0..DIM).map(|k| a[i][k] * x[k]).sum();
            assert!((ax - b[i]).abs() < 1e-9, "row {i}: {ax} != {}", b[i]);
        }
    }

    /// Two cells and the refusal; the right cell has the larger first
    /// feature. The fit must learn a positive weight and choose it.
    #[test]
    fn fit_learns_a_separable_choice() {
        let mut samples = Vec::new();
        for i in 0..40 {
            let (hi, lo) = (0.6 + 0.01 * i as f32, 0.3);
            let mut a = [0.0; DIM];
            let mut b = [0.0; DIM];
            let mut r = [0.0; DIM];
            a[0] = hi;
            b[0] = lo;
            r[CELLS] = 1.0;
            let label = i % 2;
            let rows = if label == 0 { vec![a, b, r] } else { vec![b, a, r] };
            samples.push(Sample { rows, label });
        }
        let (mean, scale, weights) = train(&samples, FeatureSet::All, 0.1);
        assert!(weights[0] > 0.0, "{weights:?}");
        let r = Reranker {
            base: Tuning::default(),
            features: FeatureSet::All,
            neighbourhood: Neighbourhood::OtherRequests,
            l2: 0.1,
            mean,
            scale,
            weights,
            refuse_offset: 0.0,
            examples: Examples::default(),
        };
        for s in &samples {
            assert_eq!(verdict(&r.logits(&s.rows), 0.0).cell, Some(s.label));
        }
        // A large enough offset refuses.
        assert_eq!(verdict(&r.logits(&samples[0].rows), 100.0).cell, None);
    }

    #[test]
    fn quantisation_keeps_cosines() {
        let v: Vec<f32> = (0..384).map(|i| ((i * 37 % 101) as f32 - 50.0) / 300.0).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let v: Vec<f32> = v.iter().map(|x| x / norm).collect();
        let q = quantised(&v);
        let cos: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
        assert!((cos - 1.0).abs() < 1e-3, "{cos}");
    }

    #[test]
    fn neighbours_keep_the_three_nearest_per_cell() {
        let mut ex = Examples::default();
        for (x, label) in [
            (1.0, Some(0)),
            (0.5, Some(0)),
            (0.9, Some(0)),
            (0.7, Some(0)),
            (0.8, None),
            (0.2, Some(1)),
        ] {
            ex.push(&[x, 0.0], label);
        }
        let nb = neighbours(&ex, &[1.0, 0.0], 2, &|_, _| false, None);
        assert_eq!(nb.cells[0], [1.0, 0.9, 0.7]);
        assert_eq!(nb.cells[1], [0.2]);
        assert_eq!(nb.refused, [0.8]);
        assert_eq!(nb.nearest, Some(Some(0)));
        // Skipped, and a cell treated as new.
        let nb = neighbours(&ex, &[1.0, 0.0], 2, &|i, _| i == 0, Some(0));
        assert!(nb.cells[0].is_empty());
        assert_eq!(nb.nearest, Some(None));
    }
}
