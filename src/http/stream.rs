//! `GET /api/map/stream`: Server-Sent Events for the page. A `tick` per view publish (about
//! four a second: the counters, and the cue to re-fetch the snapshot), and a `trip` or `offer`
//! event per change, from the shared feed of the trip follower.
//!
//! Ticks are conflated by the view's `watch` channel: a slow viewer sees the latest view, never
//! a backlog. The trip/offer feed is a bounded broadcast: a viewer that falls more than its
//! buffer behind skips the missed items (its next snapshot shows the state anyway). Each
//! stream ends when the server drains.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{Stream, StreamExt};
use tokio_stream::wrappers::{BroadcastStream, WatchStream};

use super::AppState;
use super::snapshot::StatsJson;

/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/map/stream`.
pub(super) async fn stream(
    State(s): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = WatchStream::from_changes(s.engine.map_view()).map(|view| {
        let data = serde_json::json!({
            "at_ms": view.at_ms,
            "offset": view.offset,
            "stats": StatsJson::from(&view.stats),
        });
        Event::default().event("tick").data(data.to_string())
    });
    let changes = BroadcastStream::new(s.trips.subscribe()).filter_map(|item| async move {
        // A lagged viewer skips what it missed.
        let item = item.ok()?;
        Some(Event::default().event(item.event).data(item.data.as_str()))
    });
    let mut draining = s.draining.clone();
    let stop = async move {
        let _ = draining.wait_for(|&d| d).await;
    };
    let events = futures_util::stream::select(ticks, changes)
        .take_until(Box::pin(stop))
        .map(Ok);
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
