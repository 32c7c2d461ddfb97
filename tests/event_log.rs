//! The durable event log on real files: encode/decode round trips (proptest), recovery of
//! random event sequences across segments, a torn tail cut off, a corrupt record in the middle
//! refused (or truncated on request), and the catch-up cursor.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use dispatch::domain::{ExternalId, LatLng, OfferId, Rating, TripId, VehicleClass};
use dispatch::events::log::{LogError, encode_record, events_dir};
use dispatch::events::{
    CancelledBy, Event, EventKind, EventLog, LogConfig, LogCursor, MatchPolicy, OfferCancelReason,
    OfferDetails, OfferRef, RegionJoin, TripStatus,
};
use dispatch::matching::ScoreBreakdown;
use proptest::prelude::*;

fn id(s: &str) -> ExternalId {
    ExternalId::new("id", s).unwrap()
}

fn latlng() -> impl Strategy<Value = LatLng> {
    (-90.0f64..=90.0, -180.0f64..=180.0).prop_map(|(a, b)| LatLng::new(a, b).unwrap())
}

fn ext_id() -> impl Strategy<Value = ExternalId> {
    "[a-z0-9-]{1,64}".prop_map(|s| id(&s))
}

fn offer_ref() -> impl Strategy<Value = OfferRef> {
    (
        any::<u64>(),
        any::<u64>(),
        ext_id(),
        proptest::option::of(ext_id()),
    )
        .prop_map(|(o, t, driver, gateway)| OfferRef {
            offer: OfferId(o),
            trip: TripId(t),
            driver,
            gateway,
        })
}

fn kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        (
            ext_id(),
            latlng(),
            1.0f64..=5.0,
            proptest::option::of(ext_id())
        )
            .prop_map(|(driver, position, r, gateway)| EventKind::DriverOnline {
                driver,
                position,
                rating: Rating::new(r).unwrap(),
                class: VehicleClass::Comfort,
                gateway,
            }),
        ext_id().prop_map(|driver| EventKind::DriverOffline { driver }),
        ext_id().prop_map(|driver| EventKind::DriverLeftRegion {
            driver,
            to: "east".into(),
        }),
        (ext_id(), latlng(), 0.0f64..=1.0, any::<u32>(), any::<u64>()).prop_map(
            |(driver, position, acceptance_rate, trips_today, free_since_ms)| {
                EventKind::DriverJoinedRegion(Arc::new(RegionJoin {
                    driver,
                    from: "west".into(),
                    position,
                    rating: Rating::new(4.5).unwrap(),
                    class: VehicleClass::Xl,
                    gateway: None,
                    acceptance_rate,
                    trips_today,
                    trips_day: free_since_ms / 86_400_000,
                    free_since_ms,
                }))
            }
        ),
        (
            any::<u64>(),
            ext_id(),
            proptest::option::of(ext_id()),
            latlng(),
            latlng(),
            1.0f64..3.0,
            any::<u32>()
        )
            .prop_map(
                |(t, rider, request_id, pickup, dropoff, surge_multiplier, candidates)| {
                    EventKind::TripRequested {
                        trip: TripId(t),
                        rider,
                        request_id,
                        pickup,
                        dropoff,
                        class: VehicleClass::Any,
                        surge_multiplier,
                        candidates,
                        policy: MatchPolicy::Greedy,
                    }
                }
            ),
        (
            any::<u64>(),
            any::<u64>(),
            ext_id(),
            latlng(),
            latlng(),
            0.0f64..1e4,
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(
                |(o, t, driver, pickup, dropoff, eta, expires_at_ms, attempt)| EventKind::OfferSent(
                    Arc::new(OfferDetails {
                        offer: OfferId(o),
                        trip: TripId(t),
                        driver,
                        gateway: None,
                        pickup,
                        dropoff,
                        pickup_eta_s: eta,
                        pickup_distance_m: eta * 7.0,
                        expires_at_ms,
                        score: ScoreBreakdown {
                            eta: 0.1,
                            rating: 0.2,
                            acceptance: 0.3,
                            fairness: 0.4,
                            total: 1.0
                        },
                        attempt,
                        surge_multiplier: 1.5,
                        eta_source: dispatch::matching::EtaSource::StraightLineFallback,
                    })
                )
            ),
        offer_ref().prop_map(EventKind::OfferAccepted),
        offer_ref().prop_map(EventKind::OfferExpired),
        offer_ref().prop_map(|o| EventKind::OfferCancelled(o, OfferCancelReason::DriverOffline)),
        (any::<u64>(), proptest::option::of(ext_id())).prop_map(|(t, driver)| {
            EventKind::TripCancelled {
                trip: TripId(t),
                driver,
                gateway: None,
                by: CancelledBy::Rider,
                previous: TripStatus::Offered,
            }
        }),
        (any::<u64>(), 1.0f64..3.0, any::<u32>()).prop_map(|(t, s, n)| EventKind::NoDrivers {
            trip: TripId(t),
            surge_multiplier: s,
            offers_made: n,
        }),
    ]
}

fn events(kinds: Vec<EventKind>) -> Vec<Event> {
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Event {
            offset: i as u64,
            at_ms: 1_700_000_000_000 + i as u64,
            kind,
        })
        .collect()
}

fn config(dir: &Path, segment_bytes: u64) -> LogConfig {
    LogConfig {
        data_dir: Some(dir.to_path_buf()),
        segment_bytes,
        ..LogConfig::default()
    }
}

/// Opens the log, collecting what it replays.
fn reopen(cfg: &LogConfig) -> Result<(EventLog, Vec<Event>, Vec<String>), LogError> {
    let mut got = Vec::new();
    let (log, report) = EventLog::open(cfg, cfg.data_dir.as_ref().unwrap(), |e| {
        got.push(e);
        Ok(())
    })?;
    Ok((log, got, report.warnings))
}

fn write_all(cfg: &LogConfig, evs: &[Event], group: usize) {
    let (mut log, replayed, _) = reopen(cfg).unwrap();
    assert!(replayed.is_empty());
    for chunk in evs.chunks(group.max(1)) {
        log.append(chunk).unwrap();
        log.commit().unwrap();
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(events_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn records_round_trip(kind in kind()) {
        let event = Event { offset: 7, at_ms: 42, kind };
        let mut buf = Vec::new();
        encode_record(&event, &mut buf);
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20);
        let (mut log, _, _) = reopen(&cfg).unwrap();
        let event0 = Event { offset: 0, ..event.clone() };
        log.append(std::slice::from_ref(&event0)).unwrap();
        log.commit().unwrap();
        drop(log);
        let (_, got, warnings) = reopen(&cfg).unwrap();
        prop_assert!(warnings.is_empty());
        prop_assert_eq!(got, vec![event0]);
    }

    #[test]
    fn random_sequences_recover_exactly_across_segments(
        kinds in proptest::collection::vec(kind(), 0..120),
        segment_bytes in 200u64..4_000,
        group in 1usize..20,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), segment_bytes);
        let evs = events(kinds);
        write_all(&cfg, &evs, group);
        let (log, got, warnings) = reopen(&cfg).unwrap();
        prop_assert!(warnings.is_empty(), "{:?}", warnings);
        prop_assert_eq!(log.next_offset(), evs.len() as u64);
        prop_assert_eq!(&got, &evs);
        // The cursor reads the same sequence from any starting point.
        let from = (evs.len() / 3) as u64;
        let mut cursor = LogCursor::new(events_dir(dir.path()), from);
        let mut read = Vec::new();
        while cursor.read(7, &mut read).unwrap() {}
        prop_assert_eq!(&read[..], &evs[from as usize..]);
    }
}

fn sample(n: usize) -> Vec<Event> {
    events(
        (0..n)
            .map(|i| EventKind::DriverOffline {
                driver: id(&format!("d-{i}")),
            })
            .collect(),
    )
}

#[test]
fn a_torn_tail_is_cut_off_with_a_warning_and_appending_continues() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    let evs = sample(10);
    write_all(&cfg, &evs, 3);
    // A crash in the middle of writing an 11th record: its header and half its payload.
    let mut record = Vec::new();
    encode_record(&sample(11)[10], &mut record);
    let seg = segments(dir.path()).pop().unwrap();
    let full = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&record[..record.len() / 2])
        .unwrap();

    let (mut log, got, warnings) = reopen(&cfg).unwrap();
    assert_eq!(got, evs);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("torn tail"), "{warnings:?}");
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        full,
        "cut back to the last whole record"
    );
    // The log goes on at offset 10.
    log.append(&sample(11)[10..]).unwrap();
    log.commit().unwrap();
    drop(log);
    let (_, got, warnings) = reopen(&cfg).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(got, sample(11));
}

#[test]
fn a_torn_header_is_a_torn_tail_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    write_all(&cfg, &sample(5), 5);
    let seg = segments(dir.path()).pop().unwrap();
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&[9, 0, 0])
        .unwrap();
    let (_, got, warnings) = reopen(&cfg).unwrap();
    assert_eq!(got, sample(5));
    assert_eq!(warnings.len(), 1);
}

#[test]
fn a_corrupt_record_in_the_middle_stops_start_up_naming_segment_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    write_all(&cfg, &sample(10), 10);
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // Flip a byte inside the third record's payload.
    let mut one = Vec::new();
    encode_record(&sample(1)[0], &mut one);
    let third_payload = 8 + 2 * one.len() + 10;
    bytes[third_payload] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();

    let err = reopen(&cfg).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LogError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&seg.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("at byte {}", 8 + 2 * one.len())),
        "{msg}"
    );
    assert!(msg.contains("--truncate-corrupt-log"), "{msg}");
    // The file was not touched.
    assert_eq!(fs::read(&seg).unwrap(), bytes);

    // With the operator's consent it is cut there; later segments go too.
    let cfg = LogConfig {
        truncate_corrupt: true,
        ..cfg
    };
    let (log, got, warnings) = reopen(&cfg).unwrap();
    assert_eq!(got, sample(2));
    assert_eq!(log.next_offset(), 2);
    assert!(warnings[0].contains("truncated on request"), "{warnings:?}");
}

#[test]
fn corruption_in_an_earlier_segment_is_not_mistaken_for_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 100);
    write_all(&cfg, &sample(30), 1);
    let segs = segments(dir.path());
    assert!(segs.len() > 3, "{segs:?}");
    // Cut the first segment short: not the end of the log, so it is corruption.
    let first = &segs[0];
    let len = fs::metadata(first).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    assert!(matches!(
        reopen(&cfg).unwrap_err(),
        LogError::Corrupt { .. }
    ));
}

#[test]
fn retention_deletes_only_segments_before_what_recovery_needs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: 0,
        ..config(dir.path(), 100)
    };
    let evs = sample(40);
    let (mut log, _, _) = reopen(&cfg).unwrap();
    for e in evs.chunks(1) {
        log.append(e).unwrap();
        log.commit().unwrap();
    }
    let before = segments(dir.path()).len();
    // Recovery needs everything from offset 20 on.
    let deleted = log.enforce_retention(20).unwrap();
    assert!(deleted > 0 && deleted < before, "{deleted} of {before}");
    assert!(log.first_offset() <= 20);
    drop(log);
    let (_, got, _) = reopen(&LogConfig { ..cfg.clone() }).unwrap_or_else(|e| panic!("{e}"));
    assert!(got.first().unwrap().offset <= 20);
    assert_eq!(got.last().unwrap().offset, 39);
    // A cursor asking for a deleted offset is told so.
    let mut cursor = LogCursor::new(events_dir(dir.path()), 0);
    assert!(matches!(
        cursor.read(10, &mut Vec::new()),
        Err(LogError::Deleted { .. })
    ));
}
