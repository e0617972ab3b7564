//! RFC 6455 frames on raw sockets, for tests that need byte-level control: a client
//! that fragments, interleaves control frames or never answers pings; a backend that
//! records the exact bytes it receives or answers the upgrade wrongly.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::http::{read_head, read_response, HttpResponse};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One WebSocket frame; `payload` is always the unmasked payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            fin: true,
            rsv: 0,
            opcode,
            mask: None,
            payload: payload.into(),
        }
    }
    pub fn text(s: &str) -> Frame {
        Frame::new(OP_TEXT, s.as_bytes())
    }
    pub fn binary(b: impl Into<Vec<u8>>) -> Frame {
        Frame::new(OP_BINARY, b)
    }
    pub fn ping(b: impl Into<Vec<u8>>) -> Frame {
        Frame::new(OP_PING, b)
    }
    pub fn pong(b: impl Into<Vec<u8>>) -> Frame {
        Frame::new(OP_PONG, b)
    }
    pub fn cont(b: impl Into<Vec<u8>>) -> Frame {
        Frame::new(OP_CONT, b)
    }
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        Frame::new(OP_CLOSE, p)
    }
    /// This frame with FIN set as given.
    pub fn fin(mut self, fin: bool) -> Frame {
        self.fin = fin;
        self
    }
    /// This frame masked with `key` (what a client must send).
    pub fn masked(mut self, key: [u8; 4]) -> Frame {
        self.mask = Some(key);
        self
    }

    /// The wire bytes, with the shortest length encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(((self.fin as u8) << 7) | (self.rsv << 4) | self.opcode);
        let m = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(m | len as u8);
        } else if len <= 0xFFFF {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }

    /// The close code of a Close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }
}

/// Reads one frame (unmasking its payload, keeping its key in `mask`).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    let fin = h[0] & 0x80 != 0;
    let rsv = (h[0] >> 4) & 0x7;
    let opcode = h[0] & 0xF;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await?;
            u16::from_be_bytes(b) as u64
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => n as u64,
    };
    let mask = if masked {
        let mut k = [0u8; 4];
        r.read_exact(&mut k).await?;
        Some(k)
    } else {
        None
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if let Some(k) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    Ok(Frame {
        fin,
        rsv,
        opcode,
        mask,
        payload,
    })
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// A valid upgrade request for `path` with `key`, plus `extra` headers.
pub fn upgrade_request(host: &str, path: &str, key: &str, extra: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        req += &format!("{k}: {v}\r\n");
    }
    req + "\r\n"
}

/// One end of a WebSocket on a raw socket.
pub struct RawWs {
    pub io: BufReader<TcpStream>,
}

impl RawWs {
    pub async fn send(&mut self, frame: &Frame) {
        self.send_bytes(&frame.encode()).await;
    }
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.io
            .get_mut()
            .write_all(bytes)
            .await
            .expect("write to wsgate");
    }
    /// The next frame, within `secs`.
    pub async fn recv(&mut self, secs: f64) -> Frame {
        super::within(secs, "a frame", read_frame(&mut self.io))
            .await
            .expect("read a frame")
    }
    /// The next frame or the I/O error (EOF, reset) that ended the stream, within `secs`.
    pub async fn try_recv(&mut self, secs: f64) -> std::io::Result<Frame> {
        super::within(
            secs,
            "a frame or the end of the stream",
            read_frame(&mut self.io),
        )
        .await
    }
    /// The next frame that is not a Ping or Pong.
    pub async fn recv_data(&mut self, secs: f64) -> Frame {
        super::within(secs, "a data or close frame", async {
            loop {
                let f = read_frame(&mut self.io).await.expect("read a frame");
                if f.opcode != OP_PING && f.opcode != OP_PONG {
                    return f;
                }
            }
        })
        .await
    }
    /// Reads exactly `n` raw bytes.
    pub async fn read_bytes(&mut self, n: usize, secs: f64) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        super::within(
            secs,
            &format!("{n} raw bytes"),
            self.io.read_exact(&mut buf),
        )
        .await
        .expect("read raw bytes");
        buf
    }
    /// Expects a Close with `code` as the next frame and then the end of the TCP
    /// stream (nothing else: the proxy sends nothing after its Close).
    pub async fn expect_close_then_eof(&mut self, code: u16, secs: f64) -> Frame {
        let frames = self.until_eof(secs).await;
        match frames.as_slice() {
            [close] if close.close_code() == Some(code) => close.clone(),
            _ => panic!("expected Close {code} and then the end of the stream, got {frames:?}"),
        }
    }
    /// Reads until the peer closes the TCP connection; returns the frames read on
    /// the way.
    pub async fn until_eof(&mut self, secs: f64) -> Vec<Frame> {
        super::within(secs, "the connection to close", async {
            let mut frames = vec![];
            while let Ok(f) = read_frame(&mut self.io).await {
                frames.push(f);
            }
            frames
        })
        .await
    }
}

/// A raw client's upgrade through wsgate: the response and, when it was a 101, the
/// socket to keep talking on.
pub struct RawUpgrade {
    pub response: HttpResponse,
    pub key: String,
    pub ws: RawWs,
}

/// Connects to `addr` (from `source` when given) and sends an upgrade request for
/// `path` with `extra` headers.
pub async fn raw_upgrade_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> RawUpgrade {
    let key = new_key();
    let req = upgrade_request(&addr.to_string(), path, &key, extra);
    raw_request_from(source, addr, &req, key).await
}

pub async fn raw_upgrade(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> RawUpgrade {
    raw_upgrade_from(None, addr, path, extra).await
}

/// Sends `request` verbatim and reads the response head (and body, unless 101).
pub async fn raw_request(addr: SocketAddr, request: &str) -> RawUpgrade {
    raw_request_from(None, addr, request, String::new()).await
}

async fn raw_request_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    request: &str,
    key: String,
) -> RawUpgrade {
    super::within(10.0, "the upgrade response", async {
        let stream = connect_from(source, addr).await;
        let mut io = BufReader::new(stream);
        io.get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let method = request.split(' ').next().unwrap_or("GET").to_string();
        let response = read_response(&mut io, &method)
            .await
            .expect("read the response");
        RawUpgrade {
            response,
            key,
            ws: RawWs { io },
        }
    })
    .await
}

/// A TCP connection to `addr`, from a chosen loopback source address when given.
pub async fn connect_from(source: Option<std::net::IpAddr>, addr: SocketAddr) -> TcpStream {
    match source {
        None => TcpStream::connect(addr).await.expect("connect"),
        Some(ip) => {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(ip, 0))
                .expect("bind source address");
            sock.connect(addr).await.expect("connect")
        }
    }
}

/// A backend on a raw socket: the test decides how each upgrade is answered.
pub struct RawBackend {
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

/// An upgrade request as a raw backend received it.
pub struct RawRequest {
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub ws: RawWs,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Answers with a correct 101.
    pub async fn accept(mut self) -> RawWs {
        let key = self
            .header("sec-websocket-key")
            .expect("Sec-WebSocket-Key")
            .to_string();
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&key)
        );
        self.ws.send_bytes(resp.as_bytes()).await;
        self.ws
    }
    /// Answers with `raw` verbatim.
    pub async fn respond(mut self, raw: &str) -> RawWs {
        self.ws.send_bytes(raw.as_bytes()).await;
        self.ws
    }
}

impl RawBackend {
    pub async fn bind() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        RawBackend { listener, addr }
    }

    /// Accepts a connection and reads its request head, within `secs`.
    pub async fn accept(&self, secs: f64) -> RawRequest {
        super::within(secs, "wsgate to connect to the raw backend", async {
            let (stream, _) = self.listener.accept().await.expect("accept");
            let mut io = BufReader::new(stream);
            let head = read_request_head(&mut io).await;
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(head.as_bytes())
                .expect("parse the upgrade request");
            let headers = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            RawRequest {
                head,
                headers,
                ws: RawWs { io },
            }
        })
        .await
    }
}

async fn read_request_head(io: &mut BufReader<TcpStream>) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let n = io
            .read_until(b'\n', &mut head)
            .await
            .expect("read request head");
        assert!(n > 0, "connection closed inside the request head");
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads a response head from a raw stream (re-exported for TLS tests).
pub async fn read_response_head<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> (u16, Vec<(String, String)>) {
    read_head(r).await.expect("read response head")
}

/// Sleeps; a readable name for the pauses that timing tests need.
pub async fn pause(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}
