//! Who a connection and a request come from. A connection's address is decided once,
//! when it is accepted ([`ConnAddr`]: the socket peer, or the client a trusted load
//! balancer names in a PROXY protocol header); a request's effective client
//! ([`ClientAddr`]) is that address, or the `X-Forwarded-For` entry a trusted proxy
//! vouches for. Everything downstream — per-IP caps, affinity by client IP, a route's
//! `clientAccess`, the access log, `/connections` — uses the effective address.
//!
//! Addresses are canonical everywhere (an IPv4-mapped IPv6 address, as a dual-stack
//! `[::]` listener reports an IPv4 client, becomes the IPv4 address), so `10.0.0.0/8`
//! matches a client of a dual-stack listener.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Where a connection comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAddr {
    /// The socket's peer (behind PROXY protocol, the load balancer).
    pub peer: SocketAddr,
    /// The client the connection speaks for: the PROXY header's source, else the
    /// socket peer.
    pub source: SocketAddr,
    /// The client used TLS: wsgate's TLS listener, or a PROXY v2 SSL TLV saying the
    /// load balancer terminated it.
    pub tls: bool,
    /// The PROXY v2 AUTHORITY TLV (the SNI the load balancer saw), for the log only.
    pub authority: Option<Arc<str>>,
    /// The data-plane port of the Gateway listener it arrived on; `None` on
    /// wsgate's own listeners (`WebSocketRoute`s).
    pub gateway_port: Option<u16>,
}

impl ConnAddr {
    /// A connection whose socket peer is the client.
    pub fn direct(peer: SocketAddr, tls: bool) -> Self {
        let peer = canonical(peer);
        ConnAddr {
            peer,
            source: peer,
            tls,
            authority: None,
            gateway_port: None,
        }
    }
}

/// Who a request comes from, with what the log needs of its connection. Held
/// inline by every open tunnel (no allocation of its own: an idle tunnel's bytes
/// are counted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    /// The effective client address.
    pub ip: IpAddr,
    /// Its port, when it is the connection's source (an `X-Forwarded-For` entry has
    /// none).
    pub port: Option<u16>,
    /// Whether the request came through a trusted proxy (`--trusted-proxies`,
    /// `--trusted-hops`), whose `X-Forwarded-Proto` and `X-Forwarded-Host` are kept.
    pub via_trusted_proxy: bool,
    /// The connection's [`ConnAddr::tls`].
    pub tls: bool,
    /// The connection's socket peer.
    pub peer: SocketAddr,
    /// The connection's [`ConnAddr::authority`].
    pub authority: Option<Arc<str>>,
    /// The connection's [`ConnAddr::gateway_port`].
    pub gateway_port: Option<u16>,
}

impl ClientAddr {
    /// The connection's own source as the client.
    pub fn of(conn: &ConnAddr) -> Self {
        ClientAddr {
            ip: conn.source.ip(),
            port: Some(conn.source.port()),
            via_trusted_proxy: false,
            tls: conn.tls,
            peer: conn.peer,
            authority: conn.authority.clone(),
            gateway_port: conn.gateway_port,
        }
    }
}

impl fmt::Display for ClientAddr {
    /// `ip:port` (`[v6]:port`) when the port is known, else the address alone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}", SocketAddr::new(self.ip, port)),
            None => write!(f, "{}", self.ip),
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into the IPv4 one.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A list of address ranges (CIDRs; a bare address is its own /32 or /128),
/// grouped by prefix length: a lookup masks the address once per distinct length
/// and probes a hash set, so a list of 1,000 /24s costs one probe, not 1,000
/// comparisons (a linear scan of 1,000 entries added 10% to a handshake's CPU in
/// a `make bench` quick run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cidrs {
    v4: Vec<(u8, HashSet<u32>)>,
    v6: Vec<(u8, HashSet<u128>)>,
}

impl Cidrs {
    /// Parses each entry; the error names the first that does not parse.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Cidrs, String> {
        let mut c = Cidrs::default();
        for e in entries {
            match parse_cidr(e.as_ref())? {
                IpNet::V4(n) => {
                    let len = n.prefix_len();
                    let net = u32::from(n.network());
                    group(&mut c.v4, len).insert(net);
                }
                IpNet::V6(n) => {
                    let len = n.prefix_len();
                    let net = u128::from(n.network());
                    group(&mut c.v6, len).insert(net);
                }
            }
        }
        Ok(c)
    }

    /// Whether any range holds `ip` (compared canonically).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|(len, nets)| {
                    nets.contains(&(a & u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0)))
                })
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|(len, nets)| {
                    nets.contains(&(a & u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0)))
                })
            }
        }
    }

    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// The set of networks of prefix length `len`, created when first needed.
fn group<T>(groups: &mut Vec<(u8, HashSet<T>)>, len: u8) -> &mut HashSet<T> {
    let i = match groups.iter().position(|(l, _)| *l == len) {
        Some(i) => i,
        None => {
            groups.push((len, HashSet::new()));
            groups.len() - 1
        }
    };
    &mut groups[i].1
}

/// One CIDR (`10.0.0.0/8`, `2001:db8::/32`) or bare address. Host bits are
/// cleared (`10.1.2.3/8` is `10.0.0.0/8`), as NGINX's `allow` does; an IPv4-mapped
/// IPv6 range becomes the IPv4 range it means.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "{s:?} is not a CIDR (like 10.0.0.0/8) or an address"
                ))
            }
        },
    };
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
                .map_err(|e| format!("{s:?}: {e}"))?,
            None => net,
        },
        _ => net,
    };
    Ok(net.trunc())
}

/// The key a client's tunnels are counted under for `maxConnectionsPerClientIP`:
/// its IPv4 address, or the /64 of an IPv6 one. One IPv6 host is handed a whole
/// /64 and picks addresses from it at will, so per-address counting would cap
/// nothing; an IPv4-mapped address counts as the IPv4 one.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_match_ipv4_ranges() {
        let c = Cidrs::parse(&["10.0.0.0/8", "::ffff:192.0.2.0/120"]).unwrap();
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(c.contains("192.0.2.7".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn prefix_lengths_from_zero_to_full() {
        let c = Cidrs::parse(&["0.0.0.0/0"]).unwrap();
        assert!(c.contains("203.0.113.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let many: Vec<String> = (0..1000)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let c = Cidrs::parse(&many).unwrap();
        assert!(c.contains("10.3.231.77".parse().unwrap()));
        assert!(!c.contains("10.3.232.1".parse().unwrap()));
        let c = Cidrs::parse(&["::/0", "2001:db8::1/128"]).unwrap();
        assert!(c.contains("2001:db8::2".parse().unwrap()));
    }

    #[test]
    fn bare_addresses_and_bad_entries() {
        let c = Cidrs::parse(&["127.0.0.2", "2001:db8::/32"]).unwrap();
        assert!(c.contains("127.0.0.2".parse().unwrap()));
        assert!(!c.contains("127.0.0.3".parse().unwrap()));
        assert!(c.contains("2001:db8::9".parse().unwrap()));
        let e = Cidrs::parse(&["10.0.0.0/8", "10.0.0.0/33"]).unwrap_err();
        assert!(e.contains("10.0.0.0/33"), "{e}");
    }

    #[test]
    fn display_has_the_port_only_when_known() {
        let conn = ConnAddr::direct("[::ffff:127.0.0.2]:4000".parse().unwrap(), false);
        let mut c = ClientAddr::of(&conn);
        assert_eq!(c.to_string(), "127.0.0.2:4000");
        c.port = None;
        c.ip = "2001:db8::1".parse().unwrap();
        assert_eq!(c.to_string(), "2001:db8::1");
    }
}
