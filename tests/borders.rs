//! Borders between regions in one process, over real gRPC (west and east of 73.99 W): an
//! available driver whose reports cross the border by more than `cluster.border_margin_m`
//! moves (DriverLeftRegion in one stream, DriverJoinedRegion in the other), a driver with an
//! offer or a trip stays until it is free, a driver on the line does not move, a pickup near
//! the border gets the driver across it, and random sequences never put a driver in two
//! regions, and each region's log replays to the state it served.

mod support;

use dispatch::cluster::regions::REGION_ID_SPAN;
use dispatch::config::Config;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, event_service_client::EventServiceClient,
    query_service_client::QueryServiceClient, rider_service_client::RiderServiceClient,
};
use support::regions::{RegionServer as Server, stats_of, west_east};
use support::{ll, next};
use tonic::Code;
use tonic::transport::Channel;

const LAT: f64 = 40.75;
/// Inside west, 843 m from the border.
const WEST: f64 = -74.00;
/// Inside east, 843 m from the border (more than the 500 m margin these tests use).
const EAST: f64 = -73.98;
/// Inside east, 42 m from the border (within the margin).
const ON_LINE_EAST: f64 = -73.9895;
/// Inside west, 42 m from the border.
const ON_LINE_WEST: f64 = -73.9905;

fn config(margin_m: f64, pull: usize) -> Config {
    let mut config = Config {
        regions: west_east(),
        ..Config::default()
    };
    config.cluster.border_margin_m = margin_m;
    config.cluster.border_pull = pull;
    config
}

fn drivers(s: &Server) -> DriverServiceClient<Channel> {
    DriverServiceClient::new(s.channel.clone())
}

async fn online(s: &Server, id: &str, lng: f64) -> Result<pb::Driver, tonic::Status> {
    let r = drivers(s)
        .go_online(pb::GoOnlineRequest {
            driver_id: id.into(),
            location: ll(LAT, lng),
            rating: 4.8,
            vehicle_class: 0,
            gateway_id: "gw".into(),
        })
        .await?;
    Ok(r.into_inner().driver.unwrap())
}

async fn report(s: &Server, id: &str, lng: f64) {
    drivers(s)
        .update_location(pb::LocationUpdate {
            driver_id: id.into(),
            location: ll(LAT, lng),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn request(s: &Server, rider: &str, lng: f64) -> Result<pb::Trip, tonic::Status> {
    let r = RiderServiceClient::new(s.channel.clone())
        .request_trip(pb::RequestTripRequest {
            rider_id: rider.into(),
            request_id: format!("req-{rider}"),
            pickup: ll(LAT, lng),
            dropoff: ll(40.76, -73.98),
            vehicle_class: 0,
        })
        .await?;
    Ok(r.into_inner().trip.unwrap())
}

async fn get_driver(s: &Server, id: &str) -> pb::Driver {
    QueryServiceClient::new(s.channel.clone())
        .get_driver(pb::GetDriverRequest {
            driver_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .driver
        .unwrap()
}

/// Drivers (available, offered, on trip) of region `name`.
async fn online_in(s: &Server, name: &str) -> (u64, u64, u64) {
    let st = stats_of(&s.channel, name).await.unwrap();
    (st.drivers_available, st.drivers_offered, st.drivers_on_trip)
}

fn region_of(id: &str) -> u64 {
    let n: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
    n / REGION_ID_SPAN
}

async fn subscribe(s: &Server, region: &str) -> tonic::Streaming<pb::DispatchEvent> {
    let mut call = tonic::Request::new(pb::SubscribeRequest {
        from_offset: None,
        kinds: vec![
            pb::EventKind::DriverLeftRegion as i32,
            pb::EventKind::DriverJoinedRegion as i32,
        ],
    });
    call.metadata_mut()
        .insert("dispatch-region", region.parse().unwrap());
    EventServiceClient::new(s.channel.clone())
        .subscribe(call)
        .await
        .unwrap()
        .into_inner()
}

async fn respond(s: &Server, offer: &str, driver: &str, accept: bool) -> pb::Trip {
    support::answer_on(&s.channel, offer, driver, accept).await
}

async fn step(s: &Server, trip: &str, driver: &str, which: &str) {
    let req = pb::TripActionRequest {
        trip_id: trip.into(),
        driver_id: driver.into(),
    };
    let mut c = drivers(s);
    match which {
        "arrive" => c.mark_arrived(req).await.map(drop),
        "start" => c.start_trip(req).await.map(drop),
        _ => c.complete_trip(req).await.map(drop),
    }
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_driver_crossing_the_border_moves_with_an_event_in_each_region() {
    let s = Server::start(config(500.0, 0)).await;
    let mut west = subscribe(&s, "west").await;
    let mut east = subscribe(&s, "east").await;
    online(&s, "d1", WEST).await.unwrap();
    // Its acceptance and fairness counters travel with it.
    let before = get_driver(&s, "d1").await;

    report(&s, "d1", EAST).await;
    let left = next(&mut west).await;
    assert_eq!(left.kind(), pb::EventKind::DriverLeftRegion);
    assert_eq!(left.driver_id, "d1");
    let Some(pb::dispatch_event::Detail::DriverLeftRegion(to)) = left.detail else {
        panic!("no detail: {left:?}");
    };
    assert_eq!(to.to_region, "east");
    let joined = next(&mut east).await;
    assert_eq!(joined.kind(), pb::EventKind::DriverJoinedRegion);
    let Some(pb::dispatch_event::Detail::DriverJoinedRegion(j)) = joined.detail else {
        panic!("no detail: {joined:?}");
    };
    assert_eq!(j.from_region, "west");
    assert_eq!(j.acceptance_rate, before.acceptance_rate);
    assert_eq!(j.rating, before.rating);
    assert_eq!(joined.offset / REGION_ID_SPAN, 2);

    let d = get_driver(&s, "d1").await;
    assert_eq!(d.state(), pb::DriverState::Available);
    assert_eq!(d.location.unwrap().lng_deg, EAST);
    assert_eq!(online_in(&s, "west").await, (0, 0, 0));
    assert_eq!(online_in(&s, "east").await, (1, 0, 0));
    // The east region dispatches it now, with its own ids.
    let trip = request(&s, "r1", EAST).await.unwrap();
    assert_eq!(trip.driver_id, "d1");
    assert_eq!(region_of(&trip.trip_id), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_with_an_offer_or_a_trip_stays_until_it_is_free() {
    let s = Server::start(config(500.0, 0)).await;
    online(&s, "d1", WEST).await.unwrap();
    // An offer pending: it stays in west, its position updates there.
    let first = request(&s, "r1", WEST).await.unwrap();
    assert_eq!(first.driver_id, "d1");
    report(&s, "d1", EAST).await;
    assert_eq!(online_in(&s, "west").await, (0, 1, 0));
    assert_eq!(online_in(&s, "east").await, (0, 0, 0));
    assert_eq!(get_driver(&s, "d1").await.location.unwrap().lng_deg, EAST);
    // Declined: free, so its next report moves it.
    let offered = get_driver(&s, "d1").await;
    assert_eq!(offered.state(), pb::DriverState::Offered);
    respond(&s, &offered.offer_id, "d1", false).await;
    report(&s, "d1", EAST).await;
    assert_eq!(online_in(&s, "west").await.0, 0);
    assert_eq!(online_in(&s, "east").await, (1, 0, 0));

    // On a trip in east, reports from deep in west keep it in east until the trip ends.
    let trip = request(&s, "r2", EAST).await.unwrap();
    assert_eq!(trip.driver_id, "d1");
    let offer_id = get_driver(&s, "d1").await.offer_id;
    respond(&s, &offer_id, "d1", true).await;
    report(&s, "d1", WEST).await;
    assert_eq!(online_in(&s, "east").await, (0, 0, 1));
    step(&s, &trip.trip_id, "d1", "arrive").await;
    step(&s, &trip.trip_id, "d1", "start").await;
    step(&s, &trip.trip_id, "d1", "complete").await;
    // Completed at the drop-off (in east); its next report from the west moves it.
    report(&s, "d1", WEST).await;
    assert_eq!(online_in(&s, "east").await, (0, 0, 0));
    assert_eq!(online_in(&s, "west").await, (1, 0, 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_on_the_border_line_does_not_move_back_and_forth() {
    let s = Server::start(config(500.0, 0)).await;
    online(&s, "d1", WEST).await.unwrap();
    for _ in 0..3 {
        report(&s, "d1", ON_LINE_EAST).await;
        report(&s, "d1", ON_LINE_WEST).await;
    }
    report(&s, "d1", ON_LINE_EAST).await;
    assert_eq!(online_in(&s, "west").await, (1, 0, 0));
    assert_eq!(online_in(&s, "east").await, (0, 0, 0));
    // Past the margin it moves; back on the line it stays in east.
    report(&s, "d1", EAST).await;
    report(&s, "d1", ON_LINE_WEST).await;
    assert_eq!(online_in(&s, "east").await, (1, 0, 0));
    assert_eq!(online_in(&s, "west").await, (0, 0, 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pickup_near_the_border_gets_the_driver_across_it() {
    let s = Server::start(config(5_000.0, 3)).await;
    online(&s, "d-west", WEST).await.unwrap();
    let trip = request(&s, "r1", ON_LINE_EAST).await.unwrap();
    assert_eq!(trip.driver_id, "d-west");
    assert_eq!(region_of(&trip.trip_id), 2, "{}", trip.trip_id);
    assert_eq!(online_in(&s, "west").await, (0, 0, 0));
    assert_eq!(online_in(&s, "east").await, (0, 1, 0));
    // A neighbour's driver moves only if it is nearer than the pickup region's own nearest:
    // d-east (1.6 km off) is not, d-west2 (84 m) is.
    online(&s, "d-east", -73.97).await.unwrap();
    online(&s, "d-west2", ON_LINE_WEST).await.unwrap();
    online(&s, "d-west3", -74.02).await.unwrap();
    let second = request(&s, "r2", ON_LINE_EAST).await.unwrap();
    assert_eq!(second.driver_id, "d-west2");
    assert_eq!(online_in(&s, "west").await, (1, 0, 0), "d-west3 stays");
    let third = request(&s, "r3", ON_LINE_EAST).await.unwrap();
    assert_eq!(
        third.driver_id, "d-east",
        "its own driver is nearer than d-west3"
    );
    assert_eq!(online_in(&s, "west").await, (1, 0, 0));
    // Without the pull, the same pickup finds nobody in its own region.
    let s2 = Server::start(config(5_000.0, 0)).await;
    online(&s2, "d-west", WEST).await.unwrap();
    let alone = request(&s2, "r1", ON_LINE_EAST).await.unwrap();
    assert_eq!(alone.driver_id, "");
    s.stop().await;
    s2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_online_in_the_other_region_moves_an_available_driver_but_not_a_busy_one() {
    let s = Server::start(config(500.0, 0)).await;
    online(&s, "d1", WEST).await.unwrap();
    let d = online(&s, "d1", EAST).await.unwrap();
    assert_eq!(d.state(), pb::DriverState::Available);
    assert_eq!(online_in(&s, "west").await, (0, 0, 0));
    assert_eq!(online_in(&s, "east").await, (1, 0, 0));
    request(&s, "r1", EAST).await.unwrap();
    let busy = online(&s, "d1", WEST).await.unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition);
    assert!(busy.message().contains("holds offer"), "{}", busy.message());
    s.stop().await;
}
