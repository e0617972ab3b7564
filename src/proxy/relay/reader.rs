//! A streaming reader that splits one direction's byte stream into frames without
//! buffering payloads.
//!
//! The relay forwards payload bytes exactly as they arrive (client frames keep their
//! mask), so a message of any size passes in bounded memory. Only headers split
//! across reads and control frames (at most 125 payload bytes, §5.5) are held, so
//! the proxy can consume its own pongs and read close codes. Each header and Close
//! payload is checked against its direction's [`Rules`] before any byte of that
//! frame goes to the sink.

use thin_vec::ThinVec;

use super::frame::{
    control_payload_into, FrameError, FrameHeader, MAX_CONTROL_PAYLOAD, OP_BINARY, OP_CLOSE,
    OP_CONTINUATION, OP_TEXT,
};
use super::protocol::{self, Rules};

/// Where the reader delivers a byte stream, frame by frame.
pub trait FrameSink {
    /// A data frame header is complete; `message_done` when it ends a message.
    fn data_frame(&mut self, header: &FrameHeader, message_done: bool);
    /// Bytes of data frames (headers and payload) to forward unchanged.
    fn forward(&mut self, bytes: &[u8]);
    /// A complete control frame (header and still-masked payload).
    fn control(&mut self, header: &FrameHeader, frame: &[u8]);
}

/// Splits one direction's byte stream into frames and checks them against that
/// direction's [`Rules`]. Holds no buffer between frames except a header or control
/// frame split across reads.
#[derive(Debug)]
pub struct FrameReader {
    rules: Rules,
    /// A header or control frame split across reads (empty, unallocated, otherwise;
    /// a `ThinVec`: 8 bytes in every idle tunnel instead of `Vec`'s 24).
    pending: ThinVec<u8>,
    /// Payload bytes of the current data frame still to forward.
    remaining: u64,
    /// Bytes of the current (possibly fragmented) message so far.
    message_len: u64,
    /// A fragmented message is in progress.
    in_message: bool,
}

impl FrameReader {
    /// A reader for frames that follow `rules`.
    pub fn new(rules: Rules) -> FrameReader {
        FrameReader {
            rules,
            pending: ThinVec::new(),
            remaining: 0,
            message_len: 0,
            in_message: false,
        }
    }

    /// A header from the start of `buf` that follows this direction's rules;
    /// `Ok(None)` when more bytes are needed.
    fn header(&self, buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
        let header = FrameHeader::parse(buf)?;
        if let Some(h) = &header {
            self.rules.check_header(h, self.in_message)?;
        }
        Ok(header)
    }

    /// Hands a complete control frame on, once its Close payload (if any) is valid.
    fn control(
        &self,
        h: &FrameHeader,
        frame: &[u8],
        sink: &mut impl FrameSink,
    ) -> Result<(), FrameError> {
        if h.opcode == OP_CLOSE {
            let mut buf = [0u8; MAX_CONTROL_PAYLOAD];
            protocol::check_close(control_payload_into(h, frame, &mut buf))?;
        }
        sink.control(h, frame);
        Ok(())
    }

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
                match self.header(input)? {
                    Some(h) if !h.is_control() => {
                        self.start_data(&h, max_message, sink)?;
                        sink.forward(&input[..h.header_len]);
                        input = &input[h.header_len..];
                    }
                    Some(h) => {
                        let total = h.header_len + h.payload_len as usize;
                        if input.len() >= total {
                            self.control(&h, &input[..total], sink)?;
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
                match self.header(&self.pending)? {
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
            let Some(h) = self.header(&self.pending)? else {
                continue;
            };
            if !h.is_control() {
                let held = std::mem::take(&mut self.pending);
                self.start_data(&h, max_message, sink)?;
                sink.forward(&held);
            } else if self.pending.len() == h.header_len + h.payload_len as usize {
                let held = std::mem::take(&mut self.pending);
                self.control(&h, &held, sink)?;
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
    use crate::proxy::relay::frame::*;
    use crate::proxy::relay::protocol::Extensions;
    use proptest::prelude::*;

    fn client_reader() -> FrameReader {
        FrameReader::new(Rules::from_client(Extensions::None))
    }

    fn backend_reader(ext: Extensions) -> FrameReader {
        FrameReader::new(Rules::from_server(ext))
    }

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
        client_reader().feed(&stream, 0, &mut sink).unwrap();
        assert_eq!(sink.out, stream);
        assert_eq!(sink.messages, 1);
        assert_eq!(sink.controls, vec![(OP_PING, b"p".to_vec())]);
    }

    #[test]
    fn enforces_message_limit_across_fragments() {
        let mut stream = frame(false, OP_BINARY, &[0; 60], None);
        stream.extend(frame(true, OP_CONTINUATION, &[0; 60], None));
        let err = backend_reader(Extensions::None)
            .feed(&stream, 100, &mut Collect::default())
            .unwrap_err();
        assert_eq!(
            err,
            FrameError::TooBig {
                size: 120,
                limit: 100
            }
        );
        assert_eq!(err.close_codes(), (1009, 1009));
    }

    /// Feeds `stream` one byte at a time: what was forwarded before the error, and
    /// the error.
    fn feed_bytewise(mut reader: FrameReader, stream: &[u8]) -> (Vec<u8>, Option<FrameError>) {
        let mut sink = Collect::default();
        for b in stream.chunks(1) {
            if let Err(e) = reader.feed(b, 0, &mut sink) {
                return (sink.out, Some(e));
            }
        }
        (sink.out, None)
    }

    /// A frame that breaks the rules is not forwarded, not even its header, whether
    /// it arrives whole or byte by byte; the valid frames before it are.
    fn refused(reader: impl Fn() -> FrameReader, good: &[u8], bad: &[u8]) -> FrameError {
        let stream = [good, bad].concat();
        let mut sink = Collect::default();
        let err = reader().feed(&stream, 0, &mut sink).unwrap_err();
        assert_eq!(sink.out, good);
        let (out, bytewise) = feed_bytewise(reader(), &stream);
        assert_eq!(out, good);
        assert_eq!(bytewise, Some(err.clone()));
        err
    }

    const K: Option<[u8; 4]> = Some([0x11, 0x22, 0x33, 0x44]);

    #[test]
    fn refuses_unmasked_client_frames() {
        let good = frame(true, OP_TEXT, b"ok", K);
        let err = refused(client_reader, &good, &frame(true, OP_TEXT, b"plain", None));
        assert_eq!(err, FrameError::Protocol("unmasked frame from the client"));
        let err = refused(client_reader, &good, &frame(true, OP_PING, b"", None));
        assert_eq!(err.close_codes(), (1002, 1001));
    }

    #[test]
    fn refuses_masked_backend_frames() {
        let reader = || backend_reader(Extensions::None);
        let good = frame(true, OP_BINARY, &[1; 200], None);
        let err = refused(reader, &good, &frame(true, OP_BINARY, b"x", K));
        assert_eq!(err, FrameError::Protocol("masked frame from the backend"));
    }

    #[test]
    fn refuses_rsv_bits_without_an_extension() {
        let mut rsv2 = frame(true, OP_TEXT, b"x", K);
        rsv2[0] |= 0x20;
        let err = refused(client_reader, &frame(true, OP_TEXT, b"ok", K), &rsv2);
        assert_eq!(err.close_codes(), (1002, 1001));

        // Under permessage-deflate RSV1 passes on a message's first frame only.
        let reader = || backend_reader(Extensions::Deflate);
        let mut first = frame(false, OP_BINARY, b"compressed", None);
        first[0] |= 0x40;
        let mut cont = frame(true, OP_CONTINUATION, b"more", None);
        let mut sink = Collect::default();
        let stream = [first.clone(), cont.clone()].concat();
        reader().feed(&stream, 0, &mut sink).unwrap();
        assert_eq!(sink.out, stream);
        cont[0] |= 0x40;
        refused(reader, &first, &cont);
        let mut ping = frame(true, OP_PING, b"", None);
        ping[0] |= 0x40;
        refused(reader, &[], &ping);
    }

    #[test]
    fn refuses_reserved_opcodes_and_malformed_control_frames() {
        let good = frame(true, OP_TEXT, b"ok", K);
        for bad in [
            frame(true, 0x3, b"", K),
            frame(true, 0xB, b"", K),
            frame(false, OP_PING, b"", K),
            frame(true, OP_PONG, &[0; 126], K),
            frame(true, OP_CONTINUATION, b"no message", K),
        ] {
            let err = refused(client_reader, &good, &bad);
            assert_eq!(err.close_codes(), (1002, 1001), "{bad:?}");
        }
    }

    #[test]
    fn refuses_invalid_close_payloads() {
        let good = frame(true, OP_TEXT, b"ok", K);
        let err = refused(client_reader, &good, &frame(true, OP_CLOSE, &[3], K));
        assert_eq!(err.close_codes(), (1002, 1001));
        let err = refused(
            client_reader,
            &good,
            &frame(true, OP_CLOSE, &close_payload(999, ""), K),
        );
        assert_eq!(err.close_codes(), (1002, 1001));
        let mut bad_utf8 = close_payload(1000, "bye");
        bad_utf8.push(0xc3);
        let err = refused(client_reader, &good, &frame(true, OP_CLOSE, &bad_utf8, K));
        assert_eq!(err, FrameError::InvalidPayload("close reason is not UTF-8"));
        assert_eq!(err.close_codes(), (1007, 1001));

        // Valid closes (masked ones are unmasked to be checked) pass byte for byte.
        for payload in [
            Vec::new(),
            close_payload(1000, ""),
            close_payload(4000, "ça va"),
        ] {
            let f = frame(true, OP_CLOSE, &payload, K);
            let (out, err) = feed_bytewise(client_reader(), &f);
            assert_eq!((out, err), (f, None));
        }
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close_code(&close_payload(1001, "going away")), 1001);
        assert_eq!(close_code(&[]), 1005);
        let long = "é".repeat(100);
        assert!(close_payload(1000, &long).len() <= MAX_CONTROL_PAYLOAD);
    }

    fn arb_frame() -> impl Strategy<Value = (u8, Vec<u8>, [u8; 4])> {
        (
            prop_oneof![Just(OP_BINARY), Just(OP_TEXT), Just(OP_PING), Just(OP_PONG)],
            prop::collection::vec(any::<u8>(), 0..400),
            any::<[u8; 4]>(),
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
            from_client in any::<bool>(),
        ) {
            // Clients mask, servers do not.
            let key = |m: &[u8; 4]| from_client.then_some(*m);
            let stream: Vec<u8> = frames.iter().flat_map(|(op, p, m)| frame(true, *op, p, key(m))).collect();
            let mut reader = if from_client { client_reader() } else { backend_reader(Extensions::None) };
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
            let mut reader = client_reader();
            for chunk in bytes.chunks(cut) {
                if reader.feed(chunk, 1 << 20, &mut Collect::default()).is_err() {
                    break;
                }
            }
        }
    }
}
