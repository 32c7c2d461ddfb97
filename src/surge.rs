//! The surge signal: demand over supply around a pickup, per vehicle class, as a price
//! multiplier >= 1.
//!
//! Demand is counted per H3 hexagon (resolution 8, ~0.7 km²) and per requested class over a
//! sliding window, summed over the pickup's hexagon and its six neighbours so a request on a
//! hexagon edge counts on both sides. Supply is the number of available drivers near the pickup
//! right now, counted by the spatial index at cell granularity when asked, because computing an
//! H3 cell for every location update would cost more than all the rest of ingest.
//!
//! Classes follow matching ([`VehicleClass::serves`]): the reading for class C counts the
//! requests that asked for C as demand and the available drivers who could be offered a C trip
//! as supply. Today a driver serves only its own class, so a COMFORT driver is no XL supply
//! and an XL driver no COMFORT supply (it would never be offered the COMFORT trip). The reading
//! for `Any` (UNSPECIFIED) is the whole market: every request is demand and every available
//! driver supply, which is what the engine computed before classes counted.

use std::collections::VecDeque;
use std::time::Duration;

use h3o::{CellIndex, Resolution};
use rustc_hash::FxHashMap;

use crate::domain::{LatLng, VehicleClass};

/// Settings of the surge signal.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SurgeConfig {
    /// How far back trip requests count as demand.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Available drivers within this distance of the pickup count as supply, metres.
    pub supply_radius_m: f64,
    /// The multiplier never exceeds this.
    pub max_multiplier: f64,
}

impl Default for SurgeConfig {
    fn default() -> Self {
        SurgeConfig {
            window: Duration::from_secs(60),
            supply_radius_m: 1_200.0,
            max_multiplier: 3.0,
        }
    }
}

/// The surge at one point.
#[derive(Clone, Debug, PartialEq)]
pub struct SurgeReading {
    /// `clamp(demand / max(supply, 1), 1, max_multiplier)`.
    pub multiplier: f64,
    /// The H3 cell of the point.
    pub cell: CellIndex,
    /// Requests for the reading's class in the cell and its neighbours during the window (all
    /// requests for `Any`).
    pub demand: u64,
    /// Available drivers near the point who serve the reading's class.
    pub supply: u64,
}

/// The classes a reading can be for, in the order of [`ClassDemand`]: `Any` (the whole
/// market) first.
pub const READING_CLASSES: [VehicleClass; 4] = [
    VehicleClass::Any,
    VehicleClass::Economy,
    VehicleClass::Comfort,
    VehicleClass::Xl,
];

/// Demand around one cell for each of [`READING_CLASSES`], in that order.
pub type ClassDemand = [u64; 4];

/// Sliding-window demand per H3 cell and requested class.
#[derive(Debug)]
pub struct SurgeTracker {
    config: SurgeConfig,
    window_ms: u64,
    /// Request times and requested classes per cell, oldest first.
    demand: FxHashMap<CellIndex, VecDeque<(u64, VehicleClass)>>,
}

/// Whether a request for `asked` counts as demand in a reading for `reading`.
fn counts_for(asked: VehicleClass, reading: VehicleClass) -> bool {
    reading == VehicleClass::Any || asked == reading
}

const RESOLUTION: Resolution = Resolution::Eight;

fn cell_of(point: LatLng) -> CellIndex {
    // A validated LatLng is always a valid h3o coordinate; fall back to the null island cell
    // rather than panicking should the two ever disagree.
    h3o::LatLng::new(point.lat_deg(), point.lng_deg())
        .unwrap_or_else(|_| h3o::LatLng::new(0.0, 0.0).expect("0,0 is valid"))
        .to_cell(RESOLUTION)
}

impl SurgeTracker {
    /// An empty tracker.
    pub fn new(config: SurgeConfig) -> Self {
        let window_ms = config.window.as_millis() as u64;
        SurgeTracker {
            config,
            window_ms,
            demand: FxHashMap::default(),
        }
    }

    /// The radius within which available drivers count as supply, metres.
    pub fn supply_radius_m(&self) -> f64 {
        self.config.supply_radius_m
    }

    /// Counts one trip request for `class` at `pickup`.
    pub fn record_request(&mut self, pickup: LatLng, class: VehicleClass, now_ms: u64) {
        let times = self.demand.entry(cell_of(pickup)).or_default();
        times.push_back((now_ms, class));
        Self::expire(times, now_ms, self.window_ms);
    }

    /// Requests counting for `class` in the window in `point`'s cell and its six neighbours,
    /// and that cell.
    ///
    /// # Runtime
    /// O(requests in the window in the seven cells).
    pub fn demand(&mut self, point: LatLng, class: VehicleClass, now_ms: u64) -> (CellIndex, u64) {
        let cell = cell_of(point);
        let mut demand = 0u64;
        for neighbour in cell.grid_disk::<Vec<_>>(1) {
            if let Some(times) = self.demand.get_mut(&neighbour) {
                Self::expire(times, now_ms, self.window_ms);
                demand += times.iter().filter(|t| counts_for(t.1, class)).count() as u64;
            }
        }
        (cell, demand)
    }

    /// The surge for `class` at `point`, given the supply of that class the caller counted
    /// there. The multiplier only depends on supply while supply < demand, so a caller may stop
    /// counting at `demand`.
    pub fn reading(
        &mut self,
        point: LatLng,
        class: VehicleClass,
        supply: u64,
        now_ms: u64,
    ) -> SurgeReading {
        let (cell, demand) = self.demand(point, class, now_ms);
        SurgeReading {
            multiplier: self.multiplier(demand, supply),
            cell,
            demand,
            supply,
        }
    }

    /// [`reading`](Self::reading) without dropping expired request times: times outside the
    /// window are skipped instead, so a shared reader (the engine's read view) can answer from
    /// `&self`. Same answer as `reading` at the same `now_ms`.
    ///
    /// # Runtime
    /// O(requests kept in the seven cells).
    pub fn reading_at(
        &self,
        point: LatLng,
        class: VehicleClass,
        supply: u64,
        now_ms: u64,
    ) -> SurgeReading {
        let cell = cell_of(point);
        let mut demand = 0u64;
        for neighbour in cell.grid_disk::<Vec<_>>(1) {
            if let Some(times) = self.demand.get(&neighbour) {
                demand += times
                    .iter()
                    .filter(|&&(t, asked)| {
                        t.saturating_add(self.window_ms) > now_ms && counts_for(asked, class)
                    })
                    .count() as u64;
            }
        }
        SurgeReading {
            multiplier: self.multiplier(demand, supply),
            cell,
            demand,
            supply,
        }
    }

    /// `clamp(demand / max(supply, 1), 1, max_multiplier)`.
    pub fn multiplier(&self, demand: u64, supply: u64) -> f64 {
        (demand as f64 / supply.max(1) as f64).clamp(1.0, self.config.max_multiplier)
    }

    /// Every cell with a request inside the window at `now_ms`, with the demand `reading` would
    /// count there for each of [`READING_CLASSES`] (the cell and its six neighbours). Read-only,
    /// for the map view: expired times are skipped, not dropped.
    ///
    /// # Runtime
    /// O(cells with demand x 7 x requests per cell in the window).
    pub fn active_demand(&self, now_ms: u64) -> Vec<(CellIndex, ClassDemand)> {
        let live = |cell: &CellIndex| {
            let mut by_class = ClassDemand::default();
            if let Some(times) = self.demand.get(cell) {
                for &(t, asked) in times {
                    if t.saturating_add(self.window_ms) <= now_ms {
                        continue;
                    }
                    for (n, &class) in by_class.iter_mut().zip(&READING_CLASSES) {
                        *n += u64::from(counts_for(asked, class));
                    }
                }
            }
            by_class
        };
        self.demand
            .keys()
            .filter(|cell| live(cell)[0] > 0)
            .map(|&cell| {
                let mut demand = ClassDemand::default();
                for near in cell.grid_disk::<Vec<_>>(1) {
                    for (total, n) in demand.iter_mut().zip(live(&near)) {
                        *total += n;
                    }
                }
                (cell, demand)
            })
            .collect()
    }

    /// Drops cells with no request inside the window; call now and then to bound memory.
    pub fn sweep(&mut self, now_ms: u64) {
        let window_ms = self.window_ms;
        self.demand.retain(|_, times| {
            Self::expire(times, now_ms, window_ms);
            !times.is_empty()
        });
    }

    fn expire(times: &mut VecDeque<(u64, VehicleClass)>, now_ms: u64, window_ms: u64) {
        while times
            .front()
            .is_some_and(|&(t, _)| t.saturating_add(window_ms) <= now_ms)
        {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rises_with_demand_and_decays_with_the_window() {
        let any = VehicleClass::Any;
        let mut s = SurgeTracker::new(SurgeConfig::default());
        let p = LatLng::new(40.7, -74.0).unwrap();
        assert_eq!(s.reading(p, any, 2, 0).multiplier, 1.0);
        for i in 0..6 {
            s.record_request(p, any, i * 1000);
        }
        let r = s.reading(p, any, 2, 10_000);
        assert_eq!(r.demand, 6);
        assert_eq!(r.multiplier, 3.0);
        assert_eq!(s.reading(p, any, 4, 10_000).multiplier, 1.5);
        // A window later the requests no longer count.
        assert_eq!(s.reading(p, any, 2, 70_000).demand, 0);
        s.sweep(70_000);
        assert!(s.demand.is_empty());
    }

    #[test]
    fn demand_counts_per_class_and_any_counts_all() {
        let mut s = SurgeTracker::new(SurgeConfig::default());
        let p = LatLng::new(40.7, -74.0).unwrap();
        for _ in 0..3 {
            s.record_request(p, VehicleClass::Xl, 0);
        }
        s.record_request(p, VehicleClass::Comfort, 0);
        s.record_request(p, VehicleClass::Any, 0);
        assert_eq!(s.demand(p, VehicleClass::Xl, 1).1, 3);
        assert_eq!(s.demand(p, VehicleClass::Comfort, 1).1, 1);
        assert_eq!(s.demand(p, VehicleClass::Economy, 1).1, 0);
        assert_eq!(s.demand(p, VehicleClass::Any, 1).1, 5);
        let active = s.active_demand(1);
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].1, [5, 0, 1, 3]);
    }
}
