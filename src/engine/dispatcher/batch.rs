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
//! A trip left unpaired at its first flush has lost every candidate to trips the assignment
//! served instead; it ends at once as NO_DRIVERS, as greedy tells a request with nobody in
//! range, so no request waits more than one window for its first answer. (Carrying it to later
//! windows served more trips in the load generator's scarce city, 0.968 vs 0.879 match rate,
//! but made riders wait several windows: request-to-offer p99 7.9 s with a 2 s window.) A trip
//! whose earlier offer failed keeps rejoining batches until its dispatch deadline, as greedy
//! keeps retrying.
//!
//! The pending batch is scheduling state, like the timers: it is not an event and not durable.
//! Its members are exactly the SEARCHING batch-policy trips, which recovery re-enters through
//! the retry timers `finish_recovery` sets. Every state change still goes through `emit` and
//! `apply` (`OfferSent`, `NoDrivers`), so replaying the log reproduces what batching did.

use std::cmp::Reverse;

use rustc_hash::FxHashMap;

use super::search::Choice;
use super::{Dispatcher, Timer};
use crate::domain::{DriverKey, TripId};
use crate::events::TripStatus;
use crate::matching::assign::{self, Edge, Unassigned};

impl Dispatcher {
    /// Adds a SEARCHING trip to the pending batch, arming the flush if the batch was empty.
    /// O(log t) for t pending timers.
    pub(super) fn join_batch(&mut self, trip: TripId, now_ms: u64) {
        self.batch.push(trip);
        if self.batch_flush_at_ms.is_none() {
            let at = now_ms.saturating_add(self.batch_window_ms);
            self.batch_flush_at_ms = Some(at);
            self.timers.push(Reverse((at, Timer::BatchFlush)));
        }
    }

    /// Matches the pending batch: trips past their dispatch deadline end as NO_DRIVERS; a lone
    /// trip is offered its best candidate (no solver); otherwise the candidates of all trips
    /// are paired by a minimum-cost assignment and each paired trip is offered its driver.
    /// Unpaired trips never offered end as NO_DRIVERS; those whose offer failed wait for the
    /// next window.
    ///
    /// # Runtime
    /// For b trips with up to c candidates each: b candidate searches (as greedy), plus the
    /// assignment over at most b·c edges (see [`assign::solve`]), plus one offer per pair.
    pub(super) fn flush_batch(&mut self, now_ms: u64) {
        self.batch_flush_at_ms = None;
        let mut pending = std::mem::take(&mut self.batch);
        // Trip ids grow with request time, so this is oldest first, and deterministic.
        pending.sort_unstable();
        pending.dedup();
        let mut rows: Vec<TripId> = Vec::with_capacity(pending.len());
        for trip_id in pending {
            let Some(trip) = self.trips.get(&trip_id) else {
                continue;
            };
            // Cancelled or otherwise moved on while waiting.
            if trip.status != TripStatus::Searching {
                continue;
            }
            if now_ms >= trip.dispatch_deadline_ms {
                self.end_no_drivers(trip_id, now_ms);
            } else {
                rows.push(trip_id);
            }
        }
        let unpaired = match rows.as_slice() {
            [] => Vec::new(),
            [single] => self.offer_best(*single, now_ms),
            _ => self.offer_assigned(&rows, now_ms),
        };
        for trip in unpaired {
            if self.trips.get(&trip).is_some_and(|t| t.offers_made == 0) {
                self.end_no_drivers(trip, now_ms);
            } else {
                self.join_batch(trip, now_ms);
            }
        }
    }

    /// A batch of one: the best candidate, as greedy would. Returns the trip if unpaired.
    fn offer_best(&mut self, trip_id: TripId, now_ms: u64) -> Vec<TripId> {
        let trip = &self.trips[&trip_id];
        let (pickup, class, tried) = (trip.pickup, trip.class, trip.tried.clone());
        match self.find_best(pickup, class, &tried, now_ms).0 {
            Some(choice) => {
                self.make_offer(trip_id, choice, now_ms);
                Vec::new()
            }
            None => vec![trip_id],
        }
    }

    /// Solves the assignment for `rows` and offers each paired trip its driver. Returns the
    /// unpaired trips.
    fn offer_assigned(&mut self, rows: &[TripId], now_ms: u64) -> Vec<TripId> {
        let mut choices: Vec<Choice> = Vec::new();
        let mut edges: Vec<Edge> = Vec::new();
        let mut col_of: FxHashMap<DriverKey, usize> = FxHashMap::default();
        let mut scratch = std::mem::take(&mut self.choices);
        for (row, trip_id) in rows.iter().enumerate() {
            let trip = &self.trips[trip_id];
            let (pickup, class, tried) = (trip.pickup, trip.class, trip.tried.clone());
            self.candidates(pickup, class, &tried, now_ms, &mut scratch);
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
        self.choices = scratch;
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
            match choice {
                Some(choice) => self.make_offer(*trip_id, choice, now_ms),
                None => unpaired.push(*trip_id),
            }
        }
        unpaired
    }
}
