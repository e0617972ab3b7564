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
use std::task::{ready, Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use h2::{Reason, RecvStream, SendStream};
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
    /// A stream of a client's HTTP/2 connection, opened by an extended CONNECT.
    H2(Box<H2Leg>),
}

/// One HTTP/2 stream as a tunnel leg: h2's two halves of the stream, with no
/// task or channel between them and the relay.
///
/// There is no socket to wait on: h2 wakes whichever waker polled a half last.
/// Every read is polled with `read_waker` and every write with `write_waker`, each
/// of which raises its flag and wakes the relay task, so the relay's readiness
/// checks keep their meaning ("something may have changed on this side") and never
/// spin. A waker that does nothing, as the socket legs use, would lose the wake-up
/// here: h2 keeps only the last one.
pub struct H2Leg {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// What h2 handed over and the relay has not read yet (its flow-control
    /// capacity is given back as the relay reads it).
    unread: Bytes,
    read: Arc<Flag>,
    write: Arc<Flag>,
    read_waker: Waker,
    write_waker: Waker,
}

/// A wake-up for one direction of an HTTP/2 leg: raised by h2, cleared by the
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
    /// The leg over an HTTP/2 stream whose `200` has been sent.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Leg {
        let (read, write) = (Flag::new(), Flag::new());
        H2Leg {
            send,
            recv,
            unread: Bytes::new(),
            read_waker: Waker::from(read.clone()),
            write_waker: Waker::from(write.clone()),
            read,
            write,
        }
    }

    /// Copies what the client sent into `buf`; `Ok(0)` at END_STREAM (or a reset
    /// that means "done": NO_ERROR, CANCEL).
    fn poll_read_into(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        read_into(&mut self.recv, &mut self.unread, cx, buf)
    }

    /// Hands h2 as much of `buf` as the stream's window and send buffer take now.
    fn poll_write_from(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        write_from(&mut self.send, cx, buf)
    }

    /// END_STREAM after what was written.
    fn end(&mut self) -> io::Result<()> {
        self.send.reserve_capacity(0);
        self.send.send_data(Bytes::new(), true).map_err(h2_io_error)
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.read_waker);
        match read_into(&mut self.recv, &mut self.unread, &mut cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.write_waker);
        match write_from(&mut self.send, &mut cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// [`H2Leg`]'s read: what h2 handed over first, then the next DATA.
fn read_into(
    recv: &mut RecvStream,
    unread: &mut Bytes,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    while unread.is_empty() {
        match ready!(recv.poll_data(cx)) {
            None => return Poll::Ready(Ok(0)),
            Some(Ok(data)) => *unread = data,
            Some(Err(e)) => {
                return Poll::Ready(match e.reason() {
                    Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(0),
                    _ => Err(h2_io_error(e)),
                })
            }
        }
    }
    let n = buf.len().min(unread.len());
    buf[..n].copy_from_slice(&unread[..n]);
    unread.advance(n);
    // The client may send this much more on the stream (WINDOW_UPDATE).
    let _ = recv.flow_control().release_capacity(n);
    Poll::Ready(Ok(n))
}

/// [`H2Leg`]'s write: as much of `buf` as the stream's window and send buffer take
/// now (one copy, into the DATA frame's buffer) and never more, so a client that
/// stops reading holds at most `--http2-stream-send-buffer` per stream.
fn write_from(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        return Poll::Ready(Ok(0));
    }
    // Capacity is asked for only with bytes in hand: a reservation held while idle
    // would pin the connection's window (hyper#4003).
    send.reserve_capacity(buf.len());
    loop {
        let room = send.capacity();
        if room > 0 {
            let n = room.min(buf.len());
            send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
                .map_err(h2_io_error)?;
            return Poll::Ready(Ok(n));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
            // No longer sendable: ended or reset.
            None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

/// An h2 stream error as the relay's I/O error.
fn h2_io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
    } else {
        io::Error::new(io::ErrorKind::BrokenPipe, e)
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
            // Bytes h2 already handed over are readable without a wake-up.
            (Stream::H2(h), _) if !h.unread.is_empty() => Poll::Ready(Ok(())),
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
            // h2's connection task sends what a write handed over; nothing is held here.
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
                let done = h.end();
                let mut rest = [0u8; 512];
                while matches!(
                    std::future::poll_fn(|cx| h.poll_read_into(cx, &mut rest)).await,
                    Ok(n) if n > 0
                ) {}
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
            Stream::H2(h) => {
                let n = ready!(h.poll_read_into(cx, buf.initialize_unfilled()))?;
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
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
            Stream::H2(h) => h.poll_write_from(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::BackendTls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::H2(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::BackendTls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::H2(h) => Poll::Ready(h.end()),
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
            Stream::H2(h) => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                h.poll_write_from(cx, first)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::BackendTls(s) => s.is_write_vectored(),
            Stream::H2(_) => false,
        }
    }
}
