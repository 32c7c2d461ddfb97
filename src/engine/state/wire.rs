//! How a [`StateImage`] is written in a snapshot, and read back: the payload formats by version.
//!
//! - **Version 1** wrote every trip, open or ended, and the request index in the state's
//!   sequences. It still loads (every trip decoded at once, as before).
//! - **Version 2** (written now) keeps the open trips there and moves the ended ones (the
//!   bulk: `dispatch.trip_retention` of them) to a section after the payload that recovery
//!   does not decode (`cold.rs`); the request index is not written, it is rebuilt from the open
//!   trips and the section's request table. Restart then costs the same whatever the uptime.
//!
//! The encoding is postcard, as the log's records.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cold::{Cold, ColdIndex, request_hash};
use super::image::StateImage;
use super::persist::{PMap, TimerQueue, seq_pairs, seq_timers, seq_values, seq_vector};
use super::{Chunked, TripEntry};
use crate::domain::{ExternalId, LatLng, OfferId, TripId};
use crate::engine::records::{DriverRecord, OfferOutcome, PendingOffer, Stats};

/// Version 1, field for field (written only by [`StateImage::encode_format_1`]).
#[derive(Serialize, Deserialize)]
struct V1 {
    next_offset: u64,
    drivers: Chunked<DriverRecord>,
    positions: Chunked<LatLng>,
    #[serde(with = "seq_values")]
    trips: PMap<TripId, Arc<TripEntry>>,
    #[serde(with = "seq_values")]
    offers: PMap<OfferId, PendingOffer>,
    #[serde(with = "seq_pairs")]
    ended_offers: PMap<OfferId, OfferOutcome>,
    #[serde(with = "seq_vector")]
    ended_order: imbl::Vector<OfferId>,
    #[serde(with = "seq_pairs")]
    open_by_rider: PMap<ExternalId, TripId>,
    #[serde(with = "seq_pairs")]
    by_request: PMap<(ExternalId, ExternalId), TripId>,
    #[serde(with = "seq_timers")]
    timers: TimerQueue,
    batch: BTreeSet<TripId>,
    batch_flush_at_ms: Option<u64>,
    waiting: BTreeSet<TripId>,
    stats: Stats,
}

/// Version 2; the ended trips' records follow it.
#[derive(Serialize, Deserialize)]
struct V2 {
    next_offset: u64,
    drivers: Chunked<DriverRecord>,
    positions: Chunked<LatLng>,
    #[serde(with = "seq_values")]
    open_trips: PMap<TripId, Arc<TripEntry>>,
    #[serde(with = "seq_values")]
    offers: PMap<OfferId, PendingOffer>,
    #[serde(with = "seq_pairs")]
    ended_offers: PMap<OfferId, OfferOutcome>,
    #[serde(with = "seq_vector")]
    ended_order: imbl::Vector<OfferId>,
    #[serde(with = "seq_pairs")]
    open_by_rider: PMap<ExternalId, TripId>,
    #[serde(with = "seq_timers")]
    timers: TimerQueue,
    batch: BTreeSet<TripId>,
    batch_flush_at_ms: Option<u64>,
    waiting: BTreeSet<TripId>,
    stats: Stats,
    ended: ColdIndex,
}

/// Where an ended trip's record comes from when writing.
enum Source<'a> {
    Decoded(&'a TripEntry),
    Encoded(&'a [u8]),
}

impl StateImage {
    /// The snapshot format version this build writes.
    pub const FORMAT: u8 = 2;
    /// The snapshot format versions this build reads.
    pub const READS: [u8; 2] = [1, Self::FORMAT];

    /// Appends the image to `out` in format [`Self::FORMAT`]. Runs on the snapshot thread: O(t) for
    /// t trips in memory (the ended ones restored from a snapshot are copied, not re-encoded).
    pub(crate) fn encode_into(&self, out: Vec<u8>) -> Vec<u8> {
        let mut open = PMap::default();
        let mut ended: Vec<(TripId, Option<u32>, Source<'_>)> = Vec::new();
        for (id, e) in self.trips.iter() {
            if e.trip.status.is_terminal() {
                let hash = e.trip.request_id.as_ref();
                let hash = hash.map(|r| request_hash(&e.trip.rider, r));
                ended.push((*id, hash, Source::Decoded(e)));
            } else {
                open.insert(*id, e.clone());
            }
        }
        for (id, hash, bytes) in self.cold.records() {
            ended.push((id, hash, Source::Encoded(bytes)));
        }
        ended.sort_unstable_by_key(|(id, _, _)| *id);
        let mut records = Vec::new();
        let mut index = ColdIndex::default();
        for (i, (id, hash, source)) in ended.into_iter().enumerate() {
            match source {
                // Serializing plain data into a Vec cannot fail.
                Source::Decoded(e) => {
                    records = postcard::to_extend(e, records).expect("postcard encodes into a Vec")
                }
                Source::Encoded(bytes) => records.extend_from_slice(bytes),
            }
            index.ids.push(id);
            index.ends.push(records.len() as u64);
            if let Some(hash) = hash {
                index.requests.push((hash, i as u32));
            }
        }
        index.requests.sort_unstable();
        let wire = V2 {
            next_offset: self.next_offset,
            drivers: self.drivers.clone(),
            positions: self.positions.clone(),
            open_trips: open,
            offers: self.offers.clone(),
            ended_offers: self.ended_offers.clone(),
            ended_order: self.ended_order.clone(),
            open_by_rider: self.open_by_rider.clone(),
            timers: self.timers.clone(),
            batch: self.batch.clone(),
            batch_flush_at_ms: self.batch_flush_at_ms,
            waiting: self.waiting.clone(),
            stats: self.stats.clone(),
            ended: index,
        };
        let mut out = postcard::to_extend(&wire, out).expect("postcard encodes into a Vec");
        out.extend_from_slice(&records);
        out
    }

    /// The image as format 1 wrote it (every trip in the maps, the request index written).
    /// Not what snapshots use: for the tests and the bench that compare the formats and check
    /// that a format 1 snapshot still loads.
    #[doc(hidden)]
    pub fn encode_format_1(&self, out: Vec<u8>) -> Vec<u8> {
        let (mut trips, mut by_request) = (self.trips.clone(), self.by_request.clone());
        for e in self.cold.entries() {
            if let Some(request) = &e.trip.request_id {
                by_request.insert((e.trip.rider.clone(), request.clone()), e.trip.id);
            }
            trips.insert(e.trip.id, Arc::new(e.clone()));
        }
        let wire = V1 {
            next_offset: self.next_offset,
            drivers: self.drivers.clone(),
            positions: self.positions.clone(),
            trips,
            offers: self.offers.clone(),
            ended_offers: self.ended_offers.clone(),
            ended_order: self.ended_order.clone(),
            open_by_rider: self.open_by_rider.clone(),
            by_request,
            timers: self.timers.clone(),
            batch: self.batch.clone(),
            batch_flush_at_ms: self.batch_flush_at_ms,
            waiting: self.waiting.clone(),
            stats: self.stats.clone(),
        };
        postcard::to_extend(&wire, out).expect("postcard encodes into a Vec")
    }

    /// Reads a payload written in format `version`; says what is wrong with one it cannot.
    pub(crate) fn decode_from(version: u8, payload: &[u8]) -> Result<StateImage, String> {
        let undecodable = |e: postcard::Error| format!("undecodable state: {e}");
        match version {
            1 => {
                let w: V1 = postcard::from_bytes(payload).map_err(undecodable)?;
                Ok(StateImage {
                    next_offset: w.next_offset,
                    drivers: w.drivers,
                    positions: w.positions,
                    trips: w.trips,
                    offers: w.offers,
                    ended_offers: w.ended_offers,
                    ended_order: w.ended_order,
                    open_by_rider: w.open_by_rider,
                    by_request: w.by_request,
                    timers: w.timers,
                    batch: w.batch,
                    batch_flush_at_ms: w.batch_flush_at_ms,
                    waiting: w.waiting,
                    stats: w.stats,
                    cold: Cold::default(),
                })
            }
            Self::FORMAT => {
                let (w, records): (V2, &[u8]) =
                    postcard::take_from_bytes(payload).map_err(undecodable)?;
                let cold = Cold::new(w.ended, records.to_vec(), w.drivers.len())?;
                let mut by_request = PMap::default();
                for e in w.open_trips.values() {
                    if let Some(request) = &e.trip.request_id {
                        by_request.insert((e.trip.rider.clone(), request.clone()), e.trip.id);
                    }
                }
                Ok(StateImage {
                    next_offset: w.next_offset,
                    drivers: w.drivers,
                    positions: w.positions,
                    trips: w.open_trips,
                    offers: w.offers,
                    ended_offers: w.ended_offers,
                    ended_order: w.ended_order,
                    open_by_rider: w.open_by_rider,
                    by_request,
                    timers: w.timers,
                    batch: w.batch,
                    batch_flush_at_ms: w.batch_flush_at_ms,
                    waiting: w.waiting,
                    stats: w.stats,
                    cold,
                })
            }
            other => Err(format!(
                "snapshot format version {other}; this build reads versions {:?}",
                Self::READS
            )),
        }
    }
}
