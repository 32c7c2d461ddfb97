//! What an operator sees of a running engine: Prometheus metrics and trip log lines.
//!
//! It exists apart from the dispatcher so that observing never changes or slows dispatching:
//! - [`metrics`]: the registry (prometheus-client counters, histograms and a scrape-time
//!   collector) and its Prometheus / OpenMetrics text.
//! - `follower`: a task that follows the [`EventBus`](crate::events::EventBus) like any
//!   subscriber and derives counters, histograms and one log line per trip state change.
//!
//! Gauges (drivers by state, open trips, queue depths) are read at scrape time from the engine
//! (with regions, every region engine served here, summed: [`Scope`]),
//! and the edge (`grpc`) counts rejected and shed calls and times RequestTrip. The HTTP side
//! ([`http`](crate::http)) serves [`scrape`] on `/metrics`.

mod follower;
pub(crate) mod metrics;

use std::time::Duration;

use crate::engine::Engine;
use crate::engine::Stats;

pub(crate) use follower::spawn_follower;
pub(crate) use metrics::{Format, Metrics};

/// How long a scrape waits for the dispatcher's stats and the event follower.
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

/// The engines a scrape reads its gauges from: the one engine, or (with regions) every region
/// engine served by this process at the moment of the scrape.
pub(crate) trait Scope: Send + Sync + std::fmt::Debug {
    fn engines(&self) -> Vec<Engine>;
}

impl Scope for Engine {
    fn engines(&self) -> Vec<Engine> {
        vec![self.clone()]
    }
}

/// The exposition in `format`, after the followers have counted every event published before
/// the scrape began, with fresh stats if every dispatcher answers in time (else the last ones
/// seen). With several engines the gauges are their sum, and `next_event_offset` (offsets are
/// per region) is 0, as in GetStats.
pub(crate) async fn scrape(scope: &dyn Scope, metrics: &Metrics, format: Format) -> String {
    let engines = scope.engines();
    let deadline = tokio::time::Instant::now() + SCRAPE_WAIT;
    for engine in &engines {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        metrics
            .wait_followed(engine.bus().next_offset(), left)
            .await;
    }
    let mut total: Option<Stats> = Some(Stats::default());
    for engine in &engines {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let stats = tokio::time::timeout(left.max(Duration::from_millis(50)), engine.stats())
            .await
            .ok()
            .and_then(Result::ok);
        total = match (total, stats) {
            (Some(_), Some(s)) if engines.len() == 1 => Some(s),
            (Some(t), Some(s)) => Some(add(t, &s)),
            _ => None,
        };
    }
    metrics.render(&engines, total, format)
}

/// Two regions' stats summed (offsets are per region: 0).
fn add(a: Stats, b: &Stats) -> Stats {
    Stats {
        drivers_offline: a.drivers_offline + b.drivers_offline,
        drivers_available: a.drivers_available + b.drivers_available,
        drivers_offered: a.drivers_offered + b.drivers_offered,
        drivers_on_trip: a.drivers_on_trip + b.drivers_on_trip,
        open_trips: a.open_trips + b.open_trips,
        pending_offers: a.pending_offers + b.pending_offers,
        next_event_offset: 0,
        location_updates: a.location_updates + b.location_updates,
        trips_requested: a.trips_requested + b.trips_requested,
        trips_completed: a.trips_completed + b.trips_completed,
        trips_cancelled: a.trips_cancelled + b.trips_cancelled,
        trips_no_drivers: a.trips_no_drivers + b.trips_no_drivers,
    }
}
