//! The embeddings of the catalog: every cell's phrases (its name, its
//! description and each capability phrase, embedded separately), computed
//! once per manifest text and model and kept in a cache directory, so a
//! start with a known catalog costs file reads rather than forward passes.
//!
//! A cache file is named by the BLAKE3 of the cache format, the model's
//! fingerprint and the manifest text: an edited manifest or another model
//! simply misses. A cache directory that cannot be written is not an error;
//! the embeddings then live in memory only.

use std::path::{Path, PathBuf};

use quantum_model::Manifest;

use crate::catalog::{Catalog, CatalogCell};
use crate::encoder::Encoder;
use crate::error::Error;

const MAGIC: &[u8; 8] = b"QINTEMB2";

/// What one phrase of a cell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhraseKind {
    Description,
    Capability,
}

/// The embedded phrases of one cell.
#[derive(Debug, Clone)]
pub struct CellEmbeddings {
    pub phrases: Vec<(PhraseKind, String)>,
    pub vectors: Vec<Vec<f32>>,
}

/// The phrases of a cell, in the order they are embedded: its description,
/// then each capability.
pub fn phrases(cell: &CatalogCell) -> Vec<(PhraseKind, String)> {
    manifest_phrases(&cell.manifest)
}

/// The phrases of a manifest, as [`phrases`] gives them for a catalog cell.
/// What a cell offers, for the intent engine and for reassembly alike
/// ([`crate::alternative`]), is read here and nowhere else.
pub fn manifest_phrases(m: &Manifest) -> Vec<(PhraseKind, String)> {
    let mut out = vec![(PhraseKind::Description, m.description.clone())];
    out.extend(m.capabilities.iter().map(|c| (PhraseKind::Capability, c.clone())));
    out
}

/// Where the embeddings came from, for the caller to report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub cached: usize,
    pub computed: usize,
    /// Computed embeddings that could not be written to the cache.
    pub unsaved: usize,
}

/// Embeds every cell of `catalog`, reading and filling `cache_dir` when given.
pub fn build(encoder: &Encoder, catalog: &Catalog, cache_dir: Option<&Path>) -> Result<(Vec<CellEmbeddings>, IndexStats), Error> {
    let mut stats = IndexStats::default();
    let mut out = Vec::with_capacity(catalog.cells.len());
    let cache_ok = cache_dir.is_some_and(|d| std::fs::create_dir_all(d).is_ok());
    for cell in &catalog.cells {
        let phrases = phrases(cell);
        let file = cache_dir.map(|d| cache_file(d, encoder, cell));
        if let Some(vectors) = file.as_deref().and_then(|f| read_cache(f, phrases.len())) {
            stats.cached += 1;
            out.push(CellEmbeddings { phrases, vectors });
            continue;
        }
        let texts: Vec<&str> = phrases.iter().map(|(_, t)| t.as_str()).collect();
        let vectors = encoder.embed_batch(&texts)?;
        stats.computed += 1;
        match file {
            Some(f) if cache_ok && write_cache(&f, &vectors).is_ok() => {}
            _ => stats.unsaved += 1,
        }
        out.push(CellEmbeddings { phrases, vectors });
    }
    Ok((out, stats))
}

/// Embeds `texts` (a list that is not a manifest: the reject class), read
/// from and written to `cache_dir` like a cell's phrases.
pub fn embed_texts(encoder: &Encoder, texts: &[String], cache_dir: Option<&Path>) -> Result<Vec<Vec<f32>>, Error> {
    let file = cache_dir
        .filter(|d| std::fs::create_dir_all(d).is_ok())
        .map(|d| cache_path(d, encoder, texts.join("\n").as_bytes()));
    if let Some(vectors) = file.as_deref().and_then(|f| read_cache(f, texts.len())) {
        return Ok(vectors);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut vectors = Vec::with_capacity(texts.len());
    // In batches of a few dozen: one batch pads every text to the longest.
    for chunk in refs.chunks(32) {
        vectors.extend(encoder.embed_batch(chunk)?);
    }
    if let Some(f) = file {
        // A cache that cannot be written only costs the next start time.
        let _ = write_cache(&f, &vectors);
    }
    Ok(vectors)
}

fn cache_file(dir: &Path, encoder: &Encoder, cell: &CatalogCell) -> PathBuf {
    cache_path(dir, encoder, cell.source.as_bytes())
}

fn cache_path(dir: &Path, encoder: &Encoder, source: &[u8]) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(MAGIC);
    h.update(encoder.fingerprint());
    h.update(source);
    dir.join(format!("{}.emb", h.finalize().to_hex()))
}

fn read_cache(path: &Path, phrases: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(MAGIC)?;
    let (n, rest) = rest.split_first_chunk::<4>()?;
    let (dim, rest) = rest.split_first_chunk::<4>()?;
    let (n, dim) = (u32::from_le_bytes(*n) as usize, u32::from_le_bytes(*dim) as usize);
    if n != phrases || dim == 0 || rest.len() != n * dim * 4 {
        return None;
    }
    let floats: Vec<f32> = rest.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Some(floats.chunks_exact(dim).map(<[f32]>::to_vec).collect())
}

fn write_cache(path: &Path, vectors: &[Vec<f32>]) -> std::io::Result<()> {
    let dim = vectors.first().map_or(0, Vec::len);
    let mut bytes = Vec::with_capacity(16 + vectors.len() * dim * 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(vectors.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(dim as u32).to_le_bytes());
    for v in vectors {
        for x in v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    // Written beside and renamed, so a reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
