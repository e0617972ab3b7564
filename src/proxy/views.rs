//! What the admin endpoints show: `/connections` (every open tunnel) and
//! `/backends` (every route's backends with their tunnels and passive health).
//! Read-only views of the registry and the live table.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::proxy::live::Proxy;
use crate::proxy::registry::{CloseReason, Registry};

/// One `/connections` entry.
#[derive(Serialize)]
pub struct TunnelView {
    id: u64,
    namespace: String,
    route: String,
    client: String,
    client_protocol: &'static str,
    backend: String,
    opened_at: String,
    age_seconds: f64,
    client_to_backend: Traffic,
    backend_to_client: Traffic,
    client_rtt_ms: Option<f64>,
    backend_rtt_ms: Option<f64>,
    draining: bool,
    /// Scheduled to be moved by the rebalancer (Close 1012 at `rebalance_at`).
    rebalancing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rebalance_at: Option<String>,
}

#[derive(Serialize)]
struct Traffic {
    messages: u64,
    bytes: u64,
}

fn rtt(us: u64) -> Option<f64> {
    (us != u64::MAX).then(|| us as f64 / 1000.0)
}

/// The `/connections` view: every open tunnel.
pub fn connections(registry: &Registry) -> Vec<TunnelView> {
    let epoch = registry.epoch();
    registry
        .snapshot()
        .iter()
        .map(|t| TunnelView {
            id: t.id,
            namespace: t.route.key.namespace.clone(),
            route: t.route.key.name.clone(),
            client: t.client.to_string(),
            client_protocol: t.client_protocol.as_str(),
            backend: t.backend.to_string(),
            opened_at: humantime::format_rfc3339_millis(t.opened_at).to_string(),
            age_seconds: t.opened.elapsed().as_secs_f64(),
            client_to_backend: Traffic {
                messages: t.c2b_messages.load(Relaxed),
                bytes: t.c2b_bytes.load(Relaxed),
            },
            backend_to_client: Traffic {
                messages: t.b2c_messages.load(Relaxed),
                bytes: t.b2c_bytes.load(Relaxed),
            },
            client_rtt_ms: rtt(t.client_rtt_us.load(Relaxed)),
            backend_rtt_ms: rtt(t.backend_rtt_us.load(Relaxed)),
            draining: t.close_deadline(epoch).is_some()
                && matches!(t.close_reason(), CloseReason::Drain | CloseReason::Shutdown),
            rebalancing: t.close_deadline(epoch).is_some()
                && t.close_reason() == CloseReason::Rebalance,
            rebalance_at: (t.close_reason() == CloseReason::Rebalance)
                .then(|| t.close_deadline(epoch))
                .flatten()
                .map(|at| {
                    let wall = SystemTime::now() + at.saturating_duration_since(Instant::now());
                    humantime::format_rfc3339_millis(wall).to_string()
                }),
        })
        .collect()
}

/// One route on `/backends`.
#[derive(Serialize)]
pub struct RouteBackends {
    namespace: String,
    route: String,
    max_fails: u32,
    fail_timeout_seconds: f64,
    backends: Vec<BackendView>,
}

#[derive(Serialize)]
struct BackendView {
    address: String,
    weight: u32,
    active_tunnels: u64,
    consecutive_failures: u32,
    ejected: bool,
    ejected_until: Option<String>,
}

/// The `/backends` view: every route's backends with their open tunnels and
/// passive-health state.
pub fn backends_view(proxy: &Proxy) -> Vec<RouteBackends> {
    let live = proxy.live();
    let (now, wall) = (Instant::now(), SystemTime::now());
    live.table
        .routes()
        .iter()
        .map(|route| {
            let runtime = live.runtimes.get(&route.key);
            let backends = route
                .backends
                .iter()
                .map(|b| {
                    let rec = runtime.and_then(|rt| rt.backends.health.get(&b.address));
                    let until = rec.and_then(|r| r.ejected_until).filter(|u| *u > now);
                    BackendView {
                        address: b.address.to_string(),
                        weight: b.weight,
                        active_tunnels: runtime.map_or(0, |rt| rt.backends.load(&b.address)),
                        consecutive_failures: rec.map_or(0, |r| r.fails),
                        ejected: until.is_some(),
                        ejected_until: until.map(|u| {
                            humantime::format_rfc3339_millis(wall + (u - now)).to_string()
                        }),
                    }
                })
                .collect();
            RouteBackends {
                namespace: route.key.namespace.clone(),
                route: route.key.name.clone(),
                max_fails: route.passive_health.max_fails,
                fail_timeout_seconds: route.passive_health.fail_timeout.as_secs_f64(),
                backends,
            }
        })
        .collect()
}
