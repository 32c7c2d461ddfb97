//! Bearer-token authentication and role checks for the gRPC edge.
//!
//! It exists so that each kind of client can call only its own service: driver gateways the
//! DriverService, rider gateways the RiderService, subscribers the EventService, operators
//! (`admin`) everything. Health and reflection stay open so load balancers and tools work
//! without a token. Tokens come from the config, are compared in constant time (every token is
//! compared, with no early exit), and are never logged: only the token's `name` is.

use subtle::{ConditionallySelectable, ConstantTimeEq};
use tonic::codegen::http::HeaderMap;

use crate::config::{AuthConfig, Role};

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone (health, reflection).
    Open,
    /// A token holding this role (or `admin`).
    Role(Role),
    /// A token holding this role (or `admin`), or a cluster member's (`cluster-peer`).
    RoleOrPeer(Role),
}

/// The access an rpc path (`/package.Service/Method`) requires. Unknown services need `admin`.
pub(crate) fn required(path: &str) -> Access {
    // Where each region is served is discovery, like health: open to every client.
    if path == "/dispatch.v1.QueryService/GetRoutes" {
        return Access::Open;
    }
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split('/').next())
        .unwrap_or_default();
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Access::Open,
        "dispatch.v1.DriverService" => Access::Role(Role::DriverGateway),
        // Cluster members' calls on their own behalf (`cluster.peer_token`).
        "dispatch.v1.RegionService" => Access::Role(Role::ClusterPeer),
        // ... of which a join checks the driver with its old region's owner.
        "dispatch.v1.QueryService" if path.ends_with("/GetDriver") => {
            Access::RoleOrPeer(Role::Admin)
        }
        "dispatch.v1.RiderService" => Access::Role(Role::RiderGateway),
        "dispatch.v1.EventService" => Access::Role(Role::Subscriber),
        _ => Access::Role(Role::Admin),
    }
}

/// Why a call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No `authorization: Bearer` header.
    Missing,
    /// A token that is not configured.
    Unknown,
    /// A valid token without the role.
    Forbidden {
        /// The token's name.
        name: String,
        /// The role the call needs.
        needed: Role,
    },
}

struct Entry {
    name: String,
    secret: Vec<u8>,
    roles: Vec<Role>,
}

/// The configured tokens. With none, every call is allowed.
pub(crate) struct Authenticator {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("Authenticator")
            .field("tokens", &names)
            .finish()
    }
}

impl Authenticator {
    pub(crate) fn new(config: &AuthConfig) -> Self {
        Authenticator {
            entries: config
                .tokens
                .iter()
                .map(|t| Entry {
                    name: t.name.clone(),
                    secret: t.token.as_bytes().to_vec(),
                    roles: t.roles.clone(),
                })
                .collect(),
        }
    }

    /// Whether any token is configured (authentication is on).
    pub(crate) fn is_enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Checks the call's bearer token against what `access` needs.
    pub(crate) fn check(&self, access: Access, headers: &HeaderMap) -> Result<(), AuthError> {
        let (needed, or_peer) = match access {
            Access::Open => return Ok(()),
            Access::Role(role) => (role, false),
            Access::RoleOrPeer(role) => (role, true),
        };
        match self.check_token(needed, bearer(headers)) {
            // Refused for the role the call names, not for the peer role it also takes.
            Err(e @ AuthError::Forbidden { .. }) if or_peer => self
                .check_token(Role::ClusterPeer, bearer(headers))
                .map_err(|_| e),
            checked => checked,
        }
    }

    /// Checks a presented token (`None`: none presented) against a role, `admin` passing
    /// every check. The HTTP side uses it with tokens from a header or a cookie.
    pub(crate) fn check_token(
        &self,
        needed: Role,
        presented: Option<&str>,
    ) -> Result<(), AuthError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let presented = presented.ok_or(AuthError::Missing)?;
        // Compare against every token and pick the match without branching on secret data, so
        // response time does not tell how much of a guess was right.
        let mut found = 0u32;
        for (i, e) in self.entries.iter().enumerate() {
            let eq = e.secret.as_slice().ct_eq(presented.as_bytes());
            found = u32::conditional_select(&found, &(i as u32 + 1), eq);
        }
        let entry = match found.checked_sub(1) {
            Some(i) => &self.entries[i as usize],
            None => return Err(AuthError::Unknown),
        };
        if entry.roles.contains(&Role::Admin) || entry.roles.contains(&needed) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                name: entry.name.clone(),
                needed,
            })
        }
    }
}

/// The token of an `authorization: Bearer` header, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            tokens: vec![
                TokenConfig {
                    name: "gw".into(),
                    token: "driver-token-0123456789".into(),
                    roles: vec![Role::DriverGateway],
                },
                TokenConfig {
                    name: "ops".into(),
                    token: "admin-token-0123456789".into(),
                    roles: vec![Role::Admin],
                },
            ],
        })
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    #[test]
    fn roles_gate_services_and_admin_may_call_all() {
        let a = auth();
        let drivers = required("/dispatch.v1.DriverService/GoOnline");
        let queries = required("/dispatch.v1.QueryService/GetStats");
        assert_eq!(a.check(drivers, &bearer("driver-token-0123456789")), Ok(()));
        assert!(matches!(
            a.check(queries, &bearer("driver-token-0123456789")),
            Err(AuthError::Forbidden { .. })
        ));
        assert_eq!(a.check(queries, &bearer("admin-token-0123456789")), Ok(()));
        assert_eq!(a.check(drivers, &bearer("admin-token-0123456789")), Ok(()));
        assert_eq!(
            a.check(drivers, &bearer("driver-token-012345678")),
            Err(AuthError::Unknown)
        );
        assert_eq!(a.check(drivers, &HeaderMap::new()), Err(AuthError::Missing));
        let health = required("/grpc.health.v1.Health/Check");
        assert_eq!(a.check(health, &HeaderMap::new()), Ok(()));
    }

    #[test]
    fn a_cluster_peer_token_opens_the_region_service_and_get_driver_only() {
        let a = Authenticator::new(&AuthConfig {
            tokens: vec![
                TokenConfig {
                    name: "members".into(),
                    token: "peer-token-0123456789".into(),
                    roles: vec![Role::ClusterPeer],
                },
                TokenConfig {
                    name: "gw".into(),
                    token: "driver-token-0123456789".into(),
                    roles: vec![Role::DriverGateway],
                },
            ],
        });
        let peer = bearer("peer-token-0123456789");
        let gateway = bearer("driver-token-0123456789");
        for path in [
            "/dispatch.v1.RegionService/JoinRegion",
            "/dispatch.v1.RegionService/PullDrivers",
            "/dispatch.v1.QueryService/GetDriver",
        ] {
            assert_eq!(a.check(required(path), &peer), Ok(()), "{path}");
            // A gateway can neither move drivers nor read them through these.
            assert!(
                matches!(
                    a.check(required(path), &gateway),
                    Err(AuthError::Forbidden { .. })
                ),
                "{path}"
            );
        }
        // Refused GetDriver names the role it needs, admin, not the peer role.
        assert_eq!(
            a.check(required("/dispatch.v1.QueryService/GetDriver"), &gateway),
            Err(AuthError::Forbidden {
                name: "gw".into(),
                needed: Role::Admin
            })
        );
        for path in [
            "/dispatch.v1.QueryService/GetStats",
            "/dispatch.v1.RiderService/RequestTrip",
            "/dispatch.v1.DriverService/GoOnline",
        ] {
            assert!(
                matches!(
                    a.check(required(path), &peer),
                    Err(AuthError::Forbidden { .. })
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn a_viewer_token_opens_no_grpc_service_but_passes_the_viewer_check() {
        let a = Authenticator::new(&AuthConfig {
            tokens: vec![TokenConfig {
                name: "wall".into(),
                token: "viewer-token-0123456789".into(),
                roles: vec![Role::Viewer],
            }],
        });
        for path in [
            "/dispatch.v1.DriverService/GoOnline",
            "/dispatch.v1.RiderService/RequestTrip",
            "/dispatch.v1.EventService/Subscribe",
            "/dispatch.v1.QueryService/GetStats",
            "/some.other.Service/Call",
        ] {
            assert!(
                matches!(
                    a.check(required(path), &bearer("viewer-token-0123456789")),
                    Err(AuthError::Forbidden { .. })
                ),
                "{path}"
            );
        }
        assert_eq!(
            a.check_token(Role::Viewer, Some("viewer-token-0123456789")),
            Ok(())
        );
        assert_eq!(a.check_token(Role::Viewer, None), Err(AuthError::Missing));
        // An admin token passes the viewer check too.
        assert_eq!(
            auth().check_token(Role::Viewer, Some("admin-token-0123456789")),
            Ok(())
        );
        assert!(matches!(
            auth().check_token(Role::Viewer, Some("driver-token-0123456789")),
            Err(AuthError::Forbidden { .. })
        ));
    }
}
