//! The policies a route carries, as plain settings: how a backend is picked,
//! keepalive per leg, passive health, rate limits and rebalancing. The stages that
//! act on them (`backends/`, `relay/`) read these; nothing here acts.

use std::time::Duration;

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
