//! Cluster mode's log over a real 3-node NATS JetStream cluster: each region's events are
//! committed to its own R3 stream before the call is acknowledged, a restarted server rebuilds
//! every region from its stream, and an owner whose append is refused (someone else wrote to
//! the region's subject) stops serving that region at once while the other regions go on.

mod nats;
mod support;

use dispatch::config::Config;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, rider_service_client::RiderServiceClient,
};
use support::ll;
use support::regions::{RegionServer as Server, wait_served, west_east};
use tonic::Code;

fn config(nats_url: String) -> Config {
    let mut config = Config {
        regions: west_east(),
        ..Config::default()
    };
    config.cluster.nats_url = Some(nats_url);
    config
}

/// A server on `config` once both its regions are served (it serves at once; its regions come
/// once their leases are taken and their streams replayed).
async fn start(config: Config) -> Server {
    let s = Server::start(config).await;
    wait_served(&s.channel, &["west", "east"]).await;
    s
}

impl Server {
    async fn online(&self, id: &str, lng: f64) -> Result<pb::Driver, tonic::Status> {
        let r = DriverServiceClient::new(self.channel.clone())
            .go_online(pb::GoOnlineRequest {
                driver_id: id.into(),
                location: ll(40.75, lng),
                rating: 4.8,
                vehicle_class: 0,
                gateway_id: "gw".into(),
            })
            .await?;
        Ok(r.into_inner().driver.unwrap())
    }

    async fn request(&self, rider: &str, lng: f64) -> Result<pb::Trip, tonic::Status> {
        let r = RiderServiceClient::new(self.channel.clone())
            .request_trip(pb::RequestTripRequest {
                rider_id: rider.into(),
                request_id: format!("req-{rider}"),
                pickup: ll(40.751, lng),
                dropoff: ll(40.76, -73.98),
                vehicle_class: 0,
            })
            .await?;
        Ok(r.into_inner().trip.unwrap())
    }

    async fn trip(&self, trip_id: &str) -> Result<pb::Trip, tonic::Status> {
        let r = RiderServiceClient::new(self.channel.clone())
            .get_trip(pb::GetTripRequest {
                trip_id: trip_id.into(),
            })
            .await?;
        Ok(r.into_inner().trip.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_calls_are_in_the_region_streams_and_survive_a_restart() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    let js = nats::jetstream(&cluster, 0).await;

    let s = start(config(cluster.urls())).await;
    s.online("d-east", -73.98).await.unwrap();
    s.online("d-west", -74.0).await.unwrap();
    let east = s.request("r-e", -73.97).await.unwrap();
    let west = s.request("r-w", -74.01).await.unwrap();
    // Acknowledged, so in the streams already: one message per command group at least.
    assert!(nats::stream_messages(&js, "east").await >= 2);
    assert!(nats::stream_messages(&js, "west").await >= 2);
    let mut info = js.get_stream("DISPATCH_east").await.unwrap();
    assert_eq!(info.info().await.unwrap().config.num_replicas, 3);
    s.stop().await;

    let s = start(config(cluster.urls())).await;
    for (trip, driver) in [(&east, "d-east"), (&west, "d-west")] {
        let again = s.trip(&trip.trip_id).await.unwrap();
        assert_eq!(again.status(), pb::TripStatus::Offered, "{again:?}");
        assert_eq!(again.driver_id, driver);
    }
    let later = s.request("r-e2", -73.96).await.unwrap();
    assert!(
        later.trip_id > east.trip_id,
        "{} after {}",
        later.trip_id,
        east.trip_id
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_append_is_refused_stops_serving_that_region_only() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    let js = nats::jetstream(&cluster, 1).await;

    let s = start(config(cluster.urls())).await;
    s.online("d-east", -73.98).await.unwrap();
    s.online("d-west", -74.0).await.unwrap();
    let before = nats::stream_messages(&js, "east").await;

    // Another writer appends to the east region: the owner's next append must be refused.
    js.publish("dispatch.region.east.events", "not ours".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let err = s.request("r-e", -73.97).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    // Nothing of the refused call reached the stream: only the intruder's message was added
    // (the region is not taken again: its stream now holds a message that is not events).
    assert_eq!(nats::stream_messages(&js, "east").await, before + 1);
    // The region stays stopped; the other one serves on.
    let again = s.request("r-e2", -73.96).await.unwrap_err();
    assert_eq!(again.code(), Code::Unavailable, "{}", again.message());
    let west = s.request("r-w", -74.01).await.unwrap();
    assert_eq!(west.driver_id, "d-west");
    s.stop().await;
}
