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
///
/// A window for quantumd, the QuantumOS cell daemon: type what you need
/// ("serve my photos folder over http"), press Enter, and quantumd's plan is
/// shown (each cell, its parameters, its limits and what it may touch).
/// Nothing runs until you confirm it with Ctrl+Enter. Below the plan, the
/// cells quantumd runs, live, with Inspect and Stop, and the last entries
/// of the quantum trail. One window per session: starting it again raises
/// the window already open.
#[derive(Debug, Parser)]
#[command(
    name = "quantum-assistant",
    version,
    after_long_help = "\
KEYS:
    Enter            ask quantumd for a plan of what the request box says
    Ctrl+Enter       run the plan shown
    Esc              drop the plan shown; with none shown, close the window

QUANTUMD:
    Every request goes to quantumd over D-Bus (org.quantumos.Quantum1), as
    quantumctl's do, and quantumd's polkit rules decide who may run what:
    members of group quantum may; others are asked for an administrator's
    password by the session's polkit agent. When quantumd is not there the
    window says so, and finds it again when it comes back.

D-BUS:
    org.quantumos.Assistant            the application (GtkApplication): a
                                       launcher activates it on the session
                                       bus (DBusActivatable .desktop entry)
    org.quantumos.Assistant1           Ask, Confirm, Cancel, Stop, Inspect and
                                       Widgets at /org/quantumos/Assistant1:
                                       the window driven as a person drives
                                       it, for tests and scripts

ENVIRONMENT:
    QUANTUM_BUS_ADDRESS, QUANTUM_ASSISTANT_CONTROL_BUS, QUANTUM_CATALOG
                     as --bus, --control-bus and --catalog
    RUST_LOG         what it logs to stderr (default: info)

FILES:
    /usr/share/quantumos/cells                          the cell catalog
    /usr/share/applications/org.quantumos.Assistant.desktop
    /usr/share/dbus-1/services/org.quantumos.Assistant.service

EXAMPLES:
    quantum-assistant
    quantum-assistant --bus unix:path=/run/quantum-test/bus --no-control
    gdbus call --session --dest org.quantumos.Assistant1 \\
        --object-path /org/quantumos/Assistant1 \\
        --method org.quantumos.Assistant1.Ask 'back up my documents'
"
)]
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
    /// Start as the session bus's activated service: open no window until
    /// a launcher asks for one (org.quantumos.Assistant.service runs this).
    #[arg(long)]
    gapplication_service: bool,
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
        service: args.gapplication_service,
    };
    if ui::run(config) == gtk::glib::ExitCode::SUCCESS {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
