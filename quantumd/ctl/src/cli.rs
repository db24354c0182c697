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
(the system bus, or the bus given with --bus / QUANTUM_BUS_ADDRESS). Root and the \
members of group `quantum` reach it on its direct socket instead, /run/quantumd.sock \
(QUANTUM_SOCKET names another; an empty QUANTUM_SOCKET turns it off), the same \
interface without dbus-daemon in between; when the socket cannot be opened the \
bus is used. `validate` works without a daemon.",
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
    pub command: Command,
}

/// Every subcommand: those of [`CliCommand`], then `ask`. `ask` stands apart
/// because it is answered in this process (`--local`) as well as by quantumd.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    #[command(flatten)]
    Cells(CliCommand),
    /// Turn a request in plain words into a plan of cells; run it once confirmed.
    ///
    /// The intent engine matches the request to the catalog's cells with a
    /// local sentence-embedding model and takes typed parameters (ports,
    /// paths, hosts, durations, ...) from its words. The plan is shown first
    /// (cells, parameters, resources, what each may read and write) and runs
    /// only after you confirm it on the terminal, or with `--yes`; without a
    /// terminal and without `--yes` nothing runs. quantumd answers (D-Bus
    /// `Ask`, then `Execute`); with `--local` the engine runs in this process
    /// and the plan is only shown.
    ///
    /// With `--json`, each request gives one JSON object on one line:
    /// `{"intent": "...", "cells": [{"name": "web-server", "params": {"port": "8080"}}], "confidence": 0.91}`;
    /// `cells` is empty, with a `reason`, when nothing in the catalog fits.
    /// quantumd's answers add `plan-id`, and `started` once run.
    #[command(after_help = "EXAMPLES:
    quantumctl ask \"serve /srv/www on port 8080\"
    quantumctl ask --yes \"serve /srv/www on port 8080\"
    quantumctl ask --dry-run \"back up ~/docs then compress it\"
    quantumctl ask --local --json \"back up ~/docs then compress it\"
    printf '%s\\n' \"what's eating my disk\" \"order a pizza\" | quantumctl ask --local --json -

EXIT STATUS:
    0 a plan (shown, or run); 1 nothing in the catalog fits, the plan was not
    confirmed, or running it failed; 2 usage error, model or catalog missing,
    or quantumd unreachable.")]
    Ask(AskArgs),
    /// Make author keys, and sign and check cell bundles (no daemon needed).
    ///
    /// A bundle is one file: a cell.toml, its artifact (may be empty) and
    /// the author's ML-DSA-65 and Ed25519 signatures over the blake3 of
    /// both. quantumd runs a bundle only when both signatures verify against
    /// a key in /etc/quantumos/trusted-keys.d/.
    #[command(
        subcommand,
        after_help = "EXAMPLES:
    quantumctl bundle keygen --name alice alice
    quantumctl bundle sign --key alice.key --artifact target/hello hello/cell.toml -o hello-1.0.0.qcb
    quantumctl bundle verify --trusted-keys . hello-1.0.0.qcb
    install -m 0644 alice.pub /etc/quantumos/trusted-keys.d/

EXIT STATUS:
    0 success; 1 a bundle does not verify; 2 usage or I/O error."
    )]
    Bundle(BundleCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum BundleCommand {
    /// Make an author keypair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Keygen {
        /// The name recorded in the public key file.
        #[arg(long)]
        name: String,
        /// Path prefix of the two files.
        #[arg(value_name = "PREFIX")]
        prefix: PathBuf,
    },
    /// Sign a cell.toml (and its artifact) into a bundle file.
    Sign {
        /// The author's secret key (from `bundle keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The artifact the manifest's `artifact = { path, blake3 }` names.
        #[arg(long, value_name = "FILE")]
        artifact: Option<PathBuf>,
        /// The cell.toml.
        #[arg(value_name = "MANIFEST")]
        manifest: PathBuf,
        /// The bundle to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Check a bundle's hashes and both signatures against trusted keys.
    Verify {
        /// Directory of trusted `*.pub` author keys.
        #[arg(long, default_value = "/etc/quantumos/trusted-keys.d", value_name = "DIR")]
        trusted_keys: PathBuf,
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct AskArgs {
    /// The request (several words are joined with spaces); `-` reads one
    /// request per line from standard input.
    #[arg(required = true, value_name = "TEXT")]
    pub text: Vec<String>,
    /// Run the intent engine in this process instead of asking quantumd;
    /// the plan is shown, never run.
    #[arg(long, conflicts_with = "yes")]
    pub local: bool,
    /// Run the plan without asking for confirmation (for scripts).
    #[arg(long, short = 'y', conflicts_with = "dry_run")]
    pub yes: bool,
    /// Only show the plan; never run it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object per request, each on its own line.
    #[arg(long)]
    pub json: bool,
    /// Catalog the cells are chosen from (with --local) and described from.
    #[arg(long, env = "QUANTUM_CATALOG", default_value = "/usr/share/quantumos/cells", value_name = "DIR")]
    pub catalog: PathBuf,
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
    /// Start a cell from the catalog, a manifest file, or a signed bundle.
    ///
    /// Parameters are given as NAME=VALUE after the cell; relative paths are
    /// resolved against the current directory.
    ///
    /// A task (`[lifecycle] kind = "task"` in its manifest: a disk report, a
    /// checksum, a search) runs in the foreground: its output appears here
    /// as it comes, it reads this terminal's input, and quantumctl exits with
    /// its exit status once it ends, like `systemd-run --pipe --wait`. The
    /// cell's descriptors are this process's own, passed to quantumd, so
    /// nothing is copied in between. Ctrl-C stops the cell. A task run in
    /// the foreground is never restarted. A service (a web server, a
    /// database) is started, and quantumctl returns at once, saying how to
    /// reach it and how to stop it. `--detach` (or `--json`) starts a task
    /// in the background instead.
    ///
    /// A secret parameter (`secret = true` in the manifest, such as
    /// sql-database's `password`) that the run does not give is made by
    /// quantumd, at random, and printed here once, as `NAME: VALUE` (on
    /// standard error for a task in the foreground; `secrets` in --json).
    /// It is shown nowhere else: not in the journal, the trail or `inspect`.
    /// The cell reads it from `$CREDENTIALS_DIRECTORY/NAME`.
    ///
    /// A bundle (.qcb, see `quantumctl bundle`) runs only when its hashes and
    /// both signatures verify against a key in quantumd's trusted-keys
    /// directory; a refusal says which check failed and is recorded in the
    /// trail. A name the catalog lacks, or NAME@VERSION, is fetched from the
    /// providers configured in quantumd.toml, in order, skipping any that is
    /// down or serves a bundle that does not verify.
    ///
    /// A catalog cell that ended more than its `max-restarts` times within
    /// its `restart-window` is blacklisted for a while (`blacklist-seconds`
    /// in quantumd.toml). Running it then starts a stand-in instead: the
    /// catalog cell offering the most of the same capabilities (its
    /// `capabilities` phrases, word for word; ties go to the first name in
    /// alphabetical order) that takes the same parameters, asks for no more
    /// privilege (not root unless the cell was, no wider network), and is
    /// neither blacklisted nor disabled by the administrator (`[cells]
    /// disabled` in quantumd.toml). quantumctl says so on standard error,
    /// `cell "X" is blacklisted (...); started "Y" instead, which also
    /// offers "..."`, `--json` adds `asked` and `substitution`, and the
    /// trail records it (`substitute`). With --no-substitute the run is
    /// refused instead, naming the cell that could stand in. Without such
    /// a cell the run is refused as before. A manifest file, a bundle and a
    /// disabled cell never get a stand-in; a disabled cell is always refused.
    #[command(
        after_help = "EXAMPLES:\n    quantumctl run disk-usage path=/var\n    quantumctl run checksum path=/etc/hostname\n    quantumctl run --detach file-backup source=/etc\n    quantumctl run web-server port=8080 dir=.\n    quantumctl run sql-database port=5433\n    quantumctl run --no-substitute web-server port=8080\n    quantumctl run ./my-cell/cell.toml\n    quantumctl run ./hello-1.0.0.qcb\n    quantumctl run hello@1.0.0\n\nEXIT STATUS:\n    A task in the foreground: its own exit status (128+N after signal N,\n    130 after Ctrl-C). Otherwise 0 started; 1 refused or failed to start;\n    2 usage error or quantumd unreachable."
    )]
    Run {
        /// A catalog cell name, NAME@VERSION from a provider, a path to a
        /// cell.toml (or its directory), or a path to a bundle (.qcb).
        #[arg(value_name = "CELL")]
        cell: String,
        /// Parameter values, NAME=VALUE.
        #[arg(value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Print the started instance as JSON (implies --detach).
        #[arg(long)]
        json: bool,
        /// Start a task in the background and return at once.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Refuse a blacklisted cell rather than start a stand-in that
        /// offers the same capability.
        #[arg(long)]
        no_substitute: bool,
    },
    /// Stop instances (by id, e.g. web-server.3) or every instance of a cell.
    Stop {
        #[arg(required = true, value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// List running and recently ended cell instances.
    ///
    /// STATE is starting, running, stopping, exited or failed; `warm` is a
    /// pre-warmed unit (quantumd.toml's [prewarm]) waiting for the next run
    /// of its cell, which takes it and its instance id.
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
    /// Show what a cell printed: its standard output and error.
    ///
    /// TARGET is an instance (disk-usage.3) or a cell name (every instance
    /// of it quantumd still lists). Under systemd the lines come from the
    /// journal (this boot), read by quantumd for you, so no membership in
    /// `adm` or `systemd-journal` is needed: the `quantum` group (polkit's
    /// org.quantumos.cells.manage) may read any cell's output, anyone else
    /// only that of the cells they started. A task run in the foreground
    /// printed to its terminal instead, and has nothing here.
    #[command(
        after_help = "EXAMPLES:\n    quantumctl run --detach disk-usage path=/var\n    quantumctl logs disk-usage\n    quantumctl logs -f web-server\n    quantumctl logs -n 20 --json sql-database.4\n    quantumctl logs --since 10m web-server\n\nEXIT STATUS:\n    0 success; 1 no such cell or instance, or not allowed; 2 quantumd unreachable."
    )]
    Logs {
        #[arg(value_name = "TARGET")]
        target: String,
        /// Keep printing new lines until every instance has ended (Ctrl-C
        /// stops following; the cell goes on).
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines (default: all).
        #[arg(short = 'n', long, value_name = "N", default_value_t = 0)]
        lines: u32,
        /// Only lines from this long ago on: 30s, 10m, 2h (under systemd).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// One JSON object per line: time-usec, instance, message.
        #[arg(long)]
        json: bool,
    },
    /// Show the node identity: key id, fingerprints, and whether a TPM seals it.
    Identity {
        #[arg(long)]
        json: bool,
    },
    /// Read and verify the quantum trail, quantumd's signed record of
    /// everything it ran, stopped or refused.
    #[command(subcommand)]
    Trail(TrailCommand),
    /// Snapshot and roll back a stateful cell's state.
    ///
    /// CELL is a catalog name, a running cell's name, or the path of its
    /// cell.toml.
    ///
    /// A cell with `[state] subvolume = true` keeps a state directory of its
    /// own across runs (`$STATE_DIRECTORY` in the cell). Where /var/lib is
    /// btrfs it is a subvolume: a snapshot is read-only and instant, and a
    /// rollback replaces the state with a copy of a snapshot in one atomic
    /// step (the snapshot stays). Elsewhere the state is a plain directory
    /// and these commands say so. Every change is recorded in the trail.
    #[command(
        subcommand,
        after_help = "EXAMPLES:
    quantumctl cell snapshot sql-database before-upgrade
    quantumctl cell snapshots sql-database
    quantumctl stop sql-database && quantumctl cell rollback sql-database before-upgrade
    quantumctl cell forget sql-database before-upgrade

EXIT STATUS:
    0 success; 1 refused (no such cell or snapshot, the cell keeps no state,
    running during a rollback, not on btrfs); 2 quantumd unreachable."
    )]
    Cell(CellCommand),
    /// Show STEPPPS figures: the node, and per cell its CPU, memory, I/O
    /// and tasks (SPACE), run-queue latency (TIME) and process events (EVENT).
    ///
    /// On a terminal the view refreshes every second, like top (Ctrl-C
    /// quits); piped, or with --once, it prints once. TIME and EVENT come
    /// from eBPF programs: where quantumd could not load them (no BTF, no
    /// CAP_BPF/CAP_PERFMON, `bpf = false`) they say why instead. Rates and
    /// latencies are over the last second.
    ///
    /// With --json, one object (kebab-case keys; an unavailable dimension is
    /// `{"unavailable": "REASON"}`): `node`, `cells` (by instance), `gpus`,
    /// `time`, `event`.
    #[command(
        after_help = "EXAMPLES:\n    quantumctl steppps\n    quantumctl steppps --cell web-server --once\n    quantumctl steppps --json | jq '.time'"
    )]
    Steppps {
        /// Only the instances of this cell.
        #[arg(long, value_name = "NAME")]
        cell: Option<String>,
        /// Print the figures once, as JSON.
        #[arg(long)]
        json: bool,
        /// Print once and exit, even on a terminal.
        #[arg(long)]
        once: bool,
        /// Say in full why a figure is unavailable (the GPU library's own
        /// error, for instance), not only the gist.
        #[arg(long, short = 'v')]
        verbose: bool,
    },
    /// Run cells when something happens (STEPPPS SCRIPT): on a calendar,
    /// when a path changes, when another cell ends a certain way, or when a
    /// STEPPPS figure stays past a value.
    ///
    /// A trigger is a small TOML file:
    ///
    ///     [trigger]
    ///     name = "nightly-disk-report"
    ///     description = "What fills /var, every night"
    ///     cell = "disk-usage"            # catalog name or /path/to/cell.toml
    ///     on-calendar = "*-*-* 03:00"    # exactly one on-* key
    ///
    ///     [params]
    ///     path = "/var"
    ///
    /// The on-* keys, one per trigger:
    ///
    ///   on-calendar = "SPEC"          systemd.time(7): "daily",
    ///                                 "Mon..Fri 09:00", "*:0/15"
    ///   on-path-changed = "/abs/path" a file written and closed, created,
    ///                                 removed or renamed; for a directory,
    ///                                 any entry in it
    ///   on-event = { cell = "NAME", state = "S" }
    ///                                 S: started, exited, failed,
    ///                                 out-of-memory, blacklisted
    ///   on-threshold = { figure = "F", cell = "NAME", above = V, for = "30s" }
    ///                                 (or below = V; for defaults to "0")
    ///
    /// Threshold figures: memory-pressure, cpu-pressure, io-pressure (PSI
    /// "some" avg10 in percent; the node's, or a cell's with cell = ...);
    /// memory-available (a size such as "512M"), cpu-busy (percent) and
    /// load (the node's only); memory (a size) and cpu (cores) (a cell's
    /// only: any running instance past the bound fires). A threshold fires
    /// once per crossing; no trigger fires twice within a second.
    ///
    /// Calendars and paths become systemd timer and path units
    /// (quantum-trigger-NAME.timer|path); events and thresholds are watched
    /// by quantumd. Either way quantumd runs the cell as `trigger:NAME`,
    /// with its usual checks, identity and trail entry. Triggers added here
    /// are kept in /var/lib/quantumd/triggers; the administrator's live in
    /// /etc/quantumos/triggers/*.toml, are read when quantumd starts, and
    /// cannot be removed from here. Adding or removing needs the right to
    /// manage cells (polkit org.quantumos.cells.manage).
    #[command(
        subcommand,
        verbatim_doc_comment,
        after_help = "EXAMPLES:
    quantumctl trigger validate nightly.toml
    quantumctl trigger add nightly.toml
    quantumctl trigger list
    quantumctl trigger remove nightly-disk-report

EXIT STATUS:
    0 success; 1 the file is invalid (FILE:LINE:COL: error: FIELD: MESSAGE
    on stderr) or unreadable, or quantumd refused; 2 quantumd unreachable
    (for validate: a file unreadable)."
    )]
    Trigger(TriggerCommand),
    /// Recommend `[resources]` for a cell from what its runs really used.
    ///
    /// quantumd keeps a usage history per cell (STEPPPS PSYCHOLOGY, under
    /// /var/lib/quantumd/psychology): one sample for every instance that
    /// ends, with its memory peak, CPU (average and busiest second),
    /// run-queue latency, tasks, run length, start hour and how it ended;
    /// the last 1000 runs of each cell. From them, as Kubernetes' VPA
    /// recommender does: memory-max is the 99th percentile of the peaks
    /// plus a 15 % margin, memory-min their median, cpu-min the 90th
    /// percentile of average cores plus 15 %, cpu-max the 99th percentile
    /// of busiest seconds plus 15 %, tasks-max the most tasks plus 15 %;
    /// rounded up to a unit you would write, never more than the machine
    /// has. An OOM-killed run's peak counts x1.2 (it wanted more than it
    /// got).
    ///
    /// The output is a `[resources]` block to paste into the cell's
    /// cell.toml, with the evidence (runs, percentiles, how runs ended, the
    /// busiest start hours) as comments. Below 10 runs the confidence is
    /// "not enough history" and the keys are commented out too. A figure
    /// the host does not measure (no memory or pids controller) gives no
    /// key and says so. With --json, one object: `cell`, `samples`,
    /// `confidence`, `margin`, `resources` (bytes and cores), `evidence`.
    #[command(
        after_help = "EXAMPLES:\n    quantumctl recommend image-resize\n    quantumctl recommend image-resize --json | jq '.resources'\n    quantumctl recommend web-server >> /tmp/web-server-resources.toml\n\nEXIT STATUS:\n    0 a recommendation (whatever its confidence); 1 no such cell (neither in\n    the catalog nor in the history) or the history cannot be read;\n    2 quantumd unreachable."
    )]
    Recommend {
        /// The cell's name (catalog name, as `list` shows it).
        #[arg(value_name = "CELL")]
        cell: String,
        /// Print the recommendation and its evidence as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show security alerts: cells that ran a program, connected somewhere
    /// or used CPU unlike their learned baseline, or whose network
    /// allow-list refused a connection.
    ///
    /// quantumd learns each cell's baseline from STEPPPS EVENT and SPACE
    /// while the cell runs for its first `[policy] learning` (default 1m,
    /// summed over its runs; a new version learns afresh): the programs it
    /// execs (by process name; those its manifest names are in from the
    /// start), the TCP destinations it connects to (as `tcp:PORT@CLASS`,
    /// CLASS loopback, private or public) and the most CPU it uses. After
    /// that: an exec outside the set is an `exec` alert and a new
    /// destination a `connect` alert, once per instance and program or
    /// destination (a cell with a network-allow list is judged by its list
    /// instead); using more than three times its peak CPU (and half a core
    /// more) for as long as it learned (at most a minute) is a `cpu` alert.
    /// Connections and datagrams refused by `[isolation] network-allow` are
    /// `network` alerts at once (then at most one a minute per instance).
    /// With `[policy] on-anomaly = "stop"` the instance is also stopped;
    /// `"ignore"` turns all of this off for the cell.
    ///
    /// Alerts are entries of the signed trail (action `alert`); this reads
    /// them from there. With --json, an array of objects (`seq`, `time-ns`,
    /// `instance`, `cell`, `kind`, `response`, `message`); with --follow,
    /// new alerts keep coming (JSON: one object per line) until Ctrl-C.
    #[command(
        after_help = "EXAMPLES:\n    quantumctl alerts\n    quantumctl alerts --cell web-server --json\n    quantumctl alerts --follow\n\nEXIT STATUS:\n    0 success (with or without alerts); 1 the trail cannot be read;\n    2 quantumd unreachable."
    )]
    Alerts {
        #[command(flatten)]
        range: TrailRange,
        /// Keep printing new alerts as they are recorded.
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show or revoke the channels between cells (Cell 0 IPC).
    ///
    /// A cell serves channels it lists under `[provides] channels` and
    /// reaches those of other cells it lists under `[uses] channels`
    /// (`CELL/CHANNEL`). Each instance gets a capability token (a macaroon
    /// bound to the instance, with the channels, an expiry and a rate) in
    /// `$QUANTUM_CHANNEL_TOKEN`; quantumd's broker checks it, and
    /// that the asking process is in that instance's cgroup, before it
    /// hands both cells the ends of a fresh socket pair. Messages never
    /// pass through quantumd. Every listen, connect, refusal and
    /// revocation is in the trail (action `channel`).
    ///
    /// Without a subcommand: who listens on what, and the open streams.
    #[command(
        after_help = "EXAMPLES:\n    quantumctl channels\n    quantumctl channels --json\n    quantumctl channels revoke echo-client.4\n    quantumctl channels revoke echo-client.4 --channel echo-server/echo\n\nEXIT STATUS:\n    0 success; 1 refused (no broker, not allowed); 2 quantumd unreachable."
    )]
    Channels {
        #[command(subcommand)]
        command: Option<ChannelsCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Show this node's place in the cell network (etcd cluster).
    ///
    /// When /etc/quantumos/cluster.toml exists (the `cluster` key of
    /// quantumd.toml names another file), quantumd joins the etcd cluster it
    /// names: it registers this node under a lease (`lease-ttl`, default 3
    /// seconds) with a record signed by the node identity (its name, key,
    /// version and capacity: CPUs, memory, GPUs), keeps the lease alive and
    /// watches the other nodes' records. A node that stops keeping its
    /// lease is gone from every view within the TTL. A record is believed
    /// only when its key is one of the trusted nodes' (`*.pub` files in the
    /// file's `trusted-nodes` directory, default /etc/quantumos/cluster/nodes)
    /// and its signature verifies; others are listed as refused, with why.
    /// Joins, losses, nodes up and down, refusals and leaving are in the
    /// trail (action `cluster`).
    ///
    /// The file:
    ///
    ///     endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
    ///     node = "kitchen"          # default: the host name
    ///     lease-ttl = 3             # seconds, 2 to 60
    ///     trusted-nodes = "/etc/quantumos/cluster/nodes"
    ///     prefix = "/quantumos"     # where in etcd
    ///
    /// Restart quantumd.service after changing it.
    #[command(
        after_help = "EXAMPLES:\n    quantumctl cluster status\n    quantumctl cluster nodes --json\n    quantumctl cluster key > kitchen.pub   # copy into the other nodes' trusted-nodes directory\n    quantumctl cluster place web-server port=8080\n    quantumctl cluster unplace web-server-1a2b3c4d\n\nEXIT STATUS:\n    0 success (also when the node is on its own); 1 refused (not joined, not allowed, no such placement); 2 quantumd unreachable."
    )]
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// The cluster as this node sees it: its state (standalone,
    /// misconfigured, connecting, joined, lost), the etcd members and
    /// leader, the nodes and the refused records.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The nodes whose signed records this node believes, with their
    /// capacity.
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Print this node's public keys: the `NODE.pub` file the other nodes
    /// trust it by.
    Key,
    /// Place a catalog cell on the cluster: on the node with the most
    /// memory free, by a compare-and-swap in etcd (two nodes never both
    /// run it). That node runs it; if its lease runs out, the surviving
    /// nodes place it again on the least loaded of them. Needs the right
    /// to manage cells.
    Place {
        /// A catalog cell (every node has the catalog).
        cell: String,
        /// NAME=VALUE parameters, as for `run`.
        params: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a placement (its id, as `place` and `status` show it): the
    /// node running it stops it.
    Unplace { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum ChannelsCommand {
    /// Shut down an instance's open streams and refuse its token from now
    /// on, for the rest of the instance's life (kept across quantumd
    /// restarts). Needs the right to manage cells.
    Revoke {
        /// The instance (CELL.N, as `quantumctl list` shows it).
        instance: String,
        /// Only this channel (CELL/CHANNEL); default all of them.
        #[arg(long, value_name = "CELL/CHANNEL")]
        channel: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum CellCommand {
    /// Take a read-only snapshot of the cell's state (it may be running).
    Snapshot {
        cell: String,
        /// 1 to 64 of A-Z a-z 0-9 . _ - (default: the time now, UTC).
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Replace the cell's state with a copy of a snapshot; stop the cell first.
    Rollback {
        cell: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List the snapshots of the cell's state.
    Snapshots {
        cell: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot.
    Forget {
        cell: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TriggerCommand {
    /// Check trigger files without quantumd, as `validate` checks manifests.
    Validate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
    },
    /// Add the trigger a file defines and arm it at once.
    Add {
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Disarm and delete a trigger added with `add`.
    Remove {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Show every trigger: what it runs, when, who armed it, how often it
    /// fired and what its last firing started.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Which trail entries (or alerts, which are trail entries) to show.
#[derive(Debug, clap::Args)]
pub struct TrailRange {
    /// Only those about this cell.
    #[arg(long, value_name = "NAME")]
    pub cell: Option<String>,
    /// Only those from this trail sequence number on.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub since: u64,
    /// Only the last N (0: all).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, clap::Subcommand)]
pub enum TrailCommand {
    /// Show trail entries, oldest first.
    #[command(after_help = "EXAMPLES:\n    quantumctl trail show -n 20\n    quantumctl trail show --cell web-server --json")]
    Show {
        #[command(flatten)]
        range: TrailRange,
        #[arg(long)]
        json: bool,
    },
    /// Verify checksums, the hash chain and every seal's signature; name the
    /// first entry that fails and why.
    #[command(after_help = "EXIT STATUS:\n    0 the trail verifies; 1 it does not (the failing entry is named); 2 quantumd unreachable.")]
    Verify {
        #[arg(long)]
        json: bool,
    },
}
