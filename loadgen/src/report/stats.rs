//! The small statistics behind a report: microsecond latency histograms, their percentiles in
//! milliseconds, and the Gini coefficient of trips per driver.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest latency a histogram records, microseconds (10 minutes); longer values saturate.
const MAX_LATENCY_US: u64 = 600_000_000;

/// A latency histogram in microseconds.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("bounds 1..600e6 with 3 significant figures are valid") // constant arguments
}

/// Records one latency, saturating instead of failing on outliers.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// Percentiles of a latency distribution, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value seen.
    pub max: f64,
    /// Number of samples.
    pub count: u64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds; all zero when it is empty.
    pub fn from_us(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
            count: h.len(),
        }
    }

    /// Whether p50 <= p90 <= p99 <= p999 <= max.
    pub fn is_monotone(&self) -> bool {
        self.p50 <= self.p90
            && self.p90 <= self.p99
            && self.p99 <= self.p999
            && self.p999 <= self.max
    }
}

/// Gini coefficient of non-negative counts: 0 when everyone has the same, towards 1 when one
/// has everything. 0 for an empty or all-zero input.
pub fn gini(counts: &[u32]) -> f64 {
    let n = counts.len();
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if n == 0 || total == 0 {
        return 0.0;
    }
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    // G = 2 * sum(i * x_i) / (n * sum x) - (n + 1) / n, with i from 1 over ascending x.
    let weighted: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, &c)| (i as f64 + 1.0) * f64::from(c))
        .sum();
    let n = n as f64;
    2.0 * weighted / (n * total as f64) - (n + 1.0) / n
}
