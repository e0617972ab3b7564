//! Open tunnels: what `/connections` lists, what a reload drains and what shutdown
//! closes. Locked only when a tunnel opens or closes and when someone reads the list;
//! the relay updates its counters with relaxed atomics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::task::AtomicWaker;
use opentelemetry::trace::{Span as _, Status};
use opentelemetry::KeyValue;

use crate::metrics::Initiator;
use crate::proxy::access_log::{self, AccessLog, Kind, Record};
use crate::proxy::client::ClientAddr;
use crate::proxy::route::table::Route;

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
    /// Its route's `clientAccess` changed and now denies its client.
    ClientDenied,
}

impl CloseReason {
    /// Its name as `wsgate.close.reason` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Drain => "drain",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Rebalance => "rebalance",
            CloseReason::ClientDenied => "client_denied",
        }
    }

    /// The Close code and reason sent to both sides when the deadline passes
    /// (a rebalance sends 1012 to the client and 1001 to the backend instead).
    pub fn close_frame(self) -> (u16, &'static str) {
        match self {
            CloseReason::Drain => (1001, "route or backend removed"),
            CloseReason::Shutdown => (1001, "server shutting down"),
            // RFC 6455 §7.4.1: 1008, the message (here: the credentials) violates policy.
            CloseReason::TokenExpired => (1008, "token expired"),
            CloseReason::Rebalance => (1012, "moving to a less-loaded backend"),
            // 1008 to the client (RFC 6455 §7.4.1, a policy); the backend gets 1001.
            CloseReason::ClientDenied => (1008, "client address no longer allowed"),
        }
    }
}

/// How a tunnel's end began: the first Close (or loss) decides, as it decides the
/// close code and initiator. `wsgate.close.reason` on the tunnel's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelEnd {
    /// A peer sent Close (the initiator says which).
    Closed,
    /// A peer's connection ended without a Close (1006).
    Gone,
    /// No data message either way for `timeouts.idle`.
    Idle,
    /// `timeouts.maxLifetime` passed.
    MaxLifetime,
    /// A peer did not answer keepalive pings.
    Keepalive,
    /// The client went over `limits` (rate) with `onExceed: Close`.
    RateLimit,
    /// The client went over its fleet-wide message budget (`fleetLimits`).
    Budget,
    /// A peer broke RFC 6455 or sent a message over `maxMessageBytes`
    /// (`backend`: the backend did).
    ProtocolError {
        /// The backend was at fault (the span is an Error).
        backend: bool,
    },
    /// A deadline of the registry: drain, shutdown, token expiry, rebalance, a
    /// revoked `clientAccess`.
    Scheduled(CloseReason),
}

impl TunnelEnd {
    /// The `wsgate.close.reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::Gone => "gone",
            TunnelEnd::Idle => "idle",
            TunnelEnd::MaxLifetime => "max_lifetime",
            TunnelEnd::Keepalive => "keepalive_timeout",
            TunnelEnd::RateLimit => "rate_limit",
            TunnelEnd::Budget => "message_budget",
            TunnelEnd::ProtocolError { .. } => "protocol_error",
            TunnelEnd::Scheduled(r) => r.as_str(),
        }
    }

    fn code(self) -> u8 {
        match self {
            TunnelEnd::Closed => 1,
            TunnelEnd::Gone => 2,
            TunnelEnd::Idle => 3,
            TunnelEnd::MaxLifetime => 4,
            TunnelEnd::Keepalive => 5,
            TunnelEnd::RateLimit => 6,
            TunnelEnd::Budget => 14,
            TunnelEnd::ProtocolError { backend: false } => 7,
            TunnelEnd::ProtocolError { backend: true } => 13,
            TunnelEnd::Scheduled(CloseReason::Drain) => 8,
            TunnelEnd::Scheduled(CloseReason::Shutdown) => 9,
            TunnelEnd::Scheduled(CloseReason::TokenExpired) => 10,
            TunnelEnd::Scheduled(CloseReason::Rebalance) => 11,
            TunnelEnd::Scheduled(CloseReason::ClientDenied) => 12,
        }
    }

    fn of_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => TunnelEnd::Closed,
            2 => TunnelEnd::Gone,
            3 => TunnelEnd::Idle,
            4 => TunnelEnd::MaxLifetime,
            5 => TunnelEnd::Keepalive,
            6 => TunnelEnd::RateLimit,
            14 => TunnelEnd::Budget,
            7 => TunnelEnd::ProtocolError { backend: false },
            13 => TunnelEnd::ProtocolError { backend: true },
            8 => TunnelEnd::Scheduled(CloseReason::Drain),
            9 => TunnelEnd::Scheduled(CloseReason::Shutdown),
            10 => TunnelEnd::Scheduled(CloseReason::TokenExpired),
            11 => TunnelEnd::Scheduled(CloseReason::Rebalance),
            12 => TunnelEnd::Scheduled(CloseReason::ClientDenied),
            _ => return None,
        })
    }
}

/// What the registry knows of one open tunnel.
pub struct TunnelInfo {
    /// Process-unique id.
    pub id: u64,
    /// The route as it was when the tunnel opened.
    pub route: Arc<Route>,
    /// The effective client address (and the connection it came on).
    pub client: ClientAddr,
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
    /// [`TunnelEnd`] once the tunnel began to close (0: still open).
    end: AtomicU8,
    /// The tunnel's span, when its trace is recorded.
    trace: Option<Box<TunnelSpan>>,
}

impl TunnelInfo {
    /// The scheduled close, if any.
    pub fn close_deadline(&self, epoch: Instant) -> Option<Instant> {
        match self.close_at.load(Relaxed) {
            u64::MAX => None,
            ms => Some(epoch + Duration::from_millis(ms)),
        }
    }

    /// Records how the tunnel's end began; the first call wins (like the first
    /// Close's code). `code` is the Close code sent or received first.
    pub(crate) fn closing(&self, why: TunnelEnd, code: u16) {
        if self
            .end
            .compare_exchange(0, why.code(), Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        let Some(span) = &self.trace else { return };
        let reason = KeyValue::new("wsgate.close.reason", why.as_str());
        match why {
            TunnelEnd::RateLimit => span.event(
                "wsgate.limit_exceeded",
                vec![KeyValue::new("wsgate.limit", "rate"), reason.clone()],
            ),
            TunnelEnd::Budget => span.event(
                "wsgate.limit_exceeded",
                vec![
                    KeyValue::new("wsgate.limit", "fleet_budget"),
                    reason.clone(),
                ],
            ),
            TunnelEnd::Scheduled(CloseReason::ClientDenied) => span.event(
                "wsgate.policy_revoked",
                vec![KeyValue::new("wsgate.policy", "clientAccess")],
            ),
            _ => {}
        }
        span.event(
            "websocket.close",
            vec![
                KeyValue::new("websocket.close.code", i64::from(code)),
                reason,
            ],
        );
    }

    /// How the tunnel's end began, once it did.
    pub fn end(&self) -> Option<TunnelEnd> {
        TunnelEnd::of_code(self.end.load(Relaxed))
    }

    /// Why the tunnel is scheduled to close.
    pub fn close_reason(&self) -> CloseReason {
        match self.close_reason.load(Relaxed) {
            1 => CloseReason::Shutdown,
            2 => CloseReason::TokenExpired,
            3 => CloseReason::Rebalance,
            4 => CloseReason::ClientDenied,
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
    let mut r = Record::new(Kind::Tunnel, &t.client, 101, "upgraded");
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

/// An open tunnel's span, held by its registry entry (recorded traces only).
pub struct TunnelSpan(Mutex<opentelemetry_sdk::trace::Span>);

impl TunnelSpan {
    /// Holds a started span (`proxy/trace.rs` makes it).
    pub fn new(span: opentelemetry_sdk::trace::Span) -> Self {
        TunnelSpan(Mutex::new(span))
    }

    /// A rare event of the tunnel (a close beginning, a limit, a revoked policy):
    /// a handful per tunnel, never one per message.
    pub fn event(&self, name: &'static str, attrs: Vec<KeyValue>) {
        if let Ok(mut s) = self.0.lock() {
            s.add_event(name, attrs);
        }
    }

    /// Ends the span with what the registry knows of the tunnel.
    pub fn end(&self, attrs: Vec<KeyValue>, error: Option<&'static str>) {
        if let Ok(mut s) = self.0.lock() {
            s.set_attributes(attrs);
            if let Some(why) = error {
                s.set_status(Status::error(why));
            }
            s.end_with_timestamp(SystemTime::now());
        }
    }
}

/// Ends a tunnel's span: how it closed, and its counters read once.
fn end_span(t: &TunnelInfo, span: &TunnelSpan, code: u16, initiator: Initiator) {
    let end = t.end().unwrap_or(if code == 1006 {
        TunnelEnd::Gone
    } else {
        TunnelEnd::Closed
    });
    let n = |a: &AtomicU64| a.load(Relaxed) as i64;
    let attrs = vec![
        KeyValue::new("wsgate.close.code", i64::from(code)),
        KeyValue::new("wsgate.close.initiator", initiator.as_str()),
        KeyValue::new("wsgate.close.reason", end.as_str()),
        KeyValue::new("wsgate.client_to_backend.messages", n(&t.c2b_messages)),
        KeyValue::new("wsgate.client_to_backend.bytes", n(&t.c2b_bytes)),
        KeyValue::new("wsgate.backend_to_client.messages", n(&t.b2c_messages)),
        KeyValue::new("wsgate.backend_to_client.bytes", n(&t.b2c_bytes)),
        KeyValue::new("wsgate.backend", t.backend.to_string()),
        KeyValue::new("network.protocol.name", "websocket"),
    ];
    // A normal close, a client leaving and wsgate's own closes are no errors; the
    // backend vanishing or breaking the protocol is.
    let error = match (end, initiator) {
        (TunnelEnd::Gone, Initiator::Backend) => Some("backend connection lost"),
        (TunnelEnd::ProtocolError { backend: true }, _) => {
            Some("backend broke the WebSocket protocol")
        }
        _ => None,
    };
    span.end(attrs, error);
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
        client: ClientAddr,
        client_protocol: ClientProtocol,
        backend: Arc<str>,
        trace: Option<TunnelSpan>,
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
            end: AtomicU8::new(0),
            trace: trace.map(Box::new),
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
        let Some(t) = gone else { return };
        if let Some(span) = &t.trace {
            end_span(&t, span, code, initiator);
        }
        if self.access_log.enabled() {
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
        // A denied client goes now whatever was planned (it is never later).
        let denied = reason == CloseReason::ClientDenied;
        if reason != CloseReason::Shutdown
            && at.is_some()
            && old != u64::MAX
            && !expiring
            && !denied
        {
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
            CloseReason::ClientDenied => 4,
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
        // A token's `exp` is whatever its signer wrote: past a century it is
        // "never" (every deadline stays far inside what an `Instant` holds).
        if left > Duration::from_secs(100 * 365 * 86_400) {
            return;
        }
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
}

#[cfg(test)]
mod tests {
    use super::{CloseReason, TunnelEnd};

    #[test]
    fn every_tunnel_end_survives_its_atomic_code() {
        let mut all = vec![
            TunnelEnd::Closed,
            TunnelEnd::Gone,
            TunnelEnd::Idle,
            TunnelEnd::MaxLifetime,
            TunnelEnd::Keepalive,
            TunnelEnd::RateLimit,
            TunnelEnd::Budget,
            TunnelEnd::ProtocolError { backend: false },
            TunnelEnd::ProtocolError { backend: true },
        ];
        for r in [
            CloseReason::Drain,
            CloseReason::Shutdown,
            CloseReason::TokenExpired,
            CloseReason::Rebalance,
            CloseReason::ClientDenied,
        ] {
            all.push(TunnelEnd::Scheduled(r));
        }
        for e in all {
            assert_ne!(e.code(), 0, "0 means still open");
            assert_eq!(TunnelEnd::of_code(e.code()), Some(e));
        }
        assert_eq!(TunnelEnd::of_code(0), None);
    }
}
