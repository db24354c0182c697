//! The assistant's errors. Each says what failed in words a person can act
//! on; the window shows [`chain`] of it, the log records it with tracing.

/// What can go wrong between the window, quantumd and the control bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bus quantumd listens on cannot be reached, or quantumd is not on it.
    #[error("cannot reach quantumd on {bus}")]
    Unreachable {
        bus: String,
        #[source]
        source: Box<zbus::Error>,
    },
    /// quantumd answered a request with an error (refused, not found...).
    #[error("{action}: {message}")]
    Daemon { action: &'static str, message: String },
    /// quantumd's `Ask` answer is not the plan JSON.
    #[error("quantumd answered something that is not a plan")]
    NotAPlan(#[source] serde_json::Error),
    /// quantumd's `Steppps` answer is not the figures JSON.
    #[error("quantumd answered something that is not STEPPPS figures")]
    NotFigures(#[source] serde_json::Error),
    /// The assistant's own D-Bus interface could not be offered.
    #[error("cannot offer {name} on {bus}")]
    Control {
        name: &'static str,
        bus: String,
        #[source]
        source: Box<zbus::Error>,
    },
    /// A control call asked for something the window cannot do now.
    #[error("{0}")]
    NotNow(String),
    /// The worker thread that talks to quantumd is gone.
    #[error("the connection to quantumd has stopped")]
    WorkerGone,
    #[error("cannot start the D-Bus worker")]
    Runtime(#[source] std::io::Error),
}

impl Error {
    /// An error quantumd answered with, for `action` ("cannot run the plan").
    pub fn daemon(action: &'static str, e: &quantum_bus::Error) -> Error {
        Error::Daemon {
            action,
            message: e.message(),
        }
    }
}

/// An error and its sources, "outer: inner: innermost".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
