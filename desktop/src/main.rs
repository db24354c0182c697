//! quantum-assistant: the QuantumOS desktop assistant (STEPPPS PIXEL).
//! A GTK 4 Wayland client of quantumd; everything it does goes through
//! quantumd's D-Bus interface, as quantumctl's does.

mod control;
mod daemon;
mod error;
mod live;
mod plan;
mod tree;
mod ui;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The QuantumOS desktop assistant: ask in plain words, see the plan,
/// confirm it, watch the cells.
#[derive(Debug, Parser)]
#[command(name = "quantum-assistant", version)]
struct Args {
    /// The bus quantumd listens on (default: the system bus).
    #[arg(long, env = quantum_bus::BUS_ADDRESS_ENV, value_name = "ADDRESS")]
    bus: Option<String>,
    /// Where to offer org.quantumos.Assistant1, the interface that drives
    /// this window (default: the session bus).
    #[arg(long, env = "QUANTUM_ASSISTANT_CONTROL_BUS", value_name = "ADDRESS")]
    control_bus: Option<String>,
    /// Do not offer org.quantumos.Assistant1 at all.
    #[arg(long)]
    no_control: bool,
    /// The cell catalog, for the plan preview's limits and paths.
    #[arg(long, env = "QUANTUM_CATALOG", value_name = "DIR", default_value = "/usr/share/quantumos/cells")]
    catalog: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    // Relative paths in a plan mean what they would in the user's home.
    let cwd = std::env::var("HOME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::current_dir().ok().map(|d| d.display().to_string()))
        .unwrap_or_default();
    let config = ui::Config {
        target: daemon::Target { address: args.bus },
        control_bus: args.control_bus,
        control: !args.no_control,
        catalog: args.catalog,
        cwd,
    };
    if ui::run(config) == gtk::glib::ExitCode::SUCCESS {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
