//! A gateway's SubscribeOffers stream in cluster mode, across a failover, between real
//! `dispatchd` processes over a real 3-node NATS JetStream cluster. The stream is opened at a
//! process that does not own the driver's region; the owner is killed with SIGKILL. The stream
//! must not end: once the region is served again (here, by the process the gateway is on) the
//! next offer arrives on it, and the offer that was pending across the failover arrives once,
//! not again from the new owner's pending offers. A stream opened in the middle of the failover,
//! while the routes still name the dead owner, gets both offers once the region is served.

mod nats;
mod support;

use std::time::{Duration, Instant};

use dispatch::cluster::testkit;
use dispatch::pb::{
    self, driver_notice::Notice, driver_service_client::DriverServiceClient,
    rider_service_client::RiderServiceClient,
};
use support::ll;
use support::process::Dispatchd;
use support::regions::all_served;

const GATEWAY: &str = "gw-offers";

/// Two members on a fresh 2-region cluster, both regions settled; returns the config's
/// directory (kept alive), the member that owns region `k` last, and a longitude inside `k`.
async fn pair(
    nats: &nats::NatsCluster,
    offer_timeout_s: &str,
) -> (tempfile::TempDir, [Dispatchd; 2], f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        testkit::column_regions_toml(&nats.urls(), Duration::from_secs(2), 2),
    )
    .unwrap();
    let args = ["--offer-timeout-s", offer_timeout_s];
    let a = Dispatchd::cluster_member(&config, &args).await;
    let b = Dispatchd::cluster_member(&config, &args).await;
    let routes = wait_owned(&a, &[&a, &b], 2).await;
    wait_owned(&b, &[&a, &b], 2).await;
    let k = routes.iter().position(|r| *r == b.addr).unwrap();
    (dir, [a, b], testkit::column_west(k) + 0.015)
}

/// Waits until, seen from `p`, every one of `regions` regions is owned by one of `owners`,
/// each of them at least one, and every region answers there.
async fn wait_owned(p: &Dispatchd, owners: &[&Dispatchd], regions: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let names: Vec<String> = (0..regions).map(|i| format!("r{i}")).collect();
    loop {
        let routes = testkit::owner_addresses(&p.channel).await;
        let settled = routes.len() == regions
            && routes.iter().all(|r| owners.iter().any(|o| o.addr == *r))
            && owners.iter().all(|o| routes.contains(&o.addr));
        if settled && all_served(&p.channel, &names).await {
            return routes;
        }
        assert!(
            Instant::now() < deadline,
            "the regions did not settle on {:?} within 90 s: {routes:?}",
            owners.iter().map(|o| &o.addr).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `call` until it answers anything but UNAVAILABLE (a region moving), for up to 60 s.
async fn retrying<T, F, Fut>(mut call: F) -> T
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
            answer => return answer.unwrap(),
        }
    }
}

async fn online(p: &Dispatchd, id: &str, lng: f64) {
    retrying(|| async {
        DriverServiceClient::new(p.channel.clone())
            .go_online(pb::GoOnlineRequest {
                driver_id: id.into(),
                location: ll(40.75, lng),
                rating: 4.8,
                vehicle_class: 0,
                gateway_id: GATEWAY.into(),
            })
            .await
    })
    .await;
}

async fn request(p: &Dispatchd, rider: &str, lng: f64) -> pb::Trip {
    retrying(|| async {
        RiderServiceClient::new(p.channel.clone())
            .request_trip(pb::RequestTripRequest {
                rider_id: rider.into(),
                request_id: format!("req-{rider}"),
                pickup: ll(40.751, lng),
                dropoff: ll(40.76, -73.98),
                vehicle_class: 0,
            })
            .await
    })
    .await
    .into_inner()
    .trip
    .unwrap()
}

async fn subscribe(p: &Dispatchd) -> tonic::Streaming<pb::DriverNotice> {
    DriverServiceClient::new(p.channel.clone())
        .subscribe_offers(pb::SubscribeOffersRequest {
            gateway_id: GATEWAY.into(),
            resume_from: vec![],
        })
        .await
        .expect("SubscribeOffers is accepted, even while a region has no owner")
        .into_inner()
}

/// Reads `stream` until an offer of `trip` arrives (60 s at most); returns the offer ids of
/// every offer read on the way, that one last.
async fn offers_until(stream: &mut tonic::Streaming<pb::DriverNotice>, trip: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no offer of {trip} within 60 s; offers seen: {seen:?}"));
        match next {
            Ok(Some(pb::DriverNotice {
                notice: Some(Notice::Offer(offer)),
                ..
            })) => {
                seen.push(offer.offer_id.clone());
                if offer.trip_id == trip {
                    return seen;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the offer stream ended before an offer of {trip}: {seen:?}"),
            Err(e) => panic!("the offer stream failed before an offer of {trip}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_offer_stream_outlives_its_regions_owner_and_repeats_no_offer() {
    let Some(nats) = nats::start(3).await else {
        return;
    };
    let (_dir, [a, mut b], lng) = pair(&nats, "600").await;

    // The gateway is on `a`; its driver is in b's region: the offer comes forwarded from b.
    let mut stream = subscribe(&a).await;
    online(&a, "d-1", lng).await;
    let first = request(&a, "r-1", lng).await;
    assert_eq!(first.driver_id, "d-1", "{first:?}");
    let before = offers_until(&mut stream, &first.trip_id).await;
    assert_eq!(before.len(), 1, "{before:?}");

    // The owner dies. A stream opened now finds the routes still naming it.
    b.child.start_kill().unwrap();
    b.child.wait().await.unwrap();
    let mut late = subscribe(&a).await;
    wait_owned(&a, &[&a], 2).await;

    // The region is served by `a` now; the first offer is still pending (600 s timeout).
    online(&a, "d-2", lng).await;
    let second = request(&a, "r-2", lng).await;
    assert_eq!(second.driver_id, "d-2", "{second:?}");
    let after = offers_until(&mut stream, &second.trip_id).await;
    assert_eq!(
        after.len(),
        1,
        "the stream that outlived the owner repeated an offer it had delivered: {after:?} after {before:?}"
    );
    // The pending offer comes first on a new owner's stream, then the new one; each once.
    let on_late = offers_until(&mut late, &second.trip_id).await;
    assert_eq!(
        on_late,
        vec![before[0].clone(), after[0].clone()],
        "the stream opened during the failover"
    );
}

/// A gateway whose stream broke resumes on another process after the owner died, from the
/// resume point of the last notice it got: the expiry the owner wrote after the break, which
/// only the region's stream still holds (the new owner's memory starts after its replay),
/// arrives first. Without the resume point it would get the pending offers only: none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_resuming_after_its_owner_died_gets_the_expiry_it_missed() {
    let Some(nats) = nats::start(3).await else {
        return;
    };
    let (_dir, [a, mut b], lng) = pair(&nats, "2").await;
    let mut stream = subscribe(&a).await;
    online(&a, "d-1", lng).await;
    let trip = request(&a, "r-1", lng).await;
    assert_eq!(trip.driver_id, "d-1", "{trip:?}");
    let offer = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("the offer within 60 s")
        .unwrap()
        .unwrap();
    let resume_at = offer.resume_offset;
    assert!(resume_at > 0, "{offer:?}");
    drop(stream);

    // The owner expires the offer (2 s) while the gateway is away, then dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = retrying(|| async {
            RiderServiceClient::new(a.channel.clone())
                .get_trip(pb::GetTripRequest {
                    trip_id: trip.trip_id.clone(),
                })
                .await
        })
        .await
        .into_inner()
        .trip
        .unwrap();
        if now.status() != pb::TripStatus::Offered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the offer never expired: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.child.start_kill().unwrap();
    b.child.wait().await.unwrap();
    wait_owned(&a, &[&a], 2).await;

    let mut resumed = DriverServiceClient::new(a.channel.clone())
        .subscribe_offers(pb::SubscribeOffersRequest {
            gateway_id: GATEWAY.into(),
            resume_from: vec![resume_at],
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(60), resumed.message())
        .await
        .expect("a notice within 60 s")
        .unwrap()
        .unwrap();
    match &first.notice {
        Some(Notice::OfferExpired(c)) => assert_eq!(c.trip_id, trip.trip_id, "{first:?}"),
        other => panic!("expected the expiry written before the owner died, got {other:?}"),
    }
    assert!(first.resume_offset > resume_at, "{first:?}");
}
