//! Fuzzes the relay's frame reader (`src/proxy/relay/reader.rs` over `frame.rs`, with
//! the RFC 6455 rules of `protocol.rs`) the way the relay drives it: one direction's byte stream
//! arrives in reads split at arbitrary points, and the reader's state carries from
//! one read to the next.
//!
//! Input: byte 0 picks the direction and extensions (bit 0: from the client, bits
//! 1–2: none / permessage-deflate / unknown, bit 3: a `maxMessageBytes` limit of
//! `(byte 1 + 1) × 8`); byte 2 counts the read sizes that follow (0: one byte per
//! read); the rest is the stream.
//!
//! Checked for every input: no panic; the bytes forwarded are exactly the prefix of
//! the input made of valid frames (as a small independent model of RFC 6455 says:
//! whole frames, plus the available payload of a data frame still arriving, nothing
//! of the first invalid frame, nothing after a Close); the error and its close code
//! are the model's; and reading in pieces gives the same bytes, events and error as
//! reading everything at once.

#![no_main]
// The reader's files are compiled here as they are in wsgate; the fuzzer uses part
// of them.
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

// The exact source the relay runs, without building all of wsgate (kube, rustls,
// hyper) under the fuzzer's instrumentation.
#[path = "../../src/proxy/relay/frame.rs"]
mod frame;
#[path = "../../src/proxy/relay/protocol.rs"]
mod protocol;
#[path = "../../src/proxy/relay/reader.rs"]
mod reader;

use frame::{FrameError, FrameHeader, OP_CLOSE};
use reader::{FrameReader, FrameSink};
use protocol::{Extensions, Rules};

/// What the relay's sink does with a read: forward data bytes and control frames,
/// drop everything after a Close.
#[derive(Default, Debug, PartialEq)]
struct Forward {
    out: Vec<u8>,
    discard: bool,
    /// (opcode, payload length, message_done) of each data frame.
    data_frames: Vec<(u8, u64, bool)>,
    /// (opcode, unmasked payload) of each control frame.
    controls: Vec<(u8, Vec<u8>)>,
}

impl FrameSink for Forward {
    fn data_frame(&mut self, h: &FrameHeader, done: bool) {
        if !self.discard {
            self.data_frames.push((h.opcode, h.payload_len, done));
        }
    }
    fn forward(&mut self, bytes: &[u8]) {
        if !self.discard {
            self.out.extend_from_slice(bytes);
        }
    }
    fn control(&mut self, h: &FrameHeader, frame_bytes: &[u8]) {
        assert_eq!(frame_bytes.len() as u64, h.header_len as u64 + h.payload_len);
        if self.discard {
            return;
        }
        self.controls
            .push((h.opcode, frame::control_payload(h, frame_bytes)));
        self.out.extend_from_slice(frame_bytes);
        self.discard = h.opcode == OP_CLOSE;
    }
}

/// Feeds `stream` in reads of `sizes` (cycled) until the end or the first error, as
/// the relay does (after an error it reads no more).
fn run(rules: Rules, max: u64, stream: &[u8], sizes: &[usize]) -> (Forward, Option<FrameError>) {
    let mut reader = FrameReader::new(rules);
    let mut sink = Forward::default();
    let mut rest = stream;
    let mut size = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*size.next().unwrap_or(&rest.len())).clamp(1, rest.len());
        if let Err(e) = reader.feed(&rest[..n], max, &mut sink) {
            return (sink, Some(e));
        }
        rest = &rest[n..];
    }
    (sink, None)
}

/// The model: how many bytes of `stream` are forwarded, and the close code toward
/// the sender when the stream breaks the rules (before any Close went through).
fn model(from_client: bool, ext: Extensions, max: u64, stream: &[u8]) -> (usize, Option<u16>) {
    let mut pos = 0usize;
    let mut out = 0usize;
    let (mut in_message, mut message_len, mut closed) = (false, 0u64, false);
    // An error after the Close is still an error of the reader, but the relay
    // ignores it; the model reports it all the same.
    loop {
        let rest = &stream[pos..];
        if rest.len() < 2 {
            return (out, None);
        }
        let (b0, b1) = (rest[0], rest[1]);
        let masked = b1 & 0x80 != 0;
        let ext_len = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let hl = 2 + ext_len + if masked { 4 } else { 0 };
        if rest.len() < hl {
            return (out, None);
        }
        let len = match ext_len {
            2 => u64::from(u16::from_be_bytes([rest[2], rest[3]])),
            8 => u64::from_be_bytes(rest[2..10].try_into().unwrap()),
            _ => u64::from(b1 & 0x7f),
        };
        let (fin, rsv, opcode) = (b0 & 0x80 != 0, (b0 >> 4) & 7, b0 & 0xf);
        let control = opcode >= 8;
        let allowed_rsv = match ext {
            Extensions::None => 0,
            Extensions::Deflate if (opcode == 1 || opcode == 2) && !in_message => 4,
            Extensions::Deflate => 0,
            Extensions::Unknown => 7,
        };
        let broken = len >> 63 != 0
            || !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10)
            || (control && (!fin || len > 125))
            || masked != from_client
            || rsv & !allowed_rsv != 0
            || (!control && (opcode == 0) != in_message);
        if broken {
            return (out, Some(1002));
        }
        if !control {
            message_len = message_len.saturating_add(len);
            if max > 0 && message_len > max {
                return (out, Some(1009));
            }
            in_message = !fin;
            if fin {
                message_len = 0;
            }
            let avail = (len.min((rest.len() - hl) as u64)) as usize;
            if !closed {
                out += hl + avail;
            }
            if (avail as u64) < len {
                return (out, None);
            }
            pos += hl + avail;
            continue;
        }
        let total = hl + len as usize;
        if rest.len() < total {
            return (out, None);
        }
        if opcode == 8 {
            let key = if masked { &rest[hl - 4..hl] } else { &[0; 4][..] };
            let payload: Vec<u8> = rest[hl..total]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            if payload.len() == 1 {
                return (out, Some(1002));
            }
            if payload.len() >= 2 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                if !valid {
                    return (out, Some(1002));
                }
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return (out, Some(1007));
                }
            }
        }
        if !closed {
            out += total;
        }
        closed |= opcode == 8;
        pos += total;
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, limit, count, rest @ ..] = data else {
        return;
    };
    let from_client = flags & 1 != 0;
    let ext = match (flags >> 1) & 3 {
        0 => Extensions::None,
        1 => Extensions::Deflate,
        _ => Extensions::Unknown,
    };
    let max = if flags & 8 != 0 {
        (u64::from(*limit) + 1) * 8
    } else {
        0
    };
    let count = usize::from(count % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(count);
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![1]
    } else {
        sizes.iter().map(|&s| usize::from(s) + 1).collect()
    };
    let rules = if from_client {
        Rules::from_client(ext)
    } else {
        Rules::from_server(ext)
    };

    let (split, split_err) = run(rules, max, stream, &sizes);
    let (whole, whole_err) = run(rules, max, stream, &[stream.len()]);
    assert_eq!(split, whole, "reading in pieces changed what was forwarded");
    assert_eq!(split_err, whole_err, "reading in pieces changed the error");

    let (len, code) = model(from_client, ext, max, stream);
    assert!(
        split.out == stream[..len],
        "forwarded {} bytes, the model says the valid prefix is {len}",
        split.out.len()
    );
    assert_eq!(
        split_err.as_ref().map(FrameError::close_code),
        code,
        "error {split_err:?}"
    );
});
