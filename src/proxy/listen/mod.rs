//! Listeners: accept, terminate TLS, speak HTTP/1.1 (the first request's WebSocket
//! upgrade on wsgate's own path, [`http1`], the rest with hyper) or HTTP/2 (on the
//! `h2` crate, [`http2`]), and send each request down the upgrade (an HTTP/1.1
//! Upgrade or an HTTP/2 extended CONNECT) or the plain HTTP path.

pub mod gateway;
mod h2_guard;
mod http1;
mod http2;
pub mod limits;
pub mod proxy_protocol;
pub(crate) mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpInfo;
use rustls::ServerConfig;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::proxy::access_log::{loggable_path, Kind, Record};
use crate::proxy::client::{canonical, ClientAddr, ConnAddr};
use crate::proxy::first_head::{FirstHead, HeadState, Rewind};
use crate::proxy::handshake::forwarded::ForwardedTrust;
use crate::proxy::handshake::headers::is_websocket_upgrade;
use crate::proxy::handshake::{self as upgrade, path, plain_http as http_proxy, Opening};
use crate::proxy::listen::h2_guard::{FloodGuard, Flooded};
use crate::proxy::live::Proxy;
use crate::proxy::registry::ClientProtocol;
use crate::proxy::response::{boxed, status, Body, Refusal, TunnelOpened};
use crate::proxy::route::auth::TokenSource;
use crate::proxy::route::table::request_host;
use crate::proxy::stream::Stream;
use limits::{reject, HeadLimits, Rejection};
use proxy_protocol::{ProxyProtocol, Refused, Untrusted};

/// TLS handshakes must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listener and whether it terminates TLS.
pub struct Listener {
    /// The bound socket.
    pub socket: tokio::net::TcpListener,
    /// TLS settings for `wss` (SNI picks the route's certificate).
    pub tls: Option<Arc<ServerConfig>>,
    /// Request-head timeout and size limit.
    pub limits: HeadLimits,
    /// HTTP/2 (ALPN `h2` with TLS, prior knowledge without); `None`: HTTP/1.1 only.
    pub http2: Option<Http2Settings>,
    /// PROXY protocol from trusted load balancers; `None`: off.
    pub proxy_protocol: Option<Arc<ProxyProtocol>>,
    /// Whose `X-Forwarded-For` names the client.
    pub forwarded: Arc<ForwardedTrust>,
    /// A Gateway listener's data-plane port: only the Gateway API rules of that
    /// port are served here. `None`: wsgate's own listener (`WebSocketRoute`s).
    pub gateway_port: Option<u16>,
}

/// HTTP/2 on a listener.
#[derive(Clone, Copy, Debug)]
pub struct Http2Settings {
    /// `--http2-max-concurrent-streams`: streams (tunnels and requests) at once on
    /// one connection.
    pub max_concurrent_streams: u32,
    /// `--http2-stream-send-buffer`: what wsgate buffers per stream toward a client
    /// that reads slowly; a connection that stops reading pins at most this times
    /// `max_concurrent_streams`.
    pub stream_send_buffer: usize,
}

/// Accepts connections until shutdown begins.
pub async fn serve_listener(proxy: Arc<Proxy>, listener: Listener) {
    let mut stop = proxy.shutdown_signal();
    loop {
        tokio::select! {
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break,
            r = listener.socket.accept() => match r {
                Ok((tcp, peer)) => {
                    tokio::spawn(connection(
                        proxy.clone(),
                        tcp,
                        peer,
                        listener.tls.clone(),
                        listener.limits,
                        listener.http2,
                        listener.proxy_protocol.clone(),
                        listener.forwarded.clone(),
                        listener.gateway_port,
                    ));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    proxy: Arc<Proxy>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    limits: HeadLimits,
    http2: Option<Http2Settings>,
    proxy_protocol: Option<Arc<ProxyProtocol>>,
    forwarded: Arc<ForwardedTrust>,
    gateway_port: Option<u16>,
) {
    let _ = tcp.set_nodelay(true);
    let mut conn = ConnAddr::direct(peer, tls.is_some());
    conn.gateway_port = gateway_port;
    if let Some(pp) = &proxy_protocol {
        match proxy_header(&mut tcp, pp, &mut conn).await {
            Ok(()) => {}
            Err(refused) => {
                proxy
                    .metrics
                    .proxy_protocol_rejections_total
                    .with_label_values(&[refused.as_str()])
                    .inc();
                // Debug, not louder: an idle health check or a port scan ends here
                // on every probe (ingress-nginx#6996's log floods).
                tracing::debug!(client = %peer, reason = refused.as_str(), "PROXY protocol: connection closed");
                return;
            }
        }
    }
    let stream = match tls {
        Some(cfg) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, TlsAcceptor::from(cfg).accept(tcp))
                .await
            {
                Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    reject(
                        &proxy.metrics,
                        Rejection::TlsHandshake,
                        peer,
                        &e.to_string(),
                    );
                    return;
                }
                Err(_) => {
                    reject(
                        &proxy.metrics,
                        Rejection::TlsHandshake,
                        peer,
                        "handshake not finished within 10s",
                    );
                    return;
                }
            }
        }
        None => Stream::Tcp(tcp),
    };
    // The first head's deadline runs from here, the protocol sniff included.
    let head_by = Instant::now() + limits.read_timeout;
    let h2 = match (&stream, http2) {
        (_, None) => None,
        (Stream::Tls(s), Some(h2)) => (s.get_ref().1.alpn_protocol() == Some(b"h2")).then_some(h2),
        (Stream::Tcp(tcp), Some(h2)) => match sniff_preface(tcp, head_by).await {
            Some(true) => Some(h2),
            Some(false) => None,
            None => return,
        },
        (_, Some(_)) => None,
    };
    let protocol = if h2.is_some() {
        ClientProtocol::H2
    } else {
        ClientProtocol::Http1
    };
    let gauge = proxy
        .metrics
        .client_connections_active
        .with_label_values(&[if h2.is_some() { "h2" } else { "http1" }]);
    gauge.inc();
    let head = Arc::new(HeadState::default());
    let origin = Arc::new(Origin {
        proxy: proxy.clone(),
        conn,
        forwarded,
        protocol,
    });
    let flooded = Flooded::default();
    // How the connection ended when not cleanly: what it says about the client
    // (if anything), and the error.
    let result = match h2 {
        Some(settings) => {
            let io = FirstHead::new(
                Rewind::new(Bytes::new(), stream),
                head_by.saturating_duration_since(Instant::now()),
                head.clone(),
            );
            let io = FloodGuard::new(io.silent(), flooded.clone());
            http2::serve(origin, io, settings, limits, head.clone())
                .await
                .map_err(|e| {
                    let reason = match &e {
                        http2::Ended::H2(e) => Rejection::of_h2_error(e),
                        http2::Ended::KeepAlive => None,
                    };
                    (reason, e.to_string())
                })
        }
        None => http1::serve(origin, stream, limits, head_by, head.clone())
            .await
            .map_err(|e| (Rejection::of_hyper_error(&e), e.to_string())),
    };
    gauge.dec();
    if let Err((reason, e)) = result {
        let reason = if head.timed_out() {
            Some(Rejection::HeaderTimeout)
        } else if flooded.get() {
            Some(Rejection::Http2Abuse)
        } else {
            reason
        };
        match reason {
            Some(r) => reject(&proxy.metrics, r, peer, &e),
            None => tracing::debug!(client = %peer, error = %e, "connection ended with an error"),
        }
    }
}

/// What every request on one client connection shares, whichever path reads it.
pub(super) struct Origin {
    proxy: Arc<Proxy>,
    conn: ConnAddr,
    forwarded: Arc<ForwardedTrust>,
    protocol: ClientProtocol,
}

impl Origin {
    /// The client, the normalised path and the access log around `serve`, for an
    /// upgrade and a plain request alike.
    async fn request<B, F, Fut>(
        &self,
        mut req: Request<B>,
        upgrade: bool,
        serve: F,
    ) -> Response<Body>
    where
        F: FnOnce(Request<B>, ClientAddr) -> Fut,
        Fut: Future<Output = Response<Body>>,
    {
        let proxy = &self.proxy;
        // One address for the connection (every HTTP/2 stream shares it); the
        // request's own client may come from a trusted proxy's X-Forwarded-For.
        let Ok(client) = self.forwarded.client_of(&self.conn, req.headers_mut()) else {
            return status(
                StatusCode::BAD_REQUEST,
                "X-Forwarded-For has fewer entries than --trusted-hops",
            );
        };
        // Routes match, and backends receive, the normalised path.
        let bad_path = match path::normalize_uri(req.uri()) {
            Ok(Some(uri)) => {
                *req.uri_mut() = uri;
                false
            }
            Ok(None) => false,
            Err(_) => true,
        };
        let seen = proxy
            .access_log
            .enabled()
            .then(|| (Seen::of(&req), client.clone()));
        let resp = if bad_path {
            refuse_path(proxy, upgrade)
        } else {
            serve(req, client).await
        };
        if let Some((seen, client)) = seen {
            seen.log(proxy, &client, upgrade, &resp);
        }
        resp
    }

    /// A WebSocket upgrade (HTTP/1.1) or extended CONNECT (HTTP/2): the answer, and
    /// the tunnel to open on the client's connection once the answer is out.
    pub(super) async fn upgrade(&self, req: Request<()>) -> (Response<Body>, Option<Opening>) {
        let mut opening = None;
        let slot = &mut opening;
        let resp = self
            .request(req, true, |req, client| async move {
                let (resp, o) = upgrade::websocket(&self.proxy, req, client, self.protocol).await;
                *slot = o;
                resp
            })
            .await;
        (resp, opening)
    }

    /// A request that opens no tunnel: a CONNECT that is not a WebSocket's is
    /// refused, anything else goes to the route's backends.
    pub(super) async fn plain(&self, req: Request<Body>) -> Response<Body> {
        let proxy = &self.proxy;
        if req.method() == http::Method::CONNECT {
            // wsgate is no forward proxy: an HTTP/1.1 CONNECT, or an HTTP/2 one
            // without `:protocol`, names a host to tunnel to, not a route.
            return self
                .request(req, false, |_, _| async { refuse_connect(proxy) })
                .await;
        }
        self.request(req, false, |req, client| {
            http_proxy::forward(proxy, req, client)
        })
        .await
    }
}

/// hyper's service for an HTTP/1.1 client connection: every request the listener's
/// own path did not answer (anything but a first-request WebSocket upgrade).
fn hyper_service(
    origin: Arc<Origin>,
    head: Arc<HeadState>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Send {
    service_fn(move |mut req: Request<Incoming>| {
        head.head_done();
        let origin = origin.clone();
        async move {
            let resp = if is_websocket_upgrade(req.headers()) {
                let on_client = hyper::upgrade::on(&mut req);
                let (resp, opening) = origin.upgrade(req.map(|_| ())).await;
                if let Some(opening) = opening {
                    tokio::spawn(opening.after_hyper(on_client));
                }
                resp
            } else {
                origin.plain(req.map(boxed)).await
            };
            Ok::<_, Infallible>(resp)
        }
    })
}

/// Reads a trusted load balancer's PROXY header into `conn` within the timeout;
/// an untrusted peer is refused before any byte is read, or (`direct`) served as
/// its own client with nothing parsed.
async fn proxy_header(
    tcp: &mut TcpStream,
    pp: &ProxyProtocol,
    conn: &mut ConnAddr,
) -> Result<(), Refused> {
    if !pp.trusted.contains(conn.peer.ip()) {
        return match pp.untrusted {
            Untrusted::Reject => Err(Refused::Untrusted),
            Untrusted::Direct => Ok(()),
        };
    }
    let header = tokio::time::timeout(pp.timeout, proxy_protocol::read_header(tcp, pp.versions))
        .await
        .map_err(|_| Refused::Timeout)??;
    if let Some(source) = header.source {
        conn.source = canonical(source);
    }
    conn.tls |= header.tls;
    conn.authority = header.authority.map(Arc::from);
    Ok(())
}

/// Whether a cleartext connection opens with the HTTP/2 preface (h2c with prior
/// knowledge). Looks without consuming; `None` when the client left or sent
/// nothing that decides it by `by`.
///
/// A client that sent a strict prefix of the preface ("P" could still be "POST")
/// is waited for, not polled: the peek reports "would block", which clears the
/// socket's readiness, so the task sleeps until more bytes arrive. (It peeked every
/// 5 ms before: 200 such sockets cost 0.5 s of CPU in 5 s.)
async fn sniff_preface(tcp: &TcpStream, by: Instant) -> Option<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let look = async {
        loop {
            tcp.readable().await.ok()?;
            let peeked = tcp.try_io(Interest::READABLE, || {
                let n = peek(tcp, &mut buf)?;
                if n > 0 && n < H2_PREFACE.len() && buf[..n] == H2_PREFACE[..n] {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match peeked {
                Ok(0) => return None,
                Ok(n) => return Some(buf[..n] == H2_PREFACE[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
        }
    };
    match tokio::time::timeout_at(by.into(), look).await {
        Ok(r) => r,
        // Undecided at the deadline: HTTP/1.1, whose head timer answers 408 at once.
        Err(_) => Some(false),
    }
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)`: the bytes waiting on the socket, left there.
fn peek(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the call's
    // duration, and the descriptor belongs to `tcp`, which outlives it.
    let n = unsafe {
        libc::recv(
            tcp.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// 400 for a path with an encoded separator, counted like any refused request.
fn refuse_path(proxy: &Proxy, upgrade: bool) -> Response<Body> {
    let m = &proxy.metrics;
    if upgrade {
        m.connections_total
            .with_label_values(&["", "", "rejected"])
            .inc();
    } else {
        m.http_requests_total
            .with_label_values(&["", "", "400"])
            .inc();
    }
    status(
        StatusCode::BAD_REQUEST,
        "encoded / or \\ in the path (%2F, %5C) is not accepted",
    )
}

/// 405 for a CONNECT that is not a WebSocket's, counted like any refused request.
fn refuse_connect(proxy: &Proxy) -> Response<Body> {
    proxy
        .metrics
        .http_requests_total
        .with_label_values(&["", "", "405"])
        .inc();
    let mut r = status(
        StatusCode::METHOD_NOT_ALLOWED,
        "CONNECT is not proxied: wsgate is a reverse proxy",
    );
    r.headers_mut().insert(
        http::header::ALLOW,
        http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    r
}

/// What the access log needs of a request, taken before the request is consumed.
struct Seen {
    start: Instant,
    method: http::Method,
    host: String,
    uri: http::Uri,
}

impl Seen {
    fn of<B>(req: &Request<B>) -> Self {
        Seen {
            start: Instant::now(),
            method: req.method().clone(),
            host: request_host(req),
            uri: req.uri().clone(),
        }
    }

    /// Writes the line of a refused upgrade or of a plain HTTP request (a tunnel
    /// writes its own when it closes).
    fn log(self, proxy: &Proxy, client: &ClientAddr, upgrade: bool, resp: &Response<Body>) {
        let status = resp.status();
        if resp.extensions().get::<TunnelOpened>().is_some() {
            return;
        }
        let refusal = resp.extensions().get::<Refusal>();
        let outcome = match (refusal, status.as_u16()) {
            (None, _) if upgrade => "backend_rejected",
            (None, _) => "proxied",
            (Some(_), 429 | 503) => "limited",
            (Some(r), 502) if r.0.contains("invalid") => "backend_rejected",
            (Some(_), 502) => "backend_unavailable",
            (Some(_), 504) => "timeout",
            (Some(_), _) => "rejected",
        };
        let kind = if upgrade { Kind::Upgrade } else { Kind::Http };
        let mut r = Record::new(kind, client, status.as_u16(), outcome);
        // A second route lookup, made only when the access log is on: the
        // handlers keep their single lookup on the hot path.
        let live = proxy.live();
        let route = live.table.find(&self.host, self.uri.path());
        if let Some(route) = route {
            r.namespace = Some(route.key.namespace.clone());
            r.route = Some(route.key.name.clone());
        }
        // The route's query-parameter token sources are redacted whatever their name.
        let secret_params: Vec<&str> = route
            .and_then(|route| route.auth.as_deref())
            .map(|auth| {
                auth.sources
                    .iter()
                    .filter_map(|s| match s {
                        TokenSource::Query(name) => Some(name.as_str()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        r.path = Some(loggable_path(&self.uri, &secret_params));
        r.method = Some(self.method.to_string());
        r.backend = resp
            .extensions()
            .get::<HttpInfo>()
            .map(|i| i.remote_addr().to_string());
        r.reason = refusal.map(|x| x.0.clone());
        r.duration_s = (self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        proxy.access_log.write(r);
    }
}
