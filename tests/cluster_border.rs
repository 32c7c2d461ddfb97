//! A border crossing between regions owned by different `dispatchd` processes (cluster mode
//! over a real 3-node NATS JetStream cluster): an available driver whose reports cross from
//! r0 (owned by one process) into r1 (owned by the other) moves there, the leave logged by
//! r0's owner and the join by r1's (RegionService.JoinRegion); a JoinRegion for a driver its
//! old region still holds online is refused. A pickup near the border draws the driver across
//! it from the other owner (with authentication on, on the members' peer token), and a report
//! sent through a third process that still remembers the old region reaches the new one.
//! Waits on observable state only.
//!
//! `CLUSTER_TEST_LOGS=1` shows the processes' logs (stderr).

mod nats;
mod support;

use std::time::{Duration, Instant};

use dispatch::cluster::testkit;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, query_service_client::QueryServiceClient,
    region_service_client::RegionServiceClient, rider_service_client::RiderServiceClient,
};
use support::ll;
use support::process::Dispatchd;
use support::regions::{all_served, stats_of};

async fn spawn(config: &std::path::Path) -> Dispatchd {
    Dispatchd::cluster_member(config, &[]).await
}

/// Polls `check` (up to 90 s) until it holds; `what` says what was awaited.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 90 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn driver_via(p: &Dispatchd, id: &str) -> Option<pb::Driver> {
    QueryServiceClient::new(p.channel.clone())
        .get_driver(pb::GetDriverRequest {
            driver_id: id.into(),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().driver)
}

/// (available, offered, on trip) of `region`, asked through `p`.
async fn online_in(p: &Dispatchd, region: &str) -> Option<(u64, u64, u64)> {
    let s = stats_of(&p.channel, region).await.ok()?;
    Some((s.drivers_available, s.drivers_offered, s.drivers_on_trip))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_driver_crossing_into_the_other_owners_region_moves_there() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    let text = testkit::column_regions_toml(&cluster.urls(), Duration::from_secs(2), 2).replacen(
        "[cluster]\n",
        "[cluster]\nborder_margin_m = 300.0\nborder_pull = 0\n",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let a = spawn(&path).await;
    let b = spawn(&path).await;
    // Each process owns one of the two regions, and both regions answer through each.
    let regions = ["r0", "r1"];
    wait_until("r0 and r1 owned by different processes", || async {
        let routes = testkit::owner_addresses(&a.channel).await;
        routes.len() == 2
            && routes[0] != routes[1]
            && routes.iter().all(|r| *r == a.addr || *r == b.addr)
            && all_served(&a.channel, &regions).await
            && all_served(&b.channel, &regions).await
            && testkit::owner_addresses(&b.channel).await == routes
    })
    .await;
    let routes = testkit::owner_addresses(&a.channel).await;
    let (owner0, owner1) = if routes[0] == a.addr {
        (&a, &b)
    } else {
        (&b, &a)
    };

    let inside_r0 = testkit::column_west(0) + 0.015;
    // 0.01 deg (843 m) into r1: more than the 300 m margin outside r0.
    let into_r1 = testkit::column_west(1) + 0.01;
    DriverServiceClient::new(owner0.channel.clone())
        .go_online(pb::GoOnlineRequest {
            driver_id: "d1".into(),
            location: ll(40.75, inside_r0),
            rating: 4.6,
            vehicle_class: 0,
            gateway_id: "gw".into(),
        })
        .await
        .unwrap();
    let before = driver_via(owner0, "d1").await.unwrap();

    // A JoinRegion while r0 still holds d1 online is refused (nobody joins a driver twice).
    let early = RegionServiceClient::new(owner1.channel.clone())
        .join_region(pb::JoinRegionRequest {
            driver_id: "d1".into(),
            from_region: "r0".into(),
            to_region: "r1".into(),
            location: ll(40.75, into_r1),
            free_since_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(early.code(), tonic::Code::FailedPrecondition, "{early:?}");
    assert_eq!(online_in(owner1, "r1").await, Some((0, 0, 0)));

    // The report goes to r0's owner, which moves d1: leave in r0, join at r1's owner.
    DriverServiceClient::new(owner0.channel.clone())
        .update_location(pb::LocationUpdate {
            driver_id: "d1".into(),
            location: ll(40.75, into_r1),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_until("d1 available in r1", || async {
        online_in(owner1, "r1").await == Some((1, 0, 0))
            && online_in(owner0, "r0").await == Some((0, 0, 0))
    })
    .await;
    // Both processes find it in r1, with the profile it had in r0.
    for p in [owner0, owner1] {
        let d = driver_via(p, "d1").await.unwrap();
        assert_eq!(d.state(), pb::DriverState::Available);
        assert_eq!(d.location.unwrap().lng_deg, into_r1);
        assert_eq!(d.rating, before.rating);
        assert_eq!(d.acceptance_rate, before.acceptance_rate);
        assert_eq!(d.gateway_id, "gw");
    }
}

const PEER: &str = "peer-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";

/// `message` with `authorization: Bearer token`.
fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// GetStats of `region` through `p` with the admin token.
async fn stats_authed(p: &Dispatchd, region: &str) -> Option<pb::GetStatsResponse> {
    let mut request = authed(pb::GetStatsRequest {}, ADMIN);
    request
        .metadata_mut()
        .insert("dispatch-region", region.parse().unwrap());
    let answer = QueryServiceClient::new(p.channel.clone())
        .get_stats(request)
        .await;
    answer.ok().map(|r| r.into_inner())
}

/// Two members with authentication on: tokens per role, and `peer_token` for their calls on
/// their own behalf (empty: none set). Returns the owners of r0 and r1, once settled.
async fn authed_pair(
    cluster: &nats::NatsCluster,
    dir: &std::path::Path,
    peer_token: &str,
) -> (Dispatchd, Dispatchd) {
    let path = dir.join("cluster.toml");
    let mut text = testkit::column_regions_toml(&cluster.urls(), Duration::from_secs(2), 2)
        .replacen(
            "[cluster]\n",
            &format!("[cluster]\nborder_margin_m = 5000.0\npeer_token = \"{peer_token}\"\n"),
            1,
        );
    for (name, token, role) in [
        ("gw", "gw-secret-0123456789", "driver-gateway"),
        ("rider", "rider-secret-0123456789", "rider-gateway"),
        ("ops", ADMIN, "admin"),
        ("members", PEER, "cluster-peer"),
    ] {
        text.push_str(&format!(
            "\n[[auth.tokens]]\nname = \"{name}\"\ntoken = \"{token}\"\nroles = [\"{role}\"]\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    let a = spawn(&path).await;
    let b = spawn(&path).await;
    wait_until(
        "r0 and r1 owned by different processes, both answering",
        || async {
            let routes = testkit::owner_addresses(&a.channel).await;
            let mut served = true;
            for p in [&a, &b] {
                for r in ["r0", "r1"] {
                    served &= stats_authed(p, r).await.is_some();
                }
            }
            routes.len() == 2
                && routes[0] != routes[1]
                && routes.iter().all(|r| *r == a.addr || *r == b.addr)
                && served
        },
    )
    .await;
    if testkit::owner_addresses(&a.channel).await[0] == a.addr {
        (a, b)
    } else {
        (b, a)
    }
}

/// r0 and r1 meet here.
fn border() -> f64 {
    testkit::column_west(1)
}

/// `d-near` goes online in r0 just west of the border (170 m), through `p`.
async fn online_near_border(p: &Dispatchd) {
    DriverServiceClient::new(p.channel.clone())
        .go_online(authed(
            pb::GoOnlineRequest {
                driver_id: "d-near".into(),
                location: ll(40.75, border() - 0.002),
                rating: 4.7,
                vehicle_class: 0,
                gateway_id: "gw".into(),
            },
            "gw-secret-0123456789",
        ))
        .await
        .unwrap();
}

/// A trip with its pickup in r1 just east of the border (85 m), with a rider token, via `p`.
async fn request_near_border(p: &Dispatchd) -> pb::Trip {
    RiderServiceClient::new(p.channel.clone())
        .request_trip(authed(
            pb::RequestTripRequest {
                rider_id: "r-1".into(),
                request_id: "req-1".into(),
                pickup: ll(40.75, border() + 0.001),
                dropoff: ll(40.76, border() + 0.01),
                vehicle_class: 0,
            },
            "rider-secret-0123456789",
        ))
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap()
}

/// A pickup just inside r1 whose only driver in range is just across the border in r0, owned
/// by the other process: r1's owner asks r0's (RegionService.PullDrivers, with the members'
/// peer token while authentication is on), the driver moves to r1 (its leave logged by r0's
/// owner, its join by r1's) and the trip is offered to it, the request having come through
/// r0's owner with a rider token. Without the peer token the other member refuses the pull and
/// the trip finds nobody; a rider token cannot call the RegionService itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pickup_near_the_border_draws_the_driver_across_it_from_the_other_owner() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (owner0, owner1) = authed_pair(&cluster, dir.path(), PEER).await;
    online_near_border(&owner0).await;

    // A rider token may not move drivers itself.
    let pull = pb::PullDriversRequest {
        from_region: "r0".into(),
        to_region: "r1".into(),
        pickup: ll(40.75, border() + 0.001),
        vehicle_class: 0,
        nearer_than_m: 0.0,
        max: 1,
    };
    let refused = RegionServiceClient::new(owner0.channel.clone())
        .pull_drivers(authed(pull, "rider-secret-0123456789"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    let trip = request_near_border(&owner0).await;
    assert_eq!(trip.driver_id, "d-near", "{trip:?}");
    assert!(
        trip.trip_id.starts_with("trip-2"),
        "an r1 trip: {}",
        trip.trip_id
    );
    for p in [&owner0, &owner1] {
        let r0 = stats_authed(p, "r0").await.unwrap();
        let r1 = stats_authed(p, "r1").await.unwrap();
        assert_eq!(r0.drivers_available + r0.drivers_offered, 0, "{r0:?}");
        assert_eq!(r1.drivers_offered, 1, "{r1:?}");
    }
}

/// The same pickup with authentication on but no `cluster.peer_token`: the other member
/// refuses the pull (the rider's token may not move drivers), so nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_peer_token_no_driver_is_drawn_from_the_other_owner() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (owner0, _owner1) = authed_pair(&cluster, dir.path(), "").await;
    online_near_border(&owner0).await;
    let trip = request_near_border(&owner0).await;
    assert_eq!(trip.status(), pb::TripStatus::NoDrivers, "{trip:?}");
    let r0 = stats_authed(&owner0, "r0").await.unwrap();
    assert_eq!(r0.drivers_available, 1, "d-near stayed in r0: {r0:?}");
}

/// A third process that took a driver's GoOnline remembers its first region; after the driver
/// moved (decided by the old region's owner), the third process still forwards its reports
/// there. The old owner, which moved it and so knows where, forwards them one hop further
/// instead of failing the batch, and the new region applies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_sent_through_a_process_with_a_stale_memory_reaches_the_new_region() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    let text = testkit::column_regions_toml(&cluster.urls(), Duration::from_secs(2), 2).replacen(
        "[cluster]\n",
        "[cluster]\nborder_margin_m = 300.0\nborder_pull = 0\n",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let members = [spawn(&path).await, spawn(&path).await, spawn(&path).await];
    let regions = ["r0", "r1"];
    // Two of the three own one region each; the third owns none (the fair split).
    wait_until("r0 and r1 owned by two different processes", || async {
        let routes = testkit::owner_addresses(&members[0].channel).await;
        let mut served = true;
        for m in &members {
            served &= all_served(&m.channel, &regions).await
                && testkit::owner_addresses(&m.channel).await == routes;
        }
        routes.len() == 2 && routes[0] != routes[1] && !routes[0].is_empty() && served
    })
    .await;
    let routes = testkit::owner_addresses(&members[0].channel).await;
    let by_addr = |addr: &str| members.iter().find(|m| m.addr == addr).unwrap();
    let (owner0, owner1) = (by_addr(&routes[0]), by_addr(&routes[1]));
    let third = members.iter().find(|m| !routes.contains(&m.addr)).unwrap();

    let inside_r0 = testkit::column_west(0) + 0.015;
    let into_r1 = testkit::column_west(1) + 0.01;
    let report = |p: &Dispatchd, lng: f64| {
        let mut drivers = DriverServiceClient::new(p.channel.clone());
        async move {
            let batch = pb::LocationBatch {
                updates: vec![pb::LocationUpdate {
                    driver_id: "d1".into(),
                    location: ll(40.75, lng),
                    ..Default::default()
                }],
            };
            drivers
                .report_locations(tokio_stream::iter([batch]))
                .await
                .map(|r| r.into_inner())
        }
    };
    // Online through the third process: it remembers d1 in r0.
    DriverServiceClient::new(third.channel.clone())
        .go_online(pb::GoOnlineRequest {
            driver_id: "d1".into(),
            location: ll(40.75, inside_r0),
            rating: 4.6,
            vehicle_class: 0,
            gateway_id: "gw".into(),
        })
        .await
        .unwrap();
    let through_third = report(third, inside_r0).await.unwrap();
    assert_eq!(through_third.accepted, 1, "{through_third:?}");
    // The crossing, reported to r0's owner: d1 moves to r1.
    let moved = report(owner0, into_r1).await.unwrap();
    assert_eq!(moved.accepted, 1, "{moved:?}");
    wait_until("d1 available in r1", || async {
        online_in(owner1, "r1").await == Some((1, 0, 0))
    })
    .await;

    // Through the third process again, a little further into r1: it still names r0.
    let further = into_r1 + 0.005;
    let summary = report(third, further)
        .await
        .expect("a stale memory must not fail the gateway's batch");
    assert_eq!((summary.accepted, summary.rejected), (1, 0), "{summary:?}");
    let d = driver_via(owner1, "d1").await.unwrap();
    assert_eq!(d.location.unwrap().lng_deg, further, "{d:?}");
    assert_eq!(d.state(), pb::DriverState::Available);
}
