//! Trip watchers and the server's cost per event, for `--watch-trips N` (city mode).
//!
//! Riders' apps watch their trips; with thousands open, the server must not pay for each of
//! them on every event. [`Watchers`] keeps up to N WatchTrip streams open: each new trip is
//! watched while fewer than N are, and a stream ends when its trip does. [`measure_window`]
//! samples the server's CPU time (`/proc/<pid>/stat`) and its event offset (GetStats) at the
//! window's start and end, so runs with and without watchers compare as CPU per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dispatch::pb;
use dispatch::pb::query_service_client::QueryServiceClient;
use dispatch::pb::rider_service_client::RiderServiceClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::report::{Report, pid_cpu_s, pid_rss_mib};
use crate::rpc::Conn;

/// Up to `max` open WatchTrip streams, spread over the run's connections.
pub(super) struct Watchers {
    max: usize,
    channels: Vec<Conn>,
    next_channel: usize,
    open: Arc<AtomicUsize>,
    opened: u64,
    updates: Arc<AtomicU64>,
    /// Ends every watcher when the run ends.
    stop: watch::Sender<bool>,
}

impl Watchers {
    pub(super) fn new(max: usize, channels: &[Conn]) -> Watchers {
        Watchers {
            max,
            channels: channels.to_vec(),
            next_channel: 0,
            open: Arc::new(AtomicUsize::new(0)),
            opened: 0,
            updates: Arc::new(AtomicU64::new(0)),
            stop: watch::channel(false).0,
        }
    }

    /// Watches `trip_id` if fewer than the maximum are open.
    pub(super) fn offer(&mut self, trip_id: &str) {
        if self.max == 0 || self.open.load(Ordering::Relaxed) >= self.max {
            return;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        self.opened += 1;
        let conn = self.channels[self.next_channel % self.channels.len()].clone();
        self.next_channel += 1;
        let (open, updates) = (self.open.clone(), self.updates.clone());
        let mut stop = self.stop.subscribe();
        let request = pb::WatchTripRequest {
            trip_id: trip_id.to_string(),
        };
        tokio::spawn(async move {
            let watching = async {
                let Ok(response) = RiderServiceClient::new(conn).watch_trip(request).await else {
                    return;
                };
                let mut stream = response.into_inner();
                while let Ok(Some(_)) = stream.message().await {
                    updates.fetch_add(1, Ordering::Relaxed);
                }
            };
            tokio::select! {
                () = watching => {}
                _ = stop.wait_for(|&s| s) => {}
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Ends the streams still open and records the counts.
    pub(super) fn finish(&self, report: &mut Report) {
        let _ = self.stop.send(true);
        report.watch_trips = self.max as u64;
        report.watch_streams_opened = self.opened;
        report.watch_updates = self.updates.load(Ordering::Relaxed);
    }
}

/// The server's CPU seconds and published events over the next `window` (from now), and its
/// resident memory at the end; `None`
/// without a pid, without `/proc`, or if GetStats fails.
pub(super) fn measure_window(
    pid: Option<u32>,
    conn: Conn,
    window: Duration,
) -> JoinHandle<Option<(f64, u64, Option<f64>)>> {
    tokio::spawn(async move {
        let pid = pid?;
        let mut queries = QueryServiceClient::new(conn);
        let mut offset = async || {
            queries
                .get_stats(pb::GetStatsRequest {})
                .await
                .ok()
                .map(|r| r.into_inner().next_event_offset)
        };
        let (cpu0, off0) = (pid_cpu_s(pid)?, offset().await?);
        tokio::time::sleep(window).await;
        let (cpu1, off1) = (pid_cpu_s(pid)?, offset().await?);
        Some((cpu1 - cpu0, off1.saturating_sub(off0), pid_rss_mib(pid)))
    })
}

/// Records a window measurement in the report.
pub(super) fn record_window(report: &mut Report, measured: Option<(f64, u64, Option<f64>)>) {
    if let Some((cpu_s, events, rss_mib)) = measured {
        report.server_rss_mib = rss_mib;
        report.server_cpu_s = Some(cpu_s);
        report.events_published = Some(events);
        report.server_cpu_us_per_event = (events > 0).then(|| cpu_s * 1e6 / events as f64);
    }
}
