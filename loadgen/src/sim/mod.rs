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
use crate::ledger::{Ledger, PickupTimes};
use crate::progress::Progress;
use crate::report::{Percentiles, Report, gini};
use crate::rpc::Conn;
use crate::rpc::{self, Call, CallKind, Done, Ids, TripAction};
use crate::warmup::city_for;
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

mod react;
mod streams;
mod tick;
mod watchers;

pub(crate) use streams::add_summary;
use streams::{open_event_stream, open_location_streams, open_offer_streams};

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
    /// The simulation's drive time from the driver to the pickup when the offer arrived.
    actual_pickup_s: f64,
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
    /// `--watch-trips`: the WatchTrip streams kept open.
    watchers: watchers::Watchers,
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
}

/// Runs city mode against the server behind `channels` until the window (plus drain) ends or
/// `stop` resolves.
pub(crate) async fn run(
    cfg: &Config,
    channels: Vec<Conn>,
    stop: impl Future<Output = ()>,
    progress: &Progress,
) -> Result<Report> {
    let ids = Ids::new(&cfg.id_prefix);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let city = city_for(cfg, &mut rng)?;
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
            map: cfg.map.as_ref().map(|p| p.display().to_string()),
            drivers: cfg.drivers as u64,
            seed: cfg.seed,
            ..Report::default()
        },
        pending_online: 0,
        offers_unattributed: 0,
        watchers: watchers::Watchers::new(cfg.watch_trips, &channels),
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

    let window = watchers::measure_window(cfg.server_pid, channels[0].clone(), cfg.duration);
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
    sim.watchers.finish(&mut report);
    if stopped {
        window.abort(); // Stopped early: no full window to measure.
    } else if let Ok(Ok(measured)) = tokio::time::timeout(Duration::from_secs(10), window).await {
        watchers::record_window(&mut report, measured);
    }
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
    if !cfg.leave_online {
        progress.phase("taking drivers offline");
        let online: Vec<usize> = (0..sim.fleet.len())
            .filter(|&d| sim.fleet.phase[d] != Phase::Offline)
            .collect();
        crate::warmup::take_offline(&channels, &sim.ids, &online).await;
    }

    let counts = sim.ledger.counts();
    report.requests_sent = counts.sent;
    report.requests = counts.requests;
    report.matched = counts.matched;
    report.no_drivers = counts.no_drivers;
    report.cancelled = counts.cancelled;
    report.still_open = counts.still_open;
    report.request_to_offer_ms = Percentiles::from_us(&sim.ledger.to_offer_us);
    report.request_to_reply_ms = Percentiles::from_us(&sim.ledger.to_reply_us);
    report.request_to_accept_ms = Percentiles::from_us(&sim.ledger.to_accept_us);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    report.mean_pickup_eta_s = mean(&sim.ledger.pickup_etas_s);
    report.mean_actual_pickup_s = mean(&sim.ledger.actual_pickups_s);
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
