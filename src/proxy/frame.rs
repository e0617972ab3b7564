//! RFC 6455 §5 frame headers and a streaming reader that splits a byte stream into
//! frames without buffering payloads.
//!
//! The relay forwards payload bytes exactly as they arrive (client frames keep their
//! mask), so a message of any size passes in bounded memory. Only headers split
//! across reads and control frames (at most 125 payload bytes, §5.5) are held, so
//! the proxy can consume its own pongs and read close codes.

use thiserror::Error;

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// The longest header: 2 bytes, a 64-bit length, a mask key.
pub const MAX_HEADER_LEN: usize = 14;
/// The longest control frame payload (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A violation of RFC 6455 framing; the tunnel closes with the given code.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// A framing error (§5.5, §5.2): Close 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A message larger than `maxMessageBytes`: Close 1009.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooBig {
        /// Bytes of the message so far, including the frame that broke the limit.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

impl FrameError {
    /// The close code that reports this error.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => 1002,
            FrameError::TooBig { .. } => 1009,
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1..3 bits (RSV1 marks a compressed message under permessage-deflate).
    pub rsv: u8,
    /// Opcode.
    pub opcode: u8,
    /// Masking key, when the frame is masked (client to server).
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub payload_len: u64,
    /// Bytes of the header itself.
    pub header_len: usize,
}

impl FrameHeader {
    /// Whether this is a control frame (close, ping, pong).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// The header length announced by the first two bytes.
    pub fn len_from_prefix(b0: u8, b1: u8) -> usize {
        let _ = b0;
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
    }

    /// Parses a header from the start of `buf`; `Ok(None)` when more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let header_len = Self::len_from_prefix(b0, b1);
        if buf.len() < header_len {
            return Ok(None);
        }
        let opcode = b0 & 0x0f;
        let payload_len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol(
                        "64-bit payload length with the high bit set",
                    ));
                }
                len
            }
            n => u64::from(n),
        };
        let mask = (b1 & 0x80 != 0).then(|| {
            let m = &buf[header_len - 4..header_len];
            [m[0], m[1], m[2], m[3]]
        });
        let header = FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode,
            mask,
            payload_len,
            header_len,
        };
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
            OP_CLOSE | OP_PING | OP_PONG => {
                if !header.fin {
                    return Err(FrameError::Protocol("fragmented control frame"));
                }
                if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(FrameError::Protocol(
                        "control frame payload longer than 125 bytes",
                    ));
                }
            }
            _ => return Err(FrameError::Protocol("reserved opcode")),
        }
        Ok(Some(header))
    }
}

/// Encodes a control frame with `payload` (at most 125 bytes), masked when a key is
/// given (frames toward a server must be masked, §5.3).
pub fn control_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
    let len = payload.len().min(MAX_CONTROL_PAYLOAD);
    let mut out = Vec::with_capacity(6 + len);
    out.push(0x80 | opcode);
    match mask {
        Some(key) => {
            out.push(0x80 | len as u8);
            out.extend_from_slice(&key);
            out.extend(
                payload[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[i % 4]),
            );
        }
        None => {
            out.push(len as u8);
            out.extend_from_slice(&payload[..len]);
        }
    }
    out
}

/// A Close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// The unmasked payload of a complete control frame (`frame` = header + payload).
pub fn control_payload(header: &FrameHeader, frame: &[u8]) -> Vec<u8> {
    let payload = &frame[header.header_len..];
    match header.mask {
        Some(key) => payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect(),
        None => payload.to_vec(),
    }
}

/// The status code of a Close payload: 1005 (no status) when absent.
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

/// Where the reader delivers a byte stream, frame by frame.
pub trait FrameSink {
    /// A data frame header is complete; `message_done` when it ends a message.
    fn data_frame(&mut self, header: &FrameHeader, message_done: bool);
    /// Bytes of data frames (headers and payload) to forward unchanged.
    fn forward(&mut self, bytes: &[u8]);
    /// A complete control frame (header and still-masked payload).
    fn control(&mut self, header: &FrameHeader, frame: &[u8]);
}

/// Splits one direction's byte stream into frames. Holds no buffer between frames
/// except a header or control frame split across reads.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// A header or control frame split across reads (empty, unallocated, otherwise).
    pending: Vec<u8>,
    /// Payload bytes of the current data frame still to forward.
    remaining: u64,
    /// Bytes of the current (possibly fragmented) message so far.
    message_len: u64,
    /// A fragmented message is in progress.
    in_message: bool,
}

impl FrameReader {
    /// True between frames: the proxy may insert a frame of its own here.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// True when nothing of a frame has been seen: a clean place for the stream to end.
    pub fn is_idle(&self) -> bool {
        self.remaining == 0 && self.pending.is_empty()
    }

    /// Feeds bytes; `max_message` (0 = none) bounds each message's total payload.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        max_message: u64,
        sink: &mut impl FrameSink,
    ) -> Result<(), FrameError> {
        while !input.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(input.len() as u64) as usize;
                sink.forward(&input[..n]);
                self.remaining -= n as u64;
                input = &input[n..];
                continue;
            }
            if self.pending.is_empty() {
                match FrameHeader::parse(input)? {
                    Some(h) if !h.is_control() => {
                        self.start_data(&h, max_message, sink)?;
                        sink.forward(&input[..h.header_len]);
                        input = &input[h.header_len..];
                    }
                    Some(h) => {
                        let total = h.header_len + h.payload_len as usize;
                        if input.len() >= total {
                            sink.control(&h, &input[..total]);
                            input = &input[total..];
                        } else {
                            self.pending.extend_from_slice(input);
                            input = &[];
                        }
                    }
                    None => {
                        self.pending.extend_from_slice(input);
                        input = &[];
                    }
                }
                continue;
            }
            // Complete the held header (and, for control frames, payload) byte-exactly,
            // never taking bytes of the next frame.
            let want = if self.pending.len() < 2 {
                2
            } else {
                let hl = FrameHeader::len_from_prefix(self.pending[0], self.pending[1]);
                match FrameHeader::parse(&self.pending)? {
                    Some(h) if h.is_control() => hl + h.payload_len as usize,
                    Some(_) => hl,
                    None => hl,
                }
            };
            let take = (want - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() < want {
                continue;
            }
            let Some(h) = FrameHeader::parse(&self.pending)? else {
                continue;
            };
            if !h.is_control() {
                let held = std::mem::take(&mut self.pending);
                self.start_data(&h, max_message, sink)?;
                sink.forward(&held);
            } else if self.pending.len() == h.header_len + h.payload_len as usize {
                let held = std::mem::take(&mut self.pending);
                sink.control(&h, &held);
            }
        }
        Ok(())
    }

    fn start_data(
        &mut self,
        h: &FrameHeader,
        max_message: u64,
        sink: &mut impl FrameSink,
    ) -> Result<(), FrameError> {
        match (h.opcode, self.in_message) {
            (OP_CONTINUATION, false) => {
                return Err(FrameError::Protocol("continuation frame outside a message"))
            }
            (OP_TEXT | OP_BINARY, true) => {
                return Err(FrameError::Protocol(
                    "new message inside a fragmented message",
                ))
            }
            _ => {}
        }
        self.message_len = self.message_len.saturating_add(h.payload_len);
        if max_message > 0 && self.message_len > max_message {
            return Err(FrameError::TooBig {
                size: self.message_len,
                limit: max_message,
            });
        }
        self.in_message = !h.fin;
        if h.fin {
            self.message_len = 0;
        }
        self.remaining = h.payload_len;
        sink.data_frame(h, h.fin);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Collect {
        out: Vec<u8>,
        messages: usize,
        controls: Vec<(u8, Vec<u8>)>,
    }

    impl FrameSink for Collect {
        fn data_frame(&mut self, _: &FrameHeader, done: bool) {
            self.messages += usize::from(done);
        }
        fn forward(&mut self, bytes: &[u8]) {
            self.out.extend_from_slice(bytes);
        }
        fn control(&mut self, h: &FrameHeader, frame: &[u8]) {
            self.controls.push((h.opcode, control_payload(h, frame)));
            self.out.extend_from_slice(frame);
        }
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    #[test]
    fn parses_header_lengths() {
        let f = frame(true, OP_BINARY, &[7; 300], Some([1, 2, 3, 4]));
        let h = FrameHeader::parse(&f).unwrap().unwrap();
        assert_eq!(
            (h.header_len, h.payload_len, h.mask),
            (8, 300, Some([1, 2, 3, 4]))
        );
        let f = frame(true, OP_TEXT, &vec![b'a'; 70_000], None);
        let h = FrameHeader::parse(&f).unwrap().unwrap();
        assert_eq!((h.header_len, h.payload_len), (10, 70_000));
        assert_eq!(FrameHeader::parse(&f[..5]), Ok(None));
    }

    #[test]
    fn rejects_bad_control_frames() {
        let long_ping = frame(true, OP_PING, &[0; 126], None);
        assert!(FrameHeader::parse(&long_ping).is_err());
        let fragmented_close = frame(false, OP_CLOSE, &[3, 232], None);
        assert!(FrameHeader::parse(&fragmented_close).is_err());
        assert!(FrameHeader::parse(&[0x83, 0]).is_err());
    }

    #[test]
    fn fragments_with_interleaved_ping() {
        let mut stream = frame(false, OP_TEXT, b"hel", Some([9, 9, 9, 9]));
        stream.extend(frame(true, OP_PING, b"p", Some([1, 1, 1, 1])));
        stream.extend(frame(true, OP_CONTINUATION, b"lo", Some([2, 2, 2, 2])));
        let mut sink = Collect::default();
        FrameReader::default().feed(&stream, 0, &mut sink).unwrap();
        assert_eq!(sink.out, stream);
        assert_eq!(sink.messages, 1);
        assert_eq!(sink.controls, vec![(OP_PING, b"p".to_vec())]);
    }

    #[test]
    fn enforces_message_limit_across_fragments() {
        let mut stream = frame(false, OP_BINARY, &[0; 60], None);
        stream.extend(frame(true, OP_CONTINUATION, &[0; 60], None));
        let err = FrameReader::default()
            .feed(&stream, 100, &mut Collect::default())
            .unwrap_err();
        assert_eq!(
            err,
            FrameError::TooBig {
                size: 120,
                limit: 100
            }
        );
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close_code(&close_payload(1001, "going away")), 1001);
        assert_eq!(close_code(&[]), 1005);
        let long = "é".repeat(100);
        assert!(close_payload(1000, &long).len() <= MAX_CONTROL_PAYLOAD);
    }

    fn arb_frame() -> impl Strategy<Value = (u8, Vec<u8>, Option<[u8; 4]>)> {
        (
            prop_oneof![Just(OP_BINARY), Just(OP_TEXT), Just(OP_PING), Just(OP_PONG)],
            prop::collection::vec(any::<u8>(), 0..400),
            prop::option::of(any::<[u8; 4]>()),
        )
            .prop_map(|(op, mut p, m)| {
                if op & 0x8 != 0 {
                    p.truncate(MAX_CONTROL_PAYLOAD);
                }
                (op, p, m)
            })
    }

    proptest! {
        /// Whatever the read boundaries, the bytes out equal the bytes in, every data
        /// message is counted once, and every control payload is seen intact.
        #[test]
        fn any_split_forwards_every_byte(
            frames in prop::collection::vec(arb_frame(), 1..20),
            cuts in prop::collection::vec(1usize..64, 1..200),
        ) {
            let stream: Vec<u8> = frames.iter().flat_map(|(op, p, m)| frame(true, *op, p, *m)).collect();
            let mut reader = FrameReader::default();
            let mut sink = Collect::default();
            let mut rest = &stream[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                reader.feed(&rest[..n], 0, &mut sink).unwrap();
                rest = &rest[n..];
            }
            prop_assert!(reader.is_idle());
            prop_assert_eq!(&sink.out, &stream);
            let data = frames.iter().filter(|(op, _, _)| op & 0x8 == 0).count();
            prop_assert_eq!(sink.messages, data);
            let controls: Vec<_> = frames.iter().filter(|(op, _, _)| op & 0x8 != 0).map(|(op, p, _)| (*op, p.clone())).collect();
            prop_assert_eq!(sink.controls, controls);
        }

        /// Arbitrary bytes never panic the reader.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048), cut in 1usize..50) {
            let mut reader = FrameReader::default();
            for chunk in bytes.chunks(cut) {
                if reader.feed(chunk, 1 << 20, &mut Collect::default()).is_err() {
                    break;
                }
            }
        }
    }
}
