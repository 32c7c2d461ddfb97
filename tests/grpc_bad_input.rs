//! Every kind of bad input gets the right gRPC status with a message naming the problem, and
//! changes nothing. Also: health and reflection are served.

mod support;

use dispatch::pb;
use support::*;
use tonic::{Code, Status};

fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} containing {needle:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(needle),
                "message {:?} lacks {needle:?}",
                s.message()
            );
        }
    }
}

fn go_online(id: &str, loc: Option<pb::LatLng>, rating: f64, class: i32) -> pb::GoOnlineRequest {
    pb::GoOnlineRequest {
        driver_id: id.into(),
        location: loc,
        rating,
        vehicle_class: class,
        gateway_id: "gw".into(),
    }
}

#[tokio::test]
async fn malformed_driver_input_is_invalid_argument() {
    let s = start().await;
    let mut d = s.drivers();
    let here = ll(40.75, -73.99);
    let cases = [
        (go_online("d", ll(f64::NAN, 0.0), 5.0, 0), "finite"),
        (go_online("d", ll(0.0, f64::INFINITY), 5.0, 0), "finite"),
        (go_online("d", ll(91.0, 0.0), 5.0, 0), "lat_deg"),
        (go_online("d", ll(0.0, -180.5), 5.0, 0), "lng_deg"),
        (go_online("d", None, 5.0, 0), "location is required"),
        (go_online("", here, 5.0, 0), "driver_id must not be empty"),
        (go_online(&"x".repeat(65), here, 5.0, 0), "limit is 64"),
        (go_online("a b", here, 5.0, 0), "printable"),
        (go_online("d", here, 7.0, 0), "rating"),
        (go_online("d", here, f64::NAN, 0), "rating"),
        (go_online("d", here, 5.0, 99), "vehicle_class"),
    ];
    for (req, needle) in cases {
        assert_code(d.go_online(req).await, Code::InvalidArgument, needle);
    }
    // Nothing was created by any of them.
    let stats = s
        .queries()
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.drivers_available + stats.drivers_offline, 0);
    assert_eq!(stats.next_event_offset, 0);
    s.stop().await;
}

#[tokio::test]
async fn unknown_and_offline_drivers() {
    let s = start().await;
    let mut d = s.drivers();
    let upd = |id: &str| pb::LocationUpdate {
        driver_id: id.into(),
        location: ll(40.75, -73.99),
        recorded_at_ms: 0,
    };
    assert_code(
        d.update_location(upd("ghost")).await,
        Code::NotFound,
        "unknown driver ghost",
    );
    assert_code(
        d.go_offline(pb::GoOfflineRequest {
            driver_id: "ghost".into(),
        })
        .await,
        Code::NotFound,
        "unknown driver",
    );
    online(&s, "d-1", 100.0, 5.0, "gw").await;
    d.go_offline(pb::GoOfflineRequest {
        driver_id: "d-1".into(),
    })
    .await
    .unwrap();
    assert_code(
        d.update_location(upd("d-1")).await,
        Code::FailedPrecondition,
        "offline",
    );
    assert_code(
        s.queries()
            .get_driver(pb::GetDriverRequest {
                driver_id: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "unknown driver",
    );
    s.stop().await;
}

#[tokio::test]
async fn offers_answered_wrongly_are_refused() {
    let s = start().await;
    online(&s, "d-1", 100.0, 5.0, "gw").await;
    online(&s, "d-2", 5_000_000.0 / 1000.0, 5.0, "gw").await;
    let trip = request(&s, "r-1", "").await;
    let mut d = s.drivers();
    let respond = |offer: &str, driver: &str, accept| pb::RespondToOfferRequest {
        offer_id: offer.into(),
        driver_id: driver.into(),
        accept,
    };
    assert_code(
        d.respond_to_offer(respond("", "d-1", true)).await,
        Code::InvalidArgument,
        "offer_id",
    );
    assert_code(
        d.respond_to_offer(respond("offer-999", "d-1", true)).await,
        Code::NotFound,
        "unknown offer",
    );
    assert_code(
        d.respond_to_offer(respond("bogus", "d-1", true)).await,
        Code::NotFound,
        "unknown offer",
    );
    assert_code(
        d.respond_to_offer(respond(&trip.offer_id, "d-2", true))
            .await,
        Code::PermissionDenied,
        "not made to driver d-2",
    );
    assert_code(
        d.respond_to_offer(respond(&trip.offer_id, "", true)).await,
        Code::InvalidArgument,
        "driver_id",
    );
    // The wrong-driver attempt changed nothing: the right driver can still accept, once.
    d.respond_to_offer(respond(&trip.offer_id, "d-1", true))
        .await
        .unwrap();
    assert_code(
        d.respond_to_offer(respond(&trip.offer_id, "d-1", true))
            .await,
        Code::FailedPrecondition,
        "already ended",
    );
    assert_code(
        d.respond_to_offer(respond(&trip.offer_id, "d-1", false))
            .await,
        Code::FailedPrecondition,
        "already ended",
    );
    let t = get_trip(&s, &trip.trip_id).await;
    assert_eq!(status(&t), pb::TripStatus::Accepted);
    assert_eq!(t.driver_id, "d-1");
    s.stop().await;
}

#[tokio::test]
async fn trip_actions_out_of_turn_or_by_strangers_are_refused() {
    let s = start().await;
    online(&s, "d-1", 100.0, 5.0, "gw").await;
    online(&s, "d-2", 20_000.0, 5.0, "gw").await;
    let trip = request(&s, "r-1", "").await;
    let mut d = s.drivers();
    let act = |driver: &str| pb::TripActionRequest {
        trip_id: trip.trip_id.clone(),
        driver_id: driver.into(),
    };
    // Offered, not yet accepted.
    assert_code(
        d.mark_arrived(act("d-1")).await,
        Code::FailedPrecondition,
        "accept the offer first",
    );
    d.respond_to_offer(pb::RespondToOfferRequest {
        offer_id: trip.offer_id.clone(),
        driver_id: "d-1".into(),
        accept: true,
    })
    .await
    .unwrap();
    assert_code(
        d.mark_arrived(act("d-2")).await,
        Code::PermissionDenied,
        "not assigned to driver d-2",
    );
    assert_code(
        d.complete_trip(act("d-1")).await,
        Code::FailedPrecondition,
        "TRIP_STATUS_ACCEPTED",
    );
    assert_code(
        d.start_trip(act("d-1")).await,
        Code::FailedPrecondition,
        "TRIP_STATUS_ACCEPTED",
    );
    assert_code(
        d.go_offline(pb::GoOfflineRequest {
            driver_id: "d-1".into(),
        })
        .await,
        Code::FailedPrecondition,
        "is on trip",
    );
    assert_code(
        d.mark_arrived(pb::TripActionRequest {
            trip_id: "trip-999".into(),
            driver_id: "d-1".into(),
        })
        .await,
        Code::NotFound,
        "unknown trip",
    );
    assert_code(
        d.mark_arrived(pb::TripActionRequest {
            trip_id: String::new(),
            driver_id: "d-1".into(),
        })
        .await,
        Code::InvalidArgument,
        "trip_id",
    );
    // Another rider cannot cancel it; unknown trips are not found.
    let mut r = s.riders();
    assert_code(
        r.cancel_trip(pb::CancelTripRequest {
            trip_id: trip.trip_id.clone(),
            rider_id: "r-2".into(),
        })
        .await,
        Code::PermissionDenied,
        "not requested by rider r-2",
    );
    assert_code(
        r.get_trip(pb::GetTripRequest {
            trip_id: "trip-12345".into(),
        })
        .await,
        Code::NotFound,
        "unknown trip",
    );
    assert_code(
        r.get_trip(pb::GetTripRequest {
            trip_id: "nonsense".into(),
        })
        .await,
        Code::NotFound,
        "unknown trip",
    );
    s.stop().await;
}

#[tokio::test]
async fn malformed_rider_and_query_input_is_invalid_argument() {
    let s = start().await;
    let mut r = s.riders();
    let mut bad = trip_request("r-1", "");
    bad.pickup = ll(0.0, 200.0);
    assert_code(
        r.request_trip(bad).await,
        Code::InvalidArgument,
        "pickup: lng_deg",
    );
    let mut bad = trip_request("r-1", "");
    bad.dropoff = None;
    assert_code(
        r.request_trip(bad).await,
        Code::InvalidArgument,
        "dropoff is required",
    );
    assert_code(
        r.request_trip(trip_request("", "")).await,
        Code::InvalidArgument,
        "rider_id",
    );
    assert_code(
        r.request_trip(trip_request("r-1", &"k".repeat(100))).await,
        Code::InvalidArgument,
        "request_id",
    );

    let mut q = s.queries();
    let nearby = |radius_m, limit| pb::NearbyDriversRequest {
        location: ll(40.75, -73.99),
        radius_m,
        limit,
        vehicle_class: 0,
    };
    assert_code(
        q.nearby_drivers(nearby(-5.0, 10)).await,
        Code::InvalidArgument,
        "radius_m",
    );
    assert_code(
        q.nearby_drivers(nearby(f64::NAN, 10)).await,
        Code::InvalidArgument,
        "radius_m",
    );
    assert_code(
        q.nearby_drivers(nearby(60_000.0, 10)).await,
        Code::InvalidArgument,
        "radius_m",
    );
    assert_code(
        q.nearby_drivers(nearby(500.0, 1000)).await,
        Code::InvalidArgument,
        "limit",
    );
    assert_code(
        q.get_surge(pb::GetSurgeRequest {
            location: None,
            vehicle_class: 0,
        })
        .await,
        Code::InvalidArgument,
        "location",
    );

    let mut e = s.events();
    assert_code(
        e.subscribe(pb::SubscribeRequest {
            from_offset: Some(1_000),
            kinds: vec![],
        })
        .await,
        Code::OutOfRange,
        "beyond the head",
    );
    assert_code(
        e.subscribe(pb::SubscribeRequest {
            from_offset: None,
            kinds: vec![77],
        })
        .await,
        Code::InvalidArgument,
        "EventKind",
    );
    let stats = q
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.trips_requested, 0);
    s.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let s = start().await;
    let mut health = HealthClient::new(s.channel.clone());
    for service in [
        "",
        "dispatch.v1.DriverService",
        "dispatch.v1.RiderService",
        "dispatch.v1.QueryService",
        "dispatch.v1.EventService",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn reflection_lists_and_describes_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let s = start().await;
    let mut client = ServerReflectionClient::new(s.channel.clone());
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "dispatch.v1.RiderService".into(),
            )),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    match next(&mut responses).await.message_response.unwrap() {
        MessageResponse::ListServicesResponse(list) => {
            let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
            for want in [
                "dispatch.v1.DriverService",
                "dispatch.v1.RiderService",
                "dispatch.v1.QueryService",
                "dispatch.v1.EventService",
                "grpc.health.v1.Health",
            ] {
                assert!(names.contains(&want), "{want} missing from {names:?}");
            }
        }
        other => panic!("{other:?}"),
    }
    match next(&mut responses).await.message_response.unwrap() {
        MessageResponse::FileDescriptorResponse(f) => assert!(!f.file_descriptor_proto.is_empty()),
        other => panic!("{other:?}"),
    }
    s.stop().await;
}
