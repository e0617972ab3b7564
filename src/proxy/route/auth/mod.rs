//! Authentication of the upgrade (and of plain HTTP on the route) with a JSON Web
//! Token, before any backend is contacted. The token is looked for in the route's
//! sources in order (header, query parameter, cookie, `Sec-WebSocket-Protocol`
//! entry); whatever carried it is removed from the request first, so neither the
//! backend nor any log downstream of this point sees it. Signatures are checked by
//! `jsonwebtoken` (ring, like rustls); the time and audience rules are wsgate's own
//! (PRODUCT.md: `exp` without leeway, `nbf`/`iat` within `clockSkew`).

pub mod jwks;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{
    HeaderName, HeaderValue, CONNECTION, COOKIE, SEC_WEBSOCKET_PROTOCOL, WWW_AUTHENTICATE,
};
use http::{HeaderMap, StatusCode, Uri};
use jsonwebtoken::Validation;
use serde_json::{Map, Value};

use crate::proxy::response::{status, Body};
pub use jwks::{KeySet, Keys, RemoteJwks};

/// Where a token may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// A header whose value starts with `prefix` (compared ignoring ASCII case, as
    /// HTTP auth schemes are).
    Header {
        /// The header.
        name: HeaderName,
        /// E.g. `Bearer `; empty takes the whole value.
        prefix: String,
    },
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
    /// A `Sec-WebSocket-Protocol` entry with this prefix.
    Subprotocol(String),
}

/// A route's compiled `auth.jwt`.
#[derive(Debug)]
pub struct JwtAuth {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted audiences; empty accepts any.
    pub audiences: Vec<String>,
    /// The verification keys.
    pub keys: Keys,
    /// Token sources, in order.
    pub sources: Vec<TokenSource>,
    /// Claims copied to headers for the backend.
    pub claims_to_headers: Vec<(String, HeaderName)>,
    /// Close the tunnel at `exp`.
    pub close_on_expiry: bool,
    /// Tolerance for `nbf` and `iat`.
    pub clock_skew: Duration,
}

/// Why a request was refused; each is a `wsgate_auth_total` result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No source carried a token.
    Missing,
    /// Malformed, bad signature, wrong issuer, not yet valid, no usable key.
    Invalid(String),
    /// At or past `exp`.
    Expired,
    /// Valid, but for another audience.
    Forbidden,
    /// The route's remote JWKS has not been fetched yet.
    KeysUnavailable,
}

impl Denial {
    /// The `result` label (none for a server-side failure).
    pub fn result(&self) -> Option<&'static str> {
        match self {
            Denial::Missing => Some("missing"),
            Denial::Invalid(_) => Some("invalid"),
            Denial::Expired => Some("expired"),
            Denial::Forbidden => Some("forbidden"),
            Denial::KeysUnavailable => None,
        }
    }

    /// The answer to the client: 401 with a `WWW-Authenticate: Bearer` challenge
    /// (RFC 6750 §3), 403 for another audience, 503 while no keys are known.
    pub fn response(&self) -> http::Response<Body> {
        let (code, text, challenge) = match self {
            Denial::Missing => (StatusCode::UNAUTHORIZED, "missing token", "Bearer"),
            Denial::Invalid(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid token",
                r#"Bearer error="invalid_token""#,
            ),
            Denial::Expired => (
                StatusCode::UNAUTHORIZED,
                "token expired",
                r#"Bearer error="invalid_token", error_description="expired""#,
            ),
            Denial::Forbidden => (
                StatusCode::FORBIDDEN,
                "token not valid for this audience",
                "",
            ),
            Denial::KeysUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "token keys not available yet",
                "",
            ),
        };
        let mut r = status(code, text);
        if !challenge.is_empty() {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        r
    }
}

/// A verified request.
#[derive(Debug, Default)]
pub struct Verified {
    /// When the token expires (the tunnel closes then if `closeOnExpiry`).
    pub expires: Option<SystemTime>,
    /// The token's protocol entry, to echo in the client's 101 when it was the only
    /// subprotocol offered (browsers fail a handshake whose offer gets no answer).
    pub echo_protocol: Option<HeaderValue>,
    /// The token's `sub` (fleet-wide caps and budgets count per subject).
    pub subject: Option<String>,
}

/// A token taken out of a request.
struct Found {
    token: String,
    echo_protocol: Option<HeaderValue>,
}

impl JwtAuth {
    /// Takes the token out of the request (and the client's copies of claim
    /// headers), verifies it, and sets the claim headers. The request is stripped
    /// whatever the outcome, so a refused request logs no token either.
    pub async fn authenticate(
        &self,
        headers: &mut HeaderMap,
        uri: &mut Uri,
    ) -> Result<Verified, Denial> {
        self.remove_claim_copies(headers);
        let found = self.take_token(headers, uri).ok_or(Denial::Missing)?;
        let keys = self.keys.current().await.ok_or(Denial::KeysUnavailable)?;
        let claims = self.verify(&keys, &found.token, SystemTime::now())?;
        for (claim, header) in &self.claims_to_headers {
            let text = match claims.get(claim) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                headers.insert(header.clone(), v);
            }
        }
        let expires = claims
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|_| self.close_on_expiry)
            // A validly signed `exp` past what a clock holds (1e300) means "never":
            // no panic in the connection task.
            .and_then(|exp| Duration::try_from_secs_f64(exp.max(0.0)).ok())
            .and_then(|d| UNIX_EPOCH.checked_add(d));
        let subject = match claims.get("sub") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(Verified {
            expires,
            echo_protocol: found.echo_protocol,
            subject,
        })
    }

    /// Removes what a client sent in place of wsgate's claim headers: the headers
    /// under any spelling a backend may fold into the same name (case, `-` or `_`:
    /// CGI and WSGI turn `X_User_Id` into `HTTP_X_USER_ID` too), and their names in
    /// `Connection`, through which the hop-by-hop stripping downstream would
    /// otherwise remove the values wsgate sets.
    fn remove_claim_copies(&self, headers: &mut HeaderMap) {
        if self.claims_to_headers.is_empty() {
            return;
        }
        let folded = |n: &str| n.replace('_', "-").to_ascii_lowercase();
        let claim = |n: &str| {
            let n = folded(n);
            self.claims_to_headers
                .iter()
                .any(|(_, h)| folded(h.as_str()) == n)
        };
        let copies: Vec<HeaderName> = headers
            .keys()
            .filter(|k| claim(k.as_str()))
            .cloned()
            .collect();
        for k in copies {
            headers.remove(&k);
        }
        let connection: Vec<HeaderValue> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| {
                let kept: Vec<&str> = v
                    .to_str()
                    .ok()?
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty() && !claim(t))
                    .collect();
                HeaderValue::from_str(&kept.join(", ")).ok()
            })
            .filter(|v| !v.is_empty())
            .collect();
        headers.remove(CONNECTION);
        for v in connection {
            headers.append(CONNECTION, v);
        }
    }

    /// The first present source's token. Every configured source is removed from
    /// the request, so a second token the check never looked at cannot reach the
    /// backend either.
    fn take_token(&self, headers: &mut HeaderMap, uri: &mut Uri) -> Option<Found> {
        let mut first = None;
        for s in &self.sources {
            let found = |token: String| Found {
                token,
                echo_protocol: None,
            };
            let taken = match s {
                TokenSource::Header { name, prefix } => {
                    take_header(headers, name, prefix).map(found)
                }
                TokenSource::Query(name) => take_query(uri, name).map(found),
                TokenSource::Cookie(name) => take_cookie(headers, name).map(found),
                TokenSource::Subprotocol(prefix) => take_subprotocol(headers, prefix),
            };
            if first.is_none() {
                first = taken;
            }
        }
        first
    }

    /// Checks signature, `iss`, `exp`, `nbf`, `iat` and `aud`, in that order.
    pub fn verify(
        &self,
        keys: &KeySet,
        token: &str,
        now: SystemTime,
    ) -> Result<Map<String, Value>, Denial> {
        let invalid = |why: &str| Denial::Invalid(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        let mut rules = Validation::new(header.alg);
        // Claims are checked below, with this route's rules.
        rules.required_spec_claims.clear();
        rules.validate_exp = false;
        rules.validate_nbf = false;
        rules.validate_aud = false;
        let claims = keys
            .candidates(header.kid.as_deref(), header.alg)
            .find_map(|k| jsonwebtoken::decode::<Map<String, Value>>(token, k, &rules).ok())
            .ok_or_else(|| invalid("no key of the JWKS verifies the signature"))?
            .claims;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(invalid("wrong issuer"));
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let skew = self.clock_skew.as_secs_f64();
        let time = |name: &str| claims.get(name).map(Value::as_f64);
        match time("exp") {
            None | Some(None) => return Err(invalid("no exp")),
            Some(Some(exp)) if now >= exp => return Err(Denial::Expired),
            _ => {}
        }
        for name in ["nbf", "iat"] {
            match time(name) {
                Some(None) => return Err(invalid("malformed time claim")),
                Some(Some(t)) if t > now + skew => return Err(invalid("not yet valid")),
                _ => {}
            }
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => self.audiences.contains(a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audiences.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return Err(Denial::Forbidden);
            }
        }
        Ok(claims)
    }
}

/// The token of a header that starts with `prefix`; the whole header goes.
fn take_header(headers: &mut HeaderMap, name: &HeaderName, prefix: &str) -> Option<String> {
    let token = headers.get_all(name).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let head = v.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| v[prefix.len()..].trim().to_owned())
    })?;
    headers.remove(name);
    Some(token)
}

/// The value of query parameter `name`; only its pairs leave the URI.
fn take_query(uri: &mut Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    let mut token = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match form_urlencoded::parse(pair.as_bytes()).next() {
            Some((k, v)) if k == name => {
                token.get_or_insert_with(|| v.into_owned());
            }
            _ => kept.push(pair),
        }
    }
    let token = token?;
    let path = uri.path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = pq.parse().ok();
    *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    Some(token)
}

/// The value of cookie `name`; only that cookie leaves the `Cookie` header(s).
fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let mut token = None;
    let mut kept: Vec<String> = Vec::new();
    for v in headers.get_all(COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            match c.split_once('=') {
                Some((k, val)) if k.trim() == name => {
                    token.get_or_insert_with(|| val.trim().trim_matches('"').to_owned());
                }
                _ => kept.push(c.to_owned()),
            }
        }
    }
    let token = token?;
    headers.remove(COOKIE);
    if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
        if !kept.is_empty() {
            headers.insert(COOKIE, v);
        }
    }
    Some(token)
}

/// The `Sec-WebSocket-Protocol` entry starting with `prefix`; only that entry leaves.
fn take_subprotocol(headers: &mut HeaderMap, prefix: &str) -> Option<Found> {
    let entries: Vec<String> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let at = entries.iter().position(|p| p.starts_with(prefix))?;
    let entry = entries[at].clone();
    let rest: Vec<&str> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != at)
        .map(|(_, p)| p.as_str())
        .collect();
    headers.remove(SEC_WEBSOCKET_PROTOCOL);
    let echo_protocol = if rest.is_empty() {
        HeaderValue::from_str(&entry).ok()
    } else {
        if let Ok(v) = HeaderValue::from_str(&rest.join(", ")) {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
        }
        None
    };
    Some(Found {
        token: entry[prefix.len()..].to_owned(),
        echo_protocol,
    })
}

#[cfg(test)]
mod tests;
