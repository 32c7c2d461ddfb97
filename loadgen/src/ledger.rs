//! Request accounting: what happened to every trip request, and how long it took.
//!
//! Facts about a trip reach the load generator from several places in no guaranteed order: the
//! RequestTrip reply (which carries the trip id), the gateway offer stream (which may deliver
//! the first offer *before* that reply, since the engine offers while the reply is in flight),
//! the offer answers, and the dispatch event stream (NO_DRIVERS). The ledger keys every fact by
//! trip id as it arrives and resolves a latency as soon as both of its ends are known, so the
//! order does not matter. Each fact carries the instant it was observed, not the instant the
//! ledger processed it.

use crate::report::{latency_histogram, record_us};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use tokio::time::Instant;

/// How a request ended, as far as the load generator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided yet.
    Open,
    /// A driver accepted.
    Matched,
    /// The engine found no driver.
    NoDrivers,
    /// The rider cancelled before a driver accepted.
    Cancelled,
}

#[derive(Debug)]
struct TripRec {
    request: Option<u32>,
    sent_at: Option<Instant>,
    first_offer_at: Option<Instant>,
    accepted_at: Option<Instant>,
    offer_recorded: bool,
    accept_recorded: bool,
    outcome: Outcome,
}

impl TripRec {
    fn new() -> TripRec {
        TripRec {
            request: None,
            sent_at: None,
            first_offer_at: None,
            accepted_at: None,
            offer_recorded: false,
            accept_recorded: false,
            outcome: Outcome::Open,
        }
    }
}

/// What an accepted offer said and what the drive to its pickup takes, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PickupTimes {
    /// The engine's pickup ETA on the offer.
    pub eta_s: f64,
    /// The simulation's drive time from the driver (where it was when the offer arrived) to
    /// the pickup, at real speed.
    pub actual_s: f64,
}

/// Final request counts; `matched + no_drivers + cancelled + still_open == requests`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests sent.
    pub sent: u64,
    /// Requests that got a trip.
    pub requests: u64,
    /// Of those, matched.
    pub matched: u64,
    /// Of those, no drivers.
    pub no_drivers: u64,
    /// Of those, cancelled before a match.
    pub cancelled: u64,
    /// Of those, undecided.
    pub still_open: u64,
}

/// Every request of the run and every trip fact seen.
#[derive(Debug)]
pub struct Ledger {
    /// Trip id of each request, once its reply arrived.
    requests: Vec<Option<String>>,
    trips: HashMap<String, TripRec>,
    /// Request sent -> first offer at the gateway, microseconds.
    pub to_offer_us: Histogram<u64>,
    /// Request sent -> accept confirmed, microseconds.
    pub to_accept_us: Histogram<u64>,
    /// Request sent -> its RequestTrip reply, microseconds (the offer comes on another path:
    /// the gateway's offer stream).
    pub to_reply_us: Histogram<u64>,
    /// Pickup ETA of each accepted offer, seconds.
    pub pickup_etas_s: Vec<f64>,
    /// Simulated drive time to the pickup of each accepted offer's driver, seconds.
    pub actual_pickups_s: Vec<f64>,
    /// Decided outcomes so far (live figures; the final ones come from [`Ledger::counts`]).
    pub live_matched: u64,
    /// Requests whose reply arrived so far.
    pub live_requests: u64,
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger::new()
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger {
            requests: Vec::new(),
            trips: HashMap::new(),
            to_offer_us: latency_histogram(),
            to_accept_us: latency_histogram(),
            to_reply_us: latency_histogram(),
            pickup_etas_s: Vec::new(),
            actual_pickups_s: Vec::new(),
            live_matched: 0,
            live_requests: 0,
        }
    }

    /// Registers a request about to be sent and returns its number.
    pub fn issue(&mut self) -> u32 {
        self.requests.push(None);
        (self.requests.len() - 1) as u32
    }

    /// Requests issued so far.
    pub fn issued(&self) -> usize {
        self.requests.len()
    }

    fn rec<'a>(trips: &'a mut HashMap<String, TripRec>, trip_id: &str) -> &'a mut TripRec {
        // Look up before inserting so the hot path (known trip) does not allocate a key.
        if !trips.contains_key(trip_id) {
            trips.insert(trip_id.to_string(), TripRec::new());
        }
        trips
            .get_mut(trip_id)
            .expect("inserted just above if it was missing") // single owner, no interleaving
    }

    fn resolve(rec: &mut TripRec, to_offer: &mut Histogram<u64>, to_accept: &mut Histogram<u64>) {
        let Some(sent) = rec.sent_at else { return };
        if let (false, Some(at)) = (rec.offer_recorded, rec.first_offer_at) {
            record_us(
                to_offer,
                at.saturating_duration_since(sent).as_micros() as u64,
            );
            rec.offer_recorded = true;
        }
        if let (false, Some(at)) = (rec.accept_recorded, rec.accepted_at) {
            record_us(
                to_accept,
                at.saturating_duration_since(sent).as_micros() as u64,
            );
            rec.accept_recorded = true;
        }
    }

    /// Request `n`, sent at `sent_at`, got trip `trip_id` in a reply that arrived at `at`;
    /// `no_drivers` if the reply already says NO_DRIVERS.
    pub fn replied(
        &mut self,
        n: u32,
        sent_at: Instant,
        at: Instant,
        trip_id: &str,
        no_drivers: bool,
    ) {
        match self.requests.get_mut(n as usize) {
            Some(slot @ None) => *slot = Some(trip_id.to_string()),
            _ => return,
        }
        record_us(
            &mut self.to_reply_us,
            at.saturating_duration_since(sent_at).as_micros() as u64,
        );
        self.live_requests += 1;
        let rec = Self::rec(&mut self.trips, trip_id);
        rec.request = Some(n);
        rec.sent_at = Some(sent_at);
        if no_drivers && rec.outcome == Outcome::Open {
            rec.outcome = Outcome::NoDrivers;
        }
        Self::resolve(rec, &mut self.to_offer_us, &mut self.to_accept_us);
    }

    /// An offer for `trip_id` reached a gateway at `at`. Only the first offer of a trip counts
    /// towards request-to-offer latency.
    pub fn offer(&mut self, trip_id: &str, at: Instant) {
        let rec = Self::rec(&mut self.trips, trip_id);
        if rec.first_offer_at.is_none() {
            rec.first_offer_at = Some(at);
            Self::resolve(rec, &mut self.to_offer_us, &mut self.to_accept_us);
        }
    }

    /// A driver's accept of `trip_id` was confirmed at `at`, with the offer's pickup ETA and
    /// the simulation's drive time from the driver to the pickup (both seconds), when known.
    pub fn accepted(&mut self, trip_id: &str, at: Instant, pickup: Option<PickupTimes>) {
        let rec = Self::rec(&mut self.trips, trip_id);
        if rec.outcome == Outcome::Matched {
            return;
        }
        // An accept that succeeded happened before any cancel on the engine (a cancel first
        // would have failed the accept), so it overrides a cancel whose reply came first.
        rec.outcome = Outcome::Matched;
        rec.accepted_at = Some(at);
        Self::resolve(rec, &mut self.to_offer_us, &mut self.to_accept_us);
        self.live_matched += 1;
        if let Some(p) = pickup {
            self.pickup_etas_s.push(p.eta_s);
            self.actual_pickups_s.push(p.actual_s);
        }
    }

    /// The engine reported NO_DRIVERS for `trip_id`.
    pub fn no_drivers(&mut self, trip_id: &str) {
        let rec = Self::rec(&mut self.trips, trip_id);
        if rec.outcome == Outcome::Open {
            rec.outcome = Outcome::NoDrivers;
        }
    }

    /// The rider's cancel of `trip_id` succeeded.
    pub fn cancelled(&mut self, trip_id: &str) {
        let rec = Self::rec(&mut self.trips, trip_id);
        if rec.outcome == Outcome::Open {
            rec.outcome = Outcome::Cancelled;
        }
    }

    /// The outcome of request `n` so far (`None` before its reply).
    pub fn outcome_of_request(&self, n: u32) -> Option<(&str, Outcome)> {
        let trip_id = self.requests.get(n as usize)?.as_deref()?;
        let rec = self.trips.get(trip_id)?;
        Some((trip_id, rec.outcome))
    }

    /// Whether `trip_id` is a trip of one of this run's requests (or a fact seen before its
    /// reply).
    pub fn knows(&self, trip_id: &str) -> bool {
        self.trips.contains_key(trip_id)
    }

    /// Final counts over every request issued.
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            sent: self.requests.len() as u64,
            ..Counts::default()
        };
        for trip_id in self.requests.iter().flatten() {
            c.requests += 1;
            match self.trips.get(trip_id).map(|r| r.outcome) {
                Some(Outcome::Matched) => c.matched += 1,
                Some(Outcome::NoDrivers) => c.no_drivers += 1,
                Some(Outcome::Cancelled) => c.cancelled += 1,
                Some(Outcome::Open) | None => c.still_open += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_offer_before_the_reply_is_measured_from_the_send() {
        let mut l = Ledger::new();
        let t0 = Instant::now();
        let n = l.issue();
        l.offer("T1", t0 + Duration::from_micros(1500));
        l.replied(n, t0, t0 + Duration::from_micros(2500), "T1", false);
        assert_eq!(l.to_offer_us.len(), 1);
        assert!((1495..=1505).contains(&l.to_offer_us.max()));
        // The reply's own latency, apart from the offer's.
        assert_eq!(l.to_reply_us.len(), 1);
        assert!((2495..=2505).contains(&l.to_reply_us.max()));
        // A repeated reply for the same request is not counted twice.
        l.replied(n, t0, t0 + Duration::from_secs(1), "T1", false);
        assert_eq!(l.to_reply_us.len(), 1);
        // A second offer (cascade) does not count again.
        l.offer("T1", t0 + Duration::from_secs(9));
        assert_eq!(l.to_offer_us.len(), 1);
    }

    #[test]
    fn an_offer_after_the_reply_is_measured_too() {
        let mut l = Ledger::new();
        let t0 = Instant::now();
        let n = l.issue();
        l.replied(n, t0, t0, "T1", false);
        l.offer("T1", t0 + Duration::from_millis(3));
        let times = PickupTimes {
            eta_s: 120.0,
            actual_s: 150.0,
        };
        l.accepted("T1", t0 + Duration::from_secs(4), Some(times));
        // A repeated accept report for the same trip is not counted twice.
        l.accepted("T1", t0 + Duration::from_secs(5), Some(times));
        assert_eq!(l.to_offer_us.len(), 1);
        assert_eq!(l.to_accept_us.len(), 1);
        assert_eq!(l.pickup_etas_s, vec![120.0]);
        assert_eq!(l.actual_pickups_s, vec![150.0]);
    }

    #[test]
    fn every_request_is_accounted_exactly_once() {
        let mut l = Ledger::new();
        let t0 = Instant::now();
        let ids: Vec<u32> = (0..6).map(|_| l.issue()).collect();
        l.replied(ids[0], t0, t0, "A", false);
        l.accepted("A", t0, None);
        l.replied(ids[1], t0, t0, "B", true); // NO_DRIVERS in the reply
        l.no_drivers("B"); // and again from the event stream
        l.replied(ids[2], t0, t0, "C", false);
        l.cancelled("C");
        l.replied(ids[3], t0, t0, "D", false); // still open
        l.replied(ids[4], t0, t0, "E", false);
        l.cancelled("E");
        l.accepted("E", t0, None); // the accept won on the engine
        // ids[5]: the call failed, no trip.
        let c = l.counts();
        assert_eq!(c.sent, 6);
        assert_eq!(c.requests, 5);
        assert_eq!(
            (c.matched, c.no_drivers, c.cancelled, c.still_open),
            (2, 1, 1, 1)
        );
        assert_eq!(
            c.matched + c.no_drivers + c.cancelled + c.still_open,
            c.requests
        );
        // A repeated reply for a request is ignored.
        l.replied(ids[0], t0, t0, "Z", false);
        assert_eq!(l.counts(), c);
    }

    #[test]
    fn facts_about_unknown_trips_do_not_count_as_requests() {
        let mut l = Ledger::new();
        l.no_drivers("foreign");
        l.offer("early", Instant::now());
        assert_eq!(l.counts(), Counts::default());
        assert!(l.knows("early"));
    }
}
