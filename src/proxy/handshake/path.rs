//! The request path as routing and the backend see it, normalised before any route
//! is matched (RFC 3986 §6.2.2): percent-encoded unreserved characters decoded,
//! dot segments removed (§5.2.4), repeated slashes merged. A route's `auth` and
//! `allowedOrigins` would otherwise be bypassed by a variant of its path (`/x/../ws`,
//! `//ws`, `/%77s`) that matches a weaker route while the backend normalises it
//! back to the protected one (the Envoy CVE-2019-9901 class). An encoded `/` or `\`
//! (`%2F`, `%5C`) is refused: decoding it would change the path's segments, keeping
//! it lets backends disagree on them. The query is untouched.

use http::uri::{PathAndQuery, Uri};

/// Why a path is refused (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodedSeparator;

/// The normalised form of `path`; `None` when it is already normal (the common case
/// costs one scan and no allocation).
pub fn normalize(path: &str) -> Result<Option<String>, EncodedSeparator> {
    let b = path.as_bytes();
    // Only origin-form paths; `*` (OPTIONS) and CONNECT's authority have none.
    if !path.starts_with('/') {
        return Ok(None);
    }
    let suspicious = b.contains(&b'%') || b.windows(2).any(|w| w == b"//" || w == b"/.");
    if !suspicious {
        return Ok(None);
    }
    let decoded = decode_unreserved(path)?;
    let mut out = String::with_capacity(decoded.len() + 1);
    let mut segments: Vec<&str> = Vec::new();
    // Repeated slashes merge: empty segments are dropped, except a trailing one
    // (`/chat/` stays distinct from `/chat`).
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok((out != path).then_some(out))
}

/// Decodes `%XX` of unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`) and
/// upper-cases the hex digits of the others.
fn decode_unreserved(path: &str) -> Result<String, EncodedSeparator> {
    // Bytes, not chars: a path may carry raw UTF-8, which passes through as it is.
    let b = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c == b'/' || c == b'\\' {
                    return Err(EncodedSeparator);
                }
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                } else {
                    out.extend([
                        b'%',
                        b[i + 1].to_ascii_uppercase(),
                        b[i + 2].to_ascii_uppercase(),
                    ]);
                }
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // Only ASCII was added or changed, so the UTF-8 of `path` is intact; were it
    // not, the request is refused rather than the task panicking.
    String::from_utf8(out).map_err(|_| EncodedSeparator)
}

/// Rewrites `uri`'s path to its normal form (the query kept as sent).
pub fn normalize_uri(uri: &Uri) -> Result<Option<Uri>, EncodedSeparator> {
    let Some(path) = normalize(uri.path())? else {
        return Ok(None);
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| EncodedSeparator)?);
    Ok(Uri::from_parts(parts).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().unwrap_or_else(|| p.to_owned())
    }

    #[test]
    fn variants_of_a_path_become_that_path() {
        for p in [
            "/ws",
            "/x/../ws",
            "/./ws",
            "//ws",
            "/%2e%2e/ws",
            "/%2E%2E/ws",
            "/%77s",
            "/ws/.",
            "/a/b/../../ws",
            "/../ws",
            "/%2e/ws",
        ] {
            let want = if p.ends_with("/.") { "/ws/" } else { "/ws" };
            assert_eq!(n(p), want, "{p}");
        }
        assert_eq!(n("/chat/"), "/chat/");
        assert_eq!(n("/chat//room"), "/chat/room");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/a%3fb"), "/a%3Fb");
        assert_eq!(
            n("/caf\u{e9}//%6Denu"),
            "/caf\u{e9}/menu",
            "raw UTF-8 passes unchanged"
        );
        assert_eq!(normalize("/ws").unwrap(), None);
    }

    #[test]
    fn encoded_separators_are_refused() {
        for p in ["/ws%2f..", "/ws%2F", "/a%5cb", "/a%5C..%5Cws"] {
            assert_eq!(normalize(p), Err(EncodedSeparator), "{p}");
        }
    }

    #[test]
    fn the_query_is_kept() {
        let uri: Uri = "/x/../ws?token=a%2Fb&x=..".parse().unwrap();
        assert_eq!(
            normalize_uri(&uri).unwrap().unwrap().to_string(),
            "/ws?token=a%2Fb&x=.."
        );
    }
}
