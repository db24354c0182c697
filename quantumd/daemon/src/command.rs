//! The one internal command API of quantumd. The D-Bus interface decodes a
//! call into a [`Command`] and forwards it to the main loop; tests and any
//! later front end do the same.

use std::collections::HashMap;

use quantum_bus::{Assembled, CellDetail, CellInfo, CellStateReport, Ended, TriggerInfo};
use tokio::sync::oneshot;

pub type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// A `Run`: what to start, for whom, and where the answer goes.
#[derive(Debug)]
pub struct RunRequest {
    /// Who asked (`uid:N`), for the trail.
    pub actor: String,
    pub source: String,
    pub params: HashMap<String, String>,
    pub cwd: String,
    /// The caller's stdin, stdout and stderr for an attached run.
    pub stdio: Option<crate::runtime::Stdio>,
    /// The caller accepts a stand-in for a blacklisted catalog cell
    /// (`RunWith`'s `substitute`); without it such a run is refused.
    pub substitute: bool,
    pub reply: Reply<Assembled>,
    /// Where this start's time goes (logged once it has started).
    pub profile: crate::start_profile::StartProfile,
}

#[derive(Debug)]
pub enum Command {
    Run(RunRequest),
    /// The instances `target` names (an id or a cell name), for `Logs`.
    LogTargets {
        target: String,
        reply: Reply<Vec<LogTarget>>,
    },
    /// Answered when the instance ends (at once if it has).
    Wait {
        instance: String,
        reply: Reply<Ended>,
    },
    Stop {
        actor: String,
        target: String,
        reply: Reply<Vec<String>>,
    },
    List {
        reply: Reply<Vec<CellInfo>>,
    },
    Inspect {
        target: String,
        reply: Reply<CellDetail>,
    },
    CellState {
        actor: String,
        cell: String,
        op: crate::cell_state::Op,
        reply: Reply<CellStateReport>,
    },
    TriggerAdd {
        actor: String,
        toml: String,
        file: String,
        reply: Reply<TriggerInfo>,
    },
    TriggerRemove {
        actor: String,
        name: String,
        reply: Reply<()>,
    },
    TriggerList {
        reply: Reply<Vec<TriggerInfo>>,
    },
}

/// An instance whose output may be read, and who started it.
#[derive(Debug, Clone)]
pub struct LogTarget {
    pub instance: String,
    pub unit: String,
    /// `uid:N` of who asked for it.
    pub actor: String,
    pub running: bool,
    /// When it started and, once ended, when it ended (µs since the epoch):
    /// its unit's name (and so its journal entries) may belong to an
    /// earlier instance too, from before a restart of quantumd.
    pub started_usec: u64,
    pub ended_usec: Option<u64>,
}

/// Why a command failed; the text names the cell and the cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Backend(String),
    #[error("{0}")]
    Denied(String),
}

/// `error: cause: cause`, since typed errors do not repeat their source.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The one mapping of internal errors to D-Bus errors.
impl From<CommandError> for quantum_bus::Error {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound(m) => quantum_bus::Error::NotFound(m),
            CommandError::Invalid(m) => quantum_bus::Error::InvalidManifest(m),
            CommandError::Refused(m) => quantum_bus::Error::Refused(m),
            CommandError::Backend(m) => quantum_bus::Error::Backend(m),
            CommandError::Denied(m) => quantum_bus::Error::AccessDenied(m),
        }
    }
}
