//! Open tunnels: what `/connections` lists, what a reload drains and what shutdown
//! closes. Locked only when a tunnel opens or closes and when someone reads the list;
//! the relay updates its counters with relaxed atomics.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::task::AtomicWaker;
use serde::Serialize;

use crate::metrics::{Initiator, RouteMetrics};
use crate::proxy::access_log::{self, AccessLog, Kind, Record};
use crate::proxy::backends::health::BackendHealth;
use crate::proxy::route::table::Route;

/// A route's state that outlives reloads: open-tunnel counts for limits and
/// balancing, and its metric handles.
pub struct RouteRuntime {
    /// Metric handles of the route.
    pub metrics: RouteMetrics,
    /// Open tunnels.
    pub active: AtomicU64,
    /// Round-robin position.
    pub rr: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    per_backend: Mutex<HashMap<Arc<str>, u64>>,
    /// Passive health of the route's backends.
    pub health: BackendHealth,
}

impl RouteRuntime {
    /// State for a route with these metric handles.
    pub fn new(metrics: RouteMetrics) -> Self {
        RouteRuntime {
            metrics,
            active: AtomicU64::new(0),
            rr: AtomicU64::new(0),
            per_ip: Mutex::default(),
            per_backend: Mutex::default(),
            health: BackendHealth::default(),
        }
    }

    /// Open tunnels to a backend.
    pub fn backend_load(&self, address: &str) -> u64 {
        self.per_backend
            .lock()
            .expect("lock")
            .get(address)
            .copied()
            .unwrap_or(0)
    }

    /// Counts a tunnel in, unless a limit forbids it: `Err(503)` for the route's
    /// `maxConnections`, `Err(429)` for `maxConnectionsPerClientIP`.
    pub fn admit(self: &Arc<Self>, route: &Route, ip: IpAddr) -> Result<Admission, u16> {
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
            ip,
            backend: None,
        })
    }
}

/// One admitted tunnel's place in the counts; released on drop.
pub struct Admission {
    runtime: Arc<RouteRuntime>,
    ip: IpAddr,
    backend: Option<Arc<str>>,
}

impl Admission {
    /// The route's state this tunnel is counted in.
    pub fn runtime(&self) -> &Arc<RouteRuntime> {
        &self.runtime
    }

    /// Counts the tunnel against the backend it reached.
    pub fn set_backend(&mut self, address: &Arc<str>) {
        *self
            .runtime
            .per_backend
            .lock()
            .expect("lock")
            .entry(address.clone())
            .or_default() += 1;
        self.backend = Some(address.clone());
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.runtime.active.fetch_sub(1, Relaxed);
        self.runtime.metrics.active().dec();
        let mut per_ip = self.runtime.per_ip.lock().expect("lock");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        if let Some(b) = self.backend.take() {
            let mut per_backend = self.runtime.per_backend.lock().expect("lock");
            if let Some(n) = per_backend.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    per_backend.remove(&b);
                }
            }
        }
    }
}

/// Why a tunnel has a close deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its route or backend left the table.
    Drain,
    /// The process is shutting down.
    Shutdown,
    /// The token the tunnel was opened with expired (`auth.jwt.closeOnExpiry`).
    TokenExpired,
    /// The rebalancer moves it to a less-loaded backend.
    Rebalance,
}

impl CloseReason {
    /// The Close code and reason sent to both sides when the deadline passes
    /// (a rebalance sends 1012 to the client and 1001 to the backend instead).
    pub fn close_frame(self) -> (u16, &'static str) {
        match self {
            CloseReason::Drain => (1001, "route or backend removed"),
            CloseReason::Shutdown => (1001, "server shutting down"),
            // RFC 6455 §7.4.1: 1008, the message (here: the credentials) violates policy.
            CloseReason::TokenExpired => (1008, "token expired"),
            CloseReason::Rebalance => (1012, "moving to a less-loaded backend"),
        }
    }
}

/// What the registry knows of one open tunnel.
pub struct TunnelInfo {
    /// Process-unique id.
    pub id: u64,
    /// The route as it was when the tunnel opened.
    pub route: Arc<Route>,
    /// The client's address.
    pub client: SocketAddr,
    /// The backend's address (shared with the route table's).
    pub backend: Arc<str>,
    /// How the client reached wsgate.
    pub client_protocol: ClientProtocol,
    /// Wall-clock open time.
    pub opened_at: SystemTime,
    /// Monotonic open time.
    pub opened: Instant,
    pub(crate) c2b_messages: AtomicU64,
    pub(crate) c2b_bytes: AtomicU64,
    pub(crate) b2c_messages: AtomicU64,
    pub(crate) b2c_bytes: AtomicU64,
    /// Last client ping round trip in microseconds (`u64::MAX`: none yet).
    pub(crate) client_rtt_us: AtomicU64,
    pub(crate) backend_rtt_us: AtomicU64,
    /// Close deadline in ms since the registry's epoch (`u64::MAX`: none), one
    /// atomic so a reload can set it without locking the tunnel.
    close_at: AtomicU64,
    close_reason: AtomicU64,
    /// When the tunnel's token expires, like `close_at` (`u64::MAX`: never); every
    /// other deadline is held to it.
    expires_at: AtomicU64,
    /// Set with `close_at` changes; the relay clears it when it looks.
    pub(crate) signal: std::sync::atomic::AtomicBool,
    /// Set when a deadline the relay filed with `Timers` is due; cleared likewise.
    pub(crate) timer: std::sync::atomic::AtomicBool,
    /// The relay task, woken when `signal` is set (a waker, not a future: an idle
    /// tunnel keeps no pending future for it).
    pub(crate) waker: AtomicWaker,
}

impl TunnelInfo {
    /// The scheduled close, if any.
    pub fn close_deadline(&self, epoch: Instant) -> Option<Instant> {
        match self.close_at.load(Relaxed) {
            u64::MAX => None,
            ms => Some(epoch + Duration::from_millis(ms)),
        }
    }

    /// Why the tunnel is scheduled to close.
    pub fn close_reason(&self) -> CloseReason {
        match self.close_reason.load(Relaxed) {
            1 => CloseReason::Shutdown,
            2 => CloseReason::TokenExpired,
            3 => CloseReason::Rebalance,
            _ => CloseReason::Drain,
        }
    }
}

/// The protocol of a tunnel's client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientProtocol {
    /// An HTTP/1.1 Upgrade on a connection of its own.
    Http1,
    /// An extended CONNECT stream (RFC 8441) of an HTTP/2 connection, TLS or h2c.
    H2,
}

impl ClientProtocol {
    /// The ALPN name, as `/connections` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientProtocol::Http1 => "http/1.1",
            ClientProtocol::H2 => "h2",
        }
    }
}

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

/// All open tunnels.
pub struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    tunnels: Mutex<HashMap<u64, Arc<TunnelInfo>>>,
    /// Where a tunnel's line goes when it leaves.
    access_log: AccessLog,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(AccessLog::off())
    }
}

fn tunnel_record(t: &TunnelInfo, code: u16, initiator: Initiator) -> Record {
    let mut r = Record::new(Kind::Tunnel, t.client.to_string(), 101, "upgraded");
    r.namespace = Some(t.route.key.namespace.clone());
    r.route = Some(t.route.key.name.clone());
    r.backend = Some(t.backend.to_string());
    r.method = Some("GET".into());
    r.duration_s = (t.opened.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    r.client_to_backend = Some(access_log::Traffic {
        messages: t.c2b_messages.load(Relaxed),
        bytes: t.c2b_bytes.load(Relaxed),
    });
    r.backend_to_client = Some(access_log::Traffic {
        messages: t.b2c_messages.load(Relaxed),
        bytes: t.b2c_bytes.load(Relaxed),
    });
    r.close_code = Some(code);
    r.close_initiator = Some(initiator.as_str());
    r
}

fn rtt(us: u64) -> Option<f64> {
    (us != u64::MAX).then(|| us as f64 / 1000.0)
}

impl Registry {
    /// An empty registry that writes each closed tunnel's line to `access_log`.
    pub fn new(access_log: AccessLog) -> Self {
        Registry {
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
            tunnels: Mutex::default(),
            access_log,
        }
    }

    /// The open tunnels among `ids`.
    pub fn find(&self, ids: &[u64]) -> Vec<Arc<TunnelInfo>> {
        if ids.is_empty() {
            return Vec::new();
        }
        let tunnels = self.tunnels.lock().expect("lock");
        ids.iter()
            .filter_map(|id| tunnels.get(id).cloned())
            .collect()
    }

    /// The instant close deadlines are measured from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Registers a tunnel.
    pub fn open(
        &self,
        route: Arc<Route>,
        client: SocketAddr,
        client_protocol: ClientProtocol,
        backend: Arc<str>,
    ) -> Arc<TunnelInfo> {
        let info = Arc::new(TunnelInfo {
            id: self.next_id.fetch_add(1, Relaxed),
            route,
            client,
            client_protocol,
            backend,
            opened_at: SystemTime::now(),
            opened: Instant::now(),
            c2b_messages: AtomicU64::new(0),
            c2b_bytes: AtomicU64::new(0),
            b2c_messages: AtomicU64::new(0),
            b2c_bytes: AtomicU64::new(0),
            client_rtt_us: AtomicU64::new(u64::MAX),
            backend_rtt_us: AtomicU64::new(u64::MAX),
            close_at: AtomicU64::new(u64::MAX),
            close_reason: AtomicU64::new(0),
            expires_at: AtomicU64::new(u64::MAX),
            signal: std::sync::atomic::AtomicBool::new(false),
            timer: std::sync::atomic::AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        self.tunnels
            .lock()
            .expect("lock")
            .insert(info.id, info.clone());
        info
    }

    /// Forgets a closed tunnel and writes its access-log line: `code` is the first
    /// Close code (1006 when none was sent) and `initiator` who sent it.
    pub fn close(&self, id: u64, code: u16, initiator: Initiator) {
        let gone = self.tunnels.lock().expect("lock").remove(&id);
        if let Some(t) = gone.filter(|_| self.access_log.enabled()) {
            self.access_log.write(tunnel_record(&t, code, initiator));
        }
    }

    /// Open tunnels.
    pub fn len(&self) -> usize {
        self.tunnels.lock().expect("lock").len()
    }

    /// True when no tunnel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the open tunnels.
    pub fn snapshot(&self) -> Vec<Arc<TunnelInfo>> {
        let mut v: Vec<_> = self
            .tunnels
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// Schedules (or with `None`, cancels a drain of) a tunnel's close.
    pub fn schedule_close(&self, t: &TunnelInfo, at: Option<Instant>, reason: CloseReason) {
        if reason != CloseReason::Shutdown && t.close_reason() == CloseReason::Shutdown {
            return;
        }
        let ms = at.map_or(u64::MAX, |at| {
            at.saturating_duration_since(self.epoch).as_millis() as u64
        });
        let old = t.close_at.load(Relaxed);
        // A drain never postpones a deadline already set, so repeated reloads cannot
        // keep a tunnel of a removed backend alive forever; a rebalance never
        // schedules a tunnel that is already closing, so none is closed twice. The
        // token's expiry is not such a deadline: an earlier one may replace it.
        let expiring = t.close_reason() == CloseReason::TokenExpired;
        if reason != CloseReason::Shutdown && at.is_some() && old != u64::MAX && !expiring {
            return;
        }
        // No deadline outlives the token: a cancelled drain falls back to it.
        let expires = t.expires_at.load(Relaxed);
        let (ms, reason) = if expires <= ms {
            (expires, CloseReason::TokenExpired)
        } else {
            (ms, reason)
        };
        let code = match reason {
            CloseReason::Drain => 0,
            CloseReason::Shutdown => 1,
            CloseReason::TokenExpired => 2,
            CloseReason::Rebalance => 3,
        };
        t.close_reason.store(code, Relaxed);
        t.close_at.store(ms, Relaxed);
        if old != ms {
            t.signal.store(true, std::sync::atomic::Ordering::Release);
            t.waker.wake();
        }
    }

    /// Closes the tunnel with 1008 when its token expires at `at` (wall clock).
    pub fn expire_at(&self, t: &TunnelInfo, at: SystemTime) {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        let ms = (Instant::now() + left)
            .saturating_duration_since(self.epoch)
            .as_millis() as u64;
        t.expires_at.store(ms, Relaxed);
        if ms < t.close_at.load(Relaxed) {
            t.close_reason.store(2, Relaxed);
            t.close_at.store(ms, Relaxed);
            t.signal.store(true, std::sync::atomic::Ordering::Release);
            t.waker.wake();
        }
    }

    /// The `/connections` view.
    pub fn views(&self) -> Vec<TunnelView> {
        self.snapshot()
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
                draining: t.close_at.load(Relaxed) != u64::MAX
                    && matches!(t.close_reason(), CloseReason::Drain | CloseReason::Shutdown),
                rebalancing: t.close_at.load(Relaxed) != u64::MAX
                    && t.close_reason() == CloseReason::Rebalance,
                rebalance_at: (t.close_reason() == CloseReason::Rebalance)
                    .then(|| t.close_deadline(self.epoch))
                    .flatten()
                    .map(|at| {
                        let wall = SystemTime::now() + at.saturating_duration_since(Instant::now());
                        humantime::format_rfc3339_millis(wall).to_string()
                    }),
            })
            .collect()
    }
}
