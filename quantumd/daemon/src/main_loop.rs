//! Start-up and the main loop: choose the backend, re-adopt running cells,
//! take the bus name, tell systemd we are ready, then handle events until
//! SIGTERM. Cells keep running when quantumd stops; the next quantumd
//! re-adopts them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::cells::{Cells, Event};
use crate::config::{BackendChoice, Config};
use crate::identity::Identity;
use crate::interface::Quantum1;
use crate::planner::Planner;
use crate::polkit::{Authorizer, Mode as AccessMode};
use crate::runtime::{cgroup::CgroupRuntime, systemd::SystemdRuntime, Runtime, UnitEvent};
use crate::steppps::Steppps;
use crate::store::Store;
use crate::trail::Recorder;

fn notify(state: &[sd_notify::NotifyState]) {
    // Not running under systemd is fine; nothing to tell.
    let _ = sd_notify::notify(state);
}

/// systemd is PID 1 when this directory exists (sd_booted()).
fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

async fn build_runtime(config: &Config, events: mpsc::UnboundedSender<UnitEvent>) -> anyhow::Result<Runtime> {
    let choice = match config.backend {
        BackendChoice::Auto if systemd_booted() => BackendChoice::Systemd,
        BackendChoice::Auto => BackendChoice::Cgroup,
        other => other,
    };
    Ok(match choice {
        BackendChoice::Systemd => Runtime::Systemd(
            SystemdRuntime::connect(
                events,
                &config.cell_slice,
                Path::new("/sys/fs/cgroup"),
                &config.state_dir.join("cell-state"),
            )
            .await
            .context("systemd backend")?,
        ),
        _ => Runtime::Cgroup(
            CgroupRuntime::new(
                &config.cgroup_root,
                &config.state_dir.join("cell-state"),
                &config.state_dir.join("logs"),
                events,
            )
            .context("cgroup backend")?,
        ),
    })
}

/// `quantumd --regenerate-identity`: a new node identity, recorded in the
/// trail (whose lock also tells that quantumd is not running).
pub async fn regenerate_identity(config: &Config) -> anyhow::Result<()> {
    let dir = config.state_dir.join("identity");
    let (identity, retired) = Identity::regenerate(&dir, config.tpm_setting(), config.tpm_pcr7)
        .with_context(|| format!("regenerating the node identity in {}", dir.display()))?;
    let trail_dir = config.state_dir.join("trail");
    let trail = Recorder::open(&trail_dir, &identity)
        .with_context(|| format!("opening the trail in {} (stop quantumd.service first)", trail_dir.display()))?;
    let retired = retired.map_or_else(|| "the previous public key was unknown".to_owned(), |k| format!("retired {k}"));
    let what = format!(
        "regenerated node identity {} ({}); {retired}",
        identity.public().key_id(),
        identity.describe()
    );
    trail.record(crate::trail::entry("quantumd", &quantum_trail::Action::IDENTITY).detail(what.clone()));
    trail.flush().await;
    println!("{what}");
    Ok(())
}

pub async fn serve(config: Config, bus_address: Option<String>, socket: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let (unit_tx, mut unit_rx) = mpsc::unbounded_channel();
    let runtime = build_runtime(&config, unit_tx).await?;
    let lost = runtime.lost();
    let backend = runtime.describe();
    tracing::info!(backend = runtime.kind(), "{backend}");

    let store = Store::open(&config.state_dir).with_context(|| format!("state directory {}", config.state_dir.display()))?;
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let identity = Identity::open(&config.state_dir.join("identity"), config.tpm_setting(), config.tpm_pcr7)
        .context("the node identity (see `tpm` in the configuration)")?;
    let trail_dir = config.state_dir.join("trail");
    let trail = Recorder::open(&trail_dir, &identity).map_err(|e| {
        let why = crate::command::error_chain(&e);
        tracing::error!(trail = %trail_dir.display(), error = %why, "the trail cannot be opened: cells will not run until it is looked at");
        why
    });
    if let Ok(t) = &trail {
        let public = identity.public();
        if identity.generated {
            t.record(crate::trail::entry("quantumd", &quantum_trail::Action::IDENTITY).detail(format!(
                "generated node identity {} ({})",
                public.key_id(),
                identity.describe()
            )));
        }
        t.record(crate::trail::entry("quantumd", &quantum_trail::Action::START).detail(format!(
            "quantumd {} started; node {}; {}",
            env!("CARGO_PKG_VERSION"),
            public.key_id(),
            identity.describe()
        )));
    }
    let planner = Arc::new(Planner::new(config.catalog.clone(), config.cache_dir.join("intent")));
    let bundles = crate::bundles::Bundles::new(
        config.trusted_keys.clone(),
        &config.cache_dir,
        &config.providers,
        Duration::from_secs(config.blacklist_seconds),
    )
    .context("the providers in the configuration")?;
    let runtime_cgroups = runtime.cells_cgroup();
    let log_source = runtime.log_source();
    let (bpf_enabled, metrics_setting) = (config.bpf, config.metrics.clone());
    let baselines = config.state_dir.join("baselines");
    let history = crate::psychology::History::open(&config.state_dir.join("psychology"), config.catalog.clone());
    // A misspelt name disables nothing: say so.
    let in_catalog = quantum_model::cells_in(&config.catalog);
    for name in config.cells.disabled.iter().filter(|n| !in_catalog.contains(*n)) {
        tracing::warn!(cell = %name, catalog = %config.catalog.display(), "a disabled cell is not in the catalog");
    }
    let broker = open_broker(&config, trail.as_ref().ok().cloned());
    let (cmd_tx, mut cmd_rx) = mpsc::channel(256);
    let cluster = crate::cluster::Membership::start(
        &config.cluster,
        &identity,
        trail.as_ref().ok().cloned(),
        cmd_tx.clone(),
        &config.state_dir,
    );
    let mut cells = Cells::new(runtime, store, config, event_tx.clone());
    if let Some(b) = &broker {
        cells.set_channels(b.clone());
    }
    cells.set_history(history.clone());
    cells.set_trust(identity.clone(), trail.clone());
    cells.set_bundles(bundles);
    let (tune_tx, mut tune_rx) = mpsc::unbounded_channel();
    let (anomaly_tx, mut anomaly_rx) = mpsc::unbounded_channel();
    let (ancestor, cgroup_mount) = runtime_cgroups;
    let steppps = Steppps::start(
        crate::steppps::Options {
            bpf: bpf_enabled,
            ancestor,
            cgroup_mount,
            interval: Duration::from_secs(1),
            baselines,
        },
        tune_tx,
        anomaly_tx,
    )
    .context("starting the STEPPPS sampler")?;
    cells.set_steppps(steppps.clone());
    let sampled = steppps.sampled();
    if let Some(endpoint) = crate::metrics::Endpoint::parse(&metrics_setting)? {
        crate::metrics::serve(endpoint, steppps.clone()).await?;
    }
    let adopted = cells.readopt().await.context("re-adopting running cells")?;
    if adopted > 0 {
        tracing::info!(adopted, "re-adopted running cells");
    }
    cells.arm_triggers().await;

    let private = bus_address.is_some();
    let builder = match &bus_address {
        Some(addr) => zbus::connection::Builder::address(addr.as_str()).context("bus address")?,
        None => zbus::connection::Builder::system().context("system bus")?,
    };
    let conn = builder.build().await.context("connecting to the bus")?;
    let mode = if private {
        tracing::warn!("private bus: access is governed by the bus alone, not polkit");
        AccessMode::BusOnly
    } else {
        AccessMode::Polkit
    };
    let authorizer = Authorizer::new(mode, conn.clone());
    let interface = Quantum1 {
        commands: cmd_tx,
        authorizer,
        backend: backend.clone(),
        planner: planner.clone(),
        identity,
        trail: trail.ok(),
        trail_dir,
        steppps,
        logs: log_source,
        history,
        channels: broker,
        cluster: cluster.clone(),
    };
    if let Some(listener) = crate::direct::listener(socket.as_deref())? {
        tracing::info!("serving quantumctl on the direct socket too");
        crate::direct::serve(listener, interface.clone());
    }
    conn.object_server()
        .at(quantum_bus::OBJECT_PATH, interface)
        .await
        .context("exporting the interface")?;
    conn.request_name(quantum_bus::BUS_NAME).await.with_context(|| {
        format!(
            "taking the bus name {} (is another quantumd running, or does the D-Bus policy allow this user?)",
            quantum_bus::BUS_NAME
        )
    })?;
    cells.set_bus(conn.clone());
    crate::steppps::announce(conn.clone(), sampled);

    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("{} cells running; {}", cells.running_count(), backend)),
    ]);
    tracing::info!(bus = bus_address.as_deref().unwrap_or("system"), "quantumd ready");
    // The model loads after READY, so that it never delays boot; an Ask
    // that comes first waits for it.
    let (model_tx, mut model_rx) = mpsc::channel(1);
    {
        let planner = planner.clone();
        tokio::spawn(async move {
            let _ = planner.engine().await;
            let _ = model_tx.send(()).await;
        });
    }

    let watchdog = sd_notify::watchdog_enabled().is_some();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut last_count = usize::MAX;
    let mut lost_systemd = false;
    loop {
        let event = tokio::select! {
            Some(c) = cmd_rx.recv() => Event::Command(c),
            Some(u) = unit_rx.recv() => Event::Unit(u),
            Some(e) = event_rx.recv() => e,
            Some(t) = tune_rx.recv() => Event::Tune(t),
            Some(a) = anomaly_rx.recv() => Event::Anomaly(a),
            Some(()) = model_rx.recv() => {
                last_count = usize::MAX;
                Event::Tick
            }
            _ = tick.tick() => Event::Tick,
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = wait(lost.as_deref()) => {
                lost_systemd = true;
                break;
            }
        };
        if matches!(event, Event::Tick) {
            if watchdog {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            let n = cells.running_count();
            if n != last_count {
                last_count = n;
                notify(&[sd_notify::NotifyState::Status(&format!("{n} cells running; {}", planner.status()))]);
            }
        }
        cells.handle(event).await;
    }
    if lost_systemd {
        // When quantumd and its gate are stopped together (package removal,
        // shutdown), the gate's connection may close a moment before
        // quantumd's own SIGTERM comes: that is a stop, not a lost systemd.
        // (quantumd.service is ordered after the gate so that it is stopped
        // first; this covers a stop of the gate that races it anyway.)
        let stop = async {
            tokio::select! {
                _ = term.recv() => (),
                _ = int.recv() => (),
            }
        };
        if tokio::time::timeout(STOP_AFTER_LOSS, stop).await.is_ok() {
            tracing::info!("the gate to systemd closed as quantumd was being stopped");
            lost_systemd = false;
        }
    }
    tracing::info!("quantumd stopping; cells keep running and will be re-adopted");
    cluster.leave().await;
    cells.flush_trail().await;
    notify(&[sd_notify::NotifyState::Stopping]);
    if lost_systemd {
        // systemd closes its private connections on daemon-reexec (a
        // systemd upgrade). A failed exit gets quantumd restarted
        // (Restart=on-failure), and the new one reconnects and re-adopts
        // the cells, which kept running.
        anyhow::bail!("lost the connection to systemd; exiting to be restarted");
    }
    Ok(())
}

/// The channel broker on its socket; none (and cells with channels are
/// refused, saying why) when its key or socket cannot be had.
fn open_broker(config: &Config, trail: Option<Recorder>) -> Option<crate::channels::Broker> {
    let opened = crate::channels::Broker::open(&config.state_dir, config.channels.clone(), trail).and_then(|b| {
        let listener = crate::channels::listener(&config.channels)?;
        b.serve(listener)?;
        Ok(b)
    });
    match opened {
        Ok(b) => {
            tracing::info!(socket = %config.channels.display(), "channel broker listening");
            Some(b)
        }
        Err(e) => {
            tracing::warn!(error = %crate::command::error_chain(&e), "no channel broker: cells with channels will not run");
            None
        }
    }
}

/// How long a quantumd whose connection to systemd closed waits for a stop
/// signal before it counts the closing as a loss (and exits to be
/// restarted).
const STOP_AFTER_LOSS: Duration = Duration::from_secs(3);

/// Resolves when `notify` is woken; never without one.
async fn wait(notify: Option<&tokio::sync::Notify>) {
    match notify {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}
