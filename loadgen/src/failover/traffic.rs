//! The client side of a failover run: drivers online in every region, riders requesting trips
//! through any process, each offered driver accepting and finishing the trip at once (so
//! drivers come free again), and every driver's position reported in batches. A call that
//! fails retryably (UNAVAILABLE while a region moves, a deadline on a paused or killed
//! process) is counted and retried on another process with the same request; what was
//! acknowledged is recorded for the history check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatch::cluster::audit::AckedTrip;
use dispatch::pb::rider_service_client::RiderServiceClient;
use dispatch::pb::{self, driver_service_client::DriverServiceClient};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::Layout;
use super::members::Reachable;

/// How long one call is retried before it counts as given up.
const RETRY_LIMIT: Duration = Duration::from_secs(60);

/// What the clients counted.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Attempts that failed, retryable or not.
    pub(super) failed: AtomicU64,
    /// Calls that got a non-retryable refusal at their first answer (never expected).
    pub(super) refused: AtomicU64,
    /// Calls given up after [`RETRY_LIMIT`] of retryable failures.
    pub(super) given_up: AtomicU64,
    /// Trip requests acknowledged.
    pub(super) acked: AtomicU64,
    /// Acceptances acknowledged.
    pub(super) accepted: AtomicU64,
    /// Location updates the servers accepted.
    pub(super) locations: AtomicU64,
    /// A few refusals, to show in the report.
    pub(super) samples: Mutex<Vec<String>>,
}

/// The shared client state.
#[derive(Debug)]
pub(super) struct Traffic {
    pub(super) reachable: Reachable,
    pub(super) counters: Counters,
    pub(super) acked: Mutex<Vec<AckedTrip>>,
    pub(super) stop: AtomicBool,
    layout: Layout,
    prefix: String,
    drivers: usize,
    next_request: AtomicU64,
}

/// Whether a status means "try again, maybe elsewhere" rather than an answer.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted
    )
}

impl Traffic {
    pub(super) fn new(layout: Layout, prefix: String, drivers: usize) -> Arc<Traffic> {
        Arc::new(Traffic {
            reachable: Reachable::default(),
            counters: Counters::default(),
            acked: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            layout,
            prefix,
            drivers,
            next_request: AtomicU64::new(0),
        })
    }

    fn driver(&self, i: usize) -> String {
        format!("{}d-{i}", self.prefix)
    }

    /// `f` on a reachable process until it answers; retryable failures are counted and
    /// retried (another process each time). `Err(true)`: refused after a retryable failure
    /// (an earlier attempt may have gone through), `Err(false)`: refused or given up.
    async fn call<T, F, Fut>(&self, rng: &mut ChaCha8Rng, mut f: F) -> Result<T, bool>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + RETRY_LIMIT;
        let mut failed_before = false;
        loop {
            let Some(channel) = self.reachable.pick(rng.random::<u32>() as usize) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match f(channel).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => {
                    self.counters.failed.fetch_add(1, Relaxed);
                    if retryable(&s) && Instant::now() < deadline {
                        failed_before = true;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    if retryable(&s) {
                        self.counters.given_up.fetch_add(1, Relaxed);
                    } else if !failed_before {
                        self.counters.refused.fetch_add(1, Relaxed);
                        let mut samples = self
                            .counters
                            .samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        if samples.len() < 10 {
                            samples.push(format!("{:?}: {}", s.code(), s.message()));
                        }
                    }
                    return Err(failed_before);
                }
            }
        }
    }

    /// Brings every driver online, each in its region (driver `i` in region `i % regions`).
    pub(super) async fn drivers_online(&self, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in 0..self.drivers {
            let request = pb::GoOnlineRequest {
                driver_id: self.driver(i),
                location: Some(self.layout.point_in(i % self.layout.regions, &mut rng)),
                rating: 4.8,
                vehicle_class: 0,
                gateway_id: format!("{}gw", self.prefix),
            };
            let _ = self
                .call(&mut rng, |ch| {
                    let request = request.clone();
                    async move { DriverServiceClient::new(ch).go_online(request).await }
                })
                .await;
        }
    }

    /// One rider worker: a trip request every `every`, until stopped.
    pub(super) async fn riders(self: Arc<Self>, seed: u64, every: Duration) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stop.load(Relaxed) {
            tick.tick().await;
            self.one_trip(&mut rng).await;
        }
    }

    async fn one_trip(&self, rng: &mut ChaCha8Rng) {
        let n = self.next_request.fetch_add(1, Relaxed);
        let region = rng.random_range(0..self.layout.regions);
        let request = pb::RequestTripRequest {
            rider_id: format!("{}r-{n}", self.prefix),
            request_id: format!("{}q-{n}", self.prefix),
            pickup: Some(self.layout.point_in(region, rng)),
            dropoff: Some(self.layout.point_in(region, rng)),
            vehicle_class: 0,
        };
        let answer = self
            .call(rng, |ch| {
                let request = request.clone();
                async move { RiderServiceClient::new(ch).request_trip(request).await }
            })
            .await;
        let Some(trip) = answer.ok().and_then(|r| r.trip) else {
            return;
        };
        self.counters.acked.fetch_add(1, Relaxed);
        let slot = {
            let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
            acked.push(AckedTrip {
                trip_id: trip.trip_id.clone(),
                assigned_driver: None,
            });
            acked.len() - 1
        };
        if trip.status() != pb::TripStatus::Offered || trip.offer_id.is_empty() {
            return;
        }
        let respond = pb::RespondToOfferRequest {
            offer_id: trip.offer_id.clone(),
            driver_id: trip.driver_id.clone(),
            accept: true,
        };
        let answer = self
            .call(rng, |ch| {
                let respond = respond.clone();
                async move { DriverServiceClient::new(ch).respond_to_offer(respond).await }
            })
            .await;
        let Some(after) = answer.ok().and_then(|r| r.trip) else {
            return;
        };
        if after.status() == pb::TripStatus::Accepted && after.driver_id == trip.driver_id {
            self.counters.accepted.fetch_add(1, Relaxed);
            self.acked.lock().unwrap_or_else(|e| e.into_inner())[slot].assigned_driver =
                Some(after.driver_id.clone());
        }
        let action = pb::TripActionRequest {
            trip_id: trip.trip_id.clone(),
            driver_id: trip.driver_id.clone(),
        };
        // Arrive, start and complete at once so the driver is free for the next trip.
        for step in 0..3 {
            let _ = self
                .call(rng, |ch| {
                    let action = action.clone();
                    async move {
                        let mut c = DriverServiceClient::new(ch);
                        match step {
                            0 => c.mark_arrived(action).await,
                            1 => c.start_trip(action).await,
                            _ => c.complete_trip(action).await,
                        }
                    }
                })
                .await;
        }
    }

    /// Reports every driver's position every `every`, in batches of `batch` through any
    /// process (each batch is split per region and forwarded to the owners), until stopped.
    pub(super) async fn locations(self: Arc<Self>, seed: u64, every: Duration, batch: usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stop.load(Relaxed) {
            tick.tick().await;
            let updates: Vec<pb::LocationUpdate> = (0..self.drivers)
                .map(|i| pb::LocationUpdate {
                    driver_id: self.driver(i),
                    location: Some(self.layout.point_in(i % self.layout.regions, &mut rng)),
                    recorded_at_ms: 0,
                })
                .collect();
            for part in updates.chunks(batch.max(1)) {
                let batch = pb::LocationBatch {
                    updates: part.to_vec(),
                };
                let summary = self
                    .call(&mut rng, |ch| {
                        let batch = batch.clone();
                        async move {
                            DriverServiceClient::new(ch)
                                .report_locations(tokio_stream::iter([batch]))
                                .await
                        }
                    })
                    .await;
                if let Ok(s) = summary {
                    self.counters.locations.fetch_add(s.accepted, Relaxed);
                }
            }
        }
    }
}
