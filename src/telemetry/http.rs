//! A minimal HTTP/1.1 responder for Prometheus: `GET /metrics` and nothing else.
//!
//! A scrape is one small GET on a trusted, usually loopback, address; a hand-written responder
//! on a tokio listener is a few dozen lines and needs no HTTP server dependency. Each
//! connection answers one request and closes; a client that does not send its request within
//! a few seconds is dropped so idle connections cannot pile up.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Metrics;
use crate::engine::Engine;

/// Largest request head read.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A client must send its request within this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for the dispatcher's stats and the event follower.
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    engine: Engine,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: log and keep serving.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            },
        };
        let (engine, metrics) = (engine.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &engine, &metrics).await {
                tracing::debug!(error = %e, "metrics endpoint: connection failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, engine: &Engine, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", scrape(engine, metrics).await),
        (b"GET", _) => (
            "404 Not Found",
            "only /metrics is served here\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", "use GET /metrics\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Renders after the follower has counted every event published before the scrape began, with
/// fresh stats if the dispatcher answers in time (else the last ones seen).
async fn scrape(engine: &Engine, metrics: &Metrics) -> String {
    metrics
        .wait_followed(engine.bus().next_offset(), SCRAPE_WAIT)
        .await;
    let stats = tokio::time::timeout(SCRAPE_WAIT, engine.stats())
        .await
        .ok()
        .and_then(Result::ok);
    metrics.render(engine, stats)
}
