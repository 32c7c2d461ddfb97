//! Snapshots on a real engine and data dir: a restart restores the newest snapshot and replays
//! only the log after it into the same state a whole replay gives; a corrupt or torn newest
//! snapshot falls back to the previous one, and with none left to the whole log; retention
//! deletes the segments before the oldest kept snapshot even when a driver who went online in
//! them is still online (without snapshots those segments must stay); ended trips restored
//! from a snapshot still encoded answer as the live ones (request ids, GetTrip, retention),
//! and a format 1 snapshot still loads.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch::clock::ManualClock;
use dispatch::config::Config;
use dispatch::domain::{ExternalId, LatLng, Rating, VehicleClass};
use dispatch::engine::snapshot::{self, SnapshotStore};
use dispatch::engine::{Dispatcher, Engine, GoOnline, TripRequest};
use dispatch::events::TripStatus;

const T0: u64 = 1_700_000_000_000;

fn config(dir: &Path, every_events: u64, keep: usize) -> Config {
    let mut c = Config::default();
    c.log.data_dir = Some(dir.to_path_buf());
    c.log.snapshot_every_events = every_events;
    c.log.snapshot_interval = Duration::ZERO;
    c.log.snapshot_keep = keep;
    c
}

fn id(s: &str) -> ExternalId {
    ExternalId::new("id", s).unwrap()
}

fn start(c: &Config, clock: &Arc<ManualClock>) -> Engine {
    Engine::start(c, dispatch::index::default_index(), clock.clone()).unwrap()
}

async fn online(e: &Engine, driver: &str, north_m: f64) {
    e.go_online(GoOnline {
        driver: id(driver),
        position: LatLng::new(40.75 + north_m / 111_195.0, -73.99).unwrap(),
        rating: Rating::new(4.8).unwrap(),
        class: VehicleClass::Economy,
        gateway: Some(id("gw")),
    })
    .await
    .unwrap();
}

async fn request(e: &Engine, rider: &str) -> dispatch::engine::Trip {
    e.request_trip(TripRequest {
        rider: id(rider),
        request_id: Some(id(rider)),
        pickup: LatLng::new(40.75, -73.99).unwrap(),
        dropoff: LatLng::new(40.77, -73.97).unwrap(),
        class: VehicleClass::Any,
    })
    .await
    .unwrap()
    .0
}

/// Waits (polling the directory, bounded) until `n` snapshot files are on disk.
fn wait_for_snapshots(dir: &Path, n: usize) -> Vec<(u64, std::path::PathBuf)> {
    let store = SnapshotStore::new(dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = store.list().unwrap();
        if list.len() >= n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "only {} snapshots appeared",
            list.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a caller can see of the state: counters, every trip and every driver.
async fn observe(e: &Engine, trips: &[dispatch::domain::TripId], drivers: &[&str]) -> String {
    let mut out = format!(
        "{:?}\n",
        dispatch::engine::Stats {
            location_updates: 0,
            ..e.stats().await.unwrap()
        }
    );
    for t in trips {
        out += &format!("{:?}\n", e.trip(*t).await.map(|t| t.0));
    }
    for d in drivers {
        let d = e.driver(id(d)).await.unwrap();
        out += &format!(
            "{} {:?} {} {}\n",
            d.id, d.status, d.acceptance_rate, d.online_offset
        );
    }
    out
}

const DRIVERS: [&str; 4] = ["d-1", "d-2", "d-3", "d-4"];

/// Drivers online, trips in several states, with snapshots every 4 events along the way.
async fn some_history(e: &Engine) -> Vec<dispatch::domain::TripId> {
    for (i, d) in DRIVERS.iter().enumerate() {
        online(e, d, 100.0 * (i as f64 + 1.0)).await;
    }
    let mut trips = Vec::new();
    for r in ["r-1", "r-2", "r-3"] {
        let t = request(e, r).await;
        trips.push(t.id);
        if r != "r-2" {
            let offer = t.offer.expect("a driver is free");
            e.respond(offer, t.driver.unwrap(), r == "r-1")
                .await
                .unwrap();
        }
    }
    e.go_offline(id("d-4")).await.unwrap();
    trips
}

#[tokio::test]
async fn a_restart_from_a_snapshot_sees_what_a_whole_replay_sees() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = start(&config(dir.path(), 4, 2), &clock);
    let trips = some_history(&e).await;
    let before = observe(&e, &trips, &DRIVERS).await;
    wait_for_snapshots(dir.path(), 2);
    e.shutdown();

    let e = start(&config(dir.path(), 4, 2), &clock);
    let newest = SnapshotStore::new(dir.path())
        .list()
        .unwrap()
        .last()
        .unwrap()
        .0;
    assert_eq!(e.recovered_from_snapshot(), Some(newest));
    assert_eq!(observe(&e, &trips, &DRIVERS).await, before);
    e.shutdown();

    // Snapshots off: the whole log, the same state.
    let e = start(&config(dir.path(), 4, 0), &clock);
    assert_eq!(e.recovered_from_snapshot(), None);
    assert_eq!(observe(&e, &trips, &DRIVERS).await, before);
    e.shutdown();
}

#[tokio::test]
async fn a_corrupt_newest_snapshot_falls_back_to_the_previous_then_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let c = config(dir.path(), 4, 2);
    let e = start(&c, &clock);
    let trips = some_history(&e).await;
    let before = observe(&e, &trips, &DRIVERS).await;
    wait_for_snapshots(dir.path(), 2);
    e.shutdown();
    let snaps = SnapshotStore::new(dir.path()).list().unwrap();
    assert_eq!(snaps.len(), 2, "two kept");
    let (older, newest) = (snaps[0].clone(), snaps[1].clone());

    // One flipped byte in the newest payload: the checksum catches it.
    let mut bytes = std::fs::read(&newest.1).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x40;
    std::fs::write(&newest.1, &bytes).unwrap();
    let e = start(&c, &clock);
    assert_eq!(e.recovered_from_snapshot(), Some(older.0));
    assert_eq!(observe(&e, &trips, &DRIVERS).await, before);
    e.shutdown();

    // The older one torn (cut short) too: the whole log.
    let bytes = std::fs::read(&older.1).unwrap();
    std::fs::write(&older.1, &bytes[..bytes.len() / 2]).unwrap();
    let e = start(&c, &clock);
    assert_eq!(e.recovered_from_snapshot(), None);
    assert_eq!(observe(&e, &trips, &DRIVERS).await, before);
    e.shutdown();
}

fn segments(dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dispatch::events::log::events_dir(dir))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    out.sort();
    out
}

/// d-0 goes online first and stays online; many drivers come and go after it, filling small
/// segments; then the retention check runs (every 60 s of engine time).
async fn churn_then_retention(c: &Config, clock: &Arc<ManualClock>, dir: &Path) -> Engine {
    let e = start(c, clock);
    online(&e, "d-0", 50.0).await;
    for i in 0..60 {
        let d = format!("d-{}", i + 1);
        online(&e, &d, 200.0).await;
        e.go_offline(id(&d)).await.unwrap();
    }
    if c.log.snapshot_keep > 0 {
        // Retention 0 leaves room for one snapshot only.
        wait_for_snapshots(dir, 1);
    }
    clock.advance(Duration::from_secs(61));
    e.tick().await.unwrap();
    e
}

fn small_segments(dir: &Path, keep: usize) -> Config {
    let mut c = config(dir, 40, keep);
    c.log.segment_bytes = 1024;
    c.log.retention_bytes = 0;
    c
}

#[tokio::test]
async fn retention_deletes_the_segments_before_the_oldest_kept_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let c = small_segments(dir.path(), 2);
    let e = churn_then_retention(&c, &clock, dir.path()).await;
    // The writer deletes after the tick's reply: wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(dir.path())[0] == 0 {
        assert!(
            Instant::now() < deadline,
            "retention never deleted the first segment"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = observe(&e, &[], &["d-0", "d-60"]).await;
    e.shutdown();
    // Nothing a kept snapshot needs was deleted (retention ran with the floor of its time;
    // snapshots written since only move it forward).
    let oldest_snapshot = SnapshotStore::new(dir.path()).list().unwrap()[0].0;
    let segs = segments(dir.path());
    assert!(
        segs[0] <= oldest_snapshot,
        "{segs:?} vs snapshot {oldest_snapshot}"
    );

    // d-0's online event is gone from disk, yet it comes back online from the snapshot.
    let e = start(&c, &clock);
    assert!(e.recovered_from_snapshot().is_some());
    assert_eq!(observe(&e, &[], &["d-0", "d-60"]).await, before);
    e.shutdown();
}

/// Bytes of every file under `dir`, recursively.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => disk_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn the_data_dir_log_and_snapshots_together_stays_within_retention_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let mut c = config(dir.path(), 100, 3);
    c.log.segment_bytes = 2048;
    c.log.retention_bytes = 24 << 10;
    let e = start(&c, &clock);
    online(&e, "d-0", 50.0).await;
    for round in 0..8 {
        // The same 100 drivers come and go each round: the state stays the same size while
        // the log grows by ~200 events.
        for i in 0..100 {
            let d = format!("d-{i}");
            online(&e, &d, 200.0).await;
            e.go_offline(id(&d)).await.unwrap();
        }
        // Retention runs on the first tick a second of engine time after the last; the data
        // dir settles once the snapshot thread has pruned too. Bounded wait on what is on disk.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            clock.advance(Duration::from_millis(1_100));
            e.tick().await.unwrap();
            e.tick().await.unwrap();
            let total = disk_bytes(dir.path());
            if total <= c.log.retention_bytes {
                break;
            }
            let sizes: Vec<u64> = SnapshotStore::new(dir.path())
                .list()
                .unwrap()
                .iter()
                .map(|s| std::fs::metadata(&s.1).map_or(0, |m| m.len()))
                .collect();
            assert!(
                Instant::now() < deadline,
                "round {round}: the data dir stays at {total} bytes, over the {} of retention \
                 (snapshots {sizes:?}, segments {:?})",
                c.log.retention_bytes,
                segments(dir.path())
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !SnapshotStore::new(dir.path()).list().unwrap().is_empty(),
            "the newest snapshot is always kept"
        );
    }
    assert!(
        segments(dir.path())[0] > 0,
        "retention deleted the first segments"
    );
    let before = observe(&e, &[], &["d-0", "d-99"]).await;
    e.shutdown();
    let e = start(&c, &clock);
    assert!(e.recovered_from_snapshot().is_some());
    assert_eq!(observe(&e, &[], &["d-0", "d-99"]).await, before);
    e.shutdown();
}

#[tokio::test]
async fn without_snapshots_retention_keeps_what_the_state_needs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let c = small_segments(dir.path(), 0);
    let e = churn_then_retention(&c, &clock, dir.path()).await;
    // A second tick: the first one's retention job has been handled by the time this one's
    // reply comes back (the writer takes jobs in order).
    e.tick().await.unwrap();
    assert_eq!(segments(dir.path())[0], 0, "d-0 went online in segment 0");
    assert!(SnapshotStore::new(dir.path()).list().unwrap().is_empty());
    e.shutdown();
}

/// A dispatcher (no engine thread) with two drivers online and `ended` trips requested with
/// request ids and cancelled, then one open trip: what a snapshot after a while of city holds.
fn with_ended_trips(ended: u64) -> (Dispatcher, Vec<TripRequest>) {
    let mut d = Dispatcher::new(&Config::default(), dispatch::index::default_index(), 0);
    for (i, name) in ["d-1", "d-2"].iter().enumerate() {
        let go = GoOnline {
            driver: id(name),
            position: LatLng::new(40.75 + i as f64 * 0.001, -73.99).unwrap(),
            rating: Rating::new(4.8).unwrap(),
            class: VehicleClass::Economy,
            gateway: Some(id("gw")),
        };
        d.go_online(T0, go).unwrap();
    }
    let mut asked = Vec::new();
    for i in 0..ended {
        let req = ride(&format!("r-{i}"));
        let (trip, _) = d.request_trip(T0 + i, req.clone()).unwrap();
        d.cancel_trip(T0 + i, trip.id, &req.rider).unwrap();
        asked.push(req);
    }
    d.request_trip(T0 + ended, ride("open")).unwrap();
    d.take_events();
    (d, asked)
}

fn ride(rider: &str) -> TripRequest {
    TripRequest {
        rider: id(rider),
        request_id: Some(id(&format!("q-{rider}"))),
        pickup: LatLng::new(40.75, -73.99).unwrap(),
        dropoff: LatLng::new(40.77, -73.97).unwrap(),
        class: VehicleClass::Any,
    }
}

fn restored(bytes: &[u8]) -> Dispatcher {
    let mut d = Dispatcher::new(&Config::default(), dispatch::index::default_index(), 0);
    d.restore(snapshot::decode(bytes).unwrap()).unwrap();
    d.check_invariants().unwrap();
    d
}

/// Ended trips come back from a snapshot encoded (format 2 decodes them only when read): a
/// repeated request id still gets its trip within `dispatch.trip_retention`, a changed one is
/// refused, and past the retention the trip is gone (GetTrip: not found) and the request id
/// makes a new trip, exactly as on the engine that never restarted.
#[test]
fn ended_trips_restored_encoded_answer_as_the_live_ones_within_and_past_retention() {
    let (mut live, asked) = with_ended_trips(200);
    let mut back = restored(&snapshot::encode(&live.state().image()));
    // Read through the request index, by id, refused when changed: as on the live engine.
    let mut kept = Vec::new();
    for d in [&mut live, &mut back] {
        let (trip, retry) = d.request_trip(T0 + 1_000, asked[7].clone()).unwrap();
        assert!(retry, "a repeated request id is a retry");
        assert_eq!(trip.status, TripStatus::Cancelled);
        assert_eq!(d.trip(trip.id).unwrap().rider, asked[7].rider);
        kept.push(trip.id);
        let mut changed = asked[8].clone();
        changed.class = VehicleClass::Comfort;
        let refused = d.request_trip(T0 + 1_000, changed).unwrap_err();
        assert!(refused.to_string().contains("already used"), "{refused}");
    }
    assert_eq!(kept[0], kept[1]);
    assert_eq!(back.durable_digest(), live.durable_digest());
    // A snapshot of the restored state (encoded trips copied) and a format 1 one load too.
    let again = restored(&snapshot::encode(&back.state().image()));
    assert_eq!(again.durable_digest(), live.durable_digest());
    let old = restored(&snapshot::encode_format_1(&back.state().image()));
    assert_eq!(old.durable_digest(), live.durable_digest());
    // Half the trips past their retention (default 10 min after each ended), then all.
    let retention = Config::default().dispatch.trip_retention.as_millis() as u64;
    for at in [T0 + retention + 100, T0 + retention + 1_000] {
        for d in [&mut live, &mut back] {
            d.fire_due(at);
            d.take_events();
        }
        assert_eq!(back.durable_digest(), live.durable_digest());
        assert_eq!(back.oldest_needed_offset(), live.oldest_needed_offset());
    }
    let first = live.state().next_offset();
    for d in [&mut live, &mut back] {
        let gone = d
            .request_trip(T0 + retention + 2_000, asked[7].clone())
            .unwrap();
        assert!(
            !gone.1,
            "past the retention the request id makes a new trip"
        );
        assert!(gone.0.id.0 >= first);
        assert!(
            d.trip(kept[0]).is_err(),
            "GetTrip of a forgotten trip: not found"
        );
        d.check_invariants().unwrap();
    }
    assert_eq!(back.durable_digest(), live.durable_digest());
}

/// A snapshot file of an unknown format version is refused, naming it and the ones read.
#[test]
fn a_snapshot_of_another_format_version_is_refused_naming_both() {
    let (live, _) = with_ended_trips(3);
    let mut bytes = snapshot::encode(&live.state().image());
    bytes[7] = 9;
    let why = snapshot::decode(&bytes).unwrap_err();
    assert!(why.contains("version 9") && why.contains("[1, 2]"), "{why}");
}
