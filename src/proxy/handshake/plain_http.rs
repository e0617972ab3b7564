//! Plain HTTP on the same routes: Socket.IO and SockJS begin with long-polling and
//! fall back to streaming transports. Bodies stream both ways, never buffered.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, SET_COOKIE, UPGRADE};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Body as _;
use tokio::time::Instant;

use super::headers::{for_http1, set_forwarded, strip_hop_by_hop};
use crate::proxy::backends::balance::{self, affinity_cookie};
use crate::proxy::backends::connect::over_tls;
use crate::proxy::backends::health;
use crate::proxy::client::ClientAddr;
use crate::proxy::live::Proxy;
use crate::proxy::response::{boxed, status, Body};
use crate::proxy::route::policy::client_permitted;
use crate::proxy::route::table::Route;
use crate::proxy::runtime::RouteRuntime;
use crate::proxy::trace::RequestTrace;

/// Proxies one plain HTTP request, traced by a SERVER span (to the response's
/// status) and a CLIENT span for the backend request.
pub async fn forward(proxy: &Arc<Proxy>, req: Request<Body>, client: ClientAddr) -> Response<Body> {
    let found = proxy.route_for(&req, client.gateway_port);
    let route = found.as_ref().map(|(r, _)| &**r);
    let trace = RequestTrace::start(proxy.tracer(), &req, &client, route, req.method().as_str());
    let resp = match found {
        None => {
            proxy
                .metrics
                .http_requests_total
                .with_label_values(&["", "", "404"])
                .inc();
            status(StatusCode::NOT_FOUND, "no route for this host and path")
        }
        Some((route, runtime)) => request(proxy, req, client, route, runtime, &trace).await,
    };
    trace.end(&resp);
    resp
}

async fn request(
    proxy: &Arc<Proxy>,
    req: Request<Body>,
    client: ClientAddr,
    route: Arc<Route>,
    runtime: Arc<RouteRuntime>,
    trace: &RequestTrace,
) -> Response<Body> {
    let started = Instant::now();
    let timeouts = route
        .gateway
        .as_ref()
        .map(|g| g.timeouts)
        .unwrap_or_default();
    let m = &runtime.metrics;
    if !client_permitted(route.client_access.as_ref(), client.ip) {
        m.http(403);
        return status(StatusCode::FORBIDDEN, "client address not allowed");
    }
    if let Some(answer) = super::gateway_answer(&route, &req, &client) {
        m.http(answer.status().as_u16());
        return answer;
    }
    if !route.proxy_http {
        m.http(426);
        let mut r = status(
            StatusCode::UPGRADE_REQUIRED,
            "this route only accepts WebSocket upgrades",
        );
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    let mut req = req;
    let uri = req.uri().clone();
    for_http1(req.headers_mut(), &uri);
    if let Err(refusal) = super::auth::admit(&route, m, &mut req, trace).await {
        m.http(refusal.status().as_u16());
        return refusal;
    }
    let (mut parts, body) = req.into_parts();
    let choice = balance::choose(&route, &runtime.backends, &parts, client.ip);
    strip_hop_by_hop(&mut parts.headers);
    set_forwarded(&mut parts.headers, &client);
    let backend_span = trace.backend(parts.method.as_str(), &mut parts.headers);
    // Backends are spoken to in HTTP/1.1 whatever the client used.
    parts.version = http::Version::HTTP_11;
    let mut path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Some(g) = &route.gateway {
        path = g.edit_request(&mut parts.headers, &path, &route.path);
    }
    // A request without a body can be retried on the next backend when a connect
    // fails; one with a body is sent once (its bytes may already be gone). Over
    // HTTP/2 a body needs no Content-Length, so the body says, not the headers.
    let bodyless = body.is_end_stream();
    let mut body = Some(body);
    for (attempt, &index) in choice.order.iter().enumerate() {
        let backend = &route.backends[index];
        let Some(b) = body.take() else { break };
        let mut p = parts.clone();
        let uri = match &route.backend_tls {
            None => format!("http://{}{}", backend.address, path).parse::<Uri>(),
            Some(_) => path.parse::<Uri>(),
        };
        let Ok(uri) = uri else { break };
        p.uri = uri;
        let send = async {
            match &route.backend_tls {
                None => {
                    let r = proxy.http_client.request(Request::from_parts(p, b)).await;
                    r.map_err(|e| (e.is_connect(), e.to_string()))
                }
                Some(tls) => {
                    over_tls(&route, tls, &backend.address, Request::from_parts(p, b)).await
                }
            }
        };
        let result = match timeouts.limit(started) {
            None => send.await,
            Some(limit) => match tokio::time::timeout(limit, send).await {
                Ok(r) => r,
                Err(_) => {
                    backend_span.end(Err("timeout"));
                    tracing::warn!(route = %route.key, backend = %backend.address, "backend did not answer within the route's timeout");
                    m.http(504);
                    return status(
                        StatusCode::GATEWAY_TIMEOUT,
                        "backend did not answer within the route's timeout",
                    );
                }
            },
        };
        match result {
            Ok(resp) => {
                backend_span.backend(&backend.address, &path, route.backend_tls.is_some());
                backend_span.end(Ok(resp.status()));
                health::record(&runtime.backends.health, m, &route, &backend.address, true);
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                if let Some(g) = &route.gateway {
                    g.response_headers.apply(&mut rparts.headers);
                }
                if choice.set_cookie {
                    if let Some(c) = affinity_cookie(&route, index) {
                        rparts.headers.append(SET_COOKIE, c);
                    }
                }
                m.http(rparts.status.as_u16());
                return Response::from_parts(rparts, boxed(rbody));
            }
            Err((unsent, e)) => {
                // Not sent: the connect (or the TLS handshake) failed.
                if unsent {
                    health::record(&runtime.backends.health, m, &route, &backend.address, false);
                }
                tracing::warn!(route = %route.key, backend = %backend.address, error = %e, "backend request failed");
                if !(bodyless && unsent) || attempt + 1 == choice.order.len() {
                    break;
                }
                body = Some(boxed(http_body_util::Empty::<Bytes>::new()));
            }
        }
    }
    backend_span.end(Err("backend_unavailable"));
    m.http(502);
    status(StatusCode::BAD_GATEWAY, "no backend reachable")
}
