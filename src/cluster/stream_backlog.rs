//! Catching up on a region's events from its JetStream stream, for followers (Subscribe,
//! WatchTrip, offer streams, the metrics) that fell out of the engine's in-memory ring, or that
//! resume from an offset the previous owner wrote: after a takeover the new owner's ring starts
//! at its own first event, but the stream holds the whole region history (back to its oldest
//! snapshot, behind which it is trimmed). Without it, a subscriber that reconnected to the new
//! owner from the offset it had reached got OUT_OF_RANGE for every event the old owner wrote
//! after its last delivery: a gap.
//!
//! Events are numbered, stream messages are not: the message holding offset `from` is found by
//! a binary search over the stream's sequences (one direct get per step, ~17 for 100k
//! messages), then read on through an ordered consumer, as a takeover reads. A follower catching
//! up asks for the events right after the last ones it got, so the sequence after the last
//! read is kept and tried first: one search per catch-up, not one per read.

use async_nats::jetstream::{self, stream};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::stream_log::{existing_stream, read_history};
use crate::events::{Event, RemoteBacklog};

/// Region `region`'s stream, read as a backlog.
pub(crate) struct StreamBacklog {
    js: jetstream::Context,
    region: String,
    /// After the last read: (the offset after its last event, the sequence after its last
    /// message).
    hint: Mutex<Option<(u64, u64)>>,
}

impl std::fmt::Debug for StreamBacklog {
    // The JetStream context has nothing worth printing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBacklog")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl StreamBacklog {
    /// The backlog of `region`'s stream on `js`.
    pub(crate) fn new(js: &jetstream::Context, region: &str) -> Self {
        StreamBacklog {
            js: js.clone(),
            region: region.to_owned(),
            hint: Mutex::new(None),
        }
    }

    async fn read_from(&self, from: u64, max: usize) -> Result<Vec<Event>, String> {
        let region = &self.region;
        let (stream, state) = existing_stream(&self.js, region).await?;
        let (first, last) = (state.first_sequence.max(1), state.last_sequence);
        let hinted = *self.hint.lock();
        if let Some((offset, seq)) = hinted.filter(|&(o, s)| o == from && s >= first && s <= last) {
            let (events, next) = read_history(&stream, region, seq, last, max).await?;
            // Right after the last read, as hoped (else: an old empty takeover message, a trim).
            if events.first().map(|e| e.offset) == Some(offset) {
                self.remember(&events, next);
                return Ok(events);
            }
        }
        let Some((mut lo, oldest)) = self.probe(&stream, first, last).await? else {
            return Err(format!("region {region}: its stream holds no events"));
        };
        if oldest > from {
            return Err(format!(
                "event {from} is no longer retained: region {region}'s stream begins at event \
                 {oldest} (it is trimmed behind its snapshots); resubscribe from there or later"
            ));
        }
        // The last message whose first event is at or before `from`: lo holds one, and none
        // after hi does.
        let (mut start, mut hi) = (oldest, last);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match self.probe(&stream, mid, hi).await? {
                Some((seq, offset)) if offset <= from => (lo, start) = (seq, offset),
                _ => hi = mid - 1,
            }
        }
        let skip = (from - start) as usize;
        let (mut events, next) = read_history(&stream, region, lo, last, skip + max).await?;
        events.drain(..skip.min(events.len()));
        self.remember(&events, next);
        Ok(events)
    }

    fn remember(&self, events: &[Event], next_seq: u64) {
        *self.hint.lock() = events.last().map(|e| (e.offset + 1, next_seq));
    }

    /// The first message in `seq..=hi` that holds events, and its first event's offset
    /// (takeover messages written before the takeover event existed hold none).
    async fn probe(
        &self,
        stream: &stream::Stream,
        seq: u64,
        hi: u64,
    ) -> Result<Option<(u64, u64)>, String> {
        let region = &self.region;
        for seq in seq..=hi {
            let message = stream
                .direct_get(seq)
                .await
                .map_err(|e| format!("region {region}: reading stream message {seq}: {e}"))?;
            let events: Vec<Event> = postcard::from_bytes(&message.payload)
                .map_err(|e| format!("region {region}: stream message {seq} is unreadable: {e}"))?;
            if let Some(e) = events.first() {
                return Ok(Some((seq, e.offset)));
            }
        }
        Ok(None)
    }
}

impl RemoteBacklog for StreamBacklog {
    fn read(&self, from: u64, max: usize) -> BoxFuture<'_, Result<Vec<Event>, String>> {
        Box::pin(self.read_from(from, max))
    }
}
