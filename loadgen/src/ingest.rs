//! Ingest mode: how many location updates per second the server confirms.
//!
//! A few client streams (`--clients`) push `--batch-size` batches as fast as HTTP/2 flow
//! control lets them, each over its own share of the drivers. Only what the server confirms in
//! `LocationSummary.accepted` counts, so every stream is closed every [`SEGMENT`] and reopened:
//! that yields confirmed figures while running and bounds what an interrupted run loses.

use crate::config::Config;
use crate::error::Result;
use crate::progress::Progress;
use crate::report::Report;
use crate::rpc::Conn;
use crate::rpc::{self, Ids};
use crate::sim::add_summary;
use crate::warmup::{city_for, warm_up_report};
use dispatch::pb;
use dispatch::pb::driver_service_client::DriverServiceClient;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long one stream stays open before it is closed for its summary.
const SEGMENT: Duration = Duration::from_secs(2);
/// Batches queued per stream ahead of the wire.
const QUEUE: usize = 8;
/// Random move per update, degrees (about +-50 m), so updates look like moving drivers.
const JITTER_DEG: f64 = 0.0005;

#[derive(Debug, Default)]
struct Live {
    sent: AtomicU64,
    confirmed: AtomicU64,
}

/// What one stream task found.
#[derive(Debug, Default)]
struct StreamResult {
    summaries: Vec<pb::LocationSummary>,
    errors: u64,
    examples: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
async fn push_stream(
    channel: Conn,
    drivers: Vec<(String, f64, f64)>,
    batch_size: usize,
    seed: u64,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
) -> StreamResult {
    let mut out = StreamResult::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cursor = 0usize;
    let client = DriverServiceClient::new(channel);
    // Bounded by the deadline: each segment lasts at most SEGMENT.
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) && !drivers.is_empty() {
        let (tx, rx) = mpsc::channel::<pb::LocationBatch>(QUEUE);
        let mut c = client.clone();
        let call = tokio::spawn(async move {
            c.report_locations(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|r| r.into_inner())
        });
        let segment_end = (Instant::now() + SEGMENT).min(deadline);
        while Instant::now() < segment_end && !stop.load(Ordering::Relaxed) {
            let recorded_at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut updates = Vec::with_capacity(batch_size);
            for _ in 0..batch_size {
                let (id, lat, lng) = &drivers[cursor];
                cursor = (cursor + 1) % drivers.len();
                updates.push(pb::LocationUpdate {
                    driver_id: id.clone(),
                    location: Some(pb::LatLng {
                        lat_deg: lat + rng.random_range(-JITTER_DEG..JITTER_DEG),
                        lng_deg: lng + rng.random_range(-JITTER_DEG..JITTER_DEG),
                    }),
                    recorded_at_ms,
                });
            }
            if tx.send(pb::LocationBatch { updates }).await.is_err() {
                break; // the call ended early; its result says why
            }
            live.sent.fetch_add(batch_size as u64, Ordering::Relaxed);
        }
        drop(tx);
        match call.await {
            Ok(Ok(summary)) => {
                live.confirmed
                    .fetch_add(summary.accepted, Ordering::Relaxed);
                out.summaries.push(summary);
            }
            Ok(Err(status)) => {
                out.errors += 1;
                if out.examples.len() < 10 {
                    out.examples.push(rpc::describe("ReportLocations", &status));
                }
                // Do not spin on a server that refuses streams.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(join) => {
                out.errors += 1;
                out.examples.push(format!("stream task: {join}"));
            }
        }
    }
    out
}

/// Runs ingest mode.
pub(crate) async fn run(
    cfg: &Config,
    channels: Vec<Conn>,
    stop: impl Future<Output = ()>,
    progress: &Progress,
) -> Result<Report> {
    let ids = Ids::new(&cfg.id_prefix);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let city = city_for(cfg, &mut rng)?;
    let (mut report, positions) =
        warm_up_report(cfg, "ingest", &channels, &city, &ids, progress).await;

    let streams = cfg.clients;
    let mut shares: Vec<Vec<(String, f64, f64)>> = vec![Vec::new(); streams];
    for (i, &(lat, lng)) in positions.iter().enumerate() {
        shares[i % streams].push((ids.driver(i), lat, lng));
    }
    let stop_flag = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(k, drivers)| {
            tokio::spawn(push_stream(
                channels[k % channels.len()].clone(),
                drivers,
                cfg.batch_size,
                cfg.seed.wrapping_add(k as u64),
                deadline,
                stop_flag.clone(),
                live.clone(),
            ))
        })
        .collect();
    progress.start(cfg.duration.as_secs_f64());
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = &mut stop => { stop_flag.store(true, Ordering::Relaxed); break; }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = ticker.tick() => {
                let t = start.elapsed().as_secs_f64().max(0.001);
                progress.set(t, format!(
                    "sent {:.0}/s | confirmed {:.0}/s",
                    live.sent.load(Ordering::Relaxed) as f64 / t,
                    live.confirmed.load(Ordering::Relaxed) as f64 / t,
                ));
            }
        }
    }
    progress.phase("collecting stream summaries");
    for t in tasks {
        match t.await {
            Ok(r) => {
                for s in &r.summaries {
                    add_summary(&mut report, s);
                }
                report.errors += r.errors;
                report.error_examples.extend(r.examples);
            }
            Err(join) => {
                report.errors += 1;
                report.error_examples.push(format!("stream task: {join}"));
            }
        }
    }
    report.duration_s = start.elapsed().as_secs_f64();
    report.location_updates_sent = live.sent.load(Ordering::Relaxed);
    report.error_examples.truncate(10);
    report.finish_rates();
    if !cfg.leave_online {
        progress.phase("taking drivers offline");
        let all: Vec<usize> = (0..cfg.drivers).collect();
        crate::warmup::take_offline(&channels, &ids, &all).await;
    }
    Ok(report)
}
