//! The state's cross-record invariants, checked by tests after every step (and cheap enough to
//! run in debug builds of simulations), and its canonical digest: the text that `replay(log)`
//! must reproduce exactly.

use std::fmt::Write;

use super::{DispatchState, TripEntry};
use crate::engine::records::{DriverStatus, Stats};
use crate::events::{MatchPolicy, TripStatus};

impl DispatchState {
    /// Checks the cross-record invariants; returns what is broken. Used by tests after every
    /// step: a driver holds at most one offer and one trip, a trip at most one offer and one
    /// driver, AVAILABLE drivers and only they are in the index, counters match the records,
    /// every searching trip has its next search scheduled (a retry or the pending batch).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut by_state = [0u64; 4];
        for d in &self.drivers {
            let in_index = self.index.position(d.key).is_some();
            match d.status {
                DriverStatus::Offline => by_state[0] += 1,
                DriverStatus::Available => by_state[1] += 1,
                DriverStatus::Offered(o) => {
                    by_state[2] += 1;
                    let p = self
                        .offers
                        .get(&o)
                        .ok_or_else(|| format!("{} holds ended offer {o}", d.id))?;
                    if p.driver != d.key {
                        return Err(format!("{} holds offer {o} made to another driver", d.id));
                    }
                }
                DriverStatus::OnTrip(t) => {
                    by_state[3] += 1;
                    let entry = self
                        .entry(t)
                        .ok_or_else(|| format!("{} on unknown trip {t}", d.id))?;
                    let trip = &entry.trip;
                    let assigned = matches!(
                        trip.status,
                        TripStatus::Accepted | TripStatus::Arrived | TripStatus::InProgress
                    );
                    if !assigned || entry.driver_key != Some(d.key) {
                        return Err(format!(
                            "{} on trip {t} which is {:?} with {:?}",
                            d.id, trip.status, trip.driver
                        ));
                    }
                }
            }
            if in_index != (d.status == DriverStatus::Available) {
                return Err(format!(
                    "{} is {:?} but in_index={in_index}",
                    d.id, d.status
                ));
            }
        }
        let s = &self.stats;
        if by_state
            != [
                s.drivers_offline,
                s.drivers_available,
                s.drivers_offered,
                s.drivers_on_trip,
            ]
        {
            return Err(format!(
                "driver counters {s:?} disagree with records {by_state:?}"
            ));
        }
        if self.index.len() as u64 != s.drivers_available {
            return Err("index size differs from available drivers".into());
        }
        for (id, p) in &self.offers {
            let trip = self
                .trip(p.details.trip)
                .ok_or_else(|| format!("offer {id} for unknown trip"))?;
            if trip.status != TripStatus::Offered || trip.offer != Some(*id) {
                return Err(format!(
                    "offer {id} pending but trip {} is {:?} with offer {:?}",
                    trip.id, trip.status, trip.offer
                ));
            }
            if self.drivers[p.driver.0 as usize].status != DriverStatus::Offered(*id) {
                return Err(format!(
                    "offer {id} pending but its driver is not holding it"
                ));
            }
        }
        let mut open = 0;
        for entry in self.trips.values() {
            let trip = &entry.trip;
            if trip.status == TripStatus::Searching {
                let scheduled = match trip.policy {
                    MatchPolicy::Greedy => entry.retry_at_ms.is_some(),
                    MatchPolicy::Batch => self.batch.contains(&trip.id),
                };
                if !scheduled {
                    return Err(format!("searching trip {} has no next search", trip.id));
                }
            } else if self.batch.contains(&trip.id) || entry.retry_at_ms.is_some() {
                return Err(format!(
                    "trip {} is {:?} but scheduled",
                    trip.id, trip.status
                ));
            }
            if !trip.status.is_terminal() {
                open += 1;
                if self.open_by_rider.get(&trip.rider) != Some(&trip.id) {
                    return Err(format!(
                        "open trip {} not registered for rider {}",
                        trip.id, trip.rider
                    ));
                }
            }
            if trip.status == TripStatus::Offered
                && trip.offer.is_none_or(|o| !self.offers.contains_key(&o))
            {
                return Err(format!("trip {} OFFERED without a pending offer", trip.id));
            }
            if entry.driver_key.is_some() != trip.driver.is_some() && !trip.status.is_terminal() {
                return Err(format!("trip {} driver key and id disagree", trip.id));
            }
            if let (Some(key), true) = (&entry.driver_key, !trip.status.is_terminal()) {
                let expected = match trip.status {
                    TripStatus::Offered => trip.offer.map(DriverStatus::Offered),
                    TripStatus::Searching => None,
                    _ => Some(DriverStatus::OnTrip(trip.id)),
                };
                if expected != Some(self.drivers[key.0 as usize].status) {
                    return Err(format!(
                        "trip {} ({:?}) and its driver disagree",
                        trip.id, trip.status
                    ));
                }
            }
        }
        let armed = self.trips.values().filter(|e| e.retry_at_ms.is_some());
        if armed.count() != self.waiting.len()
            || self
                .waiting
                .iter()
                .any(|t| self.trips.get(t).is_none_or(|e| e.retry_at_ms.is_none()))
        {
            return Err("the waiting set is not the trips with a retry armed".into());
        }
        if self.batch.is_empty() != self.batch_flush_at_ms.is_none() {
            return Err(format!(
                "batch of {} with flush {:?}",
                self.batch.len(),
                self.batch_flush_at_ms
            ));
        }
        if open != self.open_by_rider.len() {
            return Err(format!(
                "{open} open trips but {} riders with one",
                self.open_by_rider.len()
            ));
        }
        // What retention keeps, found by the walk it replaced (`needed.rs`).
        let online = self
            .drivers
            .iter()
            .filter(|d| d.status != DriverStatus::Offline);
        let walked = (self.trips.keys().map(|t| t.0))
            .chain(online.map(|d| d.online_offset))
            .min();
        if walked != self.needed.oldest() {
            return Err(format!(
                "oldest needed offset {:?} but the trips and drivers say {walked:?}",
                self.needed.oldest()
            ));
        }
        Ok(())
    }

    /// A canonical text of the durable state: everything `replay` must rebuild. Drivers
    /// (status, profile, acceptance, trips today, free since, online offset); trips with what
    /// only the engine keeps about them (driver key, tried drivers, retry); pending offers as
    /// sent (gateway included) and recently ended ones; indexes by rider and request; every
    /// queued deadline; the pending batch and its flush; the next offset; the counters except
    /// location updates. Positions and surge demand are not in it: they are the non-durable
    /// part, by design.
    pub fn durable_digest(&self) -> String {
        let mut out = String::new();
        for d in &self.drivers {
            let _ = writeln!(
                out,
                "driver {} {:?} {:?} {:?} gw={:?} acc={:.12} trips={}@{} free={} online@{}",
                d.id,
                d.status,
                d.rating,
                d.class,
                d.gateway,
                d.acceptance_rate,
                d.trips_today,
                d.trips_day,
                d.free_since_ms,
                d.online_offset
            );
        }
        // The ended trips still encoded from a snapshot (`cold.rs`) are trips in memory too.
        let mut trips: Vec<&TripEntry> = self.trips.values().map(|e| &**e).collect();
        trips.extend(self.cold.entries());
        trips.sort_by_key(|e| e.trip.id);
        for e in trips {
            let _ = writeln!(
                out,
                "trip {} key={:?} tried={:?} retry={:?}",
                e.trip.id, e.driver_key, e.tried, e.retry_at_ms
            );
            let _ = writeln!(out, "{:?}", e.trip);
        }
        let mut offers: Vec<_> = self.offers.iter().collect();
        offers.sort_by_key(|(id, _)| **id);
        for (id, p) in offers {
            let _ = writeln!(out, "offer {id} {:?} {:?}", p.driver, p.details);
        }
        let mut ended: Vec<_> = self.ended_offers.iter().map(|(id, o)| (*id, *o)).collect();
        ended.sort_by_key(|(id, _)| *id);
        let mut riders: Vec<_> = self.open_by_rider.iter().collect();
        riders.sort();
        let mut requests: Vec<_> = self
            .by_request
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        requests.extend(self.cold.entries().filter_map(|e| {
            let request = e.trip.request_id.clone()?;
            Some(((e.trip.rider.clone(), request), e.trip.id))
        }));
        requests.sort();
        let timers: Vec<_> = self.timers.iter().collect();
        let stats = Stats {
            location_updates: 0,
            ..self.stats()
        };
        let _ = writeln!(
            out,
            "ended {ended:?}\nended order {:?}\nriders {riders:?}\nrequests {requests:?}\n\
             timers {timers:?}\nbatch {:?} flush {:?}\nnext offset {}\n{stats:?}",
            self.ended_order, self.batch, self.batch_flush_at_ms, self.next_offset
        );
        out
    }
}
