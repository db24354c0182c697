//! The one connection to quantumd, on a thread of its own (zbus on tokio;
//! GTK keeps the main thread). The window sends [`Request`]s and receives
//! [`Update`]s over channels; nothing else crosses between the two.
//!
//! Everything live is driven by quantumd's signals, never by a timer:
//! `CellStateChanged` refreshes the list of cells and the trail, `CellTuned`
//! and `CellAlert` (security-ai) add a line to the cell's events (an alert
//! also refreshes the trail, where it is recorded), and `FiguresChanged` (after each
//! STEPPPS sample that covers a cell, once a second while cells run) has
//! the figures read with `Steppps`. With no cell running nothing wakes.
//!
//! `Ask` and `Execute` go over the same connection: quantumd runs a plan
//! only for the connection that asked for it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use quantum_bus::{CellDetail, CellInfo, Quantum1Proxy, Started, TrailEntry};
use quantum_steppps::Figures;

use crate::error::Error;
use crate::plan::Answer;

/// The figures are read at most this often, however often they change.
pub const FIGURES_AT_MOST_EVERY: Duration = Duration::from_millis(900);
/// How long to wait before trying an unreachable quantumd again.
const RECONNECT_EVERY: Duration = Duration::from_secs(3);
/// Trail entries shown.
pub const TRAIL_SHOWN: u32 = 8;

/// What the window asks of quantumd.
#[derive(Debug, Clone)]
pub enum Request {
    Ask(String),
    Execute { plan_id: String, cwd: String },
    Stop(String),
    Inspect(String),
}

/// What quantumd said, for the window.
#[derive(Debug)]
pub enum Update {
    Connected {
        version: String,
        backend: String,
    },
    Unreachable(Error),
    Plan(Result<Answer, Error>),
    Executed(Result<Vec<Started>, Error>),
    Stopped(Result<Vec<String>, Error>),
    Detail(Result<Box<CellDetail>, Error>),
    Cells(Vec<CellInfo>),
    Figures(Box<Figures>),
    /// How to reach a running service (its manifest's `reach`, filled in).
    Reach {
        instance: String,
        reach: String,
    },
    Trail(Vec<TrailEntry>),
    /// A state change or a tuning, as a line for the cell's recent events.
    Event {
        instance: String,
        text: String,
    },
    /// A read that failed (list, trail, figures); shown, not fatal.
    Failed(Error),
}

/// Where quantumd is: an address, or None for the system bus.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: Option<String>,
}

impl Target {
    pub fn describe(&self) -> String {
        self.address
            .as_deref()
            .map_or_else(|| "the system bus".to_owned(), |a| format!("bus {a}"))
    }
}

/// Runs the worker on `runtime` until the window drops its sender.
pub async fn serve(target: Target, requests: async_channel::Receiver<Request>, updates: async_channel::Sender<Update>) {
    loop {
        match connect(&target).await {
            Ok(proxy) => {
                if session(&proxy, &requests, &updates).await.is_break() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "quantumd unreachable");
                if updates.send(Update::Unreachable(e)).await.is_err() {
                    return;
                }
            }
        }
        // Requests made while quantumd is away are answered as failures
        // rather than queued: a plan asked for then would run much later.
        let wait = tokio::time::sleep(RECONNECT_EVERY);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                r = requests.recv() => match r {
                    Ok(request) => {
                        if updates.send(unanswered(request)).await.is_err() { return; }
                    }
                    Err(_) => return,
                },
            }
        }
    }
}

/// The answer to a request made while quantumd is away: the request's own
/// update, failed, so that the window stops waiting for it.
fn unanswered(request: Request) -> Update {
    let e = |action| Error::Daemon {
        action,
        message: "quantumd is not reachable".to_owned(),
    };
    match request {
        Request::Ask(_) => Update::Plan(Err(e("cannot ask quantumd"))),
        Request::Execute { .. } => Update::Executed(Err(e("the plan did not run"))),
        Request::Stop(_) => Update::Stopped(Err(e("cannot stop it"))),
        Request::Inspect(_) => Update::Detail(Err(e("cannot inspect it"))),
    }
}

async fn connect(target: &Target) -> Result<Quantum1Proxy<'static>, Error> {
    let unreachable = |source| Error::Unreachable {
        bus: target.describe(),
        source: Box::new(source),
    };
    let conn = quantum_bus::connect(target.address.as_deref()).await.map_err(unreachable)?;
    let proxy = Quantum1Proxy::new(&conn).await.map_err(unreachable)?;
    // A property read proves quantumd is there, not only the bus.
    proxy.version().await.map_err(unreachable)?;
    Ok(proxy)
}

/// One connected session; Break when the window has gone, Continue when
/// quantumd has (to reconnect).
async fn session(
    proxy: &Quantum1Proxy<'static>,
    requests: &async_channel::Receiver<Request>,
    updates: &async_channel::Sender<Update>,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let unreachable = |source| Error::Unreachable {
        bus: "the bus".to_owned(),
        source: Box::new(source),
    };
    // Subscribe before the first read, so that no change falls between.
    let (mut changes, mut tunings, mut alerts, mut sampled, mut owner) = match tokio::try_join!(
        proxy.receive_cell_state_changed(),
        proxy.receive_cell_tuned(),
        proxy.receive_cell_alert(),
        proxy.receive_figures_changed(),
        proxy.inner().receive_owner_changed()
    ) {
        Ok(s) => s,
        Err(e) => {
            return if updates.send(Update::Unreachable(unreachable(e))).await.is_err() {
                Break(())
            } else {
                Continue(())
            }
        }
    };
    let version = proxy.version().await.unwrap_or_default();
    let backend = proxy.backend().await.unwrap_or_default();
    tracing::info!(%version, %backend, "connected to quantumd");
    if updates.send(Update::Connected { version, backend }).await.is_err() {
        return Break(());
    }
    // Running instances whose reach was asked for, this session.
    let mut reach_asked = std::collections::HashSet::new();
    refresh(proxy, updates, &mut reach_asked).await;
    let mut figures_read: Option<Instant> = None;
    loop {
        let sent = tokio::select! {
            r = requests.recv() => match r {
                Ok(request) => handle(proxy, request, updates).await,
                Err(_) => return Break(()),
            },
            Some(signal) = changes.next() => {
                let line = signal.args().ok().map(|a| (a.instance().to_string(), crate::live::change_line(a.state(), a.reason())));
                let mut ok = true;
                if let Some((instance, text)) = line {
                    ok = updates.send(Update::Event { instance, text }).await.is_ok();
                }
                refresh(proxy, updates, &mut reach_asked).await;
                ok
            }
            Some(signal) = tunings.next() => {
                let line = signal.args().ok().map(|a| {
                    (a.instance().to_string(), format!("CPU weight {} → {}: {}", a.old_weight(), a.new_weight(), a.reason()))
                });
                match line {
                    Some((instance, text)) => updates.send(Update::Event { instance, text }).await.is_ok(),
                    None => true,
                }
            }
            Some(signal) = alerts.next() => {
                let line = signal.args().ok().map(|a| (a.instance().to_string(), crate::live::alert_line(a.kind(), a.response(), a.message())));
                let mut ok = true;
                if let Some((instance, text)) = line {
                    ok = updates.send(Update::Event { instance, text }).await.is_ok();
                }
                refresh(proxy, updates, &mut reach_asked).await;
                ok
            }
            Some(name) = owner.next() => {
                if name.is_none() {
                    tracing::warn!("quantumd left the bus");
                    let e = Error::Daemon { action: "quantumd left the bus", message: "it will be reached again when it is back".to_owned() };
                    return if updates.send(Update::Unreachable(e)).await.is_err() { Break(()) } else { Continue(()) };
                }
                true
            }
            Some(_) = sampled.next() => {
                // A burst (a backlog after a stall) is read once.
                if figures_read.is_some_and(|at| at.elapsed() < FIGURES_AT_MOST_EVERY) {
                    true
                } else {
                    figures_read = Some(Instant::now());
                    read_figures(proxy, updates).await
                }
            }
        };
        if !sent {
            return Break(());
        }
    }
}

/// Reads the cells and the trail, and the figures when a cell runs (so a
/// new cell shows them before the next sample's signal); asks once for how
/// to reach each instance that runs (only services have a reach).
async fn refresh(
    proxy: &Quantum1Proxy<'static>,
    updates: &async_channel::Sender<Update>,
    reach_asked: &mut std::collections::HashSet<String>,
) {
    let cells = proxy.list().await.map_err(|e| Error::daemon("cannot list the cells", &e));
    let trail = proxy
        .trail_show("", 0, TRAIL_SHOWN)
        .await
        .map_err(|e| Error::daemon("cannot read the trail", &e));
    let mut running = false;
    let mut out = Vec::new();
    let mut ask_reach = Vec::new();
    match cells {
        Ok(cells) => {
            running = cells.iter().any(|c| matches!(c.state.as_str(), "running" | "starting"));
            reach_asked.retain(|i| cells.iter().any(|c| &c.instance == i));
            for c in cells.iter().filter(|c| c.state == "running") {
                if reach_asked.insert(c.instance.clone()) {
                    ask_reach.push(c.instance.clone());
                }
            }
            out.push(Update::Cells(cells));
        }
        Err(e) => out.push(Update::Failed(e)),
    }
    out.push(match trail {
        Ok(t) => Update::Trail(t),
        Err(e) => Update::Failed(e),
    });
    for u in out {
        if updates.send(u).await.is_err() {
            return;
        }
    }
    for instance in ask_reach {
        // An instance that ended in between has nothing to reach.
        if let Ok(detail) = proxy.inspect(&instance).await {
            if !detail.reach.is_empty() {
                // The window has gone when this fails; the loop notices on its next send.
                let _ = updates
                    .send(Update::Reach {
                        instance,
                        reach: detail.reach,
                    })
                    .await;
            }
        }
    }
    if running {
        read_figures(proxy, updates).await;
    }
}

async fn read_figures(proxy: &Quantum1Proxy<'static>, updates: &async_channel::Sender<Update>) -> bool {
    let update = match proxy.steppps("").await {
        Ok(json) => match serde_json::from_str::<Figures>(&json) {
            Ok(f) => Update::Figures(Box::new(f)),
            Err(e) => Update::Failed(Error::NotFigures(e)),
        },
        Err(e) => Update::Failed(Error::daemon("cannot read the STEPPPS figures", &e)),
    };
    updates.send(update).await.is_ok()
}

async fn handle(proxy: &Quantum1Proxy<'static>, request: Request, updates: &async_channel::Sender<Update>) -> bool {
    tracing::debug!(?request, "to quantumd");
    let update = match request {
        Request::Ask(intent) => Update::Plan(match proxy.ask(&intent).await {
            Ok(json) => Answer::parse(&json),
            Err(e) => Err(Error::daemon("cannot ask quantumd", &e)),
        }),
        Request::Execute { plan_id, cwd } => Update::Executed(
            proxy
                .execute(&plan_id, &cwd)
                .await
                .map_err(|e| Error::daemon("the plan did not run", &e)),
        ),
        Request::Stop(target) => Update::Stopped(proxy.stop(&target).await.map_err(|e| Error::daemon("cannot stop it", &e))),
        Request::Inspect(target) => Update::Detail(
            proxy
                .inspect(&target)
                .await
                .map(Box::new)
                .map_err(|e| Error::daemon("cannot inspect it", &e)),
        ),
    };
    updates.send(update).await.is_ok()
}
