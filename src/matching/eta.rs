//! Pickup ETA estimation behind a trait, chosen at start (`eta.model`): this straight-line
//! model, or the road-graph model in [`crate::eta`].
//!
//! The default model is what most dispatch systems start with: great-circle distance times a
//! detour factor (streets are not straight lines), divided by the typical city speed for the
//! hour of day.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::domain::LatLng;

/// Where an ETA came from, so a person reading an offer knows how far to trust it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EtaSource {
    /// The straight-line model (the configured model is `haversine`).
    #[default]
    StraightLine,
    /// Routed on the road graph.
    Road,
    /// The road model could not place a point on its roads (off the map, or farther than the
    /// maximum snap distance), so the straight-line estimate stands in.
    StraightLineFallback,
}

/// An estimate and its source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eta {
    /// Seconds.
    pub eta_s: f64,
    /// How it was estimated.
    pub source: EtaSource,
}

/// Estimates driving time between two points. `Sync`: the engine's read view answers
/// NearbyDrivers on many gRPC threads at once with one shared model.
pub trait EtaModel: Send + Sync + std::fmt::Debug {
    /// Seconds to drive from `from` to `to`, given their great-circle `distance_m`, at `now_ms`.
    fn eta_s(&self, from: LatLng, to: LatLng, distance_m: f64, now_ms: u64) -> f64 {
        self.estimate(from, to, distance_m, now_ms).eta_s
    }

    /// Like [`EtaModel::eta_s`], with the estimate's source.
    fn estimate(&self, from: LatLng, to: LatLng, distance_m: f64, now_ms: u64) -> Eta;

    /// Estimates from each candidate `(position, great-circle metres)` to `to`, into `out` in
    /// the same order. Models with a cheaper batched query (one search from the pickup)
    /// override this; the default asks [`EtaModel::estimate`] per candidate.
    fn many_to_one(&self, from: &[(LatLng, f64)], to: LatLng, now_ms: u64, out: &mut Vec<Eta>) {
        out.clear();
        out.extend(from.iter().map(|&(p, d)| self.estimate(p, to, d, now_ms)));
    }
}

/// Which ETA model the dispatcher uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtaModelKind {
    /// Great-circle distance x detour factor / speed for the hour.
    #[default]
    Haversine,
    /// Routed on the road graph of `eta.road_map`, x congestion for the hour.
    Road,
}

/// Settings of the ETA models: which one, the straight-line model's speeds, and the road
/// model's map, congestion and snapping.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtaConfig {
    /// `haversine` (default) or `road`.
    pub model: EtaModelKind,
    /// With `model = "road"`: the OpenStreetMap extract (`.osm.pbf`) read at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub road_map: Option<PathBuf>,
    /// Road model: multiplier on the map's free-flow times for each hour of the local day
    /// (1.0 = the map's own speeds; 1.5 = traffic takes half as long again).
    pub road_congestion_by_hour: [f64; 24],
    /// Road model: a point farther than this from every road is not placed on the graph and
    /// gets the straight-line estimate instead, metres.
    pub road_max_snap_m: f64,
    /// Road model: the distance from a point to its road is covered at this speed, metres per
    /// second.
    pub road_snap_speed_mps: f64,
    /// Road distance over great-circle distance (1.3 is typical for a street grid).
    pub detour_factor: f64,
    /// Typical driving speed for each hour of the local day, metres per second.
    pub speed_mps_by_hour: [f64; 24],
    /// Local time offset from UTC, hours (for the hour-of-day lookup).
    pub utc_offset_hours: i32,
}

impl Default for EtaConfig {
    fn default() -> Self {
        // Night is free-flowing, rush hours crawl: ~40 km/h at night, ~20 km/h at 8:00 and
        // 17:00, ~29 km/h in between.
        let mut speed = [8.0; 24];
        speed[..6].fill(11.0);
        for h in [7, 8, 9, 16, 17, 18] {
            speed[h] = 5.5;
        }
        speed[22..].fill(10.0);
        EtaConfig {
            model: EtaModelKind::Haversine,
            road_map: None,
            road_congestion_by_hour: [1.0; 24],
            road_max_snap_m: 150.0,
            road_snap_speed_mps: 3.0,
            detour_factor: 1.3,
            speed_mps_by_hour: speed,
            utc_offset_hours: 0,
        }
    }
}

/// Distance x detour factor / speed for the hour of day.
#[derive(Clone, Debug)]
pub struct HaversineEta {
    config: EtaConfig,
}

impl HaversineEta {
    /// A model with these settings. Speeds must be positive (checked by the config loader).
    pub fn new(config: EtaConfig) -> Self {
        HaversineEta { config }
    }

    fn hour_of_day(&self, now_ms: u64) -> usize {
        hour_of_day(now_ms, self.config.utc_offset_hours)
    }

    /// Seconds for `distance_m` of straight line at `now_ms`.
    pub fn straight_line_s(&self, distance_m: f64, now_ms: u64) -> f64 {
        let speed = self.config.speed_mps_by_hour[self.hour_of_day(now_ms)];
        distance_m * self.config.detour_factor / speed
    }
}

/// The local hour (0..24) of `now_ms` at `utc_offset_hours`.
pub fn hour_of_day(now_ms: u64, utc_offset_hours: i32) -> usize {
    let local_s = (now_ms / 1000) as i64 + i64::from(utc_offset_hours) * 3600;
    (local_s.rem_euclid(86_400) / 3600) as usize
}

impl EtaModel for HaversineEta {
    fn estimate(&self, _from: LatLng, _to: LatLng, distance_m: f64, now_ms: u64) -> Eta {
        Eta {
            eta_s: self.straight_line_s(distance_m, now_ms),
            source: EtaSource::StraightLine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_the_hour_of_day() {
        let model = HaversineEta::new(EtaConfig::default());
        let p = LatLng::new(40.7, -74.0).unwrap();
        let night = model.eta_s(p, p, 1000.0, 3 * 3_600_000);
        let rush = model.eta_s(p, p, 1000.0, 8 * 3_600_000);
        assert!((night - 1300.0 / 11.0).abs() < 1e-9);
        assert!(rush > night * 1.9);
    }
}
