//! The edge: gRPC services that turn wire types into domain types, validate them, call the
//! [`Engine`](crate::engine::Engine), and turn the answer back into wire types. No `pb` type
//! goes deeper than this module, and every core [`Error`] becomes a `Status` here, in one place.
//!
//! One file per service (by caller): [`drivers`], [`riders`], [`queries`], [`events`];
//! `convert` holds the conversions and validation, `follow` the streaming of events to clients.

mod convert;
pub mod drivers;
pub mod events;
mod follow;
pub mod queries;
pub mod riders;

use tonic::Status;

use crate::error::Error;

pub use drivers::DriverApi;
pub use events::EventApi;
pub use queries::QueryApi;
pub use riders::RiderApi;

/// The one place a core error becomes a gRPC status.
pub(crate) fn status(error: Error) -> Status {
    match error {
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        Error::NotFound(m) => Status::not_found(m),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
        Error::ResourceExhausted(m) => Status::resource_exhausted(m),
        Error::Unavailable(m) => Status::unavailable(m),
    }
}
