//! Exact replay: a run recorded through real gRPC (`record.enabled`), replayed in-process from
//! its input journal under the recorded config with the recorded answers, reproduces the event
//! log the engine wrote, event for event; a damaged journal is reported where it is damaged.

mod support;

use std::path::Path;
use std::time::Duration;

use dispatch::config::Config;
use dispatch::events::{Event, FsyncPolicy, LogCursor, MatchPolicy};
use dispatch::journal::{JournalError, JournalReader};
use dispatch::pb;
use dispatch::replay::replay_exact;
use support::*;

/// The next offer on the gateway's stream, after letting a batch window pass.
async fn next_offer(s: &TestServer, offers: &mut tonic::Streaming<pb::DriverNotice>) -> pb::Offer {
    s.advance(Duration::from_millis(2_100)).await;
    loop {
        if let Some(pb::driver_notice::Notice::Offer(o)) = next(offers).await.notice {
            return o;
        }
    }
}

fn action(trip: &pb::Offer) -> pb::TripActionRequest {
    pb::TripActionRequest {
        trip_id: trip.trip_id.clone(),
        driver_id: trip.driver_id.clone(),
    }
}

/// A run with declines, an expiry, moves, a completed trip, a rider and a driver cancel.
async fn record_a_run(config: Config) {
    let s = start_with(config).await;
    for (i, north) in [300.0, 900.0, 2_000.0, 3_000.0].iter().enumerate() {
        online(&s, &format!("d{i}"), *north, 4.0 + i as f64 * 0.2, "gw").await;
    }
    let mut offers = offer_stream(&s, "gw").await;
    let batch = pb::LocationBatch {
        updates: vec![pb::LocationUpdate {
            driver_id: "d2".into(),
            location: north_of_pickup(1_200.0),
            recorded_at_ms: 0,
        }],
    };
    s.drivers()
        .report_locations(tokio_stream::iter(vec![batch]))
        .await
        .unwrap();

    // Declined, then accepted and driven to the end.
    request(&s, "r1", "q1").await;
    let first = next_offer(&s, &mut offers).await;
    decline(&s, &first.offer_id, &first.driver_id).await;
    let o = next_offer(&s, &mut offers).await;
    accept(&s, &o.offer_id, &o.driver_id).await;
    s.advance(Duration::from_secs(30)).await;
    s.drivers().mark_arrived(action(&o)).await.unwrap();
    s.drivers().start_trip(action(&o)).await.unwrap();
    s.advance(Duration::from_secs(60)).await;
    s.drivers().complete_trip(action(&o)).await.unwrap();

    // Left to expire, then accepted, then cancelled by the rider.
    request(&s, "r2", "q2").await;
    next_offer(&s, &mut offers).await;
    s.advance(Duration::from_secs(16)).await;
    let o = next_offer(&s, &mut offers).await;
    accept(&s, &o.offer_id, &o.driver_id).await;
    s.riders()
        .cancel_trip(pb::CancelTripRequest {
            trip_id: o.trip_id.clone(),
            rider_id: "r2".into(),
        })
        .await
        .unwrap();

    // Accepted, then cancelled by the driver; a refused call is recorded too.
    request(&s, "r3", "q3").await;
    let o = next_offer(&s, &mut offers).await;
    accept(&s, &o.offer_id, &o.driver_id).await;
    s.drivers().cancel_trip_by_driver(action(&o)).await.unwrap();
    let refused = s.drivers().complete_trip(action(&o)).await;
    assert!(refused.is_err(), "a cancelled trip cannot complete");

    s.drivers()
        .update_location(pb::LocationUpdate {
            driver_id: "d0".into(),
            location: north_of_pickup(100.0),
            recorded_at_ms: 0,
        })
        .await
        .unwrap();
    s.drivers()
        .go_offline(pb::GoOfflineRequest {
            driver_id: "d3".into(),
        })
        .await
        .unwrap();
    request(&s, "r4", "q4").await;
    s.advance(Duration::from_secs(20)).await;
    let engine = s.engine.clone();
    s.stop().await;
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap();
}

fn logged_events(data_dir: &Path) -> Vec<Event> {
    let mut cursor = LogCursor::new(dispatch::events::log::events_dir(data_dir), 0);
    let mut out = Vec::new();
    while cursor.read(10_000, &mut out).unwrap() {}
    out
}

fn recording_config(data_dir: &Path, policy: MatchPolicy) -> Config {
    let mut config = Config::default();
    config.log.data_dir = Some(data_dir.to_path_buf());
    config.log.fsync = FsyncPolicy::Never;
    config.dispatch.policy = policy;
    config.record.enabled = true;
    config.record.location_interval = Duration::ZERO;
    config
}

async fn replays_exactly(policy: MatchPolicy) {
    let dir = tempfile::tempdir().unwrap();
    record_a_run(recording_config(dir.path(), policy)).await;
    let logged = logged_events(dir.path());
    assert!(logged.len() > 20, "the run wrote {} events", logged.len());
    let reader = JournalReader::open(&dir.path().join("inputs"), false).unwrap();
    let replayed = replay_exact(reader, None).unwrap();
    assert!(replayed.stopped_by.is_none(), "{:?}", replayed.stopped_by);
    assert_eq!(replayed.lost, 0);
    assert_eq!(replayed.refused, 1, "the one refused CompleteTrip");
    assert_eq!(replayed.events.len(), logged.len());
    for (replayed, logged) in replayed.events.iter().zip(&logged) {
        assert_eq!(replayed, logged);
    }
}

#[tokio::test]
async fn a_greedy_run_replays_to_the_same_event_log() {
    replays_exactly(MatchPolicy::Greedy).await;
}

#[tokio::test]
async fn a_batch_run_replays_to_the_same_event_log() {
    replays_exactly(MatchPolicy::Batch).await;
}

#[tokio::test]
async fn another_config_replays_to_another_log() {
    let dir = tempfile::tempdir().unwrap();
    record_a_run(recording_config(dir.path(), MatchPolicy::Greedy)).await;
    let logged = logged_events(dir.path());
    let mut other = Config::default();
    other.dispatch.offer_timeout = Duration::from_secs(5);
    let reader = JournalReader::open(&dir.path().join("inputs"), false).unwrap();
    let replayed = replay_exact(reader, Some(&other)).unwrap();
    assert_ne!(
        replayed.events, logged,
        "a 5 s offer window changes the run"
    );
}

/// The one segment of a recorded journal.
fn only_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .collect();
    assert_eq!(segments.len(), 1);
    segments.pop().unwrap()
}

#[tokio::test]
async fn a_corrupt_or_truncated_journal_is_reported_with_segment_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    record_a_run(recording_config(dir.path(), MatchPolicy::Greedy)).await;
    let inputs = dir.path().join("inputs");
    let segment = only_segment(&inputs);
    let good = JournalReader::open(&inputs, false).unwrap().count();
    let mut bytes = std::fs::read(&segment).unwrap();
    // Flip a payload byte of the third record: header 8 bytes after the 8-byte magic.
    let mut at = 8;
    for _ in 0..2 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
    }
    let third = at;
    bytes[third + 9] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let entries: Vec<_> = JournalReader::open(&inputs, false).unwrap().collect();
    assert_eq!(entries.len(), 3, "two good entries, then the error");
    match entries.last().unwrap() {
        Err(JournalError::Corrupt {
            segment: s, byte, ..
        }) => {
            assert_eq!(s, &segment);
            assert_eq!(*byte, third as u64);
        }
        other => panic!("expected a corrupt record, got {other:?}"),
    }
    let message = entries.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(message.contains(&format!("at byte {third}")), "{message}");

    let mut skipping = JournalReader::open(&inputs, true).unwrap();
    let kept = skipping.by_ref().filter(Result::is_ok).count();
    assert_eq!(kept, good - 1, "only the bad record is skipped");
    assert_eq!(skipping.skipped.len(), 1);

    // Mend it, and cut the file inside its last record instead.
    bytes[third + 9] ^= 0xff;
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&segment, &bytes).unwrap();
    let last = JournalReader::open(&inputs, true).unwrap().last().unwrap();
    assert!(last.is_ok(), "skipping goes past the torn tail");
    let strict: Vec<_> = JournalReader::open(&inputs, false).unwrap().collect();
    let message = strict.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(message.contains("truncated"), "{message}");
}

#[tokio::test]
async fn a_journal_of_another_format_version_says_so() {
    let dir = tempfile::tempdir().unwrap();
    record_a_run(recording_config(dir.path(), MatchPolicy::Greedy)).await;
    let inputs = dir.path().join("inputs");
    let segment = only_segment(&inputs);
    let mut bytes = std::fs::read(&segment).unwrap();
    assert_eq!(&bytes[..7], b"DSPJNL\x00");
    // Format version 1 also held NearbyDrivers and GetSurge entries.
    bytes[7] = 1;
    std::fs::write(&segment, &bytes).unwrap();
    let first = JournalReader::open(&inputs, false).unwrap().next().unwrap();
    let message = first.unwrap_err().to_string();
    assert!(
        message.contains("journal format version 1, this build reads version 2"),
        "{message}"
    );
}

#[test]
fn locations_are_conflated_and_retention_bounds_the_journal() {
    use dispatch::LatLng;
    use dispatch::journal::{Input, JournalWriter, RecordConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = RecordConfig {
        enabled: true,
        location_interval: Duration::from_secs(4),
        segment_bytes: 300,
        retention_bytes: 700,
        ..RecordConfig::default()
    };
    let mut writer = JournalWriter::start(dir.path().to_path_buf(), &config).unwrap();
    let here = LatLng::new(40.75, -73.99).unwrap();
    // Two drivers report every second for 100 s: one report per driver per 4 s is kept.
    for second in 0..100u64 {
        let updates = vec![("a".to_string(), here), ("b".to_string(), here)];
        writer.record_locations(1_000 * second, updates);
    }
    writer.record(100_000, Input::Fire);
    let stats = writer.stats().clone();
    writer.finish();
    let conflated = stats.conflated.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(conflated, 2 * 100 - 2 * 25);
    let total: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= 700 + 300, "retention kept {total} bytes");
    let reader = JournalReader::open(dir.path(), false).unwrap();
    assert!(reader.first_entry() > 0, "the oldest segments were deleted");
    let entries: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(entries.last().unwrap().input, Input::Fire);
    for pair in entries.windows(2) {
        assert!(pair[0].now_ms <= pair[1].now_ms, "entries stay in order");
    }
}
