//! One direction of a tunnel: the bytes flowing toward one peer ([`Dir`]), what one
//! read's frames do on their way ([`Pass`]: forward, count, consume the proxy's
//! pongs, note a Close, charge the rate limit), and writing them out without
//! waiting ([`send`], [`flush`]).

use std::io;

use thin_vec::ThinVec;

use super::frame::{close_code, control_payload, FrameHeader, OP_CLOSE, OP_PONG};
use super::keepalive::pong_token;
use super::protocol::Rules;
use super::ratelimit::Limiter;
use super::reader::{FrameReader, FrameSink};
use crate::proxy::stream::Stream;

/// Bytes flowing toward one peer.
pub(super) struct Dir {
    /// Splits the bytes into frames and checks them.
    pub reader: FrameReader,
    /// Bytes the destination has not taken yet; empty (unallocated) when idle
    /// (a `ThinVec`: 8 bytes in every idle tunnel instead of `Vec`'s 24).
    pub out: ThinVec<u8>,
    /// TLS holds encrypted bytes it could not write yet.
    pub tls_pending: bool,
    /// A Close went this way.
    pub close_sent: bool,
}

impl Dir {
    /// A direction whose frames must keep `rules`.
    pub fn new(rules: Rules) -> Dir {
        Dir {
            reader: FrameReader::new(rules),
            out: ThinVec::new(),
            tls_pending: false,
            close_sent: false,
        }
    }
}

/// Frames of one read, on their way to the other leg.
pub(super) struct Pass<'a> {
    /// Where the frames to forward go.
    pub out: &'a mut Vec<u8>,
    /// Drop what follows (after a Close, or a frame over the rate).
    pub discard: bool,
    /// Whole data messages forwarded.
    pub messages: u64,
    /// Data payload bytes forwarded.
    pub bytes: u64,
    /// The code of a Close that went through.
    pub close: Option<u16>,
    /// The token of a pong answering the proxy's own ping (consumed).
    pub pong: Option<u64>,
    /// The client's rate limits (client-to-backend only).
    pub limit: Option<&'a mut Limiter>,
    /// A frame was refused for its rate: it and all after it are dropped.
    pub limited: bool,
}

impl FrameSink for Pass<'_> {
    fn data_frame(&mut self, h: &FrameHeader, done: bool) {
        if let Some(l) = self.limit.as_deref_mut().filter(|_| !self.discard) {
            if !l.admit(h) {
                // Refused before its header is forwarded: the backend's stream stays
                // at a frame boundary for the Close 1008.
                self.limited = true;
                self.discard = true;
            }
        }
        if !self.discard {
            self.bytes += h.payload_len;
            self.messages += u64::from(done);
        }
    }

    fn forward(&mut self, bytes: &[u8]) {
        if !self.discard {
            self.out.extend_from_slice(bytes);
        }
    }

    fn control(&mut self, h: &FrameHeader, frame_bytes: &[u8]) {
        if self.discard {
            return;
        }
        match h.opcode {
            OP_PONG => {
                if let Some(token) = pong_token(&control_payload(h, frame_bytes)) {
                    self.pong = Some(token);
                    return;
                }
            }
            OP_CLOSE => {
                self.close = Some(close_code(&control_payload(h, frame_bytes)));
                self.out.extend_from_slice(frame_bytes);
                self.discard = true;
                return;
            }
            _ => {}
        }
        self.out.extend_from_slice(frame_bytes);
    }
}

/// Writes what the stream takes now and keeps the rest; false when the peer is gone.
pub(super) fn send(dst: &mut Stream, dir: &mut Dir, mut bytes: &[u8]) -> bool {
    if dir.out.is_empty() {
        while !bytes.is_empty() {
            match dst.try_write(bytes) {
                Ok(0) => return false,
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        if dst.is_tls() {
            match dst.try_flush() {
                Ok(done) => dir.tls_pending = !done,
                Err(_) => return false,
            }
        }
    }
    dir.out.extend_from_slice(bytes);
    true
}

/// Pushes out held bytes; false when the peer is gone.
pub(super) fn flush(dst: &mut Stream, dir: &mut Dir) -> bool {
    let mut written = 0;
    while written < dir.out.len() {
        match dst.try_write(&dir.out[written..]) {
            Ok(0) => return false,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return false,
        }
    }
    if written == dir.out.len() {
        // Give the memory back: an idle tunnel holds no buffer.
        dir.out = ThinVec::new();
    } else {
        dir.out.drain(..written);
    }
    match dst.try_flush() {
        Ok(done) => dir.tls_pending = !done,
        Err(_) => return false,
    }
    true
}
