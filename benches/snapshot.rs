//! The snapshot's pause on the dispatcher thread: how long copying the state
//! (`DispatchState::image`) takes with N drivers online and some trips open, the only part of
//! a snapshot the dispatcher waits for. Then what the copy defers: commands timed while a copy
//! is held (their first writes copy what it shares) against commands with none alive. Also
//! reported, off the dispatcher thread: encoding the copy and its size, decoding it and
//! restoring it (the first half of a restart), in snapshot format 2 (ended trips left encoded
//! until read) against format 1 (every trip decoded at once).
//!
//! Not criterion: the question is the tail (p99) of a rare pause, so it prints percentiles
//! over repeated copies. `cargo bench --bench snapshot` (100k drivers, 3,000 open trips and
//! 300k ended ones still in memory: 5 minutes of a 1,000 requests/s city under the default
//! 10 min trip retention); `SNAPSHOT_BENCH_DRIVERS` and `SNAPSHOT_BENCH_ENDED` change them.

use std::time::{Duration, Instant};

use dispatch::config::Config;
use dispatch::domain::{ExternalId, LatLng, Rating, VehicleClass};
use dispatch::engine::snapshot;
use dispatch::engine::state::StateImage;
use dispatch::engine::{Dispatcher, GoOnline, TripRequest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const T0: u64 = 1_700_000_000_000;
const COPIES: usize = 200;
/// Rounds of commands timed with a copy held, and as many without.
const ROUNDS: usize = 10;
/// Commands per round.
const COMMANDS: usize = 500;
/// A snapshot format's encoder.
type Encoder = fn(&StateImage) -> Vec<u8>;
/// Encode, decode and restore rounds per snapshot format.
const RESTORES: usize = 3;

fn fleet(n: usize, ended: u64) -> Dispatcher {
    let mut d = Dispatcher::new(&Config::default(), dispatch::index::default_index(), 0);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let side = (n as f64 / 111.0).sqrt() / 111.195 / 2.0;
    let point = |rng: &mut ChaCha8Rng| {
        LatLng::new(
            40.7 + rng.random_range(-side..side),
            -74.0 + rng.random_range(-side..side) / 0.758,
        )
        .unwrap()
    };
    for i in 0..n {
        let go = GoOnline {
            driver: ExternalId::new("id", &format!("driver-{i:06}")).unwrap(),
            position: point(&mut rng),
            rating: Rating::new(rng.random_range(4.0..5.0)).unwrap(),
            class: VehicleClass::Economy,
            gateway: Some(ExternalId::new("id", &format!("gw-{}", i % 16)).unwrap()),
        };
        d.go_online(T0, go).unwrap();
    }
    // Ended trips stay in memory for the trip retention: requested and cancelled by the rider.
    for i in 0..ended {
        let rider = ExternalId::new("id", &format!("ended-{i}")).unwrap();
        let req = TripRequest {
            rider: rider.clone(),
            request_id: Some(ExternalId::new("id", &format!("q-{i}")).unwrap()),
            pickup: point(&mut rng),
            dropoff: point(&mut rng),
            class: VehicleClass::Any,
        };
        if let Ok((trip, _)) = d.request_trip(T0 + i, req) {
            let _ = d.cancel_trip(T0 + i, trip.id, &rider);
        }
        let _ = d.take_events();
    }
    // A few thousand open trips with pending offers, as a city at 1,000 requests/s holds.
    for i in 0..3_000 {
        let req = TripRequest {
            rider: ExternalId::new("id", &format!("rider-{i}")).unwrap(),
            request_id: None,
            pickup: point(&mut rng),
            dropoff: point(&mut rng),
            class: VehicleClass::Any,
        };
        let _ = d.request_trip(T0 + ended + i, req);
    }
    let _ = d.take_events();
    d
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let n: usize = std::env::var("SNAPSHOT_BENCH_DRIVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let ended: u64 = std::env::var("SNAPSHOT_BENCH_ENDED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let mut d = fleet(n, ended);
    let mut pauses = Vec::with_capacity(COPIES);
    let mut image = d.state().image();
    for _ in 0..COPIES {
        let started = Instant::now();
        image = std::hint::black_box(d.state().image());
        pauses.push(started.elapsed());
    }
    pauses.sort();
    println!(
        "snapshot/copy_on_dispatcher_thread/{n} drivers, {ended} ended trips: p50 {:?} p99 {:?} max {:?} over {COPIES} copies",
        percentile(&pauses, 0.5),
        percentile(&pauses, 0.99),
        pauses[COPIES - 1]
    );
    // The copy's deferred cost: the first writes into what a held copy shares copy that part.
    // Commands timed one by one right after a copy (still held, as while the snapshot thread
    // encodes it) and with no copy alive, alternating rounds.
    let (mut held, mut free) = (Vec::new(), Vec::new());
    let mut rider = 0u64;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for round in 0..2 * ROUNDS {
        let copy = (round % 2 == 0).then(|| d.state().image());
        let out = if copy.is_some() { &mut held } else { &mut free };
        for _ in 0..COMMANDS {
            rider += 1;
            let req = TripRequest {
                rider: ExternalId::new("id", &format!("after-{rider}")).unwrap(),
                request_id: Some(ExternalId::new("id", &format!("a-{rider}")).unwrap()),
                pickup: LatLng::new(40.7 + rng.random_range(-0.01..0.01), -74.0).unwrap(),
                dropoff: LatLng::new(40.71, -74.01).unwrap(),
                class: VehicleClass::Any,
            };
            let at = T0 + ended + 3_000 + rider;
            let started = Instant::now();
            if let Ok((trip, _)) = d.request_trip(at, req) {
                let who = ExternalId::new("id", &format!("after-{rider}")).unwrap();
                let _ = d.cancel_trip(at, trip.id, &who);
            }
            out.push(started.elapsed());
            let _ = d.take_events();
        }
        drop(std::hint::black_box(copy));
    }
    held.sort();
    free.sort();
    println!(
        "snapshot/commands_after_a_copy/{n}: request+cancel p50 {:?} p99 {:?} max {:?} with a copy held; p50 {:?} p99 {:?} max {:?} without ({} each)",
        percentile(&held, 0.5),
        percentile(&held, 0.99),
        held[held.len() - 1],
        percentile(&free, 0.5),
        percentile(&free, 0.99),
        free[free.len() - 1],
        held.len()
    );
    // The first half of a restart, format 2 (ended trips left encoded until read) against
    // format 1 (every trip decoded), alternating A B A B; medians of each.
    let formats: [(&str, Encoder); 2] = [
        ("format 2", snapshot::encode),
        ("format 1", snapshot::encode_format_1),
    ];
    let mut times: [Vec<(Duration, Duration, Duration)>; 2] = [Vec::new(), Vec::new()];
    let mut sizes = [0; 2];
    for _ in 0..RESTORES {
        for (i, (_, encode)) in formats.iter().enumerate() {
            let started = Instant::now();
            let bytes = encode(&image);
            let encoded = started.elapsed();
            let started = Instant::now();
            let decoded = snapshot::decode(&bytes).unwrap();
            let decode = started.elapsed();
            let started = Instant::now();
            let mut restored =
                Dispatcher::new(&Config::default(), dispatch::index::default_index(), 0);
            restored.restore(decoded).unwrap();
            times[i].push((encoded, decode, started.elapsed()));
            sizes[i] = bytes.len();
            drop(std::hint::black_box(restored));
        }
    }
    for (i, (name, _)) in formats.iter().enumerate() {
        let median = |f: fn(&(Duration, Duration, Duration)) -> Duration| {
            let mut v: Vec<Duration> = times[i].iter().map(f).collect();
            v.sort();
            v[v.len() / 2]
        };
        println!(
            "snapshot/{name}/{n} drivers, {ended} ended trips: encode {:?} (off the dispatcher thread), {} bytes; decode {:?}, restore {:?} (medians of {RESTORES})",
            median(|t| t.0),
            sizes[i],
            median(|t| t.1),
            median(|t| t.2),
        );
    }
}
