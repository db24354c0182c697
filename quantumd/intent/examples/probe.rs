//! An experiment, not part of the engine: would a linear classifier on the
//! frozen model's embeddings (a "probe": one weight vector per cell and one
//! for refusing, trained on the tuning requests) choose cells better on
//! requests of an author it never saw than the nearest tuning request,
//! which the re-ranker reads today?
//!
//! Leave-one-set-out over the tuning data, each set decided by what the
//! other sets taught; single-cell and out-of-scope requests only. Prints,
//! per method, the share of in-scope requests whose cell is right and the
//! share of out-of-scope requests refused.
//!
//!     cargo run --release -p quantum-intent --example probe [-- L2]

use std::path::Path;

use quantum_intent::evaluation::{self, Case};
use quantum_intent::{Config, Engine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let l2: f32 = std::env::args().nth(1).map_or(Ok(1e-3), |a| a.parse())?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let engine = Engine::load(&Config::new(&repo.join("packaging/cells")))?;
    let names: Vec<String> = engine.catalog().cells.iter().map(|c| c.name().to_owned()).collect();
    let paths: Vec<_> = evaluation::TUNING_SETS.iter().map(|s| repo.join(s)).collect();
    let cases: Vec<Case> = evaluation::read_all(&paths)?.into_iter().filter(|c| c.cells.len() <= 1).collect();
    let refuse = names.len();
    let labels: Vec<usize> = cases
        .iter()
        .map(|c| c.cells.first().and_then(|n| names.iter().position(|m| m == n)).unwrap_or(refuse))
        .collect();
    let texts: Vec<String> = cases.iter().map(|c| engine.model_text(&c.intent)).collect();
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        vectors.extend(engine.encoder().embed_batch(&refs)?);
    }
    let sets: Vec<String> = {
        let mut s: Vec<String> = cases.iter().map(|c| c.set.clone()).collect();
        s.dedup();
        s
    };
    let classes = names.len() + 1;
    let mut tally = [[0usize; 4]; 2]; // [method][in right, in total, refused right, refused total]
    for set in &sets {
        let train: Vec<usize> = (0..cases.len()).filter(|&i| cases[i].set != *set).collect();
        let held: Vec<usize> = (0..cases.len()).filter(|&i| cases[i].set == *set).collect();
        let w = fit(&vectors, &labels, &train, classes, l2);
        for &i in &held {
            let nn = train
                .iter()
                .max_by(|&&a, &&b| dot(&vectors[i], &vectors[a]).total_cmp(&dot(&vectors[i], &vectors[b])))
                .map_or(refuse, |&j| labels[j]);
            let probe = argmax(&logits(&w, &vectors[i]));
            for (m, got) in [nn, probe].into_iter().enumerate() {
                if labels[i] == refuse {
                    tally[m][3] += 1;
                    tally[m][2] += usize::from(got == refuse);
                } else {
                    tally[m][1] += 1;
                    tally[m][0] += usize::from(got == labels[i]);
                }
            }
        }
    }
    for (m, name) in ["nearest tuning request", "linear probe"].iter().enumerate() {
        let t = tally[m];
        println!(
            "{name:<24} in scope right {:.1}% ({} of {}), out of scope refused {:.1}% ({} of {})",
            100.0 * t[0] as f64 / t[1] as f64,
            t[0],
            t[1],
            100.0 * t[2] as f64 / t[3] as f64,
            t[2],
            t[3]
        );
    }
    Ok(())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// One row per class: weights over the embedding, then a bias.
fn logits(w: &[Vec<f32>], x: &[f32]) -> Vec<f32> {
    w.iter().map(|row| dot(&row[..x.len()], x) + row[x.len()]).collect()
}

/// Multinomial logistic regression with L2, by full-batch gradient descent
/// (the embeddings are unit vectors, so a fixed step converges).
fn fit(x: &[Vec<f32>], y: &[usize], rows: &[usize], classes: usize, l2: f32) -> Vec<Vec<f32>> {
    let d = x[0].len();
    let mut w = vec![vec![0.0f32; d + 1]; classes];
    let scale = 10.0; // unit vectors: similarities are small, so logits need room
    let lr = 2.0;
    for _ in 0..400 {
        let mut grad = vec![vec![0.0f32; d + 1]; classes];
        for &i in rows {
            let xs: Vec<f32> = x[i].iter().map(|v| v * scale).collect();
            let z = logits(&w, &xs);
            let max = z.iter().copied().fold(f32::MIN, f32::max);
            let e: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for k in 0..classes {
                let g = e[k] / sum - f32::from(u8::from(y[i] == k));
                for (gj, xj) in grad[k][..d].iter_mut().zip(&xs) {
                    *gj += g * xj;
                }
                grad[k][d] += g;
            }
        }
        let n = rows.len() as f32;
        for k in 0..classes {
            for j in 0..=d {
                let reg = if j < d { l2 * w[k][j] } else { 0.0 };
                w[k][j] -= lr * (grad[k][j] / n + reg);
            }
        }
    }
    // Fold the input scale into the weights.
    for row in &mut w {
        for v in &mut row[..d] {
            *v *= scale;
        }
    }
    w
}
