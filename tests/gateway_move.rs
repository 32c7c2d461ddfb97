//! A driver holding a pending offer calls GoOnline again with another gateway (its gateway
//! failed over). The move is a DriverProfileUpdated event, and the pending offer follows the
//! driver: the new gateway's SubscribeOffers starts with it, and its later expiry or cancel
//! notice goes to the new gateway, not the old one. A repeated GoOnline that changes nothing
//! is no event. (Issue 12, item 1; the restart half is in `crash_recovery.rs`.)

mod support;

use std::time::Duration;

use dispatch::pb;
use pb::driver_notice::Notice;
use support::*;

async fn gateway_of(s: &TestServer, driver: &str) -> String {
    support::get_driver(s, driver).await.gateway_id
}

async fn head(s: &TestServer) -> u64 {
    s.queries()
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .next_event_offset
}

#[tokio::test]
async fn a_pending_offer_follows_its_driver_to_the_new_gateway_and_expires_there() {
    let s = start().await;
    let mut old_gw = offer_stream(&s, "gw-a").await;
    online(&s, "d-1", 200.0, 4.8, "gw-a").await;
    let trip = request(&s, "r-1", "q-1").await;
    assert_eq!(offer_of(next(&mut old_gw).await).offer_id, trip.offer_id);

    // The same profile again is no event; only the gateway changes here.
    let before = head(&s).await;
    online(&s, "d-1", 200.0, 4.8, "gw-a").await;
    assert_eq!(head(&s).await, before, "an unchanged GoOnline is no event");
    let moved = online(&s, "d-1", 210.0, 4.8, "gw-b").await;
    assert_eq!(moved.gateway_id, "gw-b");
    assert_eq!(moved.offer_id, trip.offer_id, "the offer is still pending");
    assert_eq!(head(&s).await, before + 1, "the move is one event");
    assert_eq!(gateway_of(&s, "d-1").await, "gw-b");

    let mut new_gw = offer_stream(&s, "gw-b").await;
    let first = offer_of(next(&mut new_gw).await);
    assert_eq!(
        first.offer_id, trip.offer_id,
        "the new gateway starts with it"
    );

    // A second driver on the old gateway, so the old gateway has something to receive.
    online(&s, "d-2", 400.0, 4.8, "gw-a").await;
    s.advance(Duration::from_secs(16)).await;
    match next(&mut new_gw).await.notice {
        Some(Notice::OfferExpired(c)) => assert_eq!(c.offer_id, trip.offer_id),
        other => panic!("the expiry goes to the new gateway: {other:?}"),
    }
    // The expiry cascaded to d-2 on the old gateway: that is the old gateway's next notice,
    // so it never saw the expiry of the offer that moved away.
    match next(&mut old_gw).await.notice {
        Some(Notice::Offer(o)) => {
            assert_eq!(o.driver_id, "d-2");
            assert_eq!(o.trip_id, trip.trip_id);
        }
        other => panic!("the old gateway gets nothing about the moved offer: {other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn a_moved_offer_is_withdrawn_on_the_new_gateway_when_the_rider_cancels() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw-a").await;
    let trip = request(&s, "r-1", "q-1").await;
    online(&s, "d-1", 200.0, 4.8, "gw-b").await;
    let mut old_gw = offer_stream(&s, "gw-a").await;
    let mut new_gw = offer_stream(&s, "gw-b").await;
    assert_eq!(offer_of(next(&mut new_gw).await).offer_id, trip.offer_id);

    s.riders()
        .cancel_trip(pb::CancelTripRequest {
            trip_id: trip.trip_id.clone(),
            rider_id: "r-1".into(),
        })
        .await
        .unwrap();
    match next(&mut new_gw).await.notice {
        Some(Notice::OfferCancelled(c)) => {
            assert_eq!(c.offer_id, trip.offer_id);
            assert_eq!(c.reason(), pb::OfferCancelReason::TripCancelled);
        }
        other => panic!("the cancel goes to the new gateway: {other:?}"),
    }
    // The old gateway's first notice is a later offer to another of its drivers, not the
    // withdrawn one (its stream started after the move, so it has no pending offer either).
    s.drivers()
        .go_offline(pb::GoOfflineRequest {
            driver_id: "d-1".into(),
        })
        .await
        .unwrap();
    online(&s, "d-2", 300.0, 4.8, "gw-a").await;
    let second = request(&s, "r-2", "q-2").await;
    let o = offer_of(next(&mut old_gw).await);
    assert_eq!(o.offer_id, second.offer_id);
    assert_eq!(o.driver_id, "d-2");
    s.stop().await;
}

#[tokio::test]
async fn a_profile_update_is_an_event_on_the_stream() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw-a").await;
    let from = head(&s).await;
    let mut events = s
        .events()
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(from),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    online(&s, "d-1", 200.0, 4.2, "gw-b").await;
    let e = next(&mut events).await;
    assert_eq!(e.kind(), pb::EventKind::DriverProfileUpdated);
    assert_eq!(e.driver_id, "d-1");
    match e.detail {
        Some(pb::dispatch_event::Detail::DriverProfileUpdated(p)) => {
            assert_eq!(p.gateway_id, "gw-b");
            assert_eq!(p.rating, 4.2);
        }
        other => panic!("{other:?}"),
    }
    s.stop().await;
}
