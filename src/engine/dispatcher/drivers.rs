//! Driver decisions: going online (or updating an online driver's profile), going offline,
//! location reports.
//!
//! Every change a client can observe after a restart is an event: a repeated GoOnline that
//! changes the rating, class or gateway emits DriverProfileUpdated (which also moves a pending
//! offer to the new gateway). Only the position of an online driver is no event: it is a
//! location, kept in the state's non-durable part.

use super::{Decide, Dispatcher, GoOnline, offer_ref, unknown_driver};
use crate::domain::TripId;
use crate::domain::{DriverKey, ExternalId, LatLng};
use crate::engine::records::{Driver, DriverStatus, LocationRejection};
use crate::error::Error;
use crate::events::{EventKind, OfferCancelReason};

/// What GoOnline comes to for a driver already known.
enum Online {
    /// Online already: maybe a profile update (decided), maybe a new position.
    Already(DriverKey),
    /// New or offline: a DriverOnline (decided).
    Now,
}

impl Decide<'_> {
    fn go_online(&mut self, req: &GoOnline) -> Result<Online, Error> {
        let known = self.s.driver_key(req.driver.as_str());
        if let Some(key) = known {
            let d = self.s.record(key);
            if d.status != DriverStatus::Offline {
                if d.rating != req.rating || d.class != req.class || d.gateway != req.gateway {
                    self.emit(EventKind::DriverProfileUpdated {
                        driver: req.driver.clone(),
                        rating: req.rating,
                        class: req.class,
                        gateway: req.gateway.clone(),
                    });
                }
                return Ok(Online::Already(key));
            }
        } else if u32::try_from(self.s.driver_count()).is_err() {
            return Err(Error::ResourceExhausted("the driver table is full".into()));
        }
        self.emit(EventKind::DriverOnline {
            driver: req.driver.clone(),
            position: req.position,
            rating: req.rating,
            class: req.class,
            gateway: req.gateway.clone(),
        });
        Ok(Online::Now)
    }

    /// Returns the driver's key and the trip whose offer was withdrawn (to search again).
    fn go_offline(&mut self, driver: &ExternalId) -> Result<(DriverKey, Option<TripId>), Error> {
        let key = self
            .s
            .driver_key(driver.as_str())
            .ok_or_else(|| unknown_driver(driver.as_str()))?;
        let mut search = None;
        match self.s.record(key).status {
            DriverStatus::Offline => {}
            DriverStatus::OnTrip(trip) => {
                return Err(Error::FailedPrecondition(format!(
                    "driver {driver} is on trip {trip}; complete or cancel it before going offline"
                )));
            }
            DriverStatus::Offered(offer) => {
                // A driver holds only pending offers (a checked invariant).
                let details = &self
                    .s
                    .offer(offer)
                    .expect("a driver's offer is pending")
                    .details;
                let o = offer_ref(details);
                search = Some(details.trip);
                self.emit(EventKind::OfferCancelled(
                    o,
                    OfferCancelReason::DriverOffline,
                ));
                self.emit(EventKind::DriverOffline {
                    driver: driver.clone(),
                });
            }
            DriverStatus::Available => self.emit(EventKind::DriverOffline {
                driver: driver.clone(),
            }),
        }
        Ok((key, search))
    }
}

impl Dispatcher {
    /// Puts a driver online, or updates an online driver: a changed rating, class or gateway
    /// is a DriverProfileUpdated event; a new position is a location (not an event).
    pub fn go_online(&mut self, now_ms: u64, req: GoOnline) -> Result<Driver, Error> {
        let online = self.decide(now_ms, |c| c.go_online(&req))?;
        let key = match online {
            Online::Already(key) => {
                self.state.move_driver(key, req.position);
                // A new class or position may bring waiting trips within its reach.
                self.serve_waiting(now_ms, Some(key));
                key
            }
            Online::Now => {
                let key = self
                    .state
                    .driver_key(req.driver.as_str())
                    .expect("DriverOnline registers the driver");
                self.serve_waiting(now_ms, Some(key));
                key
            }
        };
        Ok(self.snapshot(key))
    }

    /// Takes a driver offline; a pending offer is cancelled and its trip cascades.
    pub fn go_offline(&mut self, now_ms: u64, driver: &ExternalId) -> Result<Driver, Error> {
        let (key, search) = self.decide(now_ms, |c| c.go_offline(driver))?;
        self.search_again(now_ms, search);
        Ok(self.snapshot(key))
    }

    /// Applies one location report and returns the driver's key. Not an event: locations are
    /// not part of the dispatch log.
    pub fn apply_location(
        &mut self,
        driver: &str,
        position: LatLng,
    ) -> Result<DriverKey, LocationRejection> {
        self.state.report_location(driver, position)
    }

    /// The dense key of a known driver. It stays the driver's for the dispatcher's life
    /// (drivers are only ever added), so a caller applying many reports (the what-if replay)
    /// can resolve each name once and use [`apply_location_key`](Self::apply_location_key).
    pub fn driver_key(&self, driver: &str) -> Option<DriverKey> {
        self.state.driver_key(driver)
    }

    /// [`apply_location`](Self::apply_location) by the key [`driver_key`](Self::driver_key)
    /// gave: the same effect, without hashing the name.
    pub fn apply_location_key(
        &mut self,
        key: DriverKey,
        position: LatLng,
    ) -> Result<DriverKey, LocationRejection> {
        self.state.report_location_key(key, position)
    }

    /// [`apply_location`](Self::apply_location) with errors a person can read.
    pub fn update_location(&mut self, driver: &ExternalId, position: LatLng) -> Result<(), Error> {
        self.apply_location(driver.as_str(), position)
            .map(drop)
            .map_err(|why| match why {
                LocationRejection::DriverOffline => Error::FailedPrecondition(format!(
                    "driver {driver} is offline; call GoOnline before reporting locations"
                )),
                _ => Error::NotFound(format!(
                    "unknown driver {driver}; call GoOnline before reporting locations"
                )),
            })
    }
}
