//! The policies a route carries, as plain settings: how a backend is picked,
//! keepalive per leg, passive health, rate limits, rebalancing and who may connect. The stages that
//! act on them (`backends/`, `relay/`) read these; nothing here acts.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use crate::proxy::client::Cidrs;

/// How a backend is picked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Balance {
    /// In turn, by weight.
    RoundRobin,
    /// Fewest open tunnels.
    LeastConnections,
    /// Stable per key.
    ConsistentHash(HashKey),
    /// Affinity cookie set and honoured by the proxy.
    Cookie {
        /// Cookie name.
        name: String,
        /// `Max-Age`, none for a session cookie.
        ttl: Option<Duration>,
    },
}

/// The key of consistent hashing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP.
    ClientIp,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

/// Keepalive settings of one leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegPing {
    /// Silence before the proxy pings.
    pub interval: Duration,
    /// Silence after the ping before the leg counts as dead.
    pub timeout: Duration,
}

/// A route's passive-health settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Failed connects in a row that eject a backend; 0 turns ejection off.
    pub max_fails: u32,
    /// How long an ejected backend is skipped.
    pub fail_timeout: Duration,
}

impl Default for PassiveHealth {
    /// NGINX's defaults: `max_fails=1 fail_timeout=10s`.
    fn default() -> Self {
        PassiveHealth {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

/// What a tunnel above its rate gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceed {
    /// Close 1008 to both sides.
    Close,
    /// Stop reading the client until the buckets refill.
    Throttle,
}

/// A route's rate limits (each `None` when not set).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Messages per second and bucket depth.
    pub messages: Option<(f64, f64)>,
    /// Payload bytes per second and bucket depth.
    pub bytes: Option<(f64, f64)>,
    /// Close or Throttle.
    pub on_exceed: Exceed,
}

impl RateLimit {
    /// Limits from the route fields; `None` when neither rate is set. A depth of 0
    /// means one second's worth.
    pub fn new(
        messages_per_second: u64,
        burst: u64,
        bytes_per_second: u64,
        burst_bytes: u64,
        on_exceed: Exceed,
    ) -> Option<RateLimit> {
        let bucket = |rate: u64, depth: u64| {
            let depth = if depth == 0 { rate } else { depth };
            (rate > 0).then_some((rate as f64, depth as f64))
        };
        let limit = RateLimit {
            messages: bucket(messages_per_second, burst),
            bytes: bucket(bytes_per_second, burst_bytes),
            on_exceed,
        };
        (limit.messages.is_some() || limit.bytes.is_some()).then_some(limit)
    }
}

/// A route's `rebalance` settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RebalancePolicy {
    /// Largest share of an over-loaded backend's tunnels that moves (0 < f ≤ 1).
    pub max_fraction: f64,
    /// The window the closes are spread over.
    pub over: Duration,
}

/// Which client addresses may use a route (`clientAccess`): deny is checked
/// first, then allow (empty allows all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAccess {
    /// Allowed ranges; empty allows every address not denied.
    pub allow: Cidrs,
    /// Denied ranges; they win over `allow`.
    pub deny: Cidrs,
    /// IPv6 clients are compared by this prefix of their address (128: the whole).
    pub ipv6_prefix_length: u8,
    /// On a table change, close open tunnels whose client is now denied
    /// (`onPolicyChange: CloseDenied`).
    pub close_denied: bool,
}

impl ClientAccess {
    /// Whether `ip` (an effective client address) may open a tunnel.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) if self.ipv6_prefix_length < 128 => {
                let keep = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix_length))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
            }
            ip => ip,
        };
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

/// Whether a route lets `ip` in (no `clientAccess`: everyone).
pub fn client_permitted(access: Option<&ClientAccess>, ip: IpAddr) -> bool {
    access.is_none_or(|a| a.permits(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(allow: &[&str], deny: &[&str], v6: u8) -> ClientAccess {
        ClientAccess {
            allow: Cidrs::parse(allow).unwrap(),
            deny: Cidrs::parse(deny).unwrap(),
            ipv6_prefix_length: v6,
            close_denied: true,
        }
    }

    #[test]
    fn deny_wins_and_empty_allow_is_everyone() {
        let a = access(&["10.0.0.0/8"], &["10.6.0.0/16"], 128);
        assert!(a.permits("10.1.2.3".parse().unwrap()));
        assert!(a.permits("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!a.permits("10.6.0.1".parse().unwrap()));
        assert!(!a.permits("192.0.2.1".parse().unwrap()));
        let open = access(&[], &["192.0.2.0/24"], 128);
        assert!(open.permits("198.51.100.1".parse().unwrap()));
        assert!(!open.permits("192.0.2.9".parse().unwrap()));
        assert!(client_permitted(None, "192.0.2.9".parse().unwrap()));
    }

    #[test]
    fn ipv6_clients_compare_by_prefix() {
        // A bare address in the list, a client elsewhere in the same /64.
        let a = access(&[], &["2001:db8:1:2::"], 64);
        assert!(!a.permits("2001:db8:1:2:aaaa::1".parse().unwrap()));
        assert!(a.permits("2001:db8:1:3::1".parse().unwrap()));
    }
}

/// A route's `tracing`: its share of new traces and whether a client's
/// `traceparent` is continued.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tracing {
    /// The share of new traces recorded; `--otel-sampling-ratio` when `None`.
    pub sampling_ratio: Option<f64>,
    /// Continue the client's trace; `false`: a new root linked to it.
    pub trust_incoming_context: bool,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            sampling_ratio: None,
            trust_incoming_context: true,
        }
    }
}

/// `fleetLimits`, compiled: caps counted across every replica in the limits store
/// (`0` = none) and a message budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetPolicy {
    /// Open tunnels of the route (503 over it).
    pub max_connections: u64,
    /// Open tunnels per client address (429 over it).
    pub max_connections_per_client_ip: u64,
    /// Open tunnels per JWT subject (429 over it).
    pub max_connections_per_subject: u64,
    /// Messages and bytes per window, client to backend.
    pub budget: Option<BudgetPolicy>,
}

/// A fleet-wide message budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetPolicy {
    /// One budget per subject (else one for the route).
    pub per_subject: bool,
    /// Data messages per window (`0` = none).
    pub messages: u64,
    /// Payload bytes per window (`0` = none).
    pub bytes: u64,
    /// The window.
    pub window: Duration,
}
