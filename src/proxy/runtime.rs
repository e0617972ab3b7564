//! A route's state that outlives reloads: its metric handles, the open-tunnel
//! counts its limits read, and its [`BackendSet`]. A reload that keeps a route keeps
//! its runtime, so counts and balancing carry on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::metrics::RouteMetrics;
use crate::proxy::backends::BackendSet;
pub use crate::proxy::client::client_key;
use crate::proxy::fleet::budget::Account;
use crate::proxy::fleet::Ticket;
use crate::proxy::route::table::Route;

/// A route's state that outlives reloads: open-tunnel counts for limits and
/// balancing, and its metric handles.
pub struct RouteRuntime {
    /// Metric handles of the route.
    pub metrics: RouteMetrics,
    /// Open tunnels.
    pub active: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    /// The route's backends as balancing and passive health see them.
    pub backends: BackendSet,
}

impl RouteRuntime {
    /// State for a route with these metric handles.
    pub fn new(metrics: RouteMetrics) -> Self {
        RouteRuntime {
            metrics,
            active: AtomicU64::new(0),
            per_ip: Mutex::default(),
            backends: BackendSet::default(),
        }
    }

    /// Counts a tunnel in, unless a limit forbids it: `Err(503)` for the route's
    /// `maxConnections`, `Err(429)` for `maxConnectionsPerClientIP`.
    pub fn admit(self: &Arc<Self>, route: &Route, ip: IpAddr) -> Result<Admission, u16> {
        let ip = client_key(ip);
        let active = self.active.fetch_add(1, Relaxed);
        if route.max_connections > 0 && active >= route.max_connections {
            self.active.fetch_sub(1, Relaxed);
            return Err(503);
        }
        let mut per_ip = self.per_ip.lock().expect("lock");
        let n = per_ip.entry(ip).or_default();
        if route.max_connections_per_client_ip > 0 && *n >= route.max_connections_per_client_ip {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            self.active.fetch_sub(1, Relaxed);
            return Err(429);
        }
        *n += 1;
        drop(per_ip);
        self.metrics.active().inc();
        Ok(Admission {
            runtime: self.clone(),
            ip: PackedKey::new(ip),
            backend: None,
            fleet: None,
        })
    }
}

/// A [`client_key`] in 9 bytes: an IPv4 address or an IPv6 /64 is all a key
/// holds. An `IpAddr` takes 17, which with the fleet ticket beside it would push
/// every idle tunnel's task into the next 128-byte step.
#[derive(Clone, Copy)]
struct PackedKey([u8; 9]);

impl PackedKey {
    fn new(key: IpAddr) -> PackedKey {
        let mut b = [0u8; 9];
        match key {
            IpAddr::V4(v4) => b[1..5].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => {
                b[0] = 6;
                b[1..].copy_from_slice(&v6.octets()[..8]);
            }
        }
        PackedKey(b)
    }

    fn ip(self) -> IpAddr {
        let b = self.0;
        if b[0] == 6 {
            let mut o = [0u8; 16];
            o[..8].copy_from_slice(&b[1..]);
            IpAddr::from(o)
        } else {
            IpAddr::from([b[1], b[2], b[3], b[4]])
        }
    }
}

/// One admitted tunnel's place in the counts; released on drop.
pub struct Admission {
    runtime: Arc<RouteRuntime>,
    ip: PackedKey,
    backend: Option<Arc<str>>,
    /// The tunnel's place in the fleet-wide counts (`fleetLimits`), released with
    /// it; boxed, since every idle tunnel's task carries this field.
    fleet: Option<Box<Ticket>>,
}

impl Admission {
    /// The route's state this tunnel is counted in.
    pub fn runtime(&self) -> &Arc<RouteRuntime> {
        &self.runtime
    }

    /// Holds the tunnel's fleet-wide counts until it closes.
    pub fn set_fleet(&mut self, ticket: Ticket) {
        self.fleet = Some(Box::new(ticket));
    }

    /// The fleet budget the tunnel's client messages are charged to.
    pub fn budget(&self) -> Option<&Arc<Account>> {
        self.fleet.as_deref().and_then(Ticket::budget)
    }

    /// Counts the tunnel against the backend it reached.
    pub fn set_backend(&mut self, address: &Arc<str>) {
        self.runtime.backends.count_in(address);
        self.backend = Some(address.clone());
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.runtime.active.fetch_sub(1, Relaxed);
        self.runtime.metrics.active().dec();
        let ip = self.ip.ip();
        let mut per_ip = self.runtime.per_ip.lock().expect("lock");
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
        drop(per_ip);
        if let Some(b) = self.backend.take() {
            self.runtime.backends.count_out(&b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::proxy::route::policy::Balance;

    #[test]
    fn a_packed_key_is_the_key() {
        for k in ["192.0.2.1", "0.0.0.0", "2001:db8:1:2::", "::"] {
            let ip: IpAddr = k.parse().unwrap();
            assert_eq!(PackedKey::new(client_key(ip)).ip(), client_key(ip));
        }
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let mut route = Route::for_test("r", Balance::RoundRobin, &[("127.0.0.1:1", 1)]);
        route.max_connections_per_client_ip = 2;
        let rt = Arc::new(RouteRuntime::new(Metrics::new().route("default", "r")));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = rt.admit(&route, ip("2001:db8:1:2::1")).unwrap();
        let b = rt.admit(&route, ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            rt.admit(&route, ip("2001:db8:1:2:abcd::7")).err(),
            Some(429)
        );
        // Another /64, and IPv4 (also as an IPv4-mapped IPv6 address), count apart.
        let _c = rt.admit(&route, ip("2001:db8:1:3::1")).unwrap();
        let _d = rt.admit(&route, ip("192.0.2.1")).unwrap();
        let _e = rt.admit(&route, ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(rt.admit(&route, ip("192.0.2.1")).err(), Some(429));
        drop((a, b));
        assert!(rt.admit(&route, ip("2001:db8:1:2::5")).is_ok());
    }
}
