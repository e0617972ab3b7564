//! The Prometheus metrics of PRODUCT.md. Names and labels are an interface that
//! dashboards and alerts depend on. No label carries a connection id or a client
//! address: per-connection detail lives on `/connections`.
//!
//! # Per-route series: created on first use
//!
//! A route that never sees traffic exports nothing (PRODUCT.md: "a route's series
//! appear when it first sees traffic"), so 5,000 configured routes do not cost
//! 5,000 × every label combination × every histogram bucket. [`Metrics`] holds the
//! families; [`RouteMetrics`] (in `metrics/route.rs`) is one route's view of them,
//! kept in the proxy's `RouteRuntime` across reloads. Two patterns, pick by label:
//!
//! - **Fixed labels, hot path** (messages, bytes, pings, RTT, duration): a
//!   `OnceLock` cell per series in [`RouteMetrics`] and an accessor that resolves
//!   it the first time (`self.cell(&self.x, &self.all.family, &[extra])`). After
//!   that a relayed batch costs one atomic load and one atomic add.
//! - **Open-ended but bounded label** (outcome, close code, HTTP status, and the
//!   additions `wsgate_auth_total{result}`, `wsgate_rate_limited_total{action}`,
//!   `wsgate_rebalanced_total`, `wsgate_backend_ejections_total`): a method on
//!   [`RouteMetrics`] calling `self.all.family.with_label_values(&[&self.namespace,
//!   &self.route, value])`; the series appears with its first increment.
//!
//! A new per-route family must also be listed in [`Metrics::forget_routes`], which
//! drops the series of routes that left the table once their last tunnel is gone,
//! so route churn cannot grow `/metrics` without bound. A label a peer controls
//! must be bounded before it becomes a label value (see [`close_code_label`]).
//!
//! # Histogram buckets
//!
//! Each bucket is a series per route and peer, so there are few, each placed where
//! an operator draws a conclusion; see [`PING_RTT_BUCKETS`] and
//! [`CONNECTION_DURATION_BUCKETS`].

mod route;

use std::collections::{HashMap, HashSet};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub use route::{close_code_label, RouteMetrics};

/// `wsgate_ping_rtt_seconds` boundaries: the round trip of a proxy ping, which is
/// the network's RTT plus the time the peer's event loop takes to answer.
pub const PING_RTT_BUCKETS: &[f64] = &[
    0.001, // same node or pod network: anything above is not loopback-fast
    0.005, // same zone / data centre
    0.025, // cross-zone, same region; a good fixed line
    0.1,   // another continent or a good mobile network
    0.25,  // intercontinental or congested mobile: interactive apps feel it
    1.0,   // a struggling peer (busy event loop, bufferbloat, 3G)
    5.0,   // nearly dead: the default keepalive timeout is 10 s
];

/// `wsgate_connection_duration_seconds` boundaries: how long tunnels live.
pub const CONNECTION_DURATION_BUCKETS: &[f64] = &[
    1.0,     // failed in practice: refused by the app, auth, a crash loop
    10.0,    // short: reconnect loops, page bounces
    60.0,    // the 60 s idle cut of NGINX (proxy_read_timeout) and cloud LBs
    300.0,   // a short visit
    1800.0,  // a working session
    7200.0,  // long sessions; token lifetimes and maxLifetime are often 1-2 h
    86400.0, // a day: beyond this, tunnels outlive most deploys
];

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
    /// `wsgate_auth_total{namespace,route,result}`
    pub auth_total: IntCounterVec,
    /// `wsgate_rate_limited_total{namespace,route,action}`
    pub rate_limited_total: IntCounterVec,
    /// `wsgate_rebalanced_total{namespace,route}`
    pub rebalanced_total: IntCounterVec,
    /// `wsgate_listener_rejections_total{reason}`: connections the listener cut
    /// before a route was chosen (`header_timeout`, `header_too_large`,
    /// `malformed`, `tls_handshake`).
    pub listener_rejections_total: IntCounterVec,
    /// `wsgate_backend_ejections_total{namespace,route}`: backends passive health
    /// took out of rotation for `failTimeout`.
    pub backend_ejections_total: IntCounterVec,
    /// `wsgate_client_connections_active{protocol}`: client TCP connections by the
    /// protocol they speak (`http1`, `h2`); tunnels ÷ connections shows HTTP/2
    /// multiplexing.
    pub client_connections_active: IntGaugeVec,
    /// `wsgate_proxy_protocol_rejections_total{reason}`: connections closed before
    /// any HTTP byte because of the PROXY protocol (`untrusted`, `invalid`,
    /// `timeout`, `too_large`, `crc`).
    pub proxy_protocol_rejections_total: IntCounterVec,
    /// `wsgate_trace_spans_dropped_total`: spans never delivered to the
    /// collector (export queue full, or the collector down, slow or refusing).
    pub trace_spans_dropped_total: IntCounter,
    /// `wsgate_fleet_limit_rejections_total{namespace,route,scope}`: upgrades
    /// refused over a fleet-wide cap (`route`, `client_ip`, `subject`) and tunnels
    /// closed over a fleet budget (`budget`).
    pub fleet_limit_rejections_total: IntCounterVec,
    /// `wsgate_limits_store_errors_total`: limits-store calls that failed or
    /// passed their deadline.
    pub limits_store_errors_total: IntCounter,
    /// `wsgate_limits_store_mode{mode}`: 1 for the mode in force (`store`, or the
    /// fallback `local-share`, `fail-open`, `fail-closed`).
    pub limits_store_mode: IntGaugeVec,
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
        let client_connections_active = IntGaugeVec::new(
            Opts::new(
                "wsgate_client_connections_active",
                "Open client connections (TCP, after TLS) by protocol: http1 or h2.",
            ),
            &["protocol"],
        )
        .expect("valid metric");
        r.register(Box::new(client_connections_active.clone()))
            .expect("unique metric");
        for p in ["http1", "h2"] {
            client_connections_active.with_label_values(&[p]).set(0);
        }
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
        let spans_dropped = IntCounter::new(
            "wsgate_trace_spans_dropped_total",
            "Trace spans not delivered to the OTLP collector: export queue full, or the collector down, slow or refusing.",
        )
        .expect("valid metric");
        r.register(Box::new(spans_dropped.clone()))
            .expect("unique metric");
        Metrics {
            trace_spans_dropped_total: spans_dropped,
            client_connections_active,
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
                PING_RTT_BUCKETS.to_vec(),
            ),
            connection_duration_seconds: histogram(
                &r,
                "wsgate_connection_duration_seconds",
                "Lifetime of closed tunnels.",
                route,
                CONNECTION_DURATION_BUCKETS.to_vec(),
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
            auth_total: counter(
                &r,
                "wsgate_auth_total",
                "Token checks of upgrades and plain HTTP requests by result.",
                &["namespace", "route", "result"],
            ),
            rate_limited_total: counter(
                &r,
                "wsgate_rate_limited_total",
                "Tunnels closed for their rate (close) and pauses of throttled tunnels (throttle).",
                &["namespace", "route", "action"],
            ),
            rebalanced_total: counter(
                &r,
                "wsgate_rebalanced_total",
                "Tunnels closed with 1012 to move them to a less-loaded backend.",
                route,
            ),
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
            proxy_protocol_rejections_total: counter(
                &r,
                "wsgate_proxy_protocol_rejections_total",
                "Connections closed before any HTTP byte for their PROXY protocol header, by reason.",
                &["reason"],
            ),
            fleet_limit_rejections_total: counter(
                &r,
                "wsgate_fleet_limit_rejections_total",
                "Upgrades refused over a fleet-wide cap and tunnels closed over a fleet budget, by scope.",
                &["namespace", "route", "scope"],
            ),
            limits_store_errors_total: {
                let c = IntCounter::new(
                    "wsgate_limits_store_errors_total",
                    "Limits-store calls that failed or passed their deadline.",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            limits_store_mode: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "wsgate_limits_store_mode",
                        "1 for the fleet-limits mode in force: store, or the fallback (local-share, fail-open, fail-closed).",
                    ),
                    &["mode"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
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

    /// Drops every series of these `(namespace, route)` pairs: routes that left the
    /// table and whose last tunnel closed. One pass over each per-route family.
    pub fn forget_routes(&self, gone: &HashSet<(String, String)>) {
        if gone.is_empty() {
            return;
        }
        forget(&self.connections_active, gone);
        forget(&self.connections_total, gone);
        forget(&self.messages_total, gone);
        forget(&self.bytes_total, gone);
        forget(&self.pings_sent_total, gone);
        forget(&self.pong_timeouts_total, gone);
        forget(&self.ping_rtt_seconds, gone);
        forget(&self.connection_duration_seconds, gone);
        forget(&self.closes_total, gone);
        forget(&self.http_requests_total, gone);
        forget(&self.auth_total, gone);
        forget(&self.rate_limited_total, gone);
        forget(&self.rebalanced_total, gone);
        forget(&self.backend_ejections_total, gone);
        forget(&self.fleet_limit_rejections_total, gone);
    }
}

/// Removes the children of `family` whose namespace and route are in `gone`.
fn forget<T: MetricVecBuilder>(family: &MetricVec<T>, gone: &HashSet<(String, String)>) {
    for mf in family.collect() {
        for m in mf.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            let (Some(ns), Some(route)) = (labels.get("namespace"), labels.get("route")) else {
                continue;
            };
            if gone.contains(&((*ns).to_owned(), (*route).to_owned())) {
                let _ = family.remove(&labels);
            }
        }
    }
}
