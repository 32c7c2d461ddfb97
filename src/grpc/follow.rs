//! Streams events from the [`EventBus`] to one gRPC client: the shared machinery behind
//! Subscribe, WatchTrip and SubscribeOffers.
//!
//! Each stream is a small task with its own read offset. It copies events out of the bus,
//! maps them (skip, send, or send and end), and pushes them into a bounded channel that tonic
//! drains at the client's pace. A slow client therefore only slows its own task; if it falls so
//! far behind that the bus no longer holds its next event, the stream ends with OUT_OF_RANGE
//! naming the oldest offset still available, so the client can resubscribe knowingly.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::events::{Event, EventBus};

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
    bus: Arc<EventBus>,
    mut from: u64,
    initial: Vec<T>,
    mut map: F,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: FnMut(&Event) -> Step<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    tokio::spawn(async move {
        let mut watch = bus.watch();
        for item in initial {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        let mut batch = Vec::with_capacity(READ_BATCH);
        loop {
            batch.clear();
            match bus.read_from(from, READ_BATCH, &mut batch) {
                Err(lagged) => {
                    let _ = tx
                        .send(Err(Status::out_of_range(format!(
                            "this subscriber fell behind: event {from} is no longer retained \
                             (oldest available: {}); resubscribe",
                            lagged.oldest_offset
                        ))))
                        .await;
                    return;
                }
                Ok(next) => {
                    for event in &batch {
                        match map(event) {
                            Step::Skip => {}
                            Step::Send(item) => {
                                if tx.send(Ok(item)).await.is_err() {
                                    return;
                                }
                            }
                            Step::Last(item) => {
                                let _ = tx.send(Ok(item)).await;
                                return;
                            }
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
