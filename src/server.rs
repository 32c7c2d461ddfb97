//! Wires the engine to the network: the four dispatch services, gRPC health and server
//! reflection, on a listener the caller bound. Starting from a bound listener lets tests use
//! `127.0.0.1:0`, and the shutdown future lets the binary and tests stop it cleanly.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::engine::Engine;
use crate::grpc::{DriverApi, EventApi, QueryApi, RiderApi};
use crate::index;
use crate::pb::{
    self, driver_service_server::DriverServiceServer, event_service_server::EventServiceServer,
    query_service_server::QueryServiceServer, rider_service_server::RiderServiceServer,
};

/// Errors that stop the server.
pub type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the engine with the system clock until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let engine = Engine::start(&config, index::default_index(), Arc::new(SystemClock))?;
    serve_engine(listener, config, engine, shutdown).await
}

/// Serves an engine the caller started (tests pass one driven by a manual clock). When
/// `shutdown` completes: new connections stop, event streams end with UNAVAILABLE, in-flight
/// calls finish, then the dispatcher thread stops.
pub async fn serve_engine(
    listener: TcpListener,
    config: Config,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let max_bytes = config.limits.max_message_bytes;

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

    let bus = engine.bus().clone();
    let signal = async move {
        shutdown.await;
        // End the long-lived streams so the graceful drain can finish.
        bus.close();
    };
    let result = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(
            DriverServiceServer::new(DriverApi::new(engine.clone(), config.clone()))
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
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await;
    let stopping = engine.clone();
    tokio::task::spawn_blocking(move || stopping.shutdown()).await?;
    result.map_err(Into::into)
}
