//! The admission layer in front of every gRPC service: authentication, the global concurrency
//! limit, and the edge metrics (rejected calls by status, RequestTrip latency).
//!
//! It is one tower layer rather than per-service code so no rpc can forget it and so a refusal
//! costs no decoding: the check runs on the request's path and headers before the body is
//! read. Over the limit a call is refused at once with RESOURCE_EXHAUSTED instead of queueing,
//! so a flood cannot grow memory or starve health checks (which, like reflection, are exempt).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tower_layer::Layer;

use super::auth::{Access, Authenticator, required};
use crate::config::Config;
use crate::telemetry::Metrics;

/// The one client-streaming rpc: it lives as long as a gateway's connection, so it does not
/// hold a concurrency permit (its ingest is bounded by the location queue instead).
const REPORT_LOCATIONS: &str = "/dispatch.v1.DriverService/ReportLocations";
const REQUEST_TRIP: &str = "/dispatch.v1.RiderService/RequestTrip";

#[derive(Debug)]
struct Shared {
    auth: Authenticator,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// Builds [`Edge`] services around the server's routes.
#[derive(Clone, Debug)]
pub(crate) struct EdgeLayer {
    shared: Arc<Shared>,
}

impl EdgeLayer {
    /// Auth from `config.auth`, limit from `config.limits.max_concurrent_requests`.
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        EdgeLayer {
            shared: Arc::new(Shared {
                auth: Authenticator::new(&config.auth),
                permits: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
                metrics,
            }),
        }
    }

    /// Whether bearer tokens are required.
    pub(crate) fn auth_enabled(&self) -> bool {
        self.shared.auth.is_enabled()
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Edge<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Edge<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        let path = request.uri().path();
        let access = required(path);
        let refuse = |status: tonic::Status| -> Self::Future {
            shared.metrics.rejected(status.code() as i32);
            let response = status.into_http();
            Box::pin(async move { Ok(response) })
        };
        if let Err(e) = shared.auth.check(access, request.headers()) {
            tracing::debug!(path, reason = ?e, "call refused by auth");
            return refuse(super::auth_status(e));
        }
        let permit = if access == Access::Open || path == REPORT_LOCATIONS {
            None
        } else {
            match shared.permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    shared.metrics.shed_by_concurrency_limit();
                    return refuse(super::overloaded_status());
                }
            }
        };
        let timed = path == REQUEST_TRIP;
        // The clone that was made ready by `poll_ready` serves this call; the fresh clone stays
        // for the next one (the usual tower pattern for services that are not `Unpin`-ready).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let started = Instant::now();
            let response = inner.call(request).await?;
            drop(permit);
            if timed {
                shared
                    .metrics
                    .request_trip_latency
                    .observe(started.elapsed().as_secs_f64());
            }
            // An error answer is "trailers only": its status is in the headers. Stream errors
            // arrive later in trailers and are not counted here.
            if let Some(code) = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .filter(|&c| c != 0)
            {
                shared.metrics.rejected(code);
            }
            Ok(response)
        })
    }
}
