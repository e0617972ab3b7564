//! `Stream`: one leg of a tunnel, plain TCP, TLS, or a stream of a client's HTTP/2
//! connection (RFC 8441), read on readiness.
//!
//! The relay never parks a buffer in a read: it waits for the socket to become
//! readable and only then reads into a short-lived scratch buffer. That is what keeps
//! an idle tunnel down to a few hundred bytes of user-space memory.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
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
    /// A stream of a client's HTTP/2 connection, opened by an extended CONNECT.
    H2(Box<H2Leg>),
}

/// One HTTP/2 stream as a tunnel leg.
///
/// There is no socket to wait on: hyper's stream wakes whichever waker polled it
/// last. Every read is polled with `read_waker` and every write with `write_waker`,
/// each of which raises its flag and wakes the relay task, so the relay's readiness
/// checks keep their meaning ("something may have changed on this side") and never
/// spin. A waker that does nothing, as the socket legs use, would lose the wake-up
/// here: hyper keeps only the last one.
pub struct H2Leg {
    io: TokioIo<Upgraded>,
    read: Arc<Flag>,
    write: Arc<Flag>,
    read_waker: Waker,
    write_waker: Waker,
}

/// A wake-up for one direction of an HTTP/2 leg: raised by hyper, cleared by the
/// relay when it looks.
struct Flag {
    raised: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Flag {
    /// Raised at first: nothing has been polled yet, so the relay must try once.
    fn new() -> Arc<Flag> {
        Arc::new(Flag {
            raised: AtomicBool::new(true),
            task: AtomicWaker::new(),
        })
    }

    fn poll(&self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        self.task.register(cx.waker());
        if self.raised.swap(false, Ordering::AcqRel) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl H2Leg {
    /// The leg over an upgraded HTTP/2 stream.
    pub fn new(io: Upgraded) -> H2Leg {
        let (read, write) = (Flag::new(), Flag::new());
        H2Leg {
            io: TokioIo::new(io),
            read_waker: Waker::from(read.clone()),
            write_waker: Waker::from(write.clone()),
            read,
            write,
        }
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.read_waker);
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut self.io).poll_read(&mut cx, &mut rb) {
            Poll::Ready(r) => r.map(|()| rb.filled().len()),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.write_waker);
        match Pin::new(&mut self.io).poll_write(&mut cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
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
    /// The TCP socket underneath (none for an HTTP/2 stream).
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::BackendTls(s) => Some(s.get_ref().0),
            Stream::H2(_) => None,
        }
    }

    /// Whether a TLS layer sits on the socket (it may hold encrypted bytes to flush).
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_) | Stream::BackendTls(_))
    }

    /// Ready when a read may make progress (the task is woken when it may).
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match (&*self, self.tcp()) {
            (Stream::H2(h), _) => h.read.poll(cx),
            (_, Some(tcp)) => tcp.poll_read_ready(cx),
            (_, None) => Poll::Ready(Ok(())),
        }
    }

    /// Ready when a write may make progress (the task is woken when it may).
    pub fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match (&*self, self.tcp()) {
            (Stream::H2(h), _) => h.write.poll(cx),
            (_, Some(tcp)) => tcp.poll_write_ready(cx),
            (_, None) => Poll::Ready(Ok(())),
        }
    }

    /// Waits until a write may make progress (`&mut`: an HTTP/2 leg is not `Sync`,
    /// so a shared borrow could not be held across the wait).
    pub async fn writable(&mut self) -> io::Result<()> {
        std::future::poll_fn(move |cx| self.poll_write_ready(cx)).await
    }

    /// Reads what is available now; `WouldBlock` when nothing is.
    ///
    /// Through `poll_read`, not `TcpStream::try_read`: a short read tells tokio the
    /// socket is drained, so the next wait goes straight to epoll instead of costing
    /// one more `read` that returns `EAGAIN` (a system call per wake-up saved).
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let src: &mut (dyn AsyncRead + Unpin) = match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => &mut **s,
            Stream::BackendTls(s) => &mut **s,
            Stream::H2(h) => return h.try_read(buf),
        };
        poll_once(|cx| {
            let mut rb = ReadBuf::new(buf);
            Pin::new(&mut *src)
                .poll_read(cx, &mut rb)
                .map_ok(|()| rb.filled().len())
        })
    }

    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::H2(h) => h.try_write(buf),
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
            // hyper's stream task sends what a write handed over; nothing is held here.
            Stream::Tcp(_) | Stream::H2(_) => Ok(true),
            Stream::Tls(_) | Stream::BackendTls(_) => {
                match poll_once(|cx| Pin::new(&mut *self).poll_flush(cx)) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Sends TLS close_notify and FIN, or ends an HTTP/2 stream, bounded in time by
    /// the caller. A plain TCP leg is left as it is: dropping it closes the socket,
    /// and `close` sends the same FIN that a `shutdown` first would, one system call
    /// fewer per leg (NGINX and HAProxy just close, too).
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Tcp(_) => Ok(()),
            Stream::Tls(s) => s.shutdown().await,
            Stream::BackendTls(s) => s.shutdown().await,
            // END_STREAM after what was written, then wait (the caller bounds it)
            // for the client's: a stream dropped before it ends is reset, and h2
            // counts the client's later frames on it toward
            // `max_local_error_reset_streams`, so a long-lived connection whose
            // clients end streams politely would be cut after a few hundred closes.
            Stream::H2(h) => {
                let done = h.io.shutdown().await;
                let mut rest = [0u8; 512];
                while matches!(h.io.read(&mut rest).await, Ok(n) if n > 0) {}
                done
            }
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
            Stream::H2(h) => Pin::new(&mut h.io).poll_read(cx, buf),
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
            Stream::H2(h) => Pin::new(&mut h.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::BackendTls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::H2(h) => Pin::new(&mut h.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::BackendTls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::H2(h) => Pin::new(&mut h.io).poll_shutdown(cx),
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
            Stream::H2(h) => Pin::new(&mut h.io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::BackendTls(s) => s.is_write_vectored(),
            Stream::H2(h) => h.io.is_write_vectored(),
        }
    }
}
