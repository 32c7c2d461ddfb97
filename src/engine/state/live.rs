//! The deliberately non-durable part of the dispatch state.
//!
//! Nothing here is an event, so nothing here survives a restart, by design:
//! - driver positions between events: gateways re-report every few seconds, and logging every
//!   report would multiply the log by the location rate for nothing a restart needs. Events
//!   still set a position where they imply one (going online, a drop-off).
//! - surge demand counters: a sliding window of recent requests that rebuilds itself within
//!   one window after a restart.
//! - the count of location reports applied since the process started.
//!
//! Its mutators are narrow and named (`set_position`, `count_location_update`, the surge
//! calls); only `DispatchState` calls them, from a location report, a repeated GoOnline, a
//! request (demand) or an event that implies a position.

use super::Chunked;
use crate::domain::{DriverKey, LatLng, VehicleClass};
use crate::surge::{SurgeConfig, SurgeTracker};

/// How often stale surge cells are swept, ms.
const SURGE_SWEEP_MS: u64 = 60_000;

/// See the module docs.
#[derive(Debug)]
pub struct Live {
    /// Last known position per driver key, in shared chunks (a snapshot copies pointers).
    positions: Chunked<LatLng>,
    surge: SurgeTracker,
    next_sweep_ms: u64,
    location_updates: u64,
}

impl Live {
    pub(super) fn new(surge: SurgeConfig) -> Self {
        Live {
            positions: Chunked::new(),
            surge: SurgeTracker::new(surge),
            next_sweep_ms: 0,
            location_updates: 0,
        }
    }

    /// The last known position of a known driver.
    pub(crate) fn position(&self, key: DriverKey) -> LatLng {
        self.positions[key.0 as usize]
    }

    /// Every known driver's last position, by key (a snapshot copies them).
    pub(super) fn positions(&self) -> &Chunked<LatLng> {
        &self.positions
    }

    /// Location reports applied since the process started.
    pub fn location_updates(&self) -> u64 {
        self.location_updates
    }

    /// Records a position; a new key (the next dense one) gets a slot.
    pub(super) fn set_position(&mut self, key: DriverKey, position: LatLng) {
        let i = key.0 as usize;
        if i == self.positions.len() {
            self.positions.push(position);
        } else {
            self.positions[i] = position;
        }
    }

    /// Forgets every position (a refused snapshot leaves the state fresh).
    pub(super) fn clear_positions(&mut self) {
        self.positions.clear();
    }

    pub(super) fn count_location_update(&mut self) {
        self.location_updates += 1;
    }

    /// The surge tracker, for readers (the map view).
    pub(crate) fn surge(&self) -> &SurgeTracker {
        &self.surge
    }

    pub(super) fn surge_mut(&mut self) -> &mut SurgeTracker {
        &mut self.surge
    }

    pub(super) fn sweep(&mut self, now_ms: u64) {
        if now_ms >= self.next_sweep_ms {
            self.surge.sweep(now_ms);
            self.next_sweep_ms = now_ms.saturating_add(SURGE_SWEEP_MS);
        }
    }
}

/// Surge supply reads: the index counts, this part gives them their meaning.
impl super::DispatchState {
    /// Surge supply for `class`: the available drivers within about `radius_m` of `point` who
    /// serve it ([`VehicleClass::serves`], as matching decides). `Any` counts every available
    /// driver by whole cells; a class calls `serves` once per driver in those cells.
    pub(crate) fn supply_near(&self, point: LatLng, radius_m: f64, class: VehicleClass) -> u64 {
        let n = if class == VehicleClass::Any {
            self.index.count_near(point, radius_m)
        } else {
            self.index.count_near_where(point, radius_m, &mut |k| {
                self.drivers[k.0 as usize].class.serves(class)
            })
        };
        n as u64
    }
}
