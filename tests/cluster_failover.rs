//! Failover between real `dispatchd` processes over a real 3-node NATS JetStream cluster.
//! - Two processes split the regions (each serves its fair share at once), a call to the
//!   process that does not own the region is forwarded and answered, GetRoutes names the
//!   owners; killed with SIGKILL, a process's regions are taken by the other, replayed, served.
//! - An owner paused with SIGSTOP past its lease loses its regions; resumed, it appends nothing
//!   more (every message after a takeover message is the new owner's, read from the streams).
//! - Every acknowledged trip is served in its acknowledged state; no driver holds two trips.
//! - An owner stopped with SIGTERM hands its leases over (deletes them) on its way out.
//!
//! `CLUSTER_TEST_LOGS=1` shows the processes' logs (stderr) when a run needs explaining.

mod nats;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use dispatch::cluster::{audit, testkit};
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, query_service_client::QueryServiceClient,
    rider_service_client::RiderServiceClient,
};
use support::ll;
use support::process::{Dispatchd, signal};
use support::regions::all_served;

/// `[cluster]` with a 2 s lease, and `regions` regions side by side.
fn config(urls: &str, regions: usize) -> String {
    testkit::column_regions_toml(urls, Duration::from_secs(2), regions)
}

/// A longitude inside region `i`.
fn lng_in(i: usize) -> f64 {
    testkit::column_west(i) + 0.015
}

/// A `dispatchd` of the cluster (the shared process harness, with this test's flags).
struct Process(Dispatchd);

impl std::ops::Deref for Process {
    type Target = Dispatchd;
    fn deref(&self) -> &Dispatchd {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Dispatchd {
        &mut self.0
    }
}

impl Process {
    async fn spawn(config: &std::path::Path) -> Process {
        Process(Dispatchd::cluster_member(config, &["--offer-timeout-s", "600"]).await)
    }

    /// Each region's owner address as this process sees it ("" for none).
    async fn routes(&self) -> Vec<String> {
        testkit::owner_addresses(&self.channel).await
    }

    /// Waits until, seen from this process, every region has an owner among `owners`, each of
    /// them owns its fair share (`floor` or `ceil` of regions / owners), and every region
    /// answers a call made here (served or forwarded).
    async fn wait_owned_by(&self, owners: &[&Process], regions: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let routes = self.routes().await;
            let addrs: Vec<&str> = owners.iter().map(|p| p.addr.as_str()).collect();
            let settled = routes.len() == regions
                && routes.iter().all(|r| addrs.contains(&r.as_str()))
                && addrs.iter().all(|a| {
                    let owned = routes.iter().filter(|r| r == a).count();
                    owned == regions / addrs.len() || owned == regions.div_ceil(addrs.len())
                });
            if settled && all_served(&self.channel, &names(regions)).await {
                return routes;
            }
            assert!(
                Instant::now() < deadline,
                "the regions did not settle on {addrs:?} within 90 s: {routes:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn routes_version(&self) -> u64 {
        QueryServiceClient::new(self.channel.clone())
            .get_routes(pb::GetRoutesRequest {})
            .await
            .unwrap()
            .into_inner()
            .version
    }

    async fn online(&self, id: &str, lng: f64) -> Result<(), tonic::Status> {
        retrying(|| async {
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
        })
        .await
    }

    /// RequestTrip, retried while UNAVAILABLE (a region moving: the same request id yields
    /// the same trip).
    async fn request(&self, rider: &str, lng: f64) -> Result<pb::Trip, tonic::Status> {
        retrying(|| self.request_once(rider, lng)).await
    }

    async fn request_once(&self, rider: &str, lng: f64) -> Result<pb::Trip, tonic::Status> {
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
        retrying(|| async {
            let r = RiderServiceClient::new(self.channel.clone())
                .get_trip(pb::GetTripRequest {
                    trip_id: trip_id.into(),
                })
                .await?;
            Ok(r.into_inner().trip.unwrap())
        })
        .await
    }
}

/// `call` until it answers anything but UNAVAILABLE (what a client sees while a region moves,
/// e.g. a lease lapsing on a starved machine), for up to 60 s.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer => return answer,
        }
    }
}

/// The region names `r0`..: as the config names them.
fn names(regions: usize) -> Vec<String> {
    (0..regions).map(|i| format!("r{i}")).collect()
}

/// Checks region `region`'s stream from its first message: after each takeover message, every
/// message is the new owner's (no write by an old owner after a takeover); returns how many
/// takeovers it holds.
async fn check_stream_owners(js: &jetstream::Context, region: &str) -> usize {
    let history = audit::read_region(js, region).await.unwrap();
    assert!(history.stale.is_empty(), "{:?}", history.stale);
    history.takeovers
}

/// The whole history check of the streams (the one `loadgen --mode failover` reports): every
/// acknowledged trip is in them, nobody is assigned twice, no stale owner wrote, and each
/// region's replays agree.
async fn check_history(urls: &str, regions: usize, acked: &HashMap<String, pb::Trip>) {
    let histories = audit::read_regions(urls, &names(regions)).await.unwrap();
    let acked: Vec<audit::AckedTrip> = acked
        .values()
        .map(|t| audit::AckedTrip {
            trip_id: t.trip_id.clone(),
            assigned_driver: None,
        })
        .collect();
    let found = audit::check(&dispatch::config::Config::default(), &histories, &acked);
    assert!(found.lost_trips.is_empty(), "{:?}", found.lost_trips);
    assert!(
        found.double_assignments.is_empty(),
        "{:?}",
        found.double_assignments
    );
    assert!(
        found.stale_owner_events.is_empty(),
        "{:?}",
        found.stale_owner_events
    );
    assert!(found.replay_state_hashes_equal, "{:?}", found.replay_errors);
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

/// Starts NATS, writes the config for `regions` regions and connects a JetStream client.
async fn setup(
    regions: usize,
) -> Option<(nats::NatsCluster, tempfile::TempDir, jetstream::Context)> {
    let cluster = nats::start(3).await?;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, config(&cluster.urls(), regions)).unwrap();
    let js = nats::jetstream(&cluster, 2).await;
    Some((cluster, dir, js))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_split_four_regions_forward_calls_and_survive_a_kill() {
    let Some((nats, dir, js)) = setup(4).await else {
        return;
    };
    let config = dir.path().join("cluster.toml");
    let a = Process::spawn(&config).await;
    let b = Process::spawn(&config).await;
    // Each takes its fair share: two regions each, whichever started first.
    let routes = a.wait_owned_by(&[&a, &b], 4).await;
    for p in [&a, &b] {
        let owned = routes.iter().filter(|r| **r == p.addr).count();
        assert_eq!(owned, 2, "{} owns {owned} of {routes:?}", p.addr);
    }
    b.wait_owned_by(&[&a, &b], 4).await;

    // Everything through `a`: the calls for b's regions are forwarded to b and answered.
    let mut acked: HashMap<String, pb::Trip> = HashMap::new();
    for i in 0..4 {
        a.online(&format!("d-{i}"), lng_in(i)).await.unwrap();
        let trip = a.request(&format!("r-{i}"), lng_in(i)).await.unwrap();
        acked.insert(trip.trip_id.clone(), trip);
    }
    // The same trips read through `b` (forwarded the other way for a's regions).
    check_acked(&b, &acked).await;
    check_acked(&a, &acked).await;
    // A location batch for drivers of every region, sent to `a`: split, partly forwarded.
    let batch = pb::LocationBatch {
        updates: (0..4)
            .map(|i| pb::LocationUpdate {
                driver_id: format!("d-{i}"),
                location: ll(40.752, lng_in(i)),
                recorded_at_ms: 0,
            })
            .collect(),
    };
    let summary = retrying(|| async {
        DriverServiceClient::new(a.channel.clone())
            .report_locations(tokio_stream::iter([batch.clone()]))
            .await
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!((summary.accepted, summary.rejected), (4, 0), "{summary:?}");

    // SIGKILL the owner of r0: the other takes its regions once the leases lapse.
    let (mut victim, survivor) = if routes[0] == a.addr { (a, b) } else { (b, a) };
    let version = survivor.routes_version().await;
    victim.child.start_kill().unwrap();
    victim.child.wait().await.unwrap();
    survivor.wait_owned_by(&[&survivor], 4).await;
    assert!(
        survivor.routes_version().await > version,
        "GetRoutes' version did not move with the owners"
    );
    check_acked(&survivor, &acked).await;
    for i in 0..4 {
        let trip = survivor
            .request(&format!("r-after-{i}"), lng_in(i))
            .await
            .unwrap();
        acked.insert(trip.trip_id.clone(), trip);
    }
    check_acked(&survivor, &acked).await;
    let mut takeovers = 0;
    for i in 0..4 {
        takeovers += check_stream_owners(&js, &format!("r{i}")).await;
    }
    // Four first takeovers, then at least the victim's two regions again.
    assert!(takeovers >= 6, "{takeovers} takeovers");
    check_history(&nats.urls(), 4, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_its_lease_writes_nothing_more_and_sigterm_hands_over() {
    let Some((nats, dir, js)) = setup(2).await else {
        return;
    };
    let config = dir.path().join("cluster.toml");
    let a = Process::spawn(&config).await;
    let b = Process::spawn(&config).await;
    a.wait_owned_by(&[&a, &b], 2).await;
    let mut acked: HashMap<String, pb::Trip> = HashMap::new();
    for i in 0..2 {
        a.online(&format!("d-{i}"), lng_in(i)).await.unwrap();
        let trip = a.request(&format!("r-{i}"), lng_in(i)).await.unwrap();
        acked.insert(trip.trip_id.clone(), trip);
    }
    // A third process joins and gets its share once the split is redone.
    let mut a = a;
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    b.wait_owned_by(&[&b], 2).await;
    let third = Process::spawn(&config).await;
    third.wait_owned_by(&[&b, &third], 2).await;
    check_acked(&third, &acked).await;

    // Pause b past its lease: the third takes everything.
    let paused = b;
    signal(&paused.pid(), "-STOP");
    third.wait_owned_by(&[&third], 2).await;
    check_acked(&third, &acked).await;
    let trip = third.request("r-after-pause", lng_in(0)).await.unwrap();
    acked.insert(trip.trip_id.clone(), trip);

    // Resumed, the old owner must not write: its late call is refused (fenced, or its lease
    // keeper stopped the region) or forwarded to the new owner, never written by it.
    signal(&paused.pid(), "-CONT");
    for i in 0..2 {
        if let Ok(trip) = paused.request_once(&format!("r-late-{i}"), lng_in(i)).await {
            acked.insert(trip.trip_id.clone(), trip);
        }
    }
    check_acked(&third, &acked).await;
    for i in 0..2 {
        check_stream_owners(&js, &format!("r{i}")).await;
    }
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
    for region in ["r0", "r1"] {
        assert_eq!(
            leases.get(region).await.unwrap(),
            None,
            "{region} still leased"
        );
    }
    for i in 0..2 {
        check_stream_owners(&js, &format!("r{i}")).await;
    }
    check_history(&nats.urls(), 2, &acked).await;
}
