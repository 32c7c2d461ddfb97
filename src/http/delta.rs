//! What changed between two published map views, computed once per view and cut per viewer
//! on the stream (`stream.rs`), so an open map costs the bytes that changed in its viewport
//! instead of a whole snapshot four times a second.
//!
//! Why: re-fetching the viewport on every tick moved ~6 GB in a minute with 50 viewers of a
//! 100k-driver city and tripled the server's CPU per event, while only about 6 % of the drivers
//! move in a tick (4 s reports, 250 ms views). Here the dispatcher's views are compared once,
//! by the first stream that asks (a stream too slow to see a view asks from the last view it
//! sent, and the streams as slow as it share that delta too): drivers by a merge on their dense key (views list
//! drivers in key order), trips and offers by a merge on their ids, surge as a whole list
//! when it differs. Every changed item is JSON-encoded once; a viewer's tick then scans the
//! changed items (a few thousand, microseconds) and copies the bytes of those in its bbox.
//! Zoomed out, the changed cells of the viewer's cell size are counted once per size asked for.
//!
//! Exactness: a viewer that held the snapshot at `base` (the drivers inside its bbox) and
//! applies the delta (gone first, then upserts) holds the snapshot at `seq`. A driver that left
//! the bbox, went offline, or whose trip or offer ended, is in `gone`; cells are whole cells
//! (as in the snapshot) and a cell that emptied is sent with count 0.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::cells::{self, Changed, Key, TripCount};
use super::snapshot::{CELL_SIZES_DEG, OfferJson, SurgeJson, TripJson};
use super::tiles::{self, Bounds, close_array, r};
use crate::domain::LatLng;
use crate::engine::MapView;
use crate::engine::map_view::DriverDot;

/// Recent deltas kept for sharing: the one from the previous view (every points stream on
/// time wants it), the one across the last second (cells streams, see `stream.rs`) and a few
/// from older views (streams that were too slow to see a view).
const RECENT: usize = 8;

/// Distinct viewports whose ticks a delta keeps for the streams that share them.
const SHARED_TICKS: usize = 32;

/// A tick's viewport (its bounds' bits) and how it sends the drivers.
type TickKey = (Option<[u64; 4]>, Option<usize>);

/// The recent deltas every stream shares, keyed by the views they lead from and to.
#[derive(Debug, Default)]
pub(super) struct Chain {
    inner: Mutex<Vec<Arc<Delta>>>,
}

impl Chain {
    /// View number `seq`, if a recent delta leads from or to it.
    pub(super) fn view(&self, seq: u64) -> Option<Arc<MapView>> {
        let recent = self.inner.lock();
        recent.iter().rev().find_map(|d| {
            [&d.next, &d.prev]
                .into_iter()
                .find(|v| v.seq == seq)
                .cloned()
        })
    }

    /// The delta from `from` to `to`, made by the first stream that asks (the others share
    /// it). A stream normally asks from the view before; one that was too slow to see a view
    /// asks from the last it sent, so it never needs a snapshot for being slow.
    pub(super) fn delta(&self, from: &Arc<MapView>, to: &Arc<MapView>) -> Arc<Delta> {
        let mut recent = self.inner.lock();
        let key = (from.seq, to.seq);
        if let Some(d) = recent.iter().find(|d| (d.prev.seq, d.next.seq) == key) {
            return d.clone();
        }
        let before = recent
            .iter()
            .rev()
            .find(|d| d.next.seq == from.seq)
            .cloned();
        let delta = Arc::new(Delta::new(from.clone(), to.clone(), before.as_deref()));
        if recent.len() >= RECENT {
            recent.remove(0);
        }
        recent.push(delta.clone());
        delta
    }
}

/// An item of a changed list: its JSON, the JSON of its id alone, and the positions that
/// decide whether a viewport shows it now and showed it before.
#[derive(Debug, Clone)]
struct Item {
    /// `text[0]..text[1]`: the whole item; `text[2]..text[3]`: its id as a JSON string.
    text: [usize; 4],
    now: Option<[LatLng; 2]>,
    was: Option<[LatLng; 2]>,
}

/// The changed items of one list (drivers, trips or offers), encoded once.
#[derive(Debug, Default)]
struct Changes {
    items: Vec<Item>,
    text: Vec<u8>,
}

impl Changes {
    /// Adds an item that is `now` where it is (None: gone) and `was` where it was.
    fn push(
        &mut self,
        item: impl serde::Serialize,
        id: &str,
        now: Option<[LatLng; 2]>,
        was: Option<[LatLng; 2]>,
    ) {
        let start = self.text.len();
        if now.is_some() {
            // Plain structs and tuples of numbers and strings always serialise.
            let _ = serde_json::to_writer(&mut self.text, &item);
        }
        let id_at = self.text.len();
        let _ = serde_json::to_writer(&mut self.text, id);
        self.items.push(Item {
            text: [start, id_at, id_at, self.text.len()],
            now,
            was,
        });
    }

    /// Writes `"upsert":[...],"gone":[...]}` for the viewport `inside`.
    fn write(&self, out: &mut Vec<u8>, inside: &dyn Fn(&[LatLng; 2]) -> bool) {
        let shows = |p: &Option<[LatLng; 2]>| p.as_ref().is_some_and(inside);
        out.extend_from_slice(br#""upsert":["#);
        let start = out.len();
        for i in self.items.iter().filter(|i| shows(&i.now)) {
            out.extend_from_slice(&self.text[i.text[0]..i.text[1]]);
            out.push(b',');
        }
        close_array(out, start);
        out.extend_from_slice(br#","gone":["#);
        let start = out.len();
        for i in self
            .items
            .iter()
            .filter(|i| !shows(&i.now) && shows(&i.was))
        {
            out.extend_from_slice(&self.text[i.text[2]..i.text[3]]);
            out.push(b',');
        }
        close_array(out, start);
        out.push(b'}');
    }
}

/// Counts per cell `(row, col)`: drivers `(count, available)`, or trips.
type Counts<V> = Arc<FxHashMap<Key, V>>;

/// Trips and offers that changed, and the surge list (with centres) when it changed.
type Lists = (Changes, Changes, Option<Vec<(LatLng, SurgeJson)>>);

/// How a tick sends the drivers.
pub(super) enum TickDrivers<'a> {
    /// What changed: points (`None`) or the cells of size index `level` (`Some(level)`).
    Changes(Option<usize>),
    /// The viewport's whole set in the newer view, from its tiles, in the mode given (as
    /// the snapshot sends it, marked `"full":true`): the stream changed mode.
    Whole(&'a super::tiles::ViewTiles, Option<usize>),
}

/// From the view at `base` to the view at `seq`.
#[derive(Debug)]
pub(super) struct Delta {
    /// The view this applies to; `None` from the empty view before the first publish (then
    /// only a viewer whose snapshot is at `seq` goes on without a snapshot).
    pub(super) base: Option<u64>,
    prev: Arc<MapView>,
    /// The view it leads to.
    pub(super) next: Arc<MapView>,
    drivers: OnceLock<Changes>,
    lists: OnceLock<Lists>,
    /// Ticks written from this delta, by viewport and mode: viewers of the same viewport
    /// share the bytes (at most [`SHARED_TICKS`]).
    written: Mutex<Vec<(TickKey, Arc<[u8]>)>>,
    /// Per entry of `CELL_SIZES_DEG`, built when a viewer of that size asks: the drivers'
    /// changed cells, and the trips'.
    cells: Vec<OnceLock<Changed<(u32, u32)>>>,
    trip_cells: Vec<OnceLock<Changed<TripCount>>>,
    /// The previous delta's cell counts of the view this one starts from, per size.
    prev_counts: Vec<Option<Counts<(u32, u32)>>>,
    prev_trip_counts: Vec<Option<Counts<TripCount>>>,
}

impl Delta {
    /// From `prev` to `next`; `before` is a delta that led to `prev` (its cell counts of
    /// `prev` are reused).
    fn new(prev: Arc<MapView>, next: Arc<MapView>, before: Option<&Delta>) -> Delta {
        let sizes = CELL_SIZES_DEG.len();
        let prev_counts = (0..sizes)
            .map(|l| before.and_then(|b| b.cells[l].get().map(|c| c.counts.clone())))
            .collect();
        let prev_trip_counts = (0..sizes)
            .map(|l| before.and_then(|b| b.trip_cells[l].get().map(|c| c.counts.clone())))
            .collect();
        // The empty view before the first publish is no view a viewer holds.
        let base = (prev.seq > 0).then_some(prev.seq);
        Delta {
            base,
            prev,
            next,
            drivers: OnceLock::new(),
            lists: OnceLock::new(),
            written: Mutex::default(),
            cells: (0..sizes).map(|_| OnceLock::new()).collect(),
            trip_cells: (0..sizes).map(|_| OnceLock::new()).collect(),
            prev_counts,
            prev_trip_counts,
        }
    }

    /// How many more drivers are inside `bbox` in the newer view than in the older one.
    pub(super) fn count_change(&self, bbox: Bounds) -> isize {
        let inside = |p: &Option<[LatLng; 2]>| {
            p.is_some_and(|[p, _]| {
                (bbox[0]..=bbox[2]).contains(&p.lng_deg())
                    && (bbox[1]..=bbox[3]).contains(&p.lat_deg())
            })
        };
        let drivers = self.drivers.get_or_init(|| self.diff_drivers());
        drivers
            .items
            .iter()
            .map(|i| isize::from(inside(&i.now)) - isize::from(inside(&i.was)))
            .sum()
    }

    /// The tick of [`Delta::write`] with the drivers' changes as `level` says (points
    /// `None`), written once per viewport and shared by the streams that have it.
    pub(super) fn tick(&self, bbox: Option<Bounds>, level: Option<usize>) -> Arc<[u8]> {
        let key = (bbox.map(|b| b.map(f64::to_bits)), level);
        if let Some((_, t)) = self.written.lock().iter().find(|(k, _)| *k == key) {
            return t.clone();
        }
        let mut out = Vec::with_capacity(16 * 1024);
        self.write(&mut out, bbox, TickDrivers::Changes(level));
        let tick: Arc<[u8]> = out.into();
        let mut written = self.written.lock();
        if written.len() < SHARED_TICKS {
            written.push((key, tick.clone()));
        }
        tick
    }

    /// Writes this delta's tick for one viewer: the head, and with a base the changes inside
    /// `bbox` (everything with `None`): drivers as `drivers` says, then trips, offers, surge.
    pub(super) fn write(&self, out: &mut Vec<u8>, bbox: Option<Bounds>, drivers: TickDrivers<'_>) {
        let v = &self.next;
        let head = serde_json::json!({
            "seq": v.seq, "base": self.base, "at_ms": v.at_ms, "offset": v.offset,
            "stats": super::snapshot::StatsJson::from(&v.stats),
        });
        let _ = serde_json::to_writer(&mut *out, &head);
        if self.base.is_none() {
            return;
        }
        out.pop();
        let inside = |p: LatLng| {
            bbox.is_none_or(|b| {
                (b[0]..=b[2]).contains(&p.lng_deg()) && (b[1]..=b[3]).contains(&p.lat_deg())
            })
        };
        // Trips and offers go as the drivers do: one by one with points, counted into the
        // same cells with cells (so a zoomed-out tick is bounded by its cells).
        match drivers {
            TickDrivers::Whole(tiles, mode) => {
                out.extend_from_slice(br#","drivers":"#);
                super::snapshot::write_drivers(out, tiles, bbox, mode, true);
                match mode {
                    None => self.write_whole_lists(out, &inside),
                    Some(level) => {
                        write_trip_cells_head(out, level, true);
                        tiles.write_trip_cells(out, bbox, level);
                        out.push(b'}');
                    }
                }
            }
            TickDrivers::Changes(None) => {
                out.extend_from_slice(br#","drivers":{"mode":"points","#);
                self.drivers
                    .get_or_init(|| self.diff_drivers())
                    .write(out, &|p| inside(p[0]));
                let (trips, offers, _) = self.lists.get_or_init(|| self.diff_lists());
                out.extend_from_slice(br#","trips":{"#);
                trips.write(out, &|p| inside(p[0]));
                out.extend_from_slice(br#","offers":{"#);
                offers.write(out, &|p| inside(p[0]) || inside(p[1]));
            }
            TickDrivers::Changes(Some(level)) => {
                let cells = self.cells[level].get_or_init(|| {
                    self.diff_cells(level, &self.prev_counts[level], tiles::cell_counts)
                });
                out.extend_from_slice(br#","drivers":{"mode":"cells","cell_deg":"#);
                let _ = serde_json::to_writer(&mut *out, &cells.size);
                out.extend_from_slice(br#","cells":"#);
                cells.write(out, bbox);
                out.push(b'}');
                let trips = self.trip_cells[level].get_or_init(|| {
                    self.diff_cells(level, &self.prev_trip_counts[level], cells::trip_counts)
                });
                write_trip_cells_head(out, level, false);
                trips.write(out, bbox);
                out.push(b'}');
            }
        }
        let (_, _, surge) = self.lists.get_or_init(|| self.diff_lists());
        if let Some(surge) = surge {
            let shown: Vec<_> = surge
                .iter()
                .filter(|(c, _)| inside(*c))
                .map(|(_, s)| s)
                .collect();
            out.extend_from_slice(br#","surge":"#);
            let _ = serde_json::to_writer(&mut *out, &shown);
        }
        out.push(b'}');
    }

    /// `,"trips":{"full":true,"upsert":[...],"gone":[]}` and the same for offers: every trip
    /// and offer of the newer view `inside` shows (a stream that switched to points).
    fn write_whole_lists(&self, out: &mut Vec<u8>, inside: &dyn Fn(LatLng) -> bool) {
        let v = &self.next;
        let trips: Vec<_> = v
            .trips
            .iter()
            .filter(|t| inside(t.pickup))
            .map(TripJson::from)
            .collect();
        out.extend_from_slice(br#","trips":{"full":true,"upsert":"#);
        let _ = serde_json::to_writer(&mut *out, &trips);
        out.extend_from_slice(br#","gone":[]},"offers":{"full":true,"upsert":"#);
        let offers: Vec<_> = v
            .offers
            .iter()
            .filter(|o| inside(o.from) || inside(o.to))
            .map(OfferJson::from)
            .collect();
        let _ = serde_json::to_writer(&mut *out, &offers);
        out.extend_from_slice(br#","gone":[]}"#);
    }

    /// Drivers whose position or state changed, came online or went offline: one merge over
    /// both views' drivers, which are in key order.
    fn diff_drivers(&self) -> Changes {
        let (a, b) = (&self.prev.drivers, &self.next.drivers);
        let mut out = Changes::default();
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let (ka, kb) = (a.get(i).map(|d| d.key), b.get(j).map(|d| d.key));
            match (ka, kb) {
                (Some(x), Some(y)) if x == y => {
                    let (p, n) = (&a[i], &b[j]);
                    if p.position != n.position || p.state != n.state {
                        out.push(
                            item(n),
                            n.id.as_str(),
                            Some([n.position; 2]),
                            Some([p.position; 2]),
                        );
                    }
                    i += 1;
                    j += 1;
                }
                (Some(x), y) if y.is_none_or(|y| x < y) => {
                    let p = &a[i];
                    out.push((), p.id.as_str(), None, Some([p.position; 2]));
                    i += 1;
                }
                _ => {
                    let n = &b[j];
                    out.push(item(n), n.id.as_str(), Some([n.position; 2]), None);
                    j += 1;
                }
            }
        }
        out
    }

    /// Cells of size index `level` whose counts (by `count`) changed, all zero when emptied;
    /// `before` holds the older view's counts when the previous delta made them.
    fn diff_cells<V: cells::Counts>(
        &self,
        level: usize,
        before: &Option<Counts<V>>,
        count: fn(&MapView, f64) -> FxHashMap<Key, V>,
    ) -> Changed<V> {
        let size = CELL_SIZES_DEG[level];
        let before = before
            .clone()
            .unwrap_or_else(|| Arc::new(count(&self.prev, size)));
        Changed::new(size, &before, Arc::new(count(&self.next, size)))
    }

    /// Trips and offers that are new, changed or ended (merges on their sorted ids), and
    /// the surge list when it differs.
    fn diff_lists(&self) -> Lists {
        let (a, b) = (&self.prev, &self.next);
        let trips = changed_by_id(
            &a.trips,
            &b.trips,
            |t| t.trip,
            |p, n| p.status == n.status && p.driver == n.driver,
            TripJson::from,
            |t| [t.pickup; 2],
        );
        let offers = changed_by_id(
            &a.offers,
            &b.offers,
            |o| o.offer,
            |p, n| p.from == n.from && p.expires_at_ms == n.expires_at_ms,
            OfferJson::from,
            |o| [o.from, o.to],
        );
        let key = |v: &MapView| -> Vec<(u64, u64)> {
            v.surge
                .iter()
                .map(|c| (u64::from(c.cell), c.multiplier.to_bits()))
                .collect()
        };
        let surge = (key(a) != key(b)).then(|| super::snapshot::surge_items(b));
        (trips, offers, surge)
    }
}

/// Writes `,"trip_cells":{"cell_deg":..,"cells":` (with `"full":true` first when `full`).
fn write_trip_cells_head(out: &mut Vec<u8>, level: usize, full: bool) {
    out.extend_from_slice(if full {
        br#","trip_cells":{"full":true,"cell_deg":"#
    } else {
        br#","trip_cells":{"cell_deg":"#
    });
    let _ = serde_json::to_writer(&mut *out, &CELL_SIZES_DEG[level]);
    out.extend_from_slice(br#","cells":"#);
}

/// A driver as a point: `[lng, lat, state, id]`.
fn item(d: &DriverDot) -> (f64, f64, u8, &str) {
    (
        r(d.position.lng_deg()),
        r(d.position.lat_deg()),
        d.state as u8,
        d.id.as_str(),
    )
}

/// The items of two lists sorted by `id` that are new, ended, or not `same` in both: each
/// encoded by `json` (ended ones by their id alone) with the positions `at` gives.
fn changed_by_id<'a, T, K: Ord + std::fmt::Display, J: serde::Serialize>(
    a: &'a [T],
    b: &'a [T],
    id: impl Fn(&T) -> K,
    same: impl Fn(&T, &T) -> bool,
    json: impl Fn(&'a T) -> J,
    at: impl Fn(&T) -> [LatLng; 2],
) -> Changes {
    let mut out = Changes::default();
    merge(a, b, &id, |p, n| match (p, n) {
        (Some(p), Some(n)) if same(p, n) => {}
        _ => {
            let key = n.or(p).map(|x| id(x).to_string()).unwrap_or_default();
            out.push(n.map(&json), &key, n.map(&at), p.map(&at));
        }
    });
    out
}

/// Calls `f(before, after)` for every id in either sorted list.
fn merge<'a, T, K: Ord>(
    a: &'a [T],
    b: &'a [T],
    key: impl Fn(&T) -> K,
    mut f: impl FnMut(Option<&'a T>, Option<&'a T>),
) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i).map(&key), b.get(j).map(&key)) {
            (Some(x), Some(y)) if x == y => {
                f(Some(&a[i]), Some(&b[j]));
                i += 1;
                j += 1;
            }
            (Some(x), y) if y.as_ref().is_none_or(|y| x < *y) => {
                f(Some(&a[i]), None);
                i += 1;
            }
            _ => {
                f(None, Some(&b[j]));
                j += 1;
            }
        }
    }
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
