//! quantumd: parse the configuration, build the pieces, run the loop.

mod anomaly;
mod bundles;
mod catalog;
mod cell_state;
mod cells;
mod channels;
mod cluster;
mod command;
mod config;
mod credentials;
mod direct;
mod exit;
mod gate;
mod identity;
mod interface;
mod logging;
mod logs;
mod main_loop;
mod metrics;
mod planner;
mod polkit;
mod psychology;
mod runtime;
mod start_profile;
mod steppps;
mod store;
mod trail;
mod triggers;
mod warm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use config::{BackendChoice, Config};

/// The QuantumOS system daemon: assembles cells as resource-limited,
/// sandboxed units and serves org.quantumos.Quantum1 on D-Bus.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Serve on this bus instead of the system bus (tests, development).
    #[arg(long, env = quantum_bus::BUS_ADDRESS_ENV, value_name = "ADDRESS")]
    bus: Option<String>,
    /// Also serve on this Unix socket, peer to peer (quantumctl's direct
    /// path, without the bus in between). Under systemd, quantumd.socket
    /// passes the socket instead and this is not needed.
    #[arg(long, env = quantum_bus::SOCKET_ENV, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Runtime backend (overrides the configuration).
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// State directory (overrides the configuration).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Cache directory (overrides the configuration).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Catalog directory (overrides the configuration).
    #[arg(long, value_name = "DIR")]
    catalog: Option<PathBuf>,
    /// cgroup v2 mount for the cgroup backend (overrides the configuration).
    #[arg(long, value_name = "DIR")]
    cgroup_root: Option<PathBuf>,
    /// The administrator's triggers, `*.toml` (overrides the configuration).
    #[arg(long, value_name = "DIR")]
    triggers: Option<PathBuf>,
    /// The channel broker's socket, when systemd passes none (overrides
    /// the configuration's `channels`).
    #[arg(long, value_name = "PATH")]
    channels: Option<PathBuf>,
    /// Replace the node identity with a new one, record it in the trail,
    /// and exit; quantumd.service must be stopped. The recovery path when
    /// the TPM no longer unseals the identity (PCR 7 changed, TPM cleared)
    /// or to move a key-file identity into a TPM. The old secret is
    /// deleted; its public key is kept under identity/retired/ so that the
    /// trail it sealed still verifies.
    #[arg(long)]
    regenerate_identity: bool,
    #[command(subcommand)]
    helper: Option<Helper>,
}

/// What quantumd runs of itself in other units; not for people.
#[derive(Debug, clap::Subcommand)]
enum Helper {
    /// The privileged half of a stateful cell's state: quantumd runs
    /// `quantumd cell-state DIR OP` as root in a short unit, because a
    /// dynamic user's state lives where only root may go. Prints a JSON
    /// report; errors go to stderr with exit status 1.
    #[command(hide = true)]
    CellState {
        dir: PathBuf,
        #[command(subcommand)]
        op: cell_state::Op,
    },
    /// The root half of quantumd's access to systemd
    /// (quantumd-gate.service): relays quantumd's calls for its own units
    /// to systemd's private socket and refuses everything else. See
    /// quantumd(8), SYSTEMD GATE.
    /// A warm unit's main process (see quantumd(8), PRE-WARMING): waits on
    /// standard input for quantumd to hand it a run, then executes the
    /// cell's program in its place.
    #[command(hide = true)]
    WarmExec,
    #[command(hide = true)]
    SystemdGate {
        /// Listen here when systemd passes no socket.
        #[arg(long, value_name = "PATH")]
        listen: Option<PathBuf>,
        /// systemd's private socket.
        #[arg(long, value_name = "PATH", default_value = gate::SYSTEMD_PRIVATE)]
        systemd: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report(&e),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Helper::CellState { dir, op }) = &args.helper {
        let report = cell_state::apply(dir, op)
            .map_err(|e| anyhow::anyhow!("{} of the cell state in {}: {}", op.verb(), dir.display(), command::error_chain(&e)))?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if let Some(Helper::WarmExec) = &args.helper {
        return warm::serve();
    }
    if let Some(Helper::SystemdGate { listen, systemd }) = &args.helper {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(gate::run(listen.as_deref(), systemd));
    }
    let required = args.config.as_path() != std::path::Path::new(config::DEFAULT_CONFIG);
    let mut config = Config::load(&args.config, required)?;
    if let Some(b) = args.backend {
        config.backend = b;
    }
    if let Some(d) = args.state_dir {
        config.state_dir = d;
    }
    if let Some(d) = args.cache_dir {
        config.cache_dir = d;
    }
    if let Some(d) = args.catalog {
        config.catalog = d;
    }
    if let Some(d) = args.cgroup_root {
        config.cgroup_root = d;
    }
    if let Some(d) = args.triggers {
        config.triggers = d;
    }
    if let Some(p) = args.channels {
        config.channels = p;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = if args.regenerate_identity {
        rt.block_on(main_loop::regenerate_identity(&config))
    } else {
        rt.block_on(main_loop::serve(config, args.bus, args.socket))
    };
    // Dropping the runtime would wait for every blocking task, and the
    // intent model can spend minutes embedding the catalog on a slow
    // machine: quantumd would outlive systemd's stop timeout and be killed.
    // The trail is flushed by then; what is left may be abandoned.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// How long blocking work (model loading, trail verification) may hold up
/// the exit after the loop has stopped.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
