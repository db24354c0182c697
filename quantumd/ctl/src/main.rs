//! quantumctl: the command-line client of quantumd.

mod cli;
mod client;
mod output;
mod validate;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, CliCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        CliCommand::Validate { paths, catalog, json } => return validate::run(&paths, &catalog, json),
        command => client::run(cli.bus.as_deref(), command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quantumctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
