//! Restarting on the same data dir: trips come back in the state they were acknowledged in,
//! offers that expired while the engine was down expire and cascade at start, request ids stay
//! idempotent, event offsets continue, and subscribers resume from any offset (from the log
//! when the in-memory ring no longer holds it) seeing every event exactly once.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dispatch::clock::ManualClock;
use dispatch::config::Config;
use dispatch::pb;
use support::*;

fn durable(dir: &Path) -> Config {
    let mut c = Config::default();
    c.log.data_dir = Some(dir.to_path_buf());
    c
}

async fn collect_events(s: &TestServer, from: u64, n: usize) -> Vec<pb::DispatchEvent> {
    let mut stream = s
        .events()
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(from),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next(&mut stream).await);
    }
    out
}

async fn stats(s: &TestServer) -> pb::GetStatsResponse {
    s.queries()
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_restart_brings_back_every_trip_in_its_acknowledged_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0_MS));
    let s = start_with_clock(durable(dir.path()), clock.clone()).await;
    online(&s, "d-1", 100.0, 4.9, "gw").await;
    online(&s, "d-2", 300.0, 4.9, "gw").await;
    online(&s, "d-3", 600.0, 4.9, "gw").await;
    // r-1 accepted and in progress, r-2 offered, r-3 completed.
    let t1 = request(&s, "r-1", "q-1").await;
    let mut d = s.drivers();
    d.respond_to_offer(pb::RespondToOfferRequest {
        offer_id: t1.offer_id.clone(),
        driver_id: t1.driver_id.clone(),
        accept: true,
    })
    .await
    .unwrap();
    let act = |t: &pb::Trip| pb::TripActionRequest {
        trip_id: t.trip_id.clone(),
        driver_id: t.driver_id.clone(),
    };
    d.mark_arrived(act(&t1)).await.unwrap();
    d.start_trip(act(&t1)).await.unwrap();
    let t2 = request(&s, "r-2", "q-2").await;
    let t3 = request(&s, "r-3", "q-3").await;
    d.respond_to_offer(pb::RespondToOfferRequest {
        offer_id: t3.offer_id.clone(),
        driver_id: t3.driver_id.clone(),
        accept: true,
    })
    .await
    .unwrap();
    d.mark_arrived(act(&t3)).await.unwrap();
    d.start_trip(act(&t3)).await.unwrap();
    d.complete_trip(act(&t3)).await.unwrap();

    let trips_before: Vec<pb::Trip> = {
        let mut v = Vec::new();
        for t in [&t1, &t2, &t3] {
            v.push(get_trip(&s, &t.trip_id).await);
        }
        v
    };
    let stats_before = stats(&s).await;
    let drivers_before: Vec<pb::Driver> = {
        let mut v = Vec::new();
        for id in ["d-1", "d-2", "d-3"] {
            v.push(
                s.queries()
                    .get_driver(pb::GetDriverRequest {
                        driver_id: id.into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .driver
                    .unwrap(),
            );
        }
        v
    };
    s.stop().await;

    let s = start_with_clock(durable(dir.path()), clock.clone()).await;
    for before in &trips_before {
        let after = get_trip(&s, &before.trip_id).await;
        assert_eq!(&after, before);
    }
    for before in &drivers_before {
        let after = s
            .queries()
            .get_driver(pb::GetDriverRequest {
                driver_id: before.driver_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .driver
            .unwrap();
        assert_eq!(after.state, before.state, "{}", before.driver_id);
        assert_eq!(after.trip_id, before.trip_id);
        assert_eq!(after.offer_id, before.offer_id);
        assert_eq!(after.trips_today, before.trips_today);
        assert_eq!(after.acceptance_rate, before.acceptance_rate);
    }
    let stats_after = stats(&s).await;
    assert_eq!(
        stats_after.next_event_offset,
        stats_before.next_event_offset
    );
    assert_eq!(stats_after.open_trips, stats_before.open_trips);
    assert_eq!(stats_after.pending_offers, stats_before.pending_offers);
    assert_eq!(stats_after.trips_completed, 1);

    // Idempotent across the restart: the retry returns the trip, creates nothing.
    let retry = s
        .riders()
        .request_trip(trip_request("r-2", "q-2"))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.deduplicated);
    assert_eq!(retry.trip.unwrap().trip_id, t2.trip_id);
    // The offered driver can still accept the offer made before the restart.
    let t = answer(&s, &t2.offer_id, &t2.driver_id, true).await;
    assert_eq!(status(&t), pb::TripStatus::Accepted);
    // New events continue the offsets without a gap.
    let evs = collect_events(&s, stats_before.next_event_offset, 2).await;
    assert_eq!(evs[0].offset, stats_before.next_event_offset);
    assert_eq!(evs[0].kind(), pb::EventKind::OfferAccepted);
    assert_eq!(evs[1].offset, stats_before.next_event_offset + 1);
    s.stop().await;
}

#[tokio::test]
async fn an_offer_that_expired_while_down_expires_at_start_and_cascades() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0_MS));
    let s = start_with_clock(durable(dir.path()), clock.clone()).await;
    online(&s, "d-1", 100.0, 4.9, "gw").await;
    online(&s, "d-2", 500.0, 4.9, "gw").await;
    let trip = request(&s, "r-1", "").await;
    assert_eq!(trip.driver_id, "d-1");
    s.stop().await;

    clock.advance(Duration::from_secs(20));
    let s = start_with_clock(durable(dir.path()), clock.clone()).await;
    s.engine.tick().await.unwrap();
    let t = get_trip(&s, &trip.trip_id).await;
    assert_eq!(status(&t), pb::TripStatus::Offered);
    assert_eq!(t.driver_id, "d-2");
    assert_eq!(t.offers_made, 2);
    let late = s
        .drivers()
        .respond_to_offer(pb::RespondToOfferRequest {
            offer_id: trip.offer_id.clone(),
            driver_id: "d-1".into(),
            accept: true,
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    s.stop().await;
}

#[tokio::test]
async fn subscribers_resume_from_any_offset_exactly_once_even_past_the_memory_ring() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0_MS));
    let mut config = durable(dir.path());
    config.limits.event_buffer = 4;
    let s = start_with_clock(config.clone(), clock.clone()).await;
    for i in 0..30 {
        online(&s, &format!("d-{i}"), 100.0 + f64::from(i), 4.5, "gw").await;
    }
    // Offset 0 left the 4-event ring long ago: it is served from the log, then live.
    let first = collect_events(&s, 0, 30).await;
    assert_eq!(
        first.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    s.stop().await;

    let s = start_with_clock(config, clock.clone()).await;
    for i in 30..40 {
        online(&s, &format!("d-{i}"), 100.0 + f64::from(i), 4.5, "gw").await;
    }
    // A subscriber that saw up to offset 19 before the restart resumes at 20.
    let resumed = collect_events(&s, 20, 20).await;
    assert_eq!(
        resumed.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (20..40).collect::<Vec<_>>()
    );
    for (i, e) in resumed.iter().enumerate() {
        assert_eq!(e.driver_id, format!("d-{}", 20 + i));
    }
    s.stop().await;
}
