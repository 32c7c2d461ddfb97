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

use crate::clock::SystemClock;
use crate::config::Config;
use crate::engine::Engine;
use crate::grpc::{DriverApi, EdgeLayer, EventApi, QueryApi, RiderApi};
use crate::index;
use crate::pb::{
    self, driver_service_server::DriverServiceServer, event_service_server::EventServiceServer,
    query_service_server::QueryServiceServer, rider_service_server::RiderServiceServer,
};
use crate::telemetry::{self, Metrics};

/// Errors that stop the server.
pub type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// The sockets the server answers on, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC (and TLS, if configured).
    pub grpc: TcpListener,
    /// The HTTP side, plain HTTP: Prometheus `/metrics`, the live map and its API; `None`
    /// serves none of them.
    pub http: Option<TcpListener>,
}

/// Runs the engine with the system clock until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listeners = Listeners {
        grpc: listener,
        http: None,
    };
    serve_with(listeners, config, shutdown).await
}

/// Like [`serve`], with an HTTP listener as well.
pub async fn serve_with(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let engine = Engine::start(&config, index::default_index(), Arc::new(SystemClock))?;
    serve_engine_with(listeners, config, engine, shutdown).await
}

/// Serves an engine the caller started (tests pass one driven by a manual clock), with no
/// HTTP side. See [`serve_engine_with`].
pub async fn serve_engine(
    listener: TcpListener,
    config: Config,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listeners = Listeners {
        grpc: listener,
        http: None,
    };
    serve_engine_with(listeners, config, engine, shutdown).await
}

/// Serves an engine the caller started. When `shutdown` completes: health turns NOT_SERVING,
/// new connections stop, event streams end with UNAVAILABLE, in-flight calls get up to
/// `limits.drain_timeout` to finish, then the dispatcher thread stops.
pub async fn serve_engine_with(
    listeners: Listeners,
    config: Config,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let max_bytes = config.limits.max_message_bytes;
    let drain_timeout = config.limits.drain_timeout;

    let metrics = Arc::new(Metrics::new(engine.bus().next_offset()));
    let follower = telemetry::spawn_follower(
        engine.bus().clone(),
        metrics.clone(),
        engine.bus().next_offset(),
    );
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

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DriverServiceServer<DriverApi>>().await;
    health.set_serving::<RiderServiceServer<RiderApi>>().await;
    health.set_serving::<QueryServiceServer<QueryApi>>().await;
    health.set_serving::<EventServiceServer<EventApi>>().await;
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
    let bus = engine.bus().clone();
    let signal = {
        let health = health.clone();
        async move {
            shutdown.await;
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
            bus.close();
            let _ = draining_tx.send(true);
        }
    };

    let http_server = listeners.http.map(|listener| {
        let mut stop = draining_rx.clone();
        tokio::spawn(crate::http::serve(
            listener,
            engine.clone(),
            metrics.clone(),
            config.clone(),
            async move {
                let _ = stop.wait_for(|&d| d).await;
            },
        ))
    });

    let serving = builder
        .layer(edge)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            DriverServiceServer::new(
                DriverApi::new(engine.clone(), config.clone()).with_metrics(metrics.clone()),
            )
            .max_decoding_message_size(max_bytes),
        )
        .add_service(
            RiderServiceServer::new(RiderApi::new(engine.clone()))
                .max_decoding_message_size(max_bytes),
        )
        .add_service(
            QueryServiceServer::new(QueryApi::new(engine.clone(), config.clone()))
                .max_decoding_message_size(max_bytes),
        )
        .add_service(
            EventServiceServer::new(EventApi::new(engine.clone()))
                .max_decoding_message_size(max_bytes),
        )
        .serve_with_incoming_shutdown(without_nagle(listeners.grpc), signal);
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

    let stopping = engine.clone();
    tokio::task::spawn_blocking(move || stopping.shutdown()).await?;
    // The dispatcher has stopped. Its event log committed (and, per `log.fsync`, synced) every
    // group of events before their replies went out, so nothing is left to flush; anything
    // else that buffers writes would flush here, before the process exits.
    if let Some(task) = http_server {
        task.abort();
    }
    follower.abort();
    tracing::info!("drained; dispatcher stopped");
    result
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
