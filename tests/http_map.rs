//! The live map's HTTP API over real HTTP on 127.0.0.1:0, against a server driven by a manual
//! clock: the snapshot agrees with GetStats, a trip requested over gRPC shows in the snapshot,
//! in its detail (events, offers, the winning offer's score) and on the SSE stream; bad
//! parameters get a 400 JSON error (the stream's deltas: `http_map_deltas.rs`); with tokens, the map needs `viewer` or `admin` (header or
//! login cookie) while `/metrics` stays open, and a viewer token opens no gRPC service.

mod http_client;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dispatch::clock::ManualClock;
use dispatch::config::{AuthConfig, Config, Role, TokenConfig};
use dispatch::pb;
use http_client::{Sse, get, post_form};
use serde_json::Value;
use support::*;
use tonic::Code;

async fn start_http(config: Config) -> (TestServer, SocketAddr) {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let s = start_custom(config, clock.clone(), clock, true).await;
    let addr = s.metrics_addr.unwrap();
    (s, addr)
}

/// Moves engine time past the publish interval and waits until the dispatcher has published
/// a view that includes every event up to now.
async fn publish(s: &TestServer) {
    let offset = stats(s).await.next_event_offset;
    s.advance(Duration::from_millis(300)).await;
    let mut view = s.engine.map_view();
    tokio::time::timeout(
        Duration::from_secs(10),
        view.wait_for(|v| v.offset >= offset && v.at_ms > T0_MS),
    )
    .await
    .expect("a view within 10 s")
    .unwrap();
}

async fn stats(s: &TestServer) -> pb::GetStatsResponse {
    s.queries()
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn trip_ids(snapshot: &Value) -> Vec<&str> {
    snapshot["trips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trip"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn snapshot_and_trip_detail_follow_a_trip_requested_over_grpc() {
    let (s, addr) = start_http(Config::default()).await;
    online(&s, "d-1", 300.0, 4.9, "gw-1").await;
    online(&s, "d-2", 900.0, 4.5, "gw-1").await;
    online(&s, "d-3", 2_000.0, 4.7, "gw-1").await;
    let mut offers = offer_stream(&s, "gw-1").await;
    let trip = request(&s, "r-1", "req-1").await;
    let offer = offer_of(next(&mut offers).await);
    publish(&s).await;

    let snap = get(addr, "/api/map/snapshot", &[]).await;
    assert_eq!(snap.status, 200);
    assert_eq!(snap.header("content-type"), "application/json");
    let snap = snap.json();
    let g = stats(&s).await;
    let online_now = g.drivers_available + g.drivers_offered + g.drivers_on_trip;
    assert_eq!(snap["stats"]["drivers_online"], online_now);
    assert_eq!(snap["stats"]["trips_open"], g.open_trips);
    assert_eq!(snap["stats"]["drivers_offered"], 1);
    assert_eq!(snap["stats"]["pending_offers"], 1);
    assert_eq!(snap["drivers"]["mode"], "points");
    let points = snap["drivers"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    let offered: Vec<_> = points.iter().filter(|p| p[2] == 1).collect();
    assert_eq!(offered.len(), 1);
    assert_eq!(offered[0][3], offer.driver_id.as_str());
    assert_eq!(trip_ids(&snap), [trip.trip_id.as_str()]);
    assert_eq!(snap["trips"][0]["status"], "TRIP_STATUS_OFFERED");
    assert_eq!(snap["trips"][0]["rider"], "r-1");
    assert_eq!(snap["offers"][0]["offer"], offer.offer_id.as_str());
    assert_eq!(snap["offers"][0]["expires_at_ms"], offer.expires_at_ms);
    let bounds = snap["bounds"].as_array().unwrap();
    assert!(bounds[0].as_f64().unwrap() <= PICKUP.1 && bounds[2].as_f64().unwrap() >= PICKUP.1);

    // A bbox away from the city shows nothing; max_points below the count gives cells.
    let far = get(addr, "/api/map/snapshot?bbox=10,10,11,11", &[])
        .await
        .json();
    assert!(far["drivers"]["points"].as_array().unwrap().is_empty());
    assert!(far["trips"].as_array().unwrap().is_empty());
    let cells = get(addr, "/api/map/snapshot?max_points=2", &[])
        .await
        .json();
    assert_eq!(cells["drivers"]["mode"], "cells");
    let counted: u64 = cells["drivers"]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[2].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3);
    // With cells, the open trips and offers are counted into the same cells.
    assert!(cells.get("trips").is_none(), "{cells}");
    let trip_cells = cells["trip_cells"]["cells"].as_array().unwrap();
    let open: u64 = trip_cells.iter().map(|c| c[2].as_u64().unwrap()).sum();
    let offers: u64 = trip_cells.iter().map(|c| c[8].as_u64().unwrap()).sum();
    assert_eq!((open, offers), (g.open_trips, g.pending_offers), "{cells}");

    accept(&s, &offer.offer_id, &offer.driver_id).await;
    let path = format!("/api/trips/{}", trip.trip_id);
    let detail = get(addr, &path, &[]).await;
    assert_eq!(detail.status, 200);
    let detail = detail.json();
    let kinds: Vec<_> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "TRIP_REQUESTED",
            "OFFER_SENT",
            "OFFER_ACCEPTED",
            "TRIP_ASSIGNED"
        ]
    );
    assert!(
        detail["events"][0]["text"]
            .as_str()
            .unwrap()
            .contains("r-1")
    );
    assert_eq!(detail["trip"]["status"], "TRIP_STATUS_ACCEPTED");
    assert_eq!(detail["trip"]["driver"], offer.driver_id.as_str());
    assert_eq!(detail["trip"]["ended"], false);
    let win = &detail["winning_offer"];
    let score = offer.score.unwrap();
    assert_eq!(win["offer"], offer.offer_id.as_str());
    assert_eq!(win["score"]["total"].as_f64().unwrap(), score.total);
    assert_eq!(win["score"]["eta"].as_f64().unwrap(), score.eta);
    assert_eq!(win["score"]["fairness"].as_f64().unwrap(), score.fairness);
    assert_eq!(win["pickup_eta_s"].as_f64().unwrap(), offer.pickup_eta_s);
    assert_eq!(detail["offers"][0]["state"], "ACCEPTED");

    let missing = get(addr, "/api/trips/trip-999999", &[]).await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap()
            .contains("trip-999999")
    );
    let garbage = get(addr, "/api/trips/nonsense", &[]).await;
    assert_eq!(garbage.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn the_stream_delivers_ticks_and_every_trip_and_offer_change() {
    let (s, addr) = start_http(Config::default()).await;
    let mut sse = Sse::open(addr, "/api/map/stream", &[]).await;
    online(&s, "d-1", 300.0, 4.9, "gw-1").await;
    publish(&s).await;
    // The first view (at start, T0) may be published after the stream opened: skip it.
    let mut tick = sse.next_named("tick").await;
    while tick["at_ms"].as_u64().unwrap() == T0_MS {
        tick = sse.next_named("tick").await;
    }
    assert_eq!(tick["stats"]["drivers_online"], 1);

    let mut offers = offer_stream(&s, "gw-1").await;
    let trip = request(&s, "r-1", "req-1").await;
    let offer = offer_of(next(&mut offers).await);
    decline(&s, &offer.offer_id, "d-1").await;
    // Ticks may interleave; the changes arrive in order.
    let mut changes = Vec::new();
    while changes.len() < 5 {
        let (name, data) = sse.next().await;
        if name != "tick" {
            changes.push((name, data));
        }
    }
    let t = trip.trip_id.as_str();
    assert_eq!(changes[0].0, "trip");
    assert_eq!(changes[0].1["trip"], t);
    assert_eq!(changes[0].1["status"], "TRIP_STATUS_SEARCHING");
    assert_eq!(changes[1].1["status"], "TRIP_STATUS_OFFERED");
    assert_eq!(changes[1].1["driver"], "d-1");
    assert_eq!(changes[2].0, "offer");
    assert_eq!(changes[2].1["state"], "SENT");
    assert_eq!(changes[2].1["offer"], offer.offer_id.as_str());
    assert_eq!(changes[2].1["expires_at_ms"], offer.expires_at_ms);
    assert_eq!(changes[3].0, "offer");
    assert_eq!(changes[3].1["state"], "DECLINED");
    assert_eq!(changes[4].0, "trip");
    assert!(changes[4].1["driver"].is_null());
    assert!(
        changes
            .windows(2)
            .all(|w| w[0].1["offset"].as_u64() <= w[1].1["offset"].as_u64())
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_parameters_get_a_400_with_a_json_error() {
    let (s, addr) = start_http(Config::default()).await;
    for path in [
        "/api/map/snapshot?bbox=1,2,3",
        "/api/map/snapshot?bbox=a,b,c,d",
        "/api/map/snapshot?bbox=-73.8,40.6,-74.1,40.9",
        "/api/map/snapshot?bbox=-200,0,10,10",
        "/api/map/snapshot?max_points=0",
        "/api/map/snapshot?max_points=lots",
        "/api/map/snapshot?zoom=3",
        "/api/map/snapshot?bbox=%ZZ",
        "/api/map/roads?bbox=1,1,0,0",
    ] {
        let a = get(addr, path, &[]).await;
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        let message = a.json()["error"].as_str().unwrap().to_string();
        assert!(
            !message.contains("Some(") && message.len() > 20,
            "{path}: {message}"
        );
    }
    let roads = get(addr, "/api/map/roads?bbox=-74.1,40.6,-73.8,40.9", &[]).await;
    assert_eq!(roads.status, 404);
    assert_eq!(roads.json()["error"], "no road map loaded");
    let page = get(addr, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page.body.contains("drivers-online"));
    let js = get(addr, "/assets/map.js", &[]).await;
    assert!(js.header("content-type").starts_with("text/javascript"));
    let css = get(addr, "/assets/map.css", &[]).await;
    assert!(css.header("content-type").starts_with("text/css"));
    assert_eq!(get(addr, "/assets/nope.js", &[]).await.status, 404);
    s.stop().await;
}

fn token(name: &str, token: &str, role: Role) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        token: token.into(),
        roles: vec![role],
    }
}

#[tokio::test]
async fn with_tokens_the_map_needs_viewer_or_admin_by_header_or_login_cookie() {
    let config = Config {
        auth: AuthConfig {
            tokens: vec![
                token("ops", "admin-token-0123456789", Role::Admin),
                token("wall", "viewer-token-0123456789", Role::Viewer),
                token("gw", "driver-token-0123456789", Role::DriverGateway),
            ],
        },
        ..Config::default()
    };
    let (s, addr) = start_http(config).await;
    let api = "/api/map/snapshot";

    let none = get(addr, api, &[]).await;
    assert_eq!(none.status, 401);
    assert!(none.json()["error"].as_str().unwrap().contains("/login"));
    let wrong = get(addr, api, &[("authorization", "Bearer not-a-token")]).await;
    assert_eq!(wrong.status, 401);
    let driver = get(
        addr,
        api,
        &[("authorization", "Bearer driver-token-0123456789")],
    )
    .await;
    assert_eq!(driver.status, 403);
    assert!(driver.json()["error"].as_str().unwrap().contains("viewer"));
    for t in ["viewer-token-0123456789", "admin-token-0123456789"] {
        let bearer = format!("Bearer {t}");
        let ok = get(addr, api, &[("authorization", bearer.as_str())]).await;
        assert_eq!(ok.status, 200, "{t}");
    }
    // A page load without a token goes to the login form.
    let page = get(addr, "/", &[]).await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), "/login");
    let form = get(addr, "/login", &[]).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"token\""));

    let refused = post_form(addr, "/login", "token=guess").await;
    assert_eq!(refused.status, 401);
    assert!(refused.header("set-cookie").is_empty());
    let forbidden = post_form(addr, "/login", "token=driver-token-0123456789").await;
    assert_eq!(forbidden.status, 403);
    let login = post_form(addr, "/login", "token=viewer-token-0123456789").await;
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), "/");
    let cookie = login
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(cookie, "dispatch_token=viewer-token-0123456789");
    assert!(login.header("set-cookie").contains("HttpOnly"));
    let with_cookie = [("cookie", cookie.as_str())];
    assert_eq!(get(addr, api, &with_cookie).await.status, 200);
    assert_eq!(get(addr, "/", &with_cookie).await.status, 200);
    let mut sse = Sse::open(addr, "/api/map/stream", &with_cookie).await;
    publish_with_token(&s).await;
    assert_eq!(sse.next_named("tick").await["stats"]["drivers_online"], 0);

    // /metrics stays open, as documented.
    assert_eq!(get(addr, "/metrics", &[]).await.status, 200);

    // The viewer token opens no gRPC service.
    let mut queries = pb::query_service_client::QueryServiceClient::new(s.channel.clone());
    let mut call = tonic::Request::new(pb::GetStatsRequest {});
    call.metadata_mut().insert(
        "authorization",
        "Bearer viewer-token-0123456789".parse().unwrap(),
    );
    let e = queries.get_stats(call).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    s.stop().await;
}

/// [`publish`] on a server whose gRPC needs a token: waits on the view alone.
async fn publish_with_token(s: &TestServer) {
    let before = s.engine.map_view().borrow().at_ms;
    s.clock.advance(Duration::from_millis(300));
    let mut view = s.engine.map_view();
    tokio::time::timeout(Duration::from_secs(10), view.wait_for(|v| v.at_ms > before))
        .await
        .expect("a view within 10 s")
        .unwrap();
}
