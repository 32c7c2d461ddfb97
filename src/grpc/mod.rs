//! The edge: gRPC services that turn wire types into domain types, validate them, call the
//! [`Engine`](crate::engine::Engine), and turn the answer back into wire types. No `pb` type
//! goes deeper than this module, and every core [`Error`] becomes a `Status` here, in one place.
//!
//! One file per service (by caller): [`drivers`], [`riders`], [`queries`], [`events`];
//! `convert` holds the conversions and validation, `follow` the streaming of events to clients,
//! `auth` the bearer tokens and roles, [`edge`] the admission layer (auth, concurrency limit,
//! edge metrics) in front of all of them.

pub(crate) mod auth;
pub(crate) mod convert;
pub(crate) mod drivers;
pub(crate) mod edge;
pub(crate) mod events;
mod follow;
pub(crate) mod queries;
pub(crate) mod riders;

use tonic::Status;

use crate::error::Error;

pub(crate) use drivers::DriverApi;
pub(crate) use edge::EdgeLayer;
pub(crate) use events::EventApi;
pub(crate) use queries::QueryApi;
pub(crate) use riders::RiderApi;

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

/// The status of a call refused by authentication. Never names the token, only its holder.
pub(crate) fn auth_status(error: auth::AuthError) -> Status {
    match error {
        auth::AuthError::Missing => {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        }
        auth::AuthError::Unknown => Status::unauthenticated("unknown bearer token"),
        auth::AuthError::Forbidden { name, needed } => Status::permission_denied(format!(
            "token `{name}` lacks the `{}` role this service requires",
            role_name(needed)
        )),
    }
}

/// The status of a call refused by the global concurrency limit.
pub(crate) fn overloaded_status() -> Status {
    Status::resource_exhausted("the server is at its concurrent-call limit; retry with backoff")
}

pub(crate) fn role_name(role: crate::config::Role) -> &'static str {
    use crate::config::Role;
    match role {
        Role::DriverGateway => "driver-gateway",
        Role::RiderGateway => "rider-gateway",
        Role::Subscriber => "subscriber",
        Role::Admin => "admin",
        Role::Viewer => "viewer",
        Role::ClusterPeer => "cluster-peer",
    }
}
