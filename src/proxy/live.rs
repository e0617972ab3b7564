//! The proxy's shared state, which every stage reads: the live route table (swapped
//! whole through `ArcSwap`, so readers never wait) with each route's runtime, the
//! registry of open tunnels, the timers, the metrics, the backend HTTP client and
//! the access log; and the three things done to it as a whole: [`Proxy::apply`] a
//! new table, look up [`Proxy::route_for`] a request, [`Proxy::shutdown`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::proxy::access_log::AccessLog;
use crate::proxy::backends::connect::{self, Client};
use crate::proxy::backends::rebalance;
use crate::proxy::registry::{CloseReason, Registry};
use crate::proxy::route::table::{request_host, Route, RouteKey, RouteTable};
use crate::proxy::runtime::RouteRuntime;
use crate::proxy::timers::Timers;

/// The live table: routes plus the runtime state each one keeps across reloads.
pub(crate) struct Live {
    pub table: RouteTable,
    pub runtimes: HashMap<RouteKey, Arc<RouteRuntime>>,
}

/// The proxy: the live table, the open tunnels, the metrics.
pub struct Proxy {
    live: ArcSwap<Live>,
    runtimes: Mutex<HashMap<RouteKey, Arc<RouteRuntime>>>,
    /// Open tunnels.
    pub registry: Registry,
    /// Every tunnel's deadlines (fired by [`crate::proxy::timers::drive`]).
    pub timers: Timers,
    /// Exported metrics.
    pub metrics: Metrics,
    loaded: AtomicBool,
    stopping: AtomicBool,
    shutdown: tokio::sync::watch::Sender<bool>,
    pub(crate) http_client: Client,
    /// Where refused upgrades and plain HTTP requests are logged (tunnels log
    /// through the registry).
    pub access_log: AccessLog,
    /// Makes the spans of requests and tunnels, when traces are exported.
    tracer: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracer>,
}

impl Proxy {
    /// A proxy with an empty table (not ready until the first [`Proxy::apply`])
    /// and no access log.
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Proxy::with_access_log(metrics, AccessLog::off())
    }

    /// A proxy that writes an access-log line per tunnel, refused upgrade and
    /// plain HTTP request.
    pub fn with_access_log(metrics: Metrics, access_log: AccessLog) -> Arc<Self> {
        Arc::new(Proxy {
            live: ArcSwap::from_pointee(Live {
                table: RouteTable::default(),
                runtimes: HashMap::new(),
            }),
            runtimes: Mutex::default(),
            registry: Registry::new(access_log.clone()),
            timers: Timers::new(std::time::Instant::now()),
            metrics,
            loaded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            shutdown: tokio::sync::watch::channel(false).0,
            http_client: connect::client(),
            access_log,
            tracer: std::sync::OnceLock::new(),
        })
    }

    /// Traces requests and tunnels from now on (`--otel-endpoint`); set once.
    pub fn set_tracer(&self, tracer: opentelemetry_sdk::trace::SdkTracer) {
        let _ = self.tracer.set(tracer);
    }

    /// The tracer, when traces are exported.
    pub fn tracer(&self) -> Option<&opentelemetry_sdk::trace::SdkTracer> {
        self.tracer.get()
    }

    pub(crate) fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// The route a request goes to and its runtime state: on wsgate's own
    /// listeners by `Host` and path among `WebSocketRoute`s, on a Gateway listener
    /// (`gateway_port`) among that listener's HTTPRoute rules.
    pub(crate) fn route_for<B>(
        &self,
        req: &http::Request<B>,
        gateway_port: Option<u16>,
    ) -> Option<(Arc<Route>, Arc<RouteRuntime>)> {
        let live = self.live.load();
        let route = match gateway_port {
            None => live.table.find(&request_host(req), req.uri().path())?,
            Some(port) => live.table.find_gateway(port, req)?,
        }
        .clone();
        let runtime = live.runtimes[&route.key].clone();
        Some((route, runtime))
    }

    /// The routes being served.
    pub fn table(&self) -> RouteTable {
        self.live.load().table.clone()
    }

    /// True once a table has been applied and until shutdown begins.
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }

    /// Swaps in a new table. Open tunnels are not touched, except those whose route
    /// or backend is gone: they get Close 1001 after the route's drain grace period
    /// (a tunnel whose backend comes back in time is kept); and those whose route's
    /// `clientAccess` (with `onPolicyChange: CloseDenied`) now denies their client:
    /// Close 1008 at once.
    pub fn apply(&self, table: RouteTable) {
        let mut all = self.runtimes.lock().expect("lock");
        let mut runtimes = HashMap::new();
        for r in table.routes() {
            let rt = all
                .entry(r.key.clone())
                .or_insert_with(|| {
                    Arc::new(RouteRuntime::new(
                        self.metrics.route(&r.key.namespace, &r.key.name),
                    ))
                })
                .clone();
            runtimes.insert(r.key.clone(), rt);
        }
        self.metrics.routes.set(table.routes().len() as i64);
        let now = Instant::now();
        // An HTTPRoute's rules share its key (its metrics and `/connections` name):
        // a tunnel stays while any of them still has its backend.
        let mut by_key: HashMap<&RouteKey, Vec<&Arc<Route>>> = HashMap::new();
        for r in table.routes() {
            by_key.entry(&r.key).or_default().push(r);
        }
        for t in self.registry.snapshot() {
            let now_denied = by_key.get(&t.route.key).is_some_and(|rs| {
                rs.iter().all(|r| {
                    r.client_access
                        .as_ref()
                        .is_some_and(|a| a.close_denied && !a.permits(t.client.ip))
                })
            });
            if now_denied {
                tracing::info!(tunnel = t.id, route = %t.route.key, client = %t.client, "clientAccess now denies the client; closing tunnel");
                self.registry
                    .schedule_close(&t, Some(now), CloseReason::ClientDenied);
                continue;
            }
            match by_key.get(&t.route.key) {
                None => {
                    tracing::info!(tunnel = t.id, route = %t.route.key, grace = ?t.route.drain_grace, "route removed; draining tunnel");
                    self.registry.schedule_close(
                        &t,
                        Some(now + t.route.drain_grace),
                        CloseReason::Drain,
                    );
                }
                Some(rs)
                    if !rs
                        .iter()
                        .any(|r| r.backends.iter().any(|b| b.address == t.backend)) =>
                {
                    let grace = rs[0].drain_grace;
                    tracing::info!(tunnel = t.id, route = %t.route.key, backend = %t.backend, ?grace, "backend removed; draining tunnel");
                    self.registry
                        .schedule_close(&t, Some(now + grace), CloseReason::Drain);
                }
                Some(_) => {
                    if t.close_deadline(self.registry.epoch()).is_some()
                        && t.close_reason() == CloseReason::Drain
                    {
                        self.registry.schedule_close(&t, None, CloseReason::Drain);
                    }
                }
            }
        }
        rebalance::on_table_change(&self.registry, &self.live.load().table, &table);
        self.live.store(Arc::new(Live { table, runtimes }));
        self.loaded.store(true, Ordering::Release);
        // Runtimes of removed routes live on in their tunnels (and in requests still
        // holding the previous table); forget idle ones and their series, after the
        // swap so the previous table no longer counts as a holder.
        let live = self.live.load();
        let mut gone = HashSet::new();
        all.retain(|k, rt| {
            let keep = live.runtimes.contains_key(k) || Arc::strong_count(rt) > 1;
            if !keep {
                gone.insert((k.namespace.clone(), k.name.clone()));
            }
            keep
        });
        drop(all);
        self.metrics.forget_routes(&gone);
    }

    /// A receiver that turns true when shutdown begins.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Graceful stop: `/readyz` turns 503, listeners stop accepting, and every
    /// tunnel gets Close 1001 at a point spread over `drain` so clients do not all
    /// reconnect at once. Returns when the last tunnel closed (or `drain` + 5 s).
    pub async fn shutdown(&self, drain: Duration) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
        let tunnels = self.registry.snapshot();
        let n = tunnels.len();
        tracing::info!(tunnels = n, drain = ?drain, "shutting down: draining tunnels");
        let start = Instant::now();
        for (i, t) in tunnels.iter().enumerate() {
            // The i-th tunnel closes at (i+1)/n of the window, the last one at its end.
            let at = start + drain.mul_f64((i + 1) as f64 / n.max(1) as f64);
            self.registry
                .schedule_close(t, Some(at), CloseReason::Shutdown);
        }
        let limit = start + drain + Duration::from_secs(5);
        while !self.registry.is_empty() && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(left = self.registry.len(), "shutdown complete");
    }
}
