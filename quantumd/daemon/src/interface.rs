//! The `org.quantumos.Quantum1` D-Bus interface: a thin front that checks
//! access, decodes arguments, forwards a [`Command`] and maps errors.

use std::collections::HashMap;
use std::sync::Arc;

use quantum_bus::{CellDetail, CellInfo, Error, ACTION_MANAGE};
use tokio::sync::{mpsc, oneshot};
use zbus::message::Header;

use crate::command::{Command, CommandError};
use crate::planner::Planner;
use crate::polkit::Authorizer;

pub struct Quantum1 {
    pub commands: mpsc::Sender<Command>,
    pub authorizer: Authorizer,
    pub backend: String,
    pub planner: Arc<Planner>,
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
        let sender = sender(header);
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

    async fn ask(&self, #[zbus(header)] header: Header<'_>, intent: String) -> Result<String, Error> {
        let (plan, id) = self.planner.ask(intent, &sender(&header)).await?;
        let mut json = serde_json::to_value(&plan).map_err(|e| Error::Backend(format!("cannot encode the plan: {e}")))?;
        if let (Some(id), Some(obj)) = (id, json.as_object_mut()) {
            obj.insert("plan-id".into(), id.into());
        }
        Ok(json.to_string())
    }

    async fn execute(&self, #[zbus(header)] header: Header<'_>, plan_id: String, cwd: String) -> Result<Vec<CellInfo>, Error> {
        self.authorize(&header).await?;
        let plan = self.planner.take(&plan_id, &sender(&header))?;
        let mut started: Vec<CellInfo> = Vec::new();
        for (i, step) in plan.cells.iter().enumerate() {
            let params = step.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let result = self
                .call(|reply| Command::Run {
                    source: step.name.clone(),
                    params,
                    cwd: cwd.clone(),
                    reply,
                })
                .await;
            match result {
                Ok(info) => started.push(info),
                Err(e) => {
                    let already = if started.is_empty() {
                        String::new()
                    } else {
                        let ids: Vec<&str> = started.iter().map(|c| c.instance.as_str()).collect();
                        format!(" (still running from earlier steps: {})", ids.join(", "))
                    };
                    let message = format!("step {} of the plan, cell \"{}\": {}{already}", i + 1, step.name, e.message());
                    return Err(match e {
                        Error::NotFound(_) => Error::NotFound(message),
                        Error::InvalidManifest(_) => Error::InvalidManifest(message),
                        Error::AccessDenied(_) => Error::AccessDenied(message),
                        Error::Refused(_) => Error::Refused(message),
                        Error::Backend(_) | Error::ZBus(_) => Error::Backend(message),
                    });
                }
            }
        }
        Ok(started)
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

/// The caller's unique bus name.
fn sender(header: &Header<'_>) -> String {
    header.sender().map(|s| s.to_string()).unwrap_or_default()
}
