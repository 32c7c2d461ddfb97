//! `GET /api/map/stream?bbox=...&cell_deg=...`: Server-Sent Events for the page. A `tick` per
//! view publish (about four a second) carrying the counters and what changed in the viewer's
//! bbox since the previous view (`delta.rs`: drivers as points, or the changed cells of
//! `cell_deg` when the viewer draws cells, trips, offers, surge), and a `trip` or `offer` event
//! per change, from the shared feed of the trip follower.
//!
//! Each tick carries `seq` (the view it leads to) and `base` (the view it applies to): a viewer
//! applies it when its own view is `base`. A slow viewer never makes the server queue: ticks
//! are conflated by the view's `watch` channel, and a stream that did not see a view sends one
//! tick from the last view it sent to the newest (one view held per stream). A stream that fell
//! more than its buffer behind on the trip feed gets `lagged` with the number of changes it
//! missed: the next tick carries their end state (trips and offers), so no snapshot is needed.
//! (At 1,000 requests/s every viewer's feed lagged now and then; answering that with a
//! snapshot each time made viewers fetch ~1,500 snapshots a minute.) Each stream ends when the
//! server drains.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{Stream, StreamExt};
use tokio_stream::wrappers::{BroadcastStream, WatchStream};

use super::snapshot::{CELL_SIZES_DEG, parse_bbox};
use super::tiles::Bounds;
use super::{ApiError, AppState, bad_request};

/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What one viewer's stream is cut to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct StreamQuery {
    /// The viewport; everything with `None`.
    pub(super) bbox: Option<Bounds>,
    /// Cells of `CELL_SIZES_DEG[level]` instead of points.
    pub(super) level: Option<usize>,
}

pub(super) fn parse_query(params: &HashMap<String, String>) -> Result<StreamQuery, ApiError> {
    if let Some(unknown) = params.keys().find(|k| *k != "bbox" && *k != "cell_deg") {
        return Err(bad_request(format!(
            "unknown parameter {unknown:?}; the stream takes bbox and cell_deg"
        )));
    }
    let bbox = params
        .get("bbox")
        .map(|b| parse_bbox(b).map(|b| b.0))
        .transpose()?;
    let level = match params.get("cell_deg") {
        None => None,
        Some(raw) => Some(
            raw.trim()
                .parse::<f64>()
                .ok()
                .and_then(|x| CELL_SIZES_DEG.iter().position(|&c| (c - x).abs() < 1e-9))
                .ok_or_else(|| {
                    bad_request(format!(
                        "cell_deg must be a cell size a snapshot answers with ({}), got {raw:?}",
                        CELL_SIZES_DEG.map(|c| c.to_string()).join(", ")
                    ))
                })?,
        ),
    };
    Ok(StreamQuery { bbox, level })
}

/// `GET /api/map/stream`.
pub(super) async fn stream(
    State(s): State<AppState>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let params = params.map_err(|_| {
        bad_request("the query string does not decode; expected bbox=minLng,minLat,maxLng,maxLat")
    })?;
    let q = parse_query(&params.0)?;
    let shared = s.clone();
    // The view current when the stream opened (marked seen, so the first tick leads from it),
    // then the last view sent: each tick leads from it to the newest, however many views a
    // slow stream did not see. One view held per stream; nothing queues.
    let mut views = s.engine.map_view();
    let mut last = views.borrow_and_update().clone();
    let ticks = WatchStream::from_changes(views).filter_map(move |view| {
        let event = (view.seq > last.seq).then(|| {
            let delta = shared.deltas.delta(&last, &view);
            last = view;
            let mut out = Vec::with_capacity(16 * 1024);
            delta.write(&mut out, q.bbox, q.level);
            // serde_json writes UTF-8 and the copied items are whole serde_json items.
            Event::default()
                .event("tick")
                .data(String::from_utf8(out).unwrap_or_default())
        });
        std::future::ready(event)
    });
    let changes = BroadcastStream::new(s.trips.subscribe()).map(|item| match item {
        Ok(item) => Event::default().event(item.event).data(item.data.as_str()),
        // Lagged: the missed changes' end state comes with the next tick (its trips and
        // offers), so the viewer needs no snapshot; it is told how many it missed.
        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
            Event::default()
                .event("lagged")
                .data(format!(r#"{{"missed":{missed}}}"#))
        }
    });
    let mut draining = s.draining.clone();
    let stop = async move {
        let _ = draining.wait_for(|&d| d).await;
    };
    let events = futures_util::stream::select(ticks, changes)
        .take_until(Box::pin(stop))
        .map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
