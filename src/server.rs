//! Wires the engine to the network: the four dispatch services behind the admission layer
//! (auth, concurrency limits, edge metrics), gRPC health and server reflection, optional TLS,
//! the metrics follower and the HTTP side (metrics, live map), on listeners the caller bound. Starting from bound
//! listeners lets tests use `127.0.0.1:0`, and the shutdown future lets the binary and tests
//! stop it cleanly, with a bounded drain.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use tonic::service::Routes;

use crate::clock::SystemClock;
use crate::cluster::regions::RegionMap;
use crate::cluster::router::RegionRouter;
use crate::config::Config;
use crate::engine::Engine;
use crate::events::{Follower, OnLogFailure, Router};
use crate::grpc::{DriverApi, EdgeLayer, EventApi, QueryApi, RiderApi};
use crate::index;
use crate::pb::{
    self, driver_service_server::DriverServiceServer, event_service_server::EventServiceServer,
    query_service_server::QueryServiceServer, rider_service_server::RiderServiceServer,
};
use crate::telemetry::{self, Metrics};

/// Errors that stop the server.
pub type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// What a caller may hand [`run`] besides the gRPC listener; `RunOptions::default()` is the
/// production setup (no HTTP side, an engine on the system clock).
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The HTTP side, plain HTTP, on this listener: Prometheus `/metrics`, the live map and its
    /// API; `None` serves none of them.
    pub http: Option<TcpListener>,
    /// Serve this engine instead of starting one on the system clock (tests pass one driven by
    /// a manual clock).
    pub engine: Option<Engine>,
}

/// Serves the dispatch services on `listener` until `shutdown` completes. When it does:
/// health turns NOT_SERVING, new connections stop, event streams end with UNAVAILABLE,
/// in-flight calls get up to `limits.drain_timeout` to finish, then the dispatcher thread
/// stops.
pub async fn run(
    listener: TcpListener,
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Load the road map (if configured) before anything starts: a missing or unreadable file
    // stops start-up with its name; the dispatcher then reuses the loaded graph.
    crate::eta::from_config(&config)?;
    // With regions: one engine per region (see `cluster`); without: the one engine, as ever.
    let regions = RegionMap::from_config(&config.regions)?;
    // Cluster mode: no engine yet; the ownership task starts each region taken (see `cluster`).
    let clustered = !regions.is_empty() && config.cluster.nats_url.is_some();
    let engines = match options.engine {
        Some(engine) if regions.is_empty() => vec![engine],
        Some(_) => return Err("RunOptions::engine cannot be combined with [[regions]]".into()),
        None if regions.is_empty() => vec![Engine::start(
            &config,
            index::default_index(),
            Arc::new(SystemClock),
        )?],
        None if clustered => Vec::new(),
        None => crate::cluster::start_local_engines(&config, &regions)?,
    };
    let own_addr = match config.cluster.advertise_addr.as_str() {
        "" => listener.local_addr()?.to_string(),
        addr => addr.to_owned(),
    };
    let cluster = if clustered {
        Some(crate::cluster::owner::Cluster::join(&config, &regions, own_addr.clone()).await?)
    } else {
        None
    };
    // The HTTP side (live map) shows the first engine: not yet region-aware, and absent in
    // cluster mode, where regions come and go.
    let first = engines.first().cloned();
    let config = Arc::new(config);
    let max_bytes = config.limits.max_message_bytes;
    let drain_timeout = config.limits.drain_timeout;

    let metrics = Arc::new(Metrics::new(
        first.as_ref().map_or(0, |e| e.bus().next_offset()),
    ));
    let mut followers = Vec::new();
    let mut routers = Vec::new();
    if let (Some(e), true) = (&first, regions.is_empty()) {
        let bus = e.bus().clone();
        let backlog = e.backlog();
        followers.push(telemetry::spawn_follower(
            Follower::new(bus.clone(), backlog.clone(), bus.next_offset()),
            metrics.clone(),
        ));
        // One task routes trip updates and offer notices to their watchers (see events::router).
        routers.push(Router::spawn(bus, backlog));
    }
    let region_router = if regions.is_empty() {
        None
    } else {
        let peer_tls = crate::cluster::forward::PeerTls::from_config(&config)?;
        Some(RegionRouter::new(
            regions.clone(),
            config.clone(),
            metrics.clone(),
            peer_tls,
        ))
    };
    if let Some(router) = &region_router {
        for (i, engine) in engines.iter().enumerate() {
            router.install(i, engine.clone());
            router.set_owner(i, Some(own_addr.clone()));
        }
    }
    let buses: Vec<_> = engines.iter().map(|e| e.bus().clone()).collect();
    let edge = EdgeLayer::new(&config, metrics.clone());
    if edge.auth_enabled() {
        tracing::info!(
            tokens = config.auth.tokens.len(),
            "authentication on: every dispatch rpc needs a bearer token with its role"
        );
    } else {
        tracing::warn!(
            "authentication is OFF: no auth.tokens configured, so any client may call every \
             rpc; configure tokens before exposing this server"
        );
    }
    if edge.auth_enabled() && clustered && config.cluster.peer_token.0.is_empty() {
        tracing::warn!(
            "cluster.peer_token is not set while authentication is on: the other members will \
             refuse this process's calls on its own behalf, so drivers cannot move into, nor be \
             drawn across the borders of, regions served by another process"
        );
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DriverServiceServer<DriverApi>>().await;
    health.set_serving::<RiderServiceServer<RiderApi>>().await;
    health.set_serving::<QueryServiceServer<QueryApi>>().await;
    health.set_serving::<EventServiceServer<EventApi>>().await;
    // In cluster mode each region's log failure stops that region only (see `cluster::owner`).
    let log_failed: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match &first {
        Some(engine) => Box::pin(watch_log(
            engine.log_failure(),
            health.clone(),
            config.log.on_failure,
        )),
        None => Box::pin(std::future::pending()),
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut builder = Server::builder()
        .concurrency_limit_per_connection(config.limits.max_concurrent_requests_per_connection);
    if let Some(tls) = tls_config(&config)? {
        builder = builder.tls_config(tls)?;
    }

    // Shutdown fans out: the gRPC server's graceful stop, the drain deadline, the HTTP side. `draining` flips once the signal arrives.
    let (draining_tx, mut draining_rx) = watch::channel(false);
    let signal = {
        let health = health.clone();
        let region_router = region_router.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = log_failed => {}
            }
            tracing::info!("shutting down: refusing new connections, draining in-flight calls");
            health
                .set_not_serving::<DriverServiceServer<DriverApi>>()
                .await;
            health
                .set_not_serving::<RiderServiceServer<RiderApi>>()
                .await;
            health
                .set_not_serving::<QueryServiceServer<QueryApi>>()
                .await;
            health
                .set_not_serving::<EventServiceServer<EventApi>>()
                .await;
            // End the long-lived streams (UNAVAILABLE) so the graceful drain can finish.
            for bus in &buses {
                bus.close();
            }
            if let Some(router) = &region_router {
                router.close_streams();
            }
            let _ = draining_tx.send(true);
        }
    };

    // `/metrics` sums every region served here; the live map follows the first region's
    // engine, and is not served in cluster mode (regions move between processes).
    let scope: Option<Arc<dyn telemetry::Scope>> = match (&region_router, &first) {
        (Some(router), _) => Some(Arc::new(router.clone())),
        (None, Some(engine)) => Some(Arc::new(engine.clone())),
        (None, None) => None,
    };
    let http_server = match (options.http, scope) {
        (Some(listener), Some(scope)) => {
            let mut stop = draining_rx.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|&d| d).await;
            };
            Some(match &first {
                Some(engine) => tokio::spawn(crate::http::serve(
                    listener,
                    engine.clone(),
                    scope,
                    metrics.clone(),
                    config.clone(),
                    shutdown,
                )),
                None => {
                    tracing::info!(
                        "cluster mode: the HTTP side serves /metrics (summed over the regions \
                         served here); the live map is not region-aware yet"
                    );
                    tokio::spawn(crate::http::serve_metrics(
                        listener,
                        scope,
                        metrics.clone(),
                        shutdown,
                    ))
                }
            })
        }
        _ => None,
    };

    let membership = match (cluster, &region_router) {
        (Some(cluster), Some(router)) => Some(cluster.spawn(router.clone())),
        _ => None,
    };
    let services = match (&region_router, &first) {
        (None, Some(engine)) => {
            single_region_services(engine, &routers[0], &config, &metrics, max_bytes)
        }
        (None, None) => return Err("no engine to serve".into()),
        (Some(router), _) => Routes::new(
            DriverServiceServer::new(router.clone()).max_decoding_message_size(max_bytes),
        )
        .add_service(RiderServiceServer::new(router.clone()).max_decoding_message_size(max_bytes))
        .add_service(QueryServiceServer::new(router.clone()).max_decoding_message_size(max_bytes))
        .add_service(EventServiceServer::new(router.clone()).max_decoding_message_size(max_bytes))
        .add_service(
            pb::region_service_server::RegionServiceServer::new(router.clone())
                .max_decoding_message_size(max_bytes),
        ),
    };
    let services = services
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha);
    let serving = builder
        .layer(edge)
        .add_routes(services)
        .serve_with_incoming_shutdown(without_nagle(listener), signal);
    let drain_deadline = async move {
        if draining_rx.wait_for(|&d| d).await.is_err() {
            // The server ended before any shutdown signal: nothing to time.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain_timeout).await;
    };
    let result = tokio::select! {
        result = serving => result.map_err(ServeError::from),
        () = drain_deadline => {
            tracing::warn!(
                ?drain_timeout,
                "drain deadline passed; cutting off the calls still in flight"
            );
            Ok(())
        }
    };

    tokio::task::spawn_blocking(move || engines.iter().for_each(Engine::shutdown)).await?;
    // Cluster mode: stop the regions served here (everything acknowledged is in the streams)
    // and hand them over.
    if let (Some(membership), Some(router)) = (membership, &region_router) {
        membership.leave(router, &regions).await;
    }
    // The dispatcher has stopped. Its event log committed (and, per `log.fsync`, synced) every
    // group of events before their replies went out, so nothing is left to flush; anything
    // else that buffers writes would flush here, before the process exits.
    if let Some(task) = http_server {
        task.abort();
    }
    followers.iter().for_each(|f| f.abort());
    tracing::info!("drained; dispatcher stopped");
    let failure = first.and_then(|e| e.log_failure().borrow().clone());
    match failure {
        Some(cause) if config.log.on_failure == OnLogFailure::Exit => Err(format!(
            "the event log cannot be written ({cause}); exiting (log.on_failure = \"exit\") \
             so an orchestrator restarts this process or fails over"
        )
        .into()),
        _ => result,
    }
}

/// Once the event log cannot be written: an ERROR line, health NOT_SERVING for every service
/// (calls already get UNAVAILABLE naming the cause from the engine). The returned future then
/// completes if `on_failure` is `exit`, starting the drain; with `stay` it never does.
fn watch_log(
    mut failure: watch::Receiver<Option<String>>,
    health: tonic_health::server::HealthReporter,
    on_failure: OnLogFailure,
) -> impl Future<Output = ()> + Send + 'static {
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        // Err: the log writer ended without failing (or there is no log).
        let Ok(cause) = failure.wait_for(Option::is_some).await.map(|c| c.clone()) else {
            return;
        };
        tracing::error!(
            cause = cause.as_deref().unwrap_or_default(),
            ?on_failure,
            "the event log cannot be written: health is NOT_SERVING and every call fails \
             with UNAVAILABLE"
        );
        for service in [
            "",
            <DriverServiceServer<DriverApi> as tonic::server::NamedService>::NAME,
            <RiderServiceServer<RiderApi> as tonic::server::NamedService>::NAME,
            <QueryServiceServer<QueryApi> as tonic::server::NamedService>::NAME,
            <EventServiceServer<EventApi> as tonic::server::NamedService>::NAME,
        ] {
            health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
        let _ = failed_tx.send(());
    });
    async move {
        if failed_rx.await.is_err() || on_failure == OnLogFailure::Stay {
            std::future::pending::<()>().await;
        }
    }
}

/// The four dispatch services over one engine (no regions configured).
fn single_region_services(
    engine: &Engine,
    router: &Router,
    config: &Arc<Config>,
    metrics: &Arc<Metrics>,
    max_bytes: usize,
) -> Routes {
    Routes::new(
        DriverServiceServer::new(
            DriverApi::new(engine.clone(), router.clone(), config.clone())
                .with_metrics(metrics.clone()),
        )
        .max_decoding_message_size(max_bytes),
    )
    .add_service(
        RiderServiceServer::new(RiderApi::new(engine.clone(), router.clone()))
            .max_decoding_message_size(max_bytes),
    )
    .add_service(
        QueryServiceServer::new(QueryApi::new(engine.clone(), config.clone()))
            .max_decoding_message_size(max_bytes),
    )
    .add_service(
        EventServiceServer::new(EventApi::new(engine.clone())).max_decoding_message_size(max_bytes),
    )
}

/// The TLS settings from `tls.cert_path` and `tls.key_path`, if set.
fn tls_config(config: &Config) -> Result<Option<ServerTlsConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&config.tls.cert_path, &config.tls.key_path) else {
        return Ok(None);
    };
    let read = |key_name: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ServeError::from(format!("{key_name} {}: {e}", path.display())))
    };
    let identity = Identity::from_pem(read("tls.cert_path", cert)?, read("tls.key_path", key)?);
    tracing::info!(cert = %cert.display(), "TLS on");
    Ok(Some(ServerTlsConfig::new().identity(identity)))
}

/// Accepted connections with Nagle's algorithm off. tonic's `tcp_nodelay` only applies to
/// listeners it binds itself; on ours, small replies would wait ~40 ms for the client's
/// delayed ACK. (A connection whose option cannot be set is still served.)
fn without_nagle(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "could not disable Nagle on a connection");
            }
        })
    })
}
