//! The PROXY protocol (HAProxy's `doc/proxy-protocol.txt`, v1 and v2) in front of a
//! listener: a trusted load balancer names the client before the first byte of
//! TLS or HTTP. `proxy-header` parses; the reading, the trust decision, the size
//! cap, the CRC32C check (the crate parses the TLV but does not verify it) and the
//! deadline are here.
//!
//! The header is peeked and then consumed to its last byte and no further, so what
//! follows it (the ClientHello, the HTTP/2 preface, a request, or a second header,
//! which is payload and fails as HTTP) stays in the socket for the next layer:
//! nothing is buffered here that a later stage would have to be handed.

use std::net::SocketAddr;
use std::time::Duration;

use proxy_header::{ParseConfig, ProxyHeader};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::proxy::client::Cidrs;

/// v2 headers larger than this are refused (NGINX's and go-proxyproto's cap; the
/// protocol allows 64 KiB of TLVs). A v1 header is at most 107 bytes by the spec.
pub const V2_MAX_BYTES: usize = 4096;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_SIGNATURE: &[u8; 6] = b"PROXY ";

/// Which header versions a listener takes (`--proxy-protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// Text headers only.
    V1,
    /// Binary headers only.
    V2,
    /// Either.
    Any,
}

/// What happens to a peer outside `--proxy-protocol-trusted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untrusted {
    /// Closed before any byte is read.
    Reject,
    /// Served as a direct client; whatever it sends is never parsed as a header.
    Direct,
}

/// PROXY protocol settings of the proxy listeners.
#[derive(Clone, Debug)]
pub struct ProxyProtocol {
    /// Versions accepted.
    pub versions: Versions,
    /// Peers that must send a header (and only they may).
    pub trusted: Cidrs,
    /// What happens to other peers.
    pub untrusted: Untrusted,
    /// The whole header must arrive within this.
    pub timeout: Duration,
}

/// Why a connection was closed before any HTTP byte: the `reason` label of
/// `wsgate_proxy_protocol_rejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The peer is not a trusted load balancer (and `--proxy-protocol-untrusted reject`).
    Untrusted,
    /// What came was no valid header of an accepted version (or the peer left first).
    Invalid,
    /// No complete header within `--proxy-protocol-timeout`.
    Timeout,
    /// A v2 header over [`V2_MAX_BYTES`].
    TooLarge,
    /// A v2 CRC32C TLV that does not match the header.
    Crc,
}

impl Refused {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Untrusted => "untrusted",
            Refused::Invalid => "invalid",
            Refused::Timeout => "timeout",
            Refused::TooLarge => "too_large",
            Refused::Crc => "crc",
        }
    }
}

/// What a valid header says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The client; `None` for LOCAL, UNSPEC and v1 `UNKNOWN` (a load balancer's own
    /// health check: the socket address stands).
    pub source: Option<SocketAddr>,
    /// A v2 SSL TLV with the client-SSL bit: the load balancer terminated TLS.
    pub tls: bool,
    /// The v2 AUTHORITY TLV (SNI).
    pub authority: Option<String>,
}

/// Reads one header off `tcp`, consuming exactly its bytes. The caller bounds it
/// in time. A header split across several reads is waited for (the spec asks
/// receivers to tolerate fragments).
pub async fn read_header(tcp: &mut TcpStream, versions: Versions) -> Result<Header, Refused> {
    let config = ParseConfig {
        include_tlvs: true,
        allow_v1: versions != Versions::V2,
        allow_v2: versions != Versions::V1,
    };
    // Most headers fit here (v1 is at most 107 bytes; HAProxy's v2 with TLVs, 80 to
    // 200): no allocation per connection. A longer v2 header gets a buffer of its
    // own size.
    let mut small = [0u8; 256];
    let mut large = Vec::new();
    loop {
        let buf: &mut [u8] = if large.is_empty() {
            &mut small
        } else {
            &mut large
        };
        let n = tcp.peek(buf).await.map_err(|_| Refused::Invalid)?;
        if n == 0 {
            return Err(Refused::Invalid);
        }
        let seen = &buf[..n];
        if !could_be_header(seen, config) {
            return Err(Refused::Invalid);
        }
        if seen.len() >= 16 && seen.starts_with(V2_SIGNATURE) {
            let len = 16 + usize::from(u16::from_be_bytes([seen[14], seen[15]]));
            if len > V2_MAX_BYTES {
                return Err(Refused::TooLarge);
            }
            if len > buf.len() {
                large = vec![0u8; len];
                continue;
            }
        }
        match ProxyHeader::parse(seen, config) {
            Ok((header, used)) => {
                let v2 = seen.starts_with(V2_SIGNATURE);
                if header.tlvs().any(|t| t.is_err()) {
                    return Err(Refused::Invalid);
                }
                if v2 && !crc_matches(&seen[..used]) {
                    return Err(Refused::Crc);
                }
                let parsed = Header {
                    source: header.proxied_address().map(|a| a.source),
                    tls: header.ssl().is_some_and(|s| s.client_ssl()),
                    authority: header.authority().map(str::to_owned),
                };
                tcp.read_exact(&mut buf[..used])
                    .await
                    .map_err(|_| Refused::Invalid)?;
                return Ok(parsed);
            }
            Err(proxy_header::Error::BufferTooShort) => {
                // Peek returns at once while bytes wait: look again a little later
                // (only a trusted load balancer gets here, and rarely).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => return Err(Refused::Invalid),
        }
    }
}

/// Whether `seen` can still be the start of an accepted header: a plain request
/// from a trusted peer is refused at its first bytes, not at the deadline.
fn could_be_header(seen: &[u8], config: ParseConfig) -> bool {
    let prefix_of = |sig: &[u8]| {
        let k = seen.len().min(sig.len());
        seen[..k] == sig[..k]
    };
    (config.allow_v1 && prefix_of(V1_SIGNATURE)) || (config.allow_v2 && prefix_of(V2_SIGNATURE))
}

/// Checks a v2 header's CRC32C TLV, when it has one: the CRC of the whole header
/// with the checksum field zeroed (RFC 4960 Appendix B, as the spec says).
fn crc_matches(header: &[u8]) -> bool {
    let address_bytes = match header[13] >> 4 {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    let mut i = 16 + address_bytes;
    while i + 3 <= header.len() {
        let kind = header[i];
        let len = usize::from(u16::from_be_bytes([header[i + 1], header[i + 2]]));
        if kind == 0x03 && len == 4 && i + 7 <= header.len() {
            let sent =
                u32::from_be_bytes([header[i + 3], header[i + 4], header[i + 5], header[i + 6]]);
            let mut zeroed = header.to_vec();
            zeroed[i + 3..i + 7].fill(0);
            return crc32c::crc32c(&zeroed) == sent;
        }
        i += 3 + len;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Recorded from HAProxy 2.6.12 (shared/notes/edge-anchors-haproxy-bytes.txt).
    const HEALTH_CHECK: &str = "0d0a0d0a000d0a515549540a20000007030004a9b87e8f474554202f6865616c74687a20485454502f312e300d0a0d0a";
    const PASS_THROUGH: &str = "0d0a0d0a000d0a515549540a2111003f7f0000027f000001886f46a0030004f1fc320a05002937463030303030323a383836465f37463030303030313a343641305f36423136314538325f30303030474554202f777320485454502f312e310d0a";
    const TLS_TERMINATED: &str = "0d0a0d0a000d0a515549540a211100767f0000037f000001cafb46a1020010636861742e6578616d706c652e636f6d05002937463030303030333a434146425f37463030303030313a343641315f36423136314538325f303030312000280100000000210007544c5376312e33230016544c535f4145535f3235365f47434d5f534841333834474554202f";

    /// Sends `chunks` to a fresh listener and reads a header on the accepted side;
    /// returns it and the bytes left in the socket.
    async fn read(chunks: Vec<Vec<u8>>, versions: Versions) -> (Result<Header, Refused>, Vec<u8>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for chunk in chunks {
                c.write_all(&chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            c
        });
        let (mut s, _) = l.accept().await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), read_header(&mut s, versions))
            .await
            .unwrap_or(Err(Refused::Timeout));
        drop(writer.await.unwrap());
        let mut rest = Vec::new();
        if r.is_ok() {
            s.read_to_end(&mut rest).await.unwrap();
        }
        (r, rest)
    }

    #[tokio::test]
    async fn haproxy_health_check_is_local_and_its_crc_matches() {
        let (h, rest) = read(vec![hex(HEALTH_CHECK)], Versions::Any).await;
        assert_eq!(h.unwrap(), Header::default());
        assert_eq!(rest, b"GET /healthz HTTP/1.0\r\n\r\n");
    }

    #[tokio::test]
    async fn haproxy_pass_through_names_the_client() {
        let (h, rest) = read(vec![hex(PASS_THROUGH)], Versions::V2).await;
        assert_eq!(h.unwrap().source, Some("127.0.0.2:34927".parse().unwrap()));
        assert_eq!(rest, b"GET /ws HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn ssl_and_authority_tlvs() {
        let (h, _) = read(vec![hex(TLS_TERMINATED)], Versions::Any).await;
        let h = h.unwrap();
        assert!(h.tls);
        assert_eq!(h.authority.as_deref(), Some("chat.example.com"));
        assert_eq!(h.source, Some("127.0.0.3:51963".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_header_in_three_writes_is_accepted() {
        let b = hex(PASS_THROUGH);
        let chunks = vec![b[..5].to_vec(), b[5..20].to_vec(), b[20..].to_vec()];
        let (h, _) = read(chunks, Versions::Any).await;
        assert_eq!(h.unwrap().source.unwrap().ip().to_string(), "127.0.0.2");
        let v1 = b"PROXY TCP4 127.0.0.4 127.0.0.1 58485 18082\r\nGET".to_vec();
        let chunks = vec![v1[..3].to_vec(), v1[3..30].to_vec(), v1[30..].to_vec()];
        let (h, rest) = read(chunks, Versions::V1).await;
        assert_eq!(h.unwrap().source, Some("127.0.0.4:58485".parse().unwrap()));
        assert_eq!(rest, b"GET");
    }

    #[tokio::test]
    async fn refusals() {
        let mut bad_crc = hex(PASS_THROUGH);
        bad_crc[32] ^= 0xff;
        assert_eq!(
            read(vec![bad_crc], Versions::Any).await.0,
            Err(Refused::Crc)
        );
        let mut huge = hex(PASS_THROUGH)[..16].to_vec();
        huge[14..16].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(
            read(vec![huge], Versions::Any).await.0,
            Err(Refused::TooLarge)
        );
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(
            read(vec![plain], Versions::Any).await.0,
            Err(Refused::Invalid)
        );
        let v1 = b"PROXY TCP4 127.0.0.4 127.0.0.1 58485 18082\r\n".to_vec();
        assert_eq!(read(vec![v1], Versions::V2).await.0, Err(Refused::Invalid));
        assert_eq!(
            read(vec![b"PROX".to_vec()], Versions::Any).await.0,
            Err(Refused::Timeout)
        );
    }

    #[tokio::test]
    async fn a_v2_header_of_a_few_kilobytes_is_read_whole() {
        let mut h = proxy_header::ProxyHeader::with_address(proxy_header::ProxiedAddress::stream(
            "198.51.100.7:4000".parse().unwrap(),
            "127.0.0.1:443".parse().unwrap(),
        ));
        h.append_tlv(proxy_header::Tlv::Noop(3000));
        let mut bytes = Vec::new();
        h.encode_v2(&mut bytes).unwrap();
        bytes.extend_from_slice(b"GET");
        let (r, rest) = read(
            vec![bytes[..100].to_vec(), bytes[100..].to_vec()],
            Versions::V2,
        )
        .await;
        assert_eq!(r.unwrap().source.unwrap().port(), 4000);
        assert_eq!(rest, b"GET");
    }

    #[tokio::test]
    async fn a_second_header_stays_in_the_socket() {
        let mut two = hex(HEALTH_CHECK)[..23].to_vec();
        two.extend(two.clone());
        let (h, rest) = read(vec![two.clone()], Versions::Any).await;
        assert!(h.is_ok());
        assert_eq!(rest, two[23..]);
    }
}
