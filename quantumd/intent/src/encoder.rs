//! The sentence encoder: all-MiniLM-L6-v2 run by candle's BERT on the CPU,
//! mean-pooled over the tokens and L2-normalised, exactly as
//! sentence-transformers does it, so a dot product of two embeddings is their
//! cosine similarity.
//!
//! The weights come from a directory on disk and never from a model hub:
//! `$QUANTUM_MODEL_DIR`, then the installed path (package quantumos-model),
//! then, for development, where `scripts/fetch-model.sh` puts it
//! (`$QUANTUM_CACHE/models/…`, else the repository's `.cache/models/…`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::adapter::{self, AdapterSource};
use crate::error::Error;

/// Where the package quantumos-model installs the model.
pub const INSTALLED_MODEL_DIR: &str = "/usr/share/quantumos/models/all-MiniLM-L6-v2";

/// The environment variable that overrides every other place.
pub const MODEL_DIR_ENV: &str = "QUANTUM_MODEL_DIR";

const WEIGHTS: &str = "model.safetensors";
const TOKENIZER: &str = "tokenizer.json";
const CONFIG: &str = "config.json";

/// sentence-transformers' `max_seq_length` for this model; longer text is cut.
const MAX_TOKENS: usize = 256;

/// Where `scripts/fetch-model.sh` puts the model below its cache directory.
const CACHED_MODEL: &str = "models/all-MiniLM-L6-v2";

/// The repository's cache, known at compile time. Only meaningful on the
/// machine that built the binary: a development fallback.
fn development_model_dir() -> Option<PathBuf> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Only where the source tree this was built from still exists: a
    // packaged binary does not look into its build directory.
    let repo = crate_dir.ancestors().nth(2).filter(|_| crate_dir.is_dir())?;
    Some(repo.join(".cache").join(CACHED_MODEL))
}

/// The directories searched for the model, in order.
pub fn model_search_path() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV).filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(PathBuf::from(INSTALLED_MODEL_DIR));
    // `scripts/fetch-model.sh` honours QUANTUM_CACHE, and so does the search.
    if let Some(cache) = std::env::var_os("QUANTUM_CACHE").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(cache).join(CACHED_MODEL));
    }
    dirs.extend(development_model_dir());
    dirs
}

/// The first directory of `candidates` that holds the weights and the
/// tokenizer.
pub fn find_model_dir(candidates: &[PathBuf]) -> Result<PathBuf, Error> {
    candidates
        .iter()
        .find(|d| d.join(WEIGHTS).is_file() && d.join(TOKENIZER).is_file())
        .cloned()
        .ok_or_else(|| Error::ModelMissing {
            searched: candidates.to_vec(),
        })
}

/// A loaded sentence encoder.
pub struct Encoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dir: PathBuf,
    /// Identifies the model for the embedding cache and the re-ranker: a
    /// digest of its configuration, tokenizer and weights' size, and of the
    /// adapters merged into it.
    fingerprint: [u8; 32],
    /// The same digest of the base model alone, which adapters name.
    base_fingerprint: [u8; 32],
    /// Whether adapters were merged in.
    adapted: bool,
    load_time: Duration,
}

impl Encoder {
    /// Loads the model found in `dir`, with the adapters built in.
    pub fn load(dir: &Path) -> Result<Encoder, Error> {
        Encoder::load_with(dir, &AdapterSource::Builtin)
    }

    /// Loads the model found in `dir` with the adapters of `source` merged
    /// in. Adapters that cannot be read or were trained on another model
    /// are left out with a warning on stderr: the base model still answers.
    pub fn load_with(dir: &Path, source: &AdapterSource) -> Result<Encoder, Error> {
        let started = Instant::now();
        let model_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::ModelLoad {
            dir: dir.to_owned(),
            source,
        };

        let weights_path = dir.join(WEIGHTS);
        let weights = std::fs::read(&weights_path).map_err(|source| Error::Read {
            path: weights_path.clone(),
            source,
        })?;
        let tokenizer_path = dir.join(TOKENIZER);
        let tokenizer_json = std::fs::read(&tokenizer_path).map_err(|source| Error::Read {
            path: tokenizer_path.clone(),
            source,
        })?;
        // config.json is optional: the built-in one is all-MiniLM-L6-v2's.
        let config_path = dir.join(CONFIG);
        let config_json = match std::fs::read(&config_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MINILM_L6_CONFIG.as_bytes().to_vec(),
            Err(source) => return Err(Error::Read { path: config_path, source }),
        };
        let config: BertConfig = serde_json::from_slice(&config_json).map_err(|e| model_error(Box::new(e)))?;

        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_json).map_err(model_error)?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(model_error)?;

        let mut hasher = blake3::Hasher::new();
        hasher.update(&config_json);
        hasher.update(&tokenizer_json);
        hasher.update(&(weights.len() as u64).to_le_bytes());
        // The first bytes hold the safetensors header: tensor names, shapes
        // and offsets.
        hasher.update(&weights[..weights.len().min(64 * 1024)]);
        let base_fingerprint = *hasher.finalize().as_bytes();

        let device = Device::Cpu;
        let adapters = match source {
            AdapterSource::Off => None,
            AdapterSource::Builtin => Some(Cow::Borrowed(adapter::BUILTIN)),
            AdapterSource::File(path) => match std::fs::read(path) {
                Ok(bytes) => Some(Cow::Owned(bytes)),
                Err(e) => {
                    eprintln!(
                        "quantum-intent: warning: cannot read the adapters {}: {e}; the base model answers",
                        path.display()
                    );
                    None
                }
            },
        };
        let mut fingerprint = base_fingerprint;
        let mut adapted = false;
        let vb = match adapters {
            None => VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(|e| model_error(Box::new(e)))?,
            Some(bytes) => {
                let mut tensors = candle_core::safetensors::load_buffer(&weights, &device).map_err(|e| model_error(Box::new(e)))?;
                match adapter::merge(&mut tensors, &bytes, &base_fingerprint) {
                    Ok(()) => {
                        let mut hasher = blake3::Hasher::new();
                        hasher.update(&base_fingerprint);
                        hasher.update(&bytes);
                        fingerprint = *hasher.finalize().as_bytes();
                        adapted = true;
                    }
                    Err(e) => eprintln!("quantum-intent: warning: {e}; the base model answers"),
                }
                VarBuilder::from_tensors(tensors, DType::F32, &device)
            }
        };
        let model = BertModel::load(vb, &config).map_err(|e| model_error(Box::new(e)))?;
        Ok(Encoder {
            model,
            tokenizer,
            device,
            dir: dir.to_owned(),
            fingerprint,
            base_fingerprint,
            adapted,
            load_time: started.elapsed(),
        })
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`Encoder::load`] took.
    /// The whole words of the model's vocabulary (lower-case letters only,
    /// no word pieces): words the model knows as words, so a request's word
    /// found here is a word and not a typing slip ("patch" is not "path").
    pub fn vocabulary_words(&self) -> Vec<String> {
        self.tokenizer
            .get_vocab(false)
            .into_keys()
            .filter(|w| w.len() > 1 && w.bytes().all(|b| b.is_ascii_lowercase()))
            .collect()
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The fingerprint of the model without adapters: what adapters trained
    /// on it name.
    pub fn base_fingerprint(&self) -> &[u8; 32] {
        &self.base_fingerprint
    }

    /// Whether adapters were merged into the model.
    pub fn adapted(&self) -> bool {
        self.adapted
    }

    /// Embeds one text.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, Error> {
        Ok(self.embed_batch(&[text])?.pop().unwrap_or_default())
    }

    /// Embeds several texts in one forward pass: unit vectors of the model's
    /// hidden size, in the order given.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, mask) = token_tensors(&self.tokenizer, texts, &self.device)?;
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let token_types = ids.zeros_like()?;
            let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
            // Mean over the real tokens only: padding is masked out.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        run().map_err(Error::Inference)
    }
}

/// The token ids and attention mask of `texts`, one row each, padded by the
/// tokenizer to the longest (its padding must be set to `BatchLongest`).
/// Shared by the encoder and the adapters' trainer, so that training sees the
/// model's input exactly as answering does.
pub(crate) fn token_tensors(tokenizer: &Tokenizer, texts: &[&str], device: &Device) -> Result<(Tensor, Tensor), Error> {
    let encodings = tokenizer.encode_batch(texts.to_vec(), true).map_err(Error::Tokenize)?;
    let len = encodings.first().map_or(0, |e| e.get_ids().len());
    let mut ids = Vec::with_capacity(texts.len() * len);
    let mut mask = Vec::with_capacity(texts.len() * len);
    for e in &encodings {
        ids.extend_from_slice(e.get_ids());
        mask.extend_from_slice(e.get_attention_mask());
    }
    let ids = Tensor::from_vec(ids, (texts.len(), len), device).map_err(Error::Inference)?;
    let mask = Tensor::from_vec(mask, (texts.len(), len), device).map_err(Error::Inference)?;
    Ok((ids, mask))
}

/// all-MiniLM-L6-v2's config.json, for a model directory without one.
const MINILM_L6_CONFIG: &str = r#"{
  "architectures": ["BertModel"],
  "attention_probs_dropout_prob": 0.1,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "hidden_size": 384,
  "initializer_range": 0.02,
  "intermediate_size": 1536,
  "layer_norm_eps": 1e-12,
  "max_position_embeddings": 512,
  "model_type": "bert",
  "num_attention_heads": 12,
  "num_hidden_layers": 6,
  "pad_token_id": 0,
  "position_embedding_type": "absolute",
  "type_vocab_size": 2,
  "vocab_size": 30522
}"#;

/// Something that turns texts into unit vectors: the [`Encoder`] itself, or
/// a memo over it (the evaluation scores one set under many tunings and
/// embeds each text once).
pub trait Embed {
    /// Embeds several texts: unit vectors, in the order given.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error>;
}

impl Embed for Encoder {
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        Encoder::embed_batch(self, texts)
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
