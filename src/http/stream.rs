//! `GET /api/map/stream?bbox=...&max_points=N`: Server-Sent Events for the page. A `tick`
//! carrying the counters and what changed in the viewer's bbox since the view its last tick
//! led to (`delta.rs`: drivers as points, or the changed cells when more than `max_points`
//! drivers are inside, the snapshot's rule; trips, offers, surge), and for a points stream a
//! `trip` or `offer` event per change of a trip whose pickup is inside the bbox, from the
//! shared feed of the trip follower.
//!
//! Why cut this way: 50 viewers of a 1,000 requests/s city each got every trip and offer
//! change of the whole city (thousands of SSE events a second per viewer) and points ticks of
//! thousands of moved drivers; a zoomed-out viewer now gets density (cells), once a second
//! ([`CELLS_EVERY`] views), its trips and offers counted into the same cells (`trip_cells`),
//! and holds no receiver of the trip feed, so the city's trip rate costs it nothing. Streams
//! of the same viewport share one written tick per view.
//!
//! Each tick carries `seq` (the view it leads to) and `base` (the view it applies to): a viewer
//! applies it when its own view is `base`, and names its view when it opens the stream
//! (`seq=`), so the first tick leads from it. When the count inside the bbox crosses
//! `max_points` the stream switches mode and that tick carries the whole set in the new mode
//! (`"full":true`, as the snapshot has it). A slow viewer never makes the server queue: ticks
//! are conflated by the view's `watch` channel, and a stream that did not see a view sends one
//! tick from the last view it sent to the newest (one view held per stream). A stream that fell
//! more than its buffer behind on the trip feed gets `lagged` with the number of changes it
//! missed: the next tick carries their end state (trips and offers), so no snapshot is needed.
//! Each stream ends when the server drains.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{Stream, StreamExt};
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::WatchStream;

use super::delta::{Chain, TickDrivers};
use super::snapshot::{CELL_SIZES_DEG, drivers_mode, parse_bbox, parse_max_points};
use super::tiles::{Bounds, ViewTiles};
use super::{ApiError, AppState, bad_request};
use crate::domain::LatLng;
use crate::engine::MapView;

/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A stream sending cells ticks once per this many views (once a second): density moves
/// slowly, and whole-city viewers are the ones whose ticks are big.
pub(super) const CELLS_EVERY: u64 = 4;

/// What one viewer's stream is cut to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct StreamQuery {
    /// The viewport; everything with `None`.
    pub(super) bbox: Option<Bounds>,
    /// More drivers than this inside the viewport are sent as cells (the snapshot's rule).
    pub(super) max_points: usize,
    /// The view the viewer holds (its snapshot's `seq`): the first tick leads from it when
    /// the server still has it, else from the view current at the start.
    pub(super) seq: Option<u64>,
}

pub(super) fn parse_query(params: &HashMap<String, String>) -> Result<StreamQuery, ApiError> {
    let known = ["bbox", "max_points", "seq"];
    if let Some(unknown) = params.keys().find(|k| !known.contains(&k.as_str())) {
        let hint = if unknown == "cell_deg" {
            "; the server now chooses points or cells by max_points, as for the snapshot"
        } else {
            ""
        };
        return Err(bad_request(format!(
            "unknown parameter {unknown:?}; the stream takes bbox, max_points and seq{hint}"
        )));
    }
    let bbox = params
        .get("bbox")
        .map(|b| parse_bbox(b).map(|b| b.0))
        .transpose()?;
    let max_points = parse_max_points(params.get("max_points"))?;
    let seq = match params.get("seq") {
        None => None,
        Some(raw) => Some(raw.trim().parse::<u64>().map_err(|_| {
            bad_request(format!(
                "seq must be the whole number of the view the viewer holds (its snapshot's \
                 \"seq\"), got {raw:?}"
            ))
        })?),
    };
    Ok(StreamQuery {
        bbox,
        max_points,
        seq,
    })
}

/// What one stream has sent: the view its last tick led to, how many drivers were inside its
/// bbox then, and how it sent them (points `None`, or cells of size index `Some(level)`).
pub(super) struct Follow {
    q: StreamQuery,
    last: Arc<MapView>,
    inside: usize,
    mode: Option<usize>,
}

impl Follow {
    /// A stream that opened at `view` (its first tick leads from it), in the mode the
    /// snapshot of `view` has for the same query. `tiles` is `view`'s tile index if a
    /// snapshot already built it: the drivers inside the bbox are then counted from the tiles
    /// it touches instead of by a walk over every driver.
    pub(super) fn new(q: StreamQuery, view: Arc<MapView>, tiles: Option<&ViewTiles>) -> Follow {
        let inside = match (q.bbox, tiles) {
            (None, _) => view.drivers.len(),
            (Some(b), Some(tiles)) => tiles.count(Some(b), usize::MAX),
            (Some(b), None) => view
                .drivers
                .iter()
                .filter(|d| {
                    let (lng, lat) = (d.position.lng_deg(), d.position.lat_deg());
                    (b[0]..=b[2]).contains(&lng) && (b[1]..=b[3]).contains(&lat)
                })
                .count(),
        };
        let mode = drivers_mode(inside, q.bbox, view.bounds, q.max_points);
        Follow {
            q,
            last: view,
            inside,
            mode,
        }
    }

    /// Whether to send a tick at `next`: points streams at every new view, cells streams
    /// once per [`CELLS_EVERY`] views, at the same views (so they share the deltas).
    pub(super) fn due(&self, next: &MapView) -> bool {
        next.seq > self.last.seq
            && (self.mode.is_none() || next.seq / CELLS_EVERY > self.last.seq / CELLS_EVERY)
    }

    /// Whether the stream sends points now (trip and offer events go to points streams).
    pub(super) fn points(&self) -> bool {
        self.mode.is_none()
    }

    /// The tick from the last view sent to `next`. When the count inside the bbox crosses
    /// `max_points` (or a cells stream's cell size changes with the drivers' bounds), the
    /// tick carries the whole set in the new mode, `"full":true`; `tiles` gives the shared
    /// tile index of `next` for it.
    pub(super) fn tick(
        &mut self,
        chain: &Chain,
        next: Arc<MapView>,
        tiles: impl FnOnce(&Arc<MapView>) -> Arc<OnceLock<ViewTiles>>,
    ) -> Arc<[u8]> {
        let delta = chain.delta(&self.last, &next);
        let inside = match self.q.bbox {
            None => next.drivers.len(),
            Some(b) => self.inside.saturating_add_signed(delta.count_change(b)),
        };
        let mode = drivers_mode(inside, self.q.bbox, next.bounds, self.q.max_points);
        let out = if mode == self.mode {
            // Streams of the same viewport share one tick.
            delta.tick(self.q.bbox, mode)
        } else {
            let tiles = tiles(&next);
            let tiles = tiles.get_or_init(|| ViewTiles::new(next.clone(), &CELL_SIZES_DEG));
            let mut out = Vec::with_capacity(16 * 1024);
            delta.write(&mut out, self.q.bbox, TickDrivers::Whole(tiles, mode));
            out.into()
        };
        (self.last, self.inside, self.mode) = (next, inside, mode);
        out
    }
}

/// `GET /api/map/stream`.
pub(super) async fn stream(
    State(s): State<AppState>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let params = params.map_err(|_| {
        bad_request(
            "the query string does not decode; expected bbox=minLng,minLat,maxLng,maxLat\
             &max_points=N",
        )
    })?;
    let q = parse_query(&params.0)?;
    let shared = s.clone();
    // The view current when the stream opened (marked seen, so the first tick leads from it),
    // then the last view sent: each tick leads from it to the newest, however many views a
    // slow stream did not see. One view held per stream; nothing queues.
    // A viewer that names the view it holds gets its first tick from that view when the
    // server still has it: otherwise a cells stream (a tick a second) opened just after a
    // publish would start from a view no snapshot showed, and the viewer would fetch another.
    let mut views = s.engine.map_view();
    let current = views.borrow_and_update().clone();
    let start = q
        .seq
        .filter(|&seq| seq != current.seq)
        .and_then(|seq| s.deltas.view(seq).or_else(|| s.snapshots.view(seq)))
        .unwrap_or(current);
    // A viewer opens its stream just after its snapshot, whose tile index is then built.
    let start_tiles = s.snapshots.tiles(&start);
    let mut follow = Follow::new(q, start, start_tiles.get());
    // Only a points stream gets the trip/offer feed: a cells stream holds no receiver, so the
    // city's trip changes cost it nothing (it subscribes when it switches to points; the
    // switching tick carries every trip in view, and the next tick what changed after it).
    let (points_tx, points) = watch::channel(follow.points());
    // Subscribed now, as the stream opens, so a points stream misses no change after it.
    let feed = follow.points().then(|| s.trips.subscribe());
    let ticks = WatchStream::from_changes(views).filter_map(move |view| {
        let event = follow.due(&view).then(|| {
            let out = follow.tick(&shared.deltas, view, |v| shared.snapshots.tiles(v));
            points_tx.send_if_modified(|p| std::mem::replace(p, follow.points()) != *p);
            // serde_json writes UTF-8 and the copied items are whole serde_json items.
            Event::default()
                .event("tick")
                .data(std::str::from_utf8(&out).unwrap_or_default())
        });
        std::future::ready(event)
    });
    let inside = move |p: Option<LatLng>| {
        let (Some(b), Some(p)) = (q.bbox, p) else {
            return true;
        };
        (b[0]..=b[2]).contains(&p.lng_deg()) && (b[1]..=b[3]).contains(&p.lat_deg())
    };
    let changes = futures_util::stream::unfold(
        (s.clone(), points, feed),
        move |(s, mut points, mut feed)| async move {
            let event = loop {
                if !*points.borrow_and_update() {
                    feed = None;
                    // The ticks ended (the sender is gone): so does the feed.
                    points.wait_for(|&p| p).await.ok()?;
                }
                let rx = feed.get_or_insert_with(|| s.trips.subscribe());
                tokio::select! {
                    item = rx.recv() => match item {
                        Ok(item) if inside(item.pickup) => {
                            break Event::default().event(item.event).data(item.data.as_str());
                        }
                        Ok(_) => {}
                        // Lagged: the missed changes' end state comes with the next tick (its
                        // trips and offers), so the viewer needs no snapshot; it is told how
                        // many it missed.
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            break Event::default()
                                .event("lagged")
                                .data(format!(r#"{{"missed":{missed}}}"#));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    changed = points.changed() => changed.ok()?,
                }
            };
            Some((event, (s, points, feed)))
        },
    );
    let mut draining = s.draining.clone();
    let stop = async move {
        let _ = draining.wait_for(|&d| d).await;
    };
    let events = futures_util::stream::select(ticks, changes)
        .take_until(Box::pin(stop))
        .map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
