//! Applying a chain of deltas to the first view's snapshot gives the last view's snapshot, for
//! points and for cells, whatever the bbox and whatever moved, changed state, came or went.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::domain::ExternalId;
use crate::engine::map_view::DotState;
use crate::http::snapshot::CELL_SIZES_DEG;
use crate::http::tiles::ViewTiles;

/// A driver of a test view: `(key, lng, lat, state)`.
type Dot = (u32, f64, f64, u8);

fn view(seq: u64, dots: &BTreeMap<u32, (f64, f64, u8)>) -> Arc<MapView> {
    let drivers: Vec<DriverDot> = dots
        .iter()
        .map(|(&key, &(lng, lat, state))| DriverDot {
            key,
            position: LatLng::new(lat, lng).unwrap(),
            state: [DotState::Available, DotState::Offered, DotState::OnTrip]
                [usize::from(state % 3)],
            id: ExternalId::new("driver_id", &format!("d-{key}")).unwrap(),
        })
        .collect();
    let bounds = (!drivers.is_empty()).then(|| {
        drivers
            .iter()
            .fold([f64::MAX, f64::MAX, f64::MIN, f64::MIN], |b, d| {
                let (lng, lat) = (d.position.lng_deg(), d.position.lat_deg());
                [b[0].min(lng), b[1].min(lat), b[2].max(lng), b[3].max(lat)]
            })
    });
    Arc::new(MapView {
        seq,
        at_ms: seq * 250,
        bounds,
        drivers,
        ..MapView::default()
    })
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
        steps in prop::collection::vec(step(), 1..4),
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
        prop_assert!(chain.delta_to(&first).is_some_and(|d| d.base.is_none()));
        let tiles = ViewTiles::new(first.clone(), &CELL_SIZES_DEG);
        let mut pts = points(&json(|o| { tiles.write_points(o, bbox, usize::MAX); }));
        let mut cls = cells(&json(|o| tiles.write_cells(o, bbox, level)));
        let mut last = first;
        for (i, s) in steps.iter().enumerate() {
            change(&mut dots, s);
            let next = view(i as u64 + 2, &dots);
            let delta = chain.delta_to(&next).unwrap();
            prop_assert_eq!(delta.base, Some(last.seq));
            // A second viewer of the same view shares the delta.
            prop_assert!(Arc::ptr_eq(&delta, &chain.delta_to(&next).unwrap()));
            let d = json(|o| delta.write(o, bbox, None));
            prop_assert_eq!(&d["seq"], &Value::from(next.seq));
            for gone in d["drivers"]["gone"].as_array().unwrap() {
                pts.remove(gone.as_str().unwrap());
            }
            pts.extend(points(&d["drivers"]["upsert"]));
            let c = json(|o| delta.write(o, bbox, Some(level)));
            prop_assert_eq!(&c["drivers"]["cell_deg"], &Value::from(CELL_SIZES_DEG[level]));
            for (k, v) in cells(&c["drivers"]["cells"]) {
                if v[0] == 0 { cls.remove(&k); } else { cls.insert(k, v); }
            }
            last = next;
        }
        let tiles = ViewTiles::new(last.clone(), &CELL_SIZES_DEG);
        prop_assert_eq!(pts, points(&json(|o| { tiles.write_points(o, bbox, usize::MAX); })));
        prop_assert_eq!(cls, cells(&json(|o| tiles.write_cells(o, bbox, level))));
    }
}

#[test]
fn a_view_nobody_streamed_breaks_the_chain() {
    let dots = BTreeMap::from([(1, (-74.0, 40.7, 0))]);
    let chain = Chain::default();
    assert!(
        chain.delta_to(&view(0, &dots)).is_none(),
        "the empty view before any publish"
    );
    chain.delta_to(&view(1, &dots)).unwrap();
    let skipped = chain.delta_to(&view(3, &dots)).unwrap();
    assert_eq!(skipped.base, None);
    let tick = json(|o| skipped.write(o, None, None));
    assert_eq!(tick["seq"], 3);
    assert!(
        tick.get("drivers").is_none(),
        "no changes without a base: {tick}"
    );
    assert!(
        chain.delta_to(&view(2, &dots)).is_none(),
        "older than the newest compared"
    );
    assert_eq!(chain.delta_to(&view(4, &dots)).unwrap().base, Some(3));
}
