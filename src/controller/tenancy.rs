//! What a route author (a tenant) may ask of a shared wsgate: which addresses a
//! controller-mode route may dial, which hostnames a namespace owns, and which
//! namespaces may publish catch-all routes. Standalone route files are the
//! operator's own and never pass through here.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// An address block: `10.0.0.0/8`, `fd00::/8`, or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Whether `ip` lies in the block (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address block such as 10.0.0.0/8 or fd00::/8");
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr {
            net: canonical(net),
            bits,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The operator's rules for routes from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Tenancy {
    /// `--allow-address-backends`: blocks an `address` backend may resolve into.
    pub allow_address_backends: Vec<Cidr>,
    /// `--shared-hostnames`: any namespace may name any hostname (the old behaviour).
    pub shared_hostnames: bool,
    /// `--catch-all-namespace`: namespaces whose routes may omit `hostnames`.
    pub catch_all_namespaces: Vec<String>,
    /// wsgate's own listeners (plain, TLS, admin): never dialled, or every request
    /// through such a route would be routed again, and again.
    pub own_listeners: Vec<SocketAddr>,
    /// This host's interface addresses, for listeners bound to `0.0.0.0`/`::`.
    pub local_ips: Vec<IpAddr>,
}

impl Tenancy {
    /// Why wsgate never dials `addr` for a route from the cluster, if it never does:
    /// loopback, link-local and unspecified addresses (Kubernetes refuses them in
    /// Endpoints for the same reason) and wsgate's own listeners.
    pub fn never_dialled(&self, addr: SocketAddr) -> Option<String> {
        let ip = canonical(addr.ip());
        let what = match ip {
            _ if ip.is_loopback() => Some("a loopback address"),
            _ if ip.is_unspecified() => Some("an unspecified address"),
            IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
            IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("a link-local address"),
            _ => None,
        };
        if let Some(what) = what {
            return Some(format!("{addr} is {what}"));
        }
        let own = self.own_listeners.iter().any(|l| {
            l.port() == addr.port()
                && (canonical(l.ip()) == ip
                    || (l.ip().is_unspecified() && self.local_ips.contains(&ip)))
        });
        own.then(|| format!("{addr} is one of wsgate's own listeners"))
    }

    /// The addresses an `address` backend of a route from the cluster resolves to,
    /// or why it is refused (`AddressNotAllowed`). Every resolved address must be
    /// allowed; the table gets these addresses, never the name, so a later DNS
    /// answer cannot point the route elsewhere.
    pub fn address_backend(&self, address: &str) -> Result<Vec<SocketAddr>, String> {
        if self.allow_address_backends.is_empty() {
            return Err(format!(
                "{address:?}: address backends are not allowed in controller mode (the operator allows them with --allow-address-backends CIDR); use a Service"
            ));
        }
        let resolved: Vec<SocketAddr> = match address.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) => address
                .to_socket_addrs()
                .map_err(|e| format!("{address:?} does not resolve: {e}"))?
                .collect(),
        };
        if resolved.is_empty() {
            return Err(format!("{address:?} resolves to no address"));
        }
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in resolved {
            let a = SocketAddr::new(canonical(a.ip()), a.port());
            if let Some(why) = self.never_dialled(a) {
                return Err(format!("{address:?}: {why}"));
            }
            if !self
                .allow_address_backends
                .iter()
                .any(|c| c.contains(a.ip()))
            {
                let allowed: Vec<String> = self
                    .allow_address_backends
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                return Err(format!(
                    "{address:?}: {} is outside --allow-address-backends ({})",
                    a.ip(),
                    allowed.join(", ")
                ));
            }
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Whether `namespace` may publish a route without hostnames.
    pub fn catch_all_allowed(&self, namespace: &str) -> bool {
        self.catch_all_namespaces.iter().any(|n| n == namespace)
    }
}

/// Who owns each hostname: the namespace of the oldest route naming that exact
/// string (a wildcard is its own string). `routes` come oldest first.
pub fn hostname_owners<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'a str, &'a [String])>,
) -> HashMap<String, (String, String)> {
    let mut owners: HashMap<String, (String, String)> = HashMap::new();
    for (ns, name, hosts) in routes {
        for h in hosts {
            owners
                .entry(h.to_ascii_lowercase())
                .or_insert_with(|| (ns.to_owned(), name.to_owned()));
        }
    }
    owners
}

/// This host's interface addresses (for `0.0.0.0` listeners); empty when the
/// kernel's tables cannot be read.
pub fn local_ips() -> Vec<IpAddr> {
    let mut out = Vec::new();
    // IPv4: the LOCAL routes of /proc/net/fib_trie ("|-- 10.1.2.3" then "/32 host LOCAL").
    if let Ok(text) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<IpAddr> = None;
        for line in text.lines() {
            let t = line.trim_start_matches([' ', '|', '+', '-', '`']);
            if let Ok(ip) = t.trim().parse::<IpAddr>() {
                last = Some(ip);
            } else if line.contains("/32 host LOCAL") {
                if let Some(ip) = last {
                    if !out.contains(&ip) {
                        out.push(ip);
                    }
                }
            }
        }
    }
    // IPv6: /proc/net/if_inet6, 32 hex digits per address.
    if let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in text.lines() {
            let Some(hex) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(n) = u128::from_str_radix(hex, 16) {
                let ip = IpAddr::V6(n.into());
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenancy(allow: &[&str]) -> Tenancy {
        Tenancy {
            allow_address_backends: allow.iter().map(|c| c.parse().unwrap()).collect(),
            own_listeners: vec!["0.0.0.0:8080".parse().unwrap()],
            local_ips: vec!["10.1.2.3".parse().unwrap()],
            ..Tenancy::default()
        }
    }

    #[test]
    fn cidrs_contain_what_they_say() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/8"
            .parse::<Cidr>()
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
    }

    #[test]
    fn address_backends_are_refused_unless_allowed_and_never_to_loopback_or_self() {
        let none = tenancy(&[]);
        assert!(none.address_backend("10.0.0.5:80").is_err());
        let t = tenancy(&["0.0.0.0/0", "::/0"]);
        assert_eq!(
            t.address_backend("10.0.0.5:80").unwrap(),
            vec!["10.0.0.5:80".parse().unwrap()]
        );
        for bad in [
            "127.0.0.1:9090",
            "[::1]:9090",
            "169.254.169.254:80",
            "0.0.0.0:80",
            "10.1.2.3:8080",
            "[::ffff:127.0.0.1]:80",
            "localhost:443",
        ] {
            assert!(t.address_backend(bad).is_err(), "{bad} was allowed");
        }
        // Another port of this host is not a listener of wsgate's.
        assert!(t.address_backend("10.1.2.3:9001").is_ok());
        let narrow = tenancy(&["192.0.2.0/24"]);
        let e = narrow.address_backend("10.0.0.5:80").unwrap_err();
        assert!(e.contains("outside --allow-address-backends"), "{e}");
    }

    #[test]
    fn this_hosts_addresses_are_read_from_the_kernel() {
        let ips = local_ips();
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()), "{ips:?}");
        // Listening on 0.0.0.0:8080: every local address on that port is wsgate itself.
        let t = Tenancy {
            own_listeners: vec!["0.0.0.0:8080".parse().unwrap()],
            local_ips: ips.clone(),
            ..Tenancy::default()
        };
        for ip in &ips {
            let a = SocketAddr::new(*ip, 8080);
            assert!(t.never_dialled(a).is_some(), "{a} would be dialled");
        }
    }

    #[test]
    fn the_oldest_route_owns_a_hostname() {
        let a = ["chat.example.com".to_owned(), "*.example.com".to_owned()];
        let b = ["Chat.example.com".to_owned()];
        let owners = hostname_owners([("a", "r1", &a[..]), ("b", "r2", &b[..])]);
        assert_eq!(owners["chat.example.com"].0, "a");
        assert_eq!(owners["*.example.com"].0, "a");
    }
}
