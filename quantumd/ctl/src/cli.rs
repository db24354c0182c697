// The command-line definition of quantumctl. It depends on clap alone,
// because build.rs includes it to generate the man page and completions.

use std::path::PathBuf;

/// Control QuantumOS: validate cell manifests and run, stop, list and
/// inspect cells through quantumd.
#[derive(Debug, clap::Parser)]
#[command(
    name = "quantumctl",
    version,
    about,
    long_about = "quantumctl talks to quantumd, the QuantumOS system daemon, over D-Bus \
(the system bus, or the bus given with --bus / QUANTUM_BUS_ADDRESS). `validate` \
works without a daemon.",
    after_help = "EXAMPLES:
    quantumctl validate packaging/cells/*/cell.toml
    quantumctl run web-server port=8080 dir=/srv/www
    quantumctl list
    quantumctl inspect web-server --json
    quantumctl stop web-server

EXIT STATUS:
    0 success; 1 the request failed (invalid manifest, cell not found, refused);
    2 usage error, unreadable file or quantumd unreachable."
)]
pub struct Cli {
    /// D-Bus address of the bus quantumd serves on (default: the system bus).
    #[arg(long, global = true, env = "QUANTUM_BUS_ADDRESS", value_name = "ADDRESS")]
    pub bus: Option<String>,

    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CliCommand {
    /// Check cell manifests without running them.
    ///
    /// Every problem is reported on its own line as
    /// `PATH:LINE:COL: error: FIELD: MESSAGE` on standard error. Manifests
    /// given together are also checked against each other (`needs` cycles,
    /// unknown needed cells); child manifests are read and checked too.
    #[command(
        after_help = "EXAMPLES:\n    quantumctl validate cell.toml\n    quantumctl validate app/cell.toml db/cell.toml\n\nEXIT STATUS:\n    0 all valid; 1 a manifest is invalid; 2 a file cannot be read."
    )]
    Validate {
        /// Manifests (cell.toml files, or directories holding one).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Catalog whose cells may be needed by these manifests.
        #[arg(long, default_value = "/usr/share/quantumos/cells", value_name = "DIR")]
        catalog: PathBuf,
        /// Print the problems as a JSON array on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Start a cell from the catalog or a manifest file.
    ///
    /// Parameters are given as NAME=VALUE after the cell; relative paths are
    /// resolved against the current directory.
    #[command(after_help = "EXAMPLES:\n    quantumctl run web-server port=8080 dir=.\n    quantumctl run ./my-cell/cell.toml")]
    Run {
        /// A catalog cell name, or a path to a cell.toml (or its directory).
        #[arg(value_name = "CELL")]
        cell: String,
        /// Parameter values, NAME=VALUE.
        #[arg(value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Print the started instance as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop instances (by id, e.g. web-server.3) or every instance of a cell.
    Stop {
        #[arg(required = true, value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// List running and recently ended cell instances.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show everything quantumd knows of an instance or a cell's newest instance.
    Inspect {
        #[arg(value_name = "TARGET")]
        target: String,
        #[arg(long)]
        json: bool,
    },
}
