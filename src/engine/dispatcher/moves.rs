//! Region moves: an available driver leaves this region for a neighbour, or arrives from one.
//!
//! A move is two events in two regions' logs, leave first, then join (the router sequences
//! them, `cluster::border`). Only an available driver may leave, so a driver with a pending
//! offer or a trip stays with that trip's region until it is free, and a leave that succeeded
//! left the driver offline here before any other region can take it: a driver is never in
//! two regions, at worst (the join failing) in none, offline.

use super::{Decide, Dispatcher, unknown_driver};
use crate::domain::ExternalId;
use crate::engine::records::{Driver, DriverStatus};
use crate::error::Error;
use crate::events::{EventKind, RegionJoin};
use std::sync::Arc;

impl Decide<'_> {
    fn leave_region(&mut self, driver: &ExternalId, to: &str) -> Result<(), Error> {
        let key = self
            .s
            .driver_key(driver.as_str())
            .ok_or_else(|| unknown_driver(driver.as_str()))?;
        match self.s.record(key).status {
            DriverStatus::Available => {
                self.emit(EventKind::DriverLeftRegion {
                    driver: driver.clone(),
                    to: to.to_owned(),
                });
                Ok(())
            }
            DriverStatus::Offline => Err(Error::FailedPrecondition(format!(
                "driver {driver} is offline here; only an available driver moves region"
            ))),
            DriverStatus::Offered(offer) => Err(Error::FailedPrecondition(format!(
                "driver {driver} holds offer {offer}; it stays in this region until it answers"
            ))),
            DriverStatus::OnTrip(trip) => Err(Error::FailedPrecondition(format!(
                "driver {driver} is on trip {trip}; it stays in this region until the trip ends"
            ))),
        }
    }

    fn join_region(&mut self, join: &RegionJoin) -> Result<(), Error> {
        match self.s.driver_key(join.driver.as_str()) {
            Some(key) if self.s.record(key).status != DriverStatus::Offline => {
                return Err(Error::FailedPrecondition(format!(
                    "driver {} is online in this region already; it cannot join it from {}",
                    join.driver, join.from
                )));
            }
            Some(_) => {}
            None if u32::try_from(self.s.driver_count()).is_err() => {
                return Err(Error::ResourceExhausted("the driver table is full".into()));
            }
            None => {}
        }
        // Idle time counts from the old region's instant, but never from the future.
        let mut join = join.clone();
        join.free_since_ms = join.free_since_ms.min(self.now_ms);
        self.emit(EventKind::DriverJoinedRegion(Arc::new(join)));
        Ok(())
    }
}

impl Dispatcher {
    /// Takes an available driver out of this region because it moves to region `to`
    /// (DriverLeftRegion); returns the driver as it was, the profile its join carries.
    /// FAILED_PRECONDITION for a driver that is offline, holds an offer or is on a trip.
    pub fn leave_region(
        &mut self,
        now_ms: u64,
        driver: &ExternalId,
        to: &str,
    ) -> Result<Driver, Error> {
        let before = self.driver(driver.as_str())?;
        self.decide(now_ms, |c| c.leave_region(driver, to))?;
        Ok(before)
    }

    /// Brings a driver from another region in, available (DriverJoinedRegion); waiting trips
    /// it can serve are offered to it at once. FAILED_PRECONDITION if it is online here.
    pub fn join_region(&mut self, now_ms: u64, join: RegionJoin) -> Result<Driver, Error> {
        self.decide(now_ms, |c| c.join_region(&join))?;
        let key = self
            .state
            .driver_key(join.driver.as_str())
            .ok_or_else(|| unknown_driver(join.driver.as_str()))?;
        self.serve_waiting(now_ms, Some(key));
        Ok(self.snapshot(key))
    }
}
