//! The encoder's fine-tuning: low-rank adapters (LoRA) on the attention's
//! query and value projections of all-MiniLM-L6-v2, trained on the tuning
//! requests so that a request lands nearer its own cell's phrases than any
//! other cell's (or, out of scope, nearer an out-of-scope phrase).
//!
//! Why adapters and not new weights: the base model stays the packaged
//! file (quantumos-model), and what the tuning adds is 12 small matrices
//! (about 0.3 MB), built into the binary like the re-ranker
//! (`data/adapter.safetensors`, `include_bytes!`), so the binary, its
//! adapters and the re-ranker trained on their embeddings cannot drift
//! apart. At load the adapters are merged into the base weights (W + s·BA),
//! so an answer costs what it did before.
//!
//! The adapters name the model they were trained on (its fingerprint); on
//! another model they are not applied, with a warning, and the encoder is
//! the base one (the re-ranker then falls back too: it names the adapted
//! encoder's fingerprint).
//!
//! Training is deterministic: a fixed seed for the adapters' start and the
//! order of the requests, and candle's CPU kernels, which do not split a
//! sum across threads. `intent-bench --train` writes the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer};

use crate::encoder::token_tensors;
use crate::error::Error;

/// The adapters built into the binary.
pub const BUILTIN: &[u8] = include_bytes!("../data/adapter.safetensors");

/// Where the encoder takes its adapters from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterSource {
    /// The ones built into the binary (`data/adapter.safetensors`).
    Builtin,
    /// A file written by `intent-bench --train`.
    File(PathBuf),
    /// None: the base model as published.
    Off,
}

/// Names of the tensors that are not adapters.
const BASE_KEY: &str = "quantum.base_fingerprint";
const SCALE_KEY: &str = "quantum.scale";
const LAYERS: usize = 6;
const HEADS: usize = 12;
const TARGETS: [&str; 2] = ["query", "value"];

/// How the adapters are trained.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    pub rank: usize,
    /// The update is `scale` times B·A.
    pub scale: f64,
    pub epochs: usize,
    pub learning_rate: f64,
    pub batch: usize,
    /// Cosine similarities are multiplied by this before the softmax.
    pub temperature_scale: f64,
    /// The phrases are embedded again every this many steps.
    pub refresh: usize,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> TrainOptions {
        TrainOptions {
            rank: 8,
            scale: 2.0,
            epochs: 2,
            learning_rate: 5e-4,
            batch: 32,
            temperature_scale: 20.0,
            refresh: 16,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// Why adapters were not applied.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("the adapters are not a safetensors file of adapters: {0}")]
    Format(String),
    #[error("the adapters were trained on another model")]
    OtherModel,
}

fn target_prefix(layer: usize, target: &str) -> String {
    format!("encoder.layer.{layer}.attention.self.{target}")
}

/// Reads adapters and checks that they were trained on the model whose
/// fingerprint is `base`.
fn read(bytes: &[u8], base: &[u8; 32]) -> Result<(HashMap<String, Tensor>, f64), AdapterError> {
    let format = |e: candle_core::Error| AdapterError::Format(e.to_string());
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(format)?;
    let trained_on: Vec<u8> = tensors
        .get(BASE_KEY)
        .ok_or_else(|| AdapterError::Format(format!("no {BASE_KEY}")))?
        .to_vec1()
        .map_err(format)?;
    if trained_on != base {
        return Err(AdapterError::OtherModel);
    }
    let scale: Vec<f32> = tensors
        .get(SCALE_KEY)
        .ok_or_else(|| AdapterError::Format(format!("no {SCALE_KEY}")))?
        .to_vec1()
        .map_err(format)?;
    let scale = *scale.first().ok_or_else(|| AdapterError::Format(format!("empty {SCALE_KEY}")))? as f64;
    Ok((tensors, scale))
}

/// Merges the adapters in `bytes` into `weights` (the base model's tensors,
/// by name).
pub fn merge(weights: &mut HashMap<String, Tensor>, bytes: &[u8], base: &[u8; 32]) -> Result<(), AdapterError> {
    let (tensors, scale) = read(bytes, base)?;
    let format = |e: candle_core::Error| AdapterError::Format(e.to_string());
    let mut merged = 0;
    for (name, a) in &tensors {
        let Some(prefix) = name.strip_suffix(".lora_a") else { continue };
        let b = tensors
            .get(&format!("{prefix}.lora_b"))
            .ok_or_else(|| AdapterError::Format(format!("{prefix}: lora_a without lora_b")))?;
        let key = format!("{prefix}.weight");
        let w = weights
            .get(&key)
            .ok_or_else(|| AdapterError::Format(format!("the model has no {key}")))?;
        let delta = (b.matmul(a).map_err(format)? * scale).map_err(format)?;
        if delta.dims() != w.dims() {
            return Err(AdapterError::Format(format!(
                "{prefix}: shape {:?}, the model's {:?}",
                delta.dims(),
                w.dims()
            )));
        }
        let updated = (w + delta).map_err(format)?;
        weights.insert(key, updated);
        merged += 1;
    }
    if merged == 0 {
        return Err(AdapterError::Format("no adapters in the file".to_owned()));
    }
    Ok(())
}

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

struct Lora {
    a: Var,
    b: Var,
}

/// all-MiniLM-L6-v2 written out with differentiable operations (candle's
/// fused layer norm has no backward pass): frozen weights plus adapters.
struct Trainable {
    w: HashMap<String, Tensor>,
    lora: HashMap<String, Lora>,
    scale: f64,
}

impl Trainable {
    fn t(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.w
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the model has no {name}")))
    }

    fn linear(&self, x: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        let w = self.t(&format!("{prefix}.weight"))?;
        let b = self.t(&format!("{prefix}.bias"))?;
        let y = x.broadcast_matmul(&w.t()?)?.broadcast_add(b)?;
        match self.lora.get(prefix) {
            Some(l) => {
                let low = x.broadcast_matmul(&l.a.as_tensor().t()?)?.broadcast_matmul(&l.b.as_tensor().t()?)?;
                y + (low * self.scale)?
            }
            None => Ok(y),
        }
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + 1e-12)?.sqrt()?)?;
        normed
            .broadcast_mul(self.t(&format!("{prefix}.weight"))?)?
            .broadcast_add(self.t(&format!("{prefix}.bias"))?)
    }

    /// Mean-pooled, L2-normalised embeddings of a padded batch, as
    /// [`crate::Encoder`] computes them.
    fn embed(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (n, len) = ids.dims2()?;
        let words = self
            .t("embeddings.word_embeddings.weight")?
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((n, len, ()))?;
        let positions = self.t("embeddings.position_embeddings.weight")?.narrow(0, 0, len)?;
        let token_type = self.t("embeddings.token_type_embeddings.weight")?.narrow(0, 0, 1)?;
        let mut h = self.layer_norm(
            &words.broadcast_add(&positions)?.broadcast_add(&token_type)?,
            "embeddings.LayerNorm",
        )?;
        let maskf = mask.to_dtype(DType::F32)?;
        let padding = ((maskf.clone() - 1.0)? * 1e4)?.reshape((n, 1, 1, len))?;
        let hidden = h.dim(2)?;
        let head = hidden / HEADS;
        for l in 0..LAYERS {
            let p = format!("encoder.layer.{l}");
            let split = |x: Tensor| x.reshape((n, len, HEADS, head))?.transpose(1, 2)?.contiguous();
            let q = split(self.linear(&h, &format!("{p}.attention.self.query"))?)?;
            let k = split(self.linear(&h, &format!("{p}.attention.self.key"))?)?;
            let v = split(self.linear(&h, &format!("{p}.attention.self.value"))?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? / (head as f64).sqrt())?.broadcast_add(&padding)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let context = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((n, len, hidden))?;
            let attended = self.linear(&context, &format!("{p}.attention.output.dense"))?;
            h = self.layer_norm(&(attended + &h)?, &format!("{p}.attention.output.LayerNorm"))?;
            let inner = self.linear(&h, &format!("{p}.intermediate.dense"))?.gelu_erf()?;
            let out = self.linear(&inner, &format!("{p}.output.dense"))?;
            h = self.layer_norm(&(out + &h)?, &format!("{p}.output.LayerNorm"))?;
        }
        let m = maskf.unsqueeze(2)?;
        let mean = h.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        mean.broadcast_div(&norm)
    }
}

/// Trains adapters for the model in `model_dir` (the base model, whose
/// fingerprint is `base`): each of `requests` (text as the model sees it,
/// class) should come nearer its class's best phrase than any other
/// class's, `classes[c]` being class c's phrases (the cells', then the
/// out-of-scope phrases as one more class). Writes the adapters to
/// `output`; `progress` hears one line now and then.
pub fn train(
    model_dir: &Path,
    base: &[u8; 32],
    requests: &[(String, usize)],
    classes: &[Vec<String>],
    options: &TrainOptions,
    output: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    let read_err = |path: PathBuf| move |source| Error::Read { path, source };
    let tokenizer_path = model_dir.join("tokenizer.json");
    let tokenizer_json = std::fs::read(&tokenizer_path).map_err(read_err(tokenizer_path.clone()))?;
    let model_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::ModelLoad {
        dir: model_dir.to_owned(),
        source,
    };
    let mut tokenizer = Tokenizer::from_bytes(&tokenizer_json).map_err(model_error)?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..Default::default()
    }));
    let weights_path = model_dir.join("model.safetensors");
    let weights = candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| model_error(Box::new(e)))?;
    let mut model = Trainable {
        w: weights,
        lora: HashMap::new(),
        scale: options.scale,
    };
    let inference = Error::Inference;

    let mut rng = Rng(options.seed);
    let mut vars = Vec::new();
    for layer in 0..LAYERS {
        for target in TARGETS {
            let prefix = target_prefix(layer, target);
            let (rows, cols) = model.t(&format!("{prefix}.weight")).and_then(|w| w.dims2()).map_err(inference)?;
            // Kaiming-uniform A and zero B, as LoRA starts: the adapted
            // model begins as the base model.
            let bound = 1.0 / (cols as f32).sqrt();
            let a: Vec<f32> = (0..options.rank * cols).map(|_| (rng.uniform() * 2.0 - 1.0) * bound).collect();
            let a = Tensor::from_vec(a, (options.rank, cols), &Device::Cpu)
                .and_then(|t| Var::from_tensor(&t))
                .map_err(inference)?;
            let b = Var::zeros((rows, options.rank), DType::F32, &Device::Cpu).map_err(inference)?;
            vars.push(a.clone());
            vars.push(b.clone());
            model.lora.insert(prefix, Lora { a, b });
        }
    }
    let mut optimiser = AdamW::new(
        vars,
        ParamsAdamW {
            lr: options.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .map_err(inference)?;

    let phrases: Vec<(&str, usize)> = classes
        .iter()
        .enumerate()
        .flat_map(|(c, ps)| ps.iter().map(move |p| (p.as_str(), c)))
        .collect();
    let started = Instant::now();
    let mut order: Vec<usize> = (0..requests.len()).collect();
    let mut bank: Vec<Tensor> = Vec::new();
    let mut since_refresh = 0usize;
    for epoch in 0..options.epochs {
        rng.shuffle(&mut order);
        let (mut loss_sum, mut batches) = (0.0f64, 0usize);
        for chunk in order.chunks(options.batch.max(1)) {
            // The phrases, embedded by the model as it is now and then and
            // held constant in between (no gradient through them): the loss
            // is the engine's own rule, a class's best phrase.
            if since_refresh == 0 {
                bank = embed_bank(&model, &tokenizer, &phrases, classes.len())?;
            }
            since_refresh = (since_refresh + 1) % options.refresh.max(1);
            let texts: Vec<&str> = chunk.iter().map(|&i| requests[i].0.as_str()).collect();
            let targets: Vec<u32> = chunk.iter().map(|&i| requests[i].1 as u32).collect();
            let (ids, mask) = token_tensors(&tokenizer, &texts, &Device::Cpu)?;
            let loss = (|| {
                let embedded = model.embed(&ids, &mask)?;
                let best: Vec<Tensor> = bank
                    .iter()
                    .map(|b| embedded.matmul(&b.t()?)?.max_keepdim(1))
                    .collect::<candle_core::Result<_>>()?;
                let logits = (Tensor::cat(&best, 1)? * options.temperature_scale)?;
                let targets = Tensor::from_vec(targets, texts.len(), &Device::Cpu)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
                optimiser.backward_step(&loss)?;
                loss.to_scalar::<f32>()
            })()
            .map_err(inference)?;
            loss_sum += f64::from(loss);
            batches += 1;
        }
        progress(&format!(
            "adapters: epoch {} of {}: mean loss {:.4} ({:.0} s)",
            epoch + 1,
            options.epochs,
            loss_sum / batches.max(1) as f64,
            started.elapsed().as_secs_f64()
        ));
    }

    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (prefix, l) in &model.lora {
        out.insert(format!("{prefix}.lora_a"), l.a.as_tensor().clone());
        out.insert(format!("{prefix}.lora_b"), l.b.as_tensor().clone());
    }
    out.insert(BASE_KEY.to_owned(), Tensor::new(base.as_slice(), &Device::Cpu).map_err(inference)?);
    out.insert(
        SCALE_KEY.to_owned(),
        Tensor::new(&[options.scale as f32], &Device::Cpu).map_err(inference)?,
    );
    candle_core::safetensors::save(&out, output).map_err(inference)?;
    Ok(())
}

/// Every class's phrases embedded by `model`: one (phrases × hidden) tensor
/// per class.
fn embed_bank(model: &Trainable, tokenizer: &Tokenizer, phrases: &[(&str, usize)], classes: usize) -> Result<Vec<Tensor>, Error> {
    let mut per_class: Vec<Vec<f32>> = vec![Vec::new(); classes];
    let mut counts = vec![0usize; classes];
    let mut hidden = 0;
    for chunk in phrases.chunks(64) {
        let texts: Vec<&str> = chunk.iter().map(|p| p.0).collect();
        let (ids, mask) = token_tensors(tokenizer, &texts, &Device::Cpu)?;
        let vectors = model
            .embed(&ids, &mask)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(Error::Inference)?;
        for (v, (_, c)) in vectors.iter().zip(chunk) {
            hidden = v.len();
            per_class[*c].extend_from_slice(v);
            counts[*c] += 1;
        }
    }
    per_class
        .into_iter()
        .zip(counts)
        .map(|(v, n)| Tensor::from_vec(v, (n, hidden), &Device::Cpu))
        .collect::<candle_core::Result<_>>()
        .map_err(Error::Inference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights() -> HashMap<String, Tensor> {
        let mut w = HashMap::new();
        w.insert(
            "encoder.layer.0.attention.self.query.weight".to_owned(),
            Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap(),
        );
        w
    }

    fn adapters(base: &[u8; 32]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let mut t = HashMap::new();
        t.insert(
            "encoder.layer.0.attention.self.query.lora_a".to_owned(),
            Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap(),
        );
        t.insert(
            "encoder.layer.0.attention.self.query.lora_b".to_owned(),
            Tensor::new(&[[1f32], [0.0], [-1.0]], &Device::Cpu).unwrap(),
        );
        t.insert(BASE_KEY.to_owned(), Tensor::new(base.as_slice(), &Device::Cpu).unwrap());
        t.insert(SCALE_KEY.to_owned(), Tensor::new(&[0.5f32], &Device::Cpu).unwrap());
        candle_core::safetensors::save(&t, &path).unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn merging_adds_the_scaled_low_rank_product() {
        let mut w = weights();
        merge(&mut w, &adapters(&[7; 32]), &[7; 32]).unwrap();
        let merged: Vec<Vec<f32>> = w["encoder.layer.0.attention.self.query.weight"].to_vec2().unwrap();
        assert_eq!(merged, vec![vec![0.5, 1.0], vec![0.0, 0.0], vec![-0.5, -1.0]]);
    }

    #[test]
    fn adapters_of_another_model_are_refused() {
        let mut w = weights();
        assert!(matches!(
            merge(&mut w, &adapters(&[7; 32]), &[8; 32]),
            Err(AdapterError::OtherModel)
        ));
        assert!(matches!(merge(&mut w, b"not safetensors", &[7; 32]), Err(AdapterError::Format(_))));
    }
}
