//! Trips and offers counted per cell: a snapshot's trip cells count every open trip in view
//! once, by status, with its pending offers; a chain of cells ticks takes the first view's trip
//! cells to the last view's; points ticks still carry trips and offers one by one; and a stream
//! whose viewport crosses its point budget (so it switches between trips one by one and trips
//! per cell) holds what the snapshot of the last view it sent shows.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::domain::{ExternalId, LatLng, OfferId, TripId};
use crate::engine::map_view::{OfferLine, TripDot};
use crate::http::delta::{Chain, TickDrivers};
use crate::http::snapshot::{Bbox, CELL_SIZES_DEG, SnapshotQuery, build};
use crate::http::stream::{Follow, StreamQuery};
use crate::http::tiles::{ViewTiles, test_view};

/// Drivers by key: `(lng, lat, state)`.
type Dots = BTreeMap<u32, (f64, f64, u8)>;
/// Open trips by number: `(pickup lng, pickup lat, status)`, status 0 searching, 1 offered
/// (with a pending offer of the same number), 2 accepted, 3 arrived, 4 in progress.
type Trips = BTreeMap<u64, (f64, f64, u8)>;

const STATUSES: [TripStatus; 5] = [
    TripStatus::Searching,
    TripStatus::Offered,
    TripStatus::Accepted,
    TripStatus::Arrived,
    TripStatus::InProgress,
];

fn view(seq: u64, dots: &Dots, trips: &Trips) -> Arc<MapView> {
    let dots: Vec<_> = dots
        .iter()
        .map(|(&k, &(lng, lat, s))| (k, lng, lat, s))
        .collect();
    let mut v = Arc::try_unwrap(test_view(seq, &dots)).expect("a view nobody else holds");
    let at = |lng: f64, lat: f64| LatLng::new(lat, lng).unwrap();
    v.trips = trips
        .iter()
        .map(|(&id, &(lng, lat, s))| TripDot {
            trip: TripId(id),
            status: STATUSES[usize::from(s % 5)],
            rider: ExternalId::new("rider_id", &format!("r-{id}")).unwrap(),
            pickup: at(lng, lat),
            dropoff: at(lng, lat + 0.01),
            driver: None,
            requested_at_ms: id,
        })
        .collect();
    v.offers = trips
        .iter()
        .filter(|(_, t)| t.2 % 5 == 1)
        .map(|(&id, &(lng, lat, _))| OfferLine {
            offer: OfferId(id),
            trip: TripId(id),
            driver: ExternalId::new("driver_id", "d-0").unwrap(),
            from: at(lng, lat + 0.004),
            to: at(lng, lat),
            expires_at_ms: seq * 250 + 10_000,
        })
        .collect();
    v.stats.open_trips = v.trips.len() as u64;
    v.stats.pending_offers = v.offers.len() as u64;
    Arc::new(v)
}

fn json(write: impl FnOnce(&mut Vec<u8>)) -> Value {
    let mut out = Vec::new();
    write(&mut out);
    serde_json::from_slice(&out).unwrap()
}

/// `"lng,lat" -> counts` of a cells array.
fn cells(v: &Value) -> BTreeMap<String, Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a cells array: {v}"))
        .iter()
        .map(|c| {
            let c = c.as_array().unwrap();
            (format!("{},{}", c[0], c[1]), Value::from(c[2..].to_vec()))
        })
        .collect()
}

/// Applies changed cells: an all-zero cell is empty now.
fn apply_cells(held: &mut BTreeMap<String, Value>, changed: &Value) {
    for (k, v) in cells(changed) {
        if v.as_array().unwrap().iter().all(|n| n == 0) {
            held.remove(&k);
        } else {
            held.insert(k, v);
        }
    }
}

/// `id -> item` of a list of trips (`"trip"`) or offers (`"offer"`).
fn by_id(list: &Value, id: &str) -> BTreeMap<String, Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|x| (x[id].as_str().unwrap().to_string(), x.clone()))
        .collect()
}

fn apply_list(held: &mut BTreeMap<String, Value>, d: &Value, id: &str) {
    if d["full"] == true {
        held.clear();
    }
    for gone in d["gone"].as_array().unwrap() {
        held.remove(gone.as_str().unwrap());
    }
    held.extend(by_id(&d["upsert"], id));
}

/// One step: trips `(id, what, (lng, lat, status))`: 0 changes its status, 1 ends it, 2 opens
/// a new trip there (ids are never reused and pickups never move, as in the engine); drivers `(key, lng, lat)` set or, with a
/// key above 60, removed (`key - 60`).
type Step = (Vec<(u64, u8, (f64, f64, u8))>, Vec<(u32, f64, f64)>);

fn step() -> impl Strategy<Value = Step> {
    (
        prop::collection::vec(
            (
                0u64..1_050,
                0u8..3,
                (-74.05..-73.95f64, 40.65..40.75f64, 0u8..5),
            ),
            0..40,
        ),
        prop::collection::vec((0u32..120, -74.05..-73.95f64, 40.65..40.75f64), 0..20),
    )
}

fn change(dots: &mut Dots, trips: &mut Trips, next_id: &mut u64, (t, d): &Step) {
    for &(id, what, (lng, lat, s)) in t {
        match (what, trips.get_mut(&id)) {
            (0, Some(x)) => x.2 = s,
            (1, Some(_)) => {
                trips.remove(&id);
            }
            (2, _) => {
                trips.insert(*next_id, (lng, lat, s));
                *next_id += 1;
            }
            _ => {}
        }
    }
    for &(key, lng, lat) in d {
        if key >= 60 {
            dots.remove(&(key - 60));
        } else {
            dots.insert(key, (lng, lat, (key % 3) as u8));
        }
    }
}

fn bbox_of(whole: bool, corner: (f64, f64), size: (f64, f64)) -> Option<Bounds> {
    (!whole).then_some([corner.0, corner.1, corner.0 + size.0, corner.1 + size.1])
}

proptest! {
    /// Every open trip whose pickup cell the bbox touches is counted once, by status, and
    /// every pending offer by its pickup's cell; the snapshot sends these instead of the
    /// trips and offers when it sends the drivers as cells, and the trips one by one else.
    #[test]
    fn trip_cells_count_every_open_trip_in_view_once(
        dots in prop::collection::btree_map(0u32..100, (-74.05..-73.95f64, 40.65..40.75f64, 0u8..3), 1..100),
        trips in prop::collection::btree_map(0u64..500, (-74.05..-73.95f64, 40.65..40.75f64, 0u8..5), 0..300),
        corner in (-74.1..-73.95f64, 40.6..40.75f64),
        size in (0.001..0.2f64, 0.001..0.2f64),
        whole in any::<bool>(),
        level in 0usize..8,
    ) {
        let v = view(1, &dots, &trips);
        let bbox = bbox_of(whole, corner, size);
        let tiles = ViewTiles::new(v.clone(), &CELL_SIZES_DEG);
        let sent = cells(&json(|o| tiles.write_trip_cells(o, bbox, level)));
        let cell_deg = CELL_SIZES_DEG[level];
        let shown = |lng: f64, lat: f64| {
            let (row, col) = cell_key(cell_deg, lng, lat);
            bbox.is_none_or(|b| {
                let (lo, hi) = covered(cell_deg, b);
                (lo.0..=hi.0).contains(&row) && (lo.1..=hi.1).contains(&col)
            })
        };
        let mut expected = [0u64; 7];
        for &(_, _, s) in trips.values().filter(|t| shown(t.0, t.1)) {
            expected[0] += 1;
            expected[1 + usize::from(s)] += 1;
            expected[6] += u64::from(s == 1);
        }
        let mut counted = [0u64; 7];
        for c in sent.values() {
            let c = c.as_array().unwrap();
            prop_assert!(c.iter().any(|n| n != 0), "no empty cell is sent");
            let open = c[0].as_u64().unwrap();
            prop_assert_eq!(open, (1..6).map(|i| c[i].as_u64().unwrap()).sum::<u64>());
            for (i, n) in counted.iter_mut().enumerate() {
                *n += c[i].as_u64().unwrap();
            }
        }
        prop_assert_eq!(counted, expected);
        if bbox.is_none() {
            prop_assert_eq!(counted[0], v.stats.open_trips);
        }

        // The snapshot: cells (a budget of one) carry the trip cells and no trip or offer.
        let b = bbox.map(Bbox);
        let snap = json(|o| o.extend(build(&v, &tiles, &SnapshotQuery { bbox: b, max_points: 1 })));
        if snap["drivers"]["mode"] == "cells" {
            prop_assert_eq!(&snap["trip_cells"]["cell_deg"], &snap["drivers"]["cell_deg"]);
            prop_assert!(snap.get("trips").is_none() && snap.get("offers").is_none(), "{}", snap);
            prop_assert_eq!(snap["stats"]["trips_open"].as_u64(), Some(v.stats.open_trips));
        }
        // Points: the trips one by one, exactly those inside the bbox.
        let snap = json(|o| o.extend(build(&v, &tiles, &SnapshotQuery { bbox: b, max_points: 1000 })));
        prop_assert!(snap.get("trip_cells").is_none());
        let inside = trips
            .values()
            .filter(|t| bbox.is_none_or(|b| (b[0]..=b[2]).contains(&t.0) && (b[1]..=b[3]).contains(&t.1)))
            .count();
        prop_assert_eq!(snap["trips"].as_array().unwrap().len(), inside);
    }

    /// Cells ticks take the first view's trip cells to the last view's (and carry no trip
    /// or offer one by one); points ticks take its trips and offers to the last view's.
    #[test]
    fn ticks_take_trips_and_trip_cells_to_the_last_view(
        dots in prop::collection::btree_map(0u32..60, (-74.05..-73.95f64, 40.65..40.75f64, 0u8..3), 1..60),
        start in prop::collection::btree_map(0u64..150, (-74.05..-73.95f64, 40.65..40.75f64, 0u8..5), 0..150),
        steps in prop::collection::vec(step(), 1..5),
        corner in (-74.1..-73.95f64, 40.6..40.75f64),
        size in (0.001..0.2f64, 0.001..0.2f64),
        whole in any::<bool>(),
        level in 0usize..8,
    ) {
        let (mut dots, mut trips, mut next_id) = (dots, start, 1_000);
        let bbox = bbox_of(whole, corner, size);
        let b = bbox.map(Bbox);
        let chain = Chain::default();
        let first = view(1, &dots, &trips);
        let tiles = ViewTiles::new(first.clone(), &CELL_SIZES_DEG);
        let mut held_cells = cells(&json(|o| tiles.write_trip_cells(o, bbox, level)));
        let snap = json(|o| o.extend(build(&first, &tiles, &SnapshotQuery { bbox: b, max_points: 1000 })));
        let (mut held_trips, mut held_offers) = (by_id(&snap["trips"], "trip"), by_id(&snap["offers"], "offer"));
        let mut last = first;
        for (i, s) in steps.iter().enumerate() {
            change(&mut dots, &mut trips, &mut next_id, s);
            let next = view(i as u64 + 2, &dots, &trips);
            let delta = chain.delta(&last, &next);
            let c = json(|o| delta.write(o, bbox, TickDrivers::Changes(Some(level))));
            prop_assert!(c.get("trips").is_none() && c.get("offers").is_none(), "{}", c);
            prop_assert_eq!(&c["trip_cells"]["cell_deg"], &Value::from(CELL_SIZES_DEG[level]));
            apply_cells(&mut held_cells, &c["trip_cells"]["cells"]);
            let p = json(|o| delta.write(o, bbox, TickDrivers::Changes(None)));
            prop_assert!(p.get("trip_cells").is_none(), "{}", p);
            apply_list(&mut held_trips, &p["trips"], "trip");
            apply_list(&mut held_offers, &p["offers"], "offer");
            last = next;
        }
        let tiles = ViewTiles::new(last.clone(), &CELL_SIZES_DEG);
        prop_assert_eq!(held_cells, cells(&json(|o| tiles.write_trip_cells(o, bbox, level))));
        let snap = json(|o| o.extend(build(&last, &tiles, &SnapshotQuery { bbox: b, max_points: 1000 })));
        prop_assert_eq!(held_trips, by_id(&snap["trips"], "trip"));
        prop_assert_eq!(held_offers, by_id(&snap["offers"], "offer"));
    }

    /// A stream whose drivers in view cross the point budget, up and down, switches its
    /// trips between one by one and per cell with whole sets; a viewer applying its ticks to
    /// the first view's snapshot holds the trips (or trip cells) and offers of the snapshot
    /// of the last view the stream sent.
    #[test]
    fn switching_between_trips_and_trip_cells_converges(
        dots in prop::collection::btree_map(0u32..60, (-74.05..-73.95f64, 40.65..40.75f64, 0u8..3), 0..60),
        start in prop::collection::btree_map(0u64..150, (-74.05..-73.95f64, 40.65..40.75f64, 0u8..5), 0..150),
        steps in prop::collection::vec(step(), 1..10),
        corner in (-74.1..-73.95f64, 40.6..40.75f64),
        size in (0.01..0.2f64, 0.01..0.2f64),
        whole in any::<bool>(),
        max_points in 1usize..40,
    ) {
        let (mut dots, mut trips, mut next_id) = (dots, start, 1_000);
        let bbox = bbox_of(whole, corner, size);
        let q = SnapshotQuery { bbox: bbox.map(Bbox), max_points };
        let chain = Chain::default();
        let first = view(1, &dots, &trips);
        let tiles = ViewTiles::new(first.clone(), &CELL_SIZES_DEG);
        let mut follow = Follow::new(StreamQuery { bbox, max_points, seq: None }, first.clone(), Some(&tiles));
        // What the viewer holds: trips, offers, trip cells (empty in the other mode).
        let holding = |snap: &Value| match snap.get("trip_cells") {
            Some(tc) => (BTreeMap::new(), BTreeMap::new(), cells(&tc["cells"])),
            None => (by_id(&snap["trips"], "trip"), by_id(&snap["offers"], "offer"), BTreeMap::new()),
        };
        let mut held = holding(&json(|o| o.extend(build(&first, &tiles, &q))));
        let mut sent = first;
        for (i, s) in steps.iter().enumerate() {
            change(&mut dots, &mut trips, &mut next_id, s);
            let next = view(i as u64 + 2, &dots, &trips);
            if !follow.due(&next) {
                continue;
            }
            let t: Value = serde_json::from_slice(&follow.tick(&chain, next.clone(), |_| Arc::default())).unwrap();
            let points = t["drivers"]["mode"] == "points";
            prop_assert_eq!(t.get("trips").is_some(), points, "{}", t);
            prop_assert_eq!(t.get("trip_cells").is_some(), !points, "{}", t);
            if let Some(tc) = t.get("trip_cells") {
                if tc["full"] == true {
                    held = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
                }
                apply_cells(&mut held.2, &tc["cells"]);
            } else {
                if t["trips"]["full"] == true {
                    held.2.clear();
                }
                apply_list(&mut held.0, &t["trips"], "trip");
                apply_list(&mut held.1, &t["offers"], "offer");
            }
            sent = next;
        }
        let tiles = ViewTiles::new(sent.clone(), &CELL_SIZES_DEG);
        prop_assert_eq!(held, holding(&json(|o| o.extend(build(&sent, &tiles, &q)))));
    }
}

#[test]
fn a_cell_item_is_its_centre_and_its_counts() {
    let mut out = Vec::new();
    write_item(&mut out, 0.01, (4070, -7400), &[3u32, 1, 1, 0, 0, 1, 1]);
    write_item(&mut out, 0.01, (4070, -7399), &(2u32, 0u32));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[-73.995,40.705,3,1,1,0,0,1,1],[-73.985,40.705,2,0],"
    );
}
