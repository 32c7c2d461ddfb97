//! Harness for the browser tests: the real `dispatchd` binary, a small simulated city fed to
//! it over gRPC, and headless Chromium driven through `chromedriver` (WebDriver, spoken by the
//! `fantoccini` crate). Every wait is on observable state with a generous deadline, so a
//! loaded 2-core machine makes the tests slower, not flaky.
#![allow(
    unreachable_pub,
    reason = "shared by the browser test crate through mod browser"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, query_service_client::QueryServiceClient,
    rider_service_client::RiderServiceClient,
};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// The city's centre (midtown Manhattan).
pub const CENTRE: (f64, f64) = (40.75, -73.98);

/// Where Chromium and chromedriver are.
#[derive(Debug)]
pub struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// Finds `chromium` and `chromedriver` on PATH (or in `CHROMIUM` / `CHROMEDRIVER`). Missing
/// ones skip the test with a message, or fail it under CI, where they must be installed.
pub fn tools() -> Option<Tools> {
    let find = |env: &str, names: &[&str]| -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(env) {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
            .find(|p| p.is_file())
    };
    let chromium = find(
        "CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let chromedriver = find("CHROMEDRIVER", &["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some(Tools {
            chromium,
            chromedriver,
        }),
        _ => {
            let msg = "the browser test needs Chromium and chromedriver: \
                       apt-get install -y chromium chromium-driver (or set CHROMIUM and CHROMEDRIVER)";
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

/// Calls `check` until it returns `Ok`, at most for `secs` seconds; the error names `what` and
/// the last answer. Checks are spaced by 25 ms so the browser is not hammered.
pub async fn poll<T, F, Fut>(what: &str, secs: u64, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => {
                return Err(format!("{what}: not within {secs} s; last: {last}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// The real `dispatchd` binary on free ports, in memory (no data dir), offers that do not
/// expire during a test.
#[derive(Debug)]
pub struct Dispatchd {
    _child: Child,
    pub grpc: Channel,
    pub http: SocketAddr,
}

impl Dispatchd {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts it with these extra flags.
    pub async fn start_with(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(extra)
            .args(["--ephemeral", "--offer-timeout-s", "600"])
            .args(["--dispatch-timeout-s", "600"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("dispatchd starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let (mut grpc, mut http) = (None, None);
        while grpc.is_none() || http.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("dispatchd announces its addresses within 60 s")
                .expect("dispatchd stdout readable")
                .expect("dispatchd exited before announcing its addresses");
            let addr = |prefix: &str| -> Option<SocketAddr> {
                line.strip_prefix(prefix)
                    .and_then(|a| a.trim().parse().ok())
            };
            grpc = grpc.or(addr("dispatchd listening on "));
            // The HTTP side (map, API, metrics) is announced under its historical name.
            http = http
                .or(addr("dispatchd http on "))
                .or(addr("dispatchd metrics on "));
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let grpc = Channel::from_shared(format!("http://{}", grpc.unwrap()))
            .expect("a valid uri")
            .connect()
            .await
            .expect("gRPC connects");
        Dispatchd {
            _child: child,
            grpc,
            http: http.unwrap(),
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

/// A small simulated city: drivers scattered around the centre, riders requesting trips.
#[derive(Debug)]
pub struct City {
    drivers: DriverServiceClient<Channel>,
    riders: RiderServiceClient<Channel>,
    queries: QueryServiceClient<Channel>,
    rng: ChaCha8Rng,
    spread_deg: f64,
    requested: usize,
}

fn ll((lat, lng): (f64, f64)) -> Option<pb::LatLng> {
    Some(pb::LatLng {
        lat_deg: lat,
        lng_deg: lng,
    })
}

impl City {
    pub async fn new(server: &Dispatchd, seed: u64) -> Self {
        City {
            drivers: DriverServiceClient::new(server.grpc.clone()),
            riders: RiderServiceClient::new(server.grpc.clone()),
            queries: QueryServiceClient::new(server.grpc.clone()),
            rng: ChaCha8Rng::seed_from_u64(seed),
            spread_deg: 0.03,
            requested: 0,
        }
    }

    fn spot(&mut self) -> (f64, f64) {
        let s = self.spread_deg;
        (
            CENTRE.0 + self.rng.random_range(-s..s),
            CENTRE.1 + self.rng.random_range(-s..s) / 0.76,
        )
    }

    /// Brings `n` drivers online within `spread_deg` of the centre, 32 calls in flight.
    pub async fn drivers_online(&mut self, n: usize, spread_deg: f64) {
        self.spread_deg = spread_deg;
        let calls: Vec<_> = (0..n)
            .map(|i| pb::GoOnlineRequest {
                driver_id: format!("d{i}"),
                location: ll(self.spot()),
                rating: self.rng.random_range(4.0..5.0),
                vehicle_class: 0,
                gateway_id: "gw-map".into(),
            })
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in calls.chunks(n.div_ceil(32).max(1)) {
            let (mut client, chunk) = (self.drivers.clone(), chunk.to_vec());
            tasks.spawn(async move {
                for req in chunk {
                    client.go_online(req).await.expect("driver goes online");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a go-online task");
        }
    }

    /// Reports driver `id` at `(lat, lng)` (a unary location update, stamped now).
    pub async fn move_driver(&mut self, id: &str, (lat, lng): (f64, f64)) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.drivers
            .update_location(pb::LocationUpdate {
                driver_id: id.into(),
                location: ll((lat, lng)),
                recorded_at_ms: now_ms,
            })
            .await
            .expect("the driver's location is taken");
    }

    /// Requests `n` trips and accepts the offers of the first `accept` of them.
    pub async fn trips(&mut self, n: usize, accept: usize) {
        for i in 0..n {
            let trip = self.request_trip(&format!("city{i}")).await;
            if i < accept {
                self.accept(&trip).await;
            }
        }
    }

    /// The offered driver accepts the trip's pending offer.
    pub async fn accept(&mut self, trip: &pb::Trip) {
        assert_eq!(
            trip.status(),
            pb::TripStatus::Offered,
            "{trip:?} has an offer"
        );
        self.drivers
            .respond_to_offer(pb::RespondToOfferRequest {
                offer_id: trip.offer_id.clone(),
                driver_id: trip.driver_id.clone(),
                accept: true,
            })
            .await
            .expect("the driver accepts");
    }

    /// `n` riders ask for rides from around one spot, `(dlat, dlng)` degrees from the centre:
    /// demand there outruns the available drivers nearby, so it surges.
    pub async fn rush(&mut self, n: usize, (dlat, dlng): (f64, f64)) {
        for i in 0..n {
            let jitter = self.rng.random_range(-0.002..0.002);
            let at = (CENTRE.0 + dlat + jitter, CENTRE.1 + dlng - jitter);
            let dropoff = self.spot();
            self.request_trip_at(&format!("rush{i}"), at, dropoff).await;
        }
    }

    /// One rider asks for a ride from a random spot in the city.
    pub async fn request_trip(&mut self, rider: &str) -> pb::Trip {
        let (pickup, dropoff) = (self.spot(), self.spot());
        self.request_trip_at(rider, pickup, dropoff).await
    }

    /// Requests a trip from `pickup` to `dropoff`, `(lat, lng)`.
    pub async fn request_trip_at(
        &mut self,
        rider: &str,
        pickup: (f64, f64),
        dropoff: (f64, f64),
    ) -> pb::Trip {
        self.requested += 1;
        self.riders
            .request_trip(pb::RequestTripRequest {
                rider_id: rider.to_string(),
                request_id: format!("{rider}-{}", self.requested),
                pickup: ll(pickup),
                dropoff: ll(dropoff),
                vehicle_class: 0,
            })
            .await
            .expect("the trip is requested")
            .into_inner()
            .trip
            .expect("the reply has the trip")
    }

    pub async fn stats(&mut self) -> pb::GetStatsResponse {
        self.queries
            .get_stats(pb::GetStatsRequest {})
            .await
            .expect("GetStats answers")
            .into_inner()
    }
}

/// Headless Chromium behind a chromedriver child process on a free port, with a fresh profile.
#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start(tools: &Tools, width: u32, height: u32) -> Self {
        // Below the ephemeral range: no outgoing connection can take it before chromedriver.
        let port = dispatch::cluster::testkit::free_ports(1).expect("a free port")[0];
        let driver = Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("a temp dir");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "goog:chromeOptions": { "binary": tools.chromium, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let caps = caps.as_object().expect("an object").clone();
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver is ready when it accepts a session; until then the connect is refused.
        let client = poll("chromedriver accepts a session", 60, || {
            let mut builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(caps.clone());
            let url = url.clone();
            async move { builder.connect(&url).await.map_err(|e| e.to_string()) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// The text of the element with this id ("" when there is none).
    pub async fn text(&self, id: &str) -> String {
        let v = self
            .js(&format!(
                "const e = document.getElementById('{id}'); return e ? e.textContent : ''"
            ))
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Runs `script` in the page (a returned promise is awaited) and returns its value.
    pub async fn js(&self, script: &str) -> Json {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?} failed: {e}"))
    }

    /// Uncaught errors the page recorded, and the browser log's SEVERE entries (failed loads,
    /// blocked scripts), except the expected 404 of /api/map/roads with no road map loaded.
    pub async fn console_errors(&self) -> Vec<String> {
        let mut out: Vec<String> = match self.js("return window.mapErrors || []").await {
            Json::Array(a) => a.into_iter().map(|e| format!("page: {e}")).collect(),
            other => vec![format!("window.mapErrors is {other}")],
        };
        match self.client.issue_cmd(BrowserLog).await {
            Ok(Json::Array(entries)) => out.extend(
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_string())
                    .filter(|m| !m.contains("/api/map/roads")),
            ),
            other => out.push(format!("could not read the browser log: {other:?}")),
        }
        out
    }

    /// Ends the session (Chromium quits) and chromedriver.
    pub async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
}

/// chromedriver's log endpoint (not in the W3C standard, so not in fantoccini's API).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}
