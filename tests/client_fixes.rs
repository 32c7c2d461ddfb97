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
