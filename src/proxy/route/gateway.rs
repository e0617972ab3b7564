//! What an HTTPRoute rule adds to a route: the listener it is served on, the
//! method, header and query conditions beyond host and path, its filters (header
//! edits, redirect, rewrite), its timeouts and the share of requests an unusable
//! backendRef answers with 500.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Request};

use super::matching::{HostMatch, PathRule};

/// A route compiled from an HTTPRoute rule's match.
#[derive(Clone, Debug, Default)]
pub struct GatewayRule {
    /// The data-plane port of the Gateway listener it is served on.
    pub port: u16,
    /// That listener's name and hostname: the most specific listener matching a
    /// request's host takes it, and only its rules are considered.
    pub listener: String,
    /// The listener's hostname; `None` matches any.
    pub listener_host: Option<HostMatch>,
    /// The listener's port as clients see it (redirects derive theirs from it).
    pub listener_port: u16,
    /// `matches[].method`.
    pub method: Option<Method>,
    /// `matches[].headers` (Exact): lower-case name and value.
    pub headers: Vec<(HeaderName, String)>,
    /// `matches[].queryParams` (Exact).
    pub query: Vec<(String, String)>,
    /// `RequestHeaderModifier`.
    pub request_headers: HeaderEdit,
    /// `ResponseHeaderModifier`.
    pub response_headers: HeaderEdit,
    /// `RequestRedirect`: answered here, no backend is asked.
    pub redirect: Option<Redirect>,
    /// `URLRewrite`.
    pub rewrite: Option<Rewrite>,
    /// Weight of the backendRefs that did not resolve: that share gets 500.
    pub unusable_weight: u32,
    /// Total weight of the rule's backendRefs (0: none, every request gets 500).
    pub total_weight: u32,
    /// GEP-1742 `timeouts`: until the response head (a WebSocket's 101), never
    /// longer; a tunnel's life is not bounded by them.
    pub timeouts: Timeouts,
}

/// GEP-1742 timeouts of a rule; `None` is none (unset or `0s`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// `request`: from the request's arrival to the response head, retries included.
    pub request: Option<Duration>,
    /// `backendRequest`: one request to one backend, to its response head.
    pub backend_request: Option<Duration>,
}

impl Timeouts {
    /// How long the next backend request may take, for a request that arrived at
    /// `started`: what is left of `request`, at most `backend_request`.
    pub fn limit(&self, started: tokio::time::Instant) -> Option<Duration> {
        let left = self
            .request
            .map(|t| (started + t).saturating_duration_since(tokio::time::Instant::now()));
        shorter(left, self.backend_request)
    }

    /// The tighter of the two, bounding an upgrade's exchange with its backend.
    pub fn tightest(&self) -> Option<Duration> {
        shorter(self.request, self.backend_request)
    }
}

/// The shorter of two optional limits (`None`: no limit).
fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Headers to set, add and remove.
#[derive(Clone, Debug, Default)]
pub struct HeaderEdit {
    /// Replace or add.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove.
    pub remove: Vec<HeaderName>,
}

impl HeaderEdit {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies it: set, then add, then remove (the specification's order).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

/// How a path is replaced (redirect or rewrite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathEdit {
    /// `ReplaceFullPath`.
    Full(String),
    /// `ReplacePrefixMatch`: the matched prefix becomes this.
    Prefix(String),
}

/// `RequestRedirect`.
#[derive(Clone, Debug, Default)]
pub struct Redirect {
    /// `http` or `https`; `None` keeps the request's.
    pub scheme: Option<String>,
    /// Host name; `None` keeps the request's.
    pub hostname: Option<String>,
    /// Port; `None` derives it (see [`Redirect::location`]).
    pub port: Option<u16>,
    /// Path replacement.
    pub path: Option<PathEdit>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// `URLRewrite`.
#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    /// Host header.
    pub hostname: Option<HeaderValue>,
    /// Path.
    pub path: Option<PathEdit>,
}

impl GatewayRule {
    /// Whether the method, headers and query parameters match (host and path are
    /// the table's).
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != req.method()) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(n, v)| {
            req.headers()
                .get_all(n)
                .iter()
                .any(|h| h.as_bytes() == v.as_bytes())
        });
        if !headers_ok {
            return false;
        }
        let query = req.uri().query().unwrap_or("");
        self.query.iter().all(|(name, value)| {
            // The first occurrence of a parameter is the one matched (the spec's
            // recommendation when a name repeats).
            query
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .find(|(k, _)| k == name)
                .is_some_and(|(_, v)| v == value)
        })
    }

    /// Whether this request (by a number drawn in `0..total_weight`) falls on an
    /// unusable backendRef, or the rule has none: the answer is 500.
    pub fn unusable(&self, draw: u32) -> bool {
        self.total_weight == 0 || draw < self.unusable_weight
    }
}

/// The path after a prefix or full replacement, `matched` being the route's prefix.
pub fn replace_path(path: &str, matched: &PathRule, edit: &PathEdit) -> String {
    match edit {
        PathEdit::Full(p) => p.clone(),
        PathEdit::Prefix(to) => {
            let prefix = match matched {
                PathRule::Prefix(p) | PathRule::Exact(p) => p.trim_end_matches('/'),
            };
            let rest = path.get(prefix.len()..).unwrap_or("");
            let to = to.trim_end_matches('/');
            match (to.is_empty(), rest.is_empty()) {
                (true, true) => "/".into(),
                (true, false) => rest.into(),
                (false, _) => format!("{to}{rest}"),
            }
        }
    }
}

impl Redirect {
    /// The `Location` of a redirect for `req`, which arrived over `tls` on a
    /// listener of `listener_port`.
    pub fn location<B>(
        &self,
        req: &Request<B>,
        matched: &PathRule,
        tls: bool,
        listener_port: u16,
    ) -> String {
        let scheme = self
            .scheme
            .clone()
            .unwrap_or_else(|| if tls { "https" } else { "http" }.into());
        let host_header = super::matching::request_host(req);
        let (req_host, _) = split_port(&host_header);
        let host = self
            .hostname
            .clone()
            .unwrap_or_else(|| req_host.to_string());
        // A redirect's port: the one given; else the scheme's well-known port when
        // the scheme changes; else the listener's. Well-known ports are left out.
        let port = self.port.unwrap_or(if self.scheme.is_some() {
            if scheme == "https" {
                443
            } else {
                80
            }
        } else {
            listener_port
        });
        let well_known = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
        let authority = if well_known {
            host
        } else {
            format!("{host}:{port}")
        };
        let path = req.uri().path();
        let path = match &self.path {
            Some(edit) => replace_path(path, matched, edit),
            None => path.to_string(),
        };
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        format!("{scheme}://{authority}{path}{query}")
    }
}

impl GatewayRule {
    /// The request toward the backend: header edits, then the rewrite; returns the
    /// path and query to send (always a valid request target).
    pub fn edit_request(
        &self,
        headers: &mut HeaderMap,
        path_and_query: &str,
        matched: &PathRule,
    ) -> String {
        self.request_headers.apply(headers);
        let Some(rewrite) = &self.rewrite else {
            return path_and_query.to_string();
        };
        if let Some(h) = &rewrite.hostname {
            headers.insert(HOST, h.clone());
        }
        match &rewrite.path {
            None => path_and_query.to_string(),
            Some(edit) => {
                let (path, query) = match path_and_query.split_once('?') {
                    Some((p, q)) => (p, Some(q)),
                    None => (path_and_query, None),
                };
                let path = replace_path(path, matched, edit);
                let rewritten = match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                // A replacement the API server let through but that is no request
                // target (a space, a control byte) leaves the path as it was.
                if rewritten.parse::<http::uri::PathAndQuery>().is_ok() {
                    rewritten
                } else {
                    tracing::warn!(path = %rewritten, "URLRewrite made an invalid path; sending the original");
                    path_and_query.to_string()
                }
            }
        }
    }
}

/// `host:port` → (`host`, port).
fn split_port(host: &str) -> (&str, Option<u16>) {
    if host.starts_with('[') {
        return match host.rsplit_once("]:") {
            Some((h, p)) => (&host[..h.len() + 1], p.parse().ok()),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()),
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_timeout_counts_from_arrival_and_a_backend_one_per_attempt() {
        let ms = Duration::from_millis;
        let now = tokio::time::Instant::now();
        assert_eq!(Timeouts::default().limit(now), None);
        let both = Timeouts {
            request: Some(ms(1000)),
            backend_request: Some(ms(300)),
        };
        assert_eq!(both.limit(now + ms(100)), Some(ms(300)));
        assert_eq!(both.tightest(), Some(ms(300)));
        let left = both.limit(now - ms(800)).unwrap();
        assert!(
            left <= ms(200) && left > ms(100),
            "what is left of the request's: {left:?}"
        );
        assert_eq!(
            both.limit(now - ms(1300)),
            Some(Duration::ZERO),
            "spent: the next attempt gets none"
        );
    }

    fn req(uri: &str, host: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header(HOST, host)
            .body(())
            .unwrap()
    }

    #[test]
    fn headers_and_query_parameters_match_exactly() {
        let rule = GatewayRule {
            method: Some(Method::GET),
            headers: vec![(HeaderName::from_static("version"), "two".into())],
            query: vec![("animal".into(), "whale".into())],
            total_weight: 1,
            ..Default::default()
        };
        let ok = Request::builder()
            .uri("/?animal=whale&x=1")
            .header("Version", "two")
            .body(())
            .unwrap();
        assert!(rule.matches(&ok));
        let wrong_value = Request::builder()
            .uri("/?animal=dolphin")
            .header("version", "two")
            .body(())
            .unwrap();
        assert!(!rule.matches(&wrong_value));
        let no_header = Request::builder().uri("/?animal=whale").body(()).unwrap();
        assert!(!rule.matches(&no_header));
        let post = Request::builder()
            .method("POST")
            .uri("/?animal=whale")
            .header("version", "two")
            .body(())
            .unwrap();
        assert!(!rule.matches(&post));
    }

    #[test]
    fn prefix_replacement_keeps_what_follows_the_match() {
        let p = PathRule::Prefix("/prefix/one".into());
        let edit = |s: &str| PathEdit::Prefix(s.into());
        assert_eq!(
            replace_path("/prefix/one/two", &p, &edit("/one")),
            "/one/two"
        );
        assert_eq!(replace_path("/prefix/one", &p, &edit("/")), "/");
        assert_eq!(replace_path("/prefix/one/two", &p, &edit("/")), "/two");
        assert_eq!(replace_path("/prefix/one/", &p, &edit("/x")), "/x/");
        assert_eq!(
            replace_path("/any", &p, &PathEdit::Full("/full".into())),
            "/full"
        );
    }

    #[test]
    fn a_rewrite_to_an_invalid_path_sends_the_original() {
        let rule = |to: &str| GatewayRule {
            rewrite: Some(Rewrite {
                hostname: None,
                path: Some(PathEdit::Full(to.into())),
            }),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        let m = PathRule::Prefix("/".into());
        assert_eq!(
            rule("/new").edit_request(&mut h, "/old?q=1", &m),
            "/new?q=1"
        );
        assert_eq!(
            rule("/a b").edit_request(&mut h, "/old?q=1", &m),
            "/old?q=1"
        );
    }

    #[test]
    fn redirects_keep_or_replace_each_part_of_the_url() {
        let r = req("/path?q=1", "example.org:8080");
        let m = PathRule::Prefix("/".into());
        let to_host = Redirect {
            hostname: Some("other.org".into()),
            status: 302,
            ..Default::default()
        };
        assert_eq!(
            to_host.location(&r, &m, false, 80),
            "http://other.org/path?q=1"
        );
        let to_https = Redirect {
            scheme: Some("https".into()),
            status: 301,
            ..Default::default()
        };
        assert_eq!(
            to_https.location(&r, &m, false, 80),
            "https://example.org/path?q=1"
        );
        let to_port = Redirect {
            port: Some(8443),
            status: 301,
            ..Default::default()
        };
        assert_eq!(
            to_port.location(&r, &m, false, 80),
            "http://example.org:8443/path?q=1"
        );
        let same = Redirect {
            status: 301,
            ..Default::default()
        };
        assert_eq!(
            same.location(&r, &m, false, 8080),
            "http://example.org:8080/path?q=1"
        );
        assert_eq!(
            same.location(&req("/", "example.org"), &m, false, 80),
            "http://example.org/"
        );
    }
}
