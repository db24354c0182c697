//! The QuantumOS intent engine (STEPPPS PROMPT): a request in plain words ->
//! a plan of catalog cells with typed parameters, or a refusal with a
//! reason. It runs a small sentence-embedding model (all-MiniLM-L6-v2) on the
//! CPU with candle; nothing leaves the machine and no model hub is asked.
//!
//! Architecture invariant: no D-Bus, no daemon, no running of cells. It
//! reads the catalog and the model from disk, and writes only its embedding
//! cache; quantumd and `quantumctl ask --local` both use it in-process.

pub mod adapter;
pub mod alternative;
pub mod catalog;
pub mod encoder;
pub mod engine;
pub mod error;
pub mod evaluation;
pub mod index;
pub mod params;
pub mod plan;
pub mod rerank;
pub mod spelling;

pub use adapter::AdapterSource;
pub use catalog::{Catalog, CatalogCell};
pub use encoder::{find_model_dir, model_search_path, Embed, Encoder};
pub use engine::{Config, Engine, RerankerSource, Tuning};
pub use error::Error;
pub use plan::{Plan, PlannedCell};
