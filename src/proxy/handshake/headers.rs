//! Header rewriting shared by the upgrade and plain HTTP paths: hop-by-hop removal
//! (RFC 9110 §7.6.1) and the `X-Forwarded-*` / `X-Real-IP` headers users know from
//! NGINX configs.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};

use crate::proxy::client::ClientAddr;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header fields httparse found in `head`, as a map whose values share
/// `head`'s buffer instead of being copied one by one; `None` if a name or value
/// is not one `http` accepts.
pub fn parsed_fields(head: &Bytes, fields: &[httparse::Header<'_>]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value)).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

/// True when the request asks for a WebSocket upgrade (`Connection: upgrade` and
/// `Upgrade: websocket`, tokens compared case-insensitively).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &CONNECTION, "upgrade") && has_token(headers, &UPGRADE, "websocket")
}

/// Whether a comma-separated header holds a token.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// Makes an HTTP/2 request's headers right for HTTP/1.1 toward a backend: `Host`
/// from the `:authority` (HTTP/2 has no `Host` header), and the cookie crumbs
/// HTTP/2 may split into several fields joined into one (RFC 9113 §8.2.3).
/// An HTTP/1.1 request is left as it is.
pub fn for_http1(headers: &mut HeaderMap, uri: &http::Uri) {
    if !headers.contains_key(HOST) {
        if let Some(v) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(HOST, v);
        }
    }
    let cookie = http::header::COOKIE;
    if headers.get_all(&cookie).iter().nth(1).is_some() {
        let joined: Vec<&[u8]> = headers
            .get_all(&cookie)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            headers.insert(cookie, v);
        }
    }
}

/// Sets the forwarding headers toward the backend for a request from `client`:
/// `X-Forwarded-For` and `X-Real-IP` are exactly the effective client address (an
/// untrusted chain never reaches the backend; the access log has it), and
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are kept when a trusted proxy sent
/// them (an untrusted peer's were removed when the request arrived), else set from
/// the connection.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientAddr) {
    let ip = client.ip.to_canonical().to_string();
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert("x-forwarded-for", v.clone());
        headers.insert("x-real-ip", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        let proto = if client.tls { "https" } else { "http" };
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !headers.contains_key("x-forwarded-host") {
        if let Some(host) = headers.get(HOST).cloned() {
            headers.insert("x-forwarded-host", host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_named() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-app", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-app"));
    }

    #[test]
    fn forwarded_headers_name_exactly_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("host", HeaderValue::from_static("chat.example.com"));
        let conn = crate::proxy::client::ConnAddr::direct("127.0.0.2:5000".parse().unwrap(), true);
        set_forwarded(&mut h, &ClientAddr::of(&conn));
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "chat.example.com");
        assert_eq!(h["x-real-ip"], "127.0.0.2");
    }

    #[test]
    fn upgrade_detection_is_token_based() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        assert!(is_websocket_upgrade(&h));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&h));
    }
}
