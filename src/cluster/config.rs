//! The `[cluster]` settings: where the NATS JetStream cluster is and how region streams are
//! kept. Off unless `nats_url` is set; then every region's events go to its own stream.

use serde::{Deserialize, Serialize};

/// Cluster mode settings (`[cluster]` in TOML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers, comma-separated (`nats://127.0.0.1:4222,nats://...`). Set: each region's
    /// events are committed to a JetStream stream there instead of the local log; it needs
    /// `[[regions]]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// Copies JetStream keeps of each region's stream (3 on a 3-node cluster; 1 on one node).
    pub stream_replicas: usize,
    /// A region lease lapses this long after its owner's last renewal; renewed every third of
    /// it, and an owner stops writing after two thirds without a renewal.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: std::time::Duration,
    /// This process's name in the leases; empty: `<gRPC address>-<pid>`.
    pub owner: String,
    /// The gRPC address (`host:port`) other processes forward this process's regions' calls to
    /// and GetRoutes hands to gateways; empty: the address the server is bound to (set it when
    /// binding `0.0.0.0` or behind NAT).
    pub advertise_addr: String,
    /// With `tls.*` set, calls forwarded to other processes go over TLS and their certificates
    /// are checked against this CA certificate (PEM); unset: against this process's own
    /// `tls.cert_path` (one certificate for the whole cluster, or a chain ending in the CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_ca_path: Option<std::path::PathBuf>,
    /// The name a peer's certificate must carry when forwarding over TLS; empty: the host of
    /// the peer's address (an IP address then needs an IP subject alternative name).
    pub peer_tls_domain: String,
    /// Border hysteresis, metres: an available driver held by one region moves to the region
    /// its reports place it in only once it is more than this far outside its own region's
    /// polygon, so a driver driving along the border does not move back and forth. Keep it at
    /// least `dispatch.search_radius_m`: a driver drawn across the border for a pickup
    /// (`border_pull`) is then never moved straight back by its next report.
    pub border_margin_m: f64,
    /// A trip request whose pickup is within `dispatch.search_radius_m` of another region
    /// first moves up to this many of that region's nearest available drivers (of the class)
    /// into the pickup's region, so a pickup near a border sees candidates across it. 0: off.
    pub border_pull: usize,
    /// After each region snapshot (stored in JetStream on `log.snapshot_*`'s schedule, the
    /// newest `log.snapshot_keep` kept), drop the stream messages before the oldest kept one,
    /// so a region's stream, and its takeover, stay bounded. Off: streams keep every message
    /// (what `cluster::audit`, which replays whole streams, needs).
    pub trim_stream: bool,
    /// With `auth.tokens` set: the bearer token this process presents when it calls another
    /// member on its own behalf (a driver's move into a region owned there, a pull of drivers
    /// across a border, the GetDriver a join checks); it must be one of `auth.tokens` with role
    /// `cluster-peer`. Empty: the caller's token is passed on, which is all a cluster without
    /// authentication needs; with authentication on, moves and pulls between processes are
    /// then refused (start-up warns).
    pub peer_token: PeerToken,
}

/// `cluster.peer_token`: a secret, so its `Debug` says only whether it is set.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerToken(pub String);

impl std::fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<set>"
        })
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: None,
            stream_replicas: 3,
            lease_ttl: std::time::Duration::from_secs(3),
            owner: String::new(),
            advertise_addr: String::new(),
            peer_ca_path: None,
            peer_tls_domain: String::new(),
            border_margin_m: 5_000.0,
            border_pull: 3,
            trim_stream: true,
            peer_token: PeerToken::default(),
        }
    }
}

impl ClusterConfig {
    /// Checks what the types cannot; `regions` is how many regions are configured.
    pub fn validate(&self, regions: usize) -> Result<(), String> {
        if self.nats_url.is_some() && regions == 0 {
            return Err(
                "`cluster.nats_url` is set but no [[regions]] are configured: \
                        cluster mode shards regions, so name at least one"
                    .into(),
            );
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(format!(
                "`cluster.stream_replicas` must be within 1..=5 (JetStream's limit), got {}",
                self.stream_replicas
            ));
        }
        if self.lease_ttl < std::time::Duration::from_millis(600) {
            return Err(format!(
                "`cluster.lease_ttl` must be at least 600ms (renewed every third of it), got {:?}",
                self.lease_ttl
            ));
        }
        if !(self.border_margin_m.is_finite() && self.border_margin_m >= 0.0) {
            return Err(format!(
                "`cluster.border_margin_m` must be a finite number of metres >= 0, got {}",
                self.border_margin_m
            ));
        }
        if self.border_pull > 20 {
            return Err(format!(
                "`cluster.border_pull` must be at most 20 drivers per request, got {}",
                self.border_pull
            ));
        }
        Ok(())
    }
}
