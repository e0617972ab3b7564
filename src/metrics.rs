//! The Prometheus metrics of PRODUCT.md. Names and labels are an interface that
//! dashboards and alerts depend on. No label carries a connection id or a client
//! address: per-connection detail lives on `/connections`.
//!
//! Hot-path counters are resolved once per route ([`RouteMetrics`]) so a relayed
//! batch costs an atomic add, not a label lookup.

use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric wsgate exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `wsgate_connections_active{namespace,route}`
    pub connections_active: IntGaugeVec,
    /// `wsgate_connections_total{namespace,route,outcome}`
    pub connections_total: IntCounterVec,
    /// `wsgate_messages_total{namespace,route,direction}`
    pub messages_total: IntCounterVec,
    /// `wsgate_bytes_total{namespace,route,direction}`
    pub bytes_total: IntCounterVec,
    /// `wsgate_pings_sent_total{namespace,route,peer}`
    pub pings_sent_total: IntCounterVec,
    /// `wsgate_pong_timeouts_total{namespace,route,peer}`
    pub pong_timeouts_total: IntCounterVec,
    /// `wsgate_ping_rtt_seconds{namespace,route,peer}`
    pub ping_rtt_seconds: HistogramVec,
    /// `wsgate_connection_duration_seconds{namespace,route}`
    pub connection_duration_seconds: HistogramVec,
    /// `wsgate_closes_total{namespace,route,code,initiator}`
    pub closes_total: IntCounterVec,
    /// `wsgate_http_requests_total{namespace,route,code}`
    pub http_requests_total: IntCounterVec,
    /// `wsgate_config_reloads_total{result}`
    pub config_reloads_total: IntCounterVec,
    /// `wsgate_routes`
    pub routes: IntGauge,
    /// `wsgate_controller_reconciles_total{result}`
    pub controller_reconciles_total: IntCounterVec,
    /// `wsgate_controller_watch_restarts_total`
    pub controller_watch_restarts_total: IntCounter,
    /// `wsgate_controller_last_sync_timestamp_seconds`: when the controller last
    /// published a table from a complete view of the API.
    pub controller_last_sync_timestamp_seconds: Gauge,
    /// `wsgate_listener_rejections_total{reason}`: connections the listener cut
    /// before a route was chosen (`header_timeout`, `header_too_large`,
    /// `malformed`, `tls_handshake`).
    pub listener_rejections_total: IntCounterVec,
    /// `wsgate_backend_ejections_total{namespace,route}`: backends passive health
    /// took out of rotation for `failTimeout`.
    pub backend_ejections_total: IntCounterVec,
}

/// Where a tunnel's close began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// The client sent Close or went away.
    Client,
    /// The backend sent Close or went away.
    Backend,
    /// wsgate closed it (keepalive, limit, drain, shutdown).
    Proxy,
}

impl Initiator {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Backend => "backend",
            Initiator::Proxy => "proxy",
        }
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let route = &["namespace", "route"];
        let connections_active = IntGaugeVec::new(
            Opts::new("wsgate_connections_active", "Open WebSocket tunnels."),
            route,
        )
        .expect("valid metric");
        r.register(Box::new(connections_active.clone()))
            .expect("unique metric");
        let routes =
            IntGauge::new("wsgate_routes", "Routes in the live table.").expect("valid metric");
        r.register(Box::new(routes.clone())).expect("unique metric");
        let watch_restarts = IntCounter::new(
            "wsgate_controller_watch_restarts_total",
            "Kubernetes watches that ended with an error and were restarted.",
        )
        .expect("valid metric");
        r.register(Box::new(watch_restarts.clone()))
            .expect("unique metric");
        let last_sync = Gauge::new(
            "wsgate_controller_last_sync_timestamp_seconds",
            "Unix time of the last route table built from a complete view of the Kubernetes API.",
        )
        .expect("valid metric");
        r.register(Box::new(last_sync.clone()))
            .expect("unique metric");
        Metrics {
            connections_active,
            connections_total: counter(
                &r,
                "wsgate_connections_total",
                "Upgrade attempts by outcome.",
                &["namespace", "route", "outcome"],
            ),
            messages_total: counter(
                &r,
                "wsgate_messages_total",
                "WebSocket data messages relayed.",
                &["namespace", "route", "direction"],
            ),
            bytes_total: counter(
                &r,
                "wsgate_bytes_total",
                "WebSocket payload bytes relayed.",
                &["namespace", "route", "direction"],
            ),
            pings_sent_total: counter(
                &r,
                "wsgate_pings_sent_total",
                "Keepalive pings sent by the proxy.",
                &["namespace", "route", "peer"],
            ),
            pong_timeouts_total: counter(
                &r,
                "wsgate_pong_timeouts_total",
                "Legs found dead: nothing arrived within the keepalive timeout after a proxy ping.",
                &["namespace", "route", "peer"],
            ),
            ping_rtt_seconds: histogram(
                &r,
                "wsgate_ping_rtt_seconds",
                "Round trip of proxy pings.",
                &["namespace", "route", "peer"],
                exponential_buckets(0.0005, 2.0, 16).expect("valid buckets"),
            ),
            connection_duration_seconds: histogram(
                &r,
                "wsgate_connection_duration_seconds",
                "Lifetime of closed tunnels.",
                route,
                exponential_buckets(0.1, 4.0, 12).expect("valid buckets"),
            ),
            closes_total: counter(
                &r,
                "wsgate_closes_total",
                "Closed tunnels by close code and by who closed first.",
                &["namespace", "route", "code", "initiator"],
            ),
            http_requests_total: counter(
                &r,
                "wsgate_http_requests_total",
                "Plain HTTP requests proxied, by response status.",
                &["namespace", "route", "code"],
            ),
            config_reloads_total: counter(
                &r,
                "wsgate_config_reloads_total",
                "Route table reloads by result.",
                &["result"],
            ),
            routes,
            controller_reconciles_total: counter(
                &r,
                "wsgate_controller_reconciles_total",
                "Controller reconciliations by result.",
                &["result"],
            ),
            controller_watch_restarts_total: watch_restarts,
            controller_last_sync_timestamp_seconds: last_sync,
            listener_rejections_total: counter(
                &r,
                "wsgate_listener_rejections_total",
                "Client connections cut before a route was chosen, by reason.",
                &["reason"],
            ),
            backend_ejections_total: counter(
                &r,
                "wsgate_backend_ejections_total",
                "Backends skipped for failTimeout after maxFails failed connects in a row.",
                &["namespace", "route"],
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }

    /// Resolves the hot-path handles of one route.
    pub fn route(&self, namespace: &str, route: &str) -> RouteMetrics {
        fn l<'a>(ns: &'a str, r: &'a str, x: &'a str) -> [&'a str; 3] {
            [ns, r, x]
        }
        RouteMetrics {
            namespace: namespace.to_owned(),
            route: route.to_owned(),
            active: self
                .connections_active
                .with_label_values(&[namespace, route]),
            messages_c2b: self.messages_total.with_label_values(&l(
                namespace,
                route,
                "client_to_backend",
            )),
            messages_b2c: self.messages_total.with_label_values(&l(
                namespace,
                route,
                "backend_to_client",
            )),
            bytes_c2b: self.bytes_total.with_label_values(&l(
                namespace,
                route,
                "client_to_backend",
            )),
            bytes_b2c: self.bytes_total.with_label_values(&l(
                namespace,
                route,
                "backend_to_client",
            )),
            pings_client: self
                .pings_sent_total
                .with_label_values(&l(namespace, route, "client")),
            pings_backend: self
                .pings_sent_total
                .with_label_values(&l(namespace, route, "backend")),
            pong_timeouts_client: self
                .pong_timeouts_total
                .with_label_values(&l(namespace, route, "client")),
            pong_timeouts_backend: self
                .pong_timeouts_total
                .with_label_values(&l(namespace, route, "backend")),
            rtt_client: self
                .ping_rtt_seconds
                .with_label_values(&l(namespace, route, "client")),
            rtt_backend: self
                .ping_rtt_seconds
                .with_label_values(&l(namespace, route, "backend")),
            duration: self
                .connection_duration_seconds
                .with_label_values(&[namespace, route]),
            all: self.clone(),
        }
    }
}

/// One route's metric handles, resolved once.
#[derive(Clone)]
pub struct RouteMetrics {
    /// The route's namespace label.
    pub namespace: String,
    /// The route's name label.
    pub route: String,
    pub(crate) active: IntGauge,
    pub(crate) messages_c2b: IntCounter,
    pub(crate) messages_b2c: IntCounter,
    pub(crate) bytes_c2b: IntCounter,
    pub(crate) bytes_b2c: IntCounter,
    pub(crate) pings_client: IntCounter,
    pub(crate) pings_backend: IntCounter,
    pub(crate) pong_timeouts_client: IntCounter,
    pub(crate) pong_timeouts_backend: IntCounter,
    pub(crate) rtt_client: Histogram,
    pub(crate) rtt_backend: Histogram,
    pub(crate) duration: Histogram,
    all: Metrics,
}

impl RouteMetrics {
    /// Counts an upgrade attempt's outcome.
    pub fn outcome(&self, outcome: &str) {
        self.all
            .connections_total
            .with_label_values(&[&self.namespace, &self.route, outcome])
            .inc();
    }

    /// Counts a closed tunnel.
    pub fn close(&self, code: u16, initiator: Initiator) {
        let code = code.to_string();
        self.all
            .closes_total
            .with_label_values(&[&self.namespace, &self.route, &code, initiator.as_str()])
            .inc();
    }

    /// Counts a proxied plain HTTP request.
    pub fn http(&self, status: u16) {
        let code = status.to_string();
        self.all
            .http_requests_total
            .with_label_values(&[&self.namespace, &self.route, &code])
            .inc();
    }

    /// Counts a backend ejected by passive health.
    pub fn ejected(&self) {
        self.all
            .backend_ejections_total
            .with_label_values(&[&self.namespace, &self.route])
            .inc();
    }
}
