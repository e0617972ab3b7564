//! The first request head's deadline. hyper 1.x enforces `header_read_timeout` by
//! dropping the connection without a word (its automatic responses cover parse
//! errors only: 400, 414, 431), so the first request's head is timed here, in an IO
//! wrapper that answers `408 Request Timeout` before it closes. Later requests on a
//! kept-alive connection keep hyper's own timer: a browser's idle keep-alive
//! connection is closed silently, as NGINX's `keepalive_timeout` does, and is not
//! counted as an attack.
//!
//! It sits beside [`Stream`] rather than in `listen/` because the handshake, below
//! the listener, takes the upgraded client back out of it ([`ClientIo`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::proxy::stream::Stream;

/// A client connection as hyper sees it; [`Upgraded`](hyper::upgrade::Upgraded)
/// downcasts to this.
pub type ClientIo = TokioIo<FirstHead<Rewind<Stream>>>;

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

pin_project_lite::pin_project! {
    /// A connection whose first bytes were already read (by the listener's own
    /// HTTP/1.1 path, which answers WebSocket upgrades without hyper): they are
    /// read again from here before anything new from the socket.
    pub struct Rewind<S> {
        prefix: Bytes,
        #[pin]
        inner: S,
    }
}

impl<S> Rewind<S> {
    /// `inner`, whose next bytes are `prefix`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }

    /// What is left of the prefix, and the connection.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Rewind<S> {
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

    #[tokio::test]
    async fn rewind_reads_its_prefix_first() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = Rewind::new(Bytes::from_static(b"GET / HT"), server);
        client.write_all(b"TP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET / HTTP/1.1\r\n");
        let (rest, _) = io.into_parts();
        assert!(rest.is_empty());
    }
}
