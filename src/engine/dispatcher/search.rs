//! Finding and scoring candidates: the read side of matching, and the one place the ETA model
//! is used. It reads the state and writes only the decision-side scratch buffers, so greedy,
//! batched matching and the nearby query share it.

use super::{Decide, Dispatcher};
use crate::domain::{DriverKey, LatLng, TripId, VehicleClass};
use crate::engine::records::{DriverStatus, NearbyDriver};
use crate::matching::{CandidateFacts, EtaSource, ScoreBreakdown};

/// A scored candidate for a trip.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Choice {
    pub(crate) key: DriverKey,
    pub(crate) distance_m: f64,
    pub(crate) eta_s: f64,
    /// How `eta_s` was estimated (routed, or a straight-line fallback).
    pub(crate) eta_source: EtaSource,
    pub(crate) score: ScoreBreakdown,
}

impl Decide<'_> {
    /// The available drivers within the search radius serving `class`, except `tried`,
    /// nearest first (up to `max_candidates`), each with its ETA and score, into `out`.
    pub(super) fn candidates(
        &mut self,
        pickup: LatLng,
        class: VehicleClass,
        tried: &[DriverKey],
        out: &mut Vec<Choice>,
    ) {
        out.clear();
        let s = self.s;
        let now_ms = self.now_ms;
        let neighbors = &mut self.scratch.neighbors;
        s.index().nearest(
            pickup,
            self.rules.search_radius_m,
            self.rules.max_candidates,
            &mut |k| s.record(k).class.serves(class) && !tried.contains(&k),
            neighbors,
        );
        // All candidates to the pickup in one call: a road model runs one search from the
        // pickup instead of one per candidate.
        let sc = &mut self.scratch;
        sc.from.clear();
        sc.from
            .extend(sc.neighbors.iter().map(|n| (n.position, n.distance_m)));
        self.eta.many_to_one(&sc.from, pickup, now_ms, &mut sc.etas);
        for (n, eta) in sc.neighbors.iter().zip(&sc.etas) {
            let d = s.record(n.key);
            let eta_s = eta.eta_s;
            let score = self.scorer.score(&CandidateFacts {
                eta_s,
                rating: d.rating.get(),
                acceptance_rate: d.acceptance_rate,
                idle_s: now_ms.saturating_sub(d.free_since_ms) as f64 / 1000.0,
                trips_today: d.trips_on(now_ms),
            });
            out.push(Choice {
                key: n.key,
                distance_m: n.distance_m,
                eta_s,
                eta_source: eta.source,
                score,
            });
        }
    }

    /// Whether any ONLINE driver (available, offered or on a trip) who serves `class` is
    /// within the search radius of `pickup`: if so a request that found nobody free waits for
    /// one; if not it ends as NO_DRIVERS.
    ///
    /// # Runtime
    /// One indexed lookup for an available driver; failing that, O(d) over the driver table
    /// (busy drivers are not indexed: their positions move without events). Only requests that
    /// found no free candidate pay it.
    pub(super) fn anyone_could_serve(&self, pickup: LatLng, class: VehicleClass) -> bool {
        let s = self.s;
        let radius_m = self.rules.search_radius_m;
        let serves = &mut |k: DriverKey| s.record(k).class.serves(class);
        if s.index().count_near_where(pickup, radius_m, serves) > 0 {
            return true;
        }
        s.records().iter().any(|d| {
            matches!(d.status, DriverStatus::Offered(_) | DriverStatus::OnTrip(_))
                && d.class.serves(class)
                && s.live().position(d.key).distance_m(pickup) <= radius_m
        })
    }

    /// The oldest greedy trip waiting for a driver that `key` (if AVAILABLE) could take now:
    /// it serves the trip's class, the trip has not tried it, and the pickup is within the
    /// search radius. `skip`: trips already searched in this pass.
    ///
    /// # Runtime
    /// O(w) for w waiting trips: one distance each.
    pub(super) fn next_waiting_for(&self, key: DriverKey, skip: &[TripId]) -> Option<TripId> {
        let s = self.s;
        let d = s.record(key);
        if d.status != DriverStatus::Available {
            return None;
        }
        let at = s.index().position(key)?;
        s.waiting().iter().copied().find(|t| {
            !skip.contains(t)
                && s.entry(*t).is_some_and(|e| {
                    d.class.serves(e.trip.class)
                        && !e.tried.contains(&key)
                        && at.distance_m(e.trip.pickup) <= self.rules.search_radius_m
                })
        })
    }

    /// The best-scoring candidate (ties: the nearer), and how many candidates there were.
    pub(super) fn find_best(
        &mut self,
        pickup: LatLng,
        class: VehicleClass,
        tried: &[DriverKey],
    ) -> (Option<Choice>, u32) {
        let mut choices = std::mem::take(&mut self.scratch.choices);
        self.candidates(pickup, class, tried, &mut choices);
        let mut best: Option<Choice> = None;
        for c in &choices {
            if best.is_none_or(|b| c.score.total > b.score.total) {
                best = Some(*c);
            }
        }
        let found = choices.len() as u32;
        self.scratch.choices = choices;
        (best, found)
    }

    fn nearby(
        &mut self,
        center: LatLng,
        radius_m: f64,
        limit: usize,
        class: VehicleClass,
    ) -> Vec<NearbyDriver> {
        let s = self.s;
        let neighbors = &mut self.scratch.neighbors;
        s.index().nearest(
            center,
            radius_m,
            limit,
            &mut |k| s.record(k).class.serves(class),
            neighbors,
        );
        let sc = &mut self.scratch;
        sc.from.clear();
        sc.from
            .extend(sc.neighbors.iter().map(|n| (n.position, n.distance_m)));
        self.eta
            .many_to_one(&sc.from, center, self.now_ms, &mut sc.etas);
        sc.neighbors
            .iter()
            .zip(&sc.etas)
            .map(|(n, eta)| {
                let d = s.record(n.key);
                NearbyDriver::found(n, eta, d.id.clone(), d.rating, d.class)
            })
            .collect()
    }
}

impl Dispatcher {
    /// Available drivers within `radius_m` of `center` serving `class`, nearest first.
    pub fn nearby(
        &mut self,
        now_ms: u64,
        center: LatLng,
        radius_m: f64,
        limit: usize,
        class: VehicleClass,
    ) -> Vec<NearbyDriver> {
        self.decide(now_ms, |c| c.nearby(center, radius_m, limit, class))
    }
}
