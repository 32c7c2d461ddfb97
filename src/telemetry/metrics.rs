//! The metrics registry, encoded by the `prometheus-client` crate as Prometheus text (0.0.4)
//! or OpenMetrics, whichever the scraper asks for.
//!
//! Event counts and latencies are `prometheus-client` counters and histograms, updated by the
//! event follower and the edge (atomics; the histograms take a short lock per observation,
//! never across an `.await`). What is read at scrape time (drivers by state, open trips, queue
//! depths, shed counters kept by the engine) is a [`Collector`] over the values the scrape
//! fetched just before encoding. The names, types and labels are the ones the hand-written
//! encoder served before; `tests/http_metrics.rs` compares them with a fixture of that output.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::engine::{Engine, Stats};

/// How an offer ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OfferOutcome {
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
pub(crate) enum TripEnd {
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

/// Which exposition format a scrape gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text, version 0.0.4 (`text/plain`), the default.
    Prometheus,
    /// OpenMetrics text 1.0 (`application/openmetrics-text`), when the scraper accepts it.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub(crate) fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The response's content type.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// One label, as prometheus-client encodes it.
type Label = [(&'static str, &'static str); 1];

/// Every metric the engine exports, shared by the edge, the event follower and the scraper.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    trip_requests: Counter,
    offers_sent: Counter,
    offers_ended: Family<Label, Counter>,
    trips_ended: Family<Label, Counter>,
    rejected: Family<Label, Counter>,
    /// Seconds from a RequestTrip arriving to its answer, at the edge.
    pub request_trip_latency: Histogram,
    /// Seconds from an offer being sent to its acceptance (dispatcher time).
    pub time_to_accept: Histogram,
    /// Pickup ETA of assigned trips, seconds.
    pub pickup_eta: Histogram,
    /// What the scrape-time collector encodes; set by each scrape before encoding.
    scraped: Arc<Mutex<Scraped>>,
    /// Offset of the next event the follower will count, per region (keyed by the offset's
    /// region, `offset / REGION_ID_SPAN`: one key for a single engine).
    followed: watch::Sender<BTreeMap<u64, u64>>,
}

impl Metrics {
    /// An empty registry whose follower starts at event `from_offset`.
    pub(crate) fn new(from_offset: u64) -> Self {
        let mut registry = Registry::default();
        // prometheus-client appends `_total` to counter names itself.
        let trip_requests = Counter::default();
        registry.register(
            "dispatch_trip_requests",
            "Trips requested (new trips, not idempotent retries)",
            trip_requests.clone(),
        );
        let offers_sent = Counter::default();
        registry.register(
            "dispatch_offers_sent",
            "Offers sent to drivers",
            offers_sent.clone(),
        );
        let offers_ended = labelled(&OFFER_OUTCOMES, "outcome");
        registry.register(
            "dispatch_offers",
            "Offers ended, by outcome",
            offers_ended.clone(),
        );
        let trips_ended = labelled(&TRIP_ENDS, "state");
        registry.register(
            "dispatch_trips",
            "Trips ended, by terminal state",
            trips_ended.clone(),
        );
        let rejected = labelled(&CODES[1..], "code");
        registry.register(
            "dispatch_rejected_requests",
            "Calls answered with an error, by gRPC status (the reason)",
            rejected.clone(),
        );
        let scraped = Arc::new(Mutex::new(Scraped::default()));
        registry.register_collector(Box::new(ScrapeCollector(scraped.clone())));
        let histogram = |registry: &mut Registry, name: &str, help: &str, bounds: &[f64]| {
            let h = Histogram::new(bounds.iter().copied());
            registry.register(name, help, h.clone());
            h
        };
        let request_trip_latency = histogram(
            &mut registry,
            "dispatch_request_trip_duration_seconds",
            "RequestTrip calls from arrival to answer, at the gRPC edge",
            &[
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        );
        let time_to_accept = histogram(
            &mut registry,
            "dispatch_time_to_accept_seconds",
            "From an offer being sent to the driver accepting it",
            &[1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0],
        );
        let pickup_eta = histogram(
            &mut registry,
            "dispatch_pickup_eta_seconds",
            "Estimated pickup ETA of assigned trips",
            &[30.0, 60.0, 120.0, 180.0, 300.0, 420.0, 600.0, 900.0, 1200.0],
        );
        Metrics {
            registry,
            trip_requests,
            offers_sent,
            offers_ended,
            trips_ended,
            rejected,
            request_trip_latency,
            time_to_accept,
            pickup_eta,
            scraped,
            followed: watch::channel(BTreeMap::from([(span_of(from_offset), from_offset)])).0,
        }
    }

    /// A trip was requested.
    pub(crate) fn trip_requested(&self) {
        self.trip_requests.inc();
    }

    /// Trips requested so far (the follower's tests read it back).
    #[cfg(test)]
    pub(crate) fn trips_requested(&self) -> u64 {
        self.trip_requests.get()
    }

    /// An offer was sent.
    pub(crate) fn offer_sent(&self) {
        self.offers_sent.inc();
    }

    /// An offer ended.
    pub(crate) fn offer_ended(&self, outcome: OfferOutcome) {
        let label = OFFER_OUTCOMES[outcome as usize];
        self.offers_ended.get_or_create(&[("outcome", label)]).inc();
    }

    /// A trip reached a terminal state.
    pub(crate) fn trip_ended(&self, end: TripEnd) {
        let label = TRIP_ENDS[end as usize];
        self.trips_ended.get_or_create(&[("state", label)]).inc();
    }

    /// A call was answered with a non-OK status `code` (a `tonic::Code` as i32).
    pub(crate) fn rejected(&self, code: i32) {
        if let Some(&name) = usize::try_from(code)
            .ok()
            .filter(|&i| i > 0)
            .and_then(|i| CODES.get(i))
        {
            self.rejected.get_or_create(&[("code", name)]).inc();
        }
    }

    /// A call was refused by the global concurrency limit.
    pub(crate) fn shed_by_concurrency_limit(&self) {
        self.scraped.lock().shed_concurrency += 1;
    }

    /// `count` location updates were rejected for `reason` (the wire enum's name).
    pub(crate) fn location_rejected(&self, reason: &'static str, count: u64) {
        let label = reason
            .trim_start_matches("LOCATION_REJECTION_")
            .to_ascii_lowercase();
        *self
            .scraped
            .lock()
            .location_rejections
            .entry(label)
            .or_default() += count;
    }

    /// The follower of `offset`'s region has counted every event before `offset`.
    pub(crate) fn followed_up_to(&self, offset: u64) {
        self.followed.send_modify(|m| {
            m.insert(span_of(offset), offset);
        });
    }

    /// Waits (at most `limit`) until the follower of `offset`'s region has counted every event
    /// before `offset`, so a scrape reflects every call answered before it began.
    pub(crate) async fn wait_followed(&self, offset: u64, limit: Duration) {
        let mut rx = self.followed.subscribe();
        let key = span_of(offset);
        let _ = tokio::time::timeout(
            limit,
            rx.wait_for(|m| m.get(&key).is_some_and(|&done| done >= offset)),
        )
        .await;
    }

    /// The exposition in `format`. Gauges come from `stats` (or the last stats seen) and the
    /// engines, summed over them (every region served here).
    pub(crate) fn render(
        &self,
        engines: &[Engine],
        stats: Option<Stats>,
        format: Format,
    ) -> String {
        {
            let mut s = self.scraped.lock();
            if stats.is_some() {
                s.stats = stats;
            }
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            (s.shed_commands, s.shed_location_batches, s.subscribers) = (0, 0, 0);
            s.queue_depth = (0, 0);
            for engine in engines {
                let counters = engine.counters();
                s.shed_commands += counters.shed_commands.load(relaxed);
                s.shed_location_batches += counters.shed_location_batches.load(relaxed);
                let (control, location) = engine.queue_depth();
                s.queue_depth.0 += control;
                s.queue_depth.1 += location;
                s.subscribers += engine.bus().follower_count() as u64;
            }
        }
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail, and every name and label here is valid.
        let encoded = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        if let Err(e) = encoded {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// The region of an event offset (0 for a single engine's).
fn span_of(offset: u64) -> u64 {
    offset / crate::cluster::regions::REGION_ID_SPAN
}

/// A counter family with every label value present from the start (at 0), as before.
fn labelled(values: &[&'static str], key: &'static str) -> Family<Label, Counter> {
    let family = Family::<Label, Counter>::default();
    for v in values {
        let _ = family.get_or_create(&[(key, *v)]);
    }
    family
}

/// Values read at scrape time.
#[derive(Debug, Default)]
struct Scraped {
    stats: Option<Stats>,
    shed_commands: u64,
    shed_concurrency: u64,
    shed_location_batches: u64,
    queue_depth: (usize, usize),
    subscribers: u64,
    /// Location updates rejected, by reason (a handful of fixed names, lower case). Kept here
    /// rather than in a `Family` so the family is listed (empty) before the first rejection,
    /// as it always was.
    location_rejections: std::collections::BTreeMap<String, u64>,
}

/// Encodes [`Scraped`]: the metrics that are not event counts.
#[derive(Debug)]
struct ScrapeCollector(Arc<Mutex<Scraped>>);

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.lock();
        let mut family = |name: &str,
                          help: &str,
                          kind: MetricType,
                          label: &'static str,
                          values: &[(&'static str, u64)]|
         -> Result<(), std::fmt::Error> {
            let mut m = encoder.encode_descriptor(name, help, None, kind)?;
            for &(l, v) in values {
                let labels = [(label, l)];
                let series = m.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(v).encode(series)?,
                    _ => ConstGauge::new(v).encode(series)?,
                }
            }
            Ok(())
        };
        family(
            "dispatch_shed_requests",
            "Calls refused with RESOURCE_EXHAUSTED because of overload, by where",
            MetricType::Counter,
            "reason",
            &[
                ("dispatcher_queue_full", s.shed_commands),
                ("concurrency_limit", s.shed_concurrency),
            ],
        )?;
        let (control, location) = s.queue_depth;
        family(
            "dispatch_dispatcher_queue_depth",
            "Messages waiting for the dispatcher thread",
            MetricType::Gauge,
            "queue",
            &[("control", control as u64), ("location", location as u64)],
        )?;
        if let Some(st) = &s.stats {
            family(
                "dispatch_drivers",
                "Known drivers, by state",
                MetricType::Gauge,
                "state",
                &[
                    ("offline", st.drivers_offline),
                    ("available", st.drivers_available),
                    ("offered", st.drivers_offered),
                    ("on_trip", st.drivers_on_trip),
                ],
            )?;
        }
        {
            let mut m = encoder.encode_descriptor(
                "dispatch_location_updates_rejected",
                "Location updates rejected in ReportLocations, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, &n) in &s.location_rejections {
                let labels = [("reason", reason.as_str())];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut single = |name: &str, help: &str, kind: MetricType, v: u64| {
            let m = encoder.encode_descriptor(name, help, None, kind)?;
            match kind {
                MetricType::Counter => ConstCounter::new(v).encode(m),
                _ => ConstGauge::new(v).encode(m),
            }
        };
        single(
            "dispatch_location_batches_shed",
            "Location batches dropped because the location queue was full",
            MetricType::Counter,
            s.shed_location_batches,
        )?;
        single(
            "dispatch_subscribers",
            "Event-bus followers: event, offer and trip streams plus internal ones",
            MetricType::Gauge,
            s.subscribers,
        )?;
        if let Some(st) = &s.stats {
            single(
                "dispatch_location_updates",
                "Location updates applied",
                MetricType::Counter,
                st.location_updates,
            )?;
            single(
                "dispatch_open_trips",
                "Trips not in a terminal state",
                MetricType::Gauge,
                st.open_trips,
            )?;
            single(
                "dispatch_pending_offers",
                "Offers awaiting an answer",
                MetricType::Gauge,
                st.pending_offers,
            )?;
            single(
                "dispatch_next_event_offset",
                "Offset the next dispatch event will get",
                MetricType::Gauge,
                st.next_event_offset,
            )?;
        }
        Ok(())
    }
}
