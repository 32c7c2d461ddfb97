//! The one follow loop: reading the event stream in order from any offset, whoever the reader
//! is (a Subscribe stream, the key router, a watcher that fell off the router, the metrics).
//!
//! A [`Follower`] keeps its own read offset and copies events out of the [`EventBus`] ring. If
//! it falls so far behind that the ring no longer holds its next event, it reads the missing
//! events from the durable log with a [`LogCursor`] (blocking file I/O, run on tokio's blocking
//! pool so the executor is never held), and once it is back inside the ring it reads the bus
//! again. Every event is yielded exactly once, in offset order: no gap, no duplicate, and the
//! publisher never waits for a reader. Only without a log, or when retention already deleted
//! the events it needs, does it report [`FollowError::Lagged`] / [`FollowError::Log`].
//!
//! Where it catches up is the engine's [`Backlog`]: the local segment log's directory, or, in
//! cluster mode, the region's JetStream stream (a [`RemoteBacklog`]), which also holds the
//! events a previous owner wrote before this process took the region over.
//!
//! Cancel safety: the read offset moves only when a read returns, so a dropped [`read`] or
//! [`wait`] future loses nothing (a log read in flight is simply done again).
//!
//! [`read`]: Follower::read
//! [`wait`]: Follower::wait

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use tokio::sync::watch;

use super::{Event, EventBus, LogCursor};

/// Events copied out per read (per read lock, or per log read).
const READ_BATCH: usize = 512;

/// A durable copy of the events that is not a local segment log (a region's JetStream stream).
pub trait RemoteBacklog: Send + Sync + std::fmt::Debug {
    /// The events from offset `from` on, in order and without a gap, the first at `from`: at
    /// least one and about `max` (whole stored messages), or an error saying why not (the
    /// events were trimmed, or the store cannot be read).
    fn read(&self, from: u64, max: usize) -> BoxFuture<'_, Result<Vec<Event>, String>>;
}

/// Where a follower that lagged out of the ring reads the events it missed.
#[derive(Clone, Debug, Default)]
pub enum Backlog {
    /// Nowhere: it is told [`FollowError::Lagged`].
    #[default]
    None,
    /// The engine's segment log directory.
    Dir(PathBuf),
    /// Another durable store (cluster mode: the region's stream).
    Remote(Arc<dyn RemoteBacklog>),
}

impl Backlog {
    /// The segment log directory, for a local log.
    pub fn dir(&self) -> Option<&PathBuf> {
        match self {
            Backlog::Dir(dir) => Some(dir),
            _ => None,
        }
    }
}

impl From<Option<PathBuf>> for Backlog {
    fn from(dir: Option<PathBuf>) -> Self {
        dir.map_or(Backlog::None, Backlog::Dir)
    }
}

/// Why a follower cannot go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    /// The bus closed (server shutdown) and every event published before was read.
    #[error("the server is shutting down")]
    Closed,
    /// The next event left the ring and there is no log to read it from.
    #[error(
        "this subscriber fell behind: event {from} is no longer retained (oldest available: \
         {oldest}); resubscribe"
    )]
    Lagged {
        /// The offset the follower needed.
        from: u64,
        /// The oldest offset still in the ring.
        oldest: u64,
    },
    /// The log could not supply the next event (deleted by retention, or unreadable).
    #[error("{0}")]
    Log(String),
}

/// An in-order reader of the event stream from some offset on. See the module docs.
#[derive(Debug)]
pub struct Follower {
    bus: Arc<EventBus>,
    backlog: Backlog,
    /// The offset of the next event to read.
    next: u64,
    /// Kept between log reads so a catch-up does not reopen and re-seek the segment each batch.
    cursor: Option<LogCursor>,
    watch: watch::Receiver<Option<u64>>,
}

impl Follower {
    /// A follower that will yield events from `from` on. `backlog` (the engine's events
    /// directory, or its remote log) is where it catches up when it lags out of the ring.
    pub fn new(bus: Arc<EventBus>, backlog: impl Into<Backlog>, from: u64) -> Self {
        // Subscribing before the first read: a publish after that read is then always seen by
        // `wait`, so no wake-up is missed.
        let watch = bus.watch();
        Follower {
            bus,
            backlog: backlog.into(),
            next: from,
            cursor: None,
            watch,
        }
    }

    /// The offset of the next event this follower yields.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The bus followed.
    pub fn bus(&self) -> &Arc<EventBus> {
        &self.bus
    }

    /// Where this follower catches up from.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Moves the read offset forward to `offset` (a reader without a log that accepts the loss
    /// after [`FollowError::Lagged`]). Never moves backwards.
    pub fn skip_to(&mut self, offset: u64) {
        if offset > self.next {
            self.next = offset;
            self.cursor = None;
        }
    }

    /// Appends to `out` the events available now from the read offset on (from the ring, or
    /// from the log when the ring no longer holds them) and returns how many; 0 means caught
    /// up with the head of the stream.
    pub async fn read(&mut self, out: &mut Vec<Arc<Event>>) -> Result<usize, FollowError> {
        let start = out.len();
        match self.bus.read_from(self.next, READ_BATCH, out) {
            Ok(next) => {
                self.next = next;
                self.cursor = None;
                Ok(out.len() - start)
            }
            Err(lagged) => {
                let dir = match &self.backlog {
                    Backlog::None => {
                        return Err(FollowError::Lagged {
                            from: self.next,
                            oldest: lagged.oldest_offset,
                        });
                    }
                    Backlog::Remote(remote) => return self.read_remote(remote.clone(), out).await,
                    Backlog::Dir(dir) => dir,
                };
                let from = self.next;
                let mut cursor = self
                    .cursor
                    .take()
                    .filter(|c| c.next_offset() == from)
                    .unwrap_or_else(|| LogCursor::new(dir.clone(), from));
                let read = tokio::task::spawn_blocking(move || {
                    let mut events = Vec::with_capacity(READ_BATCH);
                    let result = cursor.read(READ_BATCH, &mut events);
                    (cursor, result.map(|_| events))
                })
                .await;
                match read {
                    Ok((cursor, Ok(events))) if !events.is_empty() => {
                        self.cursor = Some(cursor);
                        self.next = events.last().map_or(from, |e| e.offset + 1);
                        out.extend(events.into_iter().map(Arc::new));
                        Ok(out.len() - start)
                    }
                    Ok((_, Err(e))) => Err(FollowError::Log(e.to_string())),
                    // Everything in the ring was committed to the log first, so an empty read
                    // here means the log lost it (or the blocking pool is gone: shutdown).
                    _ => Err(FollowError::Lagged {
                        from,
                        oldest: lagged.oldest_offset,
                    }),
                }
            }
        }
    }

    /// [`Follower::read`] from a remote backlog: whatever it returns must start at the read
    /// offset and have no gap, or the follower stops rather than yield a hole.
    async fn read_remote(
        &mut self,
        remote: Arc<dyn RemoteBacklog>,
        out: &mut Vec<Arc<Event>>,
    ) -> Result<usize, FollowError> {
        let from = self.next;
        let events = remote
            .read(from, READ_BATCH)
            .await
            .map_err(FollowError::Log)?;
        let contiguous = events
            .iter()
            .enumerate()
            .all(|(i, e)| e.offset == from + i as u64);
        if events.is_empty() || !contiguous {
            return Err(FollowError::Log(format!(
                "the stored log did not hold event {from} and those after it in order"
            )));
        }
        self.next = from + events.len() as u64;
        let n = events.len();
        out.extend(events.into_iter().map(Arc::new));
        Ok(n)
    }

    /// Waits until something is published after the last read, or the bus closes.
    pub async fn wait(&mut self) -> Result<(), FollowError> {
        // `borrow`, not `borrow_and_update`: a publish since the last read must still wake
        // `changed` below.
        if self.watch.borrow().is_none() {
            return self.closed();
        }
        if self.watch.changed().await.is_err() || self.watch.borrow().is_none() {
            return self.closed();
        }
        Ok(())
    }

    /// Closed only once the ring has nothing left for us: events published before the close
    /// are still delivered.
    fn closed(&self) -> Result<(), FollowError> {
        if self.bus.next_offset() > self.next {
            Ok(())
        } else {
            Err(FollowError::Closed)
        }
    }

    /// Appends at least one event to `out`, waiting for a publish if caught up.
    pub async fn next_batch(&mut self, out: &mut Vec<Arc<Event>>) -> Result<(), FollowError> {
        loop {
            if self.read(out).await? > 0 {
                return Ok(());
            }
            self.wait().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ExternalId;
    use crate::events::{EventKind, EventLog, LogConfig};

    fn event(offset: u64) -> Event {
        Event {
            offset,
            at_ms: offset,
            kind: EventKind::DriverOffline {
                driver: ExternalId::new("driver_id", &format!("d{offset}")).unwrap(),
            },
        }
    }

    /// A bus with a 4-event ring over a log holding the same events, as the engine keeps them.
    fn bus_and_log(dir: &std::path::Path, n: u64) -> (Arc<EventBus>, PathBuf) {
        let (mut log, _) = EventLog::open(&LogConfig::default(), dir, |_| Ok(())).unwrap();
        let events: Vec<Event> = (0..n).map(event).collect();
        log.append(&events).unwrap();
        log.commit().unwrap();
        let bus = Arc::new(EventBus::new(4, 0));
        bus.publish(events);
        (bus, log.dir().to_path_buf())
    }

    #[tokio::test]
    async fn a_follower_behind_the_ring_catches_up_from_the_log_and_rejoins() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, log_dir) = bus_and_log(dir.path(), 1500);
        let mut follower = Follower::new(bus.clone(), Some(log_dir), 3);
        let mut got = Vec::new();
        while got.len() < 1497 {
            follower.next_batch(&mut got).await.unwrap();
        }
        assert_eq!(follower.read(&mut got).await, Ok(0), "caught up");
        bus.publish([event(1500)]);
        follower.next_batch(&mut got).await.unwrap();
        let offsets: Vec<u64> = got.iter().map(|e| e.offset).collect();
        assert_eq!(
            offsets,
            (3..=1500).collect::<Vec<_>>(),
            "no gap, no duplicate"
        );
        bus.close();
        assert_eq!(
            follower.next_batch(&mut got).await,
            Err(FollowError::Closed)
        );
    }

    #[tokio::test]
    async fn without_a_log_a_lagging_follower_is_told_what_it_missed() {
        let bus = Arc::new(EventBus::new(4, 0));
        bus.publish((0..10).map(event));
        let mut follower = Follower::new(bus.clone(), None, 2);
        let mut got = Vec::new();
        assert_eq!(
            follower.read(&mut got).await,
            Err(FollowError::Lagged { from: 2, oldest: 6 })
        );
        follower.skip_to(6);
        follower.next_batch(&mut got).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [6, 7, 8, 9]
        );
    }

    #[tokio::test]
    async fn events_published_before_the_close_are_still_delivered() {
        let bus = Arc::new(EventBus::new(16, 0));
        let mut follower = Follower::new(bus.clone(), None, 0);
        bus.publish((0..3).map(event));
        bus.close();
        let mut got = Vec::new();
        follower.next_batch(&mut got).await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            follower.next_batch(&mut got).await,
            Err(FollowError::Closed)
        );
    }
}
