//! Which requests a route answers: host name patterns and path rules, and the host
//! a request is for. Shared by `table.rs` (the routes) and `gateway.rs` (an
//! HTTPRoute rule's listener), below both.

/// A host name pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// `chat.example.com`, compared case-insensitively.
    Exact(String),
    /// `*.example.com`: one or more labels before `.example.com` (stored as `.example.com`).
    Suffix(String),
}

impl HostMatch {
    /// Parses `chat.example.com` or `*.example.com`.
    pub fn parse(s: &str) -> Option<HostMatch> {
        let s = s.to_ascii_lowercase();
        let valid = |h: &str| {
            !h.is_empty()
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        match s.strip_prefix("*.") {
            Some(rest) if valid(rest) => Some(HostMatch::Suffix(format!(".{rest}"))),
            None if valid(&s) => Some(HostMatch::Exact(s)),
            _ => None,
        }
    }

    /// How well `host` (lower-case, port removed) matches: exact beats wildcard,
    /// and a longer wildcard beats a shorter one.
    pub(crate) fn score(&self, host: &str) -> Option<usize> {
        match self {
            HostMatch::Exact(h) => (h == host).then_some(usize::MAX),
            HostMatch::Suffix(s) => {
                (host.len() > s.len() && host.ends_with(s.as_str())).then_some(s.len())
            }
        }
    }

    /// Whether an SNI name is covered by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        self.score(host).is_some()
    }
}

/// A path rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathRule {
    /// Exactly this path.
    Exact(String),
    /// This path and everything below it, by whole segments.
    Prefix(String),
}

impl PathRule {
    pub(crate) fn score(&self, path: &str) -> Option<usize> {
        match self {
            // Exact wins over a prefix of the same length.
            PathRule::Exact(p) => (p == path).then_some(p.len() * 2 + 1),
            PathRule::Prefix(p) => {
                let p = p.trim_end_matches('/');
                let hit = path.starts_with(p)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/');
                hit.then_some(p.len() * 2)
            }
        }
    }
}

/// The host a request is for: the `Host` header, else the URI authority.
pub fn request_host<B>(req: &http::Request<B>) -> String {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// Lower-cases a Host header and removes its port (IPv6 literals keep their brackets).
pub fn normalize_host(host: &str) -> String {
    let h = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}
