//! Streams events to one gRPC client: the shared pump behind Subscribe, WatchTrip and
//! SubscribeOffers. Following the event stream (bus, log catch-up, key routing) is the job of
//! `events`; this only maps events to wire messages and ends the stream in the API's words.
//!
//! Each stream is a small task: it takes events from its source in order, maps them (skip,
//! send, or send and end), and pushes them into a bounded channel that tonic drains at the
//! client's pace. A slow client therefore only slows its own task; the source behind it never
//! waits for it either (a plain [`Follower`] reads at its own pace, a routed [`Watch`] is let
//! go by the router when full and catches up by itself).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::engine::Engine;
use crate::events::{Event, FollowError, Follower, Watch};

/// What to do with one event.
pub(crate) enum Step<T> {
    /// Not for this client.
    Skip,
    /// Send it and go on.
    Send(T),
    /// Send it and end the stream (e.g. the watched trip ended).
    Last(T),
}

/// Messages buffered per client before the task waits for it.
const CLIENT_BUFFER: usize = 256;

/// Where a stream's events come from.
pub(crate) enum Source {
    /// The whole ordered stream (Subscribe).
    All(Follower),
    /// One key's events, handed over by the router (WatchTrip, SubscribeOffers).
    Keyed(Watch),
}

impl Source {
    /// Every event from `from` on.
    pub(crate) fn all(engine: &Engine, from: u64) -> Source {
        Source::All(Follower::new(engine.bus().clone(), engine.backlog(), from))
    }

    async fn next_batch(&mut self, out: &mut Vec<Arc<Event>>) -> Result<(), FollowError> {
        match self {
            Source::All(follower) => follower.next_batch(out).await,
            Source::Keyed(watch) => watch.next_batch(out).await,
        }
    }
}

/// A stream that first yields `initial`, then the mapped events of `source`.
pub(crate) fn follow<T, F>(
    mut source: Source,
    initial: Vec<T>,
    mut map: F,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: FnMut(&Event) -> Step<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    tokio::spawn(async move {
        for item in initial {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        let mut batch: Vec<Arc<Event>> = Vec::new();
        loop {
            batch.clear();
            let next = tokio::select! {
                next = source.next_batch(&mut batch) => next,
                // The client left while nothing was coming.
                () = tx.closed() => return,
            };
            if let Err(error) = next {
                let _ = tx.send(Err(follow_status(error))).await;
                return;
            }
            for event in &batch {
                if !deliver(&tx, map(event)).await {
                    return;
                }
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

fn follow_status(error: FollowError) -> Status {
    match error {
        FollowError::Closed => Status::unavailable(error.to_string()),
        FollowError::Lagged { .. } | FollowError::Log(_) => Status::out_of_range(error.to_string()),
    }
}
