//! `Stream`: one leg of a tunnel, plain TCP or TLS, read on readiness.
//!
//! The relay never parks a buffer in a read: it waits for the socket to become
//! readable and only then reads into a short-lived scratch buffer. That is what keeps
//! an idle tunnel down to a few hundred bytes of user-space memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client or backend connection.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (the client leg of `wss`).
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS over TCP toward a backend (`spec.backendTLS`).
    BackendTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Runs one poll with a waker that does nothing: readiness is awaited separately on
/// the TCP socket, so `Pending` just means "would block".
fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>) -> io::Result<T> {
    let mut cx = Context::from_waker(Waker::noop());
    match f(&mut cx) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
            Stream::BackendTls(s) => s.get_ref().0,
        }
    }

    /// Whether a TLS layer sits on the socket (it may hold encrypted bytes to flush).
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Tcp(_))
    }

    /// Waits until a write may make progress.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// Reads what is available now; `WouldBlock` when nothing is.
    ///
    /// Through `poll_read`, not `TcpStream::try_read`: a short read tells tokio the
    /// socket is drained, so the next wait goes straight to epoll instead of costing
    /// one more `read` that returns `EAGAIN` (a system call per wake-up saved).
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        poll_once(|cx| {
            let mut rb = ReadBuf::new(buf);
            let r = match self {
                Stream::Tcp(s) => Pin::new(s).poll_read(cx, &mut rb),
                Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, &mut rb),
                Stream::BackendTls(s) => Pin::new(&mut **s).poll_read(cx, &mut rb),
            };
            r.map_ok(|()| rb.filled().len())
        })
    }

    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Tls(_) | Stream::BackendTls(_) => {
                let n = poll_once(|cx| Pin::new(&mut *self).poll_write(cx, buf))?;
                // Encrypted records may still sit in rustls; push them out now if the
                // socket takes them, else the next flush does.
                let _ = poll_once(|cx| Pin::new(&mut *self).poll_flush(cx));
                Ok(n)
            }
        }
    }

    /// Pushes out bytes the TLS layer holds; true when nothing is left.
    pub fn try_flush(&mut self) -> io::Result<bool> {
        match self {
            Stream::Tcp(_) => Ok(true),
            Stream::Tls(_) | Stream::BackendTls(_) => {
                match poll_once(|cx| Pin::new(&mut *self).poll_flush(cx)) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Sends FIN (and TLS close_notify), bounded in time by the caller.
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::BackendTls(s) => s.shutdown().await,
        };
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::BackendTls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::BackendTls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::BackendTls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::BackendTls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            Stream::BackendTls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::BackendTls(s) => s.is_write_vectored(),
        }
    }
}
