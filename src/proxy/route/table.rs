//! `RouteTable`: validated routes, ready to match requests. Both route sources
//! build it (through `crate::compile`); the proxy only reads it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;

pub use super::matching::{normalize_host, request_host, HostMatch, PathRule};
use super::policy::{Balance, LegPing, PassiveHealth, RateLimit, RebalancePolicy};

/// A route's identity: namespace and name. Tunnels remember it so a reload can tell
/// which of them lost their route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// Namespace (`default` in standalone mode unless given).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One backend address and its share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendAddr {
    /// `host:port`.
    pub address: Arc<str>,
    /// Relative weight (0 = no new tunnels).
    pub weight: u32,
}

impl BackendAddr {
    /// The opaque, stable id the affinity cookie carries.
    pub fn affinity_id(&self) -> String {
        format!("{:016x}", fnv1a(self.address.as_bytes()))
    }
}

/// FNV-1a: a stable hash for affinity ids and consistent hashing (not for secrets).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A compiled route.
#[derive(Clone)]
pub struct Route {
    /// Namespace and name.
    pub key: RouteKey,
    /// Host patterns; empty matches any host.
    pub hosts: Vec<HostMatch>,
    /// Path rule.
    pub path: PathRule,
    /// Resolved backends.
    pub backends: Vec<BackendAddr>,
    /// Balancing policy.
    pub balance: Balance,
    /// Client-leg pings.
    pub client_ping: Option<LegPing>,
    /// Backend-leg pings.
    pub backend_ping: Option<LegPing>,
    /// Backend connect timeout.
    pub connect_timeout: Duration,
    /// Backend handshake timeout.
    pub handshake_timeout: Duration,
    /// Idle timeout (no data message either way).
    pub idle_timeout: Option<Duration>,
    /// Maximum tunnel lifetime.
    pub max_lifetime: Option<Duration>,
    /// Open tunnels allowed (0 = no limit).
    pub max_connections: u64,
    /// Open tunnels per client IP (0 = no limit).
    pub max_connections_per_client_ip: u64,
    /// Largest message (0 = no limit).
    pub max_message_bytes: u64,
    /// Allowed Origins; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Allowed subprotocols; empty allows any.
    pub subprotocols: Vec<String>,
    /// Proxy plain HTTP too.
    pub proxy_http: bool,
    /// Grace period of tunnels whose route or backend disappears.
    pub drain_grace: Duration,
    /// Certificate for the route's hostnames.
    pub tls: Option<Arc<CertifiedKey>>,
    /// Token check of upgrades and plain HTTP requests (`auth.jwt`).
    pub auth: Option<Arc<super::auth::JwtAuth>>,
    /// Per-tunnel rate limits, client to backend.
    pub rate_limit: Option<RateLimit>,
    /// Rebalancing after backends are added.
    pub rebalance: Option<RebalancePolicy>,
    /// When failed connects take a backend out of rotation.
    pub passive_health: PassiveHealth,
    /// TLS toward the backends (`backendTLS`); plain TCP when absent.
    pub backend_tls: Option<Arc<super::backend_tls::BackendTls>>,
    /// Which client addresses may use the route (`clientAccess`).
    pub client_access: Option<super::policy::ClientAccess>,
    /// An HTTPRoute rule's listener, conditions and filters; `None` for a
    /// `WebSocketRoute`, served on wsgate's own listeners.
    pub gateway: Option<Arc<super::gateway::GatewayRule>>,
    /// Traces of its requests and tunnels (`tracing`).
    pub tracing: super::policy::Tracing,
    /// Caps and budgets shared across replicas (`fleetLimits`).
    pub fleet: Option<super::policy::FleetPolicy>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("key", &self.key)
            .field("hosts", &self.hosts)
            .field("path", &self.path)
            .field("backends", &self.backends)
            .field("balance", &self.balance)
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.is_some())
            .field("backend_tls", &self.backend_tls)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl Route {
    /// A catch-all route with defaults, for unit tests.
    pub(crate) fn for_test(name: &str, balance: Balance, backends: &[(&str, u32)]) -> Route {
        Route {
            key: RouteKey {
                namespace: "default".into(),
                name: name.into(),
            },
            hosts: vec![],
            path: PathRule::Prefix("/".into()),
            backends: backends
                .iter()
                .map(|(a, w)| BackendAddr {
                    address: (*a).into(),
                    weight: *w,
                })
                .collect(),
            balance,
            client_ping: None,
            backend_ping: None,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: None,
            max_lifetime: None,
            max_connections: 0,
            max_connections_per_client_ip: 0,
            max_message_bytes: 0,
            allowed_origins: vec![],
            subprotocols: vec![],
            proxy_http: true,
            drain_grace: Duration::from_secs(1),
            tls: None,
            auth: None,
            rate_limit: None,
            rebalance: None,
            passive_health: PassiveHealth::default(),
            backend_tls: None,
            client_access: None,
            gateway: None,
            tracing: Default::default(),
            fleet: None,
        }
    }
}

/// The routes the proxy serves.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Gateway API rules by data-plane port, each list in precedence order.
    gateway_ports: Arc<HashMap<u16, Vec<usize>>>,
    /// The hostnames of the Gateway listeners on each data-plane port (`None`: a
    /// listener without one), those without routes included.
    gateway_listeners: Arc<HashMap<u16, Vec<Option<HostMatch>>>>,
    /// Which routes a request's host can match, so a handshake scores a handful of
    /// routes rather than all of them (thousands of hosts in one table are common).
    by_host: Arc<HostIndex>,
}

/// Positions in `routes`, each list ascending (the table's order breaks ties).
#[derive(Debug, Default)]
struct HostIndex {
    /// Routes naming this exact host.
    exact: HashMap<String, Vec<usize>>,
    /// Routes that may match any host: a wildcard among their hosts, or no hosts.
    any: Vec<usize>,
}

impl HostIndex {
    fn new(routes: &[Arc<Route>]) -> HostIndex {
        let mut index = HostIndex::default();
        for (i, r) in routes.iter().enumerate() {
            let wildcard = r.hosts.iter().any(|h| matches!(h, HostMatch::Suffix(_)));
            if r.hosts.is_empty() || wildcard {
                index.any.push(i);
            }
            for h in &r.hosts {
                if let HostMatch::Exact(name) = h {
                    let at = index.exact.entry(name.clone()).or_default();
                    if at.last() != Some(&i) {
                        at.push(i);
                    }
                }
            }
        }
        index
    }

    /// The routes `host` may match, in table order, each once.
    fn candidates<'a>(&'a self, host: &str) -> impl Iterator<Item = usize> + 'a {
        let mut exact = self
            .exact
            .get(host)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .peekable();
        let mut any = self.any.iter().peekable();
        std::iter::from_fn(move || match (exact.peek(), any.peek()) {
            (Some(&&e), Some(&&a)) if e == a => {
                exact.next();
                any.next()
            }
            (Some(&&e), Some(&&a)) if e < a => exact.next(),
            (Some(_), Some(_)) | (None, Some(_)) => any.next(),
            (Some(_), None) => exact.next(),
            (None, None) => None,
        })
        .copied()
    }
}

impl RouteTable {
    /// A table of these routes (already validated; see `crate::compile`).
    pub fn new(routes: Vec<Route>) -> Self {
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let mut gateway_ports: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            if let Some(g) = &r.gateway {
                gateway_ports.entry(g.port).or_default().push(i);
            }
        }
        RouteTable {
            by_host: Arc::new(HostIndex::new(&routes)),
            gateway_ports: Arc::new(gateway_ports),
            gateway_listeners: Arc::default(),
            routes,
        }
    }

    /// All routes.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route for a request: the most specific host match first (exact, then the
    /// longest wildcard, then routes without hostnames), then the longest path.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = normalize_host(host);
        let mut best: Option<((usize, usize), &Arc<Route>)> = None;
        for route in self
            .by_host
            .candidates(&host)
            .map(|i| &self.routes[i])
            .filter(|r| r.gateway.is_none())
        {
            let host_score = if route.hosts.is_empty() {
                Some(0)
            } else {
                route
                    .hosts
                    .iter()
                    .filter_map(|h| h.score(&host))
                    .max()
                    .map(|s| s.saturating_add(1).max(1))
            };
            let (Some(hs), Some(ps)) = (host_score, route.path.score(path)) else {
                continue;
            };
            if best.as_ref().is_none_or(|(score, _)| (hs, ps) > *score) {
                best = Some(((hs, ps), route));
            }
        }
        best.map(|(_, r)| r)
    }

    /// The same table, knowing the hostnames of every Gateway listener on each
    /// data-plane port (a listener without routes still takes the requests for
    /// its hostname, and answers them 404).
    pub fn with_gateway_listeners(
        mut self,
        listeners: HashMap<u16, Vec<Option<HostMatch>>>,
    ) -> Self {
        self.gateway_listeners = Arc::new(listeners);
        self
    }

    /// The Gateway API rule for a request on data-plane port `port`: the most
    /// specific listener hostname matching the request's host picks the listener,
    /// and only its rules are considered (listener isolation); then the most
    /// specific route hostname, then the first rule in precedence order whose
    /// path, method, headers and query match.
    pub fn find_gateway<B>(&self, port: u16, req: &http::Request<B>) -> Option<&Arc<Route>> {
        let host = normalize_host(&request_host(req));
        let path = req.uri().path();
        let score = |h: &Option<HostMatch>| match h {
            None => Some(0),
            Some(h) => h.score(&host).map(|s| s.saturating_add(1)),
        };
        let rules = self.gateway_ports.get(&port)?;
        let listener_hosts: Vec<&Option<HostMatch>> = match self.gateway_listeners.get(&port) {
            Some(hosts) => hosts.iter().collect(),
            None => rules
                .iter()
                .filter_map(|&i| self.routes[i].gateway.as_ref().map(|g| &g.listener_host))
                .collect(),
        };
        let listener = listener_hosts
            .into_iter()
            .filter_map(|h| score(h).map(|s| (s, h)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, h)| h)?;
        let mut best: Option<(usize, &Arc<Route>)> = None;
        for route in rules.iter().map(|&i| &self.routes[i]) {
            let g = route.gateway.as_ref().expect("indexed by its gateway rule");
            if g.listener_host != *listener {
                continue;
            }
            let host_score = if route.hosts.is_empty() {
                Some(0)
            } else {
                route
                    .hosts
                    .iter()
                    .filter_map(|h| h.score(&host))
                    .max()
                    .map(|s| s.saturating_add(1))
            };
            let Some(hs) = host_score else { continue };
            if best.as_ref().is_some_and(|(b, _)| *b >= hs) {
                continue;
            }
            if route.path.score(path).is_some() && g.matches(req) {
                best = Some((hs, route));
            }
        }
        best.map(|(_, r)| r)
    }

    /// The certificate for an SNI name (or the only one, without SNI).
    pub fn certificate(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let with_tls = || self.routes.iter().filter(|r| r.tls.is_some());
        match sni {
            Some(name) => {
                let name = name.to_ascii_lowercase();
                with_tls()
                    .filter_map(|r| {
                        let score = r.hosts.iter().filter_map(|h| h.score(&name)).max();
                        score.or(r.hosts.is_empty().then_some(0)).map(|s| (s, r))
                    })
                    .max_by_key(|(s, _)| *s)
                    .and_then(|(_, r)| r.tls.clone())
            }
            None => with_tls().next().and_then(|r| r.tls.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], path: PathRule) -> Route {
        let mut r = Route::for_test(name, Balance::RoundRobin, &[]);
        r.hosts = hosts.iter().map(|h| HostMatch::parse(h).unwrap()).collect();
        r.path = path;
        r
    }

    /// A Gateway API rule on data-plane port 7000, attached to a listener of `listener` hostname.
    fn gateway_rule(name: &str, listener: Option<&str>, path: &str) -> Route {
        let mut r = route(name, &[], PathRule::Prefix(path.into()));
        r.gateway = Some(Arc::new(super::super::gateway::GatewayRule {
            port: 7000,
            listener_host: listener.and_then(HostMatch::parse),
            total_weight: 1,
            ..Default::default()
        }));
        r
    }

    #[test]
    fn a_gateway_request_is_served_by_its_most_specific_listener_only() {
        let listeners = HashMap::from([(
            7000,
            vec![
                None,
                HostMatch::parse("*.example.com"),
                HostMatch::parse("abc.foo.example.com"),
            ],
        )]);
        let t = RouteTable::new(vec![
            gateway_rule("empty", None, "/empty"),
            gateway_rule("wild", Some("*.example.com"), "/wild"),
            route("wsr", &[], PathRule::Prefix("/".into())),
        ])
        .with_gateway_listeners(listeners);
        let name = |host: &str, path: &str| {
            let req = http::Request::builder()
                .uri(path)
                .header("host", host)
                .body(())
                .unwrap();
            t.find_gateway(7000, &req).map(|r| r.key.name.clone())
        };
        assert_eq!(name("bar.com", "/empty").as_deref(), Some("empty"));
        assert_eq!(
            name("bar.com", "/wild"),
            None,
            "bar.com is the empty-hostname listener's"
        );
        assert_eq!(name("bar.example.com", "/wild").as_deref(), Some("wild"));
        assert_eq!(
            name("bar.example.com", "/empty"),
            None,
            "no fallback to a less specific listener"
        );
        assert_eq!(
            name("abc.foo.example.com", "/wild"),
            None,
            "a listener without routes still takes its hostname's requests (404)"
        );
        assert_eq!(
            name("bar.com", "/"),
            None,
            "a WebSocketRoute is never served on a Gateway port"
        );
        assert_eq!(
            t.find("bar.com", "/empty").map(|r| r.key.name.as_str()),
            Some("wsr"),
            "nor a Gateway rule on wsgate's own listener"
        );
    }

    #[test]
    fn longest_prefix_and_segments() {
        let t = RouteTable::new(vec![
            route("root", &[], PathRule::Prefix("/".into())),
            route("chat", &[], PathRule::Prefix("/chat".into())),
            route("exact", &[], PathRule::Exact("/chat/admin".into())),
        ]);
        let name = |h: &str, p: &str| t.find(h, p).map(|r| r.key.name.clone());
        assert_eq!(name("x", "/chat/room").as_deref(), Some("chat"));
        assert_eq!(name("x", "/chat").as_deref(), Some("chat"));
        assert_eq!(name("x", "/chatter").as_deref(), Some("root"));
        assert_eq!(name("x", "/chat/admin").as_deref(), Some("exact"));
        assert_eq!(name("x", "/chat/admin/x").as_deref(), Some("chat"));
    }

    #[test]
    fn host_specificity_beats_path_length() {
        let t = RouteTable::new(vec![
            route("any", &[], PathRule::Prefix("/deep/path".into())),
            route("wild", &["*.example.com"], PathRule::Prefix("/".into())),
            route("exact", &["chat.example.com"], PathRule::Prefix("/".into())),
        ]);
        let name = |h: &str, p: &str| t.find(h, p).map(|r| r.key.name.clone());
        assert_eq!(
            name("chat.example.com:8080", "/deep/path").as_deref(),
            Some("exact")
        );
        assert_eq!(
            name("Game.Example.com", "/deep/path").as_deref(),
            Some("wild")
        );
        assert_eq!(name("example.com", "/deep/path").as_deref(), Some("any"));
        assert_eq!(name("example.com", "/"), None);
    }

    #[test]
    fn host_patterns() {
        assert!(HostMatch::parse("*.example.com").is_some());
        assert!(HostMatch::parse("a.*.com").is_none());
        assert!(HostMatch::parse("bad host").is_none());
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("Example.COM."), "example.com");
    }

    /// The host index changes nothing but speed: every lookup gives the route a
    /// scan of the whole table in order gives.
    #[test]
    fn indexed_lookup_equals_a_full_scan() {
        use proptest::prelude::*;
        const HOSTS: [&str; 5] = [
            "a.example.com",
            "b.example.com",
            "*.example.com",
            "*.b.example.com",
            "c.test",
        ];
        const PATHS: [&str; 4] = ["/", "/chat", "/chat/room", "/x"];
        let (hosts, paths) = (HOSTS, PATHS);
        let spec = (
            prop::collection::vec(0..hosts.len(), 0..3),
            0..paths.len(),
            any::<bool>(),
        );
        proptest!(|(specs in prop::collection::vec(spec, 0..12),
                    host in prop::sample::select(&["a.example.com", "B.example.com:80", "x.b.example.com", "example.com", "c.test", "other"][..]),
                    path in prop::sample::select(&PATHS[..]))| {
            let routes: Vec<Route> = specs
                .iter()
                .enumerate()
                .map(|(i, (hs, p, exact))| {
                    let hs: Vec<&str> = hs.iter().map(|h| hosts[*h]).collect();
                    let rule = if *exact {
                        PathRule::Exact(paths[*p].into())
                    } else {
                        PathRule::Prefix(paths[*p].into())
                    };
                    route(&format!("r{i}"), &hs, rule)
                })
                .collect();
            let t = RouteTable::new(routes);
            let scan = RouteTable {
                by_host: Arc::new(HostIndex {
                    exact: HashMap::new(),
                    any: (0..t.routes.len()).collect(),
                }),
                gateway_ports: Arc::default(),
                gateway_listeners: Arc::default(),
                routes: t.routes.clone(),
            };
            let name = |t: &RouteTable| t.find(host, path).map(|r| r.key.name.clone());
            prop_assert_eq!(name(&t), name(&scan));
        });
    }
}
