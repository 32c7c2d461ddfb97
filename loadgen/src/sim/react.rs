//! How simulated drivers and riders react to what the engine tells them: offers and their
//! ends on the gateway streams, and the replies to their calls.

use super::*;

impl Sim {
    pub(super) fn on_notice(&mut self, notice: Notice, at: Instant) {
        let t_s = self.t_s(at);
        match notice {
            Notice::Offer(o) => {
                self.report.offers += 1;
                match o.eta_source() {
                    pb::EtaSource::Road => self.report.offers_eta_road += 1,
                    pb::EtaSource::StraightLineFallback => self.report.offers_eta_fallback += 1,
                    _ => {}
                }
                self.ledger.offer(&o.trip_id, at);
                let Some(d) = self
                    .ids
                    .driver_index(&o.driver_id)
                    .filter(|&d| d < self.fleet.len())
                else {
                    self.offers_unattributed += 1;
                    return;
                };
                if !matches!(self.fleet.phase[d], Phase::Idle | Phase::Completing) {
                    // E.g. a driver that is going offline: the engine withdraws the offer.
                    self.report.conflicts += 1;
                    return;
                }
                let to_xy = |p: Option<pb::LatLng>, city: &City| {
                    p.map(|p| city.snap(city.to_xy(p.lat_deg, p.lng_deg)))
                };
                let (Some(pickup), Some(dropoff)) =
                    (to_xy(o.pickup, &self.city), to_xy(o.dropoff, &self.city))
                else {
                    self.error(format!("offer {} without pickup or drop-off", o.offer_id));
                    return;
                };
                // What the rider would wait if this driver takes the trip, measured now, where
                // the engine chose it (before it moves on while thinking about the offer).
                let actual_pickup_s = self.fleet.drive_time_s(&self.city, d, t_s, pickup);
                self.fleet.set_phase(d, Phase::Offered);
                self.jobs[d] = Some(Job {
                    offer_id: o.offer_id,
                    trip_id: o.trip_id,
                    pickup,
                    dropoff,
                    pickup_eta_s: o.pickup_eta_s,
                    actual_pickup_s,
                });
                // The driver's choice depends only on (seed, driver, how many offers it saw).
                let k = self.offers_seen[d];
                self.offers_seen[d] += 1;
                let h = mix3(self.cfg.seed ^ 0x0FFE_4000, d as u64, u64::from(k));
                if unit(h) < self.cfg.ignore_prob {
                    return; // never answers: the offer expires after its window
                }
                let accept = unit(mix64(h ^ 1)) < self.cfg.accept_prob;
                let (lo, hi) = ANSWER_DELAY_S;
                let delay = lo + (hi - lo) * unit(mix64(h ^ 2));
                let generation = self.fleet.generation[d];
                self.schedule(
                    t_s + delay,
                    Timer::Answer {
                        driver: d as u32,
                        generation,
                        accept,
                    },
                );
            }
            Notice::OfferExpired(c) | Notice::OfferCancelled(c) => {
                if let Some(d) = self
                    .ids
                    .driver_index(&c.driver_id)
                    .filter(|&d| d < self.fleet.len())
                {
                    let holds = self.jobs[d]
                        .as_ref()
                        .is_some_and(|j| j.offer_id == c.offer_id);
                    if holds && self.fleet.phase[d] == Phase::Offered {
                        self.release(d, t_s);
                    }
                }
            }
            Notice::TripCancelled(n) => {
                if let Some(d) = self
                    .ids
                    .driver_index(&n.driver_id)
                    .filter(|&d| d < self.fleet.len())
                {
                    let holds = self.jobs[d]
                        .as_ref()
                        .is_some_and(|j| j.trip_id == n.trip_id);
                    if holds {
                        self.release(d, t_s);
                    }
                }
            }
        }
    }

    pub(super) fn on_done(&mut self, done: Done) {
        let t_s = self.t_s(done.at);
        let failed = |s: &mut Sim, what: &str, status: &tonic::Status| {
            if status.code() == Code::FailedPrecondition {
                s.report.conflicts += 1;
            } else {
                s.error(rpc::describe(what, status));
            }
        };
        match done.call {
            CallKind::GoOnline(d, g) => {
                let d = d as usize;
                self.pending_online = self.pending_online.saturating_sub(1);
                let mine = self.fleet.generation[d] == g;
                match done.result {
                    Ok(_) => {
                        if mine {
                            self.fleet.set_phase(d, Phase::Idle);
                            self.online += 1;
                        }
                    }
                    Err(status) => {
                        self.error(rpc::describe("GoOnline", &status));
                        if mine {
                            self.fleet.set_phase(d, Phase::Offline);
                            self.offline.push(d as u32);
                        }
                    }
                }
            }
            CallKind::GoOffline(d, g) => {
                let d = d as usize;
                let mine = self.fleet.generation[d] == g;
                match done.result {
                    Ok(_) => {
                        if mine {
                            self.fleet.set_phase(d, Phase::Offline);
                            self.offline.push(d as u32);
                        }
                    }
                    Err(status) => {
                        failed(self, "GoOffline", &status);
                        if mine {
                            self.online += 1;
                            self.release(d, t_s);
                        }
                    }
                }
            }
            CallKind::Respond(d, g, accept) => {
                let d = d as usize;
                let mine = self.fleet.generation[d] == g;
                match done.result {
                    Ok(trip) if accept => {
                        let trip_id = trip.as_ref().map(|t| t.trip_id.clone());
                        let job = self.jobs[d].clone();
                        let trip_id = trip_id
                            .filter(|id| !id.is_empty())
                            .or_else(|| job.as_ref().map(|j| j.trip_id.clone()));
                        if let Some(trip_id) = trip_id {
                            self.ledger.accepted(
                                &trip_id,
                                done.at,
                                job.as_ref().map(|j| PickupTimes {
                                    eta_s: j.pickup_eta_s,
                                    actual_s: j.actual_pickup_s,
                                }),
                            );
                        }
                        self.fleet.trips_assigned[d] += 1;
                        if mine && let Some(job) = job {
                            self.fleet.set_phase(d, Phase::ToPickup);
                            let arrive = self.fleet.drive_to(
                                &self.city,
                                d,
                                t_s,
                                job.pickup,
                                self.cfg.trip_time_scale,
                            );
                            let generation = self.fleet.generation[d];
                            self.schedule(
                                arrive,
                                Timer::AtPickup {
                                    driver: d as u32,
                                    generation,
                                },
                            );
                        }
                    }
                    Ok(_) => self.report.declines += 1,
                    Err(status) => {
                        failed(self, "RespondToOffer", &status);
                        if mine && accept {
                            self.release(d, t_s);
                        }
                    }
                }
            }
            CallKind::TripAction(d, g, action) => {
                let d = d as usize;
                let mine = self.fleet.generation[d] == g;
                match (done.result, action) {
                    (Ok(_), TripAction::Arrived) => {
                        if mine {
                            let generation = self.fleet.generation[d];
                            self.schedule(
                                t_s + BOARDING_S / self.cfg.trip_time_scale,
                                Timer::Boarded {
                                    driver: d as u32,
                                    generation,
                                },
                            );
                        }
                    }
                    (Ok(_), TripAction::Start) => {
                        if mine && let Some(job) = self.jobs[d].clone() {
                            self.fleet.set_phase(d, Phase::OnTrip);
                            let arrive = self.fleet.drive_to(
                                &self.city,
                                d,
                                t_s,
                                job.dropoff,
                                self.cfg.trip_time_scale,
                            );
                            let generation = self.fleet.generation[d];
                            self.schedule(
                                arrive,
                                Timer::AtDropoff {
                                    driver: d as u32,
                                    generation,
                                },
                            );
                        }
                    }
                    (Ok(_), TripAction::Complete) => {
                        self.report.trips_completed += 1;
                        if mine {
                            // The engine puts the driver back at the drop-off, available.
                            self.release(d, t_s);
                        }
                    }
                    (Err(status), _) => {
                        let what = match action {
                            TripAction::Arrived => "MarkArrived",
                            TripAction::Start => "StartTrip",
                            TripAction::Complete => "CompleteTrip",
                        };
                        failed(self, what, &status);
                        if mine {
                            self.release(d, t_s);
                        }
                    }
                }
            }
            CallKind::RequestTrip(n) => match done.result {
                Ok(Some(trip)) if !trip.trip_id.is_empty() => {
                    let no_drivers = trip.status() == pb::TripStatus::NoDrivers;
                    self.ledger
                        .replied(n, done.sent_at, done.at, &trip.trip_id, no_drivers);
                    if !no_drivers {
                        self.watchers.offer(&trip.trip_id);
                    }
                }
                Ok(_) => self.error("RequestTrip: reply without a trip".to_string()),
                Err(status) => self.error(rpc::describe("RequestTrip", &status)),
            },
            CallKind::CancelTrip(_) => match done.result {
                Ok(Some(trip)) => {
                    if trip.status() == pb::TripStatus::Cancelled {
                        self.ledger.cancelled(&trip.trip_id);
                    }
                }
                Ok(None) => self.error("CancelTrip: reply without a trip".to_string()),
                Err(status) => failed(self, "CancelTrip", &status),
            },
        }
    }

    pub(super) fn on_observed(&mut self, obs: Observed) {
        match obs {
            Observed::Notice { notice, at } => {
                if let Notice::OfferExpired(c) = &notice
                    && self.ledger.knows(&c.trip_id)
                {
                    self.report.offer_timeouts += 1;
                }
                self.on_notice(notice, at);
            }
            Observed::NoDrivers { trip_id } => self.ledger.no_drivers(&trip_id),
            Observed::StreamError(message) => self.error(message),
        }
    }
}
