//! The listener's own HTTP/1.1 path for the request that opens nearly every
//! WebSocket connection: the first request head is read and parsed here (httparse,
//! the parser hyper uses) and, when it is a WebSocket upgrade, answered here and the
//! connection handed to the tunnel, without hyper's server. That saves what a
//! tunnel never uses: hyper's connection state, buffers, request and response
//! types, its upgrade channel and the task that waited on it.
//!
//! Anything else is hyper's, with the bytes already read put back in front of the
//! socket ([`Rewind`]): plain HTTP, a head that is incomplete at the deadline (hyper
//! answers 408), too large (431), malformed (400), a request with a body, HTTP/1.0,
//! and every request after the first on a kept-alive connection. So every answer
//! hyper gives to a bad head stays hyper's, and what a handshake means is decided
//! in one place for both paths, [`crate::proxy::handshake::websocket`].

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::limits::{HeadLimits, MIN_HEADER_BYTES};
use super::{hyper_service, Origin};
use crate::proxy::first_head::{FirstHead, HeadState, Rewind};
use crate::proxy::handshake::headers::{has_token, is_websocket_upgrade, parsed_fields};
use crate::proxy::response::Body;
use crate::proxy::stream::Stream;

/// hyper's limit on request header fields, kept so both paths refuse alike.
const MAX_HEADERS: usize = 100;

/// The first read's buffer: a browser's upgrade request with its cookies fits.
const FIRST_READ: usize = 4096;

/// Serves an HTTP/1.1 connection (plain or TLS): the first request here when it is
/// a WebSocket upgrade, everything else with hyper.
pub(super) async fn serve(
    origin: Arc<Origin>,
    mut stream: Stream,
    limits: HeadLimits,
    head_by: Instant,
    head: Arc<HeadState>,
) -> Result<(), hyper::Error> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let read = tokio::time::timeout_at(
        head_by.into(),
        read_upgrade(&mut stream, &mut buf, limits.max_bytes),
    );
    let upgrade = match read.await {
        Ok(Ok(upgrade)) => upgrade,
        // The client is gone (reset): nothing to answer.
        Ok(Err(e)) => {
            tracing::debug!(client = %origin.conn.peer, error = %e, "connection ended before a request");
            return Ok(());
        }
        // hyper answers 408 at once: `FirstHead`'s deadline has passed.
        Err(_) => None,
    };
    if let Some(req) = upgrade {
        head.head_done();
        let close = has_token(req.headers(), &CONNECTION, "close");
        let (resp, opening) = origin.upgrade(req).await;
        if let Some(opening) = opening {
            // A 101: the connection is the tunnel's from here. The read buffer is
            // freed before the tunnel's long-lived allocations are made.
            let early = buf.to_vec();
            drop(buf);
            if write_response(&mut stream, resp).await.is_ok() {
                opening.open(stream, early).await;
            }
            return Ok(());
        }
        if write_response(&mut stream, resp).await.is_err() || close {
            stream.shutdown().await;
            return Ok(());
        }
    }
    // hyper's own timer covers the heads of later requests on a kept-alive
    // connection; the first one is timed by `FirstHead`, which answers 408.
    let io = FirstHead::new(
        Rewind::new(buf.freeze(), stream),
        head_by.saturating_duration_since(Instant::now()),
        head.clone(),
    );
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        // `max_buf_size` alone is no limit: a head that arrives in one read is
        // parsed before the buffer size is checked (a 100 KiB header got through).
        .max_header_size(limits.max_bytes)
        .max_buf_size(limits.max_bytes.max(MIN_HEADER_BYTES))
        .serve_connection(TokioIo::new(io), hyper_service(origin, head))
        .with_upgrades()
        .await
}

/// Reads until the first request head is complete: `Some` when it is a WebSocket
/// upgrade this path answers (and `buf` keeps what followed the head), `None` when
/// it is hyper's (`buf` keeps every byte read).
async fn read_upgrade(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max_bytes: usize,
) -> io::Result<Option<Request<()>>> {
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len());
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
        match parse(buf, max_bytes) {
            Parsed::Partial if buf.len() <= max_bytes => continue,
            Parsed::Partial | Parsed::Other => return Ok(None),
            Parsed::Upgrade(req) => return Ok(Some(req)),
        }
    }
}

// A value on the stack for one parse: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// More bytes are needed.
    Partial,
    /// Not an upgrade this path answers: hyper's.
    Other,
    Upgrade(Request<()>),
}

/// Parses a first request head. A WebSocket upgrade (`GET`, HTTP/1.1, no body, at
/// most `max_bytes` and [`MAX_HEADERS`] fields) is split off the front of `buf`.
fn parse(buf: &mut BytesMut, max_bytes: usize) -> Parsed {
    let len = {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        if len > max_bytes || req.method != Some("GET") || req.version != Some(1) {
            return Parsed::Other;
        }
        len
    };
    // Parsed again from the frozen head: its fields then share that buffer.
    let head = buf.split_to(len).freeze();
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let upgrade = match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => request(&head, &req),
        _ => None,
    };
    match upgrade {
        Some(req) => Parsed::Upgrade(req),
        None => {
            // Put the head back for hyper: this copies, but only on the rare way out.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            Parsed::Other
        }
    }
}

/// The request of a parsed head, if it is a WebSocket upgrade without a body.
fn request(head: &Bytes, parsed: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    let headers = parsed_fields(head, parsed.headers)?;
    let body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if body || !is_websocket_upgrade(&headers) {
        return None;
    }
    let uri = Uri::from_maybe_shared(head.slice_ref(parsed.path?.as_bytes())).ok()?;
    let mut req = Request::new(());
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Some(req)
}

/// Writes an HTTP/1.1 response: the head, and the body (with its length, or
/// chunked when a backend's body has none), then flushes (TLS holds what it
/// encrypted until then).
async fn write_response(stream: &mut Stream, resp: Response<Body>) -> io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    let code = parts.status;
    let bodiless = code.is_informational()
        || code == StatusCode::NO_CONTENT
        || code == StatusCode::NOT_MODIFIED;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING || (bodiless && name == CONTENT_LENGTH) {
            continue;
        }
        field(&mut out, name.as_str(), value.as_bytes());
    }
    if !parts.headers.contains_key(DATE) {
        field(
            &mut out,
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
        );
    }
    let length = parts.headers.contains_key(CONTENT_LENGTH);
    let exact = body.size_hint().exact();
    let chunked = !bodiless && !length && exact.is_none();
    if !bodiless && !length {
        match exact {
            Some(n) => field(&mut out, "content-length", n.to_string().as_bytes()),
            None => field(&mut out, "transfer-encoding", b"chunked"),
        }
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(io::Error::other)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if chunked {
                if data.is_empty() {
                    continue;
                }
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&data);
            }
            if out.len() >= 16 * 1024 {
                stream.write_all(&out).await?;
                out.clear();
            }
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    stream.write_all(&out).await?;
    stream.flush().await
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let p = parse(&mut buf, 64 * 1024);
        (p, buf)
    }

    #[test]
    fn an_upgrade_is_split_off_with_what_followed() {
        let mut bytes = UPGRADE.to_vec();
        bytes.extend_from_slice(b"\x81\x80early");
        let (p, rest) = parsed(&bytes);
        let Parsed::Upgrade(req) = p else {
            panic!("not parsed as an upgrade")
        };
        assert_eq!(req.uri().path(), "/chat");
        assert_eq!(req.uri().query(), Some("room=1"));
        assert_eq!(req.headers()["host"], "example.com");
        assert_eq!(req.headers()["sec-websocket-version"], "13");
        assert_eq!(&rest[..], b"\x81\x80early");
    }

    #[test]
    fn everything_else_is_left_whole_for_hyper() {
        for other in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 5\r\n\r\nhello",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
        ] {
            let (p, rest) = parsed(other);
            assert!(matches!(p, Parsed::Other), "{}", String::from_utf8_lossy(other));
            assert_eq!(&rest[..], other, "bytes kept for hyper");
        }
        assert!(matches!(parsed(&UPGRADE[..40]).0, Parsed::Partial));
    }

    #[test]
    fn a_head_over_the_limit_is_hyper_s_to_refuse() {
        let mut buf = BytesMut::from(UPGRADE);
        assert!(matches!(parse(&mut buf, 64), Parsed::Other));
        assert_eq!(&buf[..], UPGRADE);
    }
}
