//! The WebSocket handshake (RFC 6455 §4, and RFC 8441 over HTTP/2): validate the
//! client's upgrade or extended CONNECT, pick and dial a backend, forward an
//! HTTP/1.1 upgrade, verify the backend's 101, then hand both legs to the
//! [`Relay`](crate::proxy::relay::Relay).

mod auth;
mod backend;
mod fleet;
pub mod forwarded;
pub(crate) mod headers;
pub(crate) mod path;
pub(crate) mod plain_http;
mod validate;

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION,
    SET_COOKIE, UPGRADE,
};
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use sha1::{Digest, Sha1};

use crate::proxy::backends::balance::{self, affinity_cookie};
use crate::proxy::backends::connect::{connect, report};
use crate::proxy::client::ClientAddr;
use crate::proxy::first_head::ClientIo;
use crate::proxy::live::Proxy;
use crate::proxy::registry::{ClientProtocol, CloseReason};
use crate::proxy::relay::protocol::Extensions;
use crate::proxy::relay::Relay;
use crate::proxy::response::{boxed, status, Body, TunnelOpened};
use crate::proxy::route::policy::client_permitted;
use crate::proxy::route::table::Route;
use crate::proxy::runtime::{Admission, RouteRuntime};
use crate::proxy::stream::Stream;
use crate::proxy::trace::RequestTrace;
use backend::Reply;
use headers::{for_http1, set_forwarded, strip_hop_by_hop};
use validate::Invalid;

/// `Sec-WebSocket-Accept` for a key (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// What a Gateway API rule answers itself, before any backend: its redirect, or
/// 500 for the share of requests that falls on a backendRef that did not resolve
/// (and for every request of a rule with no backendRefs).
pub(crate) fn gateway_answer<B>(
    route: &crate::proxy::route::table::Route,
    req: &Request<B>,
    client: &ClientAddr,
) -> Option<Response<Body>> {
    let g = route.gateway.as_ref()?;
    if let Some(redirect) = &g.redirect {
        let code = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
        let mut r = status(code, "");
        let location = redirect.location(req, &route.path, client.tls, g.listener_port);
        if let Ok(v) = HeaderValue::try_from(location) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        return Some(r);
    }
    let draw = if g.total_weight == 0 {
        0
    } else {
        rand::random_range(0..g.total_weight)
    };
    g.unusable(draw).then(|| {
        status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no usable backend for this route rule",
        )
    })
}

/// Decides an upgrade request (HTTP/1.1) or an extended CONNECT (HTTP/2) end to end,
/// traced by its SERVER span from the request to the status written: the answer
/// for the client and, when the backend switched protocols, the tunnel that opens
/// once the answer is out ([`Opening`]). Whoever read the request (hyper's HTTP/1.1
/// server, or the listener's own HTTP/1.1 or HTTP/2 path) writes the answer and
/// hands over the client's connection; what a handshake means is decided here alone.
pub async fn websocket(
    proxy: &Arc<Proxy>,
    req: Request<()>,
    client: ClientAddr,
    protocol: ClientProtocol,
) -> (Response<Body>, Option<Opening>) {
    let found = proxy.route_for(&req, client.gateway_port);
    let route = found.as_ref().map(|(r, _)| &**r);
    let trace = RequestTrace::start(proxy.tracer(), &req, &client, route, "GET");
    let (resp, opening) = match found {
        None => {
            proxy
                .metrics
                .connections_total
                .with_label_values(&["", "", "rejected"])
                .inc();
            (
                status(StatusCode::NOT_FOUND, "no route for this host and path"),
                None,
            )
        }
        Some((route, runtime)) => {
            match upgrade(proxy, req, client, protocol, route, runtime, &trace).await {
                Ok((resp, opening)) => (resp, Some(opening)),
                Err(resp) => (resp, None),
            }
        }
    };
    trace.end(&resp);
    (resp, opening)
}

/// An accepted upgrade whose answer (`101`, or `200` over HTTP/2) is on its way to
/// the client: what the tunnel needs once both connections switched protocols.
pub struct Opening {
    proxy: Arc<Proxy>,
    route: Arc<Route>,
    client: ClientAddr,
    protocol: ClientProtocol,
    backend: Arc<str>,
    backend_io: Stream,
    backend_early: Vec<u8>,
    admission: Admission,
    extensions: Extensions,
    expires: Option<std::time::SystemTime>,
    trace: RequestTrace,
}

impl Opening {
    /// hyper's HTTP/1.1 server read the request: the client's connection comes
    /// back from hyper once the answer is written. (An HTTP/2 stream is handed
    /// over by the listener's own HTTP/2 server: [`Opening::open`].)
    pub async fn after_hyper(self, on_client: OnUpgrade) {
        let Ok(client) = on_client.await else {
            return;
        };
        // `read_buf` views hyper's whole handshake buffer (8 KiB or more): copy the
        // (usually empty) rest out so the tunnel does not pin that buffer.
        let Ok(c) = client.downcast::<ClientIo>() else {
            tracing::error!("upgraded client connection of an unexpected type");
            return;
        };
        let (rest, stream) = c.io.into_inner().into_inner().into_parts();
        let mut early = rest.to_vec();
        early.extend_from_slice(&c.read_buf);
        self.open(stream, early).await;
    }

    /// Starts the tunnel on the client's connection, whose answer has been written;
    /// `client_early` is what the client sent after its request head.
    pub async fn open(self, client: Stream, client_early: Vec<u8>) {
        let Opening {
            proxy,
            route,
            client: client_addr,
            protocol,
            backend,
            backend_io,
            backend_early,
            admission,
            extensions,
            expires,
            trace,
        } = self;
        // The tunnel's span starts once both sides switched protocols.
        let span = trace.tunnel(&route.key);
        drop(trace);
        let info = proxy
            .registry
            .open(route, client_addr, protocol, backend, span);
        if let Some(at) = expires {
            proxy.registry.expire_at(&info, at);
        }
        if !proxy.ready() {
            proxy.registry.schedule_close(
                &info,
                Some(std::time::Instant::now()),
                CloseReason::Shutdown,
            );
        }
        let relay = Relay {
            client,
            backend: backend_io,
            info,
            admission,
            extensions,
            proxy,
        };
        // A task of its own, spawned as the bare relay future: the caller's state
        // (or a wrapper's copy of the relay future — rustc keeps both the local and
        // the awaited copy) would otherwise double every tunnel's task.
        tokio::spawn(relay.run(client_early, backend_early));
    }
}

async fn upgrade(
    proxy: &Arc<Proxy>,
    mut req: Request<()>,
    client: ClientAddr,
    protocol: ClientProtocol,
    route: Arc<Route>,
    runtime: Arc<RouteRuntime>,
    trace: &RequestTrace,
) -> Result<(Response<Body>, Opening), Response<Body>> {
    let m = &runtime.metrics;
    // First, before anything else is looked at: a denied client learns nothing
    // about the route and no backend hears of it.
    if !client_permitted(route.client_access.as_ref(), client.ip) {
        m.outcome("client_denied");
        tracing::debug!(route = %route.key, %client, "client address denied by clientAccess");
        return Err(status(StatusCode::FORBIDDEN, "client address not allowed"));
    }
    if let Some(answer) = gateway_answer(&route, &req, &client) {
        m.outcome("rejected");
        return Err(answer);
    }
    let uri = req.uri().clone();
    for_http1(req.headers_mut(), &uri);
    let reject = |code: StatusCode, why: &str| {
        m.outcome("rejected");
        tracing::debug!(route = %route.key, %client, status = code.as_u16(), why, "upgrade rejected");
        status(code, why)
    };

    let h2 = protocol == ClientProtocol::H2;
    let refused = |(code, why): Invalid| {
        let mut r = reject(code, why);
        if code == StatusCode::UPGRADE_REQUIRED {
            r.headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        r
    };
    let key = match validate::key(&mut req, h2).and_then(|key| {
        validate::origin(&route, req.headers())?;
        Ok(key)
    }) {
        Ok(key) => key,
        Err(invalid) => return Err(refused(invalid)),
    };
    // Before the subprotocol check: a token entry is not a protocol the backend sees.
    let verified = match auth::admit(&route, m, &mut req, trace).await {
        Ok(v) => v,
        Err(refusal) => {
            m.outcome("rejected");
            return Err(refusal);
        }
    };
    let offered = match validate::subprotocols(&route, &mut req) {
        Ok(offered) => offered,
        Err(invalid) => return Err(refused(invalid)),
    };

    let mut admission = match runtime.admit(&route, client.ip) {
        Ok(a) => a,
        Err(code) => {
            m.outcome("limited");
            trace.set(
                "wsgate.limit.rejected",
                if code == 429 {
                    "maxConnectionsPerClientIP"
                } else {
                    "maxConnections"
                },
            );
            let code = StatusCode::from_u16(code).expect("503 or 429");
            return Err(status(code, "connection limit reached"));
        }
    };

    if let Some(policy) = &route.fleet {
        match fleet::admit(&route, m, policy, client.ip, verified.subject.as_deref()).await {
            Ok(ticket) => admission.set_fleet(ticket),
            Err(refusal) => return Err(refusal),
        }
    }

    let (parts, ()) = req.into_parts();
    let choice = balance::choose(&route, &runtime.backends, &parts, client.ip);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // What goes to the backend is a head alone (`Content-Length: 0` included).
    headers.remove(http::header::CONTENT_LENGTH);
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    set_forwarded(&mut headers, &client);
    let mut path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Some(g) = &route.gateway {
        path = g.edit_request(&mut headers, &path, &route.path);
    }
    let backend_span = trace.backend("GET", &mut headers);

    let exchange = async {
        let Some((index, stream)) =
            connect(&route, &runtime.backends, &runtime.metrics, &choice).await
        else {
            return Err((
                StatusCode::BAD_GATEWAY,
                "backend_unavailable",
                "no backend reachable",
            ));
        };
        backend_span.backend(
            &route.backends[index].address,
            &path,
            route.backend_tls.is_some(),
        );
        let reply = backend::exchange(stream, &path, &headers)
            .await
            .map_err(|e| {
                // A TLS 1.3 backend refuses our client certificate only after the
                // handshake: its alert is what this first read meets.
                let addr = &route.backends[index].address;
                let why = route.backend_tls.as_ref().and_then(|t| t.explain(&e, addr));
                match why {
                    Some(why) => {
                        report(&route.key, addr, &why);
                        (
                            StatusCode::BAD_GATEWAY,
                            "backend_unavailable",
                            "backend TLS failed",
                        )
                    }
                    None => {
                        tracing::warn!(route = %route.key, backend = %addr, error = %e, "backend closed the connection before answering the upgrade");
                        (
                            StatusCode::BAD_GATEWAY,
                            "backend_unavailable",
                            "backend closed the connection",
                        )
                    }
                }
            })?;
        Ok((index, reply))
    };
    let (index, reply) = match tokio::time::timeout(route.handshake_timeout, exchange).await {
        Err(_) => {
            backend_span.end(Err("timeout"));
            m.outcome("timeout");
            tracing::warn!(route = %route.key, "backend did not answer the upgrade in time");
            return Err(status(
                StatusCode::GATEWAY_TIMEOUT,
                "backend did not answer the upgrade in time",
            ));
        }
        Ok(Err((code, outcome, why))) => {
            backend_span.end(Err(outcome));
            m.outcome(outcome);
            return Err(status(code, why));
        }
        Ok(Ok(r)) => {
            backend_span.end(Ok(r.1.status()));
            r
        }
    };
    let backend = route.backends[index].address.clone();
    let cookie = choice
        .set_cookie
        .then(|| affinity_cookie(&route, index))
        .flatten();

    let (mut resp_headers, backend_io, backend_early) = match reply {
        Reply::Switched {
            headers,
            stream,
            early,
        } => (headers, stream, early),
        Reply::Other(resp) if h2 && resp.status().is_success() => {
            // Over HTTP/2 a 2xx is what opens a tunnel: a backend that answered the
            // upgrade with one (a plain web server) must not look like it did.
            m.outcome("backend_rejected");
            tracing::warn!(route = %route.key, status = resp.status().as_u16(), "backend answered the upgrade without switching protocols");
            return Err(status(
                StatusCode::BAD_GATEWAY,
                "backend sent an invalid WebSocket handshake",
            ));
        }
        Reply::Other(resp) => {
            // The backend refused: pass its answer on.
            m.outcome("backend_rejected");
            let (mut rparts, body) = resp.into_parts();
            strip_hop_by_hop(&mut rparts.headers);
            if let Some(c) = cookie {
                rparts.headers.append(SET_COOKIE, c);
            }
            return Err(Response::from_parts(rparts, boxed(body)));
        }
    };
    let expected = accept_key(&key);
    let accept_ok = resp_headers
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|a| a.as_bytes() == expected.as_bytes());
    let chosen = resp_headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned);
    let protocol_ok = chosen.as_ref().is_none_or(|c| offered.contains(c));
    if !accept_ok || !protocol_ok {
        m.outcome("backend_rejected");
        tracing::warn!(route = %route.key, %backend, accept_ok, protocol_ok, "backend sent an invalid 101");
        return Err(status(
            StatusCode::BAD_GATEWAY,
            "backend sent an invalid WebSocket handshake",
        ));
    }
    admission.set_backend(&backend);
    // Which RSV bits the relay lets through (RFC 6455 §5.2).
    let extensions = Extensions::negotiated(
        resp_headers
            .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(|v| v.as_bytes()),
    );

    let mut headers = std::mem::take(&mut resp_headers);
    strip_hop_by_hop(&mut headers);
    if h2 {
        // RFC 8441 §5: a 200 without the HTTP/1.1 handshake's headers.
        headers.remove(SEC_WEBSOCKET_ACCEPT);
    } else {
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
    if let Some(c) = cookie {
        headers.append(SET_COOKIE, c);
    }
    if let Some(p) = verified.echo_protocol {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, p);
    }
    let opening = Opening {
        proxy: proxy.clone(),
        route,
        client,
        protocol,
        backend,
        backend_io,
        backend_early,
        admission,
        extensions,
        expires: verified.expires,
        trace: trace.clone(),
    };
    m.outcome("upgraded");

    let mut out = Response::new(boxed(http_body_util::Empty::<Bytes>::new()));
    *out.status_mut() = if h2 {
        StatusCode::OK
    } else {
        StatusCode::SWITCHING_PROTOCOLS
    };
    *out.headers_mut() = headers;
    out.extensions_mut().insert(TunnelOpened);
    Ok((out, opening))
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
