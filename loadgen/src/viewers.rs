//! Simulated live-map viewers (`--map-viewers N`), which behave like operators with the page:
//! each fetches a snapshot of its viewport, then follows `/api/map/stream` for that viewport,
//! applying each tick's delta (the changes since the view it holds) and fetching a new snapshot
//! only when it missed a view (a tick whose base is not the view it holds) or when it pans
//! (every ~10 s, a quarter of its viewport), so a city run can be measured with and without
//! people watching it.
//!
//! Zoom levels are mixed as operators would have them: one viewer in ten watches the whole
//! city and one in ten a quarter of it (both more than the page's 20,000-point budget at 100k
//! drivers, so the server sends them cells), the other eight in ten a street-level box of
//! about 3 km placed by their number. The server decides points or cells (the page's default
//! budget); a viewer follows what the answer says. The summary gives stream bytes per viewer
//! per second for both kinds. Plain HTTP over tokio sockets (the stream as HTTP/1.0, so its
//! body is the bare event text): two requests need no client library.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::{Error, Result};

/// The live-map viewer flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ViewerArgs {
    /// Simulated live-map viewers during the run: each fetches `/api/map/snapshot` for its
    /// own viewport (1 in 10 the whole city, 1 in 10 a quarter, the rest about 3 km), then
    /// holds `/api/map/stream` open and applies its ticks. With no --target,
    /// the dispatchd loadgen starts gets an HTTP port for them.
    #[arg(long, default_value_t = 0)]
    pub map_viewers: usize,
    /// The HTTP address (`host:port`) of the server's map, with --target.
    #[arg(long)]
    pub map_http: Option<String>,
}

/// What the viewers did.
#[derive(Debug, Default)]
pub struct ViewerCounts {
    /// Tick events received, over all viewers.
    pub ticks: AtomicU64,
    /// Ticks applied as deltas to the view a viewer held.
    pub deltas: AtomicU64,
    /// Snapshots fetched (at start, on a pan, after a missed view).
    pub snapshots: AtomicU64,
    /// Of those, fetched because a view was missed.
    pub resyncs: AtomicU64,
    /// `lagged` notices: trip/offer events a viewer's stream skipped (no snapshot needed).
    pub lagged: AtomicU64,
    /// Snapshot bytes received (bodies and heads).
    pub bytes: AtomicU64,
    /// Stream bytes received, by the city-wide viewers (whole city or a quarter) and the
    /// street-level ones.
    pub stream_bytes: [AtomicU64; 2],
    /// Ticks that switched between points and cells (`"full"`).
    pub switches: AtomicU64,
    /// Failed connections or non-200 answers.
    pub errors: AtomicU64,
}

/// Running viewers; dropping it stops them.
#[derive(Debug)]
pub struct Viewers {
    tasks: JoinSet<()>,
    /// How many, of which city-wide, and since when.
    n: [usize; 2],
    started: std::time::Instant,
    /// Their counts.
    pub counts: Arc<ViewerCounts>,
}

impl Viewers {
    /// Starts `n` viewers against the map at `http`. They begin once the map shows online
    /// drivers (after the run's warm-up), each on its own viewport of the city they cover.
    pub fn start(n: usize, http: &str) -> Viewers {
        let counts = Arc::new(ViewerCounts::default());
        let mut tasks = JoinSet::new();
        let (http, all) = (http.to_string(), counts.clone());
        tasks.spawn(async move {
            let bounds = match city_bounds(&http).await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("loadgen: map viewers not started: {e}");
                    all.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            // Dropped (aborting every viewer) when this task is aborted.
            let mut viewers = JoinSet::new();
            for i in 0..n {
                let (http, counts) = (http.clone(), all.clone());
                let bbox = viewport(bounds, i);
                let kind = usize::from(!city_wide(i));
                viewers.spawn(async move { watch(http, bbox, i, kind, counts).await });
            }
            while viewers.join_next().await.is_some() {}
        });
        let city = (0..n).filter(|&i| city_wide(i)).count();
        Viewers {
            tasks,
            counts,
            n: [city, n - city],
            started: std::time::Instant::now(),
        }
    }

    /// Stops every viewer and returns a one-line summary.
    pub fn stop(mut self) -> String {
        self.tasks.abort_all();
        let c = &self.counts;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let per = |k: usize| {
            let bytes = c.stream_bytes[k].load(Ordering::Relaxed) as f64;
            bytes / 1e3 / secs / self.n[k].max(1) as f64
        };
        let streamed: u64 = c
            .stream_bytes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        format!(
            "map viewers: {} ticks, {} deltas applied, {} mode switches ({:.1} MB streamed; \
             per viewer {:.1} KB/s for the {} city-wide, {:.1} KB/s for the {} street-level), \
             {} snapshots ({:.1} MB; {} after a missed view), {} lagged notices, {} errors",
            c.ticks.load(Ordering::Relaxed),
            c.deltas.load(Ordering::Relaxed),
            c.switches.load(Ordering::Relaxed),
            streamed as f64 / 1e6,
            per(0),
            self.n[0],
            per(1),
            self.n[1],
            c.snapshots.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed) as f64 / 1e6,
            c.resyncs.load(Ordering::Relaxed),
            c.lagged.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed)
        )
    }
}

/// `[min_lng, min_lat, max_lng, max_lat]`.
type Bbox = [f64; 4];

/// Whether viewer `i` watches the whole city or a quarter of it (1 in 10 each).
fn city_wide(i: usize) -> bool {
    i % 10 < 2
}

/// Street-level viewports' side, degrees of latitude (about 3 km).
const STREET_DEG: f64 = 0.027;

/// Viewer `i`'s viewport: `i % 10 == 0` the whole city, `1` a quarter (by `i`), otherwise a
/// box of about 3 km (narrower in degrees of longitude by the latitude's cosine) placed by a
/// spread of `i` over the city.
fn viewport(b: Bbox, i: usize) -> Bbox {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    match i % 10 {
        0 => b,
        1 => {
            let k = (i / 10) % 4;
            let (x, y) = ((k % 2) as f64, (k / 2) as f64);
            let (cw, ch) = (w / 2.0, h / 2.0);
            [
                b[0] + x * cw,
                b[1] + y * ch,
                b[0] + (x + 1.0) * cw,
                b[1] + (y + 1.0) * ch,
            ]
        }
        _ => {
            let side_lat = STREET_DEG.min(h);
            let cos = ((b[1] + b[3]) / 2.0).to_radians().cos().max(0.1);
            let side_lng = (STREET_DEG / cos).min(w);
            // A low-discrepancy spread (golden ratio) of the boxes over the city.
            let fx = (i as f64 * 0.618_034).fract();
            let fy = (i as f64 * 0.754_878).fract();
            let (x, y) = (b[0] + fx * (w - side_lng), b[1] + fy * (h - side_lat));
            [x, y, x + side_lng, y + side_lat]
        }
    }
}

/// The bounds of every online driver, from one snapshot (waits up to 2 minutes for some).
async fn city_bounds(http: &str) -> Result<Bbox> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok((200, body)) = get(http, "/api/map/snapshot?max_points=1").await {
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Error::Server(format!("map snapshot is not JSON: {e}")))?;
            if let Some(b) = v["bounds"].as_array().filter(|b| b.len() == 4) {
                let n = |i: usize| b[i].as_f64().unwrap_or_default();
                return Ok([n(0), n(1), n(2), n(3)]);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Server(format!(
                "the map at {http} showed no online driver within 2 minutes"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often a viewer pans.
const PAN_EVERY: Duration = Duration::from_secs(10);

/// One viewer: a snapshot and the stream for its viewport, moved every [`PAN_EVERY`] (the
/// viewers' pans spread over that period by their number).
async fn watch(http: String, home: Bbox, i: usize, kind: usize, counts: Arc<ViewerCounts>) {
    let first = PAN_EVERY.mul_f64((i % 50) as f64 / 50.0);
    let mut pan_at = tokio::time::Instant::now() + first;
    for pan in 0usize.. {
        // A quarter of the viewport east, back, west, back.
        let dx = (home[2] - home[0]) * 0.25 * [0.0, 1.0, 0.0, -1.0][pan % 4];
        let bbox = [home[0] + dx, home[1], home[2] + dx, home[3]];
        let follow = follow(&http, bbox, kind, &counts);
        match tokio::time::timeout_at(pan_at, follow).await {
            Err(_) => {} // time to pan
            Ok(()) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if tokio::time::Instant::now() >= pan_at {
            pan_at += PAN_EVERY;
        }
    }
}

/// The view a viewer's snapshot is at.
async fn snapshot(http: &str, bbox: Bbox, counts: &ViewerCounts) -> Option<u64> {
    let path = format!(
        "/api/map/snapshot?bbox={:.5},{:.5},{:.5},{:.5}",
        bbox[0], bbox[1], bbox[2], bbox[3]
    );
    match get(http, &path).await {
        Ok((200, body)) => {
            counts.snapshots.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
            v["seq"].as_u64()
        }
        _ => None,
    }
}

/// Follows the stream for `bbox` until it fails: a snapshot first, then the ticks (the
/// server sends points or cells by the same budget as the snapshot, and says so). A view
/// published between the snapshot and the stream's start shows as a tick whose base is not
/// the snapshot's: a resync, rare. `kind` is 0 for a city-wide viewer, 1 for a street-level.
async fn follow(http: &str, bbox: Bbox, kind: usize, counts: &ViewerCounts) {
    while stream(http, bbox, kind, counts).await {
        counts.resyncs.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot, then the stream from its view (`seq=`) until it fails (false) or a tick
/// shows that the viewer missed a view (true: start again, as the page does).
async fn stream(http: &str, bbox: Bbox, kind: usize, counts: &ViewerCounts) -> bool {
    let Some(mut seq) = snapshot(http, bbox, counts).await else {
        return false;
    };
    let path = format!(
        "/api/map/stream?bbox={:.5},{:.5},{:.5},{:.5}&seq={seq}",
        bbox[0], bbox[1], bbox[2], bbox[3]
    );
    let Ok(mut s) = TcpStream::connect(http).await else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let head = format!("GET {path} HTTP/1.0\r\nHost: {http}\r\nAccept: text/event-stream\r\n\r\n");
    if s.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let Ok(n) = s.read(&mut buf).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        counts.stream_bytes[kind].fetch_add(n as u64, Ordering::Relaxed);
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("");
            let data = text
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or("");
            let missed = match name {
                "tick" => {
                    counts.ticks.fetch_add(1, Ordering::Relaxed);
                    let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                    let (at, base) = (v["seq"].as_u64().unwrap_or(0), v["base"].as_u64());
                    if at <= seq {
                        false // the snapshot already shows it
                    } else if base == Some(seq) {
                        counts.deltas.fetch_add(1, Ordering::Relaxed);
                        if v["drivers"]["full"] == true {
                            counts.switches.fetch_add(1, Ordering::Relaxed);
                        }
                        seq = at;
                        false
                    } else {
                        true
                    }
                }
                // Skipped trip/offer events: the next tick carries their end state.
                "lagged" => {
                    counts.lagged.fetch_add(1, Ordering::Relaxed);
                    false
                }
                _ => false,
            };
            if missed {
                return true;
            }
        }
    }
}

/// `GET path` on a fresh connection: (status, whole response).
async fn get(http: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(http).await?;
    let _ = s.set_nodelay(true);
    let head = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await?;
    let mut out = Vec::with_capacity(64 * 1024);
    s.read_to_end(&mut out).await?;
    let status = std::str::from_utf8(out.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out.split_off(i + 4),
        None => Vec::new(),
    };
    Ok((status, body))
}
