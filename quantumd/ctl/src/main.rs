//! quantumctl: the command-line client of quantumd.

mod ask;
mod bundle;
mod cli;
mod client;
mod foreground;
mod output;
mod validate;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, CliCommand, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cells(CliCommand::Validate { paths, catalog, json }) => return validate::run(&paths, &catalog, json),
        Command::Cells(CliCommand::Trigger(cli::TriggerCommand::Validate { files })) => return validate::triggers(&files),
        Command::Ask(args) => return ask::run(&args, cli.bus.as_deref()),
        Command::Bundle(command) => return bundle::run(&command),
        Command::Cells(command) => client::run(cli.bus.as_deref(), command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quantumctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
