//! Forwarding a call to the process that owns its region, over gRPC to the owner's address
//! kept in the region's lease.
//!
//! gRPC rather than NATS request/reply: the call, its metadata (the caller's bearer token) and
//! its status reach the owner's ordinary services unchanged, streams (offers, WatchTrip,
//! Subscribe) forward as streams, and NATS carries only the log and the leases. One lazily
//! connected channel per peer address is kept. A forwarded call carries the
//! `dispatch-forwarded` metadata and is never forwarded again, so a stale owner table cannot
//! make a loop; the owner refuses it with UNAVAILABLE instead, which the caller retries.
//! With `tls.*` set, peers are called over TLS, checked against `cluster.peer_ca_path` (or
//! this process's own certificate), as every process of a cluster serves TLS alike.

use std::time::Duration;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use super::router::REGION_HEADER;
use crate::pb::{self, query_service_client::QueryServiceClient};

/// Metadata key marking a call forwarded by another process of the cluster.
pub(crate) const FORWARDED_HEADER: &str = "dispatch-forwarded";
/// The `dispatch-forwarded` value of a call forwarded a second time ([`Peer::onward`]).
pub(crate) const LAST_HOP: &str = "2";

/// How long a forwarded unary call may take before the caller gets UNAVAILABLE.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata a forwarded call keeps: who is calling, and which region it names.
const KEPT_HEADERS: [&str; 2] = ["authorization", REGION_HEADER];

/// One channel per peer address.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    channels: Mutex<FxHashMap<String, Channel>>,
    /// How peers are called over TLS (`None`: plaintext HTTP/2).
    tls: Option<PeerTls>,
}

/// TLS to the peers: the CA certificate their certificates are checked against, and the name
/// they must carry (`None`: the host of each peer's address).
#[derive(Clone, Debug)]
pub(crate) struct PeerTls {
    ca_pem: Vec<u8>,
    domain: Option<String>,
}

impl PeerTls {
    /// From the config: `None` without `tls.cert_path`; an error naming the key whose file
    /// cannot be read.
    pub(crate) fn from_config(config: &crate::config::Config) -> Result<Option<PeerTls>, String> {
        let Some(own) = &config.tls.cert_path else {
            return Ok(None);
        };
        let (key, path) = match &config.cluster.peer_ca_path {
            Some(ca) => ("cluster.peer_ca_path", ca),
            None => ("tls.cert_path", own),
        };
        let ca_pem = std::fs::read(path).map_err(|e| {
            format!(
                "{key} {} (the CA forwarded calls check peers against): {e}",
                path.display()
            )
        })?;
        let domain = Some(config.cluster.peer_tls_domain.clone()).filter(|d| !d.is_empty());
        Ok(Some(PeerTls { ca_pem, domain }))
    }

    fn client_config(&self) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.domain {
            Some(domain) => tls.domain_name(domain.clone()),
            None => tls,
        }
    }
}

impl Peers {
    /// Peers called over `tls`, or plaintext with `None`.
    pub(crate) fn new(tls: Option<PeerTls>) -> Peers {
        Peers {
            channels: Mutex::default(),
            tls,
        }
    }

    /// The peer at `addr`, owner of `region` (connected lazily, on the first call).
    pub(crate) fn get(&self, region: &str, addr: &str) -> Result<Peer, Status> {
        let mut channels = self.channels.lock();
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let unusable = |e: tonic::transport::Error| {
                    Status::unavailable(format!(
                        "region {region}: its owner's address {addr:?} is unusable: {e}"
                    ))
                };
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut endpoint =
                    Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(unusable)?;
                if let Some(tls) = &self.tls {
                    endpoint = endpoint.tls_config(tls.client_config()).map_err(unusable)?;
                }
                let channel = endpoint
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(Peer {
            region: region.to_owned(),
            addr: addr.to_owned(),
            channel,
        })
    }
}

/// The owner of one region, as a forwarding target.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    region: String,
    addr: String,
    pub(crate) channel: Channel,
}

impl Peer {
    /// `message` as a forwarded unary call with the kept metadata of `metadata`.
    pub(crate) fn unary<T>(&self, metadata: &MetadataMap, message: T) -> Request<T> {
        let mut request = self.stream(metadata, message);
        request.set_timeout(FORWARD_TIMEOUT);
        request
    }

    /// `message` as a forwarded call without a deadline (a stream lives as long as it is read).
    pub(crate) fn stream<T>(&self, metadata: &MetadataMap, message: T) -> Request<T> {
        let mut request = Request::new(message);
        for key in KEPT_HEADERS {
            if let Some(value) = metadata.get(key) {
                request.metadata_mut().insert(key, value.clone());
            }
        }
        request.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        request
    }

    /// [`Peer::unary`] one hop further: a call that reached a process which no longer serves
    /// its region, forwarded once more to the owner (marked so it goes no further).
    pub(crate) fn onward<T>(&self, metadata: &MetadataMap, message: T) -> Request<T> {
        let mut request = self.unary(metadata, message);
        request.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static(LAST_HOP),
        );
        request
    }

    /// The owner's answer as it is, except that a transport failure says which owner could
    /// not be reached (still UNAVAILABLE: retryable, nothing was done twice).
    pub(crate) fn failed(&self, status: Status) -> Status {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                Status::unavailable(format!(
                    "region {} is served by {}, which did not answer ({}); retry",
                    self.region,
                    self.addr,
                    status.message()
                ))
            }
            _ => status,
        }
    }

    /// The driver as the owner's region knows it (a forwarded GetDriver naming the region);
    /// `None` if it does not, or the owner did not answer.
    pub(crate) async fn driver(&self, driver: &str, metadata: &MetadataMap) -> Option<pb::Driver> {
        let mut request = self.unary(
            metadata,
            pb::GetDriverRequest {
                driver_id: driver.to_owned(),
            },
        );
        if let Ok(value) = self.region.parse() {
            request.metadata_mut().insert(REGION_HEADER, value);
        }
        QueryServiceClient::new(self.channel.clone())
            .get_driver(request)
            .await
            .ok()
            .and_then(|r| r.into_inner().driver)
    }
}
