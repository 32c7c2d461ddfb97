//! The engine's settings with their embedded defaults: `Config::default()` is a complete,
//! working configuration, so `dispatchd` runs with no file and no external service.

use std::net::SocketAddr;
use std::time::Duration;

use crate::events::{LogConfig, MatchPolicy};
use crate::matching::{EtaConfig, ScoreWeights};
use crate::surge::SurgeConfig;

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Matching rules and lifecycles.
    pub dispatch: DispatchConfig,
    /// The default ETA model.
    pub eta: EtaConfig,
    /// Weights of the candidate score.
    pub scoring: ScoreWeights,
    /// Surge pricing signal.
    pub surge: SurgeConfig,
    /// Queue and message bounds.
    pub limits: LimitsConfig,
    /// The durable event log (off unless `data_dir` is set; `dispatchd` sets `./data`).
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            dispatch: DispatchConfig::default(),
            eta: EtaConfig::default(),
            scoring: ScoreWeights::default(),
            surge: SurgeConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// How trips are matched and how long each step may take.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// Candidates are available drivers within this distance of the pickup, metres.
    pub search_radius_m: f64,
    /// At most this many candidates are scored per search.
    pub max_candidates: usize,
    /// How long a driver has to answer an offer.
    pub offer_timeout: Duration,
    /// How long a trip may search before it ends as NO_DRIVERS.
    pub dispatch_timeout: Duration,
    /// When every candidate was tried, search again after this long.
    pub retry_interval: Duration,
    /// How long an ended trip stays readable (GetTrip, idempotent retries).
    pub trip_retention: Duration,
    /// How many ended offers are remembered to explain late answers precisely.
    pub ended_offer_memory: usize,
    /// How requests are paired with drivers: greedy (each request at once) or batch.
    pub policy: MatchPolicy,
    /// With the batch policy, requests are collected for at most this long and matched
    /// together; within [`BATCH_WINDOW_MIN`]..=[`BATCH_WINDOW_MAX`] (see
    /// [`DispatchConfig::validate`]).
    pub batch_window: Duration,
}

/// Shortest accepted batch window: shorter windows hold too few requests to gain anything.
pub const BATCH_WINDOW_MIN: Duration = Duration::from_millis(100);
/// Longest accepted batch window: a rider should not wait longer for a first offer.
pub const BATCH_WINDOW_MAX: Duration = Duration::from_secs(10);

impl DispatchConfig {
    /// Checks the settings that have a valid range; the message names the offending setting.
    /// Today: `batch_window` must be within 100 ms..=10 s (checked whatever the policy, so a
    /// switch to batch cannot fail later).
    ///
    /// # Runtime
    /// O(1).
    pub fn validate(&self) -> Result<(), String> {
        if !(BATCH_WINDOW_MIN..=BATCH_WINDOW_MAX).contains(&self.batch_window) {
            return Err(format!(
                "batch window must be within 100 ms..=10 s, got {} ms",
                self.batch_window.as_millis()
            ));
        }
        Ok(())
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            search_radius_m: 5_000.0,
            max_candidates: 20,
            offer_timeout: Duration::from_secs(15),
            dispatch_timeout: Duration::from_secs(120),
            retry_interval: Duration::from_secs(2),
            trip_retention: Duration::from_secs(600),
            ended_offer_memory: 100_000,
            policy: MatchPolicy::Greedy,
            batch_window: Duration::from_secs(2),
        }
    }
}

/// Bounds that keep memory and latency in check under overload.
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// Control commands (requests, answers, queries) waiting for the dispatcher; beyond this
    /// calls fail fast with RESOURCE_EXHAUSTED.
    pub control_queue: usize,
    /// Location batches waiting for the dispatcher; beyond this batches are shed.
    pub location_queue: usize,
    /// Updates allowed in one LocationBatch.
    pub max_batch_updates: usize,
    /// Dispatch events kept in memory for subscribers.
    pub event_buffer: usize,
    /// Largest gRPC message accepted, bytes.
    pub max_message_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            control_queue: 16_384,
            location_queue: 256,
            max_batch_updates: 10_000,
            event_buffer: 1 << 20,
            max_message_bytes: 4 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_window_is_validated() {
        let mut d = DispatchConfig::default();
        assert!(d.validate().is_ok());
        for (ms, ok) in [(99, false), (100, true), (10_000, true), (10_001, false)] {
            d.batch_window = Duration::from_millis(ms);
            assert_eq!(d.validate().is_ok(), ok, "{ms} ms");
        }
    }
}
