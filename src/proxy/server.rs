//! Listeners: accept, terminate TLS, speak HTTP/1.1 with hyper, and send each
//! request down the upgrade or the plain HTTP path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::access_log::{loggable_path, Kind, Record};
use super::auth::TokenSource;
use super::headers::is_websocket_upgrade;
use super::listener_limits::{
    reject, FirstHead, HeadLimits, HeadState, Rejection, MIN_HEADER_BYTES,
};
use super::stream::Stream;
use super::{http_proxy, upgrade, Proxy};

/// Response bodies: wsgate's own short texts or a backend's streamed body.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// TLS handshakes must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener and whether it terminates TLS.
pub struct Listener {
    /// The bound socket.
    pub socket: tokio::net::TcpListener,
    /// TLS settings for `wss` (SNI picks the route's certificate).
    pub tls: Option<Arc<ServerConfig>>,
    /// Request-head timeout and size limit.
    pub limits: HeadLimits,
}

/// A client connection as hyper sees it; [`Upgraded`](hyper::upgrade::Upgraded)
/// downcasts to this.
pub type ClientIo = TokioIo<FirstHead<Stream>>;

/// wsgate's own explanation on a response it made itself (not a backend's): the
/// access log reads it.
#[derive(Clone, Debug)]
pub struct Refusal(pub String);

/// A short plain-text response from wsgate itself.
pub fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|n: Infallible| match n {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.extensions_mut().insert(Refusal(message.to_owned()));
    r
}

/// The host a request is for: the `Host` header, else the URI authority.
pub fn request_host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
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

async fn connection(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    limits: HeadLimits,
) {
    let _ = tcp.set_nodelay(true);
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
    let is_tls = matches!(stream, Stream::Tls(_));
    let head = Arc::new(HeadState::default());
    let io = FirstHead::new(stream, limits.read_timeout, head.clone());
    let service = service_fn({
        let proxy = proxy.clone();
        let head = head.clone();
        move |req: Request<Incoming>| {
            head.head_done();
            let proxy = proxy.clone();
            async move {
                let upgrade = is_websocket_upgrade(req.headers());
                let seen = proxy.access_log.enabled().then(|| Seen::of(&req));
                let resp = if upgrade {
                    upgrade::websocket(&proxy, req, peer, is_tls).await
                } else {
                    http_proxy::forward(&proxy, req, peer, is_tls).await
                };
                if let Some(seen) = seen {
                    seen.log(&proxy, peer, upgrade, &resp);
                }
                Ok::<_, Infallible>(resp)
            }
        }
    });
    // hyper's own timer covers the heads of later requests on a kept-alive
    // connection; the first one is timed by `FirstHead`, which answers 408.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        // `max_buf_size` alone is no limit: a head that arrives in one read is
        // parsed before the buffer size is checked (a 100 KiB header got through).
        .max_header_size(limits.max_bytes)
        .max_buf_size(limits.max_bytes.max(MIN_HEADER_BYTES))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        let reason = if head.timed_out() {
            Some(Rejection::HeaderTimeout)
        } else {
            Rejection::of_hyper_error(&e)
        };
        match reason {
            Some(r) => reject(&proxy.metrics, r, peer, &e.to_string()),
            None => tracing::debug!(client = %peer, error = %e, "connection ended with an error"),
        }
    }
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
    fn log(self, proxy: &Proxy, client: SocketAddr, upgrade: bool, resp: &Response<Body>) {
        let status = resp.status();
        if upgrade && status == StatusCode::SWITCHING_PROTOCOLS {
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
        let mut r = Record::new(kind, client.to_string(), status.as_u16(), outcome);
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
