//! Batched matching: requests of a short window are paired with drivers together.
//!
//! Greedy matching offers each request its best driver at once, which often takes the only
//! close driver from the request that arrives a second later. With the batch policy a trip that
//! needs a driver (a new request with candidates in range, or a trip whose offer was declined,
//! expired or withdrawn) joins the pending batch instead. The first trip to join an empty batch
//! arms a flush timer `batch_window` ahead, so no trip waits longer than one window for its
//! first offer. At the flush every pending trip's candidates are found and scored exactly as
//! greedy does (so ETA, rating, acceptance and fairness all count), the cost of a pairing is
//! `-score`, and [`assign::solve`] picks the pairing that serves the most trips and, among
//! those, has the highest total score. Each paired trip gets its offer through the ordinary
//! offer path (15 s window, cascade on failure, back into the next batch).
//!
//! A trip left unpaired at a flush has lost every candidate to trips the assignment served
//! instead, or found none free. It waits for the next window (BatchFlushed re-arms it) until its
//! dispatch deadline while any ONLINE driver who could serve it (free, offered or on a trip) is
//! within the search radius, as greedy waits; only a trip never offered with nobody online in
//! range ends at once as NO_DRIVERS (issue 12 item 3: "no drivers" means nobody could serve).
//! A driver freeing up is matched at the next flush, at most one window later, so batch trips
//! need no prompt re-search of their own.
//!
//! The pending batch is durable state: its members are exactly the SEARCHING batch-policy
//! trips (joining and leaving happen in `apply`, on the events that make a trip search or stop
//! searching), and its flush time is armed by the first join and re-armed by the BatchFlushed
//! event a flush ends with while trips are still waiting.

use rustc_hash::FxHashMap;

use super::{Choice, Decide, Dispatcher};
use crate::domain::{DriverKey, TripId};
use crate::events::{EventKind, TripStatus};
use crate::matching::assign::{self, Edge, Unassigned};

impl Decide<'_> {
    /// Matches the pending batch: trips past their dispatch deadline end as NO_DRIVERS; a lone
    /// trip is offered its best candidate (no solver); otherwise the candidates of all trips
    /// are paired by a minimum-cost assignment and each paired trip is offered its driver.
    /// Unpaired trips wait for the next window (BatchFlushed re-arms it), except a trip never
    /// offered that nobody online in range could serve, which ends as NO_DRIVERS.
    ///
    /// # Runtime
    /// For b trips with up to c candidates each: b candidate searches (as greedy), plus the
    /// assignment over at most b·c edges (see [`assign::solve`]), plus one offer per pair.
    fn flush_batch(&mut self) {
        let s = self.s;
        let mut rows: Vec<TripId> = Vec::with_capacity(s.batch().len());
        // Trip ids grow with request time, so the set's order is oldest first, and
        // deterministic.
        for &trip_id in s.batch() {
            let Some(trip) = s.trip(trip_id) else {
                continue;
            };
            if trip.status != TripStatus::Searching {
                continue;
            }
            if self.now_ms >= trip.dispatch_deadline_ms {
                self.no_drivers(trip);
            } else {
                rows.push(trip_id);
            }
        }
        let unpaired = match rows.as_slice() {
            [] => Vec::new(),
            [single] => self.offer_best(*single),
            _ => self.offer_assigned(&rows),
        };
        let mut waiting = 0;
        for trip_id in unpaired {
            let Some(trip) = s.trip(trip_id) else {
                continue;
            };
            if trip.offers_made == 0 && !self.anyone_could_serve(trip.pickup, trip.class) {
                self.no_drivers(trip);
            } else {
                waiting += 1;
            }
        }
        if waiting > 0 {
            self.emit(EventKind::BatchFlushed {
                next_flush_at_ms: self.now_ms.saturating_add(s.batch_window_ms()),
                waiting,
            });
        }
    }

    /// A batch of one: the best candidate, as greedy would. Returns the trip if unpaired.
    fn offer_best(&mut self, trip_id: TripId) -> Vec<TripId> {
        let s = self.s;
        let Some(entry) = s.entry(trip_id) else {
            return Vec::new();
        };
        let trip = &entry.trip;
        match self.find_best(trip.pickup, trip.class, &entry.tried).0 {
            Some(choice) => {
                self.offer_trip(trip, &choice);
                Vec::new()
            }
            None => vec![trip_id],
        }
    }

    /// Solves the assignment for `rows` and offers each paired trip its driver. Returns the
    /// unpaired trips.
    fn offer_assigned(&mut self, rows: &[TripId]) -> Vec<TripId> {
        let s = self.s;
        // Sized once for the most edges there can be: a window of thousands of trips grew
        // these by doubling, each growth fresh memory (page faults), ~4 % of a batch replay.
        let most = rows.len() * self.rules.max_candidates;
        let mut choices: Vec<Choice> = Vec::with_capacity(most);
        let mut edges: Vec<Edge> = Vec::with_capacity(most);
        let mut col_of: FxHashMap<DriverKey, usize> = FxHashMap::default();
        let mut scratch = std::mem::take(&mut self.scratch.choices);
        for (row, trip_id) in rows.iter().enumerate() {
            let Some(entry) = s.entry(*trip_id) else {
                continue;
            };
            let trip = &entry.trip;
            self.candidates(trip.pickup, trip.class, &entry.tried, &mut scratch);
            for c in &scratch {
                let next = col_of.len();
                let col = *col_of.entry(c.key).or_insert(next);
                edges.push(Edge {
                    row,
                    col,
                    cost: -c.score.total,
                });
                choices.push(*c);
            }
        }
        self.scratch.choices = scratch;
        let solution = assign::solve(
            rows.len(),
            col_of.len(),
            &edges,
            Unassigned::MaximizeMatches,
        );
        // `edges[i]` and `choices[i]` describe the same candidate; the solver pairs along
        // edges only, so the paired candidate is among the row's edges.
        let mut choice_for_row: Vec<Option<Choice>> = vec![None; rows.len()];
        for (e, c) in edges.iter().zip(&choices) {
            if solution.col_for_row[e.row] == Some(e.col) {
                choice_for_row[e.row] = Some(*c);
            }
        }
        let mut unpaired = Vec::new();
        for (trip_id, choice) in rows.iter().zip(choice_for_row) {
            match (choice, s.trip(*trip_id)) {
                // The solver pairs each driver with at most one trip, so these offers, all
                // decided from the same state, never share a driver.
                (Some(choice), Some(trip)) => self.offer_trip(trip, &choice),
                _ => unpaired.push(*trip_id),
            }
        }
        unpaired
    }

    /// After a recovery: a batch whose flush fell due while the engine was down waits one
    /// fresh window from now instead of being matched against drivers that have not
    /// re-reported yet.
    pub(super) fn rearm_overdue_batch(&mut self) {
        let s = self.s;
        if let Some(at) = s.batch_flush_at_ms()
            && at < self.now_ms
        {
            self.emit(EventKind::BatchFlushed {
                next_flush_at_ms: self.now_ms.saturating_add(s.batch_window_ms()),
                waiting: s.batch().len() as u32,
            });
        }
    }
}

impl Dispatcher {
    pub(super) fn flush_batch(&mut self, now_ms: u64) {
        self.decide(now_ms, |c| c.flush_batch());
    }
}
