//! The one HTTP/2 abuse limit h2 does not have: a flood of PING or SETTINGS frames.
//!
//! h2 answers every PING and SETTINGS it reads. It keeps one answer pending at a
//! time, so a flood costs no memory, but it costs a core: each frame is read,
//! decoded and answered. h2 offers no knob for it (it has them for resets and
//! CONTINUATION), so [`FloodGuard`] sits between the client's socket and h2,
//! reads only the 9-byte frame headers as bytes go by, and counts the frames that
//! ask for an answer (PING and SETTINGS without the ACK flag). Past
//! [`MAX_CONTROL_FRAMES`] in [`WINDOW`], it stops reading, finishes the frame
//! h2 is writing, writes its own GOAWAY `ENHANCE_YOUR_CALM` (debug data
//! `too_many_control_frames`, like h2's `too_many_resets`) and ends the connection
//! with a [`ControlFlood`] error; [`Flooded`] tells the listener, which counts it
//! as `http2_abuse`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Frames that ask for an answer, allowed per [`WINDOW`]. A browser sends one
/// SETTINGS when it connects and a PING now and then to check liveness; 100 in
/// 10 s leaves room for any keepalive schedule and stops a flood within a
/// fraction of a second.
pub const MAX_CONTROL_FRAMES: u32 = 100;
/// The counting window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How long the GOAWAY may wait for h2 to finish a frame and for the client to
/// take the bytes before the connection is closed without it.
const GOAWAY_WAIT: Duration = Duration::from_secs(5);

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const HEADERS: u8 = 0x1;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const DEBUG: &[u8] = b"too_many_control_frames";

/// The error a flooded connection's reads and writes end with. h2 keeps only
/// an I/O error's kind and text, so the listener learns of a flood from
/// [`Flooded`], not from h2's error.
#[derive(Debug)]
pub struct ControlFlood;

impl std::fmt::Display for ControlFlood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "more than {MAX_CONTROL_FRAMES} PING/SETTINGS frames in {}s: GOAWAY ENHANCE_YOUR_CALM",
            WINDOW.as_secs()
        )
    }
}

impl std::error::Error for ControlFlood {}

impl ControlFlood {
    fn io_error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, ControlFlood)
    }
}

/// Set when a [`FloodGuard`] ends its connection.
#[derive(Clone, Debug, Default)]
pub struct Flooded(Arc<AtomicBool>);

impl Flooded {
    /// Whether the guard ended the connection for a flood.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A frame header seen going by.
#[derive(Clone, Copy, Debug, PartialEq)]
struct FrameHead {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Where a byte stream of HTTP/2 frames is: inside the preface or a payload
/// (`skip` bytes still to pass), or collecting a frame header.
#[derive(Debug)]
struct FrameCursor {
    skip: usize,
    head: [u8; FRAME_HEADER_LEN],
    have: usize,
}

impl FrameCursor {
    fn new(preface: usize) -> Self {
        FrameCursor {
            skip: preface,
            head: [0; FRAME_HEADER_LEN],
            have: 0,
        }
    }

    /// Between two frames (the next byte starts a frame header).
    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.have == 0
    }

    /// How many of the next bytes surely belong to the current frame: the rest of
    /// its header (whose length field may not have arrived yet) or of its payload;
    /// 0 at a boundary.
    fn rest_of_frame(&self) -> usize {
        if self.have > 0 {
            FRAME_HEADER_LEN - self.have
        } else {
            self.skip
        }
    }

    /// Moves over `bytes`, calling `seen` for each frame header completed.
    fn feed(&mut self, mut bytes: &[u8], mut seen: impl FnMut(FrameHead)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEADER_LEN {
                self.have = 0;
                self.skip = payload_len(&self.head);
                let h = &self.head;
                seen(FrameHead {
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                });
            }
        }
    }
}

fn payload_len(head: &[u8; FRAME_HEADER_LEN]) -> usize {
    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2])
}

/// A GOAWAY frame (RFC 9113 §6.8).
fn goaway(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let len = 8 + debug.len();
    let mut f = Vec::with_capacity(FRAME_HEADER_LEN + len);
    f.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_be_bytes()[1..]);
    f.extend_from_slice(&[GOAWAY, 0]);
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(debug);
    f
}

enum State {
    Counting {
        window_start: Instant,
        count: u32,
    },
    /// Over the limit: finishing h2's frame, then writing `frame[written..]`.
    Ending {
        frame: Vec<u8>,
        written: usize,
        give_up: Pin<Box<Sleep>>,
    },
    Ended,
}

/// An HTTP/2 server connection's socket, watched for PING and SETTINGS floods.
pub struct FloodGuard<T> {
    io: T,
    read: FrameCursor,
    write: FrameCursor,
    /// The highest client stream whose HEADERS h2 has read (GOAWAY's last
    /// stream).
    last_stream: u32,
    state: State,
    flooded: Flooded,
}

impl<T> FloodGuard<T> {
    /// Watches `io`, whose first bytes from the client are the HTTP/2 preface;
    /// sets `flooded` if it ends the connection.
    pub fn new(io: T, flooded: Flooded) -> Self {
        FloodGuard {
            io,
            read: FrameCursor::new(PREFACE_LEN),
            write: FrameCursor::new(0),
            last_stream: 0,
            state: State::Counting {
                window_start: Instant::now(),
                count: 0,
            },
            flooded,
        }
    }

    /// Counts the frames in bytes just read; true when they break the limit.
    fn count(&mut self, bytes: &[u8]) -> bool {
        let State::Counting {
            window_start,
            count,
        } = &mut self.state
        else {
            return false;
        };
        let now = Instant::now();
        if now.duration_since(*window_start) >= WINDOW {
            (*window_start, *count) = (now, 0);
        }
        let last_stream = &mut self.last_stream;
        self.read.feed(bytes, |f| match f.kind {
            PING | SETTINGS if f.flags & ACK == 0 => *count += 1,
            HEADERS if f.stream % 2 == 1 => *last_stream = (*last_stream).max(f.stream),
            _ => {}
        });
        *count > MAX_CONTROL_FRAMES
    }

    fn trip(&mut self) {
        self.flooded.0.store(true, Ordering::Relaxed);
        self.state = State::Ending {
            frame: goaway(self.last_stream, ENHANCE_YOUR_CALM, DEBUG),
            written: 0,
            give_up: Box::pin(tokio::time::sleep(GOAWAY_WAIT)),
        };
    }
}

impl<T: AsyncWrite + Unpin> FloodGuard<T> {
    /// Writes the GOAWAY once h2's frame is out, flushes and shuts the write
    /// side; Ready means the connection is over (with or without the GOAWAY).
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let State::Ending {
            frame,
            written,
            give_up,
        } = &mut self.state
        else {
            return Poll::Ready(());
        };
        if give_up.as_mut().poll(cx).is_ready() {
            self.state = State::Ended;
            return Poll::Ready(());
        }
        if !self.write.at_boundary() {
            // h2 is mid-frame; its next write (the same task) finishes it.
            return Poll::Pending;
        }
        while *written < frame.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &frame[*written..])) {
                Ok(0) | Err(_) => {
                    self.state = State::Ended;
                    return Poll::Ready(());
                }
                Ok(n) => *written += n,
            }
        }
        // Errors here only mean the client has gone.
        let _ = ready!(Pin::new(&mut self.io).poll_flush(cx));
        let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
        self.state = State::Ended;
        Poll::Ready(())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let State::Counting { .. } = this.state {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            if !this.count(&buf.filled()[before..]) {
                return Poll::Ready(Ok(()));
            }
            // What this read brought goes no further than the count.
            buf.set_filled(before);
            this.trip();
        }
        ready!(this.poll_goaway(cx));
        Poll::Ready(Err(ControlFlood::io_error()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FloodGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let buf = match this.state {
            State::Counting { .. } => buf,
            // Only what finishes the frame under way; then the GOAWAY.
            State::Ending { .. } if !this.write.at_boundary() => {
                &buf[..buf.len().min(this.write.rest_of_frame())]
            }
            State::Ending { .. } | State::Ended => {
                ready!(this.poll_goaway(cx));
                return Poll::Ready(Err(ControlFlood::io_error()));
            }
        };
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.write.feed(&buf[..n], |_| {});
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: usize) -> Vec<u8> {
        let mut f = u32::try_from(payload).unwrap().to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.resize(FRAME_HEADER_LEN + payload, 0xaa);
        f
    }

    #[test]
    fn the_cursor_finds_every_header_whatever_the_read_sizes() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let frames = [
            FrameHead {
                kind: SETTINGS,
                flags: 0,
                stream: 0,
            },
            FrameHead {
                kind: HEADERS,
                flags: 4,
                stream: 1,
            },
            FrameHead {
                kind: 0,
                flags: 1,
                stream: 1,
            },
            FrameHead {
                kind: PING,
                flags: ACK,
                stream: 0,
            },
        ];
        for (f, len) in frames.iter().zip([18, 40, 70_000, 8]) {
            bytes.extend(frame(f.kind, f.flags, f.stream, len));
        }
        for chunk in [1, 2, 7, 9, 10, 1000, bytes.len()] {
            let mut cursor = FrameCursor::new(PREFACE_LEN);
            let mut seen = vec![];
            for piece in bytes.chunks(chunk) {
                cursor.feed(piece, |f| seen.push(f));
            }
            assert_eq!(seen, frames, "read {chunk} bytes at a time");
            assert!(cursor.at_boundary());
        }
    }

    #[test]
    fn rest_of_frame_stops_at_the_next_header() {
        let f = frame(0, 0, 1, 100);
        let mut cursor = FrameCursor::new(0);
        cursor.feed(&f[..4], |_| {});
        assert_eq!(cursor.rest_of_frame(), 5);
        cursor.feed(&f[4..9], |_| {});
        assert_eq!(cursor.rest_of_frame(), 100);
        cursor.feed(&f[9..50], |_| {});
        assert_eq!(cursor.rest_of_frame(), 59);
        cursor.feed(&f[50..], |_| {});
        assert_eq!(cursor.rest_of_frame(), 0);
    }

    #[test]
    fn a_goaway_frame_is_what_rfc_9113_lays_out() {
        let g = goaway(7, ENHANCE_YOUR_CALM, b"x");
        assert_eq!(
            g,
            [0, 0, 9, 7, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0xb, b'x']
        );
    }

    #[tokio::test]
    async fn a_ping_flood_ends_in_goaway_and_a_flood_error_while_acks_pass() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let flooded = Flooded::default();
        let mut guard = FloodGuard::new(server, flooded.clone());
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, 0));
        hello.extend(frame(HEADERS, 4, 3, 10));
        // ACKs do not count: 500 of them are fine.
        for _ in 0..500 {
            hello.extend(frame(PING, ACK, 0, 8));
        }
        client_tx.write_all(&hello).await.unwrap();
        let mut got = vec![0; hello.len()];
        guard.read_exact(&mut got).await.unwrap();
        // h2 is part-way through a DATA frame when the flood arrives.
        let data = frame(0, 0, 3, 50);
        guard.write_all(&data[..20]).await.unwrap();
        let mut flood = vec![];
        for _ in 0..=MAX_CONTROL_FRAMES {
            flood.extend(frame(PING, 0, 0, 8));
        }
        assert!(!flooded.get(), "500 ACKs and one SETTINGS are no flood");
        client_tx.write_all(&flood).await.unwrap();
        // Over the limit mid-frame: the read waits for h2 to finish its frame.
        let mut buf = [0; 4096];
        let read = tokio::time::timeout(Duration::from_millis(100), guard.read(&mut buf));
        assert!(read.await.is_err(), "the read waits while h2 is mid-frame");
        // The rest of the DATA frame is let through, then nothing more.
        assert_eq!(guard.write(&data[20..]).await.unwrap(), 39);
        let err = guard.read(&mut buf).await.unwrap_err();
        assert!(
            err.get_ref().is_some_and(|e| e.is::<ControlFlood>()),
            "{err}"
        );
        let err = guard.write(b"more").await.unwrap_err();
        assert!(
            err.get_ref().is_some_and(|e| e.is::<ControlFlood>()),
            "{err}"
        );
        assert!(flooded.get());
        let mut seen = vec![];
        client_rx.read_to_end(&mut seen).await.unwrap();
        let mut want = data.clone();
        want.extend(goaway(3, ENHANCE_YOUR_CALM, DEBUG));
        assert_eq!(seen, want);
    }
}
