//! Regions for the tests: rectangles side by side over Manhattan, and an in-process server on
//! 127.0.0.1:0 that serves them (one process, local logs or cluster mode), with the waits the
//! region and cluster tests share.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dispatch::cluster::regions::RegionConfig;
use dispatch::config::Config;
use dispatch::pb::{self, query_service_client::QueryServiceClient};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A GeoJSON rectangle from longitude `lng0` to `lng1`, 40.70 to 40.80 N.
pub fn square(lng0: f64, lng1: f64) -> String {
    format!(
        r#"{{"type":"Polygon","coordinates":[[[{lng0},40.7],[{lng1},40.7],[{lng1},40.8],[{lng0},40.8],[{lng0},40.7]]]}}"#
    )
}

/// Region `name`, the rectangle from `lng0` to `lng1`.
pub fn region(name: &str, lng0: f64, lng1: f64) -> RegionConfig {
    RegionConfig {
        name: name.into(),
        geojson: Some(square(lng0, lng1)),
        geojson_file: None,
    }
}

/// West and east of the 73.99 W meridian.
pub fn west_east() -> Vec<RegionConfig> {
    vec![
        region("west", -74.05, -73.99),
        region("east", -73.99, -73.93),
    ]
}

/// `GetStats` of region `region` through `channel` (served there or forwarded).
pub async fn stats_of(
    channel: &Channel,
    region: &str,
) -> Result<pb::GetStatsResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::GetStatsRequest {});
    request
        .metadata_mut()
        .insert("dispatch-region", region.parse().unwrap());
    QueryServiceClient::new(channel.clone())
        .get_stats(request)
        .await
        .map(|r| r.into_inner())
}

/// Whether every region in `regions` answers a call through `channel`.
pub async fn all_served<S: AsRef<str>>(channel: &Channel, regions: &[S]) -> bool {
    for region in regions {
        if stats_of(channel, region.as_ref()).await.is_err() {
            return false;
        }
    }
    true
}

/// Waits (up to 60 s) until every region in `regions` answers a call through `channel`.
pub async fn wait_served<S: AsRef<str>>(channel: &Channel, regions: &[S]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !all_served(channel, regions).await {
        assert!(
            Instant::now() < deadline,
            "the regions were not all served within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server running `dispatch::server::run` in this process.
pub struct RegionServer {
    pub channel: Channel,
    /// The HTTP side's address, when started with [`RegionServer::start_http`].
    pub http: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RegionServer {
    /// Starts a server on `config` and connects once it accepts connections.
    pub async fn start(config: Config) -> RegionServer {
        Self::start_with(config, None).await
    }

    /// [`start`](Self::start) for a server on TLS (`tls.*` set in `config`): connects over
    /// TLS with `tls`.
    pub async fn start_with(
        config: Config,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> RegionServer {
        Self::start_on(config, tls, None).await
    }

    /// [`start`](Self::start) with the HTTP side (`/metrics`) on 127.0.0.1:0 too.
    pub async fn start_http(config: Config) -> RegionServer {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(config, None, Some(http)).await
    }

    async fn start_on(
        config: Config,
        tls: Option<tonic::transport::ClientTlsConfig>,
        http: Option<TcpListener>,
    ) -> RegionServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let http_addr = http.as_ref().map(|l| l.local_addr().unwrap());
        let options = dispatch::server::RunOptions {
            http,
            ..Default::default()
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            dispatch::server::run(listener, config, options, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let channel = loop {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}")).unwrap();
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone()).unwrap();
            }
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) if !task.is_finished() => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("the server stopped before serving: {e}"),
            }
        };
        RegionServer {
            channel,
            http: http_addr,
            stop: Some(tx),
            task,
        }
    }

    /// Stops it and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}
