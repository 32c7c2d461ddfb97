//! The input journal: what the engine was told, and when, so a recorded day can be replayed.
//!
//! The dispatcher is deterministic given its commands and the `now` each is handed (see
//! `engine::dispatcher`), so a journal of its inputs is enough to rerun it: exactly (the same
//! config and the recorded answers reproduce the event log), or under another policy
//! (`dispatch-replay`, in the `loadgen` package). With `record.enabled` (`--record-inputs`) the
//! engine hands every command, with its `now`, to a journal writer thread ([`writer`]); the
//! dispatcher thread only converts and `try_send`s, so recording never waits on a disk. A full
//! queue drops the entry and the next entry carries the count (a [`Input::Gap`]): a journal
//! says where it is not faithful, it is never silently wrong.
//!
//! Layout: `<record.dir, default <log.data_dir>/inputs>/<first entry, 20 digits>.jnl`, segments
//! that start with an 8-byte magic and hold records in the event log's framing
//! (`[len u32][crc32][postcard payload]`, `events::log::record`), one [`Entry`] each.
//! Retention deletes the oldest whole segments beyond `record.retention_bytes`. Location reports
//! can be conflated to at most one per driver per `record.location_interval` (the default 0
//! keeps all, as the exact-replay check needs). [`reader`] reads a journal back, naming the segment and byte of a
//! corrupt or truncated record.

pub mod reader;
pub mod writer;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::{ExternalId, LatLng, OfferId, Rating, TripId, VehicleClass};

pub use reader::{JournalError, JournalReader};
pub use writer::{JournalStats, JournalWriter};

/// First bytes of every journal segment: "DSPJNL", format version 2. Version 1 also held
/// NearbyDrivers and GetSurge entries; reads no longer pass the dispatcher (they are answered
/// from the read view), so they change nothing a replay needs and are not recorded.
pub(crate) const MAGIC: &[u8; 8] = b"DSPJNL\x00\x02";

/// Settings of input recording (`[record]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordConfig {
    /// Record the engine's inputs (`--record-inputs`).
    pub enabled: bool,
    /// Journal directory; unset: `<log.data_dir>/inputs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// At most one location report per driver per this long is kept; 0 (the default) keeps
    /// all, which an exact replay needs (a conflated journal replays approximately).
    #[serde(with = "humantime_serde")]
    pub location_interval: Duration,
    /// A segment is closed and a new one started past this size, bytes.
    pub segment_bytes: u64,
    /// Oldest segments are deleted while the journal is larger than this, bytes.
    pub retention_bytes: u64,
    /// Entries waiting for the journal writer; beyond, they are dropped (and counted).
    pub queue: usize,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            enabled: false,
            dir: None,
            location_interval: Duration::ZERO,
            segment_bytes: 64 << 20,
            retention_bytes: 4 << 30,
            queue: 65_536,
        }
    }
}

/// One recorded input and the engine time it was handed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The `now` the dispatcher executed it at, ms since the Unix epoch.
    pub now_ms: u64,
    /// What it was told.
    pub input: Input,
}

/// A driver's step through an assigned trip, as recorded (mirrors `engine::TripAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// ACCEPTED -> ARRIVED.
    Arrive,
    /// ARRIVED -> IN_PROGRESS.
    Start,
    /// IN_PROGRESS -> COMPLETED.
    Complete,
    /// Cancelled by the driver.
    Cancel,
}

/// One input of the dispatcher. Variants are only ever appended, so old journals stay readable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// The engine started: the offset its first event gets (0 for a fresh engine; anything
    /// else means the state came from a log the journal does not hold) and its config as TOML
    /// (auth tokens and TLS paths left out).
    Start {
        /// Offset of the next event at start.
        first_offset: u64,
        /// The engine's config, TOML.
        config_toml: String,
    },
    /// The dispatcher loop fired due deadlines (offer expiries, retries, batch flushes).
    Fire,
    /// `GoOnline`.
    GoOnline {
        /// The driver.
        driver: ExternalId,
        /// Where.
        position: LatLng,
        /// Rating.
        rating: Rating,
        /// Vehicle class.
        class: VehicleClass,
        /// Gateway routing its offers.
        gateway: Option<ExternalId>,
    },
    /// `GoOffline`.
    GoOffline {
        /// The driver.
        driver: ExternalId,
    },
    /// Location reports (one batch, or a single `UpdateLocation`), after conflation.
    Locations {
        /// Driver id and position.
        updates: Vec<(String, LatLng)>,
    },
    /// `RequestTrip`.
    RequestTrip {
        /// Who asks.
        rider: ExternalId,
        /// Idempotency key.
        request_id: Option<ExternalId>,
        /// Pickup.
        pickup: LatLng,
        /// Drop-off.
        dropoff: LatLng,
        /// Requested class.
        class: VehicleClass,
    },
    /// `RespondToOffer`.
    Respond {
        /// The offer.
        offer: OfferId,
        /// The driver answering.
        driver: ExternalId,
        /// Accepted?
        accept: bool,
    },
    /// A driver's trip step.
    TripAction {
        /// The trip.
        trip: TripId,
        /// The driver.
        driver: ExternalId,
        /// Which step.
        step: Step,
    },
    /// `CancelTrip` by the rider.
    CancelTrip {
        /// The trip.
        trip: TripId,
        /// The rider.
        rider: ExternalId,
    },
    /// Entries the writer never got (its queue was full): the journal is not faithful here.
    Gap {
        /// How many entries were dropped.
        lost: u64,
    },
    /// An available driver leaves for a neighbouring region (`cluster::border`).
    LeaveRegion {
        /// The driver.
        driver: ExternalId,
        /// The region it moves to.
        to: String,
    },
    /// A driver arrives from a neighbouring region.
    JoinRegion(crate::events::RegionJoin),
}

/// The journal directory for a config, if recording is on.
pub fn journal_dir(config: &crate::config::Config) -> Option<PathBuf> {
    if !config.record.enabled {
        return None;
    }
    config
        .record
        .dir
        .clone()
        .or_else(|| config.log.data_dir.as_ref().map(|d| d.join("inputs")))
}

pub(crate) fn segment_path(dir: &std::path::Path, first_entry: u64) -> PathBuf {
    dir.join(format!("{first_entry:020}.jnl"))
}

/// The journal's segment files, oldest first, with the index of their first entry.
pub(crate) fn list_segments(dir: &std::path::Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}
