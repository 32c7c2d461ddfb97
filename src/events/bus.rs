//! Fan-out of dispatch events to any number of subscribers without ever slowing the dispatcher.
//!
//! One thread publishes: the engine's `event-log` writer thread when there is a durable log
//! (it publishes a group only after appending and fsyncing it, and before running its
//! replies), or the dispatcher thread itself without one (publish, then reply). It appends to a
//! bounded in-memory ring and bumps a `watch` channel holding the next offset. Each reader keeps
//! its own read offset and copies events out under a short read lock. A reader that falls
//! further behind than the ring holds gets [`Lagged`] (it learns the oldest offset still
//! available) instead of the publisher waiting for it; `events::follow` then catches it up from
//! the log.
//!
//! The lock is a parking_lot `RwLock` and never held across an `.await`.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use super::Event;

/// The events a subscriber asked for are no longer retained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged {
    /// The oldest offset still available.
    pub oldest_offset: u64,
}

#[derive(Debug)]
struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Offset of `events[0]`.
    first_offset: u64,
    capacity: usize,
}

/// The in-memory event stream shared by its one publisher and any number of readers.
#[derive(Debug)]
pub struct EventBus {
    ring: RwLock<Ring>,
    /// Next offset to be published; `None` once the bus is closed (shutdown).
    next_tx: watch::Sender<Option<u64>>,
}

impl EventBus {
    /// A bus keeping the last `capacity` events, whose first event will have `first_offset`.
    pub fn new(capacity: usize, first_offset: u64) -> Self {
        let (next_tx, _) = watch::channel(Some(first_offset));
        EventBus {
            ring: RwLock::new(Ring {
                events: VecDeque::with_capacity(capacity.min(1 << 16)),
                first_offset,
                capacity: capacity.max(1),
            }),
            next_tx,
        }
    }

    /// Appends events (offsets must continue the stream) and wakes subscribers.
    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        let next = {
            let mut ring = self.ring.write();
            for event in events {
                debug_assert_eq!(
                    event.offset,
                    ring.first_offset + ring.events.len() as u64,
                    "event offsets must be gap-free"
                );
                if ring.events.len() == ring.capacity {
                    ring.events.pop_front();
                    ring.first_offset += 1;
                }
                ring.events.push_back(Arc::new(event));
            }
            ring.first_offset + ring.events.len() as u64
        };
        self.next_tx.send_if_modified(|current| match current {
            Some(n) if *n != next => {
                *n = next;
                true
            }
            _ => false,
        });
    }

    /// The offset the next published event will get.
    pub fn next_offset(&self) -> u64 {
        let ring = self.ring.read();
        ring.first_offset + ring.events.len() as u64
    }

    /// Appends to `out` up to `max` events starting at `from`; returns the offset to read next.
    /// Reading at or past the head returns `from` unchanged.
    pub fn read_from(
        &self,
        from: u64,
        max: usize,
        out: &mut Vec<Arc<Event>>,
    ) -> Result<u64, Lagged> {
        let ring = self.ring.read();
        if from < ring.first_offset {
            return Err(Lagged {
                oldest_offset: ring.first_offset,
            });
        }
        let start = (from - ring.first_offset) as usize;
        let end = ring.events.len().min(start.saturating_add(max));
        if start >= end {
            return Ok(from);
        }
        out.extend(ring.events.range(start..end).cloned());
        Ok(from + (end - start) as u64)
    }

    /// A receiver that changes whenever events are published, and reads `None` once closed.
    pub fn watch(&self) -> watch::Receiver<Option<u64>> {
        self.next_tx.subscribe()
    }

    /// How many followers (streams and internal tasks) are watching the bus.
    pub fn follower_count(&self) -> usize {
        self.next_tx.receiver_count()
    }

    /// Closes the bus: every subscriber's stream ends (server shutdown).
    pub fn close(&self) {
        self.next_tx.send_replace(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ExternalId;
    use crate::events::EventKind;

    fn event(offset: u64) -> Event {
        Event {
            offset,
            at_ms: offset,
            kind: EventKind::DriverOffline {
                driver: ExternalId::new("driver_id", "d").unwrap(),
            },
        }
    }

    #[test]
    fn reads_resume_where_they_stopped_and_report_lag() {
        let bus = EventBus::new(4, 0);
        bus.publish((0..3).map(event));
        let mut out = Vec::new();
        assert_eq!(bus.read_from(0, 2, &mut out), Ok(2));
        assert_eq!(bus.read_from(2, 10, &mut out), Ok(3));
        assert_eq!(
            out.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(bus.read_from(3, 10, &mut out), Ok(3));
        bus.publish((3..7).map(event));
        assert_eq!(
            bus.read_from(0, 10, &mut out),
            Err(Lagged { oldest_offset: 3 })
        );
        assert_eq!(bus.next_offset(), 7);
    }
}
