//! Who a request comes from when an L7 proxy stands in front of wsgate:
//! `X-Forwarded-For` is read, right to left, only when the connection's source is a
//! trusted proxy (`--trusted-proxies`) or a fixed number of proxies is declared
//! (`--trusted-hops`). Anything else a client says about itself — `X-Forwarded-*`,
//! `Forwarded`, `X-Real-IP` — is removed before any stage sees the request, so it
//! can neither name an address (ingress-nginx#1000, traefik#3646) nor reach the
//! backend.

use http::header::{HeaderMap, HeaderName};
use std::net::{IpAddr, SocketAddr};

use crate::proxy::client::{Cidrs, ClientAddr, ConnAddr};

/// Which peers' `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default)]
pub struct ForwardedTrust {
    /// `--trusted-proxies`: a peer in these ranges is a proxy; entries in them are
    /// skipped while walking the list.
    pub proxies: Cidrs,
    /// `--trusted-hops`: this many proxies append to the list, whoever the peer
    /// is; the client is the N-th entry from the right. 0: not set.
    pub hops: usize,
}

/// The request cannot be attributed: `--trusted-hops` says more proxies than the
/// list holds (a fallback to the socket address would trust the wrong one).
#[derive(Debug, PartialEq, Eq)]
pub struct TooFewHops;

impl ForwardedTrust {
    /// The request's effective client. Removes the forwarding headers of a peer
    /// that is not trusted.
    pub fn client_of(
        &self,
        conn: &ConnAddr,
        headers: &mut HeaderMap,
    ) -> Result<ClientAddr, TooFewHops> {
        let mut client = ClientAddr::of(conn);
        let trusted = self.hops > 0 || self.proxies.contains(conn.source.ip());
        if !trusted {
            strip_forwarding(headers);
            return Ok(client);
        }
        client.via_trusted_proxy = true;
        let list = forwarded_for(headers);
        let found = if self.hops > 0 {
            if list.len() < self.hops {
                return Err(TooFewHops);
            }
            list[list.len() - self.hops]
        } else {
            self.walk(&list)
        };
        if let Some(ip) = found {
            client.ip = ip.to_canonical();
            client.port = None;
        }
        Ok(client)
    }

    /// Right to left, skipping trusted proxies: the first other entry is the
    /// client; when all are trusted, the leftmost. An entry that is no address ends
    /// the walk at the last good one, as NGINX's `real_ip_recursive` does.
    fn walk(&self, list: &[Option<IpAddr>]) -> Option<IpAddr> {
        let mut last = None;
        for entry in list.iter().rev() {
            let Some(ip) = *entry else { break };
            last = Some(ip);
            if !self.proxies.contains(ip) {
                break;
            }
        }
        last
    }
}

/// The `X-Forwarded-For` entries in order, all header lines joined (RFC 9110
/// §5.3); `None` for an entry that is no address.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(entry_ip)
        .collect()
}

/// `198.51.100.7`, `198.51.100.7:443`, `2001:db8::1` or `[2001:db8::1]:443`.
fn entry_ip(e: &str) -> Option<IpAddr> {
    e.parse::<IpAddr>()
        .ok()
        .or_else(|| e.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| e.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// Removes what a client may say about where it comes from.
fn strip_forwarding(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            n.starts_with("x-forwarded-") || n == "forwarded" || n == "x-real-ip"
        })
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn conn(peer: &str) -> ConnAddr {
        ConnAddr::direct(peer.parse().unwrap(), false)
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h
    }

    #[test]
    fn an_untrusted_peer_names_nobody_and_its_headers_go() {
        let trust = ForwardedTrust {
            proxies: Cidrs::parse(&["10.0.0.0/8"]).unwrap(),
            hops: 0,
        };
        let mut h = headers(&["6.6.6.6"]);
        let c = trust.client_of(&conn("203.0.113.5:4000"), &mut h).unwrap();
        assert_eq!(c.to_string(), "203.0.113.5:4000");
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn a_trusted_peer_is_walked_right_to_left() {
        let trust = ForwardedTrust {
            proxies: Cidrs::parse(&["10.0.0.0/8"]).unwrap(),
            hops: 0,
        };
        // A client-sent spoof on the left, the real client, then an inner proxy.
        let mut h = headers(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        let c = trust
            .client_of(&conn("[::ffff:10.0.0.2]:80"), &mut h)
            .unwrap();
        assert_eq!(c.to_string(), "198.51.100.7");
        assert!(c.via_trusted_proxy);
        assert_eq!(h["x-forwarded-proto"], "https");
        // All trusted: the leftmost; garbage stops the walk at the last good one.
        let mut h = headers(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(
            trust
                .client_of(&conn("10.0.0.2:80"), &mut h)
                .unwrap()
                .ip
                .to_string(),
            "10.9.9.9"
        );
        let mut h = headers(&["198.51.100.7, bogus, 10.1.1.1"]);
        assert_eq!(
            trust
                .client_of(&conn("10.0.0.2:80"), &mut h)
                .unwrap()
                .ip
                .to_string(),
            "10.1.1.1"
        );
        let mut h = headers(&["[2001:db8::7]:443"]);
        assert_eq!(
            trust
                .client_of(&conn("10.0.0.2:80"), &mut h)
                .unwrap()
                .ip
                .to_string(),
            "2001:db8::7"
        );
    }

    #[test]
    fn hops_count_from_the_right() {
        let trust = ForwardedTrust {
            proxies: Cidrs::default(),
            hops: 2,
        };
        let mut h = headers(&["6.6.6.6, 198.51.100.7, 10.1.1.1"]);
        assert_eq!(
            trust
                .client_of(&conn("10.0.0.2:80"), &mut h)
                .unwrap()
                .ip
                .to_string(),
            "198.51.100.7"
        );
        let mut h = headers(&["10.1.1.1"]);
        assert_eq!(
            trust.client_of(&conn("10.0.0.2:80"), &mut h),
            Err(TooFewHops)
        );
    }
}
