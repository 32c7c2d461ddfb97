//! Failover between real `dispatchd` processes over a real 3-node NATS JetStream cluster:
//! an owner killed with SIGKILL, then one paused with SIGSTOP past its lease. Checks:
//! - a standby takes the regions over once the lease lapses, replays the streams, and serves
//!   every acknowledged trip in its acknowledged state;
//! - no driver holds two live trips;
//! - an owner resumed after its lease lapsed writes nothing more: its calls fail, and the
//!   streams hold only what the new owner wrote since;
//! - an owner stopped with SIGTERM hands its leases over (deletes them) on its way out.
//!
//! `CLUSTER_TEST_LOGS=1` shows the processes' logs (stderr) when a run needs explaining.

mod nats;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, rider_service_client::RiderServiceClient,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

const CONFIG: &str = r#"
[cluster]
nats_url = "URLS"
lease_ttl = "2s"

[[regions]]
name = "west"
geojson = '{"type":"Polygon","coordinates":[[[-74.05,40.7],[-73.99,40.7],[-73.99,40.8],[-74.05,40.8],[-74.05,40.7]]]}'

[[regions]]
name = "east"
geojson = '{"type":"Polygon","coordinates":[[[-73.99,40.7],[-73.93,40.7],[-73.93,40.8],[-73.99,40.8],[-73.99,40.7]]]}'
"#;

struct Process {
    child: Child,
    channel: Channel,
}

impl Process {
    async fn spawn(config: &std::path::Path) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "off",
                "--ephemeral",
            ])
            .args(["--offer-timeout-s", "600", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("CLUSTER_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("dispatchd starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("dispatchd announces its address within 30 s")
                .unwrap()
                .expect("dispatchd stdout open");
            if let Some(addr) = line.strip_prefix("dispatchd listening on ") {
                break addr.trim().to_string();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // Lazy: a standby accepts connections but serves only once it holds the leases.
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .timeout(Duration::from_secs(2))
            .connect_lazy();
        Process { child, channel }
    }

    fn pid(&self) -> String {
        self.child.id().expect("running").to_string()
    }

    async fn online(&self, id: &str, lng: f64) -> Result<(), tonic::Status> {
        DriverServiceClient::new(self.channel.clone())
            .go_online(pb::GoOnlineRequest {
                driver_id: id.into(),
                location: ll(40.75, lng),
                rating: 4.8,
                vehicle_class: 0,
                gateway_id: "gw".into(),
            })
            .await
            .map(|_| ())
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

    /// Waits until this process serves both regions (a trip of each answers).
    async fn wait_serving(&self, trips: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut all = true;
            for t in trips {
                all &= self.trip(t).await.is_ok();
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby did not take over within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn signal(pid: &str, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn ll(lat: f64, lng: f64) -> Option<pb::LatLng> {
    Some(pb::LatLng {
        lat_deg: lat,
        lng_deg: lng,
    })
}

async fn stream_messages(js: &jetstream::Context, region: &str) -> u64 {
    let mut stream = js.get_stream(format!("DISPATCH_{region}")).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Every acknowledged trip is served by `p` in its acknowledged state, and no driver holds two.
async fn check_acked(p: &Process, acked: &HashMap<String, pb::Trip>) {
    let mut drivers: HashMap<String, String> = HashMap::new();
    for (id, was) in acked {
        let now = p.trip(id).await.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(now.status(), was.status(), "{id}");
        assert_eq!(now.driver_id, was.driver_id, "{id}");
        if !now.driver_id.is_empty()
            && let Some(other) = drivers.insert(now.driver_id.clone(), id.clone())
        {
            panic!("driver {} holds {other} and {id}", now.driver_id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_kill_and_pause_and_the_old_owner_writes_nothing() {
    let Some(cluster) = nats::NatsCluster::start(3).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, CONFIG.replace("URLS", &cluster.urls())).unwrap();
    let client = async_nats::connect(format!("127.0.0.1:{}", cluster.nodes[2].client_port))
        .await
        .unwrap();
    let js = jetstream::new(client);

    let a = Process::spawn(&config).await;
    let b = Process::spawn(&config).await;
    let mut acked: HashMap<String, pb::Trip> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Whichever serves first is the owner (A started first, but let the leases decide).
    let (owner, standby) = loop {
        if a.online("d-w0", -74.0).await.is_ok() {
            break (a, b);
        }
        if b.online("d-w0", -74.0).await.is_ok() {
            break (b, a);
        }
        assert!(
            Instant::now() < deadline,
            "no process started serving within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for i in 0..4 {
        let lng = if i % 2 == 0 {
            -74.0 - 0.005 * i as f64
        } else {
            -73.98 + 0.005 * i as f64
        };
        owner.online(&format!("d-{i}"), lng).await.unwrap();
        let trip = owner.request(&format!("r-{i}"), lng).await.unwrap();
        acked.insert(trip.trip_id.clone(), trip);
    }
    let ids: Vec<String> = acked.keys().cloned().collect();

    // SIGKILL the owner: the standby takes the lapsed leases, replays, serves.
    let mut owner = owner;
    owner.child.start_kill().unwrap();
    owner.child.wait().await.unwrap();
    standby.wait_serving(&ids).await;
    check_acked(&standby, &acked).await;
    let trip = standby.request("r-after-kill", -73.97).await.unwrap();
    acked.insert(trip.trip_id.clone(), trip);

    // A third process stands by; pause the owner past its lease.
    let third = Process::spawn(&config).await;
    let paused = standby;
    signal(&paused.pid(), "-STOP");
    let ids: Vec<String> = acked.keys().cloned().collect();
    third.wait_serving(&ids).await;
    check_acked(&third, &acked).await;
    let trip = third.request("r-after-pause", -74.02).await.unwrap();
    acked.insert(trip.trip_id.clone(), trip);
    let before = (
        stream_messages(&js, "west").await,
        stream_messages(&js, "east").await,
    );

    // Resumed, the old owner must not write: its lease keeper or the fenced append stops it.
    signal(&paused.pid(), "-CONT");
    let late = paused.request("r-late", -73.96).await;
    assert!(
        late.is_err(),
        "the paused owner acknowledged a write after losing its lease"
    );
    let after = (
        stream_messages(&js, "west").await,
        stream_messages(&js, "east").await,
    );
    assert_eq!(before, after, "the old owner appended after the takeover");
    check_acked(&third, &acked).await;
    drop(paused);

    // SIGTERM: the owner drains and hands its leases over (deletes them) instead of letting
    // them lapse.
    let mut third = third;
    signal(&third.pid(), "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), third.child.wait())
        .await
        .expect("dispatchd exits within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let leases = js.get_key_value("dispatch_leases").await.unwrap();
    for region in ["west", "east"] {
        assert_eq!(
            leases.get(region).await.unwrap(),
            None,
            "{region} still leased"
        );
    }
}
