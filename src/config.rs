//! The engine's settings with their embedded defaults: `Config::default()` is a complete,
//! working configuration, so `dispatchd` runs with no file and no external service.
//!
//! Every section derives serde, so the whole struct is read from TOML and overridden key by key
//! from the environment and flags by [`crate::config_load`] with no per-key code: a new field
//! is configurable once it derives `Serialize`/`Deserialize` (durations with
//! `#[serde(with = "humantime_serde")]`, read as `15s`, `2m`). Sections are
//! `deny_unknown_fields`, so a misspelt key fails start-up naming it. [`Config::validate`]
//! checks what types cannot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::events::{LogConfig, MatchPolicy};
use crate::journal::RecordConfig;
use crate::matching::{EtaConfig, ScoreWeights};
use crate::surge::SurgeConfig;

mod auth;
pub use auth::{AuthConfig, Role, TokenConfig};

/// Everything the server needs to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Metrics endpoint and log format.
    pub telemetry: TelemetryConfig,
    /// Bearer tokens and their roles; empty means authentication is off.
    pub auth: AuthConfig,
    /// Optional TLS for the gRPC listener.
    pub tls: TlsConfig,
    /// The durable event log (off unless `data_dir` is set; `dispatchd` sets `./data`).
    pub log: LogConfig,
    /// Recording the engine's inputs for replay (off unless `enabled`).
    pub record: RecordConfig,
    /// Named region polygons (`[[regions]]`); none means one implicit region, as before.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<crate::cluster::regions::RegionConfig>,
    /// Cluster mode: region logs on NATS JetStream (off unless `cluster.nats_url` is set).
    pub cluster: crate::cluster::config::ClusterConfig,
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
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            log: LogConfig::default(),
            record: RecordConfig::default(),
            regions: Vec::new(),
            cluster: Default::default(),
        }
    }
}

/// How trips are matched and how long each step may take.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Candidates are available drivers within this distance of the pickup, metres.
    pub search_radius_m: f64,
    /// At most this many candidates are scored per search.
    pub max_candidates: usize,
    /// How long a driver has to answer an offer.
    #[serde(with = "humantime_serde")]
    pub offer_timeout: Duration,
    /// How long a trip may search before it ends as NO_DRIVERS.
    #[serde(with = "humantime_serde")]
    pub dispatch_timeout: Duration,
    /// When every candidate was tried, search again after this long.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// How long an ended trip stays readable (GetTrip, idempotent retries).
    #[serde(with = "humantime_serde")]
    pub trip_retention: Duration,
    /// How many ended offers are remembered to explain late answers precisely.
    pub ended_offer_memory: usize,
    /// How requests are paired with drivers: greedy (each request at once) or batch.
    pub policy: MatchPolicy,
    /// With the batch policy, requests are collected for at most this long and matched
    /// together; within [`BATCH_WINDOW_MIN`]..=[`BATCH_WINDOW_MAX`] (see
    /// [`DispatchConfig::validate`]).
    #[serde(with = "humantime_serde")]
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
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Unary calls in flight across all connections; beyond this calls fail fast with
    /// RESOURCE_EXHAUSTED. Health and reflection are exempt, and so is the long-lived
    /// ReportLocations stream (its ingest is bounded by `location_queue`).
    pub max_concurrent_requests: usize,
    /// Calls in flight on one connection; further calls on it wait (back-pressure on that
    /// client only).
    pub max_concurrent_requests_per_connection: usize,
    /// On shutdown, how long in-flight calls may take to finish before the server stops anyway.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            control_queue: 16_384,
            location_queue: 256,
            max_batch_updates: 10_000,
            event_buffer: 1 << 20,
            max_message_bytes: 4 << 20,
            max_concurrent_requests: 4_096,
            max_concurrent_requests_per_connection: 1_024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Metrics and logs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where the HTTP side listens (plain HTTP): Prometheus `/metrics`, the operator's live map
    /// and its JSON/SSE API; `"off"` disables it. Formerly `metrics_listen` (still accepted,
    /// with a deprecation warning).
    #[serde(with = "optional_addr")]
    pub http_listen: Option<SocketAddr>,
    /// `human` (default) or `json` log lines on stderr.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax) used when `RUST_LOG` is not set.
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            log_format: LogFormat::Human,
            log_filter: "info".into(),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// TLS for the gRPC listener: both paths (PEM) or neither.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<PathBuf>,
    /// Private key, PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_path: Option<PathBuf>,
}

impl Config {
    /// Checks what the types cannot; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        fn check(ok: bool, key: &str, why: &str) -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(format!("`{key}` {why}"))
            }
        }
        crate::cluster::regions::RegionMap::from_config(&self.regions)?;
        self.cluster.validate(self.regions.len())?;
        let peer = &self.cluster.peer_token.0;
        if !peer.is_empty()
            && !self.auth.tokens.is_empty()
            && !(self.auth.tokens.iter())
                .any(|t| t.token == *peer && t.roles.contains(&Role::ClusterPeer))
        {
            return Err(
                "`cluster.peer_token` is not one of `auth.tokens` with role \
                        `cluster-peer`: the other members would refuse this process's calls"
                    .into(),
            );
        }
        let d = &self.dispatch;
        let positive = |x: f64| x.is_finite() && x > 0.0;
        d.validate()
            .map_err(|why| format!("`dispatch.batch_window`: {why}"))?;
        check(
            positive(d.search_radius_m),
            "dispatch.search_radius_m",
            "must be > 0",
        )?;
        check(
            d.max_candidates >= 1,
            "dispatch.max_candidates",
            "must be >= 1",
        )?;
        check(
            !d.offer_timeout.is_zero(),
            "dispatch.offer_timeout",
            "must be > 0",
        )?;
        check(
            !d.dispatch_timeout.is_zero(),
            "dispatch.dispatch_timeout",
            "must be > 0",
        )?;
        check(
            !d.retry_interval.is_zero(),
            "dispatch.retry_interval",
            "must be > 0",
        )?;
        let e = &self.eta;
        check(
            e.detour_factor >= 1.0 && e.detour_factor.is_finite(),
            "eta.detour_factor",
            "must be >= 1",
        )?;
        check(
            e.speed_mps_by_hour.iter().all(|&v| positive(v)),
            "eta.speed_mps_by_hour",
            "must all be > 0",
        )?;
        check(
            (-12..=14).contains(&e.utc_offset_hours),
            "eta.utc_offset_hours",
            "must be within -12..=14",
        )?;
        check(
            e.model != crate::matching::EtaModelKind::Road || e.road_map.is_some(),
            "eta.road_map",
            "must name an .osm.pbf file when `eta.model` is \"road\" (flag --road-map)",
        )?;
        check(
            e.road_congestion_by_hour.iter().all(|&v| positive(v)),
            "eta.road_congestion_by_hour",
            "must all be > 0 (1.0 = the map's own speeds)",
        )?;
        check(
            positive(e.road_max_snap_m),
            "eta.road_max_snap_m",
            "must be > 0",
        )?;
        check(
            positive(e.road_snap_speed_mps),
            "eta.road_snap_speed_mps",
            "must be > 0",
        )?;
        let w = &self.scoring;
        for (key, v) in [
            ("scoring.eta", w.eta),
            ("scoring.rating", w.rating),
            ("scoring.acceptance", w.acceptance),
            ("scoring.fairness", w.fairness),
        ] {
            check(v.is_finite() && v >= 0.0, key, "must be >= 0")?;
        }
        check(
            positive(w.eta_horizon_s),
            "scoring.eta_horizon_s",
            "must be > 0",
        )?;
        check(
            positive(w.idle_horizon_s),
            "scoring.idle_horizon_s",
            "must be > 0",
        )?;
        check(!self.surge.window.is_zero(), "surge.window", "must be > 0")?;
        check(
            positive(self.surge.supply_radius_m),
            "surge.supply_radius_m",
            "must be > 0",
        )?;
        check(
            self.surge.max_multiplier >= 1.0,
            "surge.max_multiplier",
            "must be >= 1",
        )?;
        let l = &self.limits;
        for (key, v) in [
            ("limits.control_queue", l.control_queue),
            ("limits.location_queue", l.location_queue),
            ("limits.max_batch_updates", l.max_batch_updates),
            ("limits.event_buffer", l.event_buffer),
            ("limits.max_message_bytes", l.max_message_bytes),
            ("limits.max_concurrent_requests", l.max_concurrent_requests),
            (
                "limits.max_concurrent_requests_per_connection",
                l.max_concurrent_requests_per_connection,
            ),
        ] {
            check(v >= 1, key, "must be >= 1")?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            check(
                !t.name.is_empty(),
                &format!("{key}.name"),
                "must not be empty",
            )?;
            check(
                t.token.len() >= 16,
                &format!("{key}.token"),
                "must be at least 16 characters",
            )?;
            check(
                !t.roles.is_empty(),
                &format!("{key}.roles"),
                "must name at least one role",
            )?;
            check(
                seen.insert(t.token.as_str()),
                &format!("{key}.token"),
                "is used twice",
            )?;
        }
        check(
            self.tls.cert_path.is_some() == self.tls.key_path.is_some(),
            "tls.cert_path",
            "and `tls.key_path` must be set together",
        )?;
        check(
            !self.record.enabled || crate::journal::journal_dir(self).is_some(),
            "record.enabled",
            "needs `record.dir` or a data dir (`log.data_dir`) to put the journal in",
        )?;
        Ok(())
    }
}

/// `Option<SocketAddr>` as a string, with `"off"` for `None` (TOML has no null).
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        v: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "off" | "" => Ok(None),
            t => t.parse().map(Some).map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{t}` is not an address like 127.0.0.1:9464 or \"off\": {e}"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_token_must_be_a_configured_cluster_peer_token() {
        let token = |secret: &str, role| TokenConfig {
            name: "t".into(),
            token: secret.into(),
            roles: vec![role],
        };
        let mut config = Config::default();
        config.cluster.peer_token = crate::cluster::config::PeerToken("p-0123456789abcdef".into());
        // Without authentication the token is only sent along.
        assert!(config.validate().is_ok());
        config.auth.tokens = vec![token("p-0123456789abcdef", Role::Admin)];
        let err = config.validate().unwrap_err();
        assert!(err.contains("cluster.peer_token"), "{err}");
        config.auth.tokens = vec![token("p-0123456789abcdef", Role::ClusterPeer)];
        assert!(config.validate().is_ok());
    }

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
