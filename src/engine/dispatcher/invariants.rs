//! The dispatcher's cross-record invariants, checked by tests after every step (and cheap
//! enough to run in debug builds of simulations).

use super::Dispatcher;
use crate::engine::records::{DriverStatus, Stats};
use crate::events::TripStatus;

impl Dispatcher {
    /// Checks the cross-record invariants; returns what is broken. Used by tests after every
    /// step: a driver holds at most one offer and one trip, a trip at most one offer and one
    /// driver, AVAILABLE drivers and only they are in the index, counters match the records.
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
                        .ok_or(format!("{} holds ended offer {o}", d.id))?;
                    if p.driver != d.key {
                        return Err(format!("{} holds offer {o} made to another driver", d.id));
                    }
                }
                DriverStatus::OnTrip(t) => {
                    by_state[3] += 1;
                    let trip = self
                        .trips
                        .get(&t)
                        .ok_or(format!("{} on unknown trip {t}", d.id))?;
                    let assigned = matches!(
                        trip.status,
                        TripStatus::Accepted | TripStatus::Arrived | TripStatus::InProgress
                    );
                    if !assigned || trip.driver.as_ref().map(|x| x.0) != Some(d.key) {
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
                .trips
                .get(&p.details.trip)
                .ok_or(format!("offer {id} for unknown trip"))?;
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
        for trip in self.trips.values() {
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
            if let (Some((key, _)), true) = (&trip.driver, !trip.status.is_terminal()) {
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
        if open != self.open_by_rider.len() {
            return Err(format!(
                "{open} open trips but {} riders with one",
                self.open_by_rider.len()
            ));
        }
        Ok(())
    }

    /// A canonical text of the durable state: everything `replay` must rebuild (driver states,
    /// acceptance, trips today; trips; pending and recently ended offers; indexes by rider and
    /// request; id counters; event offset; counters except location updates). Positions and
    /// online drivers' profile updates are not in it: they are not events, by design.
    pub fn durable_digest(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for d in &self.drivers {
            let _ = writeln!(
                out,
                "driver {} {:?} acc={:.12} trips={}@{} free={}",
                d.id, d.status, d.acceptance_rate, d.trips_today, d.trips_day, d.free_since_ms
            );
        }
        let mut trips: Vec<_> = self.trips.values().collect();
        trips.sort_by_key(|t| t.id);
        for t in trips {
            let _ = writeln!(out, "{t:?}");
        }
        let mut offers: Vec<_> = self.offers.iter().map(|(id, p)| (*id, p.driver)).collect();
        offers.sort();
        let mut ended: Vec<_> = self.ended_offers.iter().map(|(id, o)| (*id, *o)).collect();
        ended.sort_by_key(|(id, _)| *id);
        let mut riders: Vec<_> = self.open_by_rider.iter().collect();
        riders.sort();
        let mut requests: Vec<_> = self.by_request.iter().collect();
        requests.sort();
        let stats = Stats {
            location_updates: 0,
            ..self.stats()
        };
        let _ = writeln!(
            out,
            "offers {offers:?}\nended {ended:?}\nriders {riders:?}\nrequests {requests:?}\n\
             next offset {}\n{stats:?}",
            self.next_offset
        );
        out
    }
}
