//! Streams events from the [`EventBus`] to one gRPC client: the shared machinery behind
//! Subscribe, WatchTrip and SubscribeOffers.
//!
//! Each stream is a small task with its own read offset. It copies events out of the bus,
//! maps them (skip, send, or send and end), and pushes them into a bounded channel that tonic
//! drains at the client's pace. A slow client therefore only slows its own task. If it falls so
//! far behind that the bus no longer holds its next event, it catches up from the durable log
//! (a [`LogCursor`] read off the executor) and then rejoins the bus: no gap, no duplicate, and
//! never a wait imposed on the dispatcher. Only without a log, or when retention deleted the
//! events it needs, does the stream end with OUT_OF_RANGE naming the oldest offset available.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::engine::Engine;
use crate::events::{Event, LogCursor};

/// What to do with one event.
pub(crate) enum Step<T> {
    /// Not for this client.
    Skip,
    /// Send it and go on.
    Send(T),
    /// Send it and end the stream (e.g. the watched trip ended).
    Last(T),
}

/// Events copied out of the bus per lock.
const READ_BATCH: usize = 512;
/// Messages buffered per client before the task waits for it.
const CLIENT_BUFFER: usize = 256;

/// A stream that first yields `initial`, then the mapped events from offset `from` on.
pub(crate) fn follow<T, F>(
    engine: &Engine,
    mut from: u64,
    initial: Vec<T>,
    mut map: F,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: FnMut(&Event) -> Step<T> + Send + 'static,
{
    let bus = engine.bus().clone();
    let log_dir = engine.log_dir().map(|d| d.to_path_buf());
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    tokio::spawn(async move {
        let mut watch = bus.watch();
        for item in initial {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        let mut batch: Vec<Arc<Event>> = Vec::with_capacity(READ_BATCH);
        let mut cursor: Option<LogCursor> = None;
        loop {
            batch.clear();
            match bus.read_from(from, READ_BATCH, &mut batch) {
                Err(lagged) => {
                    // Behind the ring: read the missing events from the durable log.
                    let Some(dir) = &log_dir else {
                        let _ = tx.send(Err(lag_status(from, lagged.oldest_offset))).await;
                        return;
                    };
                    let mut c = cursor
                        .take()
                        .filter(|c| c.next_offset() == from)
                        .unwrap_or_else(|| LogCursor::new(dir.clone(), from));
                    let read = tokio::task::spawn_blocking(move || {
                        let mut out = Vec::with_capacity(READ_BATCH);
                        let result = c.read(READ_BATCH, &mut out);
                        (c, result.map(|_| out))
                    })
                    .await;
                    let events = match read {
                        Ok((c, Ok(events))) if !events.is_empty() => {
                            cursor = Some(c);
                            events
                        }
                        Ok((_, Err(e))) => {
                            let _ = tx.send(Err(Status::out_of_range(e.to_string()))).await;
                            return;
                        }
                        _ => {
                            let _ = tx.send(Err(lag_status(from, lagged.oldest_offset))).await;
                            return;
                        }
                    };
                    for event in &events {
                        from = event.offset + 1;
                        if !deliver(&tx, map(event)).await {
                            return;
                        }
                    }
                    continue;
                }
                Ok(next) => {
                    cursor = None;
                    for event in &batch {
                        if !deliver(&tx, map(event)).await {
                            return;
                        }
                    }
                    if next != from {
                        from = next;
                        continue;
                    }
                }
            }
            // Caught up: wait for the next publish, the bus closing, or the client leaving.
            tokio::select! {
                changed = watch.changed() => {
                    if changed.is_err() || watch.borrow().is_none() {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down"))).await;
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Sends one mapped event; false when the stream is over (client gone, or the last item).
async fn deliver<T>(tx: &mpsc::Sender<Result<T, Status>>, step: Step<T>) -> bool {
    match step {
        Step::Skip => true,
        Step::Send(item) => tx.send(Ok(item)).await.is_ok(),
        Step::Last(item) => {
            let _ = tx.send(Ok(item)).await;
            false
        }
    }
}

fn lag_status(from: u64, oldest: u64) -> Status {
    Status::out_of_range(format!(
        "this subscriber fell behind: event {from} is no longer retained (oldest available: \
         {oldest}); resubscribe"
    ))
}
