//! The errors of the intent engine. Each variant carries the path or value
//! involved; Display does not repeat the source error, callers that print a
//! chain (anyhow's `{:#}`) show it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the intent model all-MiniLM-L6-v2 (model.safetensors, tokenizer.json) is not installed; looked in {}; \
         install the package quantumos-model, or run scripts/fetch-model.sh in a source checkout \
         (or point QUANTUM_MODEL_DIR at a directory holding it)",
        display_paths(searched)
    )]
    ModelMissing { searched: Vec<PathBuf> },

    #[error("cannot load the intent model from {}", dir.display())]
    ModelLoad {
        dir: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot tokenize the text")]
    Tokenize(#[source] Box<dyn std::error::Error + Send + Sync>),

    #[error("the intent model failed")]
    Inference(#[source] candle_core::Error),

    #[error("the catalog {} holds no cells (expected NAME/cell.toml below it)", dir.display())]
    EmptyCatalog { dir: PathBuf },

    #[error("{}: invalid cell manifest: {}", path.display(), problems.join("; "))]
    InvalidManifest { path: PathBuf, problems: Vec<String> },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
