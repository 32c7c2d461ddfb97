//! `GET /api/map/snapshot`: the latest [`MapView`] cut to a viewport, as JSON; and
//! `GET /api/map/roads`.
//!
//! Drivers inside the bbox are sent one by one up to `max_points`, and beyond that as counts
//! per grid cell (the page draws aggregates when zoomed out, so 100k drivers stay cheap to
//! send and draw); trips and offers go the same way as the drivers, one by one or counted into
//! the same cells (`trip_cells`), so a whole-city snapshot is bounded by its cells, not by the
//! city's open trips. A built answer is kept for the view it was cut from, so viewers looking at
//! the same viewport between two publishes share one build.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Serialize;

use super::tiles::{Bounds, ViewTiles, r};
use super::{ApiError, AppState, bad_request};
use crate::domain::LatLng;
use crate::engine::MapView;
use crate::engine::map_view::{OfferLine, TripDot};
use crate::engine::records::Stats;

/// Drivers sent one by one unless `max_points` says otherwise.
const DEFAULT_MAX_POINTS: usize = 20_000;
/// The largest `max_points` accepted.
const MAX_POINTS_LIMIT: usize = 200_000;
/// Aim for at most this many cells when aggregating.
const TARGET_CELLS: f64 = 5_000.0;
/// Cell sizes, degrees, from fine to coarse.
pub(super) static CELL_SIZES_DEG: [f64; 14] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Built answers kept for the current view.
const CACHE_ENTRIES: usize = 32;

/// A viewport: `[min_lng, min_lat, max_lng, max_lat]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Bbox(pub(super) [f64; 4]);

impl Bbox {
    fn contains(&self, p: LatLng) -> bool {
        let [min_lng, min_lat, max_lng, max_lat] = self.0;
        (min_lng..=max_lng).contains(&p.lng_deg()) && (min_lat..=max_lat).contains(&p.lat_deg())
    }
}

/// Parses `bbox=minLng,minLat,maxLng,maxLat`.
pub(super) fn parse_bbox(raw: &str) -> Result<Bbox, ApiError> {
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    let expected = "bbox must be minLng,minLat,maxLng,maxLat in degrees";
    if parts.len() != 4 {
        return Err(bad_request(format!(
            "{expected}; got {} value(s) in {raw:?}",
            parts.len()
        )));
    }
    let mut v = [0.0; 4];
    for (slot, part) in v.iter_mut().zip(&parts) {
        *slot = part
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| bad_request(format!("{expected}; {part:?} is not a number")))?;
    }
    let [min_lng, min_lat, max_lng, max_lat] = v;
    let lng_ok = |x: f64| (-180.0..=180.0).contains(&x);
    let lat_ok = |x: f64| (-90.0..=90.0).contains(&x);
    if !(lng_ok(min_lng) && lng_ok(max_lng) && lat_ok(min_lat) && lat_ok(max_lat)) {
        return Err(bad_request(format!(
            "{expected}; longitudes must be within -180..=180 and latitudes within -90..=90, \
             got {raw:?}"
        )));
    }
    if min_lng >= max_lng || min_lat >= max_lat {
        return Err(bad_request(format!(
            "{expected}; the minimum must be below the maximum on both axes, got {raw:?}"
        )));
    }
    Ok(Bbox(v))
}

/// A query string that does not even decode (bad percent-escapes and the like).
fn unreadable(_: QueryRejection) -> ApiError {
    bad_request(
        "the query string does not decode; expected bbox=minLng,minLat,maxLng,maxLat&max_points=N",
    )
}

/// The query of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct SnapshotQuery {
    pub(super) bbox: Option<Bbox>,
    pub(super) max_points: usize,
}

fn parse_query(params: &HashMap<String, String>) -> Result<SnapshotQuery, ApiError> {
    if let Some(unknown) = params.keys().find(|k| *k != "bbox" && *k != "max_points") {
        return Err(bad_request(format!(
            "unknown parameter {unknown:?}; a snapshot takes bbox and max_points"
        )));
    }
    let bbox = params.get("bbox").map(|b| parse_bbox(b)).transpose()?;
    let max_points = parse_max_points(params.get("max_points"))?;
    Ok(SnapshotQuery { bbox, max_points })
}

/// `max_points=N` of a snapshot or a stream: at most this many drivers are sent one by one;
/// [`DEFAULT_MAX_POINTS`] when absent.
pub(super) fn parse_max_points(raw: Option<&String>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(DEFAULT_MAX_POINTS),
        Some(raw) => raw
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_POINTS_LIMIT).contains(n))
            .ok_or_else(|| {
                bad_request(format!(
                    "max_points must be a whole number from 1 to {MAX_POINTS_LIMIT}, got {raw:?}"
                ))
            }),
    }
}

/// How a viewport's drivers are sent, the one rule of snapshots and streams: one by one
/// (`None`) when at most `max_points` are inside, otherwise as cells of
/// `CELL_SIZES_DEG[level]` (`Some(level)`), sized so the viewport (the view's `bounds` when
/// there is no bbox) holds about `min(5,000, max_points)` of them.
pub(super) fn drivers_mode(
    inside: usize,
    bbox: Option<Bounds>,
    bounds: Option<Bounds>,
    max_points: usize,
) -> Option<usize> {
    if inside <= max_points {
        return None;
    }
    let [min_lng, min_lat, max_lng, max_lat] = bbox.or(bounds).unwrap_or_default();
    let area = (max_lng - min_lng).max(0.0) * (max_lat - min_lat).max(0.0);
    let wanted = (area / TARGET_CELLS.min(max_points as f64)).sqrt();
    Some(
        CELL_SIZES_DEG
            .iter()
            .position(|&c| c >= wanted)
            .unwrap_or(CELL_SIZES_DEG.len() - 1),
    )
}

/// Writes a viewport's drivers as the snapshot and a stream's mode-changing tick send them:
/// `{"mode":"points","points":[...]}` or `{"mode":"cells","cell_deg":..,"cells":[...]}`, with
/// `"full":true` first when `full`.
pub(super) fn write_drivers(
    out: &mut Vec<u8>,
    tiles: &ViewTiles,
    bbox: Option<Bounds>,
    mode: Option<usize>,
    full: bool,
) {
    out.extend_from_slice(if full { br#"{"full":true,"# } else { b"{" });
    match mode {
        None => {
            out.extend_from_slice(br#""mode":"points","points":"#);
            tiles.write_points(out, bbox, usize::MAX);
        }
        Some(level) => {
            out.extend_from_slice(br#""mode":"cells","cell_deg":"#);
            let _ = serde_json::to_writer(&mut *out, &CELL_SIZES_DEG[level]);
            out.extend_from_slice(br#","cells":"#);
            tiles.write_cells(out, bbox, level);
        }
    }
    out.push(b'}');
}

/// Built answers for one view, and that view's tile index.
#[derive(Debug, Default)]
pub(super) struct Cache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    /// Identity of the view the entries were cut from, its number, and the view.
    view: usize,
    seq: u64,
    current: Option<Arc<MapView>>,
    /// Its drivers sorted into tiles, built by the first snapshot that needs them.
    tiles: Arc<OnceLock<ViewTiles>>,
    entries: Vec<(SnapshotQuery, axum::body::Bytes)>,
}

impl Cache {
    /// The tile index of `view`, shared with the snapshots of that view when it is the
    /// newest asked for (an older view gets an index of its own).
    pub(super) fn tiles(&self, view: &Arc<MapView>) -> Arc<OnceLock<ViewTiles>> {
        let id = Arc::as_ptr(view) as usize;
        let mut c = self.inner.lock();
        if c.view == id {
            return c.tiles.clone();
        }
        if view.seq < c.seq {
            return Arc::default();
        }
        c.view = id;
        c.seq = view.seq;
        c.current = Some(view.clone());
        c.entries.clear();
        c.tiles = Arc::default();
        c.tiles.clone()
    }
}

impl Cache {
    /// The view the latest snapshots were cut from, if it is view number `seq`.
    pub(super) fn view(&self, seq: u64) -> Option<Arc<MapView>> {
        let c = self.inner.lock();
        c.current.as_ref().filter(|v| v.seq == seq).cloned()
    }
}

/// `GET /api/map/snapshot?bbox=...&max_points=N`.
pub(super) async fn snapshot(
    State(s): State<AppState>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = parse_query(&params.map_err(unreadable)?.0)?;
    let view = s.engine.fresh_map_view().await;
    let id = Arc::as_ptr(&view) as usize;
    let tiles = s.snapshots.tiles(&view);
    let cached = {
        let c = s.snapshots.inner.lock();
        let cached = c.entries.iter().find(|(q, _)| c.view == id && *q == query);
        cached.map(|(_, body)| body.clone())
    };
    let body = match cached {
        Some(body) => body,
        None => {
            let tiles = tiles.get_or_init(|| ViewTiles::new(view.clone(), &CELL_SIZES_DEG));
            let body = axum::body::Bytes::from(build(&view, tiles, &query));
            let mut c = s.snapshots.inner.lock();
            if c.view == id {
                if c.entries.len() >= CACHE_ENTRIES {
                    c.entries.remove(0);
                }
                c.entries.push((query, body.clone()));
            }
            body
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn point(p: LatLng) -> [f64; 2] {
    [r(p.lng_deg()), r(p.lat_deg())]
}

#[derive(Serialize)]
pub(super) struct StatsJson {
    drivers_online: u64,
    drivers_available: u64,
    drivers_offered: u64,
    drivers_on_trip: u64,
    trips_open: u64,
    pending_offers: u64,
}

impl From<&Stats> for StatsJson {
    fn from(s: &Stats) -> Self {
        StatsJson {
            drivers_online: s.drivers_available + s.drivers_offered + s.drivers_on_trip,
            drivers_available: s.drivers_available,
            drivers_offered: s.drivers_offered,
            drivers_on_trip: s.drivers_on_trip,
            trips_open: s.open_trips,
            pending_offers: s.pending_offers,
        }
    }
}

/// A trip as the snapshot and the stream's deltas send it.
#[derive(Serialize)]
pub(super) struct TripJson<'a> {
    trip: String,
    status: &'static str,
    rider: &'a str,
    pickup: [f64; 2],
    dropoff: [f64; 2],
    driver: Option<&'a str>,
    requested_at_ms: u64,
}

/// An offer as the snapshot and the stream's deltas send it.
#[derive(Serialize)]
pub(super) struct OfferJson<'a> {
    offer: String,
    trip: String,
    driver: &'a str,
    from: [f64; 2],
    to: [f64; 2],
    expires_at_ms: u64,
}

/// A surge cell as the snapshot and the stream's deltas send it.
#[derive(Serialize, Debug)]
pub(super) struct SurgeJson {
    cell: String,
    multiplier: f64,
    boundary: Vec<[f64; 2]>,
}

impl<'a> From<&'a TripDot> for TripJson<'a> {
    fn from(t: &'a TripDot) -> Self {
        TripJson {
            trip: t.trip.to_string(),
            status: super::trips::status_name(t.status),
            rider: t.rider.as_str(),
            pickup: point(t.pickup),
            dropoff: point(t.dropoff),
            driver: t.driver.as_ref().map(|d| d.as_str()),
            requested_at_ms: t.requested_at_ms,
        }
    }
}

impl<'a> From<&'a OfferLine> for OfferJson<'a> {
    fn from(o: &'a OfferLine) -> Self {
        OfferJson {
            offer: o.offer.to_string(),
            trip: o.trip.to_string(),
            driver: o.driver.as_str(),
            from: point(o.from),
            to: point(o.to),
            expires_at_ms: o.expires_at_ms,
        }
    }
}

/// The view's surge cells with their centres (the bbox filter), most surging first.
pub(super) fn surge_items(view: &MapView) -> Vec<(LatLng, SurgeJson)> {
    view.surge
        .iter()
        .filter_map(|c| {
            let centre = h3o::LatLng::from(c.cell);
            let centre = LatLng::new(centre.lat(), centre.lng()).ok()?;
            let json = SurgeJson {
                cell: c.cell.to_string(),
                multiplier: (c.multiplier * 100.0).round() / 100.0,
                boundary: c
                    .cell
                    .boundary()
                    .iter()
                    .map(|v| [r(v.lng()), r(v.lat())])
                    .collect(),
            };
            Some((centre, json))
        })
        .collect()
}

/// Everything of a snapshot but the drivers, in the order the JSON has them.
#[derive(Serialize)]
struct Head {
    seq: u64,
    at_ms: u64,
    offset: u64,
    stats: StatsJson,
    bounds: Option<[f64; 4]>,
}

/// The JSON answer for one query of one view: the head, the drivers spliced from the view's
/// tiles (points, or cells when more than `max_points` are in view), then the trips and offers
/// inside the bbox (with cells, their counts per cell instead) and the surge.
pub(super) fn build(view: &MapView, tiles: &ViewTiles, q: &SnapshotQuery) -> Vec<u8> {
    let inside = |p: LatLng| q.bbox.is_none_or(|b| b.contains(p));
    let bbox = q.bbox.map(|b| b.0);
    let head = Head {
        seq: view.seq,
        at_ms: view.at_ms,
        offset: view.offset,
        stats: StatsJson::from(&view.stats),
        bounds: view.bounds.map(|b| b.map(r)),
    };
    let mut out = Vec::with_capacity(64 * 1024);
    // Plain structs of numbers and strings always serialise.
    let _ = serde_json::to_writer(&mut out, &head);
    out.pop(); // the head's closing brace: the drivers and the lists follow
    out.extend_from_slice(br#","drivers":"#);
    let mode = drivers_mode(
        tiles.count(bbox, q.max_points),
        bbox,
        view.bounds,
        q.max_points,
    );
    write_drivers(&mut out, tiles, bbox, mode, false);
    match mode {
        None => {
            let trips: Vec<_> = view
                .trips
                .iter()
                .filter(|t| inside(t.pickup))
                .map(TripJson::from)
                .collect();
            out.extend_from_slice(br#","trips":"#);
            let _ = serde_json::to_writer(&mut out, &trips);
            let offers: Vec<_> = view
                .offers
                .iter()
                .filter(|o| inside(o.from) || inside(o.to))
                .map(OfferJson::from)
                .collect();
            out.extend_from_slice(br#","offers":"#);
            let _ = serde_json::to_writer(&mut out, &offers);
        }
        // Beyond the point budget trips and offers are counted into the drivers' cells.
        Some(level) => {
            out.extend_from_slice(br#","trip_cells":{"cell_deg":"#);
            let _ = serde_json::to_writer(&mut out, &CELL_SIZES_DEG[level]);
            out.extend_from_slice(br#","cells":"#);
            tiles.write_trip_cells(&mut out, bbox, level);
            out.push(b'}');
        }
    }
    let surge: Vec<_> = surge_items(view)
        .into_iter()
        .filter(|(centre, _)| inside(*centre))
        .map(|(_, s)| s)
        .collect();
    out.extend_from_slice(br#","surge":"#);
    let _ = serde_json::to_writer(&mut out, &surge);
    out.push(b'}');
    out
}

/// `GET /api/map/roads?bbox=...`: the road graph's segments. No road map is loaded in this
/// build, so after checking the bbox it answers 404 (the page then draws a lat/lng grid).
pub(super) async fn roads(
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    if let Some(raw) = params.map_err(unreadable)?.get("bbox") {
        parse_bbox(raw)?;
    }
    Err(ApiError(StatusCode::NOT_FOUND, "no road map loaded".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbox_parsing_refuses_what_a_person_would_get_wrong() {
        assert_eq!(
            parse_bbox("-74.1,40.6,-73.8,40.9").unwrap(),
            Bbox([-74.1, 40.6, -73.8, 40.9])
        );
        for bad in [
            "",
            "1,2,3",
            "a,b,c,d",
            "-73.8,40.6,-74.1,40.9",
            "0,0,0,0",
            "-200,0,10,10",
            "0,-95,10,10",
            "NaN,0,1,1",
        ] {
            let e = parse_bbox(bad).unwrap_err();
            assert_eq!(e.0, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.1.contains("bbox must be"), "{bad}: {}", e.1);
        }
    }
}
