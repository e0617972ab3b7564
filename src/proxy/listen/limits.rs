//! Listener defences: what a connection must do before a route is chosen, and how
//! a refusal becomes visible (`wsgate_listener_rejections_total{reason}` and a
//! rate-limited warning).
//!
//! hyper 1.x enforces `header_read_timeout` by dropping the connection without a
//! word (its automatic responses cover parse errors only: 400, 414, 431), so the
//! first request's head is timed here, in an IO wrapper that answers `408 Request
//! Timeout` before it closes. Later requests on a kept-alive connection keep
//! hyper's own timer: a browser's idle keep-alive connection is closed silently,
//! as NGINX's `keepalive_timeout` does, and is not counted as an attack.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

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

    /// What hyper's error on a server connection says about the client, if anything.
    pub fn of_hyper_error(e: &hyper::Error) -> Option<Rejection> {
        // An HTTP/2 connection error wsgate's side raised (not the client's GOAWAY).
        let h2 = std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
            .find_map(|e| e.downcast_ref::<h2::Error>());
        if let Some(h2) = h2 {
            return match h2.reason() {
                _ if h2.is_remote() || h2.is_io() => None,
                Some(h2::Reason::ENHANCE_YOUR_CALM) => Some(Rejection::Http2Abuse),
                Some(h2::Reason::PROTOCOL_ERROR)
                | Some(h2::Reason::FRAME_SIZE_ERROR)
                | Some(h2::Reason::COMPRESSION_ERROR) => Some(Rejection::Malformed),
                _ => None,
            };
        }
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

/// Shared between a connection's IO wrapper and its service.
#[derive(Default)]
pub struct HeadState {
    head_done: AtomicBool,
    timed_out: AtomicBool,
}

impl HeadState {
    /// The first request's head arrived (the service was called).
    pub fn head_done(&self) {
        self.head_done.store(true, Ordering::Relaxed);
    }

    /// The wrapper answered 408 and ended the connection.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

pin_project_lite::pin_project! {
    /// A client connection whose first request head must arrive by a deadline.
    pub struct FirstHead<S> {
        #[pin]
        inner: S,
        deadline: Option<Pin<Box<Sleep>>>,
        state: Arc<HeadState>,
        // Whether to answer 408 (HTTP/1.1) or just end the connection (HTTP/2).
        answer: bool,
    }
}

impl<S> FirstHead<S> {
    /// Wraps `inner`; the deadline runs from now.
    pub fn new(inner: S, timeout: Duration, state: Arc<HeadState>) -> Self {
        FirstHead {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            state,
            answer: true,
        }
    }

    /// Ends the connection at the deadline without an HTTP/1.1 408 (an HTTP/2
    /// client would read it as a broken frame).
    pub fn silent(mut self) -> Self {
        self.answer = false;
        self
    }

    /// The connection itself (after an upgrade the tunnel needs no deadline).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for FirstHead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if let Some(deadline) = this.deadline.as_mut() {
            if this.state.head_done.load(Ordering::Relaxed) {
                *this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                *this.deadline = None;
                this.state.timed_out.store(true, Ordering::Relaxed);
                // Best effort and never waiting: a client that sent a partial
                // head has an empty receive window on our side, so these few
                // bytes fit in the socket buffer at once.
                let mut sent = if *this.answer {
                    0
                } else {
                    REQUEST_TIMEOUT.len()
                };
                while sent < REQUEST_TIMEOUT.len() {
                    match this.inner.as_mut().poll_write(cx, &REQUEST_TIMEOUT[sent..]) {
                        Poll::Ready(Ok(n)) if n > 0 => sent += n,
                        _ => break,
                    }
                }
                if *this.answer {
                    let _ = this.inner.as_mut().poll_flush(cx);
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received within --header-read-timeout",
                )));
            }
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for FirstHead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn slow_head_gets_408() {
        let (client, server) = tokio::io::duplex(1024);
        let state = Arc::new(HeadState::default());
        let mut io = FirstHead::new(server, Duration::from_millis(50), state.clone());
        let (mut cr, mut cw) = tokio::io::split(client);
        cw.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(state.timed_out());
        let mut answer = vec![0u8; REQUEST_TIMEOUT.len()];
        cr.read_exact(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 408 "));
    }

    #[tokio::test]
    async fn no_deadline_once_the_head_arrived() {
        let (mut client, server) = tokio::io::duplex(1024);
        let state = Arc::new(HeadState::default());
        let mut io = FirstHead::new(server, Duration::from_millis(20), state.clone());
        state.head_done();
        tokio::time::sleep(Duration::from_millis(40)).await;
        client.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        io.read_exact(&mut buf).await.unwrap();
        assert!(!state.timed_out());
    }
}
