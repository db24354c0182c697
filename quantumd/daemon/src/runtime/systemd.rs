//! The systemd backend: each cell instance is a transient service started
//! with `StartTransientUnit`, in the cell slice. Unit state is followed
//! through systemd's signals (`JobRemoved`, `PropertiesChanged`), never by
//! polling.
//!
//! quantumd reaches systemd through quantumd-gate (crate::gate: systemd's
//! private socket, filtered, with no polkit round trip per call) where the
//! gate's socket exists, else on the system bus (quantumd run as root, or a
//! host without the gate). Both are the same D-Bus to this module; the
//! signal streams match on header fields alone, so they work peer to peer
//! where there is no bus to ask who owns systemd's name.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::oneshot;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::spec::{Limits, SliceSpec, UnitSpec};
use super::{EventSender, Exit, LiveUnit, RuntimeError, UnitEvent};
use crate::cell_state::{Op, Report};
use crate::start_profile::StartProfile;
use quantum_bpf::{Destination, NetPolicy};
use quantum_model::trigger::On;
use quantum_model::{Network, UserMode};

/// Where systemd keeps a cell's StateDirectory=quantum-cells/CELL/current:
/// under /var/lib/private for a dynamic user, which systemd chowns to the
/// uid of each run; crate::cell_state makes the rest of the layout.
pub fn state_dir(cell: &str, user: UserMode) -> std::path::PathBuf {
    let base = match user {
        UserMode::Dynamic => "/var/lib/private/quantum-cells",
        UserMode::Root => "/var/lib/quantum-cells",
    };
    std::path::Path::new(base).join(cell)
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
trait Manager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn set_unit_properties(&self, name: &str, runtime: bool, properties: &[(&str, Value<'_>)]) -> zbus::Result<()>;
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;
    fn subscribe(&self) -> zbus::Result<()>;
}

/// What a finished job reported, kept until its starter asks (the signal can
/// arrive before `StartTransientUnit` has even returned the job path).
enum JobSlot {
    Waiting(oneshot::Sender<String>),
    Done(String),
}

/// Last known exit facts of a watched unit, from Service PropertiesChanged.
#[derive(Default, Clone)]
struct ServiceFacts {
    result: Option<String>,
    code: Option<i32>,
    status: Option<i32>,
    /// The unit has been seen starting or running. A transient unit is
    /// announced `inactive` when it is created, before it activates; only an
    /// inactive state after this one means it ended.
    began: bool,
}

struct Shared {
    jobs: Mutex<HashMap<String, JobSlot>>,
    /// Units whose start is in flight, woken when it has resolved: a stop
    /// waits for it, or its StopUnit could come before the transient unit
    /// exists (NoSuchUnit, taken as stopped) and the start would then leave
    /// the unit running with nobody to stop it.
    starting: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Watched units by object path.
    watched: Mutex<HashMap<String, (String, ServiceFacts)>>,
    /// The network allow-lists of running units, unpinned once started
    /// (systemd holds the programs), kept for their refusal counters.
    net_policies: Mutex<HashMap<String, NetPolicy>>,
}

#[derive(Clone)]
pub struct SystemdRuntime {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    shared: Arc<Shared>,
    events: EventSender,
    /// Woken once when the connection to systemd is gone: quantumd cannot
    /// see cells end any more and must restart (see main_loop).
    lost: Arc<tokio::sync::Notify>,
    /// How systemd is reached, for the log and `describe`.
    route: &'static str,
    cell_slice: String,
    cgroup_root: std::path::PathBuf,
    /// Where the units doing cell state operations write their output.
    state_ops: std::path::PathBuf,
    /// One state operation at a time: they share a unit name per cell.
    state_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Where quantumd pins a starting cell's network allow-list for systemd's
/// `BPFProgram=` (bpffs; made by tmpfiles.d/quantumd.conf, writable by
/// quantumd through quantumd.service's ReadWritePaths=).
pub const BPF_PIN_DIR: &str = "/sys/fs/bpf/quantumd";

/// `destinations` loaded and pinned in [`BPF_PIN_DIR`] (named after the
/// unit, see [`NetPolicy::pin`]), with
/// the `BPFProgram=` value naming the pins.
fn pinned_net_policy(unit: &str, destinations: &[Destination]) -> Result<(NetPolicy, Vec<(String, String)>), RuntimeError> {
    let failed = |e: quantum_bpf::LoadError| RuntimeError::NetPolicy {
        unit: unit.to_owned(),
        message: format!(
            "{} (quantumd needs CAP_BPF and CAP_NET_ADMIN, and {BPF_PIN_DIR} writable: tmpfiles.d/quantumd.conf makes it)",
            crate::command::error_chain(&e)
        ),
    };
    let mut policy = NetPolicy::load(destinations).map_err(failed)?;
    let pins = policy.pin(std::path::Path::new(BPF_PIN_DIR), unit).map_err(failed)?;
    let programs = pins
        .into_iter()
        .map(|(hook, path)| (hook.to_owned(), path.display().to_string()))
        .collect();
    Ok((policy, programs))
}

/// `sd_bus_path_encode`: every byte outside [A-Za-z0-9] becomes `_xx`.
fn unit_path(unit: &str) -> String {
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

impl SystemdRuntime {
    /// Connects to systemd on the system bus and starts following its signals.
    pub async fn connect(
        events: EventSender,
        cell_slice: &str,
        cgroup_root: &std::path::Path,
        state_ops: &std::path::Path,
    ) -> Result<Self, RuntimeError> {
        let (conn, route) = systemd_connection().await?;
        let manager = ManagerProxy::new(&conn).await.map_err(RuntimeError::Connect)?;
        let shared = Arc::new(Shared {
            jobs: Mutex::default(),
            starting: Mutex::default(),
            watched: Mutex::default(),
            net_policies: Mutex::default(),
        });

        let mut jobs = systemd_signals(&conn, "org.freedesktop.systemd1.Manager", "JobRemoved", |b| {
            b.path("/org/freedesktop/systemd1")
        })
        .await?;
        let mut changes = systemd_signals(&conn, "org.freedesktop.DBus.Properties", "PropertiesChanged", |b| {
            b.path_namespace("/org/freedesktop/systemd1/unit")
        })
        .await?;
        // systemd only broadcasts unit signals while someone has subscribed.
        manager.subscribe().await.map_err(RuntimeError::Connect)?;

        let js = shared.clone();
        let trigger_events = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(sig)) = jobs.next().await {
                // JobRemoved(id, job, unit, result)
                type Removed<'a> = (u32, zbus::zvariant::ObjectPath<'a>, &'a str, &'a str);
                let body = sig.body();
                let Ok((_, job, _, result)) = body.deserialize::<Removed<'_>>() else {
                    continue;
                };
                // A trigger's service ran (its timer or path unit elapsed):
                // nobody waits for that job; the main loop runs the cell.
                if let Ok((_, _, unit, "done")) = body.deserialize::<Removed<'_>>() {
                    if unit.ends_with(".service") && crate::triggers::trigger_of_unit(unit).is_some() {
                        let _ = trigger_events.send(UnitEvent {
                            unit: unit.to_owned(),
                            exit: Exit::Code(0),
                        });
                        continue;
                    }
                }
                let (job, result) = (job.to_string(), result.to_owned());
                let mut map = js.jobs.lock().unwrap_or_else(|e| e.into_inner());
                match map.remove(&job) {
                    Some(JobSlot::Waiting(tx)) => {
                        let _ = tx.send(result);
                    }
                    _ => {
                        map.insert(job, JobSlot::Done(result));
                    }
                }
            }
        });

        let lost = Arc::new(tokio::sync::Notify::new());
        let me = SystemdRuntime {
            conn: conn.clone(),
            manager: manager.clone(),
            shared: shared.clone(),
            events: events.clone(),
            lost: lost.clone(),
            route,
            cell_slice: cell_slice.to_owned(),
            cgroup_root: cgroup_root.to_owned(),
            state_ops: state_ops.to_owned(),
            state_lock: Arc::default(),
        };
        let watcher = me.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = changes.next().await {
                watcher.on_properties_changed(&msg, &events).await;
            }
            tracing::error!("lost the connection to systemd; cell exits are no longer seen");
            // A stored permit: main_loop sees it even if not waiting yet.
            lost.notify_one();
        });
        Ok(me)
    }

    pub fn describe(&self) -> String {
        format!(
            "systemd ({}): cells run as transient services in {}; every limit and sandbox setting is enforced by systemd",
            self.route, self.cell_slice
        )
    }

    /// Woken when the connection to systemd has gone.
    pub fn lost(&self) -> Arc<tokio::sync::Notify> {
        self.lost.clone()
    }

    async fn on_properties_changed(&self, msg: &zbus::Message, events: &EventSender) {
        let header = msg.header();
        let Some(path) = header.path().map(|p| p.to_string()) else { return };
        let body = msg.body();
        let Ok((iface, changed, _invalid)) = body.deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>() else {
            return;
        };
        let ended = {
            let mut watched = self.shared.watched.lock().unwrap_or_else(|e| e.into_inner());
            let Some((_, facts)) = watched.get_mut(&path) else { return };
            match iface.as_str() {
                "org.freedesktop.systemd1.Service" => {
                    if let Some(v) = changed.get("Result").and_then(|v| String::try_from(v.clone()).ok()) {
                        facts.result = Some(v);
                    }
                    if let Some(v) = changed.get("ExecMainCode").and_then(|v| i32::try_from(v.clone()).ok()) {
                        facts.code = Some(v);
                    }
                    if let Some(v) = changed.get("ExecMainStatus").and_then(|v| i32::try_from(v.clone()).ok()) {
                        facts.status = Some(v);
                    }
                    false
                }
                "org.freedesktop.systemd1.Unit" => {
                    let state = changed.get("ActiveState").and_then(|v| String::try_from(v.clone()).ok());
                    match state.as_deref() {
                        Some("activating" | "active" | "reloading" | "deactivating") => {
                            facts.began = true;
                            false
                        }
                        Some("inactive" | "failed") => facts.began,
                        _ => false,
                    }
                }
                _ => false,
            }
        };
        if !ended {
            return;
        }
        // The unit may be garbage-collected any moment now; ask for the
        // final facts and fall back to what the signals already said.
        let fresh = self.service_facts(&path).await.map(|f| ServiceFacts { began: true, ..f });
        let Some((unit, cached)) = self.shared.watched.lock().unwrap_or_else(|e| e.into_inner()).remove(&path) else {
            return;
        };
        self.shared.net_policies.lock().unwrap_or_else(|e| e.into_inner()).remove(&unit);
        let facts = fresh.unwrap_or(cached);
        let exit = exit_from(&facts);
        if !exit.is_success() {
            // A failed unit stays loaded until reset; reset it so the name
            // can be used again for a restart.
            let _ = self.manager.reset_failed_unit(&unit).await;
        }
        let _ = events.send(UnitEvent { unit, exit });
    }

    async fn service_facts(&self, path: &str) -> Option<ServiceFacts> {
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .ok()?
            .path(path.to_owned())
            .ok()?
            .build()
            .await
            .ok()?;
        let all = props.get_all("org.freedesktop.systemd1.Service".try_into().ok()?).await.ok()?;
        Some(ServiceFacts {
            result: all.get("Result").and_then(|v| String::try_from(v.clone()).ok()),
            code: all.get("ExecMainCode").and_then(|v| i32::try_from(v.clone()).ok()),
            status: all.get("ExecMainStatus").and_then(|v| i32::try_from(v.clone()).ok()),
            began: true,
        })
    }

    /// Starts following `unit`'s state (after a restart of quantumd).
    pub async fn watch(&self, unit: &str) {
        self.shared
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(unit_path(unit), (unit.to_owned(), ServiceFacts::default()));
        // It may have ended between the listing and now, when no signal
        // will come for it any more. An inactive unit with a start job
        // queued has not begun yet: the killed quantumd's last start, which
        // systemd runs all the same.
        let state = self.unit_state(unit).await;
        let queued = self.start_queued(unit).await;
        if !queued && matches!(state.as_deref(), Some("inactive" | "failed") | None) {
            tracing::debug!(unit, ?state, "adopted unit already ended");
            if self
                .shared
                .watched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&unit_path(unit))
                .is_some()
            {
                let exit = Exit::Other("ended while quantumd was restarting".into());
                let _ = self.events.send(UnitEvent {
                    unit: unit.to_owned(),
                    exit,
                });
            }
        }
    }

    /// One property of a systemd object (a unit at `unit_path`, a job).
    async fn property(&self, path: &str, iface: &str, name: &str) -> Option<OwnedValue> {
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .ok()?
            .path(path.to_owned())
            .ok()?
            .build()
            .await
            .ok()?;
        props.get(iface.try_into().ok()?, name).await.ok()
    }

    async fn unit_state(&self, unit: &str) -> Option<String> {
        let v = self
            .property(&unit_path(unit), "org.freedesktop.systemd1.Unit", "ActiveState")
            .await?;
        String::try_from(v).ok()
    }

    /// Whether a start job is queued for `unit` (its `Job` property names
    /// one, of type start).
    async fn start_queued(&self, unit: &str) -> bool {
        let Some(v) = self.property(&unit_path(unit), "org.freedesktop.systemd1.Unit", "Job").await else {
            return false;
        };
        let Ok((id, job)) = <(u32, OwnedObjectPath)>::try_from(v) else {
            return false;
        };
        if id == 0 {
            return false;
        }
        self.property(job.as_str(), "org.freedesktop.systemd1.Job", "JobType")
            .await
            .and_then(|v| String::try_from(v).ok())
            .is_some_and(|t| t == "start")
    }

    async fn main_pid(&self, unit: &str) -> u32 {
        self.property(&unit_path(unit), "org.freedesktop.systemd1.Service", "MainPID")
            .await
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0)
    }

    /// Waits for the job at `job` to finish; returns its result string.
    async fn wait_job(&self, job: &OwnedObjectPath) -> String {
        let rx = {
            let mut map = self.shared.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(JobSlot::Done(result)) = map.remove(job.as_str()) {
                return result;
            }
            let (tx, rx) = oneshot::channel();
            map.insert(job.to_string(), JobSlot::Waiting(tx));
            rx
        };
        rx.await.unwrap_or_else(|_| "lost".to_owned())
    }

    pub async fn start_slice(&self, slice: &SliceSpec) -> Result<(), RuntimeError> {
        // A slice's parent is implied by its name (`a-b.slice` is in
        // `a.slice`); systemd refuses a Slice= property on slices.
        let mut props = vec![("Description", Value::from(slice.description.clone()))];
        props.extend(limit_properties(&slice.limits));
        let job = self
            .manager
            .start_transient_unit(&slice.name, "fail", &props, &[])
            .await
            .map_err(|e| RuntimeError::Systemd {
                unit: slice.name.clone(),
                message: dbus_message(&e),
            })?;
        match self.wait_job(&job).await.as_str() {
            "done" => Ok(()),
            other => Err(RuntimeError::Job {
                unit: slice.name.clone(),
                result: other.to_owned(),
            }),
        }
    }

    /// Starts `spec`'s unit; `destinations` (empty: any) are put on its
    /// cgroup by systemd before the program runs.
    pub async fn start(&self, spec: &UnitSpec, destinations: &[Destination], profile: &mut StartProfile) -> Result<u32, RuntimeError> {
        let done = Arc::new(tokio::sync::Notify::new());
        self.shared
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.unit.clone(), done.clone());
        let result = self.start_unit(spec, destinations, profile).await;
        self.shared.starting.lock().unwrap_or_else(|e| e.into_inner()).remove(&spec.unit);
        done.notify_waiters();
        result
    }

    async fn start_unit(&self, spec: &UnitSpec, destinations: &[Destination], profile: &mut StartProfile) -> Result<u32, RuntimeError> {
        let mut props = unit_properties(spec);
        // Pinned until the start job is over: systemd attaches the pinned
        // programs when it makes the unit's cgroup, before the program runs,
        // and keeps them by descriptor; then the pins can go. quantumd
        // restarts cells itself, each start with a policy of its own, so
        // systemd never needs them again. The policy itself is kept while
        // the unit runs, for its refusal counter (anomaly alerts).
        let net_policy = if destinations.is_empty() {
            None
        } else {
            let (policy, programs) = pinned_net_policy(&spec.unit, destinations)?;
            props.push(("BPFProgram", Value::from(programs)));
            Some(policy)
        };
        profile.mark("unit-properties");
        let path = unit_path(&spec.unit);
        self.shared
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone(), (spec.unit.clone(), ServiceFacts::default()));
        let job = match self.manager.start_transient_unit(&spec.unit, "fail", &props, &[]).await {
            Ok(job) => {
                profile.mark("start-transient-unit");
                job
            }
            Err(e) => {
                self.shared.watched.lock().unwrap_or_else(|e| e.into_inner()).remove(&path);
                return Err(RuntimeError::Systemd {
                    unit: spec.unit.clone(),
                    message: dbus_message(&e),
                });
            }
        };
        let result = self.wait_job(&job).await;
        profile.mark("job");
        match result.as_str() {
            "done" => {
                if let Some(mut policy) = net_policy {
                    policy.unpin();
                    self.shared
                        .net_policies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(spec.unit.clone(), policy);
                }
                let pid = self.main_pid(&spec.unit).await;
                profile.mark("main-pid");
                Ok(pid)
            }
            other => {
                self.shared.watched.lock().unwrap_or_else(|e| e.into_inner()).remove(&path);
                // A process that exits at once can end before systemd has
                // seen its exec succeed; the start job then fails although
                // the command ran. Say how it ended, as for any other end.
                let ran = self
                    .service_facts(&path)
                    .await
                    .filter(|f| matches!(f.code, Some(1..=3)) && f.status.is_some());
                let _ = self.manager.reset_failed_unit(&spec.unit).await;
                Err(match ran {
                    Some(facts) => RuntimeError::EndedWhileStarting {
                        unit: spec.unit.clone(),
                        exit: exit_from(&facts),
                    },
                    None => RuntimeError::Job {
                        unit: spec.unit.clone(),
                        result: other.to_owned(),
                    },
                })
            }
        }
    }

    /// Does `op` on `cell`'s state as root, in a oneshot unit running
    /// `quantumd cell-state DIR OP` (see crate::cell_state for why), and
    /// reads its report, or its error, from the files it wrote.
    pub async fn cell_state(&self, cell: &str, user: UserMode, op: &Op) -> Result<Report, RuntimeError> {
        let failed = |message: String| RuntimeError::CellState {
            cell: cell.to_owned(),
            verb: op.verb(),
            message,
        };
        let _one_at_a_time = self.state_lock.lock().await;
        let exe = std::env::current_exe().map_err(|e| failed(format!("cannot find quantumd's own executable: {e}")))?;
        std::fs::create_dir_all(&self.state_ops).map_err(|e| failed(format!("cannot create {}: {e}", self.state_ops.display())))?;
        let (out, err) = (
            self.state_ops.join(format!("{cell}.out")),
            self.state_ops.join(format!("{cell}.err")),
        );
        for f in [&out, &err] {
            // StandardOutputFile= appends to what a previous operation left.
            let _ = std::fs::remove_file(f);
        }
        let unit = format!("quantum-cellstate-{cell}.service");
        let mut argv = vec![
            exe.display().to_string(),
            "cell-state".into(),
            state_dir(cell, user).display().to_string(),
        ];
        argv.extend(op.args());
        let props: Vec<(&str, Value<'_>)> = vec![
            (
                "Description",
                Value::from(format!("QuantumOS cell {cell}: {} its state", op.verb())),
            ),
            ("Type", Value::from("oneshot")),
            ("ExecStart", Value::from(vec![(argv[0].clone(), exec_argv(&argv), false)])),
            ("StandardOutputFile", Value::from(out.display().to_string())),
            ("StandardErrorFile", Value::from(err.display().to_string())),
            ("Environment", Value::from(vec!["RUST_LOG=warn".to_owned()])),
            ("CollectMode", Value::from("inactive-or-failed")),
            ("PrivateNetwork", Value::from(true)),
            ("NoNewPrivileges", Value::from(true)),
            ("ProtectHome", Value::from("yes")),
            ("PrivateTmp", Value::from(true)),
        ];
        let job = self
            .manager
            .start_transient_unit(&unit, "fail", &props, &[])
            .await
            .map_err(|e| failed(format!("systemd refused {unit}: {}", dbus_message(&e))))?;
        let result = self.wait_job(&job).await;
        if result != "done" {
            let why = std::fs::read_to_string(&err).unwrap_or_default();
            let why = why.trim().strip_prefix("Error: ").unwrap_or(why.trim()).to_owned();
            return Err(failed(if why.is_empty() {
                format!("{unit} ended with result \"{result}\"")
            } else {
                why
            }));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| failed(format!("reading {}: {e}", out.display())))?;
        serde_json::from_str(text.trim()).map_err(|e| failed(format!("{unit} printed no report ({e}): {text:?}")))
    }

    pub async fn stop_unit(&self, unit: &str) -> Result<(), RuntimeError> {
        // Registered under the lock, so that the wake-up cannot be missed.
        let start_resolved = self
            .shared
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(unit)
            .map(|done| done.clone().notified_owned());
        if let Some(resolved) = start_resolved {
            tracing::debug!(unit, "waiting for the unit's start to resolve before stopping it");
            resolved.await;
        }
        let stopped = self.manager.stop_unit(unit, "replace").await;
        self.shared.net_policies.lock().unwrap_or_else(|e| e.into_inner()).remove(unit);
        match stopped {
            Ok(job) => {
                let result = self.wait_job(&job).await;
                if result != "done" {
                    tracing::warn!(unit, result, "stop job did not finish cleanly");
                }
                Ok(())
            }
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" => Ok(()),
            Err(e) => Err(RuntimeError::Systemd {
                unit: unit.to_owned(),
                message: dbus_message(&e),
            }),
        }
    }

    /// Arms trigger `name` as a systemd timer or path unit (`unit`) that
    /// starts `service`, a `/bin/true` whose finished job tells quantumd
    /// (see `connect`). A unit left from before quantumd restarted is
    /// replaced, so the definition in force is the one on disk.
    pub async fn arm_trigger(&self, unit: &str, service: &str, on: &On, description: &str) -> Result<(), RuntimeError> {
        self.disarm_trigger(unit).await?;
        let mut props: Vec<(&str, Value<'_>)> = vec![("Description", Value::from(description.to_owned()))];
        match on {
            On::Calendar(spec) => {
                props.push(("TimersCalendar", Value::from(vec![("OnCalendar".to_owned(), spec.clone())])));
                // systemd's default accuracy is a minute; a trigger is
                // expected when its calendar says.
                props.push(("AccuracyUSec", Value::from(1_000_000u64)));
                props.push(("RemainAfterElapse", Value::from(false)));
            }
            On::PathChanged(path) => props.push(("Paths", Value::from(vec![("PathChanged".to_owned(), path.clone())]))),
            _ => return Ok(()),
        }
        let exec: Vec<(String, Vec<String>, bool)> = vec![("/bin/true".to_owned(), vec!["/bin/true".to_owned()], false)];
        let service_props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(format!("{description} (tells quantumd)"))),
            ("Type", Value::from("oneshot")),
            ("ExecStart", Value::from(exec)),
            ("CollectMode", Value::from("inactive-or-failed")),
            ("DynamicUser", Value::from(true)),
            ("NoNewPrivileges", Value::from(true)),
            ("ProtectSystem", Value::from("strict")),
            ("ProtectHome", Value::from("yes")),
            ("PrivateTmp", Value::from(true)),
            ("PrivateDevices", Value::from(true)),
            ("PrivateNetwork", Value::from(true)),
            ("CapabilityBoundingSet", Value::from(0u64)),
        ];
        // The units replaced are unloaded by systemd's garbage collection,
        // after their stop: until then, and while a firing's `/bin/true`
        // runs, creating them again says UnitExists. Seen when quantumd
        // restarted as a 5-second timer fired, on a loaded machine.
        let mut tries = 0;
        let job = loop {
            match self
                .manager
                .start_transient_unit(unit, "fail", &props, &[(service, &service_props)])
                .await
            {
                Ok(job) => break job,
                Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.systemd1.UnitExists" && tries < 40 => {
                    tries += 1;
                    tracing::debug!(unit, tries, "a unit of the trigger is still loaded; trying again");
                    self.stop_unit(service).await?;
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(RuntimeError::Systemd {
                        unit: unit.to_owned(),
                        message: dbus_message(&e),
                    })
                }
            }
        };
        match self.wait_job(&job).await.as_str() {
            "done" => Ok(()),
            other => Err(RuntimeError::Job {
                unit: unit.to_owned(),
                result: other.to_owned(),
            }),
        }
    }

    /// Stops a trigger's timer or path unit (gone already is fine).
    pub async fn disarm_trigger(&self, unit: &str) -> Result<(), RuntimeError> {
        self.stop_unit(unit).await
    }

    /// The trigger units systemd has now (timers and paths), for removing
    /// those whose trigger is gone.
    pub async fn trigger_units(&self) -> Result<Vec<String>, RuntimeError> {
        let pattern = ["quantum-trigger-*.timer", "quantum-trigger-*.path"];
        let units = self
            .manager
            .list_units_by_patterns(&[], &pattern)
            .await
            .map_err(|e| RuntimeError::Systemd {
                unit: pattern.join(" "),
                message: dbus_message(&e),
            })?;
        Ok(units.into_iter().map(|u| u.0).collect())
    }

    pub async fn list(&self) -> Result<Vec<LiveUnit>, RuntimeError> {
        let units = self
            .manager
            .list_units_by_patterns(&["active", "activating", "reloading", "inactive"], &["quantum-*.service"])
            .await
            .map_err(|e| RuntimeError::Systemd {
                unit: "quantum-*.service".into(),
                message: dbus_message(&e),
            })?;
        let mut out = Vec::new();
        // A transient unit is created inactive with its start job queued,
        // and stays so until systemd runs the job: under load, after the
        // quantumd that asked for it was killed. It is live all the same.
        let units = units
            .into_iter()
            .filter(|u| u.3 != "inactive" || u.8 == "start")
            .filter(|u| crate::triggers::trigger_of_unit(&u.0).is_none());
        for u in units {
            let pid = self.main_pid(&u.0).await;
            out.push(LiveUnit { unit: u.0, pid });
        }
        Ok(out)
    }

    pub fn cpu_usage_usec(&self, unit: &str, slice: &str) -> Option<u64> {
        let path = self.cgroup_of(unit, slice).join("cpu.stat");
        super::cgroup::read_usage_usec(&path)
    }

    /// The unit's cgroup directory.
    /// Refusals so far by each running unit's network allow-list.
    pub fn net_refusals(&self) -> Vec<(String, u64)> {
        super::refusals(&self.shared.net_policies.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn cgroup_of(&self, unit: &str, slice: &str) -> std::path::PathBuf {
        self.cgroup_root.join(slice_path(slice)).join(unit)
    }

    /// The cgroup every cell runs under (the cell slice).
    pub fn cells_cgroup(&self) -> std::path::PathBuf {
        self.cgroup_root.join(slice_path(&self.cell_slice))
    }

    pub fn cgroup_mount(&self) -> std::path::PathBuf {
        self.cgroup_root.clone()
    }

    /// Changes CPUWeight= of a running unit (runtime only: it does not
    /// outlive the unit, and a transient unit has nothing else).
    pub async fn set_cpu_weight(&self, unit: &str, weight: u64) -> Result<(), RuntimeError> {
        self.manager
            .set_unit_properties(unit, true, &[("CPUWeight", Value::from(weight))])
            .await
            .map_err(|e| RuntimeError::Systemd {
                unit: unit.to_owned(),
                message: format!("cannot set CPUWeight={weight}: {e}"),
            })
    }
}

/// A stream of systemd's `interface.member` signals on the objects `paths`
/// selects. The sender is a well-known name: on the bus, dbus-daemon
/// filters by it; peer to peer (the gate) zbus does not match it locally,
/// and there is nobody else to send.
async fn systemd_signals<'a>(
    conn: &zbus::Connection,
    interface: &'static str,
    member: &'static str,
    paths: impl FnOnce(zbus::match_rule::Builder<'a>) -> zbus::Result<zbus::match_rule::Builder<'a>>,
) -> Result<zbus::MessageStream, RuntimeError> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.systemd1")
        .and_then(|b| b.interface(interface))
        .and_then(|b| b.member(member))
        .and_then(paths)
        .map_err(RuntimeError::Connect)?
        .build();
    zbus::MessageStream::for_match_rule(rule, conn, Some(1024))
        .await
        .map_err(RuntimeError::Connect)
}

/// quantumd-gate's socket when it is there and answers, else the system
/// bus. A gate socket that exists but fails is said in the log: the bus
/// then works only for a quantumd running as root (polkit no longer lets
/// user quantumd manage units; the gate is its way to systemd).
async fn systemd_connection() -> Result<(zbus::Connection, &'static str), RuntimeError> {
    let gate = std::path::Path::new(crate::gate::SOCKET);
    if gate.exists() {
        let conn = async {
            let stream = tokio::net::UnixStream::connect(gate)
                .await
                .map_err(|e| zbus::Error::InputOutput(Arc::new(e)))?;
            zbus::connection::Builder::unix_stream(stream).p2p().build().await
        };
        match conn.await {
            Ok(conn) => return Ok((conn, "through quantumd-gate")),
            Err(e) => tracing::warn!(socket = %gate.display(), error = %e, "cannot reach systemd through the gate; trying the system bus"),
        }
    }
    let conn = zbus::Connection::system().await.map_err(RuntimeError::Connect)?;
    Ok((conn, "on the system bus"))
}

/// `a-b-c.slice` lives at `a.slice/a-b.slice/a-b-c.slice` in the cgroup tree.
pub fn slice_path(slice: &str) -> std::path::PathBuf {
    let base = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut path = std::path::PathBuf::new();
    let mut prefix = String::new();
    for part in base.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path
}

fn exit_from(f: &ServiceFacts) -> Exit {
    // ExecMainCode is a CLD_* code: 1 exited, 2 killed, 3 dumped.
    match (f.result.as_deref(), f.code, f.status) {
        (Some("oom-kill"), _, _) => Exit::OutOfMemory,
        (_, Some(1), Some(status)) => Exit::Code(status),
        (_, Some(2 | 3), Some(sig)) => Exit::Signal(sig),
        (Some("success") | None, _, _) => Exit::Code(0),
        (Some(other), _, _) => Exit::Other(other.to_owned()),
    }
}

/// The error text of a D-Bus error without its name.
fn dbus_message(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(desc), _) => format!("{desc} ({name})"),
        other => other.to_string(),
    }
}

fn limit_properties(l: &Limits) -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("MemoryAccounting", Value::from(true)),
        ("MemoryMin", Value::from(l.memory_min)),
        ("MemoryMax", Value::from(l.memory_max)),
        ("CPUAccounting", Value::from(true)),
        ("CPUQuotaPerSecUSec", Value::from(u64::from(l.cpu_quota_centis) * 10_000)),
        ("CPUWeight", Value::from(l.cpu_weight)),
        ("IOAccounting", Value::from(true)),
        ("IOWeight", Value::from(l.io_weight)),
        ("TasksAccounting", Value::from(true)),
        ("TasksMax", Value::from(l.tasks_max)),
    ]
}

/// The command line as systemd must be given it: systemd expands `$NAME`
/// and `${NAME}` in ExecStart= arguments at exec time (a transient unit's
/// too), so a literal `$` — a shell script's `${base%.*}`, a parameter
/// value — is written `$$`.
fn exec_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    out.extend(argv.first().cloned());
    out.extend(argv.iter().skip(1).map(|a| a.replace('$', "$$")));
    out
}

/// Every property of the transient service for `spec`.
pub fn unit_properties(spec: &UnitSpec) -> Vec<(&'static str, Value<'_>)> {
    let sb = &spec.sandbox;
    let exec: Vec<(String, Vec<String>, bool)> = vec![(spec.argv[0].clone(), exec_argv(&spec.argv), false)];
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut p: Vec<(&'static str, Value<'_>)> = vec![
        ("Description", Value::from(spec.description.clone())),
        ("Slice", Value::from(spec.slice.clone())),
        ("Type", Value::from("exec")),
        ("ExecStart", Value::from(exec)),
        ("Environment", Value::from(env)),
        ("CollectMode", Value::from("inactive")),
        ("TimeoutStopUSec", Value::from(5_000_000u64)),
        ("NoNewPrivileges", Value::from(true)),
        ("ProtectSystem", Value::from("strict")),
        ("ProtectHome", Value::from("yes")),
        ("PrivateTmp", Value::from(true)),
        ("PrivateDevices", Value::from(true)),
        ("ProtectKernelTunables", Value::from(true)),
        ("ProtectKernelModules", Value::from(true)),
        ("ProtectKernelLogs", Value::from(true)),
        ("ProtectControlGroups", Value::from(true)),
        ("ProtectClock", Value::from(true)),
        ("RestrictSUIDSGID", Value::from(true)),
        ("RestrictRealtime", Value::from(true)),
        ("LockPersonality", Value::from(true)),
    ];
    p.extend(limit_properties(&spec.limits));
    if let Some(stdio) = &spec.stdio {
        // As `systemd-run --pipe`: systemd gives the caller's descriptors
        // to the main process, so its output never passes through quantumd.
        let [stdin, stdout, stderr] = stdio.fds();
        for (name, fd) in [
            ("StandardInputFileDescriptor", stdin),
            ("StandardOutputFileDescriptor", stdout),
            ("StandardErrorFileDescriptor", stderr),
        ] {
            p.push((name, Value::Fd(zbus::zvariant::Fd::from(fd.as_fd()))));
        }
    }
    if let (None, Some(stdin)) = (&spec.stdio, &spec.stdin) {
        p.push((
            "StandardInputFileDescriptor",
            Value::Fd(zbus::zvariant::Fd::from(stdin.fd().as_fd())),
        ));
    }
    if let Some(c) = &spec.credentials {
        // LoadCredential=, not SetCredential=: a value set in the unit is
        // one of its properties, which any user may read over D-Bus. PID 1
        // reads the file (quantumd's own, mode 0600) and gives the cell a
        // copy only it can read.
        let load: Vec<(String, String)> = c.names.iter().map(|n| (n.clone(), c.dir.join(n).display().to_string())).collect();
        p.push(("LoadCredential", Value::from(load)));
    }
    if spec.state {
        p.push(("StateDirectory", Value::from(vec![format!("quantum-cells/{}/current", spec.cell)])));
        p.push(("StateDirectoryMode", Value::from(0o700u32)));
    }
    if sb.user == UserMode::Dynamic {
        p.push(("DynamicUser", Value::from(true)));
    }
    match sb.network {
        Network::None => p.push(("PrivateNetwork", Value::from(true))),
        Network::Loopback => {
            // IPAddressAllow/Deny: (family, address bytes, prefix length).
            let allow: Vec<(i32, Vec<u8>, u32)> = vec![
                (libc::AF_INET, vec![127, 0, 0, 0], 8),
                (libc::AF_INET6, [0u8; 15].iter().copied().chain([1]).collect(), 128),
            ];
            let deny: Vec<(i32, Vec<u8>, u32)> = vec![(libc::AF_INET, vec![0; 4], 0), (libc::AF_INET6, vec![0; 16], 0)];
            p.push(("IPAddressAllow", Value::from(allow)));
            p.push(("IPAddressDeny", Value::from(deny)));
        }
        Network::Host => {}
    }
    let binds = |paths: &[String]| -> Vec<(String, String, bool, u64)> { paths.iter().map(|s| (s.clone(), s.clone(), false, 0)).collect() };
    if !sb.readable.is_empty() {
        p.push(("BindReadOnlyPaths", Value::from(binds(&sb.readable))));
    }
    if !sb.writable.is_empty() {
        p.push(("BindPaths", Value::from(binds(&sb.writable))));
    }
    if !sb.inaccessible.is_empty() {
        p.push((
            "InaccessiblePaths",
            Value::from(sb.inaccessible.iter().map(|s| format!("-{s}")).collect::<Vec<_>>()),
        ));
    }
    p
}

/// The properties as `systemctl show` would name them, for inspect.
pub fn describe_properties(spec: &UnitSpec) -> Vec<(String, String)> {
    let l = &spec.limits;
    let sb = &spec.sandbox;
    let mut v = vec![
        ("Slice".to_owned(), spec.slice.clone()),
        ("MemoryMin".to_owned(), l.memory_min.to_string()),
        ("MemoryMax".to_owned(), l.memory_max.to_string()),
        ("CPUQuota".to_owned(), format!("{}%", l.cpu_quota_centis)),
        ("CPUWeight".to_owned(), l.cpu_weight.to_string()),
        ("IOWeight".to_owned(), l.io_weight.to_string()),
        ("TasksMax".to_owned(), l.tasks_max.to_string()),
        ("DynamicUser".to_owned(), (sb.user == UserMode::Dynamic).to_string()),
        ("PrivateNetwork".to_owned(), (sb.network == Network::None).to_string()),
        ("NoNewPrivileges".to_owned(), "true".to_owned()),
        ("ProtectSystem".to_owned(), "strict".to_owned()),
        ("ProtectHome".to_owned(), "yes".to_owned()),
        ("PrivateTmp".to_owned(), "true".to_owned()),
    ];
    if sb.network == Network::Loopback {
        v.push(("IPAddressAllow".to_owned(), "127.0.0.0/8 ::1/128".to_owned()));
        v.push(("IPAddressDeny".to_owned(), "any".to_owned()));
    }
    if !sb.network_allow.is_empty() {
        let rules: Vec<String> = sb.network_allow.iter().map(|r| r.to_string()).collect();
        v.push((
            "BPFProgram".to_owned(),
            format!("connect4 connect6 sendmsg4 sendmsg6: network-allow {}", rules.join(" ")),
        ));
    }
    if !sb.readable.is_empty() {
        v.push(("BindReadOnlyPaths".to_owned(), sb.readable.join(" ")));
    }
    if !sb.writable.is_empty() {
        v.push(("BindPaths".to_owned(), sb.writable.join(" ")));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_in_arguments_reach_the_program_unexpanded() {
        let argv: Vec<String> = ["/bin/sh", "-c", "mv \"$1\" \"${1%.*}.jpg\"", "$HOME"].map(String::from).to_vec();
        assert_eq!(exec_argv(&argv), ["/bin/sh", "-c", "mv \"$$1\" \"$${1%.*}.jpg\"", "$$HOME"]);
    }

    #[test]
    fn unit_paths_are_escaped_like_sd_bus() {
        assert_eq!(
            unit_path("quantum-web-server.1.service"),
            "/org/freedesktop/systemd1/unit/quantum_2dweb_2dserver_2e1_2eservice"
        );
        assert_eq!(unit_path("1a.service"), "/org/freedesktop/systemd1/unit/_31a_2eservice");
    }

    #[test]
    fn slices_map_to_nested_cgroup_directories() {
        assert_eq!(slice_path("quantum.slice"), std::path::PathBuf::from("quantum.slice"));
        assert_eq!(
            slice_path("quantum-app.1.slice"),
            std::path::PathBuf::from("quantum.slice/quantum-app.1.slice")
        );
    }

    #[test]
    fn exit_facts_map_to_exits() {
        let f = |r: &str, c, s| ServiceFacts {
            result: Some(r.into()),
            code: Some(c),
            status: Some(s),
            began: true,
        };
        assert_eq!(exit_from(&f("success", 1, 0)), Exit::Code(0));
        assert_eq!(exit_from(&f("exit-code", 1, 3)), Exit::Code(3));
        assert_eq!(exit_from(&f("signal", 2, 9)), Exit::Signal(9));
        assert_eq!(exit_from(&f("oom-kill", 2, 9)), Exit::OutOfMemory);
        assert_eq!(exit_from(&ServiceFacts::default()), Exit::Code(0));
    }
}
