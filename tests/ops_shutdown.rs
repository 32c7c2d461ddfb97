//! The real binary: SIGTERM during a live event stream ends the stream with UNAVAILABLE, drains,
//! and exits 0; the metrics endpoint it prints answers. `dispatchd` prints
//! `dispatchd listening on ADDR` on stdout once it accepts connections.
#![cfg(unix)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dispatch::pb;
use support::{connect, http_get, ll, parse_metrics};
use tonic::Code;

/// Kills the child if the test fails before it exits by itself.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts dispatchd on 127.0.0.1:0 and reads the addresses it prints.
fn start_daemon() -> (Daemon, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--drain-timeout", "5s", "--ephemeral"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut addr_after = |prefix: &str| -> SocketAddr {
        let line = lines.next().expect("dispatchd printed a line").unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected `{prefix}...`, got `{line}`"))
            .parse()
            .unwrap()
    };
    let grpc = addr_after("dispatchd listening on ");
    let metrics = addr_after("dispatchd metrics on ");
    (Daemon(child), grpc, metrics)
}

#[tokio::test]
async fn sigterm_ends_live_streams_with_unavailable_drains_and_exits_zero() {
    let (mut daemon, addr, metrics_addr) = tokio::task::spawn_blocking(start_daemon).await.unwrap();
    let channel = connect(addr).await;
    let mut events = pb::event_service_client::EventServiceClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(0),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    pb::driver_service_client::DriverServiceClient::new(channel.clone())
        .go_online(pb::GoOnlineRequest {
            driver_id: "d-1".into(),
            location: ll(40.75, -73.99),
            rating: 4.9,
            vehicle_class: 0,
            gateway_id: "gw-1".into(),
        })
        .await
        .unwrap();
    let first = support::next(&mut events).await;
    assert_eq!(first.offset, 0);
    let scraped = parse_metrics(&http_get(metrics_addr, "/metrics").await);
    assert_eq!(scraped["dispatch_drivers{state=\"available\"}"], 1.0);

    let pid = daemon.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());

    let end = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("the stream ends within 10 s");
    let status = end.expect_err("the stream ends with a status, not a clean end");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    drop(events);
    drop(channel);

    let exit = tokio::task::spawn_blocking(move || {
        let status = daemon.0.wait().unwrap();
        std::mem::forget(daemon);
        status
    });
    let exit = tokio::time::timeout(Duration::from_secs(15), exit)
        .await
        .expect("dispatchd exits within 15 s")
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}
