//! The HTTP side, on axum: Prometheus `/metrics`, the operator's live map (`/`, its assets) and
//! the JSON/SSE API the page reads (contract: `docs/map-api.md`).
//!
//! It exists apart from the gRPC edge because its clients are people and scrapers, not
//! gateways, and because viewers must cost the dispatcher nothing per viewer: the map reads
//! the conflated [`MapView`] the dispatcher publishes four times a second, and trip detail and
//! the live trip/offer feed come from one event follower on this side (`trips`), never from a
//! command per viewer.
//! - `auth`: tokens with role `admin` or `viewer`, as a bearer header or the login cookie.
//! - `snapshot`: `GET /api/map/snapshot` (bbox filter, points or cells) and `/api/map/roads`.
//! - `stream`: `GET /api/map/stream`, Server-Sent Events (ticks with what changed in the
//!   viewer's bbox, trip and offer changes); `delta`: those changes, computed once per view;
//!   `cells`: drivers, trips and offers counted per cell for zoomed-out viewers.
//! - `trips`: the bounded per-trip timelines and `GET /api/trips/{id}`; `describe`: how each
//!   event reads there.

mod auth;
mod cells;
mod delta;
mod describe;
mod snapshot;
mod stream;
mod tiles;
mod trips;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::engine::Engine;
use crate::grpc::auth::Authenticator;
use crate::telemetry::{self, Format, Metrics, Scope};

/// What every handler shares.
struct Shared {
    engine: Engine,
    auth: Authenticator,
    trips: trips::Follower,
    snapshots: snapshot::Cache,
    /// The deltas between published views, shared by every stream.
    deltas: delta::Chain,
    /// Flips to true when the server starts draining; open event streams end then.
    draining: watch::Receiver<bool>,
}

type AppState = Arc<Shared>;

/// Serves the HTTP side on `listener` until `shutdown` completes. Starts the trip follower (it
/// ends with the event bus).
pub(crate) async fn serve(
    listener: TcpListener,
    engine: Engine,
    scope: Arc<dyn Scope>,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let scraped = Scraped {
        scope,
        metrics: metrics.clone(),
    };
    let (draining_tx, draining) = watch::channel(false);
    let (trips, follower_task) = trips::Follower::spawn(engine.bus().clone());
    let state = Arc::new(Shared {
        engine,
        auth: Authenticator::new(&config.auth),
        trips,
        snapshots: snapshot::Cache::default(),
        deltas: delta::Chain::default(),
        draining,
    });
    let app = router(state, scraped);
    serve_app(listener, app, shutdown, draining_tx).await;
    follower_task.abort();
}

/// Cluster mode's HTTP side: `/metrics` only (summed over the regions served here at each
/// scrape). The live map follows one engine and regions move between processes, so it is not
/// served; its paths say so.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    scope: Arc<dyn Scope>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "cluster mode serves /metrics only: the live map is not region-aware yet; \
                 use GetStats and GetRoutes over gRPC"
                    .into(),
            )
        })
        .with_state(Scraped { scope, metrics });
    let (draining_tx, _) = watch::channel(false);
    serve_app(listener, app, shutdown, draining_tx).await;
}

async fn serve_app(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    draining_tx: watch::Sender<bool>,
) {
    // Small SSE frames must not wait for delayed ACKs (Nagle); a socket whose option cannot be
    // set is still served.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not disable Nagle on an HTTP connection");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = draining_tx.send(true);
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "HTTP side stopped");
    }
}

/// What `/metrics` reads: the engines to sum and the registry.
#[derive(Clone, Debug)]
struct Scraped {
    scope: Arc<dyn Scope>,
    metrics: Arc<Metrics>,
}

fn router(state: AppState, scraped: Scraped) -> Router {
    let guarded = Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/api/map/snapshot", get(snapshot::snapshot))
        .route("/api/map/roads", get(snapshot::roads))
        .route("/api/map/stream", get(stream::stream))
        .route("/api/trips/{trip_id}", get(trips::trip))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_viewer,
        ));
    let metrics = Router::new()
        .route("/metrics", get(scrape))
        .with_state(scraped);
    Router::new()
        .route("/login", get(auth::login_form).post(auth::login))
        .merge(guarded)
        .fallback(not_found)
        .with_state(state)
        .merge(metrics)
}

/// An API error: its status and a message a person can act on, as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

async fn not_found(request: Request) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no such page: {}; the map is at /, its API under /api/",
            request.uri().path()
        ),
    )
}

/// `/metrics`: Prometheus text, or OpenMetrics when the `Accept` header asks for it.
async fn scrape(State(s): State<Scraped>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let body = telemetry::scrape(s.scope.as_ref(), &s.metrics, format).await;
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

// The page and its assets are compiled into the binary: nothing to deploy beside it, and no
// network (CDN, tile server) needed at run time.
const INDEX_HTML: &str = include_str!("assets/index.html");
const MAP_JS: &str = include_str!("assets/map.js");
const MAP_CSS: &str = include_str!("assets/map.css");
const LIVE_JS: &str = include_str!("assets/live.js");

async fn index() -> Response {
    page(INDEX_HTML, "text/html; charset=utf-8")
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match file.as_str() {
        "map.js" => page(MAP_JS, "text/javascript; charset=utf-8"),
        "map.css" => page(MAP_CSS, "text/css; charset=utf-8"),
        "live.js" => page(LIVE_JS, "text/javascript; charset=utf-8"),
        _ => ApiError(StatusCode::NOT_FOUND, format!("no asset named {file:?}")).into_response(),
    }
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Served from the binary: a new build is a new page, so revalidate each load.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
