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
//! - [`clock`]: time as an input (system clock, manual clock for tests).
//! - [`matching`]: pickup ETA model, candidate scoring, and the batch assignment solver
//!   (`matching::assign`: min-cost pairing of a window's requests with drivers).
//! - [`surge`]: demand over supply per H3 hexagon.
//! - [`events`]: the ordered dispatch events, their in-memory fan-out bus, and the durable
//!   log they are committed to before any call is acknowledged (`events::log`).
//! - [`engine`]: the single-owner dispatcher thread (greedy or batched matching) and the handle
//!   to it.
//! - [`config`]: settings and their embedded defaults.
//! - [`config_load`]: defaults < TOML file < `DISPATCH_*` environment < flags, validated.
//! - [`telemetry`]: Prometheus metrics (prometheus-client registry, scrape) and trip log lines,
//!   derived from the event bus and the edge.
//! - [`grpc`]: the edge; wire types in and out, validation, statuses.
//! - [`http`]: axum on the HTTP address: `/metrics`, the operator's live map and its JSON/SSE
//!   API, read from the map view the dispatcher publishes (viewers never enter its queue).
//! - [`server`]: wires engine, services, health and reflection onto a listener; auth, limits,
//!   TLS, metrics and graceful drain.
//!
//! Request flow: a gRPC call is validated in `grpc`, becomes a command on the engine's bounded
//! channel, is executed by the dispatcher thread with `now` from the clock (its state changes
//! only by applying the events it emits), and its events are committed to the durable log,
//! then published to the bus (subscribers, offer streams, trip watchers), before the reply
//! returns. On start the engine replays the log to rebuild its state.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod clock;
pub mod config;
pub mod config_load;
pub mod domain;
pub mod engine;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod index;
pub mod matching;
pub mod server;
pub mod surge;
pub mod telemetry;

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
