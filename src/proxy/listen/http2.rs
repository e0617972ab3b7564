//! The listener's own HTTP/2 server, on the `h2` crate: every stream of a client's
//! HTTP/2 connection (`h2` over TLS, prior knowledge in cleartext) is read here.
//!
//! An extended CONNECT (RFC 8441) that opens a tunnel hands h2's two halves of its
//! stream straight to the relay ([`H2Leg`]): a relayed message goes from the relay
//! into h2's send buffer and out with the connection's next write, with no task or
//! channel between (hyper's server put a task per stream and a channel hop on
//! every write there). Plain requests (Socket.IO and SockJS polling, the page
//! itself) stream their bodies both ways with h2's flow control, as hyper did.
//!
//! Kept from hyper's server: the abuse limits (concurrent streams, header list
//! size, resets before accept and after errors), the windows, the send buffer, a
//! keep-alive PING on every connection, GOAWAY and a drain at shutdown, the
//! `Date` header, and the connection-specific headers HTTP/2 forbids left out.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::{Connection, SendResponse};
use h2::{Ping, RecvStream, SendStream};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::limits::HeadLimits;
use super::{Http2Settings, Origin};
use crate::proxy::first_head::HeadState;
use crate::proxy::response::{boxed, Body, BoxError};
use crate::proxy::stream::{H2Leg, Stream};

/// Each stream's receive window. A tunnel whose backend reads slowly holds at most
/// this much of its client's data in wsgate; the client's other streams go on.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window: sixteen stalled streams' worth, so a few slow
/// tunnels never stall the rest of a connection.
const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;
/// Streams a client may reset before wsgate accepted them (rapid reset,
/// CVE-2023-44487); h2's default, stated so it does not drift.
const MAX_PENDING_RESETS: usize = 20;
/// Streams wsgate may reset for a client's errors before it ends the connection.
const MAX_LOCAL_RESETS: usize = 256;
/// HTTP/2 PING on every connection, and how long its answer may take: finds dead
/// clients that hold no tunnel (tunnels have their own WebSocket pings).
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(20));

/// How an HTTP/2 connection ended, when not cleanly.
#[derive(Debug)]
pub(super) enum Ended {
    /// h2 ended it: the client broke the protocol, went away, or hit a limit.
    H2(h2::Error),
    /// The client did not answer a keep-alive PING in time.
    KeepAlive,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::H2(e) => e.fmt(f),
            Ended::KeepAlive => write!(
                f,
                "no answer to an HTTP/2 PING within {}s",
                KEEPALIVE.1.as_secs()
            ),
        }
    }
}

/// Serves an HTTP/2 connection until the client leaves or, after shutdown began,
/// its open streams end: GOAWAY first, then the tunnels get Close 1001 from the
/// drain like any other.
pub(super) async fn serve<T>(
    origin: Arc<Origin>,
    io: T,
    settings: Http2Settings,
    limits: HeadLimits,
    head: Arc<HeadState>,
) -> Result<(), Ended>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut builder = h2::server::Builder::new();
    builder
        .enable_connect_protocol()
        .max_concurrent_streams(settings.max_concurrent_streams)
        // Also bounds CONTINUATION frames: h2 ends a connection whose header block
        // runs past this (GOAWAY ENHANCE_YOUR_CALM).
        .max_header_list_size(u32::try_from(limits.max_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(settings.stream_send_buffer);
    let mut conn: Connection<T, Bytes> = builder.handshake(io).await.map_err(Ended::H2)?;
    let mut pings = conn.ping_pong().expect("taken once, here");
    // When the next PING is due, or when the outstanding one's answer is late.
    let mut ping_sent = false;
    let mut next = Instant::now() + KEEPALIVE.0;
    let mut stop = origin.proxy.shutdown_signal();
    let mut stopping = false;
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    head.head_done();
                    tokio::spawn(stream(origin.clone(), req, respond));
                }
                Some(Err(e)) => return Err(Ended::H2(e)),
                None => return Ok(()),
            },
            pong = poll_fn(|cx| pings.poll_pong(cx)), if ping_sent => {
                pong.map_err(Ended::H2)?;
                ping_sent = false;
                next = Instant::now() + KEEPALIVE.0;
            }
            () = tokio::time::sleep_until(next) => {
                if ping_sent {
                    return Err(Ended::KeepAlive);
                }
                pings.send_ping(Ping::opaque()).map_err(Ended::H2)?;
                ping_sent = true;
                next = Instant::now() + KEEPALIVE.1;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
        }
    }
}

/// One stream: a WebSocket's extended CONNECT, or a plain request.
async fn stream(origin: Arc<Origin>, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (parts, recv) = req.into_parts();
    let extended =
        parts.method == Method::CONNECT && parts.extensions.get::<h2::ext::Protocol>().is_some();
    if extended {
        let answer = origin.upgrade(Request::from_parts(parts, ()));
        let Some((resp, opening)) = unless_reset(&mut respond, answer).await else {
            return;
        };
        match opening {
            Some(opening) => {
                let (mut head, _) = resp.into_parts();
                h2_headers(&mut head.headers);
                // RFC 8441: the 2xx opens the stream; it has no body of its own.
                head.headers.remove(CONTENT_LENGTH);
                match respond.send_response(Response::from_parts(head, ()), false) {
                    Ok(send) => {
                        let leg = H2Leg::new(send, recv);
                        opening.open(Stream::H2(Box::new(leg)), Vec::new()).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "HTTP/2 stream gone before its 200"),
                }
            }
            _ => send(respond, resp).await,
        }
        return;
    }
    let body = boxed(RequestBody::new(recv, &parts.headers));
    let answer = origin.plain(Request::from_parts(parts, body));
    if let Some(resp) = unless_reset(&mut respond, answer).await {
        send(respond, resp).await;
    }
}

/// Awaits `answer` unless the client resets the stream first (it gave up: the
/// request's work stops, as it does when an HTTP/1.1 client closes).
async fn unless_reset<F: std::future::Future>(
    respond: &mut SendResponse<Bytes>,
    answer: F,
) -> Option<F::Output> {
    tokio::select! {
        out = answer => Some(out),
        reason = poll_fn(|cx| respond.poll_reset(cx)) => {
            tracing::debug!(reason = ?reason, "HTTP/2 stream reset before its answer");
            None
        }
    }
}

/// Sends a response and streams its body, within the stream's flow control.
async fn send(mut respond: SendResponse<Bytes>, resp: Response<Body>) {
    let (mut head, body) = resp.into_parts();
    h2_headers(&mut head.headers);
    let end = body.is_end_stream();
    if !end && !head.headers.contains_key(CONTENT_LENGTH) {
        if let Some(n) = body.size_hint().exact() {
            head.headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(tx) if !end => {
            if let Err(e) = pipe(body, tx).await {
                tracing::debug!(error = %e, "HTTP/2 response body not sent whole");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "HTTP/2 response not sent"),
    }
}

/// Streams `body` into `tx`: a chunk is handed over once the stream has some
/// capacity (h2 queues the rest of it), so a client that reads slowly holds back
/// the backend instead of filling wsgate's memory. A reset ends it.
async fn pipe(mut body: Body, mut tx: SendStream<Bytes>) -> Result<(), BoxError> {
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(reason) = tx.poll_reset(cx) {
                return Poll::Ready(Err(reset(reason)));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await?;
        let frame = match frame {
            None => return Ok(tx.send_data(Bytes::new(), true)?),
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tx.send_reset(h2::Reason::INTERNAL_ERROR);
                return Err(e);
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    tx.reserve_capacity(0);
                    return Ok(tx.send_trailers(trailers)?);
                }
                continue;
            }
        };
        let end = body.is_end_stream();
        if !data.is_empty() {
            // Capacity is asked for only with a chunk in hand (hyper#4003).
            tx.reserve_capacity(1);
            poll_fn(|cx| loop {
                if let Poll::Ready(reason) = tx.poll_reset(cx) {
                    return Poll::Ready(Err(reset(reason)));
                }
                if tx.capacity() > 0 {
                    return Poll::Ready(Ok(()));
                }
                match std::task::ready!(tx.poll_capacity(cx)) {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Poll::Ready(Err(BoxError::from(e))),
                    None => return Poll::Ready(Err("HTTP/2 stream closed".into())),
                }
            })
            .await?;
        }
        if !data.is_empty() || end {
            tx.send_data(data, end)?;
        }
        if end {
            return Ok(());
        }
    }
}

fn reset(reason: Result<h2::Reason, h2::Error>) -> BoxError {
    match reason {
        Ok(reason) => format!("client reset the stream: {reason}").into(),
        Err(e) => e.into(),
    }
}

/// A response head made fit for HTTP/2: the connection-specific fields RFC 9113
/// §8.2.2 forbids are left out (a backend's HTTP/1.1 answer, or wsgate's own 426,
/// may carry them), and `Date` is added when missing.
fn h2_headers(headers: &mut HeaderMap) {
    if let Some(listed) = headers.remove(CONNECTION) {
        if let Ok(listed) = listed.to_str() {
            for name in listed.split(',') {
                headers.remove(name.trim());
            }
        }
    }
    for name in [TRANSFER_ENCODING, UPGRADE, TE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if !headers.contains_key(DATE) {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(v) = HeaderValue::from_str(&now) {
            headers.insert(DATE, v);
        }
    }
}

/// A client's request body on an HTTP/2 stream, given back to the client's window
/// as it is read.
struct RequestBody {
    recv: RecvStream,
    /// `Content-Length`, when the client sent one (h2 holds the stream to it).
    length: Option<u64>,
    data_done: bool,
}

impl RequestBody {
    fn new(recv: RecvStream, headers: &HeaderMap) -> RequestBody {
        let length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        RequestBody {
            recv,
            length,
            data_done: false,
        }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_fields_are_left_out_and_a_date_added() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        h2_headers(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(h["x-kept"], "yes");
        assert!(httpdate::parse_http_date(h[DATE].to_str().unwrap()).is_ok());
    }

    #[test]
    fn a_date_already_there_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            DATE,
            HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"),
        );
        h2_headers(&mut h);
        assert_eq!(h[DATE], "Tue, 01 Dec 2026 00:00:00 GMT");
    }
}
