//! The D-Bus contract of quantumd: names, the `#[proxy]` of the
//! `org.quantumos.Quantum1` interface, its wire types and its errors.
//!
//! Architecture invariant: this crate is the only one that knows the wire
//! format, and it never depends on the daemon. quantumd implements the
//! interface described by [`Quantum1Proxy`]; quantumctl, the desktop and the
//! tests talk through the proxy.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;

/// Well-known name of quantumd on the system bus.
pub const BUS_NAME: &str = "org.quantumos.Quantum1";
/// The one object quantumd exports.
pub const OBJECT_PATH: &str = "/org/quantumos/Quantum1";
/// Interface name, also the prefix of its error names.
pub const INTERFACE: &str = "org.quantumos.Quantum1";
/// Environment variable that picks a private bus (also `--bus`).
pub const BUS_ADDRESS_ENV: &str = "QUANTUM_BUS_ADDRESS";

/// quantumd's direct socket: the same interface peer to peer, without
/// dbus-daemon in between (quantumd.socket; root and group `quantum`).
pub const DEFAULT_SOCKET: &str = "/run/quantumd.sock";

/// Overrides [`DEFAULT_SOCKET`] (quantumd's `--socket` reads it too); empty:
/// never use a direct socket.
pub const SOCKET_ENV: &str = "QUANTUM_SOCKET";

/// Polkit action required by every call that changes state.
pub const ACTION_MANAGE: &str = "org.quantumos.cells.manage";

/// One running (or recently ended) cell instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct CellInfo {
    /// Instance id, unique on this node: `<cell>.<n>`.
    pub instance: String,
    /// The cell's name from its manifest.
    pub cell: String,
    /// `starting`, `running`, `stopping`, `exited`, `failed`; `warm` for a
    /// pre-warmed unit no run has taken yet (its instance id is the one the
    /// run that takes it gets).
    pub state: String,
    /// Why the cell is in this state, for humans ("exited with status 1").
    pub reason: String,
    /// The systemd unit (or cgroup path) that carries it.
    pub unit: String,
    /// Main process id, 0 when not running.
    pub pid: u32,
    /// Instance id of the parent cell, empty for a top-level cell.
    pub parent: String,
    /// Wall-clock start time, microseconds since the Unix epoch.
    pub started_usec: u64,
}

/// One trigger (STEPPPS SCRIPT): a cell run when something happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct TriggerInfo {
    pub name: String,
    pub description: String,
    /// The cell it runs (a catalog name or a manifest path).
    pub cell: String,
    /// Its parameters, `name=value` each.
    pub params: Vec<String>,
    /// When it fires, in one line: `on-calendar daily`,
    /// `on-threshold memory of web-server above 64M for 5s`.
    pub on: String,
    /// Who keeps watch: `systemd (quantum-trigger-NAME.timer)` or `quantumd`.
    pub armed_by: String,
    /// The definition's file.
    pub origin: String,
    /// `admin` (under /etc/quantumos/triggers) or who added it (`uid:N`).
    pub added_by: String,
    /// Times it fired since quantumd started.
    pub fired: u64,
    /// When it last fired, microseconds since the Unix epoch; 0: never.
    pub last_fired_usec: u64,
    /// The instance its last firing started, or why none did; or why the
    /// trigger could not be armed.
    pub last_result: String,
}

/// Everything quantumd knows of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct CellDetail {
    pub info: CellInfo,
    /// Where the manifest came from (catalog path or file).
    pub manifest_path: String,
    /// Version from the manifest.
    pub version: String,
    /// The argument vector after parameter substitution.
    pub argv: Vec<String>,
    /// Parameter values in effect, defaults included.
    pub params: HashMap<String, String>,
    /// The resource limits and sandbox settings applied, as the backend
    /// names them (`MemoryMax` -> `268435456`).
    pub properties: HashMap<String, String>,
    /// Instance ids of needed cells started for this one and of its children.
    pub needs: Vec<String>,
    pub children: Vec<String>,
    /// Restarts within the current restart window.
    pub restarts: u32,
    /// Exit status of the last run, or -1.
    pub last_exit: i32,
    /// For a service: how to reach it (its manifest's `reach`, with the
    /// run's parameters), empty when it says nothing.
    pub reach: String,
}

/// A started instance, as `RunAttached` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Started {
    pub info: CellInfo,
    /// The caller's stdio is the cell's: a task, to be waited for.
    pub attached: bool,
    /// For a service: how to reach it (its manifest's `reach`, with the
    /// run's parameters), empty when it says nothing.
    pub reach: String,
    /// The secret parameters quantumd made for this run because it gave
    /// none (a database's password), name -> value. This answer is the
    /// only place they are ever shown: not in `Inspect`, the trail or the
    /// journal. Empty for a cell without secrets.
    pub secrets: HashMap<String, String>,
}

/// A started instance, as `RunWith` and `RunAttachedWith` answer: what
/// started, and whether it is the cell asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Assembled {
    pub started: Started,
    /// The cell asked for, when another one runs in its place; empty when
    /// the cell asked for is the one that runs.
    pub asked: String,
    /// Why, for humans, when another cell runs: `cell "X" is blacklisted
    /// (...); started "Y" instead, which also offers "..."`. Empty otherwise.
    pub substitution: String,
}

/// The options of `RunWith` and `RunAttachedWith`, sent as a D-Bus `a{sv}`
/// so that later options need no new method. A key quantumd does not know,
/// or a value of the wrong type, is refused (`InvalidArgs`): a caller never
/// believes an option was honoured that was not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `substitute` (boolean, default false): when the cell asked for is a
    /// catalog cell blacklisted after too many restarts, start the catalog
    /// cell that offers the same capability instead, and say so in the
    /// answer. Off, such a run is refused.
    pub substitute: bool,
}

impl RunOptions {
    const SUBSTITUTE: &'static str = "substitute";

    /// The options as the method's `a{sv}` argument.
    pub fn to_wire(self) -> HashMap<&'static str, zbus::zvariant::Value<'static>> {
        HashMap::from([(Self::SUBSTITUTE, zbus::zvariant::Value::from(self.substitute))])
    }

    /// Reads the `a{sv}` argument; the error names the bad key.
    pub fn from_wire(options: &HashMap<String, zbus::zvariant::OwnedValue>) -> Result<RunOptions, Error> {
        let invalid = |m: String| Error::ZBus(zbus::Error::FDO(Box::new(zbus::fdo::Error::InvalidArgs(m))));
        let mut out = RunOptions::default();
        for (key, value) in options {
            match key.as_str() {
                Self::SUBSTITUTE => {
                    out.substitute = bool::try_from(value).map_err(|_| {
                        invalid(format!(
                            "run option \"{key}\" must be a boolean (b), not {}",
                            value.value_signature()
                        ))
                    })?;
                }
                other => return Err(invalid(format!("unknown run option \"{other}\" (known: {})", Self::SUBSTITUTE))),
            }
        }
        Ok(out)
    }
}

/// How an instance ended (the answer of `Wait`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Ended {
    /// False when the wait timed out with the instance still running.
    pub ended: bool,
    /// Exit status: the program's own, or 128+N when killed by signal N;
    /// -1 when unknown.
    pub status: i32,
    /// `exited`, `failed` or `stopped`; empty while running.
    pub state: String,
    pub reason: String,
}

/// The node's identity: its key ids and fingerprints, and where the
/// secret keys are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct NodeIdentity {
    /// The combined key id (hex), as in identity documents and trail seals.
    pub key_id: String,
    pub ml_dsa_fingerprint: String,
    pub ed25519_fingerprint: String,
    /// Where the secret keys live (a TPM-sealed blob, or a key file and why).
    pub store: String,
    /// Whether a TPM seals them.
    pub tpm: bool,
}

/// One entry of the quantum trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct TrailEntry {
    pub seq: u64,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Who asked: `uid:N`, or `quantumd` for what it did on its own.
    pub actor: String,
    /// run, stop, refuse, restart, blacklist, substitute, exit, plan,
    /// execute, identity, tune, bundle, state, trigger, prewarm, alert, trail.
    pub action: String,
    /// Empty when the entry is about no cell.
    pub cell: String,
    /// blake3 of the manifest (hex), empty when none.
    pub manifest_hash: String,
    pub ok: bool,
    /// Why it failed, when `ok` is false.
    pub error: String,
    pub detail: String,
}

/// A cell that behaved unlike its baseline or its manifest, as the trail
/// recorded it (an `alert` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "kebab-case")]
pub struct Alert {
    /// The trail entry's sequence number.
    pub seq: u64,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub instance: String,
    pub cell: String,
    /// `exec` (a program it did not run while its baseline was learned),
    /// `connect` (a TCP destination it did not connect to then), `cpu`
    /// (sustained CPU far above its learned peak) or `network`
    /// (connections its `network-allow` refused).
    pub kind: String,
    /// The cell's `[policy] on-anomaly`: `alert`, or `stop` (it was stopped).
    pub response: String,
    /// What happened, for a person.
    pub message: String,
}

/// What verifying the trail found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct TrailReport {
    /// No failure (warnings allowed).
    pub ok: bool,
    pub segments: u64,
    pub entries: u64,
    pub seals: u64,
    /// 0 when the trail is empty.
    pub last_seq: u64,
    /// The last entry a valid seal vouches for; 0 when none.
    pub last_sealed_seq: u64,
    /// The chain head (hex).
    pub head: String,
    /// The first failing entry and why ("SEGMENT at byte N (entry S): ..."),
    /// empty when none.
    pub failure: String,
    pub warnings: Vec<String>,
}

/// A stateful cell's state after a `CellState` operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct CellStateReport {
    pub cell: String,
    /// The directory the cell reads and writes (its `$STATE_DIRECTORY`).
    pub current: String,
    /// Whether it is a btrfs subvolume; without btrfs there are no snapshots.
    pub btrfs: bool,
    /// Snapshot names, sorted.
    pub snapshots: Vec<String>,
}

/// An open channel stream between two cell instances (Cell 0 IPC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "kebab-case")]
pub struct ChannelStream {
    /// The instance that connected.
    pub consumer: String,
    /// The instance that serves it.
    pub provider: String,
    /// `CELL/CHANNEL`.
    pub channel: String,
    /// When the broker handed it out, microseconds since the Unix epoch.
    pub opened_usec: u64,
}

/// An instance serving a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "kebab-case")]
pub struct ChannelListener {
    pub instance: String,
    /// `CELL/CHANNEL`.
    pub channel: String,
}

/// What the channel broker holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "kebab-case")]
pub struct ChannelTable {
    pub listening: Vec<ChannelListener>,
    pub streams: Vec<ChannelStream>,
}

/// A node of the cell network, as its signed record in etcd says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterNode {
    pub name: String,
    /// Its node identity's key id (hex).
    pub key_id: String,
    /// Its quantumd's version.
    pub version: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub gpus: u32,
    /// When it last wrote its record, microseconds since the Unix epoch.
    pub updated_usec: u64,
    /// This node itself.
    pub this_node: bool,
}

/// A member of the etcd cluster the nodes share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "kebab-case")]
pub struct EtcdMember {
    pub name: String,
    /// Member id (hex).
    pub id: String,
    pub client_urls: Vec<String>,
    pub leader: bool,
}

/// A node record that is not believed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterRefusal {
    pub node: String,
    pub why: String,
}

/// A cell placed on the cell network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterPlacement {
    /// `CELL-XXXXXXXX`.
    pub id: String,
    /// The catalog cell.
    pub cell: String,
    pub params: HashMap<String, String>,
    /// The node that runs it.
    pub node: String,
    /// The node that placed it there.
    pub by: String,
    pub placed_usec: u64,
    /// The instance running it, when that is on this node; empty otherwise.
    pub instance: String,
}

/// This node's place in the cell network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterStatus {
    /// `standalone` (no cluster file), `misconfigured`, `connecting`,
    /// `joined` or `lost` (retrying).
    pub state: String,
    /// Why `misconfigured` or `lost`; empty otherwise.
    pub error: String,
    /// The cluster file.
    pub config: String,
    /// This node's name in the cluster.
    pub node: String,
    pub key_id: String,
    pub endpoints: Vec<String>,
    /// Since when `state` holds, microseconds since the Unix epoch.
    pub since_usec: u64,
    pub lease_ttl_s: u64,
    pub etcd_members: Vec<EtcdMember>,
    /// The nodes whose records verify, this one included.
    pub nodes: Vec<ClusterNode>,
    pub refused: Vec<ClusterRefusal>,
    pub placements: Vec<ClusterPlacement>,
    /// This node's public keys: the `.pub` file the other nodes trust it
    /// by (`quantumctl cluster key`).
    pub public_key: String,
}

/// Errors of the interface, mapped to D-Bus error names
/// `org.quantumos.Quantum1.Error.<Variant>`; the text is for humans.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.quantumos.Quantum1.Error")]
pub enum Error {
    /// A transport-level failure (the daemon is not running, a timeout...).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No cell, catalog entry or instance by that name.
    NotFound(String),
    /// The manifest, or a parameter for it, is invalid.
    InvalidManifest(String),
    /// The caller is not authorized (polkit said no).
    AccessDenied(String),
    /// Refused by policy: blacklisted after too many restarts, disabled by
    /// the administrator, a dependency that could not be started...
    Refused(String),
    /// The runtime backend (systemd, cgroups) failed.
    Backend(String),
}

impl Error {
    /// The human message, without the D-Bus error name.
    pub fn message(&self) -> String {
        match self {
            Error::ZBus(e) => e.to_string(),
            Error::NotFound(m) | Error::InvalidManifest(m) | Error::AccessDenied(m) | Error::Refused(m) | Error::Backend(m) => m.clone(),
        }
    }
}

/// The `org.quantumos.Quantum1` interface as seen by a client.
#[zbus::proxy(
    interface = "org.quantumos.Quantum1",
    default_service = "org.quantumos.Quantum1",
    default_path = "/org/quantumos/Quantum1",
    gen_blocking = false
)]
pub trait Quantum1 {
    /// Starts a cell. `source` is a catalog cell name or an absolute path to
    /// a `cell.toml`; `params` fills its placeholders; relative `path`
    /// parameters (given or default) are resolved against `cwd`, the
    /// caller's working directory (empty: the manifest's directory). Needed
    /// cells are started first, children after. Returns the new instance.
    fn run(&self, source: &str, params: HashMap<String, String>, cwd: &str) -> Result<CellInfo, Error>;

    /// Like `Run`, for a caller that wants to see the cell's work. A task
    /// (`[lifecycle] kind = "task"`) gets the caller's standard input,
    /// output and error (Unix file descriptors) as its own, as
    /// `systemd-run --pipe` does: it writes straight to the caller's
    /// terminal or pipe, nothing is copied through quantumd, it is never
    /// restarted, and its end and exit status are the caller's to see
    /// (`Wait`). A service is started as `Run` would and the answer says
    /// how to reach it. Needed cells and children are never attached.
    fn run_attached(
        &self,
        source: &str,
        params: HashMap<String, String>,
        cwd: &str,
        stdin: zbus::zvariant::Fd<'_>,
        stdout: zbus::zvariant::Fd<'_>,
        stderr: zbus::zvariant::Fd<'_>,
    ) -> Result<Started, Error>;

    /// `Run`, with options (see [`RunOptions`]) and an answer that says
    /// whether another cell runs in place of the one asked for. Only with
    /// `substitute` set does quantumd start a stand-in for a blacklisted
    /// cell: callers of `Run`, `RunAttached` and `Execute` are never given
    /// a cell they did not ask for.
    fn run_with(
        &self,
        source: &str,
        params: HashMap<String, String>,
        cwd: &str,
        options: HashMap<&str, zbus::zvariant::Value<'_>>,
    ) -> Result<Assembled, Error>;

    /// `RunAttached`, with options and answer as `RunWith`.
    #[allow(clippy::too_many_arguments)]
    fn run_attached_with(
        &self,
        source: &str,
        params: HashMap<String, String>,
        cwd: &str,
        options: HashMap<&str, zbus::zvariant::Value<'_>>,
        stdin: zbus::zvariant::Fd<'_>,
        stdout: zbus::zvariant::Fd<'_>,
        stderr: zbus::zvariant::Fd<'_>,
    ) -> Result<Assembled, Error>;

    /// Streams what a cell printed (its stdout and stderr) into `out`, a
    /// pipe the caller reads: the journal under systemd, the instance's log
    /// file under the cgroup backend. `target` is an instance id or a cell
    /// name (every instance of it still listed). `lines`: only the last N
    /// (0: all). `since_usec`: only lines from then on (microseconds since
    /// the Unix epoch; 0: all; the journal only). With `follow`, new lines keep coming until every instance
    /// has ended or the caller closes its end. With `json`, one object per
    /// line: `time-usec`, `instance`, `message`. Allowed to callers polkit
    /// allows `org.quantumos.cells.manage`, and to whoever started every
    /// instance asked for. Returns once the stream has begun.
    fn logs(&self, target: &str, lines: u32, since_usec: u64, follow: bool, json: bool, out: zbus::zvariant::Fd<'_>) -> Result<(), Error>;

    /// Waits up to `timeout_ms` (at most 60000) for an instance to end.
    /// Returns whether it has ended and, if so, how: the exit status (as a
    /// shell reports it: 128+N for signal N; -1 when unknown), the final
    /// state (`exited`, `failed`, `stopped`) and the reason. An instance
    /// that ended before the call is answered at once, as long as quantumd
    /// still lists it.
    fn wait(&self, instance: &str, timeout_ms: u32) -> Result<Ended, Error>;

    /// Stops an instance (by id) or every instance of a cell (by name),
    /// children first and needed cells last. Returns the stopped instance ids.
    fn stop(&self, target: &str) -> Result<Vec<String>, Error>;

    /// Every instance quantumd knows of.
    fn list(&self) -> Result<Vec<CellInfo>, Error>;

    /// One instance, by id or by cell name (the newest instance of it).
    fn inspect(&self, target: &str) -> Result<CellDetail, Error>;

    /// Plans a request in plain words with the intent engine. Returns the
    /// plan as JSON, the `quantumctl ask --json` object
    /// (`{"intent", "cells": [{"name", "params"}], "confidence", "reason"?}`)
    /// plus `"plan-id"` when there is something to run. Nothing runs until
    /// the same connection calls `Execute` with that id (within 10 minutes).
    fn ask(&self, intent: &str) -> Result<String, Error>;

    /// Runs an asked plan, cell after cell in order, as `Run` would; relative
    /// path parameters are resolved against `cwd`. Only the connection that
    /// asked may execute a plan, once. Returns the started instances, each
    /// with how to reach it and the secrets made for it (`Started`: this
    /// answer is the only place a made secret is shown).
    fn execute(&self, plan_id: &str, cwd: &str) -> Result<Vec<Started>, Error>;

    /// `Execute`, with each task of the plan attached to the caller's
    /// standard input, output and error as `RunAttached` does.
    fn execute_attached(
        &self,
        plan_id: &str,
        cwd: &str,
        stdin: zbus::zvariant::Fd<'_>,
        stdout: zbus::zvariant::Fd<'_>,
        stderr: zbus::zvariant::Fd<'_>,
    ) -> Result<Vec<Started>, Error>;

    /// The node identity.
    fn identity(&self) -> Result<NodeIdentity, Error>;

    /// Trail entries, oldest first: those about `cell` (empty: all) with a
    /// sequence number of at least `since_seq`, at most the last `limit`
    /// of them (0: all).
    fn trail_show(&self, cell: &str, since_seq: u64, limit: u32) -> Result<Vec<TrailEntry>, Error>;

    /// Alerts (security-ai), oldest first, read from the trail: those about
    /// `cell` (empty: all) from sequence number `since_seq` on, at most the
    /// last `limit` (0: all).
    fn alerts(&self, cell: &str, since_seq: u64, limit: u32) -> Result<Vec<Alert>, Error>;

    /// The channel broker's listeners and open streams.
    fn channels(&self) -> Result<ChannelTable, Error>;

    /// Revokes `instance`'s channels (`channel` empty: all; else one
    /// `CELL/CHANNEL`) for the rest of its life: its open streams are shut
    /// down and its token refused. Returns how many streams were closed.
    /// Needs `org.quantumos.cells.manage`.
    fn revoke_channels(&self, instance: &str, channel: &str) -> Result<u32, Error>;

    /// This node's place in the cell network: the etcd cluster, the nodes
    /// seen and those refused (`quantumctl cluster`).
    fn cluster(&self) -> Result<ClusterStatus, Error>;

    /// Places catalog cell `cell` with `params` on the node of the cluster
    /// with the most memory free, by a compare-and-swap in etcd; that node
    /// runs it, and if it is lost another does. Needs
    /// `org.quantumos.cells.manage`.
    fn place(&self, cell: &str, params: HashMap<String, String>) -> Result<ClusterPlacement, Error>;

    /// Removes placement `id`; the node running it stops it. Returns
    /// whether there was one. Needs `org.quantumos.cells.manage`.
    fn unplace(&self, id: &str) -> Result<bool, Error>;

    /// Verifies the whole trail: checksums, the hash chain, every seal's
    /// signature against this node's keys; names the first failing entry.
    fn trail_verify(&self) -> Result<TrailReport, Error>;

    /// A stateful cell's state (`[state] subvolume = true`): `op` is `list`,
    /// `snapshot` (a read-only snapshot named `name`), `rollback` (the state
    /// becomes a copy of snapshot `name`; no instance of the cell may be
    /// running) or `delete` (snapshot `name`). Snapshots need btrfs.
    fn cell_state(&self, cell: &str, op: &str, name: &str) -> Result<CellStateReport, Error>;

    /// STEPPPS figures as JSON (the `quantumctl steppps --json` contract,
    /// see quantum-steppps' `Figures`): every cell, or the instances of
    /// `cell` when it is not empty. Updated once a second.
    fn steppps(&self, cell: &str) -> Result<String, Error>;

    /// STEPPPS PSYCHOLOGY: recommended `[resources]` for `cell` from its
    /// usage history, as JSON (the `quantumctl recommend --json` contract,
    /// see quantum-psychology's `Recommendation`). `NotFound` when neither
    /// the catalog nor the history knows the cell.
    fn recommend(&self, cell: &str) -> Result<String, Error>;

    /// STEPPPS SCRIPT: adds the trigger defined by `toml` (a
    /// `trigger.toml`; `file` names it in diagnostics, which come back as
    /// `InvalidManifest` in the `FILE:LINE:COL: error: FIELD: MESSAGE`
    /// form). Kept in quantumd's state directory and armed at once.
    fn add_trigger(&self, toml: &str, file: &str) -> Result<TriggerInfo, Error>;

    /// Disarms and deletes a trigger added with `AddTrigger`; the admin's
    /// (/etc/quantumos/triggers) are refused.
    fn remove_trigger(&self, name: &str) -> Result<(), Error>;

    /// Every trigger, by name.
    fn list_triggers(&self) -> Result<Vec<TriggerInfo>, Error>;

    /// Emitted when quantumd changes a running cell's CPU weight to keep its
    /// run-queue latency objective.
    #[zbus(signal)]
    fn cell_tuned(&self, instance: &str, cell: &str, old_weight: u64, new_weight: u64, reason: &str) -> zbus::Result<()>;

    /// Emitted when a running cell does what its baseline or its manifest
    /// does not allow for: `kind` is `exec`, `connect`, `cpu` or `network`, `response` the
    /// cell's `[policy] on-anomaly` (`alert`, or `stop`: it is being
    /// stopped). The same alert is in the trail (`Alerts`).
    #[zbus(signal)]
    fn cell_alert(&self, instance: &str, cell: &str, kind: &str, response: &str, message: &str) -> zbus::Result<()>;

    /// Emitted after each STEPPPS sample (once a second) that covers at
    /// least one cell, and once when the last cell has gone: `Steppps`
    /// answers the new figures. `sampled_usec` is when they were taken (µs
    /// since the epoch), `cells` how many instances they cover. It carries
    /// no figures itself, so that who may read them stays `Steppps`'s to say.
    #[zbus(signal)]
    fn figures_changed(&self, sampled_usec: u64, cells: u32) -> zbus::Result<()>;

    /// Emitted on every state change of an instance.
    #[zbus(signal)]
    fn cell_state_changed(&self, instance: &str, cell: &str, state: &str, reason: &str) -> zbus::Result<()>;

    /// `systemd` or `cgroup`, with what it cannot enforce on this host.
    #[zbus(property)]
    fn backend(&self) -> zbus::Result<String>;

    /// quantumd's version.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

/// Connects to the bus quantumd listens on: `address` if given, else
/// `$QUANTUM_BUS_ADDRESS`, else the system bus. For callers that listen to
/// quantumd's signals (the desktop assistant), which the direct socket
/// does not carry.
pub async fn connect(address: Option<&str>) -> zbus::Result<zbus::Connection> {
    match bus_address(address) {
        Some(addr) => zbus::connection::Builder::address(addr.as_str())?.build().await,
        None => zbus::Connection::system().await,
    }
}

/// Connects to quantumd for calls alone (quantumctl): over its direct
/// socket when there is one this caller may use, else as [`connect`] does.
///
/// The socket is `$QUANTUM_SOCKET`, else [`DEFAULT_SOCKET`] unless a bus
/// was named (`address`, or `$QUANTUM_BUS_ADDRESS`: that bus's quantumd is
/// the one asked for). A socket that is missing or refuses this user (only
/// root and group `quantum` may connect) is not an error: the bus serves
/// everyone.
pub async fn connect_for_calls(address: Option<&str>) -> zbus::Result<zbus::Connection> {
    let named = bus_address(address).is_some();
    let socket = match std::env::var(SOCKET_ENV) {
        Ok(path) => (!path.is_empty()).then_some(path),
        Err(_) => (!named).then(|| DEFAULT_SOCKET.to_owned()),
    };
    if let Some(path) = socket {
        if let Ok(stream) = tokio::net::UnixStream::connect(&path).await {
            return zbus::connection::Builder::unix_stream(stream).p2p().build().await;
        }
    }
    connect(address).await
}

/// `address`, else `$QUANTUM_BUS_ADDRESS` when set and not empty.
fn bus_address(address: Option<&str>) -> Option<String> {
    let from_env = std::env::var(BUS_ADDRESS_ENV).ok().filter(|s| !s.is_empty());
    address.map(str::to_owned).or(from_env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::{OwnedValue, Value};

    fn wire(pairs: &[(&str, Value<'static>)]) -> HashMap<String, OwnedValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OwnedValue::try_from(v.clone()).expect("an owned value")))
            .collect()
    }

    #[test]
    fn run_options_go_over_the_wire_and_come_back() {
        for substitute in [false, true] {
            let sent = RunOptions { substitute };
            let received: HashMap<String, OwnedValue> = sent
                .to_wire()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), OwnedValue::try_from(v).expect("an owned value")))
                .collect();
            assert_eq!(RunOptions::from_wire(&received).map_err(|e| e.message()), Ok(sent));
        }
        assert_eq!(
            RunOptions::from_wire(&HashMap::new()).map_err(|e| e.message()),
            Ok(RunOptions::default())
        );
    }

    #[test]
    fn an_unknown_run_option_or_a_wrong_type_is_refused_by_name() {
        let err = RunOptions::from_wire(&wire(&[("substitue", Value::from(true))])).unwrap_err();
        assert_eq!(
            err.message(),
            "org.freedesktop.DBus.Error.InvalidArgs: unknown run option \"substitue\" (known: substitute)"
        );
        let err = RunOptions::from_wire(&wire(&[("substitute", Value::from("yes"))])).unwrap_err();
        assert_eq!(
            err.message(),
            "org.freedesktop.DBus.Error.InvalidArgs: run option \"substitute\" must be a boolean (b), not s"
        );
    }
}
