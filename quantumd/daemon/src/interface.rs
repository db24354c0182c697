//! The `org.quantumos.Quantum1` D-Bus interface: a thin front that checks
//! access, decodes arguments, forwards a [`Command`] and maps errors.

use std::collections::HashMap;

use quantum_bus::{CellDetail, CellInfo, Error, ACTION_MANAGE};
use tokio::sync::{mpsc, oneshot};
use zbus::message::Header;

use crate::command::{Command, CommandError};
use crate::polkit::Authorizer;

pub struct Quantum1 {
    pub commands: mpsc::Sender<Command>,
    pub authorizer: Authorizer,
    pub backend: String,
}

impl Quantum1 {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Backend("quantumd is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Backend("quantumd dropped the request".into()))?
            .map_err(Error::from)
    }

    async fn authorize(&self, header: &Header<'_>) -> Result<(), Error> {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        self.authorizer
            .check(&sender, ACTION_MANAGE)
            .await
            .map_err(|e| Error::from(CommandError::Denied(e)))
    }
}

#[zbus::interface(name = "org.quantumos.Quantum1")]
impl Quantum1 {
    async fn run(
        &self,
        #[zbus(header)] header: Header<'_>,
        source: String,
        params: HashMap<String, String>,
        cwd: String,
    ) -> Result<CellInfo, Error> {
        self.authorize(&header).await?;
        self.call(|reply| Command::Run {
            source,
            params,
            cwd,
            reply,
        })
        .await
    }

    async fn stop(&self, #[zbus(header)] header: Header<'_>, target: String) -> Result<Vec<String>, Error> {
        self.authorize(&header).await?;
        self.call(|reply| Command::Stop { target, reply }).await
    }

    async fn list(&self) -> Result<Vec<CellInfo>, Error> {
        self.call(|reply| Command::List { reply }).await
    }

    async fn inspect(&self, target: String) -> Result<CellDetail, Error> {
        self.call(|reply| Command::Inspect { target, reply }).await
    }

    #[zbus(property)]
    async fn backend(&self) -> String {
        self.backend.clone()
    }

    #[zbus(property)]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    #[zbus(signal)]
    async fn cell_state_changed(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        instance: &str,
        cell: &str,
        state: &str,
        reason: &str,
    ) -> zbus::Result<()>;
}
