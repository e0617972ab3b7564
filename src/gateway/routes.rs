//! From a [`build`](super::build) output to the proxy's routes: one route per match
//! of each attached HTTPRoute rule, served on its listener's data-plane port, with
//! the defaults a `WebSocketRoute` gets (keepalive on both legs, drain, frame
//! checks) and the rule's conditions and filters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use super::api::{HTTPRouteFilter, HeaderModifier, PathModifier};
use super::build::{BackendPlan, Key, Output, RulePlan};
use super::policy::{self, Policies};
use crate::api::{Backend, PortRef, ServiceRef, WebSocketRouteSpec};
use crate::compile::{self, FieldError, Resolver};
use crate::proxy::route::gateway::{
    GatewayRule, HeaderEdit, PathEdit, Redirect, Rewrite, Timeouts,
};
use crate::proxy::route::table::{BackendAddr, HostMatch, PathRule, Route, RouteKey};

/// The data-plane port of each (Gateway, listener port).
pub type Ports = BTreeMap<(Key, u16), u16>;

/// A bound on the common multiple of endpoint counts weights are scaled by (beyond
/// it a split is rounded down, within a fraction of a per cent).
const MAX_SPLIT: u64 = 10_000;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

/// The routes to serve (a listener without a data-plane port yet is skipped), and
/// the policies whose settings could not be compiled, with why (their routes get
/// the defaults instead).
pub fn routes(
    out: &Output,
    ports: &Ports,
    policies: &Policies,
    resolver: &dyn Resolver,
) -> (Vec<Route>, BTreeMap<Key, String>) {
    let mut routes = Vec::new();
    let mut refused = BTreeMap::new();
    let defaults = policy::settings(&[]).expect("the defaults compile");
    for gw in &out.gateways {
        for l in &gw.listeners {
            let Some(&port) = ports.get(&(gw.key.clone(), l.port)) else {
                continue;
            };
            for rule in &l.rules {
                let layers = policies.layers(&gw.key, &l.name, &rule.route, rule.name.as_deref());
                let specs: Vec<_> = layers.iter().map(|(_, p)| *p).collect();
                // The narrowest policy is blamed when the merge does not compile.
                let owner = layers.last().and_then(|(t, _)| policies.owners.get(*t));
                let build = |spec: &WebSocketRouteSpec| {
                    route(
                        rule,
                        port,
                        l.port,
                        &l.name,
                        l.hostname.as_deref(),
                        spec,
                        resolver,
                    )
                };
                let mut blame = |why: String| {
                    if let Some(owner) = owner {
                        refused.entry(owner.clone()).or_insert(why);
                    }
                };
                let built = match policy::settings(&specs) {
                    Err(e) => {
                        blame(e);
                        build(&defaults)
                    }
                    Ok(spec) => build(&spec).or_else(|e| {
                        if specs.is_empty() {
                            return Err(e);
                        }
                        let why = e
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ");
                        blame(why);
                        build(&defaults)
                    }),
                };
                match built {
                    Ok(r) => routes.push(r),
                    Err(e) => {
                        tracing::warn!(route = %format!("{}/{}", rule.route.0, rule.route.1), rule = rule.rule, error = ?e, "HTTPRoute rule not served")
                    }
                }
            }
        }
    }
    (routes, refused)
}

/// A resolver for a policy's settings: its backends are the HTTPRoute's (resolved
/// apart), the rest (JWKS and backend TLS material) is the cluster's.
struct Settings<'a>(&'a dyn Resolver);

impl Resolver for Settings<'_> {
    fn backends(&self, _: &str, _: usize, _: &Backend) -> Result<Vec<BackendAddr>, FieldError> {
        Ok(vec![])
    }
    fn certificate(
        &self,
        ns: &str,
        tls: &crate::api::Tls,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, FieldError> {
        self.0.certificate(ns, tls)
    }
    fn jwks(
        &self,
        ns: &str,
        jwks: &crate::api::JwksRef,
    ) -> Result<Arc<crate::proxy::route::auth::KeySet>, FieldError> {
        self.0.jwks(ns, jwks)
    }
    fn backend_tls(
        &self,
        ns: &str,
        t: &crate::api::BackendTls,
    ) -> Result<crate::proxy::route::backend_tls::Material, FieldError> {
        self.0.backend_tls(ns, t)
    }
}

fn route(
    rule: &RulePlan,
    port: u16,
    listener_port: u16,
    listener: &str,
    listener_host: Option<&str>,
    settings: &WebSocketRouteSpec,
    resolver: &dyn Resolver,
) -> Result<Route, Vec<FieldError>> {
    let name = format!("httproute/{}", rule.route.1);
    let mut r = compile::compile(&rule.route.0, &name, settings, &Settings(resolver))?;
    r.key = RouteKey {
        namespace: rule.route.0.clone(),
        name,
    };
    r.hosts = rule
        .hostnames
        .iter()
        .filter_map(|h| HostMatch::parse(h))
        .collect();
    let path = rule.matches.path.clone().unwrap_or_default();
    let value = path.value.unwrap_or_else(|| "/".into());
    r.path = match path.type_.as_deref() {
        Some("Exact") => PathRule::Exact(value),
        _ => PathRule::Prefix(value),
    };
    let mut g = GatewayRule {
        port,
        listener: listener.into(),
        listener_host: listener_host.and_then(HostMatch::parse),
        listener_port,
        method: rule.matches.method.as_deref().and_then(|m| m.parse().ok()),
        headers: rule
            .matches
            .headers
            .iter()
            .filter_map(|h| {
                Some((
                    HeaderName::try_from(h.name.to_ascii_lowercase()).ok()?,
                    h.value.clone(),
                ))
            })
            .collect(),
        query: rule
            .matches
            .query_params
            .iter()
            .map(|q| (q.name.clone(), q.value.clone()))
            .collect(),
        timeouts: Timeouts {
            request: rule
                .timeouts
                .as_ref()
                .and_then(|t| t.request.as_deref())
                .and_then(duration),
            backend_request: rule
                .timeouts
                .as_ref()
                .and_then(|t| t.backend_request.as_deref())
                .and_then(duration),
        },
        ..Default::default()
    };
    // An upgrade's exchange with its backend ends at the 101: the rule's timeouts
    // bound it there (504), as they bound a plain request's response head.
    if let Some(t) = g.timeouts.tightest() {
        r.handshake_timeout = r.handshake_timeout.min(t);
    }
    for f in &rule.filters {
        filter(&mut g, f);
    }
    // Each backendRef's weight is its share of requests, split evenly among its
    // endpoints: per endpoint, weight × L / endpoints (L: the endpoint counts' least
    // common multiple), then all divided by their greatest common divisor, so
    // round-robin cycles stay short and the shares exact.
    let mut resolved = Vec::new();
    for (i, b) in rule.backends.iter().enumerate() {
        let weight = b.weight();
        g.total_weight += weight;
        let BackendPlan::Service { service, port, .. } = b else {
            g.unusable_weight += weight;
            continue;
        };
        let backend = Backend {
            service: Some(ServiceRef {
                name: service.1.clone(),
                port: PortRef::Number(port.port),
            }),
            address: None,
            weight,
        };
        let addrs = resolver
            .backends(&service.0, i, &backend)
            .map_err(|e| vec![e])?;
        resolved.push((weight, addrs));
    }
    let l = resolved
        .iter()
        .fold(1u64, |l, (_, a)| lcm(l, a.len().max(1) as u64))
        .min(MAX_SPLIT);
    let mut backends = Vec::new();
    for (weight, addrs) in resolved {
        let n = addrs.len().max(1) as u64;
        for mut a in addrs {
            a.weight = u32::try_from(u64::from(weight) * l / n).unwrap_or(u32::MAX);
            backends.push(a);
        }
    }
    let d = backends
        .iter()
        .map(|b| u64::from(b.weight))
        .filter(|w| *w > 0)
        .fold(0, gcd);
    if d > 1 {
        for b in &mut backends {
            b.weight = (u64::from(b.weight) / d) as u32;
        }
    }
    r.backends = backends;
    r.gateway = Some(Arc::new(g));
    Ok(r)
}

/// A Gateway API duration (GEP-2257): one to four `<1-5 digits><h|m|s|ms>`, e.g.
/// `500ms`, `1h30m`. `0s` (no timeout) and anything else are `None`; the CRD's
/// pattern admits nothing else.
fn duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else {
            match rest.as_bytes().first()? {
                b'h' => (Duration::from_secs(n * 3600), 1),
                b'm' => (Duration::from_secs(n * 60), 1),
                b's' => (Duration::from_secs(n), 1),
                _ => return None,
            }
        };
        total += unit;
        rest = &rest[len..];
        parts += 1;
    }
    (parts <= 4 && !total.is_zero()).then_some(total)
}

fn edit(m: &HeaderModifier) -> HeaderEdit {
    let pair = |h: &super::api::HeaderValue| {
        Some((
            HeaderName::try_from(h.name.to_ascii_lowercase()).ok()?,
            HeaderValue::try_from(h.value.clone()).ok()?,
        ))
    };
    HeaderEdit {
        set: m.set.iter().filter_map(pair).collect(),
        add: m.add.iter().filter_map(pair).collect(),
        remove: m
            .remove
            .iter()
            .filter_map(|n| HeaderName::try_from(n.to_ascii_lowercase()).ok())
            .collect(),
    }
}

fn path_edit(p: &PathModifier) -> Option<PathEdit> {
    match p.type_.as_str() {
        "ReplaceFullPath" => Some(PathEdit::Full(
            p.replace_full_path.clone().unwrap_or_else(|| "/".into()),
        )),
        "ReplacePrefixMatch" => Some(PathEdit::Prefix(
            p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()),
        )),
        _ => None,
    }
}

fn filter(g: &mut GatewayRule, f: &HTTPRouteFilter) {
    match f.type_.as_str() {
        "RequestHeaderModifier" => {
            if let Some(m) = &f.request_header_modifier {
                g.request_headers = edit(m);
            }
        }
        "ResponseHeaderModifier" => {
            if let Some(m) = &f.response_header_modifier {
                g.response_headers = edit(m);
            }
        }
        "RequestRedirect" => {
            if let Some(r) = &f.request_redirect {
                g.redirect = Some(Redirect {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    port: r.port,
                    path: r.path.as_ref().and_then(path_edit),
                    status: r.status_code.unwrap_or(302),
                });
            }
        }
        "URLRewrite" => {
            if let Some(u) = &f.url_rewrite {
                g.rewrite = Some(Rewrite {
                    hostname: u
                        .hostname
                        .as_ref()
                        .and_then(|h| HeaderValue::try_from(h.clone()).ok()),
                    path: u.path.as_ref().and_then(path_edit),
                });
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::build::ServicePort;

    #[test]
    fn gateway_durations_are_read_as_gep_2257_writes_them() {
        let ms = Duration::from_millis;
        assert_eq!(duration("500ms"), Some(ms(500)));
        assert_eq!(duration("1h30m"), Some(ms(5_400_000)));
        assert_eq!(duration("1h1m1s1ms"), Some(ms(3_661_001)));
        assert_eq!(duration("10s"), Some(ms(10_000)));
        for none in [
            "0s",
            "0ms",
            "",
            "1",
            "1d",
            "1.5s",
            "123456s",
            "1h1m1s1ms1h",
            "s",
            "-1s",
        ] {
            assert_eq!(duration(none), None, "{none}");
        }
    }

    /// Services with 1, 2 or 3 endpoints (by name: `one`, `two`, `three`).
    struct Endpoints;
    impl Resolver for Endpoints {
        fn backends(&self, _: &str, _: usize, b: &Backend) -> Result<Vec<BackendAddr>, FieldError> {
            let name = &b.service.as_ref().unwrap().name;
            let n = match name.as_str() {
                "one" => 1,
                "two" => 2,
                _ => 3,
            };
            Ok((0..n)
                .map(|i| BackendAddr {
                    address: format!("{name}-{i}:80").into(),
                    weight: b.weight,
                })
                .collect())
        }
        fn certificate(
            &self,
            _: &str,
            _: &crate::api::Tls,
        ) -> Result<Arc<rustls::sign::CertifiedKey>, FieldError> {
            unreachable!()
        }
        fn jwks(
            &self,
            _: &str,
            _: &crate::api::JwksRef,
        ) -> Result<Arc<crate::proxy::route::auth::KeySet>, FieldError> {
            unreachable!()
        }
        fn backend_tls(
            &self,
            _: &str,
            _: &crate::api::BackendTls,
        ) -> Result<crate::proxy::route::backend_tls::Material, FieldError> {
            unreachable!()
        }
    }

    fn plan(refs: &[(&str, u32)]) -> RulePlan {
        RulePlan {
            route: ("ns".into(), "r".into()),
            rule: 0,
            name: None,
            hostnames: vec![],
            matches: Default::default(),
            filters: vec![],
            backends: refs
                .iter()
                .map(|(name, weight)| match *name {
                    "missing" => BackendPlan::Invalid { weight: *weight },
                    _ => BackendPlan::Service {
                        service: ("ns".into(), (*name).into()),
                        port: ServicePort {
                            port: 80,
                            name: None,
                            app_protocol: None,
                        },
                        weight: *weight,
                        filters: vec![],
                    },
                })
                .collect(),
            timeouts: None,
        }
    }

    fn weights(refs: &[(&str, u32)]) -> (Vec<u32>, u32, u32) {
        let defaults = policy::settings(&[]).unwrap();
        let r = route(&plan(refs), 20000, 80, "http", None, &defaults, &Endpoints).unwrap();
        let g = r.gateway.unwrap();
        (
            r.backends.iter().map(|b| b.weight).collect(),
            g.unusable_weight,
            g.total_weight,
        )
    }

    #[test]
    fn a_refs_weight_is_split_among_its_endpoints_in_small_whole_numbers() {
        // 70/30 over two Services of two endpoints: 35,35,15,15 = 7,7,3,3.
        assert_eq!(weights(&[("two", 70), ("two", 30)]).0, [7, 7, 3, 3]);
        // One endpoint against three, equal shares: 3 against 1,1,1.
        assert_eq!(weights(&[("one", 1), ("three", 1)]).0, [3, 1, 1, 1]);
        // A zero weight stays zero.
        assert_eq!(weights(&[("one", 1), ("two", 0)]).0, [1, 0, 0]);
    }

    #[test]
    fn an_unresolved_ref_keeps_its_share_for_500s() {
        let (w, unusable, total) = weights(&[("one", 1), ("missing", 3)]);
        assert_eq!((w, unusable, total), (vec![1], 3, 4));
        let (_, unusable, total) = weights(&[]);
        assert_eq!(
            (unusable, total),
            (0, 0),
            "no backendRefs: every request gets 500"
        );
    }
}
