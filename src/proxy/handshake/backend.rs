//! The upgrade toward the backend, on the connection wsgate dialled: the request
//! head written in one go, the answer's head read and parsed here (httparse). A
//! `101` leaves the connection to the tunnel with whatever the backend sent after
//! it. Any other answer is the client's to see, body and all, and its framing
//! (length, chunked, or until close) is hyper's to get right: hyper's client reads
//! it from the bytes already received, its own copy of the request going nowhere
//! ([`Muted`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::headers::parsed_fields;
use crate::proxy::first_head::Rewind;
use crate::proxy::stream::Stream;

/// Fields in the backend's answer, as hyper allows.
const MAX_HEADERS: usize = 100;
/// The backend's answer head may not be larger.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What the backend answered an upgrade.
pub(super) enum Reply {
    /// `101 Switching Protocols`: its headers, the connection, and what the backend
    /// sent after the head.
    Switched {
        headers: HeaderMap,
        stream: Stream,
        early: Vec<u8>,
    },
    /// Anything else, body and all.
    Other(Response<Incoming>),
}

impl Reply {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Reply::Switched { .. } => StatusCode::SWITCHING_PROTOCOLS,
            Reply::Other(r) => r.status(),
        }
    }
}

/// Sends `GET path` with `headers` on `stream` and reads the answer.
pub(super) async fn exchange(
    mut stream: Stream,
    path: &str,
    headers: &HeaderMap,
) -> io::Result<Reply> {
    stream.write_all(&request_head(path, headers)).await?;
    stream.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    let (status, len) = loop {
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed the connection before answering",
            ));
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        match resp.parse(&buf).map_err(io::Error::other)? {
            httparse::Status::Complete(len) => break (resp.code, len),
            httparse::Status::Partial if buf.len() < MAX_HEAD_BYTES => {}
            httparse::Status::Partial => {
                return Err(io::Error::other("the backend's answer head is over 64 KiB"))
            }
        }
    };
    if status != Some(101) {
        return replay(stream, buf.freeze(), path).await.map(Reply::Other);
    }
    // Parsed again from the frozen head: its fields then share that buffer.
    let head = buf.split_to(len).freeze();
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    resp.parse(&head).map_err(io::Error::other)?;
    let headers = parsed_fields(&head, resp.headers)
        .ok_or_else(|| io::Error::other("the backend's 101 has a field http does not accept"))?;
    Ok(Reply::Switched {
        headers,
        stream,
        early: buf.to_vec(),
    })
}

/// The request head: `GET path HTTP/1.1` and the fields.
fn request_head(path: &str, headers: &HeaderMap) -> Vec<u8> {
    let size = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>();
    let mut out = Vec::with_capacity(path.len() + size + 20);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// hyper's client reads the answer that began with `read` (and the rest of its
/// body from the backend); the request it writes first is dropped.
async fn replay(stream: Stream, read: Bytes, path: &str) -> io::Result<Response<Incoming>> {
    let io = TokioIo::new(Muted::new(Rewind::new(read, stream)));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(io)
            .await
            .map_err(io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .body(http_body_util::Empty::new())
        .map_err(io::Error::other)?;
    sender.send_request(req).await.map_err(io::Error::other)
}

/// A connection whose writes go nowhere: hyper's client must send a request before
/// it reads an answer, and the backend already has it. Reads wait for that write:
/// hyper takes an answer that arrives before its request for a broken connection.
struct Muted<S> {
    inner: S,
    written: bool,
    reader: Option<Waker>,
}

impl<S> Muted<S> {
    fn new(inner: S) -> Self {
        Muted {
            inner,
            written: false,
            reader: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Muted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.written {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Unpin> AsyncWrite for Muted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn backend_answers(answer: &'static [u8]) -> (Stream, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).await.unwrap();
            got.truncate(n);
            for piece in answer.chunks(7) {
                s.write_all(piece).await.unwrap();
            }
            got
        });
        (Stream::Tcp(TcpStream::connect(addr).await.unwrap()), task)
    }

    #[tokio::test]
    async fn a_101_keeps_what_followed_it() {
        let (stream, backend) = backend_answers(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n\x81\x02hi",
        )
        .await;
        let mut h = HeaderMap::new();
        h.insert("host", "b".parse().unwrap());
        let Reply::Switched { headers, early, .. } = exchange(stream, "/a?b", &h).await.unwrap()
        else {
            panic!("not switched")
        };
        assert_eq!(headers["sec-websocket-accept"], "x");
        assert_eq!(early, b"\x81\x02hi");
        assert_eq!(
            backend.await.unwrap(),
            b"GET /a?b HTTP/1.1\r\nhost: b\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_refusal_arrives_with_its_chunked_body() {
        let (stream, _backend) = backend_answers(
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n4\r\n you\r\n0\r\n\r\n",
        )
        .await;
        let Reply::Other(resp) = exchange(stream, "/", &HeaderMap::new()).await.unwrap() else {
            panic!("switched")
        };
        assert_eq!(resp.status(), 403);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"not you");
    }

    #[tokio::test]
    async fn a_backend_that_hangs_up_is_an_unexpected_eof() {
        let (stream, _backend) = backend_answers(b"HTTP/1.1 10").await;
        let err = exchange(stream, "/", &HeaderMap::new())
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
