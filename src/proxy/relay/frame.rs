//! RFC 6455 §5 framing as vocabulary: opcodes, the frame header and its errors, and
//! the control frames the proxy writes itself. The rules each direction must keep
//! are `protocol.rs`; the reader that applies both to a byte stream is `reader.rs`.

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
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// A framing error (§5.5, §5.2): Close 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Data inconsistent with its type, such as a Close reason that is not UTF-8
    /// (§7.4.1): Close 1007.
    #[error("invalid payload: {0}")]
    InvalidPayload(&'static str),
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
    /// The close code that reports this error to the peer that caused it.
    pub fn close_code(&self) -> u16 {
        self.close_codes().0
    }

    /// The close codes toward the peer that caused the error and toward the other
    /// side: a broken protocol fails the offender's connection and the other side's
    /// peer merely went away (1001); a message too big is news for both.
    pub fn close_codes(&self) -> (u16, u16) {
        match self {
            FrameError::Protocol(_) => (1002, 1001),
            FrameError::InvalidPayload(_) => (1007, 1001),
            FrameError::TooBig { .. } => (1009, 1009),
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

/// The unmasked payload of a complete control frame, into a stack buffer: the
/// reader checks every Close without allocating.
pub(super) fn control_payload_into<'a>(
    header: &FrameHeader,
    frame: &[u8],
    buf: &'a mut [u8; MAX_CONTROL_PAYLOAD],
) -> &'a [u8] {
    let payload = &frame[header.header_len..];
    let n = payload.len().min(MAX_CONTROL_PAYLOAD);
    let out = &mut buf[..n];
    out.copy_from_slice(&payload[..n]);
    if let Some(key) = header.mask {
        for (i, b) in out.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    out
}

/// The status code of a Close payload: 1005 (no status) when absent.
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}
