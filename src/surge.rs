//! The surge signal: demand over supply around a pickup, as a price multiplier >= 1.
//!
//! Demand is counted per H3 hexagon (resolution 8, ~0.7 km²) over a sliding window, summed over
//! the pickup's hexagon and its six neighbours so a request on a hexagon edge counts on both
//! sides. Supply is the number of available drivers near the pickup right now, counted by the
//! spatial index at cell granularity (`SpatialIndex::count_near`) when asked, because computing
//! an H3 cell for every location update would cost more than all the rest of ingest.

use std::collections::VecDeque;
use std::time::Duration;

use h3o::{CellIndex, Resolution};
use rustc_hash::FxHashMap;

use crate::domain::LatLng;

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
    /// Requests in the cell and its neighbours during the window.
    pub demand: u64,
    /// Available drivers near the point.
    pub supply: u64,
}

/// Sliding-window demand per H3 cell.
#[derive(Debug)]
pub struct SurgeTracker {
    config: SurgeConfig,
    window_ms: u64,
    /// Request times per cell, oldest first.
    demand: FxHashMap<CellIndex, VecDeque<u64>>,
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

    /// Counts one trip request at `pickup`.
    pub fn record_request(&mut self, pickup: LatLng, now_ms: u64) {
        let times = self.demand.entry(cell_of(pickup)).or_default();
        times.push_back(now_ms);
        Self::expire(times, now_ms, self.window_ms);
    }

    /// Requests in the window in `point`'s cell and its six neighbours, and that cell.
    pub fn demand(&mut self, point: LatLng, now_ms: u64) -> (CellIndex, u64) {
        let cell = cell_of(point);
        let mut demand = 0u64;
        for neighbour in cell.grid_disk::<Vec<_>>(1) {
            if let Some(times) = self.demand.get_mut(&neighbour) {
                Self::expire(times, now_ms, self.window_ms);
                demand += times.len() as u64;
            }
        }
        (cell, demand)
    }

    /// The surge at `point`, given the supply the caller counted there. The multiplier only
    /// depends on supply while supply < demand, so a caller may stop counting at `demand`.
    pub fn reading(&mut self, point: LatLng, supply: u64, now_ms: u64) -> SurgeReading {
        let (cell, demand) = self.demand(point, now_ms);
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
    /// count there (the cell and its six neighbours). Read-only, for the map view: expired
    /// times are skipped, not dropped. O(cells with demand x 7).
    pub fn active_demand(&self, now_ms: u64) -> Vec<(CellIndex, u64)> {
        let live = |cell: &CellIndex| {
            self.demand.get(cell).map_or(0, |times| {
                times
                    .iter()
                    .filter(|&&t| t.saturating_add(self.window_ms) > now_ms)
                    .count() as u64
            })
        };
        self.demand
            .keys()
            .filter(|cell| live(cell) > 0)
            .map(|&cell| {
                let demand = cell.grid_disk::<Vec<_>>(1).iter().map(live).sum();
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

    fn expire(times: &mut VecDeque<u64>, now_ms: u64, window_ms: u64) {
        while times
            .front()
            .is_some_and(|&t| t.saturating_add(window_ms) <= now_ms)
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
        let mut s = SurgeTracker::new(SurgeConfig::default());
        let p = LatLng::new(40.7, -74.0).unwrap();
        assert_eq!(s.reading(p, 2, 0).multiplier, 1.0);
        for i in 0..6 {
            s.record_request(p, i * 1000);
        }
        let r = s.reading(p, 2, 10_000);
        assert_eq!(r.demand, 6);
        assert_eq!(r.multiplier, 3.0);
        assert_eq!(s.reading(p, 4, 10_000).multiplier, 1.5);
        // A window later the requests no longer count.
        assert_eq!(s.reading(p, 2, 70_000).demand, 0);
        s.sweep(70_000);
        assert!(s.demand.is_empty());
    }
}
