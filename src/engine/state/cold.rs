//! [`Cold`]: the ended trips a snapshot restored, kept encoded and decoded only when read.
//!
//! Ended trips stay in memory for `dispatch.trip_retention` (10 min by default, ~600k trips at
//! 1,000 requests/s) so that a repeated request id and GetTrip keep answering. Decoding every
//! one of them before serving made restart time grow with uptime (the snapshot bench: 1.04 s
//! to decode 300k, 0.28 s to restore). Snapshot format 2 writes them as a section of their own:
//! each trip encoded alone, a table of their ids (ascending) and one of request-key hashes.
//! Recovery decodes the tables only and keeps the bytes as they are. A trip is decoded the
//! first time something reads it (a `OnceLock` per trip, so `&self` reads can fill it), moved
//! to the ordinary trip map if an event touches it, and marked gone when its retention passes
//! (its `Forget` deadline is in the timer queue as for every ended trip). The next snapshot
//! copies the bytes of the trips still here without decoding them.
//!
//! A record that does not decode to an ended trip with the id the table gives (only a bug or
//! another version could write one: the file's checksum covers it) reads as absent.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::TripEntry;
use super::persist::PMap;
use crate::domain::{ExternalId, TripId};

/// The tables of an encoded ended-trip section (the bytes follow the snapshot's payload).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ColdIndex {
    /// Trip ids, strictly ascending.
    pub(crate) ids: Vec<TripId>,
    /// Where record `i` ends in the bytes (it starts where record `i - 1` ends).
    pub(crate) ends: Vec<u64>,
    /// `(hash of rider and request id, record)` for the trips with a request id, ascending.
    pub(crate) requests: Vec<(u32, u32)>,
}

/// One decoded section (shared by the state and the snapshot copies taken of it).
#[derive(Debug, Default)]
struct Store {
    index: ColdIndex,
    bytes: Vec<u8>,
    /// Driver keys below this name a driver (the restored state's driver count).
    drivers: usize,
    decoded: Vec<OnceLock<Option<Arc<TripEntry>>>>,
}

/// See the module docs. `Clone` is O(1).
#[derive(Clone, Debug, Default)]
pub(crate) struct Cold {
    store: Arc<Store>,
    /// Records whose trip was forgotten or moved to the trip map.
    gone: PMap<TripId, ()>,
}

/// The hash a request key is filed under (crc32: stable across builds, unlike a hasher's).
pub(crate) fn request_hash(rider: &ExternalId, request: &ExternalId) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(rider.as_str().as_bytes());
    h.update(&[0xff]);
    h.update(request.as_str().as_bytes());
    h.finalize()
}

impl Cold {
    /// A section from its tables and bytes; refuses tables that do not fit the bytes.
    pub(crate) fn new(index: ColdIndex, bytes: Vec<u8>, drivers: usize) -> Result<Cold, String> {
        let n = index.ids.len();
        if index.ends.len() != n {
            return Err(format!(
                "{n} ended trips but {} record ends",
                index.ends.len()
            ));
        }
        if !index.ids.windows(2).all(|w| w[0] < w[1]) {
            return Err("ended trip ids out of order".into());
        }
        if !index.ends.windows(2).all(|w| w[0] <= w[1])
            || index.ends.last().map_or(0, |e| *e as usize) != bytes.len()
        {
            return Err("ended trip records do not fit their bytes".into());
        }
        if !index.requests.windows(2).all(|w| w[0] <= w[1])
            || index.requests.iter().any(|(_, i)| *i as usize >= n)
        {
            return Err("the ended trips' request table is out of order or range".into());
        }
        let decoded = (0..n).map(|_| OnceLock::new()).collect();
        Ok(Cold {
            store: Arc::new(Store {
                index,
                bytes,
                drivers,
                decoded,
            }),
            gone: PMap::default(),
        })
    }

    /// Ended trips still here.
    pub(crate) fn len(&self) -> usize {
        self.store.index.ids.len() - self.gone.len()
    }

    /// The lowest trip id still here (possibly of one already gone: a floor, not exact).
    pub(crate) fn oldest(&self) -> Option<TripId> {
        (self.len() > 0).then(|| self.store.index.ids[0])
    }

    fn position(&self, trip: TripId) -> Option<usize> {
        if self.gone.contains_key(&trip) {
            return None;
        }
        self.store.index.ids.binary_search(&trip).ok()
    }

    fn record(&self, i: usize) -> &[u8] {
        let ends = &self.store.index.ends;
        let start = if i == 0 { 0 } else { ends[i - 1] as usize };
        &self.store.bytes[start..ends[i] as usize]
    }

    fn decoded(&self, i: usize) -> Option<&Arc<TripEntry>> {
        self.store.decoded[i]
            .get_or_init(|| {
                let entry: TripEntry = postcard::from_bytes(self.record(i)).ok()?;
                let drivers = self.store.drivers;
                let keys_ok = entry.driver_key.is_none_or(|k| (k.0 as usize) < drivers)
                    && entry.tried.iter().all(|k| (k.0 as usize) < drivers);
                let fits = entry.trip.id == self.store.index.ids[i]
                    && entry.trip.status.is_terminal()
                    && entry.retry_at_ms.is_none();
                (keys_ok && fits).then(|| Arc::new(entry))
            })
            .as_ref()
    }

    /// The ended trip `trip`, if it is here. O(log n), plus decoding it the first time.
    pub(crate) fn get(&self, trip: TripId) -> Option<&TripEntry> {
        self.decoded(self.position(trip)?).map(|e| &**e)
    }

    /// The ended trip `rider` asked for with `request`, if it is here. O(log n).
    pub(crate) fn by_request(
        &self,
        rider: &ExternalId,
        request: &ExternalId,
    ) -> Option<&TripEntry> {
        let hash = request_hash(rider, request);
        let table = &self.store.index.requests;
        let from = table.partition_point(|(h, _)| *h < hash);
        table[from..]
            .iter()
            .take_while(|(h, _)| *h == hash)
            .filter(|(_, i)| !self.gone.contains_key(&self.store.index.ids[*i as usize]))
            .filter_map(|(_, i)| self.decoded(*i as usize))
            .find(|e| &e.trip.rider == rider && e.trip.request_id.as_ref() == Some(request))
            .map(|e| &**e)
    }

    /// Marks `trip` gone (its retention passed); false if it was not here. The whole section
    /// is dropped once every trip in it is gone.
    pub(crate) fn forget(&mut self, trip: TripId) -> bool {
        if self.position(trip).is_none() {
            return false;
        }
        self.gone.insert(trip, ());
        if self.len() == 0 {
            *self = Cold::default();
        }
        true
    }

    /// Takes `trip` out (an event touches it: it moves to the trip map).
    pub(crate) fn take(&mut self, trip: TripId) -> Option<Arc<TripEntry>> {
        let entry = self.decoded(self.position(trip)?)?.clone();
        self.forget(trip);
        Some(entry)
    }

    /// Every trip still here, decoded (the digest and tests; decodes all of them).
    pub(crate) fn entries(&self) -> impl Iterator<Item = &TripEntry> + '_ {
        let ids = &self.store.index.ids;
        (0..ids.len())
            .filter(|i| !self.gone.contains_key(&ids[*i]))
            .filter_map(|i| self.decoded(i).map(|e| &**e))
    }

    /// Every trip still here as `(id, request hash, encoded record)`, ascending, without
    /// decoding (the next snapshot copies the records as they are).
    pub(crate) fn records(&self) -> Vec<(TripId, Option<u32>, &[u8])> {
        let ids = &self.store.index.ids;
        let mut hashes = vec![None; ids.len()];
        for (hash, i) in &self.store.index.requests {
            hashes[*i as usize] = Some(*hash);
        }
        (0..ids.len())
            .filter(|i| !self.gone.contains_key(&ids[*i]))
            .map(|i| (ids[i], hashes[i], self.record(i)))
            .collect()
    }
}
