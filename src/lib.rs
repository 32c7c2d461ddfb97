//! A real-time dispatch matching engine.
//!
//! Driver gateways stream locations into an in-memory moving-object index; a rider request
//! finds nearby available drivers, estimates each one's ETA, scores them, and offers the trip to
//! the best driver, who has 15 s to accept before the offer cascades to the next. Every state
//! change is an ordered dispatch event.
//!
//! The map, bottom-up (each layer uses only the ones above it in this list):
//! - [`domain`], [`error`]: validated values (`LatLng`, ids) and the core error type.
//! - [`index`]: where every driver is; k-nearest-within-radius queries.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub mod domain;
pub mod error;
pub mod index;

pub use domain::LatLng;
pub use error::Error;

/// Wire types generated from `proto/dispatch/v1/dispatch.proto`. Only `grpc` (the edge) and
/// clients use these; the core speaks `domain` types.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("dispatch.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("dispatch_descriptor");
}
