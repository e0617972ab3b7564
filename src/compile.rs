//! Turns `WebSocketRoute` specs into the proxy's [`RouteTable`]: validation,
//! defaults and backend resolution in one place, called by both the file source and
//! the Kubernetes controller so the two can never disagree about what a route means.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::api::{Backend, PathMatchType, Policy, Tls, WebSocketRouteSpec};
use crate::proxy::table::{
    BackendAddr, Balance, HashKey, HostMatch, LegPing, PathRule, Route, RouteKey,
};

/// A problem with one field of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.backends[1].address`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Where backends and certificates come from: static addresses and files in
/// standalone mode; Services, EndpointSlices and Secrets in controller mode.
pub trait Resolver {
    /// The addresses behind `spec.backends[index]`.
    fn backends(
        &self,
        namespace: &str,
        index: usize,
        backend: &Backend,
    ) -> Result<Vec<BackendAddr>, FieldError>;
    /// The certificate named by `spec.tls`.
    fn certificate(&self, namespace: &str, tls: &Tls) -> Result<Arc<CertifiedKey>, FieldError>;
}

/// Checks a static `host:port`.
pub fn check_address(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    if host.is_empty() || !port_ok {
        return Err(format!(
            "{address:?} is not host:port with a port from 1 to 65535"
        ));
    }
    Ok(())
}

/// Parses a PEM certificate chain and private key into a signing certificate.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unreadable certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM data".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("unreadable private key PEM: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("certificate and key do not belong together: {e}"))?;
    Ok(Arc::new(ck))
}

/// Checks what the schema alone cannot (the CRD states the same rules in CEL).
pub fn validate(spec: &WebSocketRouteSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut err = |f: String, m: String| errs.push(FieldError::new(f, m));
    for (i, h) in spec.hostnames.iter().enumerate() {
        if HostMatch::parse(h).is_none() {
            err(
                format!("spec.hostnames[{i}]"),
                format!("{h:?} is not a host name or a *.suffix wildcard"),
            );
        }
    }
    if !spec.path.value.starts_with('/') {
        err(
            "spec.path.value".into(),
            format!("{:?} must start with /", spec.path.value),
        );
    }
    if spec.backends.is_empty() {
        err(
            "spec.backends".into(),
            "at least one backend is required".into(),
        );
    }
    for (i, b) in spec.backends.iter().enumerate() {
        match (&b.service, &b.address) {
            (Some(_), Some(_)) | (None, None) => err(
                format!("spec.backends[{i}]"),
                "set exactly one of service and address".into(),
            ),
            (None, Some(a)) => {
                if let Err(e) = check_address(a) {
                    err(format!("spec.backends[{i}].address"), e);
                }
            }
            (Some(s), None) if s.name.is_empty() => err(
                format!("spec.backends[{i}].service.name"),
                "must not be empty".into(),
            ),
            _ => {}
        }
    }
    let lb = &spec.load_balancing;
    if lb.policy == Policy::ConsistentHash {
        match &lb.hash_on {
            None => err(
                "spec.loadBalancing.hashOn".into(),
                "required when policy is ConsistentHash".into(),
            ),
            Some(h) => {
                let n = usize::from(h.client_ip)
                    + usize::from(h.header.is_some())
                    + usize::from(h.cookie.is_some())
                    + usize::from(h.query.is_some());
                if n != 1 {
                    err(
                        "spec.loadBalancing.hashOn".into(),
                        "set exactly one of clientIP, header, cookie, query".into(),
                    );
                }
            }
        }
    }
    if let Some(c) = &lb.cookie {
        if c.name.is_empty()
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            err(
                "spec.loadBalancing.cookie.name".into(),
                format!("{:?} is not a valid cookie name", c.name),
            );
        }
    }
    let ka = &spec.keepalive;
    if !ka.interval.is_zero() && (ka.timeout.is_zero() || ka.timeout >= ka.interval) {
        err(
            "spec.keepalive.timeout".into(),
            format!(
                "must be above 0 and shorter than interval ({})",
                ka.interval
            ),
        );
    }
    if let Some(b) = &ka.backend {
        if !b.interval.is_zero() && (b.timeout.is_zero() || b.timeout >= b.interval) {
            err(
                "spec.keepalive.backend.timeout".into(),
                format!("must be above 0 and shorter than interval ({})", b.interval),
            );
        }
    }
    if spec.timeouts.connect.is_zero() {
        err("spec.timeouts.connect".into(), "must be above 0".into());
    }
    if spec.timeouts.handshake.is_zero() {
        err("spec.timeouts.handshake".into(), "must be above 0".into());
    }
    let ph = &spec.passive_health;
    if ph.max_fails > 0 && ph.fail_timeout.is_zero() {
        err(
            "spec.passiveHealth.failTimeout".into(),
            "must be above 0 when maxFails is above 0 (maxFails: 0 turns passive health off)"
                .into(),
        );
    }
    for (i, p) in spec.subprotocols.iter().enumerate() {
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            err(
                format!("spec.subprotocols[{i}]"),
                format!("{p:?} is not a valid token"),
            );
        }
    }
    for (i, o) in spec.allowed_origins.iter().enumerate() {
        if o.is_empty() {
            err(
                format!("spec.allowedOrigins[{i}]"),
                "must not be empty".into(),
            );
        }
    }
    errs
}

/// Compiles one route. `namespace`/`name` identify it; the resolver supplies
/// backend addresses and certificates.
pub fn compile(
    namespace: &str,
    name: &str,
    spec: &WebSocketRouteSpec,
    resolver: &dyn Resolver,
) -> Result<Route, Vec<FieldError>> {
    let mut errs = validate(spec);
    let mut backends = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        match resolver.backends(namespace, i, b) {
            Ok(addrs) => backends.extend(addrs),
            Err(e) => errs.push(e),
        }
    }
    let tls = match &spec.tls {
        Some(t) => match resolver.certificate(namespace, t) {
            Ok(c) => Some(c),
            Err(e) => {
                errs.push(e);
                None
            }
        },
        None => None,
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    let lb = &spec.load_balancing;
    let balance = match lb.policy {
        Policy::RoundRobin => Balance::RoundRobin,
        Policy::LeastConnections => Balance::LeastConnections,
        Policy::ConsistentHash => {
            let h = lb.hash_on.clone().unwrap_or_default();
            Balance::ConsistentHash(match (h.client_ip, h.header, h.cookie, h.query) {
                (true, ..) => HashKey::ClientIp,
                (_, Some(x), ..) => HashKey::Header(x.to_ascii_lowercase()),
                (_, _, Some(x), _) => HashKey::Cookie(x),
                (_, _, _, Some(x)) => HashKey::Query(x),
                _ => HashKey::ClientIp,
            })
        }
        Policy::Cookie => {
            let c = lb.cookie.clone().unwrap_or_default();
            Balance::Cookie {
                name: c.name,
                ttl: c.ttl.non_zero(),
            }
        }
    };
    let ka = &spec.keepalive;
    let leg = |interval: crate::api::Duration, timeout: crate::api::Duration| {
        interval.non_zero().map(|interval| LegPing {
            interval,
            timeout: timeout.0,
        })
    };
    Ok(Route {
        key: RouteKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        hosts: spec
            .hostnames
            .iter()
            .filter_map(|h| HostMatch::parse(h))
            .collect(),
        path: match spec.path.kind {
            PathMatchType::Exact => PathRule::Exact(spec.path.value.clone()),
            PathMatchType::PathPrefix => PathRule::Prefix(spec.path.value.clone()),
        },
        backends,
        balance,
        client_ping: leg(ka.interval, ka.timeout),
        backend_ping: ka.backend.as_ref().and_then(|b| leg(b.interval, b.timeout)),
        connect_timeout: spec.timeouts.connect.0,
        handshake_timeout: spec.timeouts.handshake.0,
        idle_timeout: spec.timeouts.idle.non_zero(),
        max_lifetime: spec.timeouts.max_lifetime.non_zero(),
        max_connections: spec.limits.max_connections,
        max_connections_per_client_ip: spec.limits.max_connections_per_client_ip,
        max_message_bytes: spec.limits.max_message_bytes,
        allowed_origins: spec.allowed_origins.clone(),
        subprotocols: spec.subprotocols.clone(),
        proxy_http: spec.proxy_http,
        drain_grace: spec.drain.grace_period.0,
        tls,
        passive_health: crate::proxy::table::PassiveHealth {
            max_fails: spec.passive_health.max_fails,
            fail_timeout: spec.passive_health.fail_timeout.0,
        },
    })
}

/// Whether two routes claim the same requests: the same path rule and a shared
/// hostname (or both without hostnames).
pub fn overlaps(a: &Route, b: &Route) -> bool {
    a.path == b.path
        && (a.hosts.is_empty() && b.hosts.is_empty() || a.hosts.iter().any(|h| b.hosts.contains(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> WebSocketRouteSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let s = spec("backends: [{address: '127.0.0.1:9000'}]");
        assert!(validate(&s).is_empty());
        assert_eq!(s.keepalive.interval.to_string(), "30s");
        assert_eq!(s.drain.grace_period.to_string(), "30s");
        assert!(s.proxy_http);
        assert_eq!(s.passive_health.max_fails, 1);
        assert_eq!(s.passive_health.fail_timeout.to_string(), "10s");
    }

    #[test]
    fn passive_health_needs_a_fail_timeout() {
        let s = spec("backends: [{address: 'a:1'}]\npassiveHealth: {maxFails: 2, failTimeout: 0s}");
        let fields: Vec<_> = validate(&s).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["spec.passiveHealth.failTimeout"]);
        let off =
            spec("backends: [{address: 'a:1'}]\npassiveHealth: {maxFails: 0, failTimeout: 0s}");
        assert!(validate(&off).is_empty());
    }

    #[test]
    fn reports_each_bad_field() {
        let s = spec(
            "path: {value: chat}\nbackends: [{address: nope}, {}]\nloadBalancing: {policy: ConsistentHash}\nkeepalive: {interval: 5s, timeout: 10s}",
        );
        let fields: Vec<_> = validate(&s).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.path.value",
                "spec.backends[0].address",
                "spec.backends[1]",
                "spec.loadBalancing.hashOn",
                "spec.keepalive.timeout"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_yaml::from_str::<WebSocketRouteSpec>("backends: []\nkeepAlive: {}").is_err());
    }
}
