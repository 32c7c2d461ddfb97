//! Pickup ETA estimation behind a trait, so a road-graph model can replace the default later.
//!
//! The default model is what most dispatch systems start with: great-circle distance times a
//! detour factor (streets are not straight lines), divided by the typical city speed for the
//! hour of day.

use crate::domain::LatLng;

/// Estimates driving time between two points.
pub trait EtaModel: Send + std::fmt::Debug {
    /// Seconds to drive from `from` to `to`, given their great-circle `distance_m`, at `now_ms`.
    fn eta_s(&self, from: LatLng, to: LatLng, distance_m: f64, now_ms: u64) -> f64;
}

/// Settings of [`HaversineEta`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtaConfig {
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
        let local_s = (now_ms / 1000) as i64 + i64::from(self.config.utc_offset_hours) * 3600;
        (local_s.rem_euclid(86_400) / 3600) as usize
    }
}

impl EtaModel for HaversineEta {
    fn eta_s(&self, _from: LatLng, _to: LatLng, distance_m: f64, now_ms: u64) -> f64 {
        let speed = self.config.speed_mps_by_hour[self.hour_of_day(now_ms)];
        distance_m * self.config.detour_factor / speed
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
