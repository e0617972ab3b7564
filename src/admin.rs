//! The admin server: `/metrics`, `/healthz`, `/readyz`, `/connections`, `/backends`
//! on `--admin-listen` (loopback by default: `/connections` lists every tenant's
//! clients and backends), and only `/metrics`, `/healthz` and `/readyz` on
//! `--metrics-listen`, the one a chart exposes to Prometheus and probes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::Proxy;

fn reply(
    code: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// A request head must arrive within this (a slowloris against probes would
/// otherwise hold connections forever).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Everything (`--admin-listen`).
    All,
    /// `/metrics`, `/healthz`, `/readyz` (`--metrics-listen`).
    Metrics,
}

fn route(proxy: &Proxy, req: &Request<Incoming>, endpoints: Endpoints) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if endpoints == Endpoints::Metrics && !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: this listener serves /metrics, /healthz and /readyz\n",
        );
    }
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            proxy.metrics.render(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if proxy.ready() => reply(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        "/connections" => {
            let json =
                serde_json::to_vec_pretty(&crate::proxy::views::connections(&proxy.registry))
                    .expect("serializable");
            reply(StatusCode::OK, "application/json", json)
        }
        "/backends" => {
            let json = serde_json::to_vec_pretty(&crate::proxy::views::backends_view(proxy))
                .expect("serializable");
            reply(StatusCode::OK, "application/json", json)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz, /connections, /backends\n",
        ),
    }
}

/// Serves `endpoints` until the process ends.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, endpoints: Endpoints) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = route(&proxy, &req, endpoints);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
