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
//! - [`events`]: the ordered dispatch events, the durable log they are committed to before any
//!   call is acknowledged (`events::log`), their in-memory bus, the one follow loop that reads
//!   bus and log (`events::Follower`), and the router handing each trip's and gateway's events
//!   to their watchers only (`events::Router`).
//! - [`journal`]: the input journal: every command with its `now`, written by its own thread
//!   when `record.enabled`, read back (naming a bad record's segment and byte) for replay.
//! - [`config`]: settings and their embedded defaults (it gathers the config types of
//!   `matching`, `surge` and `events`).
//! - [`config_load`]: defaults < TOML file < `DISPATCH_*` environment < flags, validated.
//! - [`eta`]: the road ETA model: an OpenStreetMap car graph with contraction hierarchies,
//!   snapping and many-to-one queries (`eta::road`), chosen at start by `eta.model`.
//! - [`engine`]: the dispatch state and the decisions over it. `engine::state::DispatchState`
//!   holds everything that is known and changes only by applying events (its non-durable part,
//!   positions and surge demand, is named `Live`); `engine::dispatcher` holds the decisions
//!   (drivers, trips, offers, search, batch, timers), which read the state and return events;
//!   `engine::records::Trip::apply` is the one trip fold (the state and WatchTrip use it). The
//!   dispatcher runs on its own thread (`runner`), snapshots its state now and then
//!   (`engine::snapshot`: a copy at a group boundary, written by its own thread), recovers on
//!   start from the newest good snapshot plus the log after it (`recovery`; the snapshot's
//!   ended trips stay encoded until something reads them, `state::cold`), publishes a read
//!   view at every command group (`reads`: NearbyDrivers, GetSurge and GetDriver are answered
//!   from it on the caller's thread), and `Engine` is the handle to it.
//! - [`replay`]: feeds a journal's entries to an in-process [`engine::Dispatcher`] exactly as
//!   the engine thread executed them (the exact-replay check; `dispatch-replay` builds on it).
//! - [`telemetry`]: Prometheus metrics (prometheus-client registry, scrape) and trip log lines,
//!   derived from the event bus and the edge.
//! - [`grpc`]: the edge; wire types in and out, validation, statuses.
//! - [`http`]: axum on the HTTP address: `/metrics`, the operator's live map and its JSON/SSE
//!   API, read from the map view the dispatcher publishes (viewers never enter its queue).
//! - [`cluster`]: regions (named polygons, `geo`), one engine per region, the router sending
//!   each call to its region's services here or forwarding it to the region's owner, and
//!   cluster mode: region logs on NATS JetStream with fenced appends, region leases and member
//!   presence in a JetStream KV bucket, each region taken, handed over or lost on its own;
//!   `cluster::border` moves an available driver that crossed a border to its new region (an
//!   event in each) and draws drivers across a border for a pickup near it;
//!   `cluster::audit` reads the region streams back and checks them against what clients were
//!   told (the failover tests and `loadgen --mode failover` share it).
//! - [`server`]: wires engine, services, health and reflection onto a listener; auth, limits,
//!   TLS, metrics and graceful drain.
//!
//! Beside them, [`allocator`] tunes the binaries' allocator (mimalloc keeps freed memory).
//!
//! Request flow: a gRPC call is validated in `grpc`, becomes a command on the engine's bounded
//! channel, is executed by the dispatcher thread with `now` from the clock (a decision reads
//! the state and returns events; applying them is the only way the state changes), and its
//! events are committed to the durable log, then published to the bus, before the reply
//! returns. Reads of drivers and surge skip the channel: they read the view published at the
//! last group's commit. Subscribers and the metrics follow the bus; offer streams and trip
//! watchers get their events from the router. On start the engine restores its newest
//! snapshot and replays the log after it to rebuild its state.

pub mod allocator;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod config_load;
pub mod domain;
pub mod engine;
pub mod error;
pub mod eta;
pub mod events;
pub(crate) mod grpc;
pub(crate) mod http;
pub mod index;
pub mod journal;
pub mod matching;
pub mod replay;
pub mod server;
pub mod surge;
pub(crate) mod telemetry;

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
