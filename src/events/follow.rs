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
//! Cancel safety: the read offset moves only when a read returns, so a dropped [`read`] or
//! [`wait`] future loses nothing (a log read in flight is simply done again).
//!
//! [`read`]: Follower::read
//! [`wait`]: Follower::wait

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Event, EventBus, LogCursor};

/// Events copied out per read (per read lock, or per log read).
const READ_BATCH: usize = 512;

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
    log_dir: Option<PathBuf>,
    /// The offset of the next event to read.
    next: u64,
    /// Kept between log reads so a catch-up does not reopen and re-seek the segment each batch.
    cursor: Option<LogCursor>,
    watch: watch::Receiver<Option<u64>>,
}

impl Follower {
    /// A follower that will yield events from `from` on. `log_dir` (the engine's events
    /// directory) is where it catches up when it lags out of the ring; `None` means no log.
    pub fn new(bus: Arc<EventBus>, log_dir: Option<PathBuf>, from: u64) -> Self {
        // Subscribing before the first read: a publish after that read is then always seen by
        // `wait`, so no wake-up is missed.
        let watch = bus.watch();
        Follower {
            bus,
            log_dir,
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

    /// The log directory caught up from, if any.
    pub fn log_dir(&self) -> Option<&PathBuf> {
        self.log_dir.as_ref()
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
                let Some(dir) = &self.log_dir else {
                    return Err(FollowError::Lagged {
                        from: self.next,
                        oldest: lagged.oldest_offset,
                    });
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
