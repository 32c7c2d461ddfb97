//! The dispatch lifecycle over real gRPC: happy path, cascades on decline and timeout, no
//! drivers, cancellations, idempotent retries, and the event stream of a whole trip. Time is a
//! manual clock: the 15 s window passes in microseconds.

mod support;

use std::time::Duration;

use dispatch::pb::{self, driver_notice::Notice};
use support::*;
use tonic::Code;

#[tokio::test]
async fn happy_path_from_request_to_completion() {
    let s = start().await;
    online(&s, "d-near", 300.0, 4.9, "gw-1").await;
    online(&s, "d-far", 2_000.0, 4.9, "gw-1").await;
    let mut offers = offer_stream(&s, "gw-1").await;

    let trip = request(&s, "r-1", "req-1").await;
    assert_eq!(status(&trip), pb::TripStatus::Offered);
    assert_eq!(trip.driver_id, "d-near");
    assert_eq!(trip.offers_made, 1);
    assert!(trip.surge_multiplier >= 1.0);

    let offer = offer_of(next(&mut offers).await);
    assert_eq!(offer.trip_id, trip.trip_id);
    assert_eq!(offer.driver_id, "d-near");
    assert_eq!(offer.attempt, 1);
    assert_eq!(offer.expires_at_ms, T0_MS + 15_000);
    assert!(
        (offer.pickup_distance_m - 300.0).abs() < 1.0,
        "{}",
        offer.pickup_distance_m
    );
    assert!(offer.pickup_eta_s > 0.0);
    let score = offer.score.unwrap();
    let sum = score.eta + score.rating + score.acceptance + score.fairness;
    assert!((score.total - sum).abs() < 1e-9 && score.total > 0.0);

    let mut drivers = s.drivers();
    let accepted = drivers
        .respond_to_offer(pb::RespondToOfferRequest {
            offer_id: offer.offer_id.clone(),
            driver_id: "d-near".into(),
            accept: true,
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(status(&accepted), pb::TripStatus::Accepted);
    assert_eq!(accepted.driver_id, "d-near");
    assert!(accepted.offer_id.is_empty());

    let action = || pb::TripActionRequest {
        trip_id: trip.trip_id.clone(),
        driver_id: "d-near".into(),
    };
    let t = drivers
        .mark_arrived(action())
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(status(&t), pb::TripStatus::Arrived);
    let t = drivers
        .start_trip(action())
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(status(&t), pb::TripStatus::InProgress);
    s.clock.advance(Duration::from_secs(600));
    let t = drivers
        .complete_trip(action())
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(status(&t), pb::TripStatus::Completed);
    assert_eq!(t.ended_at_ms, T0_MS + 600_000);

    // The driver is free again, at the drop-off, with one trip today.
    let d = s
        .queries()
        .get_driver(pb::GetDriverRequest {
            driver_id: "d-near".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .driver
        .unwrap();
    assert_eq!(d.state(), pb::DriverState::Available);
    assert_eq!(d.trips_today, 1);
    let at = d.location.unwrap();
    assert_eq!((at.lat_deg, at.lng_deg), DROPOFF);
    assert!(d.acceptance_rate > 0.8);

    let stats = s
        .queries()
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.trips_completed, 1);
    assert_eq!(stats.open_trips, 0);
    assert_eq!(stats.pending_offers, 0);
    assert_eq!(stats.drivers_available, 2);
    s.stop().await;
}

#[tokio::test]
async fn decline_cascades_to_the_second_best_driver() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    online(&s, "d-2", 900.0, 4.8, "gw").await;
    online(&s, "d-3", 1_800.0, 4.8, "gw").await;
    let trip = request(&s, "r-1", "").await;
    assert_eq!(trip.driver_id, "d-1");

    let after = answer(&s, &trip.offer_id, "d-1", false).await;
    assert_eq!(status(&after), pb::TripStatus::Offered);
    assert_eq!(after.driver_id, "d-2");
    assert_eq!(after.offers_made, 2);
    assert_ne!(after.offer_id, trip.offer_id);

    // The decliner is a candidate for other trips again, but never for this one.
    let d1 = s.engine.driver(id("d-1")).await.unwrap();
    assert_eq!(d1.status, dispatch::engine::DriverStatus::Available);
    let after = answer(&s, &after.offer_id, "d-2", false).await;
    assert_eq!(after.driver_id, "d-3");
    s.stop().await;
}

#[tokio::test]
async fn an_unanswered_offer_expires_after_15_s_and_cascades() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    online(&s, "d-2", 900.0, 4.8, "gw").await;
    let mut offers = offer_stream(&s, "gw").await;
    let trip = request(&s, "r-1", "").await;
    let first = offer_of(next(&mut offers).await);
    assert_eq!(first.driver_id, "d-1");

    // One millisecond before the deadline nothing happens.
    s.advance(Duration::from_millis(14_999)).await;
    let t = s
        .engine
        .trip(dispatch::domain::TripId::parse(&trip.trip_id).unwrap())
        .await
        .unwrap()
        .0;
    assert_eq!(t.offers_made, 1);

    s.advance(Duration::from_millis(1)).await;
    match next(&mut offers).await.notice {
        Some(Notice::OfferExpired(c)) => {
            assert_eq!(c.offer_id, first.offer_id);
            assert_eq!(c.driver_id, "d-1");
        }
        other => panic!("expected expiry, got {other:?}"),
    }
    let second = offer_of(next(&mut offers).await);
    assert_eq!(second.driver_id, "d-2");
    assert_eq!(second.attempt, 2);
    assert_eq!(second.expires_at_ms, T0_MS + 30_000);

    // The late answer is refused and changes nothing.
    let late = s
        .drivers()
        .respond_to_offer(pb::RespondToOfferRequest {
            offer_id: first.offer_id.clone(),
            driver_id: "d-1".into(),
            accept: true,
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(
        late.message().contains("it was expired"),
        "{}",
        late.message()
    );
    let t = get_trip(&s, &trip.trip_id).await;
    assert_eq!(t.driver_id, "d-2");
    s.stop().await;
}

#[tokio::test]
async fn no_driver_in_range_ends_the_trip_at_once() {
    let s = start().await;
    online(&s, "d-far", 20_000.0, 5.0, "gw").await;
    let trip = request(&s, "r-1", "").await;
    assert_eq!(status(&trip), pb::TripStatus::NoDrivers);
    assert!(trip.surge_multiplier >= 1.0);
    assert!(trip.driver_id.is_empty());
    assert_eq!(trip.ended_at_ms, T0_MS);
    // The rider may ask again right away.
    let again = request(&s, "r-1", "").await;
    assert_eq!(status(&again), pb::TripStatus::NoDrivers);
    s.stop().await;
}

#[tokio::test]
async fn after_every_candidate_declines_the_trip_searches_until_the_dispatch_deadline() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let trip = request(&s, "r-1", "").await;
    decline(&s, &trip.offer_id, "d-1").await;
    let t = get_trip(&s, &trip.trip_id).await;
    assert_eq!(status(&t), pb::TripStatus::Searching);

    // A driver who comes online later is found by the next retry.
    online(&s, "d-2", 600.0, 4.8, "gw").await;
    s.advance(Duration::from_secs(2)).await;
    let t = get_trip(&s, &trip.trip_id).await;
    assert_eq!(status(&t), pb::TripStatus::Offered);
    assert_eq!(t.driver_id, "d-2");
    decline(&s, &t.offer_id, "d-2").await;

    // Nobody else: at the dispatch deadline (120 s) the trip ends as NO_DRIVERS.
    s.advance(Duration::from_secs(100)).await;
    assert_eq!(
        status(&get_trip(&s, &trip.trip_id).await),
        pb::TripStatus::Searching
    );
    s.advance(Duration::from_secs(20)).await;
    let t = get_trip(&s, &trip.trip_id).await;
    assert_eq!(status(&t), pb::TripStatus::NoDrivers);
    assert_eq!(t.offers_made, 2);
    s.stop().await;
}

#[tokio::test]
async fn rider_cancel_while_offered_withdraws_the_offer() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let mut offers = offer_stream(&s, "gw").await;
    let trip = request(&s, "r-1", "").await;
    let offer = offer_of(next(&mut offers).await);
    let cancelled = s
        .riders()
        .cancel_trip(pb::CancelTripRequest {
            trip_id: trip.trip_id.clone(),
            rider_id: "r-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(status(&cancelled), pb::TripStatus::Cancelled);
    assert_eq!(cancelled.cancelled_by(), pb::CancelledBy::Rider);
    match next(&mut offers).await.notice {
        Some(Notice::OfferCancelled(c)) => {
            assert_eq!(c.offer_id, offer.offer_id);
            assert_eq!(c.reason(), pb::OfferCancelReason::TripCancelled);
        }
        other => panic!("expected cancellation, got {other:?}"),
    }
    let late = s
        .drivers()
        .respond_to_offer(pb::RespondToOfferRequest {
            offer_id: offer.offer_id,
            driver_id: "d-1".into(),
            accept: true,
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(driver_state(&s, "d-1").await, pb::DriverState::Available);
    // Cancelling twice is refused.
    let again = s
        .riders()
        .cancel_trip(pb::CancelTripRequest {
            trip_id: trip.trip_id.clone(),
            rider_id: "r-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    s.stop().await;
}

#[tokio::test]
async fn rider_cancel_while_assigned_releases_the_driver() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let mut offers = offer_stream(&s, "gw").await;
    let trip = request(&s, "r-1", "").await;
    let offer = offer_of(next(&mut offers).await);
    accept(&s, &offer.offer_id, "d-1").await;
    assert_eq!(driver_state(&s, "d-1").await, pb::DriverState::OnTrip);
    let cancelled = s
        .riders()
        .cancel_trip(pb::CancelTripRequest {
            trip_id: trip.trip_id.clone(),
            rider_id: "r-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(status(&cancelled), pb::TripStatus::Cancelled);
    match next(&mut offers).await.notice {
        Some(Notice::TripCancelled(c)) => {
            assert_eq!(c.trip_id, trip.trip_id);
            assert_eq!(c.driver_id, "d-1");
        }
        other => panic!("expected trip cancellation, got {other:?}"),
    }
    assert_eq!(driver_state(&s, "d-1").await, pb::DriverState::Available);
    s.stop().await;
}

#[tokio::test]
async fn driver_cancel_releases_the_driver_and_ends_the_trip() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let trip = request(&s, "r-1", "").await;
    accept(&s, &trip.offer_id, "d-1").await;
    let t = s
        .drivers()
        .cancel_trip_by_driver(pb::TripActionRequest {
            trip_id: trip.trip_id.clone(),
            driver_id: "d-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(status(&t), pb::TripStatus::Cancelled);
    assert_eq!(t.cancelled_by(), pb::CancelledBy::Driver);
    assert_eq!(driver_state(&s, "d-1").await, pb::DriverState::Available);
    s.stop().await;
}

#[tokio::test]
async fn retrying_a_request_id_returns_the_same_trip() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let first = s
        .riders()
        .request_trip(trip_request("r-1", "req-42"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.deduplicated);
    let retry = s
        .riders()
        .request_trip(trip_request("r-1", "req-42"))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.deduplicated);
    assert_eq!(
        retry.trip.as_ref().unwrap().trip_id,
        first.trip.as_ref().unwrap().trip_id
    );
    let stats = s
        .queries()
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.trips_requested, 1);
    assert_eq!(stats.pending_offers, 1);

    // Same key, different trip: refused rather than silently returning the old trip.
    let mut changed = trip_request("r-1", "req-42");
    changed.dropoff = ll(40.8, -73.9);
    let err = s.riders().request_trip(changed).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A new request while the first is open is refused too.
    let err = s
        .riders()
        .request_trip(trip_request("r-1", "req-43"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("already has open trip"),
        "{}",
        err.message()
    );
    s.stop().await;
}

#[tokio::test]
async fn watch_trip_streams_every_change_and_ends_at_the_terminal_state() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    online(&s, "d-2", 700.0, 4.8, "gw").await;
    let trip = request(&s, "r-1", "").await;
    let mut watch = s
        .riders()
        .watch_trip(pb::WatchTripRequest {
            trip_id: trip.trip_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut watch).await;
    assert!(first.event.is_none());
    assert_eq!(
        status(first.trip.as_ref().unwrap()),
        pb::TripStatus::Offered
    );

    decline(&s, &trip.offer_id, "d-1").await;
    let t = get_trip(&s, &trip.trip_id).await;
    accept(&s, &t.offer_id, "d-2").await;
    s.riders()
        .cancel_trip(pb::CancelTripRequest {
            trip_id: trip.trip_id.clone(),
            rider_id: "r-1".into(),
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    while let Some(update) = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push((
            update.event.unwrap().kind(),
            status(update.trip.as_ref().unwrap()),
            update.trip.unwrap().driver_id,
        ));
    }
    use pb::EventKind as K;
    use pb::TripStatus as S;
    assert_eq!(
        seen,
        vec![
            (K::OfferDeclined, S::Searching, String::new()),
            (K::OfferSent, S::Offered, "d-2".to_string()),
            (K::OfferAccepted, S::Offered, "d-2".to_string()),
            (K::TripAssigned, S::Accepted, "d-2".to_string()),
            (K::TripCancelled, S::Cancelled, "d-2".to_string()),
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn event_stream_tells_a_whole_trip_in_order() {
    let s = start().await;
    let mut events = s
        .events()
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(0),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let trip = request(&s, "r-1", "req-1").await;
    accept(&s, &trip.offer_id, "d-1").await;
    let action = pb::TripActionRequest {
        trip_id: trip.trip_id.clone(),
        driver_id: "d-1".into(),
    };
    let mut d = s.drivers();
    d.mark_arrived(action.clone()).await.unwrap();
    d.start_trip(action.clone()).await.unwrap();
    d.complete_trip(action).await.unwrap();
    d.go_offline(pb::GoOfflineRequest {
        driver_id: "d-1".into(),
    })
    .await
    .unwrap();

    use pb::EventKind as K;
    let expected = [
        K::DriverOnline,
        K::TripRequested,
        K::OfferSent,
        K::OfferAccepted,
        K::TripAssigned,
        K::DriverArrived,
        K::TripStarted,
        K::TripCompleted,
        K::DriverOffline,
    ];
    let mut got = Vec::new();
    for (i, kind) in expected.iter().enumerate() {
        let e = next(&mut events).await;
        assert_eq!(e.offset, i as u64, "offsets are gap-free from 0");
        assert_eq!(e.kind(), *kind, "event {i}");
        assert_eq!(e.at_ms, T0_MS);
        got.push(e);
    }
    // Content: who, which trip, which offer, and the details a consumer needs.
    assert_eq!(got[0].driver_id, "d-1");
    match got[1].detail.as_ref().unwrap() {
        pb::dispatch_event::Detail::TripRequested(r) => {
            assert_eq!(r.rider_id, "r-1");
            assert_eq!(r.request_id, "req-1");
            assert_eq!(r.candidates, 1);
            assert_eq!(r.policy(), pb::MatchPolicy::Greedy);
        }
        other => panic!("{other:?}"),
    }
    match got[2].detail.as_ref().unwrap() {
        pb::dispatch_event::Detail::OfferSent(o) => {
            assert_eq!(o.offer_id, trip.offer_id);
            assert!(o.score.as_ref().unwrap().total > 0.0);
        }
        other => panic!("{other:?}"),
    }
    for e in &got[1..8] {
        assert_eq!(e.trip_id, trip.trip_id);
    }
    assert_eq!(got[3].offer_id, trip.offer_id);
    assert_eq!(got[4].driver_id, "d-1");

    // A second subscriber filtered by kind, resuming from an offset, sees only those.
    let mut only = s
        .events()
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(3),
            kinds: vec![K::TripAssigned as i32, K::TripCompleted as i32],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut only).await.offset, 4);
    assert_eq!(next(&mut only).await.offset, 7);
    s.stop().await;
}

#[tokio::test]
async fn a_reconnecting_gateway_gets_its_pending_offers_first() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw-a").await;
    online(&s, "d-2", 200.0, 4.8, "gw-b").await;
    let t1 = request(&s, "r-1", "").await;
    let t2 = request(&s, "r-2", "").await;
    let mut a = offer_stream(&s, "gw-a").await;
    let offer = offer_of(next(&mut a).await);
    let mine = if t1.driver_id == "d-1" { &t1 } else { &t2 };
    assert_eq!(offer.trip_id, mine.trip_id);
    assert_eq!(offer.driver_id, "d-1");
    // gw-b's offers never reach gw-a: the next thing gw-a sees is its own driver's expiry.
    s.advance(Duration::from_secs(15)).await;
    match next(&mut a).await.notice {
        Some(Notice::OfferExpired(c)) => assert_eq!(c.driver_id, "d-1"),
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn location_batches_move_drivers_and_report_rejections() {
    let s = start().await;
    online(&s, "d-1", 10_000.0, 4.8, "gw").await;
    online(&s, "d-off", 10_000.0, 4.8, "gw").await;
    s.drivers()
        .go_offline(pb::GoOfflineRequest {
            driver_id: "d-off".into(),
        })
        .await
        .unwrap();
    let update = |id: &str, loc| pb::LocationUpdate {
        driver_id: id.into(),
        location: loc,
        recorded_at_ms: 0,
    };
    let batches = vec![
        pb::LocationBatch {
            updates: vec![
                update("d-1", north_of_pickup(100.0)),
                update("ghost", north_of_pickup(1.0)),
            ],
        },
        pb::LocationBatch {
            updates: vec![
                update("d-off", north_of_pickup(1.0)),
                update("", north_of_pickup(1.0)),
                update("d-1", ll(f64::NAN, 0.0)),
                update("d-1", None),
                update("d-1", north_of_pickup(50.0)),
            ],
        },
    ];
    let summary = s
        .drivers()
        .report_locations(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.batches, 2);
    assert_eq!(summary.accepted, 2);
    assert_eq!(summary.rejected, 5);
    use pb::LocationRejection as R;
    let count = |r: R| {
        summary
            .rejections
            .iter()
            .find(|c| c.reason() == r)
            .map_or(0, |c| c.count)
    };
    assert_eq!(count(R::UnknownDriver), 1);
    assert_eq!(count(R::DriverOffline), 1);
    assert_eq!(count(R::InvalidDriverId), 1);
    assert_eq!(count(R::InvalidCoordinates), 2);
    assert!(
        summary.examples.iter().any(|e| e.contains("ghost")),
        "{:?}",
        summary.examples
    );
    // A known driver's report is resolved to its key before the dispatcher sees it; its
    // rejection still names it.
    assert!(
        summary
            .examples
            .iter()
            .any(|e| e == "d-off: the driver is offline; call GoOnline before reporting locations"),
        "{:?}",
        summary.examples
    );

    // The driver is now 50 m from the pickup: nearby finds it there.
    let near = s
        .queries()
        .nearby_drivers(pb::NearbyDriversRequest {
            location: ll(PICKUP.0, PICKUP.1),
            radius_m: 500.0,
            limit: 5,
            vehicle_class: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .drivers;
    assert_eq!(near.len(), 1);
    assert_eq!(near[0].driver_id, "d-1");
    assert!((near[0].distance_m - 50.0).abs() < 0.5);
    assert!(near[0].eta_s > 0.0);
    s.stop().await;
}

#[tokio::test]
async fn surge_rises_where_demand_exceeds_supply() {
    let s = start().await;
    online(&s, "d-1", 20_000.0, 4.8, "gw").await;
    for r in 0..4 {
        request(&s, &format!("r-{r}"), "").await;
    }
    let surge = s
        .queries()
        .get_surge(pb::GetSurgeRequest {
            location: ll(PICKUP.0, PICKUP.1),
            vehicle_class: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(surge.demand, 4);
    assert_eq!(surge.supply, 0);
    assert_eq!(surge.multiplier, 3.0);
    assert_eq!(surge.h3_cell.len(), 15);
    // The fifth rider is told there is nobody, with the surge at the pickup.
    let trip = request(&s, "r-5", "").await;
    assert_eq!(status(&trip), pb::TripStatus::NoDrivers);
    assert_eq!(trip.surge_multiplier, 3.0);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------

fn id(raw: &str) -> dispatch::domain::ExternalId {
    dispatch::domain::ExternalId::new("id", raw).unwrap()
}
