//! The live map's stream of deltas over real HTTP on 127.0.0.1:0, against a server driven by a
//! manual clock: each tick carries what changed inside the viewer's bbox (points, or cells
//! beyond its point budget; trips and offers) since the view it names as its base; a stream
//! that crosses its budget switches mode with a whole set; a stream too slow to see a view
//! sends one tick across it, and bad stream parameters get a 400 JSON error.

mod http_client;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dispatch::clock::{Clock, ManualClock};
use dispatch::config::Config;
use dispatch::pb;
use http_client::{Sse, get};
use serde_json::Value;
use support::*;

async fn start_http(config: Config) -> (TestServer, SocketAddr) {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let s = start_custom(config, clock.clone(), clock, true).await;
    let addr = s.metrics_addr.unwrap();
    (s, addr)
}

/// A server with d-1 online at the pickup (and, with `d2_north_m`, d-2 that far north of it),
/// and a first view published: how every test here opens.
async fn opened(d2_north_m: Option<f64>) -> (TestServer, SocketAddr) {
    let (s, addr) = start_http(Config::default()).await;
    online(&s, "d-1", 0.0, 4.9, "gw-1").await;
    if let Some(north_m) = d2_north_m {
        online(&s, "d-2", north_m, 4.5, "gw-1").await;
    }
    publish_next(&s).await;
    (s, addr)
}

/// The bbox 0.01 degrees around the pickup, as `bbox=` takes it.
fn bbox_around_pickup() -> String {
    let (lat, lng) = PICKUP;
    format!(
        "{},{},{},{}",
        lng - 0.01,
        lat - 0.01,
        lng + 0.01,
        lat + 0.01
    )
}

/// `GET /api/map/snapshot?{query}`, as JSON.
async fn snapshot(addr: SocketAddr, query: &str) -> Value {
    get(addr, &format!("/api/map/snapshot?{query}"), &[])
        .await
        .json()
}

/// Moves engine time past the publish interval and waits for the next view (by its number:
/// positions make no event, so the event offset cannot tell).
async fn publish_next(s: &TestServer) -> u64 {
    let mut view = s.engine.map_view();
    let before = view.borrow_and_update().seq;
    s.clock.advance(Duration::from_millis(300));
    // A view taken at the advanced time: the first view (published when the first viewer
    // appeared) may still be on its way, taken before the advance, and one taken at `now`
    // means no other is due until the clock moves again.
    let now = s.clock.now_ms();
    let v = tokio::time::timeout(
        Duration::from_secs(10),
        view.wait_for(|v| v.seq > before && v.at_ms >= now),
    )
    .await
    .expect("a view within 10 s")
    .unwrap();
    v.seq
}

/// Publishes views up to the next one a cells stream ticks at (every fourth, once a second).
async fn publish_aligned(s: &TestServer) -> u64 {
    loop {
        let seq = publish_next(s).await;
        if seq % 4 == 0 {
            return seq;
        }
    }
}

async fn move_to(s: &TestServer, driver: &str, (lat, lng): (f64, f64)) {
    s.drivers()
        .update_location(pb::LocationUpdate {
            driver_id: driver.into(),
            location: ll(lat, lng),
            recorded_at_ms: s.clock.now_ms(),
        })
        .await
        .unwrap();
}

/// The next tick, skipping trip and offer events.
async fn tick(sse: &mut Sse) -> Value {
    sse.next_named("tick").await
}

fn ids(list: &Value, at: usize) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let id = if at == usize::MAX { x } else { &x[at] };
            id.as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn the_stream_sends_what_changed_inside_its_bbox() {
    // d-2 ~0.18 degrees north, outside the bbox.
    let (s, addr) = opened(Some(20_000.0)).await;
    let (lat, lng) = PICKUP;
    let bbox = bbox_around_pickup();
    let snap = snapshot(addr, &format!("bbox={bbox}")).await;
    assert_eq!(ids(&snap["drivers"]["points"], 3), ["d-1"]);
    let at = snap["seq"].as_u64().unwrap();
    let mut points = Sse::open(addr, &format!("/api/map/stream?bbox={bbox}"), &[]).await;
    // Two drivers over a budget of one: the whole city as cells.
    let mut cells = Sse::open(addr, "/api/map/stream?max_points=1", &[]).await;

    // d-1 moves inside the bbox and gets an offer; d-2 moves a cell north, still outside.
    move_to(&s, "d-1", (lat + 0.002, lng)).await;
    move_to(&s, "d-2", (lat + 0.195, lng)).await;
    let trip = request(&s, "r-1", "req-1").await;
    let seq = publish_next(&s).await;
    let t = tick(&mut points).await;
    assert_eq!(
        (t["base"].as_u64(), t["seq"].as_u64()),
        (Some(at), Some(seq)),
        "{t}"
    );
    assert_eq!(t["drivers"]["mode"], "points");
    assert_eq!(ids(&t["drivers"]["upsert"], 3), ["d-1"], "{t}");
    let d1 = &t["drivers"]["upsert"][0];
    assert!(
        (d1[1].as_f64().unwrap() - (lat + 0.002)).abs() < 1e-5,
        "{d1}"
    );
    assert_eq!(d1[2], 1, "offered");
    assert_eq!(t["drivers"]["gone"], serde_json::json!([]));
    assert_eq!(t["trips"]["upsert"][0]["trip"], trip.trip_id.as_str());
    assert_eq!(t["offers"]["upsert"][0]["driver"], "d-1");
    assert_eq!(t["stats"]["drivers_offered"], 1);
    // d-1 leaves the bbox: it is gone from this viewer's map; its offer still ends inside.
    move_to(&s, "d-1", (lat + 0.05, lng)).await;
    let next = publish_next(&s).await;
    let t = tick(&mut points).await;
    assert_eq!(
        (t["base"].as_u64(), t["seq"].as_u64()),
        (Some(seq), Some(next))
    );
    assert_eq!(ids(&t["drivers"]["gone"], usize::MAX), ["d-1"], "{t}");
    assert_eq!(t["drivers"]["upsert"], serde_json::json!([]));
    assert_eq!(
        t["offers"]["upsert"][0]["driver"], "d-1",
        "the offer's line moved"
    );
    assert_eq!(
        t["trips"]["upsert"],
        serde_json::json!([]),
        "the trip did not change"
    );
    // The whole-city cells stream: d-2's old cell emptied, its new one holds it.
    // A cells stream ticks once a second, at every fourth view: from the view it opened at
    // (the snapshot's) to the first such view after it, across the moves above.
    let aligned = (at / 4 + 1) * 4;
    if next < aligned {
        publish_aligned(&s).await;
    }
    let c = tick(&mut cells).await;
    assert_eq!(
        (c["base"].as_u64(), c["seq"].as_u64()),
        (Some(at), Some(aligned)),
        "{c}"
    );
    assert_eq!(c["drivers"]["mode"], "cells", "{c}");
    assert_eq!(c["drivers"]["full"], Value::Null, "no switch: {c}");
    let size = c["drivers"]["cell_deg"].as_f64().unwrap();
    let changed = c["drivers"]["cells"].as_array().unwrap();
    let cell_of = |lat_deg: f64| ((lat_deg / size).floor() + 0.5) * size;
    let holds = |want_lat: f64, count: u64| {
        changed
            .iter()
            .any(|x| (x[1].as_f64().unwrap() - cell_of(want_lat)).abs() < 1e-6 && x[2] == count)
    };
    assert!(holds(lat + 0.195, 1), "{c}");
    assert!(holds(PICKUP.0 + 20_000.0 / 111_195.0, 0), "{c}");
    // Zoomed out, the trip and its offer come counted in the pickup's cell, not one by one:
    // [lng, lat, open, searching, offered, accepted, arrived, in_progress, offers].
    assert!(c.get("trips").is_none() && c.get("offers").is_none(), "{c}");
    assert_eq!(c["trip_cells"]["cell_deg"], c["drivers"]["cell_deg"], "{c}");
    let trip_cells = c["trip_cells"]["cells"].as_array().unwrap();
    assert_eq!(trip_cells.len(), 1, "{c}");
    let counts: Vec<u64> = trip_cells[0].as_array().unwrap()[2..]
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 0, 1, 0, 0, 0, 1], "{c}");
    assert!(
        (trip_cells[0][1].as_f64().unwrap() - cell_of(lat)).abs() < 1e-6,
        "{c}"
    );

    s.stop().await;
}

#[tokio::test]
async fn a_stream_too_slow_to_see_a_view_gets_one_tick_across_it() {
    let (s, addr) = opened(None).await;
    let mut sse = Sse::open(addr, "/api/map/stream", &[]).await;
    let first = publish_next(&s).await;
    assert_eq!(tick(&mut sse).await["seq"].as_u64(), Some(first));
    move_to(&s, "d-1", (PICKUP.0 + 0.001, PICKUP.1)).await;
    // Two views published while this (single-threaded) runtime cannot run the stream: it
    // sees only the second, and sends one tick from the view it sent last to that one.
    let view = s.engine.map_view();
    for _ in 0..2 {
        let before = view.borrow().seq;
        s.clock.advance(Duration::from_millis(300));
        let now = s.clock.now_ms();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while view.borrow().seq == before || view.borrow().at_ms < now {
            assert!(std::time::Instant::now() < deadline, "no view within 10 s");
            std::thread::yield_now();
        }
    }
    let latest = view.borrow().seq;
    assert_eq!(latest, first + 2);
    let t = tick(&mut sse).await;
    assert_eq!(
        (t["base"].as_u64(), t["seq"].as_u64()),
        (Some(first), Some(latest)),
        "{t}"
    );
    assert_eq!(
        ids(&t["drivers"]["upsert"], 3),
        ["d-1"],
        "the move before the skipped view"
    );
    let next = publish_next(&s).await;
    let t = tick(&mut sse).await;
    assert_eq!(
        (t["base"].as_u64(), t["seq"].as_u64()),
        (Some(latest), Some(next))
    );
    for (bad, says) in [
        ("/api/map/stream?cell_deg=0.03", "max_points"),
        ("/api/map/stream?bbox=1,2", "bbox must be"),
        ("/api/map/stream?zoom=3", "unknown parameter"),
        ("/api/map/stream?max_points=0", "whole number from 1"),
        ("/api/map/stream?max_points=many", "whole number from 1"),
        ("/api/map/stream?max_points=-5", "whole number from 1"),
        (
            "/api/map/stream?max_points=999999999",
            "whole number from 1",
        ),
    ] {
        let a = get(addr, bad, &[]).await;
        assert_eq!(a.status, 400, "{bad}");
        let error = a.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{bad}: {error}");
    }
    s.stop().await;
}

/// A stream whose viewport crosses its point budget switches between points and cells with
/// one tick carrying the whole set in the new mode (as the snapshot would send it).
#[tokio::test]
async fn a_stream_crossing_its_point_budget_switches_mode_with_a_whole_set() {
    let (s, addr) = opened(Some(20_000.0)).await; // d-2 outside the bbox
    let (lat, lng) = PICKUP;
    let query = format!("bbox={}&max_points=1", bbox_around_pickup());
    let snap = snapshot(addr, &query).await;
    assert_eq!(
        snap["drivers"]["mode"], "points",
        "one driver inside: {snap}"
    );
    let mut sse = Sse::open(addr, &format!("/api/map/stream?{query}"), &[]).await;

    // d-2 comes inside: two drivers over a budget of one, so the whole set as cells.
    move_to(&s, "d-2", (lat + 0.003, lng)).await;
    publish_next(&s).await;
    let t = tick(&mut sse).await;
    let d = &t["drivers"];
    assert_eq!(
        (&d["mode"], &d["full"]),
        (&"cells".into(), &true.into()),
        "{t}"
    );
    let counted: u64 = d["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[2].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 2, "{t}");
    // Trips go as the drivers do: now counted per cell, whole (none open yet).
    assert_eq!(t["trip_cells"]["full"], true, "{t}");
    assert!(t.get("trips").is_none(), "{t}");
    // The snapshot of the same view and query agrees.
    let snap = snapshot(addr, &query).await;
    assert_eq!(snap["seq"], t["seq"]);
    assert_eq!(snap["drivers"]["cells"], d["cells"]);

    // Nothing crosses the budget: the next tick (a cells stream's, at a fourth view) is
    // changes in cells again.
    let next = publish_aligned(&s).await;
    let t = tick(&mut sse).await;
    assert_eq!(t["seq"].as_u64(), Some(next));
    assert_eq!(t["drivers"]["mode"], "cells", "{t}");
    assert_eq!(t["drivers"]["full"], Value::Null, "{t}");

    // d-2 leaves: one driver, points again, whole.
    move_to(&s, "d-2", (lat + 0.05, lng)).await;
    publish_aligned(&s).await;
    let t = tick(&mut sse).await;
    let d = &t["drivers"];
    assert_eq!(
        (&d["mode"], &d["full"]),
        (&"points".into(), &true.into()),
        "{t}"
    );
    assert_eq!(ids(&d["points"], 3), ["d-1"], "{t}");
    assert_eq!(
        t["trips"]["full"], true,
        "trips one by one again, whole: {t}"
    );
    // A points stream again: it gets the trip feed (a cells stream holds none).
    let trip = request(&s, "r-1", "req-1").await;
    let e = sse.next_named("trip").await;
    assert_eq!(e["trip"], trip.trip_id.as_str(), "{e}");
    s.stop().await;
}

/// A viewer that names its snapshot's view (`seq=`) gets its first tick from that view, even
/// when a view was published between its snapshot and the stream's start.
#[tokio::test]
async fn a_stream_opened_with_the_snapshots_view_leads_from_it() {
    let (s, addr) = opened(None).await;
    let snap = snapshot(addr, "").await;
    let at = snap["seq"].as_u64().unwrap();
    let between = publish_next(&s).await;
    assert!(between > at);
    let mut sse = Sse::open(addr, &format!("/api/map/stream?seq={at}"), &[]).await;
    move_to(&s, "d-1", (PICKUP.0 + 0.001, PICKUP.1)).await;
    let next = publish_next(&s).await;
    let t = tick(&mut sse).await;
    assert_eq!(
        (t["base"].as_u64(), t["seq"].as_u64()),
        (Some(at), Some(next)),
        "{t}"
    );
    assert_eq!(ids(&t["drivers"]["upsert"], 3), ["d-1"], "{t}");
    s.stop().await;
}
