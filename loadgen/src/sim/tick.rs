//! The simulation's clockwork: what happens on each tick (requests, timers, churn, location
//! reports) and the live figures.

use super::*;

impl Sim {
    pub(super) fn on_tick(&mut self, now: Instant, due: &mut Vec<u32>) {
        let t_s = self.t_s(now);
        self.fire_timers(t_s);
        self.churn(t_s);
        if !self.locations.is_empty() {
            self.report_locations(t_s, due);
        }
    }

    pub(super) fn issue_requests(&mut self, t_s: f64) {
        let target = (self.cfg.requests_per_sec * t_s).floor() as usize;
        // Bounded: at most one tick's worth plus a little catch-up per tick.
        let limit = (self.cfg.requests_per_sec * 1.0).ceil() as usize + 1;
        let mut n = 0;
        while self.ledger.issued() < target && n < limit {
            n += 1;
            let pickup = self.city.sample_demand(&mut self.rider_rng);
            let dropoff = self.city.sample_dropoff(pickup, &mut self.rider_rng);
            let cancels = self.rider_rng.random_bool(self.cfg.cancel_prob);
            let patience_s = self.rider_rng.random_range(3.0..20.0);
            let request = self.ledger.issue();
            let (plat, plng) = self.city.to_lat_lng(pickup);
            let (dlat, dlng) = self.city.to_lat_lng(dropoff);
            let req = pb::RequestTripRequest {
                rider_id: self.ids.rider(request as usize),
                request_id: self.ids.request(request as usize),
                pickup: Some(pb::LatLng {
                    lat_deg: plat,
                    lng_deg: plng,
                }),
                dropoff: Some(pb::LatLng {
                    lat_deg: dlat,
                    lng_deg: dlng,
                }),
                vehicle_class: pb::VehicleClass::Unspecified as i32,
            };
            self.call(Call::RequestTrip { request, req });
            if cancels {
                self.schedule(t_s + patience_s, Timer::RiderCancel { request });
            }
        }
    }

    pub(super) fn fire_timers(&mut self, t_s: f64) {
        let now_ms = (t_s.max(0.0) * 1000.0) as u64;
        while let Some(Reverse((ms, _, _))) = self.timers.peek() {
            if *ms > now_ms {
                break;
            }
            let Some(Reverse((_, _, timer))) = self.timers.pop() else {
                break;
            };
            self.fire(timer);
        }
    }

    pub(super) fn fire(&mut self, timer: Timer) {
        let current = |s: &Sim, d: u32, g: u32| s.fleet.generation[d as usize] == g;
        match timer {
            Timer::Answer {
                driver,
                generation,
                accept,
            } => {
                if !current(self, driver, generation)
                    || self.fleet.phase[driver as usize] != Phase::Offered
                {
                    return;
                }
                let d = driver as usize;
                let Some(job) = &self.jobs[d] else { return };
                let req = pb::RespondToOfferRequest {
                    offer_id: job.offer_id.clone(),
                    driver_id: self.driver_ids[d].clone(),
                    accept,
                };
                if accept {
                    self.fleet.set_phase(d, Phase::Accepting);
                } else {
                    // The engine frees the driver on the decline; new offers can only follow it.
                    self.fleet.set_phase(d, Phase::Idle);
                    self.jobs[d] = None;
                }
                let generation = self.fleet.generation[d];
                self.call(Call::Respond {
                    driver,
                    generation,
                    req,
                });
            }
            Timer::AtPickup { driver, generation } => {
                if current(self, driver, generation) {
                    let d = driver as usize;
                    self.fleet.set_phase(d, Phase::AtPickup);
                    self.trip_call(d, TripAction::Arrived);
                }
            }
            Timer::Boarded { driver, generation } => {
                if current(self, driver, generation) {
                    self.trip_call(driver as usize, TripAction::Start);
                }
            }
            Timer::AtDropoff { driver, generation } => {
                if current(self, driver, generation) {
                    let d = driver as usize;
                    self.fleet.set_phase(d, Phase::Completing);
                    self.trip_call(d, TripAction::Complete);
                }
            }
            Timer::RiderCancel { request } => {
                if let Some((trip_id, crate::ledger::Outcome::Open)) =
                    self.ledger.outcome_of_request(request)
                {
                    let req = pb::CancelTripRequest {
                        trip_id: trip_id.to_string(),
                        rider_id: self.ids.rider(request as usize),
                    };
                    self.call(Call::CancelTrip { request, req });
                }
            }
        }
    }

    /// Idle drivers go offline now and then; offline ones come back after a while.
    pub(super) fn churn(&mut self, t_s: f64) {
        if self.cfg.online_minutes <= 0.0 {
            return;
        }
        let dt = TICK.as_secs_f64();
        let leave = self.online as f64 * dt / (self.cfg.online_minutes * 60.0);
        let back = self.offline.len() as f64 * dt / OFFLINE_MEAN_S;
        let whole = |x: f64, rng: &mut ChaCha8Rng| {
            x.floor() as usize + usize::from(rng.random_bool((x - x.floor()).clamp(0.0, 1.0)))
        };
        let n_leave = whole(leave, &mut self.rng);
        for _ in 0..n_leave {
            let d = self.rng.random_range(0..self.fleet.len());
            if self.fleet.phase[d] == Phase::Idle {
                self.fleet.park(&self.city, d, t_s);
                self.fleet.set_phase(d, Phase::GoingOffline);
                self.online -= 1;
                self.report.driver_churn += 1;
                let generation = self.fleet.generation[d];
                let req = pb::GoOfflineRequest {
                    driver_id: self.driver_ids[d].clone(),
                };
                self.call(Call::GoOffline {
                    driver: d as u32,
                    generation,
                    req,
                });
            }
        }
        let n_back = whole(back, &mut self.rng).min(self.offline.len());
        for _ in 0..n_back {
            let k = self.rng.random_range(0..self.offline.len());
            let d = self.offline.swap_remove(k) as usize;
            self.report.driver_churn += 1;
            self.go_online(d, t_s);
        }
    }

    pub(super) fn report_locations(&mut self, t_s: f64, due: &mut Vec<u32>) {
        due.clear();
        self.fleet.due_reports(t_s, due);
        if due.is_empty() {
            return;
        }
        let g = self.locations.len();
        let recorded_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // At most `--batch-size` updates per message: a metro's burst (1M drivers over a few
        // gateways) would otherwise exceed the server's message and batch limits.
        let chunk = self.cfg.batch_size.max(1);
        let mut open: Vec<Vec<pb::LocationUpdate>> = (0..g)
            .map(|_| Vec::with_capacity((due.len() / g + 1).min(chunk)))
            .collect();
        let mut batches: Vec<(usize, Vec<pb::LocationUpdate>)> = Vec::new();
        for &i in due.iter() {
            let i = i as usize;
            let p = self.fleet.position(&self.city, i, t_s);
            let (lat, lng) = self.city.to_lat_lng(p);
            let k = i % self.cfg.gateways % g;
            open[k].push(pb::LocationUpdate {
                driver_id: self.driver_ids[i].clone(),
                location: Some(pb::LatLng {
                    lat_deg: lat,
                    lng_deg: lng,
                }),
                recorded_at_ms,
            });
            if open[k].len() >= chunk {
                batches.push((
                    k,
                    std::mem::replace(&mut open[k], Vec::with_capacity(chunk)),
                ));
            }
        }
        batches.extend(open.into_iter().enumerate().filter(|(_, u)| !u.is_empty()));
        for (k, updates) in batches {
            let n = updates.len() as u64;
            match self.locations[k].try_send(pb::LocationBatch { updates }) {
                Ok(()) => self.report.location_updates_sent += n,
                Err(_) => self.report.location_batches_dropped += 1,
            }
        }
    }

    pub(super) fn live(&self, progress: &Progress, now: Instant) {
        let t = self.t_s(now).max(0.001);
        let p99 = Percentiles::from_us(&self.ledger.to_offer_us).p99;
        let matched = self.ledger.live_matched;
        let reqs = self.ledger.live_requests;
        progress.set(
            t,
            format!(
                "online {} | loc {:.0}/s | req {:.0}/s | matched {} ({:.1}%) | offer p99 {:.2} ms | err {}",
                self.online,
                self.report.location_updates_sent as f64 / t,
                reqs as f64 / t,
                matched,
                if reqs > 0 { 100.0 * matched as f64 / reqs as f64 } else { 0.0 },
                p99,
                self.report.errors
            ),
        );
    }
}
