//! Why the engine answers what it does: for each request given (arguments,
//! or one per line on stdin), the plan and the five best cells with their
//! scores, their nearest phrase and the nearest out-of-scope phrase.
//!
//!     cargo run --release -p quantum-intent --example rank -- "back up /etc"

use std::io::BufRead;
use std::path::Path;

use quantum_intent::{Config, Engine};

fn main() {
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/cells");
    let engine = match Engine::load(&Config::new(&catalog)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("rank: {e}");
            std::process::exit(1);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let requests: Vec<String> = if args.is_empty() {
        std::io::stdin().lock().lines().map_while(Result::ok).collect()
    } else {
        args
    };
    for request in requests {
        let explained = engine.explain(&request);
        match (engine.ask(&request), explained) {
            (Ok(plan), Ok(text)) => {
                println!("{request}\n  -> {:?} ({:.2})\n{text}", plan.cell_names(), plan.confidence);
            }
            (Err(e), _) | (_, Err(e)) => eprintln!("rank: {request}: {e}"),
        }
    }
}
