//! Cluster mode's log over a real 3-node NATS JetStream cluster: each region's events are
//! committed to its own R3 stream before the call is acknowledged, a restarted server rebuilds
//! every region from its stream, and an owner whose append is refused (someone else wrote to
//! the region's subject) stops serving that region at once while the other regions go on. A
//! region's takeover starts from its newest snapshot in JetStream, so its stream is trimmed
//! behind the snapshots and a new owner still rebuilds everything. With every NATS node lost,
//! writes are UNAVAILABLE and nothing acknowledged is lost once the nodes return.

mod nats;
mod support;

use dispatch::config::Config;
use std::time::{Duration, Instant};

use dispatch::cluster::regions::REGION_ID_SPAN;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, event_service_client::EventServiceClient,
    query_service_client::QueryServiceClient, rider_service_client::RiderServiceClient,
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

    async fn driver(&self, id: &str) -> Result<pb::Driver, tonic::Status> {
        let r = QueryServiceClient::new(self.channel.clone())
            .get_driver(pb::GetDriverRequest {
                driver_id: id.into(),
            })
            .await?;
        Ok(r.into_inner().driver.unwrap())
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

/// Region east's events from `from` on, over `s`'s EventService (a follower's error arrives
/// as the stream's first message, not as the call's answer).
async fn subscribe(s: &Server, from: u64) -> tonic::Streaming<pb::DispatchEvent> {
    EventServiceClient::new(s.channel.clone())
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(from),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next `n` events of `stream`, each within 30 s.
async fn take(
    stream: &mut tonic::Streaming<pb::DispatchEvent>,
    n: usize,
) -> Vec<pb::DispatchEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event after {} of {n}", out.len()))
            .unwrap_or_else(|e| panic!("the stream failed after {} events: {e}", out.len()))
            .unwrap_or_else(|| panic!("the stream ended after {} events", out.len()));
        out.push(next);
    }
    out
}

fn taken_over(e: &pb::DispatchEvent) -> &pb::RegionTakenOverDetail {
    match &e.detail {
        Some(pb::dispatch_event::Detail::RegionTakenOver(d)) => d,
        other => panic!("event {} is {:?}: {other:?}", e.offset, e.kind()),
    }
}

/// A subscriber that had followed the old owner reconnects to the new one from an offset the
/// old owner wrote: the new owner's ring starts after its replay, so those events come from the
/// region's stream, with the two takeover events marking where each owner began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_on_the_new_owner_from_the_old_owners_events() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    let config = config(cluster.urls());
    let first = 2 * REGION_ID_SPAN;

    let old = start(config.clone()).await;
    for i in 0..3 {
        old.online(&format!("d-east-{i}"), -73.99 + 0.001 * i as f64)
            .await
            .unwrap();
    }
    let trip = old.request("r-e", -73.97).await.unwrap();
    // Enough history that catching up takes several reads of the stream (512 events each).
    for i in 0..700 {
        let id = format!("d-more-{i}");
        old.online(&id, -73.98).await.unwrap();
        DriverServiceClient::new(old.channel.clone())
            .go_offline(pb::GoOfflineRequest { driver_id: id })
            .await
            .unwrap();
    }
    let written = QueryServiceClient::new(old.channel.clone())
        .get_stats(region_call("east"))
        .await
        .unwrap()
        .into_inner()
        .next_event_offset;
    old.stop().await;

    let new = start(config).await;
    let mut events = subscribe(&new, first).await;
    // Every event the old owner wrote, then the new owner's takeover, with no gap.
    let before = (written - first) as usize;
    let got = take(&mut events, before + 1).await;
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.offset, first + i as u64, "{e:?}");
    }
    let (a, b) = (&got[0], &got[before]);
    assert_eq!(a.kind(), pb::EventKind::RegionTakenOver);
    assert_eq!(b.kind(), pb::EventKind::RegionTakenOver);
    let (a, b_detail) = (taken_over(a), taken_over(b));
    assert_eq!(
        a.previous_owner, "",
        "a new stream has no previous owner: {a:?}"
    );
    assert_eq!((a.replayed_events, a.from_snapshot), (0, None), "{a:?}");
    assert_ne!(b_detail.owner, a.owner);
    assert_eq!(b_detail.previous_owner, a.owner, "{b_detail:?}");
    assert_eq!(
        b_detail.from_snapshot.unwrap_or(first) + b_detail.replayed_events,
        b.offset,
        "the takeover replayed every event before it: {b_detail:?}"
    );
    let kinds: Vec<_> = got.iter().map(|e| e.kind()).collect();
    let between = &kinds[1..before];
    assert_eq!(
        between
            .iter()
            .filter(|k| **k == pb::EventKind::RegionTakenOver)
            .count(),
        0,
        "{kinds:?}"
    );
    assert!(
        got.iter()
            .any(|e| e.kind() == pb::EventKind::TripRequested && e.trip_id == trip.trip_id),
        "{kinds:?}"
    );
    // And it goes on live with the new owner's events.
    new.online("d-east-9", -73.98).await.unwrap();
    let live = take(&mut events, 1).await;
    assert_eq!(live[0].offset, b.offset + 1);
    assert_eq!(live[0].driver_id, "d-east-9");
    new.stop().await;
}

/// A unary call for region `name` (the `dispatch-region` metadata).
fn region_call(name: &str) -> tonic::Request<pb::GetStatsRequest> {
    let mut call = tonic::Request::new(pb::GetStatsRequest {});
    call.metadata_mut()
        .insert("dispatch-region", name.parse().unwrap());
    call
}

/// The first sequence still in region `region`'s stream (messages before it were trimmed).
async fn first_sequence(js: &async_nats::jetstream::Context, region: &str) -> u64 {
    let mut stream = js.get_stream(format!("DISPATCH_{region}")).await.unwrap();
    stream.info().await.unwrap().state.first_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_restores_the_newest_snapshot_so_the_stream_is_trimmed_behind_it() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    let js = nats::jetstream(&cluster, 0).await;
    let mut config = config(cluster.urls());
    // A snapshot every few events: the stream is trimmed behind the oldest kept one.
    config.log.snapshot_every_events = 4;
    config.log.snapshot_interval = Duration::ZERO;

    let s = start(config.clone()).await;
    let drivers: Vec<String> = (0..12).map(|i| format!("d-east-{i}")).collect();
    for (i, d) in drivers.iter().enumerate() {
        s.online(d, -73.99 + 0.001 * i as f64).await.unwrap();
    }
    let trip = s.request("r-e", -73.97).await.unwrap();
    let waited = Instant::now();
    while first_sequence(&js, "east").await <= 1 {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the east stream was never trimmed behind a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
    let trimmed = first_sequence(&js, "east").await;
    // An unreadable newest snapshot (a torn upload, say) is skipped for the one before it.
    let snaps = js.get_object_store("DISPATCH_SNAPSHOTS").await.unwrap();
    let junk = format!("east.{:020}.{:020}", u64::MAX / 2, trimmed);
    snaps
        .put(junk.as_str(), &mut &b"not a snapshot"[..])
        .await
        .unwrap();

    // The first drivers' GoOnline messages are gone from the stream: only the snapshot has
    // them, so a server that replayed the stream alone could not serve the region at all.
    let s = start(config).await;
    for d in &drivers {
        let again = s.driver(d).await.unwrap_or_else(|e| panic!("{d}: {e}"));
        assert_ne!(again.state(), pb::DriverState::Offline, "{d}: {again:?}");
    }
    let again = s.trip(&trip.trip_id).await.unwrap();
    assert_eq!(again.status(), pb::TripStatus::Offered, "{again:?}");
    assert_eq!(again.driver_id, trip.driver_id);
    // The junk object is gone (restored past it), so it cannot hold a kept slot for ever.
    let mut names = Vec::new();
    let mut listing = snaps.list().await.unwrap();
    while let Some(info) = futures_util::StreamExt::next(&mut listing).await {
        let info = info.unwrap();
        if !info.deleted {
            names.push(info.name);
        }
    }
    assert!(!names.contains(&junk), "{junk} still in {names:?}");
    // The events behind the snapshot are gone from the stream: a subscriber asking for them is
    // told so (and where the stream begins), not handed a gap.
    let err = subscribe(&s, 2 * REGION_ID_SPAN)
        .await
        .message()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("no longer retained"), "{err:?}");
    let later = s.request("r-e2", -73.96).await.unwrap();
    assert!(
        later.trip_id > trip.trip_id,
        "{} after {}",
        later.trip_id,
        trip.trip_id
    );
    s.stop().await;
}

/// Every NATS node lost at once: a call that writes gets UNAVAILABLE (retryable) once its
/// append fails, never an acknowledgement JetStream did not give; once the nodes are back the
/// regions are taken and served again, with every acknowledged trip in its acknowledged state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_nats_node_lost_writes_are_unavailable_and_nothing_acknowledged_is_lost() {
    let Some(mut cluster) = nats::start(3).await else {
        return;
    };
    let mut config = config(cluster.urls());
    // The outage and the restart take longer than the 15 s offer window on a loaded machine:
    // the offer must not expire meanwhile, or its acknowledged state moves on by itself.
    config.dispatch.offer_timeout = Duration::from_secs(600);
    let s = start(config).await;
    s.online("d-east", -73.98).await.unwrap();
    let trip = s.request("r-e", -73.97).await.unwrap();
    assert_eq!(trip.status(), pb::TripStatus::Offered, "{trip:?}");

    for i in 0..3 {
        cluster.kill(i);
    }
    let refused = tokio::time::timeout(Duration::from_secs(120), s.online("d-east-2", -73.98))
        .await
        .expect("a write with every NATS node gone must fail, not hang")
        .expect_err("no write can be acknowledged with every NATS node gone");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    cluster.restart_all().await.unwrap();
    // Taken again once the leases can be written: the acknowledged trip is there as it was.
    let deadline = Instant::now() + Duration::from_secs(120);
    let again = loop {
        match s.trip(&trip.trip_id).await {
            Ok(t) => break t,
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the region did not come back: {e:?}"),
        }
    };
    assert_eq!(again.status(), pb::TripStatus::Offered, "{again:?}");
    assert_eq!(again.driver_id, "d-east");
    // And it takes writes again.
    s.online("d-east-3", -73.98).await.unwrap();
    s.stop().await;
}
