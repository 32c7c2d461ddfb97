//! The load generator's side of the wire: connections, ids, and the call workers.
//!
//! Unary calls are the bulk of the city simulation's traffic (requests, offer answers, trip
//! progress), and a task per call or per driver would cost more CPU than the calls themselves
//! on a 2-core machine shared with the server. Instead one worker task per connection keeps up
//! to [`MAX_IN_FLIGHT`] calls in flight in a `FuturesUnordered` and hands each result back to
//! the simulation as a message, stamped with the instant it arrived.

use crate::error::{Error, Result};
use dispatch::pb;
use dispatch::pb::driver_service_client::DriverServiceClient;
use dispatch::pb::rider_service_client::RiderServiceClient;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Calls one worker keeps in flight at most; further calls wait in its queue.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Adds `authorization: Bearer <token>` to every call when the server wants a token.
#[derive(Clone)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Auth {
    // Hand-written so the token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.header.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Auth {
    /// Sends `token` as a bearer token, or nothing when `None`.
    pub fn new(token: Option<&str>) -> Result<Auth> {
        let header = match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| Error::Config("the token is not printable ASCII".into()))?,
            ),
        };
        Ok(Auth { header })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// A connection to the server that authenticates every call (cheap to clone).
pub type Conn = InterceptedService<Channel, Auth>;

/// Opens `n` HTTP/2 connections to `addr` (`host:port` or a full `http://` URI), each sending
/// `auth` with every call.
pub async fn connect(addr: &str, n: usize, auth: Auth) -> Result<Vec<Conn>> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| Error::Connect {
        addr: addr.to_string(),
        source,
    })?;
    // Large windows so a fast location stream is not throttled by flow control; no Nagle so
    // small unary calls are not delayed.
    let endpoint = endpoint
        .tcp_nodelay(true)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .connect_timeout(std::time::Duration::from_secs(5));
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = endpoint.connect().await.map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })?;
        channels.push(InterceptedService::new(ch, auth.clone()));
    }
    Ok(channels)
}

/// The ids this run sends, all with one prefix so runs against a shared server do not collide.
#[derive(Debug, Clone)]
pub struct Ids {
    prefix: String,
}

impl Ids {
    /// Ids under `prefix`; an empty prefix picks one from the clock.
    pub fn new(prefix: &str) -> Ids {
        let prefix = if prefix.is_empty() {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("lg{:x}-", secs & 0xff_ffff)
        } else {
            prefix.to_string()
        };
        Ids { prefix }
    }

    /// Driver `i`'s id.
    pub fn driver(&self, i: usize) -> String {
        format!("{}d{i}", self.prefix)
    }

    /// The driver index of one of this run's driver ids.
    pub fn driver_index(&self, id: &str) -> Option<usize> {
        id.strip_prefix(&self.prefix)?
            .strip_prefix('d')?
            .parse()
            .ok()
    }

    /// Gateway `k`'s id.
    pub fn gateway(&self, k: usize) -> String {
        format!("{}gw{k}", self.prefix)
    }

    /// The rider of request `n` (one rider per request, so no rider has two open trips).
    pub fn rider(&self, n: usize) -> String {
        format!("{}r{n}", self.prefix)
    }

    /// Request `n`'s idempotency key.
    pub fn request(&self, n: usize) -> String {
        format!("{}q{n}", self.prefix)
    }
}

/// A unary call the simulation wants made.
#[derive(Debug)]
pub enum Call {
    /// DriverService.GoOnline for driver `driver`.
    GoOnline {
        /// Driver index.
        driver: u32,
        /// Driver generation when sent.
        generation: u32,
        /// The request.
        req: pb::GoOnlineRequest,
    },
    /// DriverService.GoOffline.
    GoOffline {
        /// Driver index.
        driver: u32,
        /// Driver generation when sent.
        generation: u32,
        /// The request.
        req: pb::GoOfflineRequest,
    },
    /// DriverService.RespondToOffer.
    Respond {
        /// Driver index.
        driver: u32,
        /// Driver generation when sent.
        generation: u32,
        /// The request.
        req: pb::RespondToOfferRequest,
    },
    /// MarkArrived, StartTrip or CompleteTrip.
    TripAction {
        /// Driver index.
        driver: u32,
        /// Driver generation when sent.
        generation: u32,
        /// Which action.
        action: TripAction,
        /// The request.
        req: pb::TripActionRequest,
    },
    /// RiderService.RequestTrip for request number `request`.
    RequestTrip {
        /// Request number.
        request: u32,
        /// The request.
        req: pb::RequestTripRequest,
    },
    /// RiderService.CancelTrip for request number `request`.
    CancelTrip {
        /// Request number.
        request: u32,
        /// The request.
        req: pb::CancelTripRequest,
    },
}

/// The trip progress calls a driver makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripAction {
    /// MarkArrived.
    Arrived,
    /// StartTrip.
    Start,
    /// CompleteTrip.
    Complete,
}

/// A finished call, as the simulation receives it.
#[derive(Debug)]
pub struct Done {
    /// The call made (its request moved back out for context).
    pub call: CallKind,
    /// When the call was sent (first polled).
    pub sent_at: Instant,
    /// When its reply arrived.
    pub at: Instant,
    /// The trip in the reply, if the call returns one; or the status it failed with.
    pub result: Result<Option<pb::Trip>, tonic::Status>,
}

/// Which call finished, without its request body.
#[derive(Debug, Clone, Copy)]
pub enum CallKind {
    /// GoOnline for a driver at a generation.
    GoOnline(u32, u32),
    /// GoOffline for a driver at a generation.
    GoOffline(u32, u32),
    /// RespondToOffer for a driver at a generation; `true` for an accept.
    Respond(u32, u32, bool),
    /// A trip action for a driver at a generation.
    TripAction(u32, u32, TripAction),
    /// RequestTrip number n.
    RequestTrip(u32),
    /// CancelTrip of request n.
    CancelTrip(u32),
}

/// Makes one call and describes its outcome.
async fn execute(
    mut drivers: DriverServiceClient<Conn>,
    mut riders: RiderServiceClient<Conn>,
    call: Call,
) -> Done {
    let sent_at = Instant::now();
    let (call, result) = match call {
        Call::GoOnline {
            driver,
            generation,
            req,
        } => (
            CallKind::GoOnline(driver, generation),
            drivers.go_online(req).await.map(|_| None),
        ),
        Call::GoOffline {
            driver,
            generation,
            req,
        } => (
            CallKind::GoOffline(driver, generation),
            drivers.go_offline(req).await.map(|_| None),
        ),
        Call::Respond {
            driver,
            generation,
            req,
        } => {
            let accept = req.accept;
            (
                CallKind::Respond(driver, generation, accept),
                drivers
                    .respond_to_offer(req)
                    .await
                    .map(|r| r.into_inner().trip),
            )
        }
        Call::TripAction {
            driver,
            generation,
            action,
            req,
        } => {
            let r = match action {
                TripAction::Arrived => drivers.mark_arrived(req).await,
                TripAction::Start => drivers.start_trip(req).await,
                TripAction::Complete => drivers.complete_trip(req).await,
            };
            (
                CallKind::TripAction(driver, generation, action),
                r.map(|r| r.into_inner().trip),
            )
        }
        Call::RequestTrip { request, req } => (
            CallKind::RequestTrip(request),
            riders.request_trip(req).await.map(|r| r.into_inner().trip),
        ),
        Call::CancelTrip { request, req } => (
            CallKind::CancelTrip(request),
            riders.cancel_trip(req).await.map(|r| r.into_inner().trip),
        ),
    };
    Done {
        call,
        sent_at,
        at: Instant::now(),
        result,
    }
}

/// Runs calls from `calls_rx` on `channel`, up to [`MAX_IN_FLIGHT`] at once, sending each
/// result to `done_tx`. Ends when `calls_rx` is closed and every call in flight finished, or
/// when `done_tx` is closed.
pub async fn worker(
    channel: Conn,
    mut calls_rx: mpsc::UnboundedReceiver<Call>,
    done_tx: mpsc::UnboundedSender<Done>,
) {
    let drivers = DriverServiceClient::new(channel.clone());
    let riders = RiderServiceClient::new(channel);
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            call = calls_rx.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => match call {
                Some(call) => in_flight.push(execute(drivers.clone(), riders.clone(), call)),
                None => open = false,
            },
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if done_tx.send(done).is_err() {
                    return;
                }
            }
        }
    }
}

/// A short, readable description of a failed call, for the report's examples.
pub fn describe(what: &str, status: &tonic::Status) -> String {
    let mut m = status.message().to_string();
    m.truncate(160);
    format!("{what}: {:?}: {m}", status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_ids_round_trip_and_foreign_ids_are_refused() {
        let ids = Ids::new("t1-");
        assert_eq!(ids.driver(42), "t1-d42");
        assert_eq!(ids.driver_index("t1-d42"), Some(42));
        assert_eq!(ids.driver_index("t2-d42"), None);
        assert_eq!(ids.driver_index("t1-r42"), None);
        let auto = Ids::new("");
        let id = auto.request(123_456_789);
        assert!(id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()));
    }
}
