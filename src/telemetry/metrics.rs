//! The metrics registry and its Prometheus text exposition (format 0.0.4).
//!
//! Counters are relaxed atomics: they are only ever added to, and a scrape that sees one a
//! moment late is still correct. Histograms are a few buckets under a parking_lot mutex held
//! for a handful of additions, never across an `.await`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::engine::{Engine, Stats};

/// How an offer ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferOutcome {
    /// The driver accepted.
    Accepted,
    /// The driver declined.
    Declined,
    /// The window passed.
    Expired,
    /// Withdrawn (trip cancelled, driver offline).
    Cancelled,
}

const OFFER_OUTCOMES: [&str; 4] = ["accepted", "declined", "expired", "cancelled"];

/// How a trip ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripEnd {
    /// Dropped off.
    Completed,
    /// Cancelled by rider or driver.
    Cancelled,
    /// Nobody accepted in time.
    NoDrivers,
}

const TRIP_ENDS: [&str; 3] = ["completed", "cancelled", "no_drivers"];

/// gRPC status code names, indexed by code.
const CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// A fixed-bucket histogram of seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds_s: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug)]
struct HistogramState {
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum_s: f64,
}

impl Histogram {
    fn new(bounds_s: &'static [f64]) -> Self {
        Histogram {
            bounds_s,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds_s.len() + 1],
                sum_s: 0.0,
            }),
        }
    }

    /// Records one observation, seconds.
    pub fn observe(&self, value_s: f64) {
        let i = self.bounds_s.partition_point(|&b| b < value_s);
        let mut s = self.state.lock();
        s.counts[i] += 1;
        s.sum_s += value_s;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let (counts, sum) = {
            let s = self.state.lock();
            (s.counts.clone(), s.sum_s)
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds_s.iter().zip(&counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts[self.bounds_s.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Every metric the engine exports, shared by the edge, the event follower and the scraper.
#[derive(Debug)]
pub struct Metrics {
    trip_requests: AtomicU64,
    offers_sent: AtomicU64,
    offers_ended: [AtomicU64; 4],
    trips_ended: [AtomicU64; 3],
    rejected: [AtomicU64; 17],
    shed_concurrency: AtomicU64,
    /// Location updates rejected, by reason name (a handful of fixed names).
    location_rejections: Mutex<BTreeMap<&'static str, u64>>,
    /// Seconds from a RequestTrip arriving to its answer, at the edge.
    pub request_trip_latency: Histogram,
    /// Seconds from an offer being sent to its acceptance (dispatcher time).
    pub time_to_accept: Histogram,
    /// Pickup ETA of assigned trips, seconds.
    pub pickup_eta: Histogram,
    /// The last stats read, shown if the dispatcher cannot answer a scrape in time.
    last_stats: Mutex<Option<Stats>>,
    /// Offset of the next event the follower will count.
    followed: watch::Sender<u64>,
}

impl Metrics {
    /// An empty registry whose follower starts at event `from_offset`.
    pub fn new(from_offset: u64) -> Self {
        Metrics {
            trip_requests: AtomicU64::new(0),
            offers_sent: AtomicU64::new(0),
            offers_ended: Default::default(),
            trips_ended: Default::default(),
            rejected: Default::default(),
            shed_concurrency: AtomicU64::new(0),
            location_rejections: Mutex::new(BTreeMap::new()),
            request_trip_latency: Histogram::new(&[
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            time_to_accept: Histogram::new(&[1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0]),
            pickup_eta: Histogram::new(&[
                30.0, 60.0, 120.0, 180.0, 300.0, 420.0, 600.0, 900.0, 1200.0,
            ]),
            last_stats: Mutex::new(None),
            followed: watch::channel(from_offset).0,
        }
    }

    /// A trip was requested.
    pub fn trip_requested(&self) {
        self.trip_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Trips requested so far (the follower's tests read it back).
    #[cfg(test)]
    pub(crate) fn trips_requested(&self) -> u64 {
        self.trip_requests.load(Ordering::Relaxed)
    }

    /// An offer was sent.
    pub fn offer_sent(&self) {
        self.offers_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// An offer ended.
    pub fn offer_ended(&self, outcome: OfferOutcome) {
        self.offers_ended[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A trip reached a terminal state.
    pub fn trip_ended(&self, end: TripEnd) {
        self.trips_ended[end as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A call was answered with a non-OK status `code` (a `tonic::Code` as i32).
    pub fn rejected(&self, code: i32) {
        if let Some(c) = usize::try_from(code)
            .ok()
            .and_then(|i| self.rejected.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call was refused by the global concurrency limit.
    pub fn shed_by_concurrency_limit(&self) {
        self.shed_concurrency.fetch_add(1, Ordering::Relaxed);
    }

    /// `count` location updates were rejected for `reason` (the wire enum's name).
    pub fn location_rejected(&self, reason: &'static str, count: u64) {
        *self.location_rejections.lock().entry(reason).or_default() += count;
    }

    /// The follower has counted every event before `offset`.
    pub(crate) fn followed_up_to(&self, offset: u64) {
        self.followed.send_replace(offset);
    }

    /// Waits (at most `limit`) until the follower has counted every event before `offset`, so
    /// a scrape reflects every call answered before it began.
    pub(crate) async fn wait_followed(&self, offset: u64, limit: Duration) {
        let mut rx = self.followed.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|&done| done >= offset)).await;
    }

    /// The exposition text. Gauges come from `stats` (or the last stats seen) and the engine.
    pub fn render(&self, engine: &Engine, stats: Option<Stats>) -> String {
        let stats = match stats {
            Some(s) => {
                *self.last_stats.lock() = Some(s.clone());
                Some(s)
            }
            None => self.last_stats.lock().clone(),
        };
        let mut out = String::with_capacity(8 * 1024);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let labelled = |out: &mut String, name, kind, help, label, values: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (l, v) in values {
                let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
            }
        };

        counter(
            &mut out,
            "dispatch_trip_requests_total",
            "Trips requested (new trips, not idempotent retries).",
            load(&self.trip_requests),
        );
        counter(
            &mut out,
            "dispatch_offers_sent_total",
            "Offers sent to drivers.",
            load(&self.offers_sent),
        );
        let ended: Vec<_> = OFFER_OUTCOMES
            .iter()
            .zip(&self.offers_ended)
            .map(|(l, c)| (*l, load(c)))
            .collect();
        labelled(
            &mut out,
            "dispatch_offers_total",
            "counter",
            "Offers ended, by outcome.",
            "outcome",
            &ended,
        );
        let trips: Vec<_> = TRIP_ENDS
            .iter()
            .zip(&self.trips_ended)
            .map(|(l, c)| (*l, load(c)))
            .collect();
        labelled(
            &mut out,
            "dispatch_trips_total",
            "counter",
            "Trips ended, by terminal state.",
            "state",
            &trips,
        );
        let rejected: Vec<_> = CODES
            .iter()
            .zip(&self.rejected)
            .skip(1)
            .map(|(l, c)| (*l, load(c)))
            .collect();
        labelled(
            &mut out,
            "dispatch_rejected_requests_total",
            "counter",
            "Calls answered with an error, by gRPC status (the reason).",
            "code",
            &rejected,
        );
        let counters = engine.counters();
        labelled(
            &mut out,
            "dispatch_shed_requests_total",
            "counter",
            "Calls refused with RESOURCE_EXHAUSTED because of overload, by where.",
            "reason",
            &[
                ("dispatcher_queue_full", load(&counters.shed_commands)),
                ("concurrency_limit", load(&self.shed_concurrency)),
            ],
        );
        counter(
            &mut out,
            "dispatch_location_batches_shed_total",
            "Location batches dropped because the location queue was full.",
            load(&counters.shed_location_batches),
        );
        let rejections: Vec<(String, u64)> = self
            .location_rejections
            .lock()
            .iter()
            .map(|(name, n)| {
                let label = name.trim_start_matches("LOCATION_REJECTION_");
                (label.to_ascii_lowercase(), *n)
            })
            .collect();
        let rejections: Vec<(&str, u64)> =
            rejections.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        labelled(
            &mut out,
            "dispatch_location_updates_rejected_total",
            "counter",
            "Location updates rejected in ReportLocations, by reason.",
            "reason",
            &rejections,
        );
        let (control, location) = engine.queue_depth();
        labelled(
            &mut out,
            "dispatch_dispatcher_queue_depth",
            "gauge",
            "Messages waiting for the dispatcher thread.",
            "queue",
            &[("control", control as u64), ("location", location as u64)],
        );
        gauge(
            &mut out,
            "dispatch_subscribers",
            "Event-bus followers: event, offer and trip streams plus internal ones.",
            engine.bus().follower_count() as u64,
        );
        if let Some(s) = stats {
            counter(
                &mut out,
                "dispatch_location_updates_total",
                "Location updates applied.",
                s.location_updates,
            );
            labelled(
                &mut out,
                "dispatch_drivers",
                "gauge",
                "Known drivers, by state.",
                "state",
                &[
                    ("offline", s.drivers_offline),
                    ("available", s.drivers_available),
                    ("offered", s.drivers_offered),
                    ("on_trip", s.drivers_on_trip),
                ],
            );
            gauge(
                &mut out,
                "dispatch_open_trips",
                "Trips not in a terminal state.",
                s.open_trips,
            );
            gauge(
                &mut out,
                "dispatch_pending_offers",
                "Offers awaiting an answer.",
                s.pending_offers,
            );
            gauge(
                &mut out,
                "dispatch_next_event_offset",
                "Offset the next dispatch event will get.",
                s.next_event_offset,
            );
        }
        self.request_trip_latency.render(
            &mut out,
            "dispatch_request_trip_duration_seconds",
            "RequestTrip calls from arrival to answer, at the gRPC edge.",
        );
        self.time_to_accept.render(
            &mut out,
            "dispatch_time_to_accept_seconds",
            "From an offer being sent to the driver accepting it.",
        );
        self.pickup_eta.render(
            &mut out,
            "dispatch_pickup_eta_seconds",
            "Estimated pickup ETA of assigned trips.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 6\nx_count 4\n"), "{out}");
    }
}
