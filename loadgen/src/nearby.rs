//! Nearby mode: QueryService.NearbyDrivers as fast as a few clients can go.
//!
//! Each of `--clients` tasks makes one call at a time (a closed loop, so the latency measured
//! is the server's plus loopback, not a queue inside the load generator) at points drawn from
//! the demand distribution, and keeps its own HdrHistogram; they are merged at the end. With a
//! known server pid the report divides the server's CPU seconds over the window by the queries.

use crate::config::Config;
use crate::error::Result;
use crate::progress::Progress;
use crate::report::{Percentiles, Report, latency_histogram, pid_cpu_s, pid_rss_mib, record_us};
use crate::rpc::Conn;
use crate::rpc::{self, Ids};
use crate::warmup::{city_for, warm_up_report};
use dispatch::pb;
use dispatch::pb::query_service_client::QueryServiceClient;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Distinct query points (cycled through).
const POINTS: usize = 4096;

#[derive(Debug)]
struct ClientResult {
    latency_us: Histogram<u64>,
    queries: u64,
    errors: u64,
    examples: Vec<String>,
}

async fn query_loop(
    channel: Conn,
    points: Arc<Vec<pb::LatLng>>,
    first: usize,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    live: Arc<AtomicU64>,
) -> ClientResult {
    let mut client = QueryServiceClient::new(channel);
    let mut r = ClientResult {
        latency_us: latency_histogram(),
        queries: 0,
        errors: 0,
        examples: Vec::new(),
    };
    let mut i = first;
    // Bounded by the deadline; the clock is read once per call, which the call dwarfs.
    loop {
        let t0 = Instant::now();
        if t0 >= deadline || stop.load(Ordering::Relaxed) {
            break;
        }
        let req = pb::NearbyDriversRequest {
            location: Some(points[i % points.len()]),
            radius_m: 0.0,
            limit: 0,
            vehicle_class: pb::VehicleClass::Unspecified as i32,
        };
        i = i.wrapping_add(7);
        match client.nearby_drivers(req).await {
            Ok(_) => {
                record_us(&mut r.latency_us, t0.elapsed().as_micros() as u64);
                r.queries += 1;
                live.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                r.errors += 1;
                if r.examples.len() < 10 {
                    r.examples.push(rpc::describe("NearbyDrivers", &status));
                }
                if r.errors > 1000 {
                    break; // a server that refuses everything: stop rather than spin
                }
            }
        }
    }
    r
}

/// Runs nearby mode.
pub(crate) async fn run(
    cfg: &Config,
    channels: Vec<Conn>,
    stop: impl Future<Output = ()>,
    progress: &Progress,
) -> Result<Report> {
    let ids = Ids::new(&cfg.id_prefix);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let city = city_for(cfg, &mut rng)?;
    let (mut report, _) = warm_up_report(cfg, "nearby", &channels, &city, &ids, progress).await;

    let points: Arc<Vec<pb::LatLng>> = Arc::new(
        (0..POINTS)
            .map(|_| {
                let (lat, lng) = city.to_lat_lng(city.sample_demand(&mut rng));
                pb::LatLng {
                    lat_deg: lat,
                    lng_deg: lng,
                }
            })
            .collect(),
    );
    let stop_flag = Arc::new(AtomicBool::new(false));
    let live = Arc::new(AtomicU64::new(0));
    // The server's CPU over the query window (warm-up excluded), for CPU per query.
    let cpu_before = cfg.server_pid.and_then(pid_cpu_s);
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|k| {
            tokio::spawn(query_loop(
                channels[k % channels.len()].clone(),
                points.clone(),
                k * (POINTS / cfg.clients.max(1)),
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
                progress.set(t, format!("queries {:.0}/s", live.load(Ordering::Relaxed) as f64 / t));
            }
        }
    }
    let mut all = latency_histogram();
    for t in tasks {
        match t.await {
            Ok(r) => {
                // Same bounds on both sides, so adding cannot fail.
                let _ = all.add(&r.latency_us);
                report.nearby_queries += r.queries;
                report.errors += r.errors;
                report.error_examples.extend(r.examples);
            }
            Err(join) => {
                report.errors += 1;
                report.error_examples.push(format!("query task: {join}"));
            }
        }
    }
    report.duration_s = start.elapsed().as_secs_f64();
    if let (Some(pid), Some(before)) = (cfg.server_pid, cpu_before) {
        report.server_cpu_s = pid_cpu_s(pid).map(|after| after - before);
        report.server_rss_mib = pid_rss_mib(pid);
    }
    report.server_cpu_us_per_query = report
        .server_cpu_s
        .filter(|_| report.nearby_queries > 0)
        .map(|cpu| cpu * 1e6 / report.nearby_queries as f64);
    report.nearby_ms = Percentiles::from_us(&all);
    report.samples.nearby_us = Some(all);
    report.error_examples.truncate(10);
    report.finish_rates();
    if !cfg.leave_online {
        progress.phase("taking drivers offline");
        let all: Vec<usize> = (0..cfg.drivers).collect();
        crate::warmup::take_offline(&channels, &ids, &all).await;
    }
    Ok(report)
}
