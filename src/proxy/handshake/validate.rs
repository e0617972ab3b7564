//! The checks of a WebSocket request before anything is dialled: RFC 6455 §4.2.1
//! over HTTP/1.1 (a GET with a 16-byte key and version 13), RFC 8441 §4 over HTTP/2
//! (an extended CONNECT with `:protocol websocket`), the route's Origin allowlist
//! and its subprotocols. Each refusal is a status and the reason wsgate's response
//! and the access log give.

use base64::Engine;
use http::header::{
    HeaderMap, HeaderValue, CONTENT_LENGTH, ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING,
};
use http::{Method, Request, StatusCode, Version};

use crate::proxy::route::table::Route;

/// Why a request is not a WebSocket handshake this route takes.
pub(super) type Invalid = (StatusCode, &'static str);

/// The key the backend's `Sec-WebSocket-Accept` must answer, once the request is a
/// well-formed upgrade (HTTP/1.1) or extended CONNECT (HTTP/2) with version 13. Over
/// HTTP/2 there is no key on the client's leg, so wsgate makes one and adds it.
pub(super) fn key<B>(req: &mut Request<B>, h2: bool) -> Result<Vec<u8>, Invalid> {
    let key = if h2 {
        let websocket = req
            .extensions()
            .get::<h2::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if req.method() != Method::CONNECT || !websocket {
            return Err((
                StatusCode::BAD_REQUEST,
                "an HTTP/2 WebSocket is an extended CONNECT with :protocol websocket",
            ));
        }
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        req.headers_mut().insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_str(&key).expect("base64 is a valid header value"),
        );
        key.into_bytes()
    } else {
        if req.method() != Method::GET || req.version() != Version::HTTP_11 {
            return Err((
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade must be an HTTP/1.1 GET",
            ));
        }
        // Bytes after the head are the tunnel's: a body would reach the backend
        // as frames, and its length as a promise nobody keeps.
        let body = req.headers().contains_key(TRANSFER_ENCODING)
            || req
                .headers()
                .get_all(CONTENT_LENGTH)
                .iter()
                .any(|v| v.as_bytes() != b"0");
        if body {
            return Err((StatusCode::BAD_REQUEST, "a WebSocket upgrade has no body"));
        }
        let key = req
            .headers()
            .get(SEC_WEBSOCKET_KEY)
            .map(|k| k.as_bytes().to_vec())
            .unwrap_or_default();
        let key_ok = base64::engine::general_purpose::STANDARD
            .decode(&key)
            .is_ok_and(|k| k.len() == 16);
        if !key_ok {
            return Err((
                StatusCode::BAD_REQUEST,
                "missing or invalid Sec-WebSocket-Key",
            ));
        }
        key
    };
    match req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
    {
        None => Err((StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Version")),
        Some(b"13") => Ok(key),
        // 426 with `Sec-WebSocket-Version: 13` (§4.4), added by the caller.
        Some(_) => Err((
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version; this server speaks 13",
        )),
    }
}

/// The route's `allowedOrigins` (none: any Origin).
pub(super) fn origin(route: &Route, headers: &HeaderMap) -> Result<(), Invalid> {
    if route.allowed_origins.is_empty() {
        return Ok(());
    }
    let origin = headers
        .get(ORIGIN)
        .and_then(|o| o.to_str().ok())
        .unwrap_or("");
    if route
        .allowed_origins
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        Err((StatusCode::FORBIDDEN, "Origin not allowed"))
    }
}

/// The subprotocols the client offered; with a route's `subprotocols`, the offer
/// the backend sees is narrowed to those (none of them: refused).
pub(super) fn subprotocols<B>(route: &Route, req: &mut Request<B>) -> Result<Vec<String>, Invalid> {
    let offered = protocols(req.headers().get(SEC_WEBSOCKET_PROTOCOL));
    if !route.subprotocols.is_empty() && !offered.is_empty() {
        let allowed: Vec<&str> = offered
            .iter()
            .filter(|p| route.subprotocols.contains(p))
            .map(String::as_str)
            .collect();
        if allowed.is_empty() {
            return Err((
                StatusCode::BAD_REQUEST,
                "none of the requested subprotocols is allowed",
            ));
        }
        let v = HeaderValue::from_str(&allowed.join(", ")).expect("tokens from a header value");
        req.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, v);
    }
    Ok(offered)
}

fn protocols(v: Option<&HeaderValue>) -> Vec<String> {
    v.and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
}
