//! The `[auth]` settings: bearer tokens and the roles they carry. Their own file because the
//! edge (`grpc::auth`) and the HTTP side check calls against them, apart from the rest of the
//! config.

use serde::{Deserialize, Serialize};

/// What a bearer token may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// DriverService.
    DriverGateway,
    /// RiderService.
    RiderGateway,
    /// EventService.
    Subscriber,
    /// QueryService, and every other service.
    Admin,
    /// The operator's live map and its HTTP API only; no gRPC service.
    Viewer,
    /// Another member of the cluster calling on its own behalf (`cluster.peer_token`): the
    /// RegionService (drivers moved and drawn across borders between processes) and the
    /// GetDriver a join checks the driver's old region with.
    ClusterPeer,
}

/// Bearer-token authentication. With no tokens, every call is allowed (and start-up warns).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The accepted tokens.
    pub tokens: Vec<TokenConfig>,
}

/// One accepted bearer token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (appears in logs; the token never does).
    pub name: String,
    /// The secret, sent as `authorization: Bearer <token>`.
    pub token: String,
    /// What it may call.
    pub roles: Vec<Role>,
}

impl std::fmt::Debug for TokenConfig {
    // Hand-written so the secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("roles", &self.roles)
            .finish()
    }
}
