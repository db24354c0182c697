//! Development aid: the top three cells and their scores for each line of
//! standard input, and the text the model was shown.
//!
//!     printf '%s\n' "what's eating my disk" | cargo run --release -p quantum-intent --example rank
use std::io::BufRead;
use std::path::Path;

use quantum_intent::{engine::model_text, Config, Engine};

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let catalog = std::env::var_os("QUANTUM_CATALOG").map_or(repo.join("packaging/cells"), Into::into);
    let engine = Engine::load(&Config::new(&catalog)).unwrap_or_else(|e| {
        eprintln!("rank: {e}");
        std::process::exit(2)
    });
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        if line.trim().is_empty() {
            continue;
        }
        let scores = engine.rank(&line).expect("the engine answers");
        let top: Vec<String> = scores
            .iter()
            .take(3)
            .map(|s| {
                format!(
                    "{} {:.3} (sem {:.3} lex {:.2})",
                    engine.catalog().cells[s.cell].name(),
                    s.score,
                    s.semantic,
                    s.lexical
                )
            })
            .collect();
        println!("{line}\n    [{}] {}", model_text(&line), top.join(" | "));
    }
}
