//! Greedy vs batch matching on the same simulated city, in-process, with a manual clock.
//!
//! Drivers start uniform over a square city; riders arrive as a Poisson stream with uniform
//! pickups and drop-offs 1-4 km away. A driver answers an offer 2-6 s after it is sent and
//! accepts with probability 0.85 (decided by a hash of rider and driver, so both policies see
//! the same answers to the same pairings); an accepted trip completes after the pickup ETA plus
//! the ride at 8 m/s, leaving the driver free at the drop-off. Both policies get the same
//! seed, so the same requests at the same instants.
//!
//! Run: `cargo run --release --example policy_compare [drivers] [requests_per_min] [minutes]
//! [window_ms]` (defaults 150 drivers, 40 requests/min, 60 minutes, 2000 ms window). Prints, per policy: trips served,
//! ended with no driver, mean and p90 pickup distance of assigned trips, mean time from
//! request to assignment, and offers per assigned trip.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use dispatch::config::Config;
use dispatch::domain::{ExternalId, LatLng, OfferId, Rating, TripId, VehicleClass};
use dispatch::engine::{Dispatcher, GoOnline, TripAction, TripRequest};
use dispatch::events::{EventKind, MatchPolicy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const T0: u64 = 1_700_000_000_000;
const CENTER: (f64, f64) = (40.75, -73.99);
const SIDE_M: f64 = 8_000.0;
const TICK_MS: u64 = 100;
const ACCEPT_P: f64 = 0.85;
const RIDE_SPEED_MPS: f64 = 8.0;

fn point(north_m: f64, east_m: f64) -> LatLng {
    let lat = CENTER.0 + north_m / 111_195.0;
    let lng = CENTER.1 + east_m / (111_195.0 * CENTER.0.to_radians().cos());
    LatLng::new(lat, lng).expect("inside the city")
}

fn id(s: String) -> ExternalId {
    ExternalId::new("id", &s).expect("valid id")
}

#[derive(Clone, Debug)]
struct Request {
    at_ms: u64,
    pickup: (f64, f64),
    dropoff: (f64, f64),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Answer {
        offer: OfferId,
        driver: String,
        accept: bool,
    },
    Finish {
        trip: TripId,
        driver: String,
    },
}

#[derive(Debug, Default)]
struct Outcome {
    requested: u64,
    assigned: u64,
    no_drivers: u64,
    offers: u64,
    pickup_m: Vec<f64>,
    wait_ms: Vec<u64>,
}

fn simulate(
    policy: MatchPolicy,
    window_ms: u64,
    drivers: usize,
    requests: &[Request],
    end_ms: u64,
) -> Outcome {
    let mut config = Config::default();
    config.dispatch.policy = policy;
    config.dispatch.batch_window = Duration::from_millis(window_ms);
    config
        .dispatch
        .validate()
        .expect("window within 100 ms..=10 s");
    config.dispatch.trip_retention = Duration::from_secs(60);
    let mut d = Dispatcher::new(&config, dispatch::index::default_index(), 0);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for i in 0..drivers {
        let p = point(
            rng.random_range(-SIDE_M / 2.0..SIDE_M / 2.0),
            rng.random_range(-SIDE_M / 2.0..SIDE_M / 2.0),
        );
        d.go_online(
            T0,
            GoOnline {
                driver: id(format!("d-{i}")),
                position: p,
                rating: Rating::new(4.5 + 0.5 * rng.random_range(0.0..1.0)).expect("in range"),
                class: VehicleClass::Economy,
                gateway: None,
            },
        )
        .expect("online");
    }
    d.take_events();

    let mut out = Outcome::default();
    let mut actions: BinaryHeap<Reverse<(u64, u64, Action)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut rider_of: HashMap<TripId, String> = HashMap::new();
    let mut requested_at: HashMap<TripId, u64> = HashMap::new();
    let mut ride_ms: HashMap<TripId, u64> = HashMap::new();
    let mut offer_distance: HashMap<TripId, f64> = HashMap::new();
    let mut next_request = 0;
    let mut now = T0;
    while now < T0 + end_ms {
        now += TICK_MS;
        d.fire_due(now);
        while next_request < requests.len() && T0 + requests[next_request].at_ms <= now {
            let r = &requests[next_request];
            let rider = format!("r-{next_request}");
            let (trip, _) = d
                .request_trip(
                    now,
                    TripRequest {
                        rider: id(rider.clone()),
                        request_id: None,
                        pickup: point(r.pickup.0, r.pickup.1),
                        dropoff: point(r.dropoff.0, r.dropoff.1),
                        class: VehicleClass::Any,
                    },
                )
                .expect("one trip per rider");
            rider_of.insert(trip.id, rider);
            let ride_m = (r.pickup.0 - r.dropoff.0).hypot(r.pickup.1 - r.dropoff.1);
            ride_ms.insert(trip.id, (ride_m / RIDE_SPEED_MPS * 1000.0) as u64);
            next_request += 1;
        }
        while let Some(Reverse((at, _, _))) = actions.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, action))) = actions.pop() else {
                break;
            };
            match action {
                Action::Answer {
                    offer,
                    driver,
                    accept,
                } => {
                    // The offer may have ended meanwhile (it cannot here: no cancels, and
                    // answers come before the 15 s window closes).
                    let _ = d.respond(now, offer, &id(driver), accept);
                }
                Action::Finish { trip, driver } => {
                    let driver = id(driver);
                    for step in [TripAction::Arrive, TripAction::Start, TripAction::Complete] {
                        d.trip_action(now, trip, &driver, step).expect("assigned");
                    }
                }
            }
        }
        for e in d.take_events() {
            match e.kind {
                EventKind::TripRequested { trip, .. } => {
                    out.requested += 1;
                    requested_at.insert(trip, e.at_ms);
                }
                EventKind::OfferSent(o) => {
                    out.offers += 1;
                    offer_distance.insert(o.trip, o.pickup_distance_m);
                    let mut h = DefaultHasher::new();
                    (&rider_of[&o.trip], o.driver.as_str()).hash(&mut h);
                    let roll = h.finish();
                    let accept = (roll % 10_000) as f64 / 10_000.0 < ACCEPT_P;
                    let delay = 2_000 + (roll >> 20) % 4_000;
                    seq += 1;
                    actions.push(Reverse((
                        e.at_ms + delay,
                        seq,
                        Action::Answer {
                            offer: o.offer,
                            driver: o.driver.as_str().to_string(),
                            accept,
                        },
                    )));
                }
                EventKind::TripAssigned {
                    trip,
                    driver,
                    pickup_eta_s,
                    ..
                } => {
                    out.assigned += 1;
                    out.pickup_m.push(offer_distance[&trip]);
                    out.wait_ms.push(e.at_ms - requested_at[&trip]);
                    seq += 1;
                    let done = e.at_ms + (pickup_eta_s * 1000.0) as u64 + ride_ms[&trip];
                    actions.push(Reverse((
                        done,
                        seq,
                        Action::Finish {
                            trip,
                            driver: driver.as_str().to_string(),
                        },
                    )));
                }
                EventKind::NoDrivers { .. } => out.no_drivers += 1,
                _ => {}
            }
        }
    }
    out
}

fn requests(per_min: f64, minutes: u64, seed: u64) -> Vec<Request> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut at = 0.0;
    let mut out = Vec::new();
    let end = (minutes * 60_000) as f64;
    loop {
        // Exponential inter-arrival times: a Poisson stream.
        at += -(1.0 - rng.random_range(0.0..1.0f64)).ln() / per_min * 60_000.0;
        if at >= end {
            return out;
        }
        let half = SIDE_M / 2.0;
        let pickup = (rng.random_range(-half..half), rng.random_range(-half..half));
        let (dist, angle) = (
            rng.random_range(1_000.0..4_000.0),
            rng.random_range(0.0..std::f64::consts::TAU),
        );
        let dropoff = (
            (pickup.0 + dist * angle.sin()).clamp(-half, half),
            (pickup.1 + dist * angle.cos()).clamp(-half, half),
        );
        out.push(Request {
            at_ms: at as u64,
            pickup,
            dropoff,
        });
    }
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: f64| {
        args.get(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let drivers = arg(0, 150.0) as usize;
    let per_min = arg(1, 40.0);
    let minutes = arg(2, 60.0) as u64;
    let window_ms = arg(3, 2_000.0) as u64;
    let reqs = requests(per_min, minutes, 7);
    // Run past the last request so every trip has ended or been assigned.
    let end_ms = minutes * 60_000 + 180_000;
    println!(
        "{drivers} drivers, {per_min} requests/min for {minutes} min ({} requests), \
         {SIDE_M} m square city, batch window {window_ms} ms",
        reqs.len()
    );
    println!(
        "{:<7} {:>9} {:>8} {:>11} {:>12} {:>12} {:>10} {:>13}",
        "policy",
        "requested",
        "served",
        "no_drivers",
        "pickup_mean",
        "pickup_p90",
        "wait_mean",
        "offers/served"
    );
    for policy in [MatchPolicy::Greedy, MatchPolicy::Batch] {
        let mut o = simulate(policy, window_ms, drivers, &reqs, end_ms);
        let mean = o.pickup_m.iter().sum::<f64>() / o.pickup_m.len().max(1) as f64;
        let wait = o.wait_ms.iter().sum::<u64>() as f64 / o.wait_ms.len().max(1) as f64;
        println!(
            "{:<7} {:>9} {:>7.1}% {:>11} {:>10.0} m {:>10.0} m {:>8.1} s {:>13.2}",
            format!("{policy:?}"),
            o.requested,
            100.0 * o.assigned as f64 / o.requested.max(1) as f64,
            o.no_drivers,
            mean,
            percentile(&mut o.pickup_m, 0.9),
            wait / 1000.0,
            o.offers as f64 / o.assigned.max(1) as f64
        );
    }
}
