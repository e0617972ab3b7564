//! RFC 6455's rules for what each leg may send.
//!
//! wsgate is the server to the client and the client to the backend, so each
//! direction has its own rules: a client's frames must be masked and a server's must
//! not (§5.1), RSV bits are allowed only where a negotiated extension defines them
//! (§5.2), and a Close payload is empty or a valid code with a UTF-8 reason (§5.5.1,
//! §7.4). [`FrameReader`](super::frame::FrameReader) applies them to every header
//! and Close frame before anything of that frame is forwarded, so a frame that
//! breaks them never reaches the other side.

use super::frame::{FrameError, FrameHeader, OP_BINARY, OP_TEXT};

/// RSV1: "per-message compressed" under permessage-deflate (RFC 7692 §6).
const RSV1: u8 = 0b100;

/// What the backend's 101 negotiated in `Sec-WebSocket-Extensions` (§9.1), as far
/// as RSV bits go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Extensions {
    /// No extension: every RSV bit must be 0.
    #[default]
    None,
    /// permessage-deflate (RFC 7692): RSV1 may mark the first frame of a data message.
    Deflate,
    /// An extension wsgate does not know: it may define any RSV bit, so none is refused.
    Unknown,
}

impl Extensions {
    /// Reads the `Sec-WebSocket-Extensions` values of a 101 (`name; params, name2`).
    pub fn negotiated<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Extensions {
        let mut out = Extensions::None;
        for value in values {
            for ext in value.split(|&b| b == b',') {
                let name = ext.split(|&b| b == b';').next().unwrap_or_default();
                let name = name.trim_ascii();
                if name.is_empty() {
                    continue;
                }
                if name.eq_ignore_ascii_case(b"permessage-deflate") {
                    if out == Extensions::None {
                        out = Extensions::Deflate;
                    }
                } else {
                    out = Extensions::Unknown;
                }
            }
        }
        out
    }
}

/// The rules one direction's frames follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Frames come from a client and must be masked; otherwise they must not be.
    from_client: bool,
    extensions: Extensions,
}

impl Rules {
    /// Frames a client sends (to wsgate): masked.
    pub fn from_client(extensions: Extensions) -> Rules {
        Rules {
            from_client: true,
            extensions,
        }
    }

    /// Frames a server (the backend) sends: unmasked.
    pub fn from_server(extensions: Extensions) -> Rules {
        Rules {
            from_client: false,
            extensions,
        }
    }

    /// Checks a header; `in_message` when a fragmented data message is open (so a
    /// data frame is a continuation, not a message's first frame).
    pub fn check_header(&self, h: &FrameHeader, in_message: bool) -> Result<(), FrameError> {
        match (self.from_client, h.mask.is_some()) {
            (true, false) => return Err(FrameError::Protocol("unmasked frame from the client")),
            (false, true) => return Err(FrameError::Protocol("masked frame from the backend")),
            _ => {}
        }
        let allowed = match self.extensions {
            Extensions::None => 0,
            // RFC 7692 §6.1: only a message's first frame carries RSV1, never a
            // control frame or a continuation.
            Extensions::Deflate if matches!(h.opcode, OP_TEXT | OP_BINARY) && !in_message => RSV1,
            Extensions::Deflate => 0,
            Extensions::Unknown => 0b111,
        };
        if h.rsv & !allowed != 0 {
            return Err(FrameError::Protocol(
                "RSV bit that no negotiated extension defines",
            ));
        }
        Ok(())
    }
}

/// Checks an (unmasked) Close payload: empty, or a code a peer may send followed by
/// a UTF-8 reason (§5.5.1, §7.4).
pub fn check_close(payload: &[u8]) -> Result<(), FrameError> {
    match payload {
        [] => Ok(()),
        [_] => Err(FrameError::Protocol("close payload of 1 byte")),
        [hi, lo, reason @ ..] => {
            if !valid_close_code(u16::from_be_bytes([*hi, *lo])) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason)
                .map(|_| ())
                .map_err(|_| FrameError::InvalidPayload("close reason is not UTF-8"))
        }
    }
}

/// Codes a peer may put on the wire (§7.4.1, §7.4.2 and the IANA registry): 1004,
/// 1005, 1006 and 1015 are reserved for reporting and never sent.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::relay::frame::{OP_CLOSE, OP_CONTINUATION, OP_PING};

    fn header(rsv: u8, opcode: u8, mask: Option<[u8; 4]>) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv,
            opcode,
            mask,
            payload_len: 0,
            header_len: 2,
        }
    }

    const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    #[test]
    fn a_client_frame_must_be_masked() {
        let rules = Rules::from_client(Extensions::None);
        assert_eq!(rules.check_header(&header(0, OP_TEXT, KEY), false), Ok(()));
        let err = rules
            .check_header(&header(0, OP_TEXT, None), false)
            .unwrap_err();
        assert_eq!(err.close_codes(), (1002, 1001));
        assert!(rules
            .check_header(&header(0, OP_PING, None), false)
            .is_err());
    }

    #[test]
    fn a_backend_frame_must_not_be_masked() {
        let rules = Rules::from_server(Extensions::None);
        assert_eq!(
            rules.check_header(&header(0, OP_BINARY, None), false),
            Ok(())
        );
        let err = rules
            .check_header(&header(0, OP_BINARY, KEY), false)
            .unwrap_err();
        assert_eq!(err, FrameError::Protocol("masked frame from the backend"));
    }

    #[test]
    fn rsv_bits_need_an_extension_that_defines_them() {
        let none = Rules::from_server(Extensions::None);
        for rsv in 1..8 {
            assert!(none
                .check_header(&header(rsv, OP_TEXT, None), false)
                .is_err());
        }
        let deflate = Rules::from_server(Extensions::Deflate);
        assert_eq!(
            deflate.check_header(&header(4, OP_TEXT, None), false),
            Ok(())
        );
        assert_eq!(
            deflate.check_header(&header(4, OP_BINARY, None), false),
            Ok(())
        );
        // RSV2/RSV3 stay undefined; RSV1 is for a message's first frame only.
        assert!(deflate
            .check_header(&header(2, OP_TEXT, None), false)
            .is_err());
        assert!(deflate
            .check_header(&header(1, OP_TEXT, None), false)
            .is_err());
        assert!(deflate
            .check_header(&header(4, OP_CONTINUATION, None), true)
            .is_err());
        assert!(deflate
            .check_header(&header(4, OP_PING, None), false)
            .is_err());
        let unknown = Rules::from_server(Extensions::Unknown);
        assert_eq!(
            unknown.check_header(&header(7, OP_CLOSE, None), false),
            Ok(())
        );
    }

    #[test]
    fn negotiated_extensions_from_the_101() {
        let ext = |v: &[&str]| Extensions::negotiated(v.iter().map(|s| s.as_bytes()));
        assert_eq!(ext(&[]), Extensions::None);
        assert_eq!(ext(&[" "]), Extensions::None);
        assert_eq!(
            ext(&["permessage-deflate; client_max_window_bits=15"]),
            Extensions::Deflate
        );
        assert_eq!(ext(&["Permessage-Deflate"]), Extensions::Deflate);
        assert_eq!(
            ext(&["permessage-deflate", "x-webkit-deflate-frame"]),
            Extensions::Unknown
        );
        assert_eq!(ext(&["foo, permessage-deflate"]), Extensions::Unknown);
    }

    #[test]
    fn close_payloads() {
        assert_eq!(check_close(b""), Ok(()));
        assert_eq!(check_close(&[0x03, 0xe8]), Ok(()));
        let mut p = 4001u16.to_be_bytes().to_vec();
        p.extend_from_slice("ça va".as_bytes());
        assert_eq!(check_close(&p), Ok(()));

        let one_byte = check_close(&[0x03]).unwrap_err();
        assert_eq!(one_byte.close_codes(), (1002, 1001));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let err = check_close(&code.to_be_bytes()).unwrap_err();
            assert_eq!(err.close_codes(), (1002, 1001), "code {code}");
        }
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.extend_from_slice(&[b'o', b'k', 0xff]);
        let err = check_close(&bad).unwrap_err();
        assert_eq!(err.close_codes(), (1007, 1001));
    }

    #[test]
    fn valid_codes() {
        let valid: Vec<u16> = (0..=u16::MAX).filter(|&c| valid_close_code(c)).collect();
        assert_eq!(valid.len(), 4 + 8 + 2000);
        assert!([1000, 1003, 1007, 1014, 3000, 4999]
            .iter()
            .all(|&c| valid_close_code(c)));
    }
}
