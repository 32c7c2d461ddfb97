//! The core's one error type. Each variant maps to exactly one gRPC status code at the edge
//! (`grpc::status`), so the core decides *what* went wrong and the edge only translates.

/// Everything the engine can refuse, with a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Malformed input: bad coordinates, bad ids, out-of-range numbers.
    #[error("{0}")]
    InvalidArgument(String),
    /// An id the engine does not know.
    #[error("{0}")]
    NotFound(String),
    /// Valid input that the current state refuses (late accept, rider already has a trip...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller acted on something that belongs to someone else.
    #[error("{0}")]
    PermissionDenied(String),
    /// The engine is shedding load.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The engine is shutting down or its dispatcher is gone.
    #[error("{0}")]
    Unavailable(String),
}
