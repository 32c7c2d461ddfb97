//! What an outside client found at the edge (issue 12), pinned over real gRPC: an offer stream
//! and a driver both need a gateway id (no shared gateway-less feed), an oversized location
//! batch is refused alone without ending its stream, and GetStats says which counters survive a
//! restart and when this engine started.

mod support;

use dispatch::pb;
use support::*;
use tonic::{Code, Status};

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, needles: &[&str]) {
    match result {
        Ok(v) => panic!("expected INVALID_ARGUMENT, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            for needle in needles {
                assert!(
                    s.message().contains(needle),
                    "message {:?} lacks {needle:?}",
                    s.message()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item 2: no gateway-less drivers, no gateway-less offer feed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_offer_stream_without_a_gateway_id_is_refused() {
    let s = start().await;
    let refused = s
        .drivers()
        .subscribe_offers(pb::SubscribeOffersRequest {
            gateway_id: String::new(),
            resume_from: vec![],
        })
        .await;
    assert_invalid(refused, &["gateway_id", "SubscribeOffers"]);
    s.stop().await;
}

#[tokio::test]
async fn a_driver_without_a_gateway_id_is_refused_and_not_created() {
    let s = start().await;
    let refused = s
        .drivers()
        .go_online(pb::GoOnlineRequest {
            driver_id: "d-1".into(),
            location: north_of_pickup(100.0),
            rating: 4.9,
            vehicle_class: 0,
            gateway_id: String::new(),
        })
        .await;
    assert_invalid(refused, &["gateway_id", "offers"]);
    let unknown = s
        .queries()
        .get_driver(pb::GetDriverRequest {
            driver_id: "d-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    // So a trip finds nobody to offer to: no offer can go to a feed nobody owns.
    let trip = request(&s, "r-1", "q-1").await;
    assert_eq!(status(&trip), pb::TripStatus::NoDrivers);
    s.stop().await;
}

#[tokio::test]
async fn a_driver_who_is_online_cannot_drop_its_gateway() {
    let s = start().await;
    online(&s, "d-1", 100.0, 4.9, "gw-a").await;
    let refused = s
        .drivers()
        .go_online(pb::GoOnlineRequest {
            driver_id: "d-1".into(),
            location: north_of_pickup(100.0),
            rating: 4.9,
            vehicle_class: 0,
            gateway_id: String::new(),
        })
        .await;
    assert_invalid(refused, &["gateway_id"]);
    let driver = s
        .queries()
        .get_driver(pb::GetDriverRequest {
            driver_id: "d-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .driver
        .unwrap();
    assert_eq!(driver.gateway_id, "gw-a");
    // Its offers still reach gw-a.
    let mut offers = offer_stream(&s, "gw-a").await;
    let trip = request(&s, "r-1", "q-1").await;
    let offer = offer_of(next(&mut offers).await);
    assert_eq!(offer.trip_id, trip.trip_id);
    assert_eq!(offer.driver_id, "d-1");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Item 5: an oversized location batch is refused alone; the stream goes on
// ---------------------------------------------------------------------------------------------

fn batch_at(driver: &str, north_m: &[f64]) -> pb::LocationBatch {
    pb::LocationBatch {
        updates: north_m
            .iter()
            .map(|&m| pb::LocationUpdate {
                driver_id: driver.into(),
                location: north_of_pickup(m),
                recorded_at_ms: 0,
            })
            .collect(),
    }
}

#[tokio::test]
async fn an_oversized_batch_is_refused_whole_and_the_stream_goes_on() {
    let s = start().await;
    let limit = dispatch::config::Config::default().limits.max_batch_updates;
    online(&s, "d-1", 100.0, 4.9, "gw").await;
    let too_many = vec![5_000.0; limit + 1];
    let batches = vec![
        batch_at("d-1", &[110.0]),
        batch_at("d-1", &[120.0]),
        batch_at("d-1", &[130.0]),
        batch_at("d-1", &too_many),
        batch_at("d-1", &[140.0]),
        batch_at("d-1", &[150.0]),
    ];
    let summary = s
        .drivers()
        .report_locations(tokio_stream::iter(batches))
        .await
        .expect("an oversized batch does not end the stream")
        .into_inner();
    assert_eq!(summary.batches, 6);
    assert_eq!(summary.accepted, 5);
    assert_eq!(summary.rejected, limit as u64 + 1);
    assert_eq!(summary.max_batch_updates, limit as u64);
    let too_large: Vec<_> = summary
        .rejections
        .iter()
        .filter(|r| r.reason() == pb::LocationRejection::BatchTooLarge)
        .collect();
    assert_eq!(too_large.len(), 1, "{:?}", summary.rejections);
    assert_eq!(too_large[0].count, limit as u64 + 1);
    let example = summary
        .examples
        .iter()
        .find(|e| e.contains(&format!("{}", limit + 1)))
        .unwrap_or_else(|| panic!("no example names the batch: {:?}", summary.examples));
    assert!(example.contains(&format!("limit is {limit}")), "{example}");
    // The batches after the refused one were applied: the driver is where the last one put it,
    // not where the refused batch would have.
    let at = s
        .queries()
        .get_driver(pb::GetDriverRequest {
            driver_id: "d-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .driver
        .unwrap()
        .location
        .unwrap();
    let want = north_of_pickup(150.0).unwrap();
    assert!(
        (at.lat_deg - want.lat_deg).abs() < 1e-9,
        "{at:?} vs {want:?}"
    );
    s.stop().await;
}

/// By default a batch just over the update limit, even with the longest ids, still fits in one
/// gRPC message, so it meets the BATCH_TOO_LARGE refusal rather than the transport's
/// OUT_OF_RANGE (which would end the stream).
#[test]
fn by_default_the_update_limit_bites_before_the_message_size_limit() {
    use prost::Message;
    let limits = dispatch::config::Config::default().limits;
    let longest = "d".repeat(dispatch::domain::MAX_ID_LEN);
    let batch = batch_at(&longest, &vec![1_234.5; limits.max_batch_updates + 1]);
    assert!(
        batch.encoded_len() < limits.max_message_bytes,
        "{} bytes",
        batch.encoded_len()
    );
}

// ---------------------------------------------------------------------------------------------
// Item 7: what GetStats counts across a restart
// ---------------------------------------------------------------------------------------------

async fn stats(s: &TestServer) -> pb::GetStatsResponse {
    s.queries()
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn report(s: &TestServer, driver: &str, north_m: &[f64]) -> pb::LocationSummary {
    s.drivers()
        .report_locations(tokio_stream::iter(vec![batch_at(driver, north_m)]))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn trip_counters_survive_a_restart_and_location_updates_count_from_the_process_start() {
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dispatch::config::Config::default();
    config.log.data_dir = Some(dir.path().to_path_buf());
    let clock = Arc::new(dispatch::clock::ManualClock::new(T0_MS));
    let s = start_with_clock(config.clone(), clock.clone()).await;
    assert_eq!(stats(&s).await.process_started_at_ms, T0_MS);

    online(&s, "d-1", 100.0, 4.9, "gw").await;
    assert_eq!(report(&s, "d-1", &[110.0, 120.0, 130.0]).await.accepted, 3);
    // One trip completed, one cancelled by the rider, one with no driver at all.
    let done = request(&s, "r-1", "q-1").await;
    accept(&s, &done.offer_id, "d-1").await;
    let act = pb::TripActionRequest {
        trip_id: done.trip_id.clone(),
        driver_id: "d-1".into(),
    };
    let mut d = s.drivers();
    d.mark_arrived(act.clone()).await.unwrap();
    d.start_trip(act.clone()).await.unwrap();
    d.complete_trip(act).await.unwrap();
    let cancelled = request(&s, "r-2", "q-2").await;
    s.riders()
        .cancel_trip(pb::CancelTripRequest {
            trip_id: cancelled.trip_id.clone(),
            rider_id: "r-2".into(),
        })
        .await
        .unwrap();
    d.go_offline(pb::GoOfflineRequest {
        driver_id: "d-1".into(),
    })
    .await
    .unwrap();
    let nobody = request(&s, "r-3", "q-3").await;
    assert_eq!(status(&nobody), pb::TripStatus::NoDrivers);
    // A retry is not a new request.
    request(&s, "r-3", "q-3").await;

    let before = stats(&s).await;
    assert_eq!(
        (
            before.trips_requested,
            before.trips_completed,
            before.trips_cancelled,
            before.trips_no_drivers,
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(before.location_updates, 3);
    s.stop().await;

    clock.advance(Duration::from_secs(60));
    let s = start_with_clock(config, clock.clone()).await;
    let after = stats(&s).await;
    // LOG counters come back from the log; NOW state too.
    assert_eq!(after.trips_requested, before.trips_requested);
    assert_eq!(after.trips_completed, before.trips_completed);
    assert_eq!(after.trips_cancelled, before.trips_cancelled);
    assert_eq!(after.trips_no_drivers, before.trips_no_drivers);
    assert_eq!(after.next_event_offset, before.next_event_offset);
    assert_eq!(after.drivers_offline, 1);
    // PROCESS counters start again, from a start time that says so.
    assert_eq!(after.process_started_at_ms, T0_MS + 60_000);
    assert_eq!(after.location_updates, 0);
    online(&s, "d-1", 100.0, 4.9, "gw").await;
    assert_eq!(report(&s, "d-1", &[140.0, 150.0]).await.accepted, 2);
    assert_eq!(stats(&s).await.location_updates, 2);
    s.stop().await;
}
