//! Metrics scraped over HTTP and parsed: values move as a trip happens; and overload: a flood
//! is shed with RESOURCE_EXHAUSTED (dispatcher queue full, concurrency limit), counted, while
//! health keeps answering SERVING. The dispatcher is stalled deterministically by a gated
//! clock, not by timing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use dispatch::clock::ManualClock;
use dispatch::config::Config;
use dispatch::pb;
use support::*;
use tokio::task::JoinSet;
use tonic::Code;

const SERVING: i32 = 1;

fn get(m: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("metric {key} missing; have {:?}", m.keys()))
}

#[tokio::test]
async fn metrics_follow_a_trip_from_request_to_completion() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let s = start_custom(Config::default(), clock.clone(), clock, true).await;

    let before = s.scrape().await;
    assert_eq!(get(&before, "dispatch_trip_requests_total"), 0.0);
    assert_eq!(get(&before, "dispatch_drivers{state=\"available\"}"), 0.0);
    assert_eq!(get(&before, "dispatch_open_trips"), 0.0);

    online(&s, "d-1", 500.0, 4.8, "gw-1").await;
    let mut offers = offer_stream(&s, "gw-1").await;
    let trip = request(&s, "r-1", "req-1").await;
    let offer = offer_of(next(&mut offers).await);

    let offered = s.scrape().await;
    assert_eq!(get(&offered, "dispatch_trip_requests_total"), 1.0);
    assert_eq!(get(&offered, "dispatch_offers_sent_total"), 1.0);
    assert_eq!(get(&offered, "dispatch_pending_offers"), 1.0);
    assert_eq!(get(&offered, "dispatch_open_trips"), 1.0);
    assert_eq!(get(&offered, "dispatch_drivers{state=\"offered\"}"), 1.0);
    assert_eq!(
        get(&offered, "dispatch_request_trip_duration_seconds_count"),
        1.0
    );
    // This test's offer stream and the metrics follower are on the bus.
    assert!(get(&offered, "dispatch_subscribers") >= 2.0);

    // The driver takes 4 s (manual clock) to accept.
    s.clock.advance(Duration::from_secs(4));
    let mut drivers = s.drivers();
    drivers
        .respond_to_offer(pb::RespondToOfferRequest {
            offer_id: offer.offer_id,
            driver_id: "d-1".into(),
            accept: true,
        })
        .await
        .unwrap();
    let action = || pb::TripActionRequest {
        trip_id: trip.trip_id.clone(),
        driver_id: "d-1".into(),
    };
    drivers.mark_arrived(action()).await.unwrap();
    drivers.start_trip(action()).await.unwrap();
    drivers.complete_trip(action()).await.unwrap();
    // A bad call is counted by its status.
    let bad = drivers
        .mark_arrived(pb::TripActionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Location updates rejected inside a batch are counted by reason.
    let batch = pb::LocationBatch {
        updates: vec![
            pb::LocationUpdate {
                driver_id: "nobody".into(),
                location: north_of_pickup(10.0),
                ..Default::default()
            },
            pb::LocationUpdate {
                driver_id: "d-1".into(),
                location: ll(f64::NAN, 0.0),
                ..Default::default()
            },
            pb::LocationUpdate {
                driver_id: "d-1".into(),
                location: north_of_pickup(20.0),
                ..Default::default()
            },
        ],
    };
    drivers
        .report_locations(tokio_stream::iter(vec![batch]))
        .await
        .unwrap();

    let after = s.scrape().await;
    assert_eq!(
        get(
            &after,
            "dispatch_location_updates_rejected_total{reason=\"unknown_driver\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "dispatch_location_updates_rejected_total{reason=\"invalid_coordinates\"}"
        ),
        1.0
    );
    assert_eq!(get(&after, "dispatch_location_updates_total"), 1.0);
    assert_eq!(
        get(&after, "dispatch_offers_total{outcome=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        get(&after, "dispatch_offers_total{outcome=\"declined\"}"),
        0.0
    );
    assert_eq!(
        get(&after, "dispatch_trips_total{state=\"completed\"}"),
        1.0
    );
    assert_eq!(get(&after, "dispatch_open_trips"), 0.0);
    assert_eq!(get(&after, "dispatch_pending_offers"), 0.0);
    assert_eq!(get(&after, "dispatch_drivers{state=\"available\"}"), 1.0);
    assert_eq!(get(&after, "dispatch_time_to_accept_seconds_count"), 1.0);
    assert_eq!(get(&after, "dispatch_time_to_accept_seconds_sum"), 4.0);
    assert_eq!(
        get(&after, "dispatch_time_to_accept_seconds_bucket{le=\"3\"}"),
        0.0
    );
    assert_eq!(
        get(&after, "dispatch_time_to_accept_seconds_bucket{le=\"5\"}"),
        1.0
    );
    assert_eq!(get(&after, "dispatch_pickup_eta_seconds_count"), 1.0);
    assert!(get(&after, "dispatch_pickup_eta_seconds_sum") > 0.0);
    assert_eq!(
        get(
            &after,
            "dispatch_rejected_requests_total{code=\"invalid_argument\"}"
        ),
        1.0
    );
    assert_eq!(
        get(&after, "dispatch_dispatcher_queue_depth{queue=\"control\"}"),
        0.0
    );
    s.stop().await;
}

#[tokio::test]
async fn a_flood_is_shed_when_the_dispatcher_queue_is_full_and_health_stays_serving() {
    const QUEUE: usize = 2;
    const CALLS: usize = 20;
    let mut config = Config::default();
    config.limits.control_queue = QUEUE;
    let clock = Arc::new(ManualClock::new(T0_MS));
    let gate = GateClock::new(clock.clone());
    let s = start_custom(config, gate.clone(), clock, true).await;

    gate.close_and_wait_parked().await;
    let mut calls = JoinSet::new();
    for i in 0..CALLS {
        let mut riders = s.riders();
        calls.spawn(async move {
            riders
                .request_trip(trip_request(&format!("r-{i}"), &format!("q-{i}")))
                .await
        });
    }
    // With the dispatcher parked exactly QUEUE calls fit in its queue; every other one is
    // refused at once.
    let mut shed = 0;
    while shed < CALLS - QUEUE {
        let status = calls.join_next().await.unwrap().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        shed += 1;
    }
    assert_eq!(s.engine.queue_depth().0, QUEUE);
    assert_eq!(s.health().await, SERVING);
    let m = s.scrape().await;
    assert_eq!(
        get(
            &m,
            "dispatch_rejected_requests_total{code=\"resource_exhausted\"}"
        ),
        (CALLS - QUEUE) as f64
    );
    // The scrape's own stats request found the queue full too: at least the flood is counted.
    assert!(
        get(
            &m,
            "dispatch_shed_requests_total{reason=\"dispatcher_queue_full\"}"
        ) >= (CALLS - QUEUE) as f64
    );
    assert_eq!(
        get(&m, "dispatch_dispatcher_queue_depth{queue=\"control\"}"),
        QUEUE as f64
    );

    gate.open();
    while let Some(done) = calls.join_next().await {
        let trip = done.unwrap().unwrap().into_inner().trip.unwrap();
        assert_eq!(status(&trip), pb::TripStatus::NoDrivers);
    }
    s.stop().await;
}

#[tokio::test]
async fn the_global_concurrency_limit_sheds_calls_but_not_health() {
    const LIMIT: usize = 3;
    const CALLS: usize = 12;
    let mut config = Config::default();
    config.limits.max_concurrent_requests = LIMIT;
    let clock = Arc::new(ManualClock::new(T0_MS));
    let gate = GateClock::new(clock.clone());
    let s = start_custom(config, gate.clone(), clock, true).await;

    gate.close_and_wait_parked().await;
    let mut calls = JoinSet::new();
    for _ in 0..CALLS {
        let mut queries = s.queries();
        calls.spawn(async move { queries.get_stats(pb::GetStatsRequest {}).await });
    }
    // LIMIT calls hold the permits (waiting on the parked dispatcher); the rest are refused.
    for _ in 0..CALLS - LIMIT {
        let status = calls.join_next().await.unwrap().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("concurrent-call limit"),
            "{status:?}"
        );
    }
    assert_eq!(s.health().await, SERVING);
    assert_eq!(health_of(s.channel.clone()).await, SERVING);
    let m = s.scrape().await;
    assert_eq!(
        get(
            &m,
            "dispatch_shed_requests_total{reason=\"concurrency_limit\"}"
        ),
        (CALLS - LIMIT) as f64
    );

    gate.open();
    while let Some(done) = calls.join_next().await {
        done.unwrap().unwrap();
    }
    // Permits came back: calls are admitted again.
    s.queries().get_stats(pb::GetStatsRequest {}).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn an_unknown_path_on_the_http_side_gets_a_404_json_error() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let s = start_custom(Config::default(), clock.clone(), clock, true).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(s.metrics_addr.unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET /secrets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(
        text.contains("{\"error\":\"no such page: /secrets"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_call_past_its_grpc_timeout_ends_and_frees_its_permit() {
    let mut config = Config::default();
    config.limits.max_concurrent_requests = 1;
    let clock = Arc::new(ManualClock::new(T0_MS));
    let gate = GateClock::new(clock.clone());
    let s = start_custom(config, gate.clone(), clock, false).await;

    gate.close_and_wait_parked().await;
    // The dispatcher cannot answer: the server gives up at the client's deadline (tonic
    // answers CANCELLED "Timeout expired") instead of holding the call.
    for _ in 0..2 {
        let mut request = tonic::Request::new(pb::GetStatsRequest {});
        request.set_timeout(Duration::from_millis(100));
        let status = tokio::time::timeout(Duration::from_secs(10), s.queries().get_stats(request))
            .await
            .expect("the deadline is honoured")
            .unwrap_err();
        // The second call was admitted, so the first one's permit came back.
        assert!(
            matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
            "{status:?}"
        );
    }
    gate.open();
    s.queries().get_stats(pb::GetStatsRequest {}).await.unwrap();
    s.stop().await;
}
