//! What an operator sees of a running engine: Prometheus metrics and trip log lines.
//!
//! It exists apart from the dispatcher so that observing never changes or slows dispatching:
//! - [`metrics`]: the registry (prometheus-client counters, histograms and a scrape-time
//!   collector) and its Prometheus / OpenMetrics text.
//! - `follower`: a task that follows the [`EventBus`](crate::events::EventBus) like any
//!   subscriber and derives counters, histograms and one log line per trip state change.
//!
//! Gauges (drivers by state, open trips, queue depths) are read at scrape time from the engine,
//! and the edge (`grpc`) counts rejected and shed calls and times RequestTrip. The HTTP side
//! ([`http`](crate::http)) serves [`scrape`] on `/metrics`.

mod follower;
pub(crate) mod metrics;

use std::time::Duration;

use crate::engine::Engine;

pub(crate) use follower::spawn_follower;
pub(crate) use metrics::{Format, Metrics};

/// How long a scrape waits for the dispatcher's stats and the event follower.
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

/// The exposition in `format`, after the follower has counted every event published before the
/// scrape began, with fresh stats if the dispatcher answers in time (else the last ones seen).
pub(crate) async fn scrape(engine: &Engine, metrics: &Metrics, format: Format) -> String {
    metrics
        .wait_followed(engine.bus().next_offset(), SCRAPE_WAIT)
        .await;
    let stats = tokio::time::timeout(SCRAPE_WAIT, engine.stats())
        .await
        .ok()
        .and_then(Result::ok);
    metrics.render(engine, stats, format)
}
