//! What an operator sees of a running engine: Prometheus metrics and trip log lines.
//!
//! It exists apart from the dispatcher so that observing never changes or slows dispatching:
//! - [`metrics`]: the registry (atomic counters and small histograms) and its Prometheus text.
//! - `follower`: a task that follows the [`EventBus`](crate::events::EventBus) like any
//!   subscriber and derives counters, histograms and one log line per trip state change.
//! - `http`: a minimal HTTP/1.1 responder serving `GET /metrics`.
//!
//! Gauges (drivers by state, open trips, queue depths) are read at scrape time from the engine,
//! and the edge (`grpc`) counts rejected and shed calls and times RequestTrip.

mod follower;
mod http;
pub mod metrics;

pub use follower::spawn_follower;
pub use http::serve_metrics;
pub use metrics::Metrics;
