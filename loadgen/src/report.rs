//! What a run found: the JSON report (field names are a contract with whoever reads it), the
//! summary table for people; the statistics behind them (`stats`) and the host readings (`host`).
//!
//! Latencies are recorded in microseconds in HdrHistograms (3 significant digits) at the
//! client and reported in milliseconds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

mod host;
mod stats;

pub use host::{load_average_1m, pid_cpu_s, pid_rss_mib, process_cpu_s};
pub use stats::{Percentiles, gini, latency_histogram, record_us};

/// Everything a run measured. The first block of fields is the contract named in issue 4; the
/// rest explain them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// `city`, `ingest` or `nearby`.
    pub mode: String,
    /// The matching policy of the engine loadgen started (`greedy`, `batch`), when it set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The ETA model of the engine loadgen started (`road`, `haversine`), when it set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_model: Option<String>,
    /// The `--map` the city ran on, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
    /// Length of the measured window, seconds (warm-up excluded).
    pub duration_s: f64,
    /// Simulated drivers.
    pub drivers: u64,
    /// Location updates the server confirmed as applied (LocationSummary.accepted).
    pub location_updates: u64,
    /// `location_updates / duration_s`.
    pub location_updates_per_s: f64,
    /// Trips created (RequestTrip returned a trip).
    pub requests: u64,
    /// `requests / duration_s`.
    pub requests_per_s: f64,
    /// Requests whose trip a driver accepted.
    pub matched: u64,
    /// `matched / (matched + no_drivers + cancelled)`: the share of decided requests that
    /// found a driver (requests still open at the end are not counted either way).
    pub match_rate: f64,
    /// Requests that ended NO_DRIVERS.
    pub no_drivers: u64,
    /// Requests the rider cancelled before a driver accepted.
    pub cancelled: u64,
    /// Requests neither matched, nor no_drivers, nor cancelled at the end.
    pub still_open: u64,
    /// Offers received on the gateway streams for this run's trips.
    pub offers: u64,
    /// `offers / requests`.
    pub offers_per_trip: f64,
    /// Offers that expired unanswered (the 15 s window).
    pub offer_timeouts: u64,
    /// Failed RPCs and unexpected statuses (expected races are in `conflicts`).
    pub errors: u64,
    /// From sending RequestTrip to the first offer reaching the driver gateway.
    pub request_to_offer_ms: Percentiles,
    /// From sending RequestTrip to its reply (the trip, usually already OFFERED): beside
    /// `request_to_offer_ms`, it tells the RPC's own time from the offer's way to the gateway.
    #[serde(default)]
    pub request_to_reply_ms: Percentiles,
    /// From sending RequestTrip to the driver's accept being confirmed.
    pub request_to_accept_ms: Percentiles,
    /// NearbyDrivers queries per second (nearby mode).
    pub nearby_queries_per_s: f64,
    /// NearbyDrivers latency (nearby mode).
    pub nearby_ms: Percentiles,
    /// Mean pickup ETA of accepted offers, seconds.
    pub mean_pickup_eta_s: f64,
    /// Mean time the accepting driver actually needs to reach the pickup, seconds: the
    /// simulation's own drive time from where the driver was when the offer arrived (on the
    /// road graph with `--map`, on the grid otherwise), at real speed (not scaled by
    /// `--trip-time-scale`). What riders wait, whatever the engine estimated; the yardstick
    /// for comparing ETA models.
    pub mean_actual_pickup_s: f64,
    /// Gini coefficient of trips assigned per simulated driver.
    pub driver_trips_gini: f64,

    /// The run's seed.
    pub seed: u64,
    /// Seconds spent bringing drivers online before the measured window.
    pub warmup_s: f64,
    /// RequestTrip calls sent (`requests` plus the ones that failed).
    pub requests_sent: u64,
    /// Location updates sent.
    pub location_updates_sent: u64,
    /// Location updates the server did not apply, by any reason.
    pub location_rejected: u64,
    /// Of those, updates in batches the server shed under overload.
    pub location_shed: u64,
    /// Location batches the load generator itself dropped because a stream was backed up.
    pub location_batches_dropped: u64,
    /// Offers whose pickup ETA the engine routed on its road graph (`eta_source` ROAD).
    pub offers_eta_road: u64,
    /// Offers whose pickup ETA fell back to the straight line because the road model could
    /// not place the driver or the pickup on its roads.
    pub offers_eta_fallback: u64,
    /// Offers the simulated drivers declined.
    pub declines: u64,
    /// Trips driven to the drop-off and completed.
    pub trips_completed: u64,
    /// Driver online/offline transitions during the measured window.
    pub driver_churn: u64,
    /// NearbyDrivers queries answered.
    pub nearby_queries: u64,
    /// Expected races answered FAILED_PRECONDITION (e.g. an accept crossing a rider cancel).
    pub conflicts: u64,
    /// Up to 10 error messages, to help find the cause.
    pub error_examples: Vec<String>,
    /// CPU seconds the load generator itself used (user + system, whole run, Linux only).
    pub loadgen_cpu_s: f64,
    /// City mode with a known server pid: CPU seconds the server used during the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// Events the server published during the window (GetStats `next_event_offset` delta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_published: Option<u64>,
    /// `server_cpu_s / events_published`, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_event: Option<f64>,
    /// Nearby mode with a known server pid: `server_cpu_s / nearby_queries`, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_query: Option<f64>,
    /// With a known server pid: the server's resident memory at the end of the window, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_rss_mib: Option<f64>,
    /// `--watch-trips`: WatchTrip streams kept open.
    #[serde(default)]
    pub watch_trips: u64,
    /// WatchTrip streams opened over the run.
    #[serde(default)]
    pub watch_streams_opened: u64,
    /// Updates received on them.
    #[serde(default)]
    pub watch_updates: u64,
    /// The host's 1-minute load average at the end of the run (Linux only): on a 2-core
    /// machine, figures taken above ~2 were shared with other work.
    pub host_load_1m: f64,
    /// Raw samples behind the figures, for the charts (not in the JSON).
    #[serde(skip)]
    pub samples: Samples,
}

/// The raw distributions a run collected, kept for `--plots`.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Request -> first offer, microseconds.
    pub request_to_offer_us: Option<Histogram<u64>>,
    /// Request -> accept, microseconds.
    pub request_to_accept_us: Option<Histogram<u64>>,
    /// NearbyDrivers latency, microseconds.
    pub nearby_us: Option<Histogram<u64>>,
    /// Pickup ETA of each accepted offer, seconds.
    pub pickup_etas_s: Vec<f64>,
    /// Trips assigned to each simulated driver.
    pub trips_per_driver: Vec<u32>,
}

impl Report {
    /// Fills the derived rates from the counts and the duration.
    pub fn finish_rates(&mut self) {
        let per_s = |n: u64, d: f64| if d > 0.0 { n as f64 / d } else { 0.0 };
        self.location_updates_per_s = per_s(self.location_updates, self.duration_s);
        self.requests_per_s = per_s(self.requests, self.duration_s);
        self.nearby_queries_per_s = per_s(self.nearby_queries, self.duration_s);
        let decided = self.matched + self.no_drivers + self.cancelled;
        self.match_rate = if decided > 0 {
            self.matched as f64 / decided as f64
        } else {
            0.0
        };
        self.offers_per_trip = if self.requests > 0 {
            self.offers as f64 / self.requests as f64
        } else {
            0.0
        };
    }

    /// Whether every request is accounted for exactly once.
    pub fn accounted(&self) -> bool {
        self.matched + self.no_drivers + self.cancelled + self.still_open == self.requests
    }

    /// A readable summary for stdout.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            // Writing to a String cannot fail.
            let _ = writeln!(s, "  {k:<24} {v}");
        };
        let lat = |p: &Percentiles| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (n={})",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            )
        };
        row("mode", self.mode.clone());
        row(
            "duration",
            format!("{:.1} s (warm-up {:.1} s)", self.duration_s, self.warmup_s),
        );
        row("drivers", self.drivers.to_string());
        if let Some(map) = &self.map {
            row("map", map.clone());
        }
        if let Some(eta) = &self.eta_model {
            row("engine ETA model", eta.clone());
        }
        row(
            "errors",
            format!("{} (conflicts {})", self.errors, self.conflicts),
        );
        row(
            "host",
            format!(
                "loadgen used {:.1} CPU s; 1-min load average {:.2}",
                self.loadgen_cpu_s, self.host_load_1m
            ),
        );
        match self.mode.as_str() {
            "nearby" => {
                row(
                    "nearby queries",
                    format!(
                        "{} ({:.0}/s)",
                        self.nearby_queries, self.nearby_queries_per_s
                    ),
                );
                row("nearby latency", lat(&self.nearby_ms));
                if let (Some(cpu), Some(per)) = (self.server_cpu_s, self.server_cpu_us_per_query) {
                    row(
                        "server CPU per query",
                        format!(
                            "{per:.1} us ({cpu:.1} CPU s over {} queries in the window)",
                            self.nearby_queries
                        ),
                    );
                }
            }
            _ => {
                row(
                    "location updates",
                    format!(
                        "{} confirmed ({:.0}/s), {} sent, {} rejected ({} shed), {} batches dropped locally",
                        self.location_updates,
                        self.location_updates_per_s,
                        self.location_updates_sent,
                        self.location_rejected,
                        self.location_shed,
                        self.location_batches_dropped
                    ),
                );
            }
        }
        if self.mode == "city" {
            row(
                "requests",
                format!(
                    "{} ({:.1}/s), {} sent",
                    self.requests, self.requests_per_s, self.requests_sent
                ),
            );
            row(
                "outcomes",
                format!(
                    "matched {}  no_drivers {}  cancelled {}  still_open {}",
                    self.matched, self.no_drivers, self.cancelled, self.still_open
                ),
            );
            row("match rate", format!("{:.4}", self.match_rate));
            row(
                "offers",
                format!(
                    "{} ({:.2}/trip), {} declined, {} expired",
                    self.offers, self.offers_per_trip, self.declines, self.offer_timeouts
                ),
            );
            row(
                "offer ETA sources",
                format!(
                    "{} routed on roads, {} straight-line fallbacks, {} straight-line",
                    self.offers_eta_road,
                    self.offers_eta_fallback,
                    self.offers
                        .saturating_sub(self.offers_eta_road + self.offers_eta_fallback)
                ),
            );
            row("request -> offer", lat(&self.request_to_offer_ms));
            row("request -> reply", lat(&self.request_to_reply_ms));
            row("request -> accept", lat(&self.request_to_accept_ms));
            row(
                "mean pickup ETA",
                format!(
                    "{:.1} s estimated, {:.1} s actual drive",
                    self.mean_pickup_eta_s, self.mean_actual_pickup_s
                ),
            );
            row("trips completed", self.trips_completed.to_string());
            row(
                "driver trips gini",
                format!("{:.3}", self.driver_trips_gini),
            );
            row("driver churn", self.driver_churn.to_string());
            if self.watch_trips > 0 {
                row(
                    "trip watchers",
                    format!(
                        "{} kept open, {} opened, {} updates",
                        self.watch_trips, self.watch_streams_opened, self.watch_updates
                    ),
                );
            }
            if let (Some(cpu), Some(events)) = (self.server_cpu_s, self.events_published) {
                row(
                    "server CPU per event",
                    format!(
                        "{:.2} us ({cpu:.1} CPU s over {events} events in the window)",
                        self.server_cpu_us_per_event.unwrap_or(0.0)
                    ),
                );
            }
        }
        if let Some(rss) = self.server_rss_mib {
            row(
                "server RSS",
                format!("{rss:.0} MiB at the end of the window"),
            );
        }
        for e in &self.error_examples {
            row("error example", e.clone());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gini_of_equal_counts_is_zero_and_of_one_winner_is_near_one() {
        assert_eq!(gini(&[]), 0.0);
        assert_eq!(gini(&[0, 0, 0]), 0.0);
        assert!(gini(&[3, 3, 3, 3]).abs() < 1e-12);
        let mut v = vec![0u32; 99];
        v.push(10);
        assert!((gini(&v) - 0.99).abs() < 1e-9);
        // Known value: [1, 2, 3, 4] -> 0.25.
        assert!((gini(&[4, 1, 3, 2]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn percentiles_are_monotone_and_in_milliseconds() {
        let mut h = latency_histogram();
        for us in 1..=10_000u64 {
            record_us(&mut h, us);
        }
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        let p = Percentiles::from_us(&h);
        assert!(p.is_monotone(), "{p:?}");
        assert!((p.p50 - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.p99 - 9.9).abs() < 0.02, "{p:?}");
        assert_eq!(p.count, 10_002);
        assert_eq!(
            Percentiles::from_us(&latency_histogram()),
            Percentiles::default()
        );
    }

    #[test]
    fn json_has_the_contract_field_names() {
        let mut r = Report {
            mode: "city".into(),
            duration_s: 10.0,
            requests: 100,
            matched: 90,
            no_drivers: 5,
            cancelled: 2,
            still_open: 3,
            offers: 120,
            location_updates: 5000,
            ..Report::default()
        };
        r.finish_rates();
        assert!(r.accounted());
        assert!((r.match_rate - 90.0 / 97.0).abs() < 1e-12);
        assert_eq!(r.offers_per_trip, 1.2);
        assert_eq!(r.location_updates_per_s, 500.0);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for k in [
            "mode",
            "duration_s",
            "drivers",
            "location_updates",
            "location_updates_per_s",
            "requests",
            "requests_per_s",
            "matched",
            "match_rate",
            "no_drivers",
            "cancelled",
            "still_open",
            "offers",
            "offers_per_trip",
            "offer_timeouts",
            "errors",
            "request_to_offer_ms",
            "request_to_reply_ms",
            "request_to_accept_ms",
            "nearby_queries_per_s",
            "nearby_ms",
            "mean_pickup_eta_s",
            "mean_actual_pickup_s",
            "driver_trips_gini",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["request_to_offer_ms"].get(k).is_some(), "missing {k}");
        }
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.matched, 90);
        assert!(r.table().contains("still_open 3"));
    }
}
