//! Names of the store's keys and the arithmetic of the fallback. Every key has a
//! Redis Cluster hash tag (`{…}`) around the dimension it counts, so whatever a
//! script touches for one dimension lives on one slot.

use std::net::IpAddr;

use crate::proxy::client::client_key;
use crate::proxy::route::table::RouteKey;

/// The dimension a cap counts, as a metric's `scope` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Tunnels of the route.
    Route,
    /// Tunnels of one client address (IPv6: its /64).
    ClientIp,
    /// Tunnels of one JWT subject.
    Subject,
    /// Messages or bytes of a budget.
    Budget,
}

impl Scope {
    /// The `scope` label of `wsgate_fleet_limit_rejections_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Route => "route",
            Scope::ClientIp => "client_ip",
            Scope::Subject => "subject",
            Scope::Budget => "budget",
        }
    }
}

/// The hash of a route's open tunnels.
pub fn route_key(route: &RouteKey) -> String {
    format!("wsg:{{route:{}/{}}}:conns", route.namespace, route.name)
}

/// The hash of one client's open tunnels on a route: the address as counted by
/// the per-replica cap (IPv4, IPv4-mapped as IPv4, IPv6 by its /64).
pub fn client_ip_key(route: &RouteKey, ip: IpAddr) -> String {
    format!(
        "wsg:{{ip:{}/{}:{}}}:conns",
        route.namespace,
        route.name,
        client_key(ip)
    )
}

/// The hash of one subject's open tunnels on a route. The subject is stored as
/// the first 128 bits of its SHA-256: no personal data in Redis, short keys.
pub fn subject_key(route: &RouteKey, subject: &str) -> String {
    format!(
        "wsg:{{sub:{}/{}:{}}}:conns",
        route.namespace,
        route.name,
        subject_hash(subject)
    )
}

/// A budget's hash: per subject, or `route` for the route's own budget.
pub fn budget_key(route: &RouteKey, subject: Option<&str>) -> String {
    let who = subject.map_or_else(|| "route".to_owned(), subject_hash);
    format!("wsg:{{budget:{}/{}:{who}}}", route.namespace, route.name)
}

/// The registry of live replicas.
pub const REPLICAS_KEY: &str = "wsg:{replicas}";

/// Hex of the first 16 bytes of SHA-256 of `subject`.
pub fn subject_hash(subject: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, subject.as_bytes());
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A replica's share of a fleet limit while the store is away: `ceil(limit / n)`,
/// with `n` the live replicas last seen (at least 1).
pub fn local_share(limit: u64, live: u64) -> u64 {
    limit.div_ceil(live.max(1))
}

/// A budget's lease: 1/32 of it (at least 1), so replicas re-lease often enough
/// to share it and a replica never holds much more than it uses (at most two
/// chunks: the next is asked for when less than one is left).
pub fn lease_chunk(budget: u64) -> u64 {
    budget.div_ceil(32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rk() -> RouteKey {
        RouteKey {
            namespace: "apps".into(),
            name: "chat".into(),
        }
    }

    /// Redis Cluster's slot of a key: CRC16 of the hash tag when there is one.
    fn tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn keys_carry_a_hash_tag_per_dimension() {
        assert_eq!(route_key(&rk()), "wsg:{route:apps/chat}:conns");
        assert_eq!(tag(&route_key(&rk())), "route:apps/chat");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_ip_key(&rk(), ip("192.0.2.7")),
            "wsg:{ip:apps/chat:192.0.2.7}:conns"
        );
        // IPv6 by its /64, IPv4-mapped as IPv4: the same keys as the local cap.
        assert_eq!(
            client_ip_key(&rk(), ip("2001:db8:1:2:aaaa::1")),
            client_ip_key(&rk(), ip("2001:db8:1:2:bbbb::2"))
        );
        assert_eq!(
            client_ip_key(&rk(), ip("::ffff:192.0.2.7")),
            client_ip_key(&rk(), ip("192.0.2.7"))
        );
        let s = subject_key(&rk(), "alice@example.com");
        assert!(!s.contains("alice"), "{s}");
        assert_eq!(tag(&s).len(), "sub:apps/chat:".len() + 32);
        assert_ne!(s, subject_key(&rk(), "bob"));
        assert_eq!(tag(&budget_key(&rk(), None)), "budget:apps/chat:route");
        assert_eq!(
            subject_hash("alice"),
            // sha256("alice"), first 16 bytes.
            "2bd806c97f0e00af1a1fc3328fa763a9"
        );
    }

    #[test]
    fn local_share_rounds_up_and_never_divides_by_zero() {
        assert_eq!(local_share(4, 2), 2);
        assert_eq!(local_share(5, 2), 3);
        assert_eq!(local_share(3, 0), 3);
        assert_eq!(local_share(1, 6), 1);
        assert_eq!(local_share(100, 3), 34);
        assert_eq!(lease_chunk(100), 4);
        assert_eq!(lease_chunk(10), 1);
        assert_eq!(lease_chunk(50 << 20), (50 << 20) / 32);
    }
}
