//! Reaching a backend: dialling a route's backends in the order balancing chose
//! (TCP, then TLS with `backendTLS`), the pooled client plain HTTP uses, one request
//! over a fresh TLS connection, and the one place a backend TLS failure is reported.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::balance::Choice;
use super::health::record;
use super::BackendSet;
use crate::metrics::RouteMetrics;
use crate::proxy::response::Body;
use crate::proxy::route::backend_tls::{BackendTls, BackendTlsError};
use crate::proxy::route::table::{Route, RouteKey};
use crate::proxy::stream::Stream;

/// The pooled HTTP/1.1 client toward backends.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

/// A client with keep-alive pooling.
pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// Dials the backends in order; the first that accepts within the connect timeout
/// (and, with `backendTLS`, completes a verified TLS handshake in it) wins. Each
/// attempt's result feeds passive health, a failed TLS handshake included.
pub async fn connect(
    route: &Route,
    set: &BackendSet,
    metrics: &RouteMetrics,
    choice: &Choice,
) -> Option<(usize, Stream)> {
    for &i in &choice.order {
        let addr = &route.backends[i].address;
        let dial = async {
            let tcp = TcpStream::connect(&**addr)
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            match &route.backend_tls {
                None => Ok(Stream::Tcp(tcp)),
                Some(tls) => tls.connect(tcp, addr).await.map_err(|e| {
                    report(&route.key, addr, &e);
                    e.to_string()
                }),
            }
        };
        let result = tokio::time::timeout(route.connect_timeout, dial).await;
        record(
            &set.health,
            metrics,
            route,
            addr,
            matches!(result, Ok(Ok(_))),
        );
        match result {
            Ok(Ok(s)) => return Some((i, s)),
            Ok(Err(e)) => {
                tracing::warn!(route = %route.key, backend = %addr, error = %e, "backend connect failed")
            }
            Err(_) => {
                tracing::warn!(route = %route.key, backend = %addr, "backend connect timed out")
            }
        }
    }
    None
}

/// One request over a fresh TLS connection to the backend at `address` (`backendTLS`
/// routes do not use the pooled cleartext client: its connector has no per-route
/// trust settings). The error says whether the request was never sent (so a
/// bodyless one may try the next backend).
pub async fn over_tls(
    route: &Route,
    tls: &BackendTls,
    address: &str,
    req: Request<Body>,
) -> Result<Response<Incoming>, (bool, String)> {
    let dial = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tls.connect(tcp, address).await.map_err(|e| {
            report(&route.key, address, &e);
            e.to_string()
        })
    };
    let stream = match tokio::time::timeout(route.connect_timeout, dial).await {
        Ok(r) => r.map_err(|e| (true, e))?,
        Err(_) => return Err((true, "connect timed out".into())),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| (true, e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| {
        if let Some(why) = tls.explain(&e, address) {
            report(&route.key, address, &why);
        }
        (false, e.to_string())
    })
}

/// The one place a backend TLS failure is reported: the log line that names the
/// reason. Passive health (ejection) and the access log hook in here.
pub fn report(route: &RouteKey, backend: &str, err: &BackendTlsError) {
    tracing::warn!(route = %route, %backend, reason = err.reason(), error = %err, "backend TLS failed");
}
