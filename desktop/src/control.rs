//! `org.quantumos.Assistant1`: the assistant's own D-Bus interface, on the
//! session bus (or `--control-bus`), for tests and scripts that drive the
//! window as a person would. Every method acts through the window itself:
//! `Ask` types into the request box and presses Enter, `Confirm` fires the
//! action Ctrl+Enter fires, `Stop` clicks the cell's Stop button, and
//! `Widgets` reads back what is on screen. It can do nothing the person at
//! the window could not; quantumd still decides who may run what.

use crate::error::Error;

/// The bus name the assistant takes.
pub const BUS_NAME: &str = "org.quantumos.Assistant1";
/// Its one object.
pub const OBJECT_PATH: &str = "/org/quantumos/Assistant1";

/// What a control call asks of the window.
#[derive(Debug, Clone)]
pub enum Op {
    Ask(String),
    Confirm,
    Cancel,
    Stop(String),
    Inspect(String),
    /// The visible widget tree as JSON.
    Widgets,
}

/// A call handed to the GTK thread, with where its answer goes.
pub struct Call {
    pub op: Op,
    pub reply: tokio::sync::oneshot::Sender<Result<String, Error>>,
}

struct Control {
    calls: async_channel::Sender<Call>,
}

impl Control {
    async fn call(&self, op: Op) -> zbus::fdo::Result<String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.calls
            .send(Call { op, reply })
            .await
            .map_err(|_| zbus::fdo::Error::Failed(Error::WorkerGone.to_string()))?;
        match answer.await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(zbus::fdo::Error::Failed(crate::error::chain(&e))),
            Err(_) => Err(zbus::fdo::Error::Failed("the window has closed".to_owned())),
        }
    }
}

#[zbus::interface(name = "org.quantumos.Assistant1")]
impl Control {
    /// Types `request` into the request box and presses Enter.
    async fn ask(&self, request: String) -> zbus::fdo::Result<()> {
        self.call(Op::Ask(request)).await.map(drop)
    }

    /// Runs the plan shown, as Ctrl+Enter does; fails when there is none
    /// or it cannot run (a parameter missing).
    async fn confirm(&self) -> zbus::fdo::Result<()> {
        self.call(Op::Confirm).await.map(drop)
    }

    /// Esc: drops the plan shown (or closes the window when there is none).
    async fn cancel(&self) -> zbus::fdo::Result<()> {
        self.call(Op::Cancel).await.map(drop)
    }

    /// Clicks Stop on the instance's row.
    async fn stop(&self, instance: String) -> zbus::fdo::Result<()> {
        self.call(Op::Stop(instance)).await.map(drop)
    }

    /// Clicks Inspect on the instance's row.
    async fn inspect(&self, instance: String) -> zbus::fdo::Result<()> {
        self.call(Op::Inspect(instance)).await.map(drop)
    }

    /// Every visible window's widget tree as JSON: `[{"type", "name"?,
    /// "text"?, "insensitive"?, "children"?}]`, only what is mapped.
    async fn widgets(&self) -> zbus::fdo::Result<String> {
        self.call(Op::Widgets).await
    }
}

/// Offers the interface on `address` (None: the session bus). The
/// connection must be kept for as long as the interface is to answer.
pub async fn offer(address: Option<&str>, calls: async_channel::Sender<Call>) -> Result<zbus::Connection, Error> {
    let bus = address.map_or_else(|| "the session bus".to_owned(), |a| format!("bus {a}"));
    let fail = |source| Error::Control {
        name: BUS_NAME,
        bus: bus.clone(),
        source: Box::new(source),
    };
    let builder = match address {
        Some(a) => zbus::connection::Builder::address(a).map_err(fail)?,
        None => zbus::connection::Builder::session().map_err(fail)?,
    };
    builder
        .name(BUS_NAME)
        .map_err(fail)?
        .serve_at(OBJECT_PATH, Control { calls })
        .map_err(fail)?
        .build()
        .await
        .map_err(fail)
}
