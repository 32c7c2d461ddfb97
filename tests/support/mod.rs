//! Test harness: a real server on 127.0.0.1:0 driven by a manual clock, plus clients.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using part of it"
)]

pub mod process;
pub mod regions;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dispatch::clock::{Clock, ManualClock};
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
    /// The `/metrics` endpoint, when started with [`start_custom`] and `metrics: true`.
    pub metrics_addr: Option<SocketAddr>,
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
    start_custom(config, clock.clone(), clock, false).await
}

/// A server whose dispatcher reads `engine_clock` (which may wrap `clock`, e.g. a
/// [`GateClock`]), optionally with a metrics endpoint on 127.0.0.1:0.
pub async fn start_custom(
    config: Config,
    engine_clock: Arc<dyn Clock>,
    clock: Arc<ManualClock>,
    metrics: bool,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics_listener = if metrics {
        Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr().unwrap());
    let engine = Engine::start(&config, dispatch::index::default_index(), engine_clock).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn({
        let engine = engine.clone();
        async move {
            let options = dispatch::server::RunOptions {
                http: metrics_listener,
                engine: Some(engine),
            };
            dispatch::server::run(listener, config, options, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        }
    });
    let channel = connect(addr).await;
    TestServer {
        addr,
        metrics_addr,
        clock,
        engine,
        channel,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// A new plaintext connection (its own HTTP/2 connection, so its own per-connection limit).
pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
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

    /// Scrapes `/metrics` over HTTP and parses it: `name{labels}` -> value.
    pub async fn scrape(&self) -> HashMap<String, f64> {
        let addr = self.metrics_addr.expect("started with metrics");
        parse_metrics(&http_get(addr, "/metrics").await)
    }

    /// The gRPC health of the whole server (service "").
    pub async fn health(&self) -> i32 {
        health_of(connect(self.addr).await).await
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

/// A request carrying `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The overall serving status reported by gRPC health on `channel`.
pub async fn health_of(channel: Channel) -> i32 {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// `GET path` over plain HTTP/1.1; returns the body (panics unless 200).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .expect("an HTTP answer within 10 s")
        .unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Prometheus text -> `name{labels}` -> value (comments skipped).
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("`name value`");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// A clock whose gate, once closed, parks the dispatcher thread the next time it reads the
/// time: a deterministic way to make the dispatcher stall so queues fill.
#[derive(Debug)]
pub struct GateClock {
    inner: Arc<ManualClock>,
    state: std::sync::Mutex<(bool, bool)>, // (closed, dispatcher parked)
    changed: std::sync::Condvar,
}

impl GateClock {
    pub fn new(inner: Arc<ManualClock>) -> Arc<Self> {
        Arc::new(GateClock {
            inner,
            state: std::sync::Mutex::new((false, false)),
            changed: std::sync::Condvar::new(),
        })
    }

    /// Closes the gate and waits until the dispatcher is parked on it.
    pub async fn close_and_wait_parked(self: &Arc<Self>) {
        self.state.lock().unwrap().0 = true;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = me.state.lock().unwrap();
            while !s.1 {
                s = me.changed.wait(s).unwrap();
            }
        })
        .await
        .unwrap();
    }

    /// Lets the dispatcher run again.
    pub fn open(&self) {
        self.state.lock().unwrap().0 = false;
        self.changed.notify_all();
    }
}

impl Clock for GateClock {
    fn now_ms(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        while s.0 {
            s.1 = true;
            self.changed.notify_all();
            s = self.changed.wait(s).unwrap();
        }
        s.1 = false;
        drop(s);
        self.inner.now_ms()
    }
}

/// A trip as GetTrip returns it.
pub async fn get_trip(s: &TestServer, trip_id: &str) -> pb::Trip {
    s.riders()
        .get_trip(pb::GetTripRequest {
            trip_id: trip_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap()
}

/// A gateway's offer stream.
pub async fn offer_stream(s: &TestServer, gateway: &str) -> tonic::Streaming<pb::DriverNotice> {
    s.drivers()
        .subscribe_offers(pb::SubscribeOffersRequest {
            gateway_id: gateway.into(),
            resume_from: vec![],
        })
        .await
        .unwrap()
        .into_inner()
}

/// A driver's state as GetDriver returns it.
pub async fn driver_state(s: &TestServer, driver: &str) -> pb::DriverState {
    get_driver(s, driver).await.state()
}

/// GetDriver's record of `driver` (which must exist).
pub async fn get_driver(s: &TestServer, driver: &str) -> pb::Driver {
    s.queries()
        .get_driver(pb::GetDriverRequest {
            driver_id: driver.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .driver
        .unwrap()
}

/// Answers an offer; the trip after the answer.
pub async fn answer(s: &TestServer, offer: &str, driver: &str, accept: bool) -> pb::Trip {
    answer_on(&s.channel, offer, driver, accept).await
}

/// [`answer`] through any server's channel (a region server's, say).
pub async fn answer_on(channel: &Channel, offer: &str, driver: &str, accept: bool) -> pb::Trip {
    DriverServiceClient::new(channel.clone())
        .respond_to_offer(pb::RespondToOfferRequest {
            offer_id: offer.into(),
            driver_id: driver.into(),
            accept,
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap()
}

pub async fn accept(s: &TestServer, offer: &str, driver: &str) -> pb::Trip {
    answer(s, offer, driver, true).await
}

pub async fn decline(s: &TestServer, offer: &str, driver: &str) -> pb::Trip {
    answer(s, offer, driver, false).await
}
