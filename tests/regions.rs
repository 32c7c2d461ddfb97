//! Regions in one process, over real gRPC: two regions side by side, each with its own
//! dispatcher, log and id range. Pins that a driver and a trip go to the region of their point,
//! that ids name their region, that a point outside every region is refused naming it, that a
//! gateway's offer stream carries offers of every region, that events are followed per region,
//! and that each region recovers its own log after a restart.

mod support;

use dispatch::cluster::regions::REGION_ID_SPAN;
use dispatch::config::Config;
use dispatch::pb::{
    self, driver_notice::Notice, driver_service_client::DriverServiceClient,
    event_service_client::EventServiceClient, query_service_client::QueryServiceClient,
    rider_service_client::RiderServiceClient,
};
use std::time::Duration;
use support::regions::{RegionServer as Server, west_east};
use support::{ll, next};
use tonic::Code;
use tonic::transport::Channel;

impl Server {
    fn drivers(&self) -> DriverServiceClient<Channel> {
        DriverServiceClient::new(self.channel.clone())
    }
    fn riders(&self) -> RiderServiceClient<Channel> {
        RiderServiceClient::new(self.channel.clone())
    }

    async fn online(&self, id: &str, lat: f64, lng: f64) -> Result<pb::Driver, tonic::Status> {
        let r = self
            .drivers()
            .go_online(pb::GoOnlineRequest {
                driver_id: id.into(),
                location: ll(lat, lng),
                rating: 4.8,
                vehicle_class: 0,
                gateway_id: "gw".into(),
            })
            .await?;
        Ok(r.into_inner().driver.unwrap())
    }

    async fn request(&self, rider: &str, lat: f64, lng: f64) -> Result<pb::Trip, tonic::Status> {
        let r = self
            .riders()
            .request_trip(pb::RequestTripRequest {
                rider_id: rider.into(),
                request_id: format!("req-{rider}"),
                pickup: ll(lat, lng),
                dropoff: ll(40.76, -73.98),
                vehicle_class: 0,
            })
            .await?;
        Ok(r.into_inner().trip.unwrap())
    }
}

fn region_of(id: &str) -> u64 {
    let n: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
    n / REGION_ID_SPAN
}

fn config(data_dir: Option<&std::path::Path>) -> Config {
    let mut config = Config {
        regions: west_east(),
        ..Config::default()
    };
    config.log.data_dir = data_dir.map(|d| d.to_path_buf());
    // These tests pin what each region does alone; drawing drivers across the border for a
    // pickup near it is tests/borders.rs's.
    config.cluster.border_pull = 0;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_goes_to_the_region_of_its_point_and_ids_name_it() {
    let s = Server::start(config(None)).await;
    s.online("d-west", 40.75, -74.00).await.unwrap();
    s.online("d-east", 40.75, -73.98).await.unwrap();
    let mut offers = s
        .drivers()
        .subscribe_offers(pb::SubscribeOffersRequest {
            gateway_id: "gw".into(),
            resume_from: vec![],
        })
        .await
        .unwrap()
        .into_inner();

    // A pickup just east of the border: d-west is nearer but in the other region.
    let trip = s.request("r-1", 40.75, -73.9895).await.unwrap();
    assert_eq!(region_of(&trip.trip_id), 2, "{}", trip.trip_id);
    assert_eq!(trip.driver_id, "d-east");
    let Some(Notice::Offer(offer)) = next(&mut offers).await.notice else {
        panic!("expected an offer");
    };
    assert_eq!(offer.trip_id, trip.trip_id);
    assert_eq!(region_of(&offer.offer_id), 2);

    // A pickup in the west region goes to the west driver, through the same merged stream.
    let west = s.request("r-2", 40.75, -74.01).await.unwrap();
    assert_eq!(region_of(&west.trip_id), 1, "{}", west.trip_id);
    assert_eq!(west.driver_id, "d-west");
    let Some(Notice::Offer(west_offer)) = next(&mut offers).await.notice else {
        panic!("expected the west offer");
    };
    assert_eq!(west_offer.trip_id, west.trip_id);
    // Resume points must name a region, once each.
    for (resume_from, says) in [
        (vec![5 * REGION_ID_SPAN], "no region"),
        (vec![REGION_ID_SPAN + 1, REGION_ID_SPAN + 2], "twice"),
    ] {
        let refused = s
            .drivers()
            .subscribe_offers(pb::SubscribeOffersRequest {
                gateway_id: "gw".into(),
                resume_from,
            })
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(says), "{refused:?}");
    }

    // Answers and trip steps find their region by id.
    let accepted = s
        .drivers()
        .respond_to_offer(pb::RespondToOfferRequest {
            offer_id: offer.offer_id.clone(),
            driver_id: "d-east".into(),
            accept: true,
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(accepted.status(), pb::TripStatus::Accepted);
    let arrived = s
        .drivers()
        .mark_arrived(pb::TripActionRequest {
            trip_id: trip.trip_id.clone(),
            driver_id: "d-east".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(arrived.status(), pb::TripStatus::Arrived);

    // Locations for drivers of both regions in one batch are all applied.
    let batch = pb::LocationBatch {
        updates: vec![
            pb::LocationUpdate {
                driver_id: "d-west".into(),
                location: ll(40.751, -74.0),
                ..Default::default()
            },
            pb::LocationUpdate {
                driver_id: "d-east".into(),
                location: ll(40.751, -73.98),
                ..Default::default()
            },
        ],
    };
    let summary = s
        .drivers()
        .report_locations(tokio_stream::iter(vec![batch]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.accepted, summary.rejected), (2, 0), "{summary:?}");

    // The stats are the sum over the regions.
    let stats = QueryServiceClient::new(s.channel.clone())
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.trips_requested, 2);
    assert_eq!(stats.drivers_offered + stats.drivers_on_trip, 2);
    // The merged offer stream, still open, ends with the server: UNAVAILABLE, resubscribe.
    // (A stream that outlived the drain would keep the server from stopping.)
    tokio::time::timeout(Duration::from_secs(60), s.stop())
        .await
        .expect("the server stops while a merged offer stream is open");
    loop {
        match offers.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the offer stream ended without saying why"),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e}");
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_outside_every_region_is_refused_naming_it() {
    let s = Server::start(config(None)).await;
    let err = s.request("r-1", 41.5, -73.95).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("pickup (lat 41.5, lng -73.95)")
            && err.message().contains("west, east"),
        "{}",
        err.message()
    );
    let err = s.online("d-1", 10.0, 10.0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("location (lat 10, lng 10)"),
        "{}",
        err.message()
    );
    // An id no region issued is unknown, not routed somewhere.
    let err = s
        .riders()
        .get_trip(pb::GetTripRequest {
            trip_id: "trip-5".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no region"), "{}", err.message());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_followed_per_region() {
    let s = Server::start(config(None)).await;
    s.online("d-east", 40.75, -73.98).await.unwrap();
    s.online("d-west", 40.75, -74.0).await.unwrap();
    let mut events = EventServiceClient::new(s.channel.clone());
    let err = events
        .subscribe(pb::SubscribeRequest {
            from_offset: None,
            kinds: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("dispatch-region"),
        "{}",
        err.message()
    );

    // From the east region's first offset: its first event is d-east going online.
    let mut east = events
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(2 * REGION_ID_SPAN),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut east).await;
    assert_eq!(first.offset, 2 * REGION_ID_SPAN);
    assert_eq!(first.driver_id, "d-east");

    // By name: the west region's stream from its head sees only west events.
    let mut call = tonic::Request::new(pb::SubscribeRequest {
        from_offset: None,
        kinds: vec![],
    });
    call.metadata_mut()
        .insert("dispatch-region", "west".parse().unwrap());
    let mut west = events.subscribe(call).await.unwrap().into_inner();
    s.request("r-w", 40.75, -74.01).await.unwrap();
    let event = next(&mut west).await;
    assert_eq!(event.kind(), pb::EventKind::TripRequested);
    assert_eq!(event.offset / REGION_ID_SPAN, 1);
    s.stop().await;
}

/// A cluster of one region serves a client written for a single process: Subscribe and
/// GetStats need no `dispatch-region` metadata and answer for that region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_region_needs_no_region_metadata() {
    let config = Config {
        regions: vec![support::regions::region("only", -74.05, -73.93)],
        ..Config::default()
    };
    let s = Server::start(config).await;
    let mut events = EventServiceClient::new(s.channel.clone());
    let mut head = events
        .subscribe(pb::SubscribeRequest {
            from_offset: None,
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    s.online("d-1", 40.75, -73.98).await.unwrap();
    let first = next(&mut head).await;
    assert_eq!(first.driver_id, "d-1");
    assert_eq!(first.offset, REGION_ID_SPAN, "region 1's first offset");
    let stats = QueryServiceClient::new(s.channel.clone())
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.drivers_available, 1);
    assert_eq!(
        stats.next_event_offset,
        REGION_ID_SPAN + 1,
        "the region's own counters, not the multi-region sum (whose offset is 0)"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_region_recovers_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(config(Some(dir.path()))).await;
    s.online("d-east", 40.75, -73.98).await.unwrap();
    s.online("d-west", 40.75, -74.0).await.unwrap();
    let east = s.request("r-e", 40.75, -73.97).await.unwrap();
    let west = s.request("r-w", 40.75, -74.01).await.unwrap();
    s.stop().await;
    assert!(dir.path().join("regions/east").is_dir());

    let s = Server::start(config(Some(dir.path()))).await;
    for (trip, driver) in [(&east, "d-east"), (&west, "d-west")] {
        let again = s
            .riders()
            .get_trip(pb::GetTripRequest {
                trip_id: trip.trip_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .trip
            .unwrap();
        assert_eq!(again.status(), pb::TripStatus::Offered);
        assert_eq!(again.driver_id, driver);
    }
    // A driver recovered from the log is found in its region without going online again.
    let err = s.online("d-west", 40.75, -73.97).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    // New ids go on in each region's range.
    let later = s.request("r-e2", 40.76, -73.96).await;
    let later = later.unwrap();
    assert_eq!(region_of(&later.trip_id), 2);
    assert!(
        later.trip_id > east.trip_id,
        "{} after {}",
        later.trip_id,
        east.trip_id
    );
    s.stop().await;
}
