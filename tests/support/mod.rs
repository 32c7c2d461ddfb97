//! Test harness: a real server on 127.0.0.1:0 driven by a manual clock, plus clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dispatch::clock::ManualClock;
use dispatch::config::Config;
use dispatch::engine::Engine;
use dispatch::pb;
use dispatch::pb::driver_service_client::DriverServiceClient;
use dispatch::pb::event_service_client::EventServiceClient;
use dispatch::pb::query_service_client::QueryServiceClient;
use dispatch::pb::rider_service_client::RiderServiceClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// 2023-11-14 22:13:20 UTC: a fixed start so ETAs are reproducible.
pub const T0_MS: u64 = 1_700_000_000_000;

/// The pickup most tests use (Manhattan).
pub const PICKUP: (f64, f64) = (40.7500, -73.9900);
pub const DROPOFF: (f64, f64) = (40.7700, -73.9700);

pub struct TestServer {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub engine: Engine,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

pub async fn start() -> TestServer {
    start_with(Config::default()).await
}

pub async fn start_with(config: Config) -> TestServer {
    start_with_clock(config, Arc::new(ManualClock::new(T0_MS))).await
}

/// A server on an existing clock (a restart keeps the clock of the run before it).
pub async fn start_with_clock(config: Config, clock: Arc<ManualClock>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let engine = Engine::start(&config, dispatch::index::default_index(), clock.clone()).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn({
        let engine = engine.clone();
        async move {
            dispatch::server::serve_engine(listener, config, engine, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        }
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TestServer {
        addr,
        clock,
        engine,
        channel,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestServer {
    pub fn drivers(&self) -> DriverServiceClient<Channel> {
        DriverServiceClient::new(self.channel.clone())
    }
    pub fn riders(&self) -> RiderServiceClient<Channel> {
        RiderServiceClient::new(self.channel.clone())
    }
    pub fn queries(&self) -> QueryServiceClient<Channel> {
        QueryServiceClient::new(self.channel.clone())
    }
    pub fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel.clone())
    }

    /// Moves the manual clock and lets the dispatcher fire what fell due.
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.engine.tick().await.unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("server stops within 10 s")
                .unwrap();
        }
    }
}

pub fn ll(lat: f64, lng: f64) -> Option<pb::LatLng> {
    Some(pb::LatLng {
        lat_deg: lat,
        lng_deg: lng,
    })
}

/// A point `north_m` metres north of the pickup.
pub fn north_of_pickup(north_m: f64) -> Option<pb::LatLng> {
    ll(PICKUP.0 + north_m / 111_195.0, PICKUP.1)
}

pub async fn online(
    s: &TestServer,
    id: &str,
    north_m: f64,
    rating: f64,
    gateway: &str,
) -> pb::Driver {
    s.drivers()
        .go_online(pb::GoOnlineRequest {
            driver_id: id.into(),
            location: north_of_pickup(north_m),
            rating,
            vehicle_class: 0,
            gateway_id: gateway.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .driver
        .unwrap()
}

pub fn trip_request(rider: &str, request_id: &str) -> pb::RequestTripRequest {
    pb::RequestTripRequest {
        rider_id: rider.into(),
        request_id: request_id.into(),
        pickup: ll(PICKUP.0, PICKUP.1),
        dropoff: ll(DROPOFF.0, DROPOFF.1),
        vehicle_class: 0,
    }
}

pub async fn request(s: &TestServer, rider: &str, request_id: &str) -> pb::Trip {
    s.riders()
        .request_trip(trip_request(rider, request_id))
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap()
}

/// The next message of a stream, failing the test after 10 s instead of hanging.
pub async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("stream ok")
        .expect("stream still open")
}

pub fn offer_of(n: pb::DriverNotice) -> pb::Offer {
    match n.notice {
        Some(pb::driver_notice::Notice::Offer(o)) => o,
        other => panic!("expected an offer, got {other:?}"),
    }
}

pub fn status(trip: &pb::Trip) -> pb::TripStatus {
    pb::TripStatus::try_from(trip.status).unwrap()
}
