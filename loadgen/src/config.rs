//! The knobs of a run. One struct serves both the command line (clap derives the flags from it)
//! and tests (which build it with struct update syntax over `Config::default()`).

use clap::{Args, ValueEnum};
use std::time::Duration;

/// What the load generator exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Drivers and riders in a simulated city: matching latency and quality.
    City,
    /// Batched location updates as fast as the server takes them.
    Ingest,
    /// NearbyDrivers queries as fast as possible.
    Nearby,
    /// Regions on three `dispatchd` over a 3-node NATS cluster, owners killed and paused under
    /// load, the history checked from the streams (see `failover`).
    Failover,
}

impl Mode {
    /// The mode's name as it appears in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::City => "city",
            Mode::Ingest => "ingest",
            Mode::Nearby => "nearby",
            Mode::Failover => "failover",
        }
    }
}

/// Everything a run needs to know, except where the server is.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// What to exercise.
    #[arg(long, value_enum, default_value_t = Mode::City)]
    pub mode: Mode,
    /// Simulated drivers.
    #[arg(long, default_value_t = 100_000)]
    pub drivers: usize,
    /// Trip requests per second (city mode).
    #[arg(long, default_value_t = 1000.0)]
    pub requests_per_sec: f64,
    /// Length of the measured window: seconds, or with a unit (500ms, 60s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// After the window, how long to keep answering offers (no new requests) so open trips
    /// can settle; not counted in the rates.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub drain: Duration,
    /// Probability that a driver who answers an offer accepts it.
    #[arg(long, default_value_t = 0.9)]
    pub accept_prob: f64,
    /// Probability that a driver never answers an offer (it expires after 15 s).
    #[arg(long, default_value_t = 0.03)]
    pub ignore_prob: f64,
    /// Probability that a rider cancels a request if no driver accepted it within a few seconds.
    #[arg(long, default_value_t = 0.01)]
    pub cancel_prob: f64,
    /// Seed for every random choice of the simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Trip legs (to the pickup, to the drop-off, boarding) run this many times faster than
    /// real time, so a short run recycles drivers. Offer answers stay real-time (1-8 s).
    #[arg(long, default_value_t = 20.0)]
    pub trip_time_scale: f64,
    /// Seconds between a driver's location reports (each jittered by +-20 %).
    #[arg(long, default_value_t = 4.0)]
    pub report_interval_s: f64,
    /// Driver gateways: each has one location stream and one offer stream.
    #[arg(long, default_value_t = 4)]
    pub gateways: usize,
    /// HTTP/2 connections to the server (streams and calls are spread over them).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Concurrent query clients (nearby mode) or location streams (ingest mode).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Location updates per batch in ingest mode; in city mode, the most one batch carries.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Mean minutes a driver stays online before going offline for a while (city mode);
    /// 0 disables churn.
    #[arg(long, default_value_t = 30.0)]
    pub online_minutes: f64,
    /// Side of the square city, km.
    #[arg(long, default_value_t = 30.0)]
    pub city_km: f64,
    /// Latitude of the city centre, degrees.
    #[arg(long, default_value_t = 40.7, allow_negative_numbers = true)]
    pub centre_lat: f64,
    /// Longitude of the city centre, degrees.
    #[arg(long, default_value_t = -74.0, allow_negative_numbers = true)]
    pub centre_lng: f64,
    /// Demand hotspots.
    #[arg(long, default_value_t = 8)]
    pub hotspots: usize,
    /// Street spacing, metres.
    #[arg(long, default_value_t = 200.0)]
    pub block_m: f64,
    /// An OpenStreetMap `.osm.pbf` file: the city becomes that map's car roads (drivers drive
    /// along them at the roads' speeds, pickups and drop-offs lie on them, trip legs are
    /// routed) instead of the square street grid; `--city-km`, `--centre-*` and `--block-m`
    /// are then ignored.
    #[arg(long)]
    pub map: Option<std::path::PathBuf>,
    /// Show a live progress bar on stderr.
    #[arg(skip = false)]
    pub progress: bool,
    /// Prefix of every id this run sends (driver, rider, request, gateway ids); empty picks one
    /// from the clock so repeated runs against one server do not collide.
    #[arg(long, default_value = "")]
    pub id_prefix: String,
    /// Leave this run's drivers online at the end. By default every driver not on a trip is
    /// taken offline, so a shared server is not left with drivers nobody answers for (skipped
    /// when loadgen started the server itself).
    #[arg(long)]
    pub leave_online: bool,
    /// A file holding the bearer token to send (for a server with `auth.tokens`; it needs the
    /// driver-gateway, rider-gateway and subscriber roles, and admin for nearby mode).
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// City mode: keep this many WatchTrip streams open, watching new trips as watched ones
    /// end, to measure what trip watchers cost the server (see "server CPU per event").
    #[arg(long, default_value_t = 0)]
    pub watch_trips: usize,
    /// The server's process id, to report its CPU per published event over the window (reads
    /// `/proc/<pid>/stat`). Set automatically when loadgen starts the server itself.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mode: Mode::City,
            drivers: 100_000,
            requests_per_sec: 1000.0,
            duration: Duration::from_secs(60),
            drain: Duration::from_secs(3),
            accept_prob: 0.9,
            ignore_prob: 0.03,
            cancel_prob: 0.01,
            seed: 1,
            trip_time_scale: 20.0,
            report_interval_s: 4.0,
            gateways: 4,
            connections: 4,
            clients: 4,
            batch_size: 1000,
            online_minutes: 30.0,
            city_km: 30.0,
            centre_lat: 40.7,
            centre_lng: -74.0,
            hotspots: 8,
            block_m: 200.0,
            map: None,
            progress: false,
            id_prefix: String::new(),
            leave_online: false,
            watch_trips: 0,
            server_pid: None,
            token_file: None,
        }
    }
}

impl Config {
    /// Refuses settings the simulation cannot run with, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let prob = |name: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(format!("--{name} must be within 0..=1, got {p}"))
            }
        };
        prob("accept-prob", self.accept_prob)?;
        prob("ignore-prob", self.ignore_prob)?;
        prob("cancel-prob", self.cancel_prob)?;
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("--{name} must be positive, got {v}"))
            }
        };
        positive("trip-time-scale", self.trip_time_scale)?;
        positive("report-interval-s", self.report_interval_s)?;
        positive("city-km", self.city_km)?;
        positive("block-m", self.block_m)?;
        if !(self.requests_per_sec.is_finite() && self.requests_per_sec >= 0.0) {
            return Err("--requests-per-sec must be >= 0".into());
        }
        if !(self.online_minutes.is_finite() && self.online_minutes >= 0.0) {
            return Err("--online-minutes must be >= 0".into());
        }
        if self.drivers == 0 {
            return Err("--drivers must be at least 1".into());
        }
        if self.gateways == 0 || self.connections == 0 || self.clients == 0 || self.batch_size == 0
        {
            return Err(
                "--gateways, --connections, --clients and --batch-size must be at least 1".into(),
            );
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if !(-85.0..=85.0).contains(&self.centre_lat)
            || !(-180.0..=180.0).contains(&self.centre_lng)
        {
            return Err("--centre-lat/--centre-lng out of range".into());
        }
        Ok(())
    }
}

/// Parses `60`, `60s`, `500ms`, `2m` or `1.5s` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 60, 60s, 500ms or 2m)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 1e7 {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_flag() {
        assert!(Config::default().validate().is_ok());
        let bad = Config {
            accept_prob: 1.5,
            ..Config::default()
        };
        assert!(bad.validate().unwrap_err().contains("--accept-prob"));
    }
}
