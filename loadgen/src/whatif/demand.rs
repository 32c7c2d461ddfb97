//! Real demand from a trips CSV, with a synthetic fleet, as a what-if [`Source`].
//!
//! Columns are found by header name: the request time (`trip_start_timestamp` or
//! `request_time`, Unix seconds), `pickup_latitude`, `pickup_longitude`, `dropoff_latitude`,
//! `dropoff_longitude`, and optionally the duration (`trip_seconds` or `duration_s`) and the
//! local hour (`trip_start_hour`). Trips from many days are re-timed onto one day: the local
//! hour (else the UTC hour) plus the minutes of the timestamp. A row without usable coordinates
//! or time is counted and skipped; its line number is kept for the report.
//!
//! The fleet: `drivers` drivers, each on one shift of `shift_hours`, centred on the time of a
//! randomly drawn request (so supply follows demand over the day), starting within 500 m of a
//! randomly drawn pickup (so supply starts where demand is).

use std::path::Path;

use dispatch::LatLng;
use dispatch::config::Config;
use dispatch::domain::{ExternalId, Rating, VehicleClass};
use dispatch::journal::Input;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{Facts, Legs};
use super::source::{Exo, Source};

/// 2024-01-01 00:00 UTC: the day the trips are re-timed onto.
pub const DAY_START_MS: u64 = 1_704_067_200_000;
const DAY_MS: u64 = 86_400_000;
/// Line numbers of bad rows kept for the report.
const BAD_ROWS_SHOWN: usize = 10;

/// The synthetic fleet.
#[derive(Clone, Copy, Debug)]
pub struct Fleet {
    /// Drivers.
    pub drivers: u32,
    /// Shift length, hours.
    pub shift_hours: f64,
    /// Seed of shifts and start positions (the same for every variant).
    pub seed: u64,
}

struct Trip {
    at_ms: u64,
    pickup: LatLng,
    dropoff: LatLng,
    ride_ms: Option<u64>,
    line: u64,
}

fn column(headers: &csv::StringRecord, names: &[&str]) -> Option<usize> {
    headers.iter().position(|h| names.contains(&h.trim()))
}

/// Reads the CSV and builds the fleet.
pub fn from_csv(path: &Path, fleet: Fleet) -> Result<Source, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let headers = reader
        .headers()
        .map_err(|e| format!("{}: no header row: {e}", path.display()))?
        .clone();
    let need = |names: &[&str]| {
        column(&headers, names).ok_or_else(|| {
            format!(
                "{}: no column {} in the header",
                path.display(),
                names.join(" or ")
            )
        })
    };
    let time = need(&["trip_start_timestamp", "request_time"])?;
    let coords = [
        need(&["pickup_latitude"])?,
        need(&["pickup_longitude"])?,
        need(&["dropoff_latitude"])?,
        need(&["dropoff_longitude"])?,
    ];
    let duration = column(&headers, &["trip_seconds", "duration_s"]);
    let local_hour = column(&headers, &["trip_start_hour"]);
    let mut trips = Vec::new();
    let mut bad = Vec::new();
    let mut bad_count = 0u64;
    for (i, row) in reader.records().enumerate() {
        // Line 1 is the header.
        let line = i as u64 + 2;
        let parsed = row.ok().and_then(|r| {
            let num = |c: usize| r.get(c).and_then(|s| s.trim().parse::<f64>().ok());
            let ts = num(time)?;
            let pickup = LatLng::new(num(coords[0])?, num(coords[1])?).ok()?;
            let dropoff = LatLng::new(num(coords[2])?, num(coords[3])?).ok()?;
            let secs_of_day = match local_hour.and_then(num) {
                Some(h) if (0.0..24.0).contains(&h) => h * 3600.0 + ts.rem_euclid(3600.0),
                _ => ts.rem_euclid(86_400.0),
            };
            let ride_ms = duration
                .and_then(num)
                .filter(|s| *s > 0.0)
                .map(|s| (s * 1000.0) as u64);
            Some(Trip {
                at_ms: DAY_START_MS + (secs_of_day * 1000.0) as u64,
                pickup,
                dropoff,
                ride_ms,
                line,
            })
        });
        match parsed {
            Some(t) => trips.push(t),
            None => {
                bad_count += 1;
                if bad.len() < BAD_ROWS_SHOWN {
                    bad.push(line);
                }
            }
        }
    }
    if trips.is_empty() {
        return Err(format!("{}: no usable trip rows", path.display()));
    }
    trips.sort_by_key(|t| (t.at_ms, t.line));
    let mut problems = Vec::new();
    if bad_count > 0 {
        let lines: Vec<String> = bad.iter().map(u64::to_string).collect();
        problems.push(format!(
            "{bad_count} rows skipped (missing or invalid coordinates or time), e.g. lines {}",
            lines.join(", ")
        ));
    }
    let mut inputs = fleet_inputs(&trips, fleet);
    let mut facts = Facts::default();
    for (n, t) in trips.iter().enumerate() {
        facts.legs.push(Legs {
            ride_ms: t.ride_ms,
            ..Legs::default()
        });
        let input = Input::RequestTrip {
            rider: id(format!("rider-{}", t.line)),
            request_id: None,
            pickup: t.pickup,
            dropoff: t.dropoff,
            class: VehicleClass::Any,
        };
        inputs.push((t.at_ms, Exo::Request(n as u32, input)));
    }
    // Stable: at equal times drivers come online before the requests.
    inputs.sort_by_key(|x| x.0);
    Ok(Source {
        base: Config::default(),
        inputs,
        facts,
        problems,
        requests: trips.len() as u32,
        drivers: Default::default(),
        load_cpu: Default::default(),
    })
}

fn id(s: String) -> ExternalId {
    ExternalId::new("id", &s).expect("generated ids are short and printable")
}

fn fleet_inputs(trips: &[Trip], fleet: Fleet) -> Vec<(u64, Exo)> {
    let mut rng = ChaCha8Rng::seed_from_u64(fleet.seed);
    let shift_ms = (fleet.shift_hours.clamp(0.5, 24.0) * 3_600_000.0) as u64;
    let mut out = Vec::with_capacity(2 * fleet.drivers as usize);
    for i in 0..fleet.drivers {
        let anchor = &trips[rng.random_range(0..trips.len())];
        let start = anchor
            .at_ms
            .saturating_sub(shift_ms / 2)
            .clamp(DAY_START_MS, DAY_START_MS + DAY_MS - shift_ms.min(DAY_MS));
        let near = &trips[rng.random_range(0..trips.len())].pickup;
        let (north_m, east_m) = (
            rng.random_range(-500.0..500.0),
            rng.random_range(-500.0..500.0),
        );
        let lat = near.lat_deg() + north_m / 111_195.0;
        let lng = near.lng_deg() + east_m / (111_195.0 * near.lat_deg().to_radians().cos());
        let position = LatLng::new(lat, lng).unwrap_or(*near);
        let driver = id(format!("driver-{i}"));
        let rating = Rating::new(rng.random_range(4.3..5.0)).expect("within 1..=5");
        out.push((
            start,
            Exo::Input(Input::GoOnline {
                driver: driver.clone(),
                position,
                rating,
                class: VehicleClass::Economy,
                gateway: None,
            }),
        ));
        out.push((start + shift_ms, Exo::Input(Input::GoOffline { driver })));
    }
    out
}
