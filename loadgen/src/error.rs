//! The one error type of the load generator: what stops a run before it can report.
//!
//! Failures *during* a run (a refused call, a broken stream) are not errors of the run; they
//! are counted in the report.

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or config value the simulation cannot run with.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What tonic said.
        source: tonic::transport::Error,
    },
    /// A call the run cannot do without failed (e.g. opening a gateway stream).
    #[error("{what}: {status}")]
    Rpc {
        /// Which call.
        what: String,
        /// The status returned.
        status: tonic::Status,
    },
    /// Starting or stopping the server process failed.
    #[error("server process: {0}")]
    Server(String),
    /// Writing the report or plots failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Drawing a chart failed.
    #[error("plot {path}: {message}")]
    Plot {
        /// The chart file.
        path: String,
        /// What plotters said.
        message: String,
    },
}

impl Error {
    /// An `Rpc` error for call `what`.
    pub(crate) fn rpc(what: impl Into<String>, status: tonic::Status) -> Error {
        Error::Rpc {
            what: what.into(),
            status,
        }
    }
}

/// Result with the load generator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
