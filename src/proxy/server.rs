//! Listeners: accept, terminate TLS, speak HTTP/1.1 with hyper, and send each
//! request down the upgrade or the plain HTTP path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::headers::is_websocket_upgrade;
use super::stream::Stream;
use super::{http_proxy, upgrade, Proxy};

/// Response bodies: wsgate's own short texts or a backend's streamed body.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Request headers must arrive within this (slowloris cannot hold the listener).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head hyper buffers; larger heads get 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// TLS handshakes must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener and whether it terminates TLS.
pub struct Listener {
    /// The bound socket.
    pub socket: tokio::net::TcpListener,
    /// TLS settings for `wss` (SNI picks the route's certificate).
    pub tls: Option<Arc<ServerConfig>>,
}

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
                    tokio::spawn(connection(proxy.clone(), tcp, peer, listener.tls.clone()));
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
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tls {
        Some(cfg) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, TlsAcceptor::from(cfg).accept(tcp))
                .await
            {
                Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
        None => Stream::Tcp(tcp),
    };
    let is_tls = matches!(stream, Stream::Tls(_));
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = proxy.clone();
        async move {
            let resp = if is_websocket_upgrade(req.headers()) {
                upgrade::websocket(&proxy, req, peer, is_tls).await
            } else {
                http_proxy::forward(&proxy, req, peer, is_tls).await
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
    }
}
