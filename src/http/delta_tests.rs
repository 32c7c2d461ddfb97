//! Applying a chain of deltas to the first view's snapshot gives the last view's snapshot, for
//! points and for cells, whatever the bbox and whatever moved, changed state, came or went.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::http::snapshot::CELL_SIZES_DEG;
use crate::http::tiles::{ViewTiles, test_view};

/// A driver of a test view: `(key, lng, lat, state)`.
type Dot = (u32, f64, f64, u8);

fn view(seq: u64, dots: &BTreeMap<u32, (f64, f64, u8)>) -> Arc<MapView> {
    let dots: Vec<Dot> = dots
        .iter()
        .map(|(&key, &(lng, lat, state))| (key, lng, lat, state))
        .collect();
    test_view(seq, &dots)
}

/// `id -> [lng, lat, state]` of a points array.
fn points(v: &Value) -> BTreeMap<String, Value> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[3].as_str().unwrap().to_string(),
                Value::from(p.as_array().unwrap()[..3].to_vec()),
            )
        })
        .collect()
}

/// `[lng, lat] -> [count, available]` of a cells array, as strings to compare exactly.
fn cells(v: &Value) -> BTreeMap<String, Value> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!("{},{}", c[0], c[1]),
                Value::from(c.as_array().unwrap()[2..].to_vec()),
            )
        })
        .collect()
}

fn json(write: impl FnOnce(&mut Vec<u8>)) -> Value {
    let mut out = Vec::new();
    write(&mut out);
    serde_json::from_slice(&out).unwrap()
}

/// One step of change: `(key, what)`: 0 moves it, 1 changes its state, 2 removes it, 3 adds
/// it (or moves it, if it is there), with `(dlng, dlat, state)`.
type Step = Vec<(u32, u8, (f64, f64, u8))>;

fn change(dots: &mut BTreeMap<u32, (f64, f64, u8)>, step: &Step) {
    for &(key, what, (dlng, dlat, state)) in step {
        match (what, dots.get_mut(&key)) {
            (0, Some(d)) => {
                d.0 = (d.0 + dlng).clamp(-74.1, -73.9);
                d.1 = (d.1 + dlat).clamp(40.6, 40.8);
            }
            (1, Some(d)) => d.2 = state,
            (2, Some(_)) => {
                dots.remove(&key);
            }
            _ => {
                dots.insert(key, (-74.0 + dlng * 20.0, 40.7 + dlat * 20.0, state));
            }
        }
    }
}

fn dot() -> impl Strategy<Value = Dot> {
    (0u32..300, -74.05..-73.95f64, 40.65..40.75f64, 0u8..3)
}

fn step() -> impl Strategy<Value = Step> {
    prop::collection::vec(
        (
            0u32..300,
            0u8..4,
            (-0.005..0.005f64, -0.005..0.005f64, 0u8..3),
        ),
        0..80,
    )
}

proptest! {
    #[test]
    fn deltas_take_the_first_snapshot_to_the_last(
        start in prop::collection::vec(dot(), 0..300),
        steps in prop::collection::vec((step(), any::<bool>()), 1..5),
        corner in (-74.1..-73.95f64, 40.6..40.75f64),
        size in (0.001..0.2f64, 0.001..0.2f64),
        whole in any::<bool>(),
        level in 0usize..6,
    ) {
        let mut dots: BTreeMap<u32, (f64, f64, u8)> =
            start.iter().map(|&(k, lng, lat, s)| (k, (lng, lat, s))).collect();
        let bbox = (!whole).then_some([corner.0, corner.1, corner.0 + size.0, corner.1 + size.1]);
        let chain = Chain::default();
        let first = view(1, &dots);
        let tiles = ViewTiles::new(first.clone(), &CELL_SIZES_DEG);
        let mut pts = points(&json(|o| { tiles.write_points(o, bbox, usize::MAX); }));
        let mut cls = cells(&json(|o| tiles.write_cells(o, bbox, level)));
        // `held`: the view the viewer's map shows. A step marked `slow` is a view it does
        // not see: the next delta leads from the one it holds (the last step is always seen).
        let mut held = first;
        let n = steps.len();
        for (i, (s, slow)) in steps.iter().enumerate() {
            change(&mut dots, s);
            let next = view(i as u64 + 2, &dots);
            if *slow && i + 1 < n {
                continue;
            }
            let delta = chain.delta(&held, &next);
            prop_assert_eq!(delta.base, Some(held.seq));
            // A second stream at the same view shares the delta.
            prop_assert!(Arc::ptr_eq(&delta, &chain.delta(&held, &next)));
            let d = json(|o| delta.write(o, bbox, TickDrivers::Changes(None)));
            prop_assert_eq!(&d["seq"], &Value::from(next.seq));
            for gone in d["drivers"]["gone"].as_array().unwrap() {
                pts.remove(gone.as_str().unwrap());
            }
            pts.extend(points(&d["drivers"]["upsert"]));
            let c = json(|o| delta.write(o, bbox, TickDrivers::Changes(Some(level))));
            prop_assert_eq!(&c["drivers"]["cell_deg"], &Value::from(CELL_SIZES_DEG[level]));
            for (k, v) in cells(&c["drivers"]["cells"]) {
                if v[0] == 0 { cls.remove(&k); } else { cls.insert(k, v); }
            }
            held = next;
        }
        let tiles = ViewTiles::new(held.clone(), &CELL_SIZES_DEG);
        prop_assert_eq!(pts, points(&json(|o| { tiles.write_points(o, bbox, usize::MAX); })));
        prop_assert_eq!(cls, cells(&json(|o| tiles.write_cells(o, bbox, level))));
    }
}

#[test]
fn a_delta_from_the_empty_view_has_no_base_and_old_deltas_are_let_go() {
    let dots = BTreeMap::from([(1, (-74.0, 40.7, 0))]);
    let chain = Chain::default();
    let empty = view(0, &dots);
    let first = view(1, &dots);
    let d = chain.delta(&empty, &first);
    assert_eq!(d.base, None);
    let tick = json(|o| d.write(o, None, TickDrivers::Changes(None)));
    assert_eq!(tick["seq"], 1);
    assert!(
        tick.get("drivers").is_none(),
        "no changes without a base: {tick}"
    );
    let mut last = first;
    for seq in 2..2 + RECENT as u64 {
        let next = view(seq, &dots);
        assert_eq!(chain.delta(&last, &next).base, Some(last.seq));
        last = next;
    }
    assert_eq!(
        chain.inner.lock().len(),
        RECENT,
        "at most RECENT deltas kept"
    );
    assert!(
        !Arc::ptr_eq(&d, &chain.delta(&empty, &view(1, &dots))),
        "the oldest was let go"
    );
}

/// What a viewer holds of its drivers: the mode, the cell size, and the points or cells.
type Held = (String, Value, BTreeMap<String, Value>);

fn held(drivers: &Value) -> Held {
    let mode = drivers["mode"].as_str().unwrap().to_string();
    let items = if mode == "points" {
        points(&drivers["points"])
    } else {
        cells(&drivers["cells"])
    };
    (mode, drivers["cell_deg"].clone(), items)
}

/// The drivers a snapshot of `view` sends for `bbox` and `max_points`.
fn snapshot_drivers(view: &Arc<MapView>, bbox: Option<Bounds>, max_points: usize) -> Value {
    use crate::http::snapshot::{drivers_mode, write_drivers};
    let tiles = ViewTiles::new(view.clone(), &CELL_SIZES_DEG);
    let inside = tiles.count(bbox, max_points);
    let mode = drivers_mode(inside, bbox, view.bounds, max_points);
    json(|o| write_drivers(o, &tiles, bbox, mode, false))
}

proptest! {
    /// A stream whose viewport crosses its point budget (up and down, any number of times)
    /// switches mode with a whole set, and a viewer applying its ticks to the first view's
    /// snapshot holds the snapshot of the last view the stream sent, in the same mode.
    #[test]
    fn a_stream_switching_between_points_and_cells_stays_exact(
        start in prop::collection::vec(dot(), 0..120),
        steps in prop::collection::vec(step(), 1..10),
        corner in (-74.1..-73.95f64, 40.6..40.75f64),
        size in (0.01..0.2f64, 0.01..0.2f64),
        whole in any::<bool>(),
        max_points in 1usize..60,
        prebuilt in any::<bool>(),
    ) {
        use crate::http::stream::{Follow, StreamQuery};
        let mut dots: BTreeMap<u32, (f64, f64, u8)> =
            start.iter().map(|&(k, lng, lat, s)| (k, (lng, lat, s))).collect();
        let bbox = (!whole).then_some([corner.0, corner.1, corner.0 + size.0, corner.1 + size.1]);
        let chain = Chain::default();
        let first = view(1, &dots);
        // Counted from the first view's tiles (a snapshot built them) or by a walk: the
        // stream starts in the snapshot's mode either way.
        let tiles = prebuilt.then(|| ViewTiles::new(first.clone(), &CELL_SIZES_DEG));
        let q = StreamQuery { bbox, max_points, seq: None };
        let mut follow = Follow::new(q, first.clone(), tiles.as_ref());
        let mut holds = held(&snapshot_drivers(&first, bbox, max_points));
        let mut sent = first;
        for (i, s) in steps.iter().enumerate() {
            change(&mut dots, s);
            let next = view(i as u64 + 2, &dots);
            if !follow.due(&next) {
                continue; // a cells stream skips views between its once-a-second ticks
            }
            let tick = follow.tick(&chain, next.clone(), |_| Arc::default());
            let t: Value = serde_json::from_slice(&tick).unwrap();
            prop_assert_eq!(t["base"].as_u64(), Some(sent.seq));
            let d = &t["drivers"];
            if d["full"] == true {
                holds = held(d);
            } else {
                prop_assert_eq!(d["mode"].as_str(), Some(holds.0.as_str()), "{}", t);
                prop_assert_eq!(&d["cell_deg"], &holds.1);
                if holds.0 == "points" {
                    for gone in d["gone"].as_array().unwrap() {
                        holds.2.remove(gone.as_str().unwrap());
                    }
                    holds.2.extend(points(&d["upsert"]));
                } else {
                    for (k, v) in cells(&d["cells"]) {
                        if v[0] == 0 { holds.2.remove(&k); } else { holds.2.insert(k, v); }
                    }
                }
            }
            sent = next;
        }
        prop_assert_eq!(holds, held(&snapshot_drivers(&sent, bbox, max_points)));
    }
}

#[test]
fn streams_of_one_viewport_share_a_tick_and_others_get_their_own() {
    use crate::http::stream::{Follow, StreamQuery};
    let dots = BTreeMap::from([(1, (-74.0, 40.7, 0)), (2, (-73.99, 40.71, 1))]);
    let first = view(1, &dots);
    let mut moved = dots.clone();
    moved.insert(1, (-74.001, 40.7, 2));
    let next = view(2, &moved);
    let chain = Chain::default();
    let q = |bbox| StreamQuery {
        bbox,
        max_points: 100,
        seq: None,
    };
    let city = Some([-74.1, 40.6, -73.9, 40.8]);
    let ticks: Vec<Arc<[u8]>> = [city, city, Some([-74.05, 40.65, -73.95, 40.75])]
        .into_iter()
        .map(|bbox| {
            let mut f = Follow::new(q(bbox), first.clone(), None);
            f.tick(&chain, next.clone(), |_| Arc::default())
        })
        .collect();
    assert!(Arc::ptr_eq(&ticks[0], &ticks[1]), "one viewport, one tick");
    assert!(!Arc::ptr_eq(&ticks[0], &ticks[2]));
    let t: Value = serde_json::from_slice(&ticks[0]).unwrap();
    let moved: Vec<_> = points(&t["drivers"]["upsert"]).into_keys().collect();
    assert_eq!(moved, ["d-1"], "{t}");
}
