//! Cluster mode's log over a real 3-node NATS JetStream cluster: each region's events are
//! committed to its own R3 stream before the call is acknowledged, a restarted server rebuilds
//! every region from its stream, and an owner whose append is refused (someone else wrote to
//! the region's subject) stops serving that region at once while the other regions go on.

mod nats;

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use dispatch::cluster::regions::RegionConfig;
use dispatch::config::Config;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, query_service_client::QueryServiceClient,
    rider_service_client::RiderServiceClient,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

fn config(nats_url: String) -> Config {
    let square = |lng0: f64, lng1: f64| {
        format!(
            r#"{{"type":"Polygon","coordinates":[[[{lng0},40.7],[{lng1},40.7],[{lng1},40.8],[{lng0},40.8],[{lng0},40.7]]]}}"#
        )
    };
    let region = |name: &str, lng0, lng1| RegionConfig {
        name: name.into(),
        geojson: Some(square(lng0, lng1)),
        geojson_file: None,
    };
    let mut config = Config {
        regions: vec![
            region("west", -74.05, -73.99),
            region("east", -73.99, -73.93),
        ],
        ..Config::default()
    };
    config.cluster.nats_url = Some(nats_url);
    config
}

struct Server {
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(config: Config) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            dispatch::server::run(listener, config, Default::default(), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let channel = loop {
            let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) if !task.is_finished() => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("the server stopped before serving: {e}"),
            }
        };
        // The server serves at once; its regions come once their leases are taken and their
        // streams replayed: wait until each answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for region in ["west", "east"] {
            loop {
                let mut request = tonic::Request::new(pb::GetStatsRequest {});
                request
                    .metadata_mut()
                    .insert("dispatch-region", region.parse().unwrap());
                let answer = QueryServiceClient::new(channel.clone())
                    .get_stats(request)
                    .await;
                if answer.is_ok() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{region} not served within 60 s: {answer:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Server {
            channel,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }

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

fn ll(lat: f64, lng: f64) -> Option<pb::LatLng> {
    Some(pb::LatLng {
        lat_deg: lat,
        lng_deg: lng,
    })
}

/// Messages in a region's stream, read by a client of its own.
async fn stream_messages(js: &jetstream::Context, region: &str) -> u64 {
    let mut stream = js.get_stream(format!("DISPATCH_{region}")).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_calls_are_in_the_region_streams_and_survive_a_restart() {
    let Some(cluster) = nats::NatsCluster::start(3).await else {
        return;
    };
    let client = async_nats::connect(format!("127.0.0.1:{}", cluster.nodes[0].client_port))
        .await
        .unwrap();
    let js = jetstream::new(client);

    let s = Server::start(config(cluster.urls())).await;
    s.online("d-east", -73.98).await.unwrap();
    s.online("d-west", -74.0).await.unwrap();
    let east = s.request("r-e", -73.97).await.unwrap();
    let west = s.request("r-w", -74.01).await.unwrap();
    // Acknowledged, so in the streams already: one message per command group at least.
    assert!(stream_messages(&js, "east").await >= 2);
    assert!(stream_messages(&js, "west").await >= 2);
    let mut info = js.get_stream("DISPATCH_east").await.unwrap();
    assert_eq!(info.info().await.unwrap().config.num_replicas, 3);
    s.stop().await;

    let s = Server::start(config(cluster.urls())).await;
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
    let Some(cluster) = nats::NatsCluster::start(3).await else {
        return;
    };
    let client = async_nats::connect(format!("127.0.0.1:{}", cluster.nodes[1].client_port))
        .await
        .unwrap();
    let js = jetstream::new(client);

    let s = Server::start(config(cluster.urls())).await;
    s.online("d-east", -73.98).await.unwrap();
    s.online("d-west", -74.0).await.unwrap();
    let before = stream_messages(&js, "east").await;

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
    assert_eq!(stream_messages(&js, "east").await, before + 1);
    // The region stays stopped; the other one serves on.
    let again = s.request("r-e2", -73.96).await.unwrap_err();
    assert_eq!(again.code(), Code::Unavailable, "{}", again.message());
    let west = s.request("r-w", -74.01).await.unwrap();
    assert_eq!(west.driver_id, "d-west");
    s.stop().await;
}
