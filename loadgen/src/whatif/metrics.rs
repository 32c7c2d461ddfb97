//! What a what-if run measures, for the whole run and per hour of day: requests, match rate,
//! mean and p90 pickup ETA, mean actual pickup (the modelled drive, which differs from the
//! offered ETA when the recording timed the leg), time to first offer, cancellations,
//! NO_DRIVERS, the Gini coefficient of trips per driver, and utilisation (on-trip time over
//! online time).

use std::collections::HashMap;

use serde::Serialize;

use crate::report::gini;

/// Sums of one scope (the run, or one hour) while the run goes.
#[derive(Debug, Default)]
pub struct Acc {
    /// Trip requests.
    pub requests: u64,
    /// Requests assigned a driver.
    pub matched: u64,
    /// Offered pickup ETA of matched trips, s.
    pub etas_s: Vec<f64>,
    /// Modelled pickup drive of matched trips, s.
    pub actual_s: Vec<f64>,
    /// Request to first offer, ms.
    pub to_offer_ms: Vec<f64>,
    /// Trips cancelled (rider or driver).
    pub cancellations: u64,
    /// Trips ended NO_DRIVERS.
    pub no_drivers: u64,
    /// Offers sent.
    pub offers: u64,
    /// Driver time on a trip (assigned to drop-off), ms.
    pub busy_ms: u64,
    /// Driver time online, ms.
    pub online_ms: u64,
    /// Completed trips per driver online in the scope.
    pub driver_trips: HashMap<String, u32>,
}

/// The figures of one scope.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Trip requests.
    pub requests: u64,
    /// Requests assigned a driver.
    pub matched: u64,
    /// matched / requests.
    pub match_rate: f64,
    /// Mean offered pickup ETA of matched trips, s.
    pub mean_pickup_eta_s: f64,
    /// 90th percentile of the same, s.
    pub p90_pickup_eta_s: f64,
    /// Mean modelled pickup drive, s.
    pub mean_actual_pickup_s: f64,
    /// Mean time from request to first offer, engine ms.
    pub mean_time_to_offer_ms: f64,
    /// Cancelled trips.
    pub cancellations: u64,
    /// Trips that ended NO_DRIVERS.
    pub no_drivers: u64,
    /// Offers per matched trip.
    pub offers_per_match: f64,
    /// Gini coefficient of completed trips per online driver (0 = all equal).
    pub driver_trips_gini: f64,
    /// On-trip time over online time.
    pub utilisation: f64,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn p90(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.9).round() as usize]
}

impl Acc {
    /// The scope's figures.
    pub fn stats(&self) -> Stats {
        let counts: Vec<u32> = self.driver_trips.values().copied().collect();
        Stats {
            requests: self.requests,
            matched: self.matched,
            match_rate: self.matched as f64 / self.requests.max(1) as f64,
            mean_pickup_eta_s: mean(&self.etas_s),
            p90_pickup_eta_s: p90(&self.etas_s),
            mean_actual_pickup_s: mean(&self.actual_s),
            mean_time_to_offer_ms: mean(&self.to_offer_ms),
            cancellations: self.cancellations,
            no_drivers: self.no_drivers,
            offers_per_match: self.offers as f64 / self.matched.max(1) as f64,
            driver_trips_gini: gini(&counts),
            utilisation: self.busy_ms as f64 / self.online_ms.max(1) as f64,
        }
    }
}

/// The hour of day (0-23) of an engine time.
pub fn hour_of(at_ms: u64, utc_offset_hours: i64) -> usize {
    ((at_ms / 3_600_000) as i64 + utc_offset_hours).rem_euclid(24) as usize
}

/// Adds the interval `[from, to)` to `add` per hour of day it spans.
pub fn split_by_hour(from: u64, to: u64, utc_offset_hours: i64, mut add: impl FnMut(usize, u64)) {
    let mut at = from;
    while at < to {
        let hour_end = (at / 3_600_000 + 1) * 3_600_000;
        let end = hour_end.min(to);
        add(hour_of(at, utc_offset_hours), end - at);
        at = end;
    }
}

/// Figures of one metric over seeds: mean and a 95 % confidence half-width (Student's t).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Interval {
    /// Mean over seeds.
    pub mean: f64,
    /// Half-width of the 95 % confidence interval (0 with one seed).
    pub ci95: f64,
}

/// Mean and 95 % interval of samples.
pub fn interval(xs: &[f64]) -> Interval {
    let n = xs.len();
    let m = mean(xs);
    if n < 2 {
        return Interval { mean: m, ci95: 0.0 };
    }
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    // Two-sided 97.5 % quantiles of Student's t for 1..=10 degrees of freedom, then normal.
    const T: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    let t = T.get(n - 2).copied().unwrap_or(1.96);
    Interval {
        mean: m,
        ci95: t * (var / n as f64).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_spanning_midnight_is_split_by_hour() {
        let mut per = [0u64; 24];
        let day = 86_400_000;
        split_by_hour(day - 1_800_000, day + 600_000, 0, |h, ms| per[h] += ms);
        assert_eq!(per[23], 1_800_000);
        assert_eq!(per[0], 600_000);
        assert_eq!(per.iter().sum::<u64>(), 2_400_000);
    }

    #[test]
    fn the_interval_of_equal_samples_is_a_point_and_of_spread_ones_is_not() {
        let same = interval(&[2.0, 2.0, 2.0]);
        assert_eq!((same.mean, same.ci95), (2.0, 0.0));
        let spread = interval(&[1.0, 3.0]);
        assert_eq!(spread.mean, 2.0);
        assert!((spread.ci95 - 12.706).abs() < 1e-9);
    }
}
