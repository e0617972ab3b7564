//! Listener defences: what a connection must do before a route is chosen, and how
//! a refusal becomes visible (`wsgate_listener_rejections_total{reason}` and a
//! rate-limited warning).
//! The first request head's deadline is `crate::proxy::first_head`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// hyper refuses a read buffer below 8 KiB (it asserts), so no head limit is smaller.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Limits on a request head, applied before any route is chosen.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// The first request's head must arrive within this after the connection
    /// (or its TLS handshake) is established; later ones within this of the
    /// previous response. Too slow: 408, then close.
    pub read_timeout: Duration,
    /// Largest request head (request line and headers); larger: 431, then close.
    pub max_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            read_timeout: Duration::from_secs(10),
            max_bytes: 64 * 1024,
        }
    }
}

/// Why the listener cut a connection: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The request head did not arrive within `--header-read-timeout` (408).
    HeaderTimeout,
    /// The request head exceeded `--max-header-bytes` (431).
    HeaderTooLarge,
    /// The request did not parse as HTTP/1.1 (400).
    Malformed,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
    /// An HTTP/2 client broke one of h2's abuse limits (rapid reset, CONTINUATION
    /// flood) or flooded PING/SETTINGS frames (`h2_guard`): the connection was
    /// ended with GOAWAY `ENHANCE_YOUR_CALM`.
    Http2Abuse,
}

impl Rejection {
    const ALL: [Rejection; 5] = [
        Rejection::HeaderTimeout,
        Rejection::HeaderTooLarge,
        Rejection::Malformed,
        Rejection::TlsHandshake,
        Rejection::Http2Abuse,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::Malformed => "malformed",
            Rejection::TlsHandshake => "tls_handshake",
            Rejection::Http2Abuse => "http2_abuse",
        }
    }

    /// What an HTTP/2 connection's error says about the client, if anything: an
    /// error wsgate's side raised (not the client's GOAWAY, not a broken socket).
    pub fn of_h2_error(e: &h2::Error) -> Option<Rejection> {
        match e.reason() {
            _ if e.is_remote() || e.is_io() => None,
            Some(h2::Reason::ENHANCE_YOUR_CALM) => Some(Rejection::Http2Abuse),
            Some(h2::Reason::PROTOCOL_ERROR)
            | Some(h2::Reason::FRAME_SIZE_ERROR)
            | Some(h2::Reason::COMPRESSION_ERROR) => Some(Rejection::Malformed),
            _ => None,
        }
    }

    /// What hyper's error on an HTTP/1.1 server connection says about the client,
    /// if anything.
    pub fn of_hyper_error(e: &hyper::Error) -> Option<Rejection> {
        if e.is_parse_too_large() {
            Some(Rejection::HeaderTooLarge)
        } else if e.is_parse() {
            Some(Rejection::Malformed)
        } else {
            None
        }
    }
}

/// At most one warning per reason in this window; an attack of thousands of
/// sockets must not become thousands of log lines.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
struct Warned {
    last: Option<Instant>,
    unlogged: u64,
}

static WARNED: Mutex<[Warned; Rejection::ALL.len()]> = Mutex::new(
    [Warned {
        last: None,
        unlogged: 0,
    }; Rejection::ALL.len()],
);

/// Counts a rejection and logs a warning unless one for the same reason was
/// logged in the last 10 s; the next warning says how many went unlogged.
pub fn reject(metrics: &Metrics, reason: Rejection, client: SocketAddr, detail: &str) {
    metrics
        .listener_rejections_total
        .with_label_values(&[reason.as_str()])
        .inc();
    let i = Rejection::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or_default();
    let now = Instant::now();
    let since_last = {
        let mut all = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut all[i];
        if w.last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            w.unlogged += 1;
            return;
        }
        let n = w.unlogged;
        *w = Warned {
            last: Some(now),
            unlogged: 0,
        };
        n
    };
    tracing::warn!(
        reason = reason.as_str(),
        %client,
        detail,
        unlogged_since_last_warning = since_last,
        "listener rejected a connection (further ones for this reason are counted in wsgate_listener_rejections_total and logged at most every 10s)"
    );
}
