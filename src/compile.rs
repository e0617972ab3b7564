//! Turns `WebSocketRoute` specs into the proxy's [`RouteTable`]: validation,
//! defaults and backend resolution in one place, called by both the file source and
//! the Kubernetes controller so the two can never disagree about what a route means.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::api::{
    Backend, BackendTls, BudgetScope, ClientAccess as ApiClientAccess, FleetLimits, JwksRef,
    JwtAuth, OnExceed, OnPolicyChange, PathMatchType, Policy, Tls, WebSocketRouteSpec,
};
use crate::proxy::client::{parse_cidr, Cidrs};
use crate::proxy::route::auth::{self, KeySet, Keys, RemoteJwks, TokenSource};
use crate::proxy::route::backend_tls::{self, Material};
use crate::proxy::route::policy::{
    Balance, BudgetPolicy, ClientAccess, Exceed, FleetPolicy, HashKey, LegPing, PassiveHealth,
    RateLimit, RebalancePolicy, Tracing,
};
use crate::proxy::route::table::{BackendAddr, HostMatch, PathRule, Route, RouteKey};

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
    /// The key set named by `spec.auth.jwt.jwks` when it is not a `uri`: a file in
    /// standalone mode, a Secret or ConfigMap key in controller mode.
    fn jwks(&self, namespace: &str, jwks: &JwksRef) -> Result<Arc<KeySet>, FieldError>;
    /// The CA and client certificate PEM named by `spec.backendTLS`: files in
    /// standalone mode, ConfigMap/Secret keys in controller mode.
    fn backend_tls(&self, namespace: &str, tls: &BackendTls) -> Result<Material, FieldError>;
}

/// Parses JWKS JSON read from a file, Secret or ConfigMap.
pub fn key_set(json: &[u8], what: &str) -> Result<Arc<KeySet>, FieldError> {
    KeySet::parse(json)
        .map(Arc::new)
        .map_err(|e| FieldError::new(JWKS, format!("{what}: {e}")))
}

const JWT: &str = "spec.auth.jwt";
const JWKS: &str = "spec.auth.jwt.jwks";

/// The `auth.jwt` rules (the CRD states the same ones in CEL).
fn validate_jwt(jwt: &JwtAuth, err: &mut impl FnMut(String, String)) {
    if jwt.issuer.is_empty() {
        err(format!("{JWT}.issuer"), "must not be empty".into());
    }
    let j = &jwt.jwks;
    let set = usize::from(j.secret_name.is_some())
        + usize::from(j.config_map_name.is_some())
        + usize::from(j.file.is_some())
        + usize::from(j.uri.is_some());
    if set != 1 {
        err(
            JWKS.into(),
            "set exactly one of secretName, configMapName, file, uri".into(),
        );
    }
    if (j.secret_name.is_some() || j.config_map_name.is_some()) && j.key.is_none() {
        err(
            format!("{JWKS}.key"),
            "required with secretName or configMapName".into(),
        );
    }
    if let Some(u) = &j.uri {
        // Keys fetched in the clear would let anyone on the path sign tokens.
        let ok = u
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("https") && u.host().is_some());
        if !ok {
            err(
                format!("{JWKS}.uri"),
                format!("{u:?} is not an https:// URL (keys are only fetched over TLS)"),
            );
        }
    }
    if j.refresh.is_some() && j.uri.is_none() {
        err(format!("{JWKS}.refresh"), "only applies to uri".into());
    }
    if j.refresh.is_some_and(|r| r.0 < MIN_JWKS_REFRESH) {
        err(
            format!("{JWKS}.refresh"),
            format!(
                "must be at least {}s (each replica fetches the URI this often)",
                MIN_JWKS_REFRESH.as_secs()
            ),
        );
    }
    if jwt.audiences.is_empty() {
        err(
            format!("{JWT}.audiences"),
            "at least one audience is required: without it a token the issuer minted for any other service opens tunnels".into(),
        );
    }
    if jwt.token_from.is_empty() {
        err(
            format!("{JWT}.tokenFrom"),
            "at least one source is required".into(),
        );
    }
    for (i, t) in jwt.token_from.iter().enumerate() {
        let f = format!("{JWT}.tokenFrom[{i}]");
        let n = usize::from(t.header.is_some())
            + usize::from(t.query.is_some())
            + usize::from(t.cookie.is_some())
            + usize::from(t.subprotocol.is_some());
        if n != 1 {
            err(
                f.clone(),
                "set exactly one of header, query, cookie, subprotocol".into(),
            );
        }
        if t.prefix.is_some() && t.header.is_none() {
            err(format!("{f}.prefix"), "only applies to header".into());
        }
        if let Some(h) = &t.header {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                err(format!("{f}.header"), format!("{h:?} is not a header name"));
            }
        }
        for (field, v) in [
            ("query", &t.query),
            ("cookie", &t.cookie),
            ("subprotocol", &t.subprotocol),
        ] {
            if v.as_ref().is_some_and(|v| v.is_empty()) {
                err(format!("{f}.{field}"), "must not be empty".into());
            }
        }
    }
    for (i, c) in jwt.claims_to_headers.iter().enumerate() {
        let f = format!("{JWT}.claimsToHeaders[{i}]");
        if c.claim.is_empty() {
            err(format!("{f}.claim"), "must not be empty".into());
        }
        if HeaderName::from_bytes(c.header.as_bytes()).is_err() {
            err(
                format!("{f}.header"),
                format!("{:?} is not a header name", c.header),
            );
        }
    }
}

/// Compiles `auth.jwt` (already validated).
fn compile_jwt(
    namespace: &str,
    jwt: &JwtAuth,
    resolver: &dyn Resolver,
) -> Result<auth::JwtAuth, FieldError> {
    let keys = match &jwt.jwks.uri {
        Some(u) => {
            let uri = u
                .parse()
                .map_err(|_| FieldError::new(format!("{JWKS}.uri"), "not a URL"))?;
            let refresh = jwt.jwks.refresh.map_or(DEFAULT_JWKS_REFRESH, |r| r.0);
            Keys::Remote(RemoteJwks::shared(uri, refresh))
        }
        None => Keys::Fixed(resolver.jwks(namespace, &jwt.jwks)?),
    };
    let header = |h: &str| HeaderName::from_bytes(h.as_bytes()).ok();
    let sources = jwt
        .token_from
        .iter()
        .filter_map(|t| match (&t.header, &t.query, &t.cookie, &t.subprotocol) {
            (Some(h), ..) => Some(TokenSource::Header {
                name: header(h)?,
                prefix: t.prefix.clone().unwrap_or_default(),
            }),
            (_, Some(q), ..) => Some(TokenSource::Query(q.clone())),
            (_, _, Some(c), _) => Some(TokenSource::Cookie(c.clone())),
            (_, _, _, Some(p)) => Some(TokenSource::Subprotocol(p.clone())),
            _ => None,
        })
        .collect();
    Ok(auth::JwtAuth {
        issuer: jwt.issuer.clone(),
        audiences: jwt.audiences.clone(),
        keys,
        sources,
        claims_to_headers: jwt
            .claims_to_headers
            .iter()
            .filter_map(|c| Some((c.claim.clone(), header(&c.header)?)))
            .collect(),
        close_on_expiry: jwt.close_on_expiry,
        clock_skew: jwt.clock_skew.0,
    })
}

const BACKEND_TLS: &str = "spec.backendTLS";

/// The `backendTLS` rules (the CRD states the same ones in CEL).
fn validate_backend_tls(t: &BackendTls, err: &mut impl FnMut(String, String)) {
    if let Some(h) = &t.hostname {
        if let Err(e) = backend_tls::server_name(h) {
            err(format!("{BACKEND_TLS}.hostname"), e);
        }
    }
    match (&t.cert_file, &t.key_file) {
        (Some(_), None) => err(
            format!("{BACKEND_TLS}.keyFile"),
            "required with certFile".into(),
        ),
        (None, Some(_)) => err(
            format!("{BACKEND_TLS}.certFile"),
            "required with keyFile".into(),
        ),
        _ => {}
    }
    if t.ca_file.is_some() && !t.ca_certificate_refs.is_empty() {
        err(
            format!("{BACKEND_TLS}.caFile"),
            "set caCertificateRefs (controller mode) or caFile (standalone mode), not both".into(),
        );
    }
    if t.client_certificate_ref.is_some() && (t.cert_file.is_some() || t.key_file.is_some()) {
        err(
            format!("{BACKEND_TLS}.certFile"),
            "set clientCertificateRef (controller mode) or certFile/keyFile (standalone mode), not both".into(),
        );
    }
    for (i, r) in t.ca_certificate_refs.iter().enumerate() {
        let f = format!("{BACKEND_TLS}.caCertificateRefs[{i}]");
        if r.name.is_empty() {
            err(format!("{f}.name"), "must not be empty".into());
        }
        if r.key.is_empty() {
            err(format!("{f}.key"), "must not be empty".into());
        }
    }
    if t.client_certificate_ref
        .as_ref()
        .is_some_and(|r| r.name.is_empty())
    {
        err(
            format!("{BACKEND_TLS}.clientCertificateRef.name"),
            "must not be empty".into(),
        );
    }
}

/// The default name a backend's certificate must carry: `<service>.<namespace>.svc`
/// for a Service, the host of an address.
fn default_server_name(namespace: &str, b: &Backend) -> Option<String> {
    match (&b.service, &b.address) {
        (Some(s), _) => Some(format!("{}.{namespace}.svc", s.name)),
        (None, Some(a)) => a.rsplit_once(':').map(|(h, _)| h.to_owned()),
        (None, None) => None,
    }
}

/// The shortest `refresh` of a JWKS `uri`.
const MIN_JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a JWKS `uri` is fetched again unless `refresh` says otherwise.
const DEFAULT_JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);

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
    // Any timeout above zero: pings repeat every interval until one is answered or
    // the timeout runs out, so it may be longer than the interval.
    let ka = &spec.keepalive;
    if !ka.interval.is_zero() && ka.timeout.is_zero() {
        err(
            "spec.keepalive.timeout".into(),
            "must be above 0 while pings are on".into(),
        );
    }
    if let Some(b) = &ka.backend {
        if !b.interval.is_zero() && b.timeout.is_zero() {
            err(
                "spec.keepalive.backend.timeout".into(),
                "must be above 0 while pings are on".into(),
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
    if let Some(jwt) = spec.auth.as_ref().and_then(|a| a.jwt.as_ref()) {
        validate_jwt(jwt, &mut err);
        // A browser sends cookies with any page's WebSocket to this host: without an
        // Origin check, any site could open a tunnel as the user (cross-site
        // WebSocket hijacking).
        for (i, t) in jwt.token_from.iter().enumerate() {
            if t.cookie.is_some() && spec.allowed_origins.is_empty() {
                err(
                    format!("{JWT}.tokenFrom[{i}].cookie"),
                    "a cookie token needs spec.allowedOrigins: browsers send cookies with cross-site WebSockets".into(),
                );
            }
        }
    } else if spec.auth.is_some() {
        err("spec.auth".into(), "set jwt".into());
    }
    validate_rate_limits(spec, &mut err);
    validate_rebalance(spec, &mut err);
    if let Some(t) = &spec.backend_tls {
        validate_backend_tls(t, &mut err);
    }
    validate_client_access(spec, &mut err);
    if let Some(r) = spec.tracing.as_ref().and_then(|t| t.sampling_ratio) {
        if !(0.0..=1.0).contains(&r) {
            err(
                "spec.tracing.samplingRatio".into(),
                format!("{r} must be from 0 to 1"),
            );
        }
    }
    validate_fleet_limits(spec, crate::proxy::fleet::configured(), &mut err);
    errs
}

/// `fleetLimits`: only with a store to count in; a subject needs a token.
fn validate_fleet_limits(
    spec: &WebSocketRouteSpec,
    store: bool,
    err: &mut impl FnMut(String, String),
) {
    let Some(f) = &spec.fleet_limits else { return };
    if !store {
        err(
            "spec.fleetLimits".into(),
            "needs wsgate to run with --limits-store (the Redis the replicas count in)".into(),
        );
    }
    let jwt = spec.auth.as_ref().is_some_and(|a| a.jwt.is_some());
    if f.max_connections_per_subject > 0 && !jwt {
        err(
            "spec.fleetLimits.maxConnectionsPerSubject".into(),
            "needs auth.jwt: the subject is the token's sub".into(),
        );
    }
    if let Some(b) = &f.message_budget {
        if b.scope == BudgetScope::Subject && !jwt {
            err(
                "spec.fleetLimits.messageBudget.scope".into(),
                "Subject needs auth.jwt (or use scope Route)".into(),
            );
        }
        if b.messages == 0 && b.bytes == 0 {
            err(
                "spec.fleetLimits.messageBudget".into(),
                "set messages or bytes above 0".into(),
            );
        }
        if b.window.is_zero() {
            err(
                "spec.fleetLimits.messageBudget.window".into(),
                "must be above 0".into(),
            );
        }
    }
}

/// The compiled `fleetLimits` (validated before).
fn fleet_policy(f: &FleetLimits) -> FleetPolicy {
    FleetPolicy {
        max_connections: f.max_connections,
        max_connections_per_client_ip: f.max_connections_per_client_ip,
        max_connections_per_subject: f.max_connections_per_subject,
        budget: f.message_budget.as_ref().map(|b| BudgetPolicy {
            per_subject: b.scope == BudgetScope::Subject,
            messages: b.messages,
            bytes: b.bytes,
            window: b.window.0,
        }),
    }
}

/// `limits`: a bucket depth means nothing without its rate.
fn validate_rate_limits(spec: &WebSocketRouteSpec, err: &mut impl FnMut(String, String)) {
    let l = &spec.limits;
    if l.burst > 0 && l.messages_per_second == 0 {
        err(
            "spec.limits.burst".into(),
            "needs messagesPerSecond above 0".into(),
        );
    }
    if l.burst_bytes > 0 && l.bytes_per_second == 0 {
        err(
            "spec.limits.burstBytes".into(),
            "needs bytesPerSecond above 0".into(),
        );
    }
}

/// `rebalance`: a fraction in (0, 1], a window above 0, and a policy that lets a
/// closed client land elsewhere (Cookie and ConsistentHash would send it back).
fn validate_rebalance(spec: &WebSocketRouteSpec, err: &mut impl FnMut(String, String)) {
    let Some(r) = &spec.rebalance else { return };
    if !matches!(
        spec.load_balancing.policy,
        Policy::RoundRobin | Policy::LeastConnections
    ) {
        err(
            "spec.rebalance".into(),
            "valid only with loadBalancing.policy RoundRobin or LeastConnections".into(),
        );
    }
    if !(r.max_fraction > 0.0 && r.max_fraction <= 1.0) {
        err(
            "spec.rebalance.maxFraction".into(),
            format!("{} must be above 0 and at most 1", r.max_fraction),
        );
    }
    if r.over.is_zero() {
        err("spec.rebalance.over".into(), "must be above 0".into());
    }
}

/// `clientAccess`: every entry a CIDR or an address, a prefix length in 1..=128.
fn validate_client_access(spec: &WebSocketRouteSpec, err: &mut impl FnMut(String, String)) {
    let Some(a) = &spec.client_access else { return };
    for (list, entries) in [("allow", &a.allow), ("deny", &a.deny)] {
        for (i, e) in entries.iter().enumerate() {
            if let Err(why) = parse_cidr(e) {
                err(format!("spec.clientAccess.{list}[{i}]"), why);
            }
        }
    }
    if !(1..=128).contains(&a.ipv6_prefix_length) {
        err(
            "spec.clientAccess.ipv6PrefixLength".into(),
            format!("{} must be from 1 to 128", a.ipv6_prefix_length),
        );
    }
}

/// The compiled `clientAccess` (validated before).
fn client_access(a: &ApiClientAccess) -> Option<ClientAccess> {
    Some(ClientAccess {
        allow: Cidrs::parse(&a.allow).ok()?,
        deny: Cidrs::parse(&a.deny).ok()?,
        ipv6_prefix_length: a.ipv6_prefix_length,
        close_denied: a.on_policy_change == OnPolicyChange::CloseDenied,
    })
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
    let mut tls_names = std::collections::HashMap::new();
    for (i, b) in spec.backends.iter().enumerate() {
        match resolver.backends(namespace, i, b) {
            Ok(addrs) => {
                let name = default_server_name(namespace, b)
                    .and_then(|n| backend_tls::server_name(&n).ok());
                for a in &addrs {
                    if let Some(n) = &name {
                        tls_names
                            .entry(a.address.to_string())
                            .or_insert_with(|| n.clone());
                    }
                }
                backends.extend(addrs);
            }
            Err(e) => errs.push(e),
        }
    }
    let tls_invalid = errs.iter().any(|e| e.field.starts_with(BACKEND_TLS));
    let backend_tls = match spec.backend_tls.as_ref().filter(|_| !tls_invalid) {
        None => None,
        Some(t) => {
            let hostname = t
                .hostname
                .as_deref()
                .and_then(|h| backend_tls::server_name(h).ok());
            let built = resolver.backend_tls(namespace, t).and_then(|m| {
                backend_tls::BackendTls::new(&m, hostname, tls_names)
                    .map_err(|e| FieldError::new(BACKEND_TLS, e))
            });
            match built {
                Ok(b) => Some(Arc::new(b)),
                Err(e) => {
                    errs.push(e);
                    None
                }
            }
        }
    };
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
    let jwt = spec.auth.as_ref().and_then(|a| a.jwt.as_ref());
    // A malformed `auth` is already reported; resolving it would only add noise.
    let auth_invalid = errs.iter().any(|e| e.field.starts_with("spec.auth"));
    let jwt = jwt.filter(|_| !auth_invalid);
    let auth = match jwt.map(|j| compile_jwt(namespace, j, resolver)) {
        Some(Ok(a)) => Some(Arc::new(a)),
        Some(Err(e)) => {
            errs.push(e);
            None
        }
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
        auth,
        rate_limit: RateLimit::new(
            spec.limits.messages_per_second,
            spec.limits.burst,
            spec.limits.bytes_per_second,
            spec.limits.burst_bytes,
            match spec.limits.on_exceed {
                OnExceed::Close => Exceed::Close,
                OnExceed::Throttle => Exceed::Throttle,
            },
        ),
        rebalance: spec.rebalance.as_ref().map(|r| RebalancePolicy {
            max_fraction: r.max_fraction,
            over: r.over.0,
        }),
        passive_health: PassiveHealth {
            max_fails: spec.passive_health.max_fails,
            fail_timeout: spec.passive_health.fail_timeout.0,
        },
        backend_tls,
        client_access: spec.client_access.as_ref().and_then(client_access),
        gateway: None,
        tracing: spec
            .tracing
            .as_ref()
            .map_or_else(Default::default, |t| Tracing {
                sampling_ratio: t.sampling_ratio,
                trust_incoming_context: t.trust_incoming_context,
            }),
        fleet: spec.fleet_limits.as_ref().map(fleet_policy),
    })
}

/// Whether two routes claim the same requests: the same path rule and a shared
/// hostname (or both without hostnames).
pub fn overlaps(a: &Route, b: &Route) -> bool {
    a.path == b.path
        && (a.hosts.is_empty() && b.hosts.is_empty() || a.hosts.iter().any(|h| b.hosts.contains(h)))
}

/// The requests accepted routes claim, indexed by path rule and hostname, so a
/// table of thousands of routes is checked for [`overlaps`] in one lookup per
/// hostname instead of one comparison per earlier route (5,000 routes: 12.5
/// million comparisons, most of a reload's time, before this index).
#[derive(Default)]
pub struct Claims<T> {
    by: HashMap<(PathRule, Option<HostMatch>), T>,
}

impl<T: Clone> Claims<T> {
    /// What claimed a request that `route` would claim too, if anything.
    pub fn overlapping(&self, route: &Route) -> Option<&T> {
        claim_keys(route).find_map(|k| self.by.get(&k))
    }

    /// Records `route`'s claims as `owner`'s.
    pub fn insert(&mut self, route: &Route, owner: T) {
        for k in claim_keys(route) {
            self.by.entry(k).or_insert_with(|| owner.clone());
        }
    }
}

fn claim_keys(route: &Route) -> impl Iterator<Item = (PathRule, Option<HostMatch>)> + '_ {
    let hosts: Vec<Option<HostMatch>> = if route.hosts.is_empty() {
        vec![None]
    } else {
        route.hosts.iter().cloned().map(Some).collect()
    };
    hosts.into_iter().map(|h| (route.path.clone(), h))
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
            "path: {value: chat}\nbackends: [{address: nope}, {}]\nloadBalancing: {policy: ConsistentHash}\nkeepalive: {interval: 5s, timeout: 0s}",
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
    fn keepalive_timeout_may_be_longer_than_the_interval() {
        for ka in [
            "{interval: 1s, timeout: 1s}",
            "{interval: 1s, timeout: 3s}",
            "{interval: 30s, timeout: 10s, backend: {interval: 5s, timeout: 20s}}",
            "{interval: 0s, timeout: 0s}",
        ] {
            let s = spec(&format!(
                "backends: [{{address: '127.0.0.1:9000'}}]\nkeepalive: {ka}"
            ));
            assert!(validate(&s).is_empty(), "{ka}: {:?}", validate(&s));
        }
        let s = spec("backends: [{address: '127.0.0.1:9000'}]\nkeepalive: {interval: 1s, timeout: 1s, backend: {interval: 1s, timeout: 0s}}");
        let fields: Vec<_> = validate(&s).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["spec.keepalive.backend.timeout"]);
    }

    #[test]
    fn rate_limits_and_rebalance_are_checked() {
        let s = spec(
            "backends: [{address: '127.0.0.1:9000'}]\nlimits: {burst: 5, burstBytes: 9}\nloadBalancing: {policy: Cookie}\nrebalance: {maxFraction: 1.5, over: 0s}",
        );
        let fields: Vec<_> = validate(&s).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.limits.burst",
                "spec.limits.burstBytes",
                "spec.rebalance",
                "spec.rebalance.maxFraction",
                "spec.rebalance.over"
            ]
        );
        let ok = spec(
            "backends: [{address: '127.0.0.1:9000'}]\nlimits: {messagesPerSecond: 10, onExceed: Throttle}\nloadBalancing: {policy: LeastConnections}\nrebalance: {}",
        );
        assert!(validate(&ok).is_empty());
        assert_eq!(ok.rebalance.unwrap().over.to_string(), "5m");
    }

    #[test]
    fn a_sampling_ratio_outside_0_to_1_is_refused_with_the_field_named() {
        let errs = validate(&spec(
            "backends: [{address: '127.0.0.1:9000'}]\ntracing: {samplingRatio: 1.5}",
        ));
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.tracing.samplingRatio"]);
        let ok = spec("backends: [{address: '127.0.0.1:9000'}]\ntracing: {samplingRatio: 0}");
        assert!(validate(&ok).is_empty());
        let t = ok.tracing.unwrap();
        assert!(t.trust_incoming_context, "trusted unless a route says not");
        assert_eq!(t.sampling_ratio, Some(0.0));
    }

    #[test]
    fn client_access_lists_are_checked_with_the_field_named() {
        let errs = validate(&spec(
            "backends: [{address: '127.0.0.1:9000'}]\nclientAccess: {allow: [10.0.0.0/8, 10.0.0.0/33], deny: [nope], ipv6PrefixLength: 0}",
        ));
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.clientAccess.allow[1]",
                "spec.clientAccess.deny[0]",
                "spec.clientAccess.ipv6PrefixLength"
            ]
        );
        let ok = spec("backends: [{address: '127.0.0.1:9000'}]\nclientAccess: {deny: [192.0.2.7]}");
        assert!(validate(&ok).is_empty());
        let a = client_access(ok.client_access.as_ref().unwrap()).unwrap();
        assert!(a.close_denied);
        assert_eq!(a.ipv6_prefix_length, 128);
    }

    #[test]
    fn fleet_limits_need_a_store_and_a_token_for_subjects() {
        let f = |yaml: &str, store: bool| {
            let mut errs = Vec::new();
            let s = spec(&format!(
                "backends: [{{address: '127.0.0.1:9000'}}]\n{yaml}"
            ));
            validate_fleet_limits(&s, store, &mut |f: String, _| errs.push(f));
            errs
        };
        assert_eq!(
            f("fleetLimits: {maxConnections: 3}", false),
            ["spec.fleetLimits"]
        );
        assert!(f("fleetLimits: {maxConnections: 3}", true).is_empty());
        assert_eq!(
            f(
                "fleetLimits: {maxConnectionsPerSubject: 1, messageBudget: {window: 0s}}",
                true
            ),
            [
                "spec.fleetLimits.maxConnectionsPerSubject",
                "spec.fleetLimits.messageBudget.scope",
                "spec.fleetLimits.messageBudget",
                "spec.fleetLimits.messageBudget.window",
            ]
        );
        let p = fleet_policy(
            spec("backends: []\nfleetLimits: {messageBudget: {scope: Route, messages: 100, window: 10s}}")
                .fleet_limits
                .as_ref()
                .unwrap(),
        );
        let b = p.budget.unwrap();
        assert!(!b.per_subject);
        assert_eq!((b.messages, b.bytes, b.window.as_secs()), (100, 0, 10));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_yaml::from_str::<WebSocketRouteSpec>("backends: []\nkeepAlive: {}").is_err());
    }

    #[test]
    fn claims_find_exactly_what_overlaps_finds() {
        let route = |name: &str, hosts: &[&str], path: PathRule| {
            let mut r = Route::for_test(name, Balance::RoundRobin, &[("127.0.0.1:1", 1)]);
            r.hosts = hosts.iter().map(|h| HostMatch::parse(h).unwrap()).collect();
            r.path = path;
            r
        };
        let p = |s: &str| PathRule::Prefix(s.into());
        let accepted = [
            route("a", &[], p("/")),
            route("b", &["x.example.com", "*.example.org"], p("/chat")),
            route("c", &["y.example.com"], PathRule::Exact("/chat".into())),
        ];
        let mut claims = Claims::default();
        for (i, r) in accepted.iter().enumerate() {
            claims.insert(r, i);
        }
        for probe in [
            route("d", &[], p("/")),
            route("e", &[], p("/chat")),
            route("f", &["*.example.org"], p("/chat")),
            route("g", &["y.example.com"], p("/chat")),
            route("h", &["y.example.com"], PathRule::Exact("/chat".into())),
            route("i", &["x.example.com"], p("/")),
        ] {
            let slow = accepted.iter().position(|r| overlaps(r, &probe));
            assert_eq!(claims.overlapping(&probe).copied(), slow, "{}", probe.key);
        }
    }
}
