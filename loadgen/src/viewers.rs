//! Simulated live-map viewers (`--map-viewers N`): each holds the map's SSE stream open and
//! fetches a snapshot of its own viewport on every tick, as the page does, so a city run can
//! be measured with and without people watching it.
//!
//! Viewports differ per viewer (the whole city, quarters, sixteenths, smaller boxes), so the
//! server's per-view answer cache is shared only where two people would really look at the
//! same place. A viewer whose previous fetch is still running skips that tick (the page
//! throttles the same way). Plain HTTP/1.1 over tokio sockets: two requests need no client
//! library.

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
    /// Simulated live-map viewers during the run: each holds `/api/map/stream` open and
    /// fetches `/api/map/snapshot` for its own viewport on every tick. With no --target,
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
    /// Snapshots fetched.
    pub snapshots: AtomicU64,
    /// Snapshot bytes received (bodies and heads).
    pub bytes: AtomicU64,
    /// Failed connections or non-200 answers.
    pub errors: AtomicU64,
}

/// Running viewers; dropping it stops them.
#[derive(Debug)]
pub struct Viewers {
    tasks: JoinSet<()>,
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
                viewers.spawn(async move { watch(http, bbox, counts).await });
            }
            while viewers.join_next().await.is_some() {}
        });
        Viewers { tasks, counts }
    }

    /// Stops every viewer and returns a one-line summary.
    pub fn stop(mut self) -> String {
        self.tasks.abort_all();
        let c = &self.counts;
        format!(
            "map viewers: {} ticks, {} snapshots ({:.1} MB), {} errors",
            c.ticks.load(Ordering::Relaxed),
            c.snapshots.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed) as f64 / 1e6,
            c.errors.load(Ordering::Relaxed)
        )
    }
}

/// `[min_lng, min_lat, max_lng, max_lat]`.
type Bbox = [f64; 4];

/// Viewer 0 sees everything, 1-4 a quarter each, 5-20 a sixteenth each, the rest boxes of a
/// 64th placed by their number.
fn viewport(b: Bbox, i: usize) -> Bbox {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let (split, k) = match i {
        0 => return b,
        1..=4 => (2, i - 1),
        5..=20 => (4, i - 5),
        _ => (8, (i * 37) % 64),
    };
    let (x, y) = ((k % split) as f64, (k / split) as f64);
    let (cw, ch) = (w / split as f64, h / split as f64);
    [
        b[0] + x * cw,
        b[1] + y * ch,
        b[0] + (x + 1.0) * cw,
        b[1] + (y + 1.0) * ch,
    ]
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

/// One viewer: the stream, and a snapshot per tick.
async fn watch(http: String, bbox: Bbox, counts: Arc<ViewerCounts>) {
    let path = format!(
        "/api/map/snapshot?bbox={:.5},{:.5},{:.5},{:.5}",
        bbox[0], bbox[1], bbox[2], bbox[3]
    );
    loop {
        if let Err(()) = stream(&http, &path, &counts).await {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn stream(http: &str, path: &str, counts: &Arc<ViewerCounts>) -> std::result::Result<(), ()> {
    let mut s = TcpStream::connect(http).await.map_err(|_| ())?;
    let _ = s.set_nodelay(true);
    let head = format!(
        "GET /api/map/stream HTTP/1.1\r\nHost: {http}\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.map_err(|_| ())?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut carry = String::new();
    let mut fetching: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let n = s.read(&mut buf).await.map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        carry.push_str(&String::from_utf8_lossy(&buf[..n]));
        let ticks = carry.matches("event: tick").count() as u64;
        // Keep a tail in case a marker is split across reads.
        if let Some(cut) = carry.rfind('\n') {
            carry.drain(..=cut);
        }
        if ticks == 0 {
            continue;
        }
        counts.ticks.fetch_add(ticks, Ordering::Relaxed);
        if fetching.as_ref().is_some_and(|f| !f.is_finished()) {
            continue;
        }
        let (http, path, counts) = (http.to_string(), path.to_string(), counts.clone());
        fetching = Some(tokio::spawn(async move {
            match get(&http, &path).await {
                Ok((200, body)) => {
                    counts.snapshots.fetch_add(1, Ordering::Relaxed);
                    counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                }
                _ => {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
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
