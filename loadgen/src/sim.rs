//! City mode: the simulation loop that plays every driver and rider against the engine.
//!
//! One task owns all simulation state (the [`Fleet`], the [`Ledger`], the timers) and loops on
//! a 50 ms tick and on messages from the few tasks that touch the network: one location
//! stream and one offer stream per gateway, the dispatch event stream, and one call worker per
//! connection ([`crate::rpc::worker`]). Nothing blocks the loop: it hands calls to the workers
//! over unbounded channels (bounded in practice by the run's length and rate) and location
//! batches to the streams with `try_send`, counting a full stream as a locally dropped batch.
//! Every message into the loop carries the instant it was observed, so queueing inside the
//! load generator does not distort the latencies it reports.

use crate::city::{City, Xy};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fleet::{Fleet, Phase, mix3, mix64, unit};
use crate::ledger::Ledger;
use crate::progress::Progress;
use crate::report::{Percentiles, Report, gini};
use crate::rpc::{self, Call, CallKind, Done, Ids, TripAction};
use dispatch::pb;
use dispatch::pb::driver_notice::Notice;
use dispatch::pb::driver_service_client::DriverServiceClient;
use dispatch::pb::event_service_client::EventServiceClient;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

/// Simulation tick: timers, churn and location reports.
const TICK: Duration = Duration::from_millis(50);
/// Request tick: requests are issued on their own finer tick so that at 1,000/s they leave
/// two at a time rather than in bursts of 50 that would queue behind each other.
const REQUEST_TICK: Duration = Duration::from_millis(2);
/// Location batches a gateway stream may hold before the loop drops new ones.
const STREAM_QUEUE: usize = 256;
/// Real-time seconds a driver takes to answer an offer: uniform in this range.
const ANSWER_DELAY_S: (f64, f64) = (1.0, 8.0);
/// Simulated seconds for the rider to board (scaled by the trip time scale).
const BOARDING_S: f64 = 60.0;
/// Mean simulated seconds an offline driver stays offline.
const OFFLINE_MEAN_S: f64 = 120.0;
/// Longest wait for every driver to come online before the window starts.
const WARMUP_LIMIT: Duration = Duration::from_secs(300);

/// Something the simulation must do at a simulation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Driver answers its offer (if still at `generation`).
    Answer {
        driver: u32,
        generation: u32,
        accept: bool,
    },
    /// Driver reached the pickup.
    AtPickup { driver: u32, generation: u32 },
    /// Rider on board: start the trip.
    Boarded { driver: u32, generation: u32 },
    /// Driver reached the drop-off.
    AtDropoff { driver: u32, generation: u32 },
    /// Rider gives up on request `request` unless a driver accepted.
    RiderCancel { request: u32 },
}

/// A timer entry ordered by due time (milliseconds of simulation time), then insertion order.
type TimerEntry = Reverse<(u64, u64, Timer)>;

/// Something a network task observed.
#[derive(Debug)]
enum Observed {
    /// A message on gateway `gateway`'s offer stream, received at `at`.
    Notice { notice: Notice, at: Instant },
    /// A dispatch event (only NO_DRIVERS is subscribed).
    NoDrivers { trip_id: String },
    /// A stream ended with an error.
    StreamError(String),
}

/// A trip a driver holds, from its offer.
#[derive(Debug, Clone)]
struct Job {
    offer_id: String,
    trip_id: String,
    pickup: Xy,
    dropoff: Xy,
    pickup_eta_s: f64,
}

/// The whole city simulation's state, owned by one task.
struct Sim {
    cfg: Config,
    ids: Ids,
    driver_ids: Vec<String>,
    city: City,
    fleet: Fleet,
    jobs: Vec<Option<Job>>,
    offers_seen: Vec<u32>,
    offline: Vec<u32>,
    online: usize,
    ledger: Ledger,
    rng: ChaCha8Rng,
    rider_rng: ChaCha8Rng,
    timers: BinaryHeap<TimerEntry>,
    timer_seq: u64,
    calls: Vec<mpsc::UnboundedSender<Call>>,
    next_worker: usize,
    locations: Vec<mpsc::Sender<pb::LocationBatch>>,
    start: Instant,
    report: Report,
    pending_online: usize,
    offers_unattributed: u64,
}

impl Sim {
    /// Simulation seconds since the window start (negative during warm-up).
    fn t_s(&self, at: Instant) -> f64 {
        if at >= self.start {
            at.duration_since(self.start).as_secs_f64()
        } else {
            -(self.start.duration_since(at).as_secs_f64())
        }
    }

    fn schedule(&mut self, at_s: f64, timer: Timer) {
        self.timer_seq += 1;
        let ms = (at_s.max(0.0) * 1000.0) as u64;
        self.timers.push(Reverse((ms, self.timer_seq, timer)));
    }

    fn call(&mut self, call: Call) {
        let w = self.next_worker % self.calls.len();
        self.next_worker = self.next_worker.wrapping_add(1);
        if self.calls[w].send(call).is_err() {
            self.error("call worker stopped".to_string());
        }
    }

    fn error(&mut self, message: String) {
        self.report.errors += 1;
        if self.report.error_examples.len() < 10 {
            self.report.error_examples.push(message);
        }
    }

    fn go_online(&mut self, d: usize, t_s: f64) {
        self.fleet.set_phase(d, Phase::GoingOnline);
        let p = self.fleet.position(&self.city, d, t_s);
        let (lat, lng) = self.city.to_lat_lng(p);
        let h = mix3(self.cfg.seed, d as u64, 0x5EED_0001);
        let class = match h % 10 {
            0..=6 => pb::VehicleClass::Economy,
            7..=8 => pb::VehicleClass::Comfort,
            _ => pb::VehicleClass::Xl,
        };
        let req = pb::GoOnlineRequest {
            driver_id: self.driver_ids[d].clone(),
            location: Some(pb::LatLng {
                lat_deg: lat,
                lng_deg: lng,
            }),
            rating: 4.0 + unit(mix64(h)),
            vehicle_class: class as i32,
            gateway_id: self.ids.gateway(d % self.cfg.gateways),
        };
        let generation = self.fleet.generation[d];
        self.pending_online += 1;
        self.call(Call::GoOnline {
            driver: d as u32,
            generation,
            req,
        });
    }

    fn trip_call(&mut self, d: usize, action: TripAction) {
        let Some(job) = &self.jobs[d] else { return };
        let req = pb::TripActionRequest {
            trip_id: job.trip_id.clone(),
            driver_id: self.driver_ids[d].clone(),
        };
        let generation = self.fleet.generation[d];
        self.call(Call::TripAction {
            driver: d as u32,
            generation,
            action,
            req,
        });
    }

    /// Driver `d` drops whatever it held and cruises from where it is.
    fn release(&mut self, d: usize, t_s: f64) {
        self.fleet.park(&self.city, d, t_s);
        self.fleet.set_phase(d, Phase::Idle);
        self.jobs[d] = None;
    }

    fn on_tick(&mut self, now: Instant, due: &mut Vec<u32>) {
        let t_s = self.t_s(now);
        self.fire_timers(t_s);
        self.churn(t_s);
        if !self.locations.is_empty() {
            self.report_locations(t_s, due);
        }
    }

    fn issue_requests(&mut self, t_s: f64) {
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

    fn fire_timers(&mut self, t_s: f64) {
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

    fn fire(&mut self, timer: Timer) {
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
    fn churn(&mut self, t_s: f64) {
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

    fn report_locations(&mut self, t_s: f64, due: &mut Vec<u32>) {
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
        let mut batches: Vec<Vec<pb::LocationUpdate>> = (0..g)
            .map(|_| Vec::with_capacity(due.len() / g + 1))
            .collect();
        for &i in due.iter() {
            let i = i as usize;
            let p = self.fleet.position(&self.city, i, t_s);
            let (lat, lng) = self.city.to_lat_lng(p);
            batches[i % self.cfg.gateways % g].push(pb::LocationUpdate {
                driver_id: self.driver_ids[i].clone(),
                location: Some(pb::LatLng {
                    lat_deg: lat,
                    lng_deg: lng,
                }),
                recorded_at_ms,
            });
        }
        for (k, updates) in batches.into_iter().enumerate() {
            if updates.is_empty() {
                continue;
            }
            let n = updates.len() as u64;
            match self.locations[k].try_send(pb::LocationBatch { updates }) {
                Ok(()) => self.report.location_updates_sent += n,
                Err(_) => self.report.location_batches_dropped += 1,
            }
        }
    }

    fn on_notice(&mut self, notice: Notice, at: Instant) {
        let t_s = self.t_s(at);
        match notice {
            Notice::Offer(o) => {
                self.report.offers += 1;
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
                self.fleet.set_phase(d, Phase::Offered);
                self.jobs[d] = Some(Job {
                    offer_id: o.offer_id,
                    trip_id: o.trip_id,
                    pickup,
                    dropoff,
                    pickup_eta_s: o.pickup_eta_s,
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

    fn on_done(&mut self, done: Done) {
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
                                job.as_ref().map(|j| j.pickup_eta_s),
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
                        .replied(n, done.sent_at, &trip.trip_id, no_drivers);
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

    fn live(&self, progress: &Progress, now: Instant) {
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

/// Opens the gateway offer streams and forwards every notice, stamped on arrival.
async fn open_offer_streams(
    channels: &[Channel],
    ids: &Ids,
    gateways: usize,
    obs_tx: &mpsc::UnboundedSender<Observed>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(gateways);
    for k in 0..gateways {
        let mut client = DriverServiceClient::new(channels[k % channels.len()].clone());
        let req = pb::SubscribeOffersRequest {
            gateway_id: ids.gateway(k),
        };
        let mut stream = client
            .subscribe_offers(req)
            .await
            .map_err(|s| Error::rpc("SubscribeOffers", s))?
            .into_inner();
        let tx = obs_tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(pb::DriverNotice {
                        notice: Some(notice),
                    })) => {
                        let at = Instant::now();
                        if tx.send(Observed::Notice { notice, at }).is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let _ = tx.send(Observed::StreamError("offer stream ended".into()));
                        return;
                    }
                    Err(status) => {
                        let _ = tx.send(Observed::StreamError(rpc::describe(
                            "SubscribeOffers",
                            &status,
                        )));
                        return;
                    }
                }
            }
        }));
    }
    Ok(tasks)
}

/// Subscribes to NO_DRIVERS dispatch events (from the next one on).
async fn open_event_stream(
    channel: Channel,
    obs_tx: &mpsc::UnboundedSender<Observed>,
) -> Result<JoinHandle<()>> {
    let mut client = EventServiceClient::new(channel);
    let req = pb::SubscribeRequest {
        from_offset: None,
        kinds: vec![pb::EventKind::NoDrivers as i32],
    };
    let mut stream = client
        .subscribe(req)
        .await
        .map_err(|s| Error::rpc("EventService.Subscribe", s))?
        .into_inner();
    let tx = obs_tx.clone();
    Ok(tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    if ev.kind() == pb::EventKind::NoDrivers
                        && tx
                            .send(Observed::NoDrivers {
                                trip_id: ev.trip_id,
                            })
                            .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.send(Observed::StreamError(rpc::describe(
                        "EventService.Subscribe",
                        &status,
                    )));
                    return;
                }
            }
        }
    }))
}

/// A location stream's task, which returns the stream's summary when the stream is closed.
type SummaryTask = JoinHandle<Result<pb::LocationSummary, tonic::Status>>;

/// Opens one location stream per gateway; each task returns the stream's summary.
fn open_location_streams(
    channels: &[Channel],
    gateways: usize,
) -> (Vec<mpsc::Sender<pb::LocationBatch>>, Vec<SummaryTask>) {
    let mut senders = Vec::with_capacity(gateways);
    let mut tasks = Vec::with_capacity(gateways);
    for k in 0..gateways {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let mut client = DriverServiceClient::new(channels[k % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            client
                .report_locations(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|r| r.into_inner())
        }));
        senders.push(tx);
    }
    (senders, tasks)
}

/// Adds a closed location stream's summary to the report.
pub(crate) fn add_summary(report: &mut Report, summary: &pb::LocationSummary) {
    report.location_updates += summary.accepted;
    report.location_rejected += summary.rejected;
    for r in &summary.rejections {
        if r.reason() == pb::LocationRejection::Shed {
            report.location_shed += r.count;
        }
    }
}

/// Runs city mode against the server behind `channels` until the window (plus drain) ends or
/// `stop` resolves.
pub(crate) async fn run(
    cfg: &Config,
    channels: Vec<Channel>,
    stop: impl Future<Output = ()>,
    progress: &Progress,
) -> Result<Report> {
    let ids = Ids::new(&cfg.id_prefix);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let city = City::new(
        cfg.centre_lat,
        cfg.centre_lng,
        cfg.city_km,
        cfg.block_m,
        cfg.hotspots,
        &mut rng,
    );
    let fleet = Fleet::new(
        &city,
        cfg.drivers,
        cfg.seed,
        cfg.report_interval_s,
        &mut rng,
    );
    let rider_rng = ChaCha8Rng::seed_from_u64(mix64(cfg.seed ^ 0x51DE_5EED));
    let driver_ids: Vec<String> = (0..cfg.drivers).map(|i| ids.driver(i)).collect();

    let (obs_tx, mut obs_rx) = mpsc::unbounded_channel::<Observed>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut calls = Vec::new();
    let mut workers = Vec::new();
    for ch in &channels {
        let (tx, rx) = mpsc::unbounded_channel();
        workers.push(tokio::spawn(rpc::worker(ch.clone(), rx, done_tx.clone())));
        calls.push(tx);
    }
    drop(done_tx);

    // Subscribe before any driver goes online, so no offer can be missed.
    let offer_tasks = open_offer_streams(&channels, &ids, cfg.gateways, &obs_tx).await?;
    let event_task = open_event_stream(channels[0].clone(), &obs_tx).await?;
    drop(obs_tx);

    let warmup_start = Instant::now();
    let mut sim = Sim {
        cfg: cfg.clone(),
        ids,
        driver_ids,
        jobs: vec![None; cfg.drivers],
        offers_seen: vec![0; cfg.drivers],
        offline: Vec::new(),
        online: 0,
        city,
        fleet,
        ledger: Ledger::new(),
        rng,
        rider_rng,
        timers: BinaryHeap::new(),
        timer_seq: 0,
        calls,
        next_worker: 0,
        locations: Vec::new(),
        start: warmup_start,
        report: Report {
            mode: "city".into(),
            drivers: cfg.drivers as u64,
            seed: cfg.seed,
            ..Report::default()
        },
        pending_online: 0,
        offers_unattributed: 0,
    };

    tokio::pin!(stop);
    let mut stopped = false;

    // Warm-up: every driver online at its starting intersection.
    progress.phase(&format!("bringing {} drivers online", cfg.drivers));
    for d in 0..cfg.drivers {
        sim.go_online(d, 0.0);
    }
    let warmup_deadline = warmup_start + WARMUP_LIMIT;
    while sim.pending_online > 0 && !stopped {
        tokio::select! {
            biased;
            _ = &mut stop => stopped = true,
            done = done_rx.recv() => match done {
                Some(done) => sim.on_done(done),
                None => break,
            },
            obs = obs_rx.recv() => if let Some(obs) = obs { sim.on_observed(obs) },
            _ = tokio::time::sleep_until(warmup_deadline) => {
                sim.error(format!("warm-up: {} drivers still not online", sim.pending_online));
                break;
            }
        }
    }
    let start = Instant::now();
    sim.report.warmup_s = start.duration_since(warmup_start).as_secs_f64();
    sim.start = start;
    // Reports are scheduled from the window start.
    for v in sim.fleet.next_report_s.iter_mut() {
        *v = v.max(0.0);
    }
    for d in 0..sim.fleet.len() {
        if sim.fleet.phase[d] == Phase::Idle {
            sim.fleet.park(&sim.city, d, 0.0);
        }
    }

    let (loc_senders, loc_tasks) = open_location_streams(&channels, cfg.gateways);
    sim.locations = loc_senders;

    let window_end = start + cfg.duration;
    let drain_end = window_end + cfg.drain;
    let mut tick = tokio::time::interval_at(start, TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut request_tick = tokio::time::interval_at(start, REQUEST_TICK);
    request_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut due = Vec::new();
    let mut last_live = start;
    let mut window_closed_at = None;
    progress.start(cfg.duration.as_secs_f64());
    while !stopped {
        tokio::select! {
            biased;
            _ = &mut stop => stopped = true,
            _ = request_tick.tick(), if window_closed_at.is_none() => {
                let now = Instant::now();
                if now < window_end {
                    sim.issue_requests(sim.t_s(now));
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if now >= drain_end {
                    break;
                }
                let requesting = now < window_end;
                if !requesting && window_closed_at.is_none() {
                    window_closed_at = Some(now);
                    // Close the location streams at the window end: their summaries then
                    // count exactly the window's updates.
                    sim.locations.clear();
                    progress.phase("draining open trips");
                }
                sim.on_tick(now, &mut due);
                if now.duration_since(last_live) >= Duration::from_millis(250) {
                    last_live = now;
                    sim.live(progress, now);
                }
            }
            done = done_rx.recv() => match done {
                Some(done) => {
                    sim.on_done(done);
                    // Drain what is queued without going back through select!.
                    for _ in 0..256 {
                        match done_rx.try_recv() {
                            Ok(done) => sim.on_done(done),
                            Err(_) => break,
                        }
                    }
                }
                None => break,
            },
            obs = obs_rx.recv() => if let Some(obs) = obs {
                sim.on_observed(obs);
                for _ in 0..256 {
                    match obs_rx.try_recv() {
                        Ok(obs) => sim.on_observed(obs),
                        Err(_) => break,
                    }
                }
            },
        }
    }
    let end = window_closed_at.unwrap_or_else(Instant::now);
    sim.locations.clear();
    progress.phase("collecting location summaries");

    let mut report = std::mem::take(&mut sim.report);
    report.duration_s = end.duration_since(start).as_secs_f64();
    for t in loc_tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Ok(summary))) => add_summary(&mut report, &summary),
            Ok(Ok(Err(status))) => {
                report.errors += 1;
                report
                    .error_examples
                    .push(rpc::describe("ReportLocations", &status));
            }
            Ok(Err(join)) => {
                report.errors += 1;
                report
                    .error_examples
                    .push(format!("location stream task: {join}"));
            }
            Err(_) => {
                report.errors += 1;
                report
                    .error_examples
                    .push("ReportLocations: no summary within 10 s".into());
            }
        }
    }
    for t in offer_tasks {
        t.abort();
    }
    event_task.abort();
    drop(sim.calls);
    for w in workers {
        w.abort();
    }

    let counts = sim.ledger.counts();
    report.requests_sent = counts.sent;
    report.requests = counts.requests;
    report.matched = counts.matched;
    report.no_drivers = counts.no_drivers;
    report.cancelled = counts.cancelled;
    report.still_open = counts.still_open;
    report.request_to_offer_ms = Percentiles::from_us(&sim.ledger.to_offer_us);
    report.request_to_accept_ms = Percentiles::from_us(&sim.ledger.to_accept_us);
    let etas = &sim.ledger.pickup_etas_s;
    report.mean_pickup_eta_s = if etas.is_empty() {
        0.0
    } else {
        etas.iter().sum::<f64>() / etas.len() as f64
    };
    report.driver_trips_gini = gini(&sim.fleet.trips_assigned);
    report.error_examples.truncate(10);
    report.finish_rates();
    report.samples.request_to_offer_us = Some(sim.ledger.to_offer_us.clone());
    report.samples.request_to_accept_us = Some(sim.ledger.to_accept_us.clone());
    report.samples.pickup_etas_s = std::mem::take(&mut sim.ledger.pickup_etas_s);
    report.samples.trips_per_driver = std::mem::take(&mut sim.fleet.trips_assigned);
    if sim.offers_unattributed > 0 {
        report.error_examples.push(format!(
            "{} offers named drivers this run does not know",
            sim.offers_unattributed
        ));
    }
    Ok(report)
}

impl Sim {
    fn on_observed(&mut self, obs: Observed) {
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
