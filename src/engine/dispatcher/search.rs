//! Finding and scoring candidates: the read side of matching. Nothing here changes dispatch
//! state (only the reusable scratch buffer), so greedy and batched policies can share it.

use crate::domain::{DriverKey, LatLng, VehicleClass};
use crate::engine::records::NearbyDriver;
use crate::matching::{CandidateFacts, EtaSource, ScoreBreakdown};
use crate::surge::SurgeReading;

use super::Dispatcher;

/// A scored candidate for a trip.
#[derive(Clone, Copy, Debug)]
pub(super) struct Choice {
    pub(super) key: DriverKey,
    pub(super) distance_m: f64,
    pub(super) eta_s: f64,
    pub(super) eta_source: EtaSource,
    pub(super) score: ScoreBreakdown,
}

impl Dispatcher {
    /// The available drivers within the search radius serving `class`, except `tried`,
    /// nearest first (up to `max_candidates`), each with its ETA and score.
    pub(super) fn candidates(
        &mut self,
        pickup: LatLng,
        class: VehicleClass,
        tried: &[DriverKey],
        now_ms: u64,
        out: &mut Vec<Choice>,
    ) {
        out.clear();
        let drivers = &self.drivers;
        self.index.nearest(
            pickup,
            self.search_radius_m,
            self.max_candidates,
            &mut |k| drivers[k.0 as usize].class.serves(class) && !tried.contains(&k),
            &mut self.scratch,
        );
        // All candidates to the pickup in one call: a road model runs one search from the
        // pickup instead of one per candidate.
        let from: Vec<_> = self
            .scratch
            .iter()
            .map(|n| (n.position, n.distance_m))
            .collect();
        let mut etas = Vec::with_capacity(from.len());
        self.eta.many_to_one(&from, pickup, now_ms, &mut etas);
        for (n, eta) in self.scratch.iter().zip(etas) {
            let d = &self.drivers[n.key.0 as usize];
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

    /// The best-scoring candidate (ties: the nearer), and how many candidates there were.
    pub(super) fn find_best(
        &mut self,
        pickup: LatLng,
        class: VehicleClass,
        tried: &[DriverKey],
        now_ms: u64,
    ) -> (Option<Choice>, u32) {
        let mut choices = std::mem::take(&mut self.choices);
        self.candidates(pickup, class, tried, now_ms, &mut choices);
        let mut best: Option<Choice> = None;
        for c in &choices {
            if best.is_none_or(|b| c.score.total > b.score.total) {
                best = Some(*c);
            }
        }
        let found = choices.len() as u32;
        self.choices = choices;
        (best, found)
    }

    /// Available drivers within `radius_m` of `center` serving `class`, nearest first.
    pub fn nearby(
        &mut self,
        now_ms: u64,
        center: LatLng,
        radius_m: f64,
        limit: usize,
        class: VehicleClass,
    ) -> Vec<NearbyDriver> {
        let drivers = &self.drivers;
        self.index.nearest(
            center,
            radius_m,
            limit,
            &mut |k| drivers[k.0 as usize].class.serves(class),
            &mut self.scratch,
        );
        let from: Vec<_> = self
            .scratch
            .iter()
            .map(|n| (n.position, n.distance_m))
            .collect();
        let mut etas = Vec::with_capacity(from.len());
        self.eta.many_to_one(&from, center, now_ms, &mut etas);
        self.scratch
            .iter()
            .zip(etas)
            .map(|(n, eta)| {
                let d = &self.drivers[n.key.0 as usize];
                NearbyDriver {
                    id: d.id.clone(),
                    position: n.position,
                    distance_m: n.distance_m,
                    eta_s: eta.eta_s,
                    eta_source: eta.source,
                    rating: d.rating,
                    class: d.class,
                }
            })
            .collect()
    }

    /// The surge at `point`, with supply counted by the index around it.
    pub(super) fn surge_reading(&mut self, point: LatLng, now_ms: u64) -> SurgeReading {
        let supply = self.index.count_near(point, self.surge.supply_radius_m()) as u64;
        self.surge.reading(point, supply, now_ms)
    }
}
