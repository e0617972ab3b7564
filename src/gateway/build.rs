//! From the Gateway API objects of a cluster to what wsgate serves and what it reports:
//! which listeners each Gateway has, which HTTPRoute rules attach to each listener
//! (in the precedence the specification orders them), and the status of every
//! GatewayClass, Gateway and HTTPRoute parent that is wsgate's.
//!
//! A pure function of its [`Inputs`], so every condition and reason is unit tested
//! here; the controller gathers the inputs and writes the statuses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::ResourceExt;
use rustls::sign::CertifiedKey;

use super::api::{
    Gateway, GatewayAddress, GatewayClass, GatewayClassStatus, GatewayStatus, HTTPBackendRef,
    HTTPRoute, HTTPRouteFilter, HTTPRouteMatch, HTTPRouteTimeouts, Listener, ListenerStatus,
    ParentRef, ReferenceGrant, RouteGroupKind, RouteParentStatus, CONTROLLER_NAME, GROUP,
};

/// Namespace and name.
pub type Key = (String, String);

/// One port of a Service, as a backendRef resolves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service port number.
    pub port: u16,
    /// The port's name (EndpointSlices carry it).
    pub name: Option<String>,
    /// `appProtocol` (GEP-1911: `kubernetes.io/ws`, `kubernetes.io/wss`, `kubernetes.io/h2c`).
    pub app_protocol: Option<String>,
}

/// What the controller read from the cluster.
#[derive(Default)]
pub struct Inputs {
    /// Every GatewayClass (only wsgate's are acted on).
    pub classes: Vec<GatewayClass>,
    /// Every Gateway.
    pub gateways: Vec<Gateway>,
    /// Every HTTPRoute.
    pub routes: Vec<HTTPRoute>,
    /// Every ReferenceGrant.
    pub grants: Vec<ReferenceGrant>,
    /// Namespace labels, for `allowedRoutes.namespaces.from: Selector`.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The Services backendRefs name, with their ports.
    pub services: BTreeMap<Key, Vec<ServicePort>>,
    /// The certificate Secrets listeners name: the key pair, or why it is unusable.
    /// A Secret absent from the map does not exist.
    pub certificates: BTreeMap<Key, Result<Arc<CertifiedKey>, String>>,
    /// Each Gateway's addresses, as the data plane was given them.
    pub addresses: BTreeMap<Key, Vec<GatewayAddress>>,
}

/// What to serve and what to report.
#[derive(Default)]
pub struct Output {
    /// Status of wsgate's GatewayClasses, by name.
    pub classes: BTreeMap<String, GatewayClassStatus>,
    /// wsgate's Gateways.
    pub gateways: Vec<GatewayPlan>,
    /// For every HTTPRoute with a parent that is wsgate's: its status entries for
    /// those parents (entries of other controllers are the caller's to keep).
    pub routes: BTreeMap<Key, Vec<RouteParentStatus>>,
}

/// One Gateway: its status and the listeners to serve.
pub struct GatewayPlan {
    /// Namespace and name.
    pub key: Key,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The status to write.
    pub status: GatewayStatus,
    /// The accepted listeners.
    pub listeners: Vec<ListenerPlan>,
}

/// A listener that serves.
pub struct ListenerPlan {
    /// Its name.
    pub name: String,
    /// Its port.
    pub port: u16,
    /// HTTPS (TLS terminated here) rather than HTTP.
    pub tls: bool,
    /// Its hostname; none matches any.
    pub hostname: Option<String>,
    /// The certificates (HTTPS); empty when a reference is unusable.
    pub certificates: Vec<Arc<CertifiedKey>>,
    /// The attached rules, most preferred first, ties broken as the specification says.
    pub rules: Vec<RulePlan>,
}

/// One match of one rule of one HTTPRoute, attached to one listener.
#[derive(Clone, Debug)]
pub struct RulePlan {
    /// The HTTPRoute.
    pub route: Key,
    /// The rule's index in the route.
    pub rule: usize,
    /// The rule's name, if it has one.
    pub name: Option<String>,
    /// Host names it answers (the intersection with the listener's); empty is any.
    pub hostnames: Vec<String>,
    /// The match (path defaulted to `PathPrefix /`).
    pub matches: HTTPRouteMatch,
    /// The rule's filters, in order.
    pub filters: Vec<HTTPRouteFilter>,
    /// The backends; an unusable one stays, so its share of requests gets 500.
    pub backends: Vec<BackendPlan>,
    /// GEP-1742 timeouts.
    pub timeouts: Option<HTTPRouteTimeouts>,
}

/// A backendRef as resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendPlan {
    /// A Service port.
    Service {
        /// Namespace and name.
        service: Key,
        /// The Service port.
        port: ServicePort,
        /// Relative weight.
        weight: u32,
        /// Filters of this backendRef.
        filters: Vec<String>,
    },
    /// Unusable (missing, not permitted, unknown kind): requests it is chosen for get 500.
    Invalid {
        /// Relative weight.
        weight: u32,
    },
}

impl BackendPlan {
    /// Its relative weight.
    pub fn weight(&self) -> u32 {
        match self {
            BackendPlan::Service { weight, .. } | BackendPlan::Invalid { weight } => *weight,
        }
    }
}

/// The route kinds a listener of this protocol can carry.
fn kinds_for(protocol: &str) -> Option<&'static [&'static str]> {
    match protocol {
        "HTTP" | "HTTPS" => Some(&["HTTPRoute"]),
        _ => None,
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

fn key_of<K: ResourceExt>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expression
}

/// Whether `grants` let a `from_kind` in `from_ns` refer to `to_kind` `to_name` in `to_ns`.
fn granted(
    grants: &[ReferenceGrant],
    from_group: &str,
    from_kind: &str,
    from_ns: &str,
    to_group: &str,
    to_kind: &str,
    to: &Key,
) -> bool {
    from_ns == to.0
        || grants
            .iter()
            .filter(|g| g.namespace().as_deref() == Some(&to.0))
            .any(|g| {
                g.spec
                    .from
                    .iter()
                    .any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_ns)
                    && g.spec.to.iter().any(|t| {
                        t.group == to_group
                            && t.kind == to_kind
                            && t.name.as_ref().is_none_or(|n| *n == to.1)
                    })
            })
}

/// A hostname matches a pattern: equal, or a `*.` wildcard covering at least one label.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// The host names a route answers on a listener: empty is any; `None` is no overlap.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let Some(l) = listener else {
        return Some(route.to_vec());
    };
    if route.is_empty() {
        return Some(vec![l.to_string()]);
    }
    let mut out = BTreeSet::new();
    for r in route {
        if host_matches(l, r) || l == r {
            out.insert(r.clone());
        } else if host_matches(r, l) {
            out.insert(l.to_string());
        }
    }
    (!out.is_empty()).then(|| out.into_iter().collect())
}

/// The specification's static precedence of a match: Exact path first, then longer
/// prefixes, then a method, then more header matches, then more query matches.
fn match_rank(m: &HTTPRouteMatch) -> (bool, usize, bool, usize, usize) {
    let (exact, len) = match &m.path {
        Some(p) => (
            p.type_.as_deref() == Some("Exact"),
            p.value.as_deref().unwrap_or("/").len(),
        ),
        None => (false, 1),
    };
    (
        exact,
        len,
        m.method.is_some(),
        m.headers.len(),
        m.query_params.len(),
    )
}

/// A listener with what resolving it found.
type Listed = (Listener, ListenerState);

struct ListenerState {
    status: ListenerStatus,
    accepted: bool,
    certificates: Vec<Arc<CertifiedKey>>,
    rules: Vec<(RuleOrder, RulePlan)>,
}

/// Ties after the match rank: oldest route, then namespace/name, then rule and match order.
type RuleOrder = (
    std::cmp::Reverse<(bool, usize, bool, usize, usize)>,
    Option<jiff::Timestamp>,
    Key,
    usize,
    usize,
);

/// Resolves everything; see the module documentation.
pub fn build(inputs: &Inputs) -> Output {
    let mut out = Output::default();
    let ours: BTreeSet<String> = inputs
        .classes
        .iter()
        .filter(|c| c.spec.controller_name == CONTROLLER_NAME)
        .map(|c| {
            let generation = c.metadata.generation;
            out.classes.insert(
                c.name_any(),
                GatewayClassStatus {
                    conditions: vec![condition(
                        "Accepted",
                        true,
                        "Accepted",
                        "wsgate implements this class",
                        generation,
                    )],
                    supported_features: super::SUPPORTED_FEATURES
                        .iter()
                        .map(|f| super::api::SupportedFeature { name: (*f).into() })
                        .collect(),
                },
            );
            c.name_any()
        })
        .collect();

    let mut gateways: BTreeMap<Key, (&Gateway, Vec<Listed>)> = BTreeMap::new();
    for gw in inputs
        .gateways
        .iter()
        .filter(|g| ours.contains(&g.spec.gateway_class_name))
    {
        let key = key_of(gw);
        let generation = gw.metadata.generation;
        let listeners = gw
            .spec
            .listeners
            .iter()
            .map(|l| {
                (
                    l.clone(),
                    listener_state(inputs, &key, l, &gw.spec.listeners, generation),
                )
            })
            .collect();
        gateways.insert(key, (gw, listeners));
    }

    // Routes, oldest first: parent statuses and attachments.
    let mut routes: Vec<&HTTPRoute> = inputs.routes.iter().collect();
    routes.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            key_of(*r),
        )
    });
    for route in routes {
        let rkey = key_of(route);
        let resolved = resolve_backends(inputs, route);
        let mut parents = Vec::new();
        for parent in &route.spec.parent_refs {
            if parent.group.as_deref().unwrap_or(GROUP) != GROUP
                || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
            {
                continue;
            }
            let gkey = (
                parent.namespace.clone().unwrap_or_else(|| rkey.0.clone()),
                parent.name.clone(),
            );
            let Some((_, listeners)) = gateways.get_mut(&gkey) else {
                continue;
            };
            let generation = route.metadata.generation;
            let accepted = attach(inputs, route, &rkey, parent, listeners, &resolved);
            let (ok, reason, message) = match accepted {
                Ok(()) => (true, "Accepted", "attached".to_string()),
                Err((reason, message)) => (false, reason, message),
            };
            parents.push(RouteParentStatus {
                parent_ref: parent.clone(),
                controller_name: CONTROLLER_NAME.into(),
                conditions: vec![
                    condition("Accepted", ok, reason, message, generation),
                    match &resolved.problem {
                        None => condition(
                            "ResolvedRefs",
                            true,
                            "ResolvedRefs",
                            "all backendRefs resolved",
                            generation,
                        ),
                        Some((reason, message)) => {
                            condition("ResolvedRefs", false, reason, message.clone(), generation)
                        }
                    },
                ],
            });
        }
        if !parents.is_empty() {
            out.routes.insert(rkey, parents);
        }
    }

    for (key, (gw, listeners)) in gateways {
        let generation = gw.metadata.generation;
        let addresses = inputs.addresses.get(&key).cloned().unwrap_or_default();
        let valid = listeners.iter().filter(|(_, s)| s.accepted).count();
        let mut conditions = Vec::new();
        if !gw.spec.addresses.is_empty() {
            conditions.push(condition(
                "Accepted",
                false,
                "UnsupportedAddress",
                "wsgate assigns addresses itself; spec.addresses is not supported",
                generation,
            ));
        } else if valid == listeners.len() {
            conditions.push(condition(
                "Accepted",
                true,
                "Accepted",
                "all listeners are valid",
                generation,
            ));
        } else {
            conditions.push(condition(
                "Accepted",
                valid > 0,
                "ListenersNotValid",
                format!(
                    "{} of {} listeners are not valid",
                    listeners.len() - valid,
                    listeners.len()
                ),
                generation,
            ));
        }
        let programmed = valid > 0 && !addresses.is_empty() && gw.spec.addresses.is_empty();
        conditions.push(if programmed {
            condition("Programmed", true, "Programmed", "serving", generation)
        } else if addresses.is_empty() {
            condition(
                "Programmed",
                false,
                "AddressNotAssigned",
                "no address assigned yet",
                generation,
            )
        } else {
            condition(
                "Programmed",
                false,
                "Invalid",
                "no valid listener",
                generation,
            )
        });
        let mut plan = GatewayPlan {
            key,
            generation,
            status: GatewayStatus {
                addresses,
                conditions,
                listeners: Vec::new(),
            },
            listeners: Vec::new(),
        };
        for (l, mut state) in listeners {
            plan.status.listeners.push(state.status);
            if state.accepted {
                state.rules.sort_by(|a, b| a.0.cmp(&b.0));
                plan.listeners.push(ListenerPlan {
                    name: l.name.clone(),
                    port: l.port,
                    tls: l.protocol == "HTTPS",
                    hostname: l.hostname.clone(),
                    certificates: state.certificates,
                    rules: state.rules.into_iter().map(|(_, r)| r).collect(),
                });
            }
        }
        out.gateways.push(plan);
    }
    out
}

fn listener_state(
    inputs: &Inputs,
    gw: &Key,
    l: &Listener,
    all: &[Listener],
    generation: Option<i64>,
) -> ListenerState {
    let mut conditions = Vec::new();
    let supported = kinds_for(&l.protocol);
    let asked: Vec<RouteGroupKind> = l
        .allowed_routes
        .as_ref()
        .map(|a| a.kinds.clone())
        .unwrap_or_default();
    let mut supported_kinds = Vec::new();
    let mut invalid_kinds = false;
    if let Some(kinds) = supported {
        if asked.is_empty() {
            supported_kinds = kinds
                .iter()
                .map(|k| RouteGroupKind {
                    group: Some(GROUP.into()),
                    kind: (*k).into(),
                })
                .collect();
        } else {
            for k in &asked {
                if k.group.as_deref().unwrap_or(GROUP) == GROUP && kinds.contains(&k.kind.as_str())
                {
                    supported_kinds.push(RouteGroupKind {
                        group: Some(GROUP.into()),
                        kind: k.kind.clone(),
                    });
                } else {
                    invalid_kinds = true;
                }
            }
        }
    }
    let conflicted = all.iter().any(|o| {
        o.name != l.name
            && o.port == l.port
            && (o.protocol != l.protocol || o.hostname == l.hostname)
    });
    let accepted = supported.is_some() && !conflicted;
    conditions.push(match (supported.is_some(), conflicted) {
        (false, _) => condition(
            "Accepted",
            false,
            "UnsupportedProtocol",
            format!("protocol {} is not supported (HTTP, HTTPS)", l.protocol),
            generation,
        ),
        (true, true) => condition(
            "Accepted",
            false,
            "PortUnavailable",
            "another listener on this port conflicts",
            generation,
        ),
        _ => condition(
            "Accepted",
            true,
            "Accepted",
            "listener accepted",
            generation,
        ),
    });
    conditions.push(condition(
        "Conflicted",
        conflicted,
        if conflicted {
            "HostnameConflict"
        } else {
            "NoConflicts"
        },
        if conflicted {
            "another listener has this port and hostname, or another protocol on this port"
        } else {
            "no conflicts"
        },
        generation,
    ));

    let mut certificates = Vec::new();
    let mut refs_problem: Option<(&str, String)> = invalid_kinds.then(|| {
        (
            "InvalidRouteKinds",
            "allowedRoutes.kinds names a kind this listener cannot carry".to_string(),
        )
    });
    if l.protocol == "HTTPS" && refs_problem.is_none() {
        let tls = l.tls.clone().unwrap_or_default();
        if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
            refs_problem = Some((
                "InvalidCertificateRef",
                "only tls.mode Terminate is supported on HTTPS".into(),
            ));
        }
        for r in &tls.certificate_refs {
            let key = (
                r.namespace.clone().unwrap_or_else(|| gw.0.clone()),
                r.name.clone(),
            );
            let group = r.group.as_deref().unwrap_or("");
            let kind = r.kind.as_deref().unwrap_or("Secret");
            let problem = if !group.is_empty() || kind != "Secret" {
                Some((
                    "InvalidCertificateRef",
                    format!(
                        "certificateRef {kind}.{group} {} is not a core Secret",
                        r.name
                    ),
                ))
            } else if !granted(&inputs.grants, GROUP, "Gateway", &gw.0, "", "Secret", &key) {
                Some((
                    "RefNotPermitted",
                    format!(
                        "no ReferenceGrant in {} lets Gateways of {} use Secret {}",
                        key.0, gw.0, key.1
                    ),
                ))
            } else {
                match inputs.certificates.get(&key) {
                    None => Some((
                        "InvalidCertificateRef",
                        format!("Secret {}/{} not found", key.0, key.1),
                    )),
                    Some(Err(why)) => Some((
                        "InvalidCertificateRef",
                        format!("Secret {}/{}: {why}", key.0, key.1),
                    )),
                    Some(Ok(cert)) => {
                        certificates.push(cert.clone());
                        None
                    }
                }
            };
            if refs_problem.is_none() {
                refs_problem = problem;
            }
        }
        if tls.certificate_refs.is_empty() && refs_problem.is_none() {
            refs_problem = Some((
                "InvalidCertificateRef",
                "an HTTPS listener needs tls.certificateRefs".into(),
            ));
        }
    }
    if refs_problem.is_some() {
        certificates.clear();
    }
    let resolved = refs_problem.is_none();
    conditions.push(match &refs_problem {
        None => condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "references resolved",
            generation,
        ),
        Some((reason, message)) => {
            condition("ResolvedRefs", false, reason, message.clone(), generation)
        }
    });
    conditions.push(if accepted && resolved {
        condition("Programmed", true, "Programmed", "serving", generation)
    } else {
        condition(
            "Programmed",
            false,
            "Invalid",
            "listener is not accepted or its references do not resolve",
            generation,
        )
    });
    ListenerState {
        status: ListenerStatus {
            name: l.name.clone(),
            supported_kinds,
            attached_routes: 0,
            conditions,
        },
        accepted,
        certificates,
        rules: Vec::new(),
    }
}

/// A route's backendRefs per rule, and the first problem found (for `ResolvedRefs`).
struct Resolved {
    rules: Vec<Vec<BackendPlan>>,
    problem: Option<(&'static str, String)>,
}

fn resolve_backends(inputs: &Inputs, route: &HTTPRoute) -> Resolved {
    let ns = route.namespace().unwrap_or_default();
    let mut problem = None;
    let rules = route
        .spec
        .rules
        .iter()
        .map(|rule| {
            rule.backend_refs
                .iter()
                .map(|b| {
                    let (plan, why) = resolve_one(inputs, &ns, b);
                    if problem.is_none() {
                        problem = why;
                    }
                    plan
                })
                .collect()
        })
        .collect();
    Resolved { rules, problem }
}

fn resolve_one(
    inputs: &Inputs,
    ns: &str,
    b: &HTTPBackendRef,
) -> (BackendPlan, Option<(&'static str, String)>) {
    let weight = b.weight.unwrap_or(1);
    let invalid = BackendPlan::Invalid { weight };
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return (
            invalid,
            Some((
                "InvalidKind",
                format!(
                    "backendRef {}: kind {kind} of group {group:?} is not supported (core Service)",
                    b.name
                ),
            )),
        );
    }
    let key = (
        b.namespace.clone().unwrap_or_else(|| ns.to_string()),
        b.name.clone(),
    );
    if !granted(&inputs.grants, GROUP, "HTTPRoute", ns, "", "Service", &key) {
        return (
            invalid,
            Some((
                "RefNotPermitted",
                format!(
                    "no ReferenceGrant in {} lets HTTPRoutes of {ns} use Service {}",
                    key.0, key.1
                ),
            )),
        );
    }
    let Some(ports) = inputs.services.get(&key) else {
        return (
            invalid,
            Some((
                "BackendNotFound",
                format!("Service {}/{} not found", key.0, key.1),
            )),
        );
    };
    let Some(port) = b.port.and_then(|p| ports.iter().find(|sp| sp.port == p)) else {
        return (
            invalid,
            Some((
                "BackendNotFound",
                format!("Service {}/{} has no port {:?}", key.0, key.1, b.port),
            )),
        );
    };
    match port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") | Some("kubernetes.io/wss") => {
            return (
                invalid,
                Some((
                    "UnsupportedProtocol",
                    format!(
                        "Service {}/{} port {}: appProtocol {} is not supported",
                        key.0,
                        key.1,
                        port.port,
                        port.app_protocol.as_deref().unwrap_or_default()
                    ),
                )),
            );
        }
        _ => {}
    }
    let filters = b.filters.iter().map(|f| f.type_.clone()).collect();
    (
        BackendPlan::Service {
            service: key,
            port: port.clone(),
            weight,
            filters,
        },
        None,
    )
}

/// Attaches a route to the listeners `parent` selects, or says why it cannot.
fn attach(
    inputs: &Inputs,
    route: &HTTPRoute,
    rkey: &Key,
    parent: &ParentRef,
    listeners: &mut [Listed],
    resolved: &Resolved,
) -> Result<(), (&'static str, String)> {
    let by_ref: Vec<usize> = (0..listeners.len())
        .filter(|&i| {
            let l = &listeners[i].0;
            parent.section_name.as_ref().is_none_or(|s| *s == l.name)
                && parent.port.is_none_or(|p| p == l.port)
        })
        .collect();
    if by_ref.is_empty() {
        return Err((
            "NoMatchingParent",
            "no listener has this sectionName and port".into(),
        ));
    }
    let gw_ns = parent.namespace.clone().unwrap_or_else(|| rkey.0.clone());
    let labels = inputs.namespaces.get(&rkey.0).cloned().unwrap_or_default();
    let allowed: Vec<usize> = by_ref
        .into_iter()
        .filter(|&i| {
            let (l, s) = &listeners[i];
            let ns_ok = match l
                .allowed_routes
                .as_ref()
                .and_then(|a| a.namespaces.as_ref())
            {
                None => rkey.0 == gw_ns,
                Some(n) => match n.from.as_deref().unwrap_or("Same") {
                    "All" => true,
                    "Selector" => n.selector.as_ref().is_some_and(|sel| selects(sel, &labels)),
                    _ => rkey.0 == gw_ns,
                },
            };
            s.accepted
                && ns_ok
                && s.status
                    .supported_kinds
                    .iter()
                    .any(|k| k.kind == "HTTPRoute")
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            "no listener of this parent allows this route (namespace, kind or protocol)".into(),
        ));
    }
    let mut attached = false;
    let created = route.metadata.creation_timestamp.as_ref().map(|t| t.0);
    for i in allowed {
        let (l, state) = &mut listeners[i];
        let Some(hostnames) = intersect(l.hostname.as_deref(), &route.spec.hostnames) else {
            continue;
        };
        attached = true;
        state.status.attached_routes += 1;
        let rules = if route.spec.rules.is_empty() {
            vec![Default::default()]
        } else {
            route.spec.rules.clone()
        };
        for (ri, rule) in rules.iter().enumerate() {
            let matches = if rule.matches.is_empty() {
                vec![HTTPRouteMatch::default()]
            } else {
                rule.matches.clone()
            };
            for (mi, m) in matches.into_iter().enumerate() {
                let order = (
                    std::cmp::Reverse(match_rank(&m)),
                    created,
                    rkey.clone(),
                    ri,
                    mi,
                );
                state.rules.push((
                    order,
                    RulePlan {
                        route: rkey.clone(),
                        rule: ri,
                        name: rule.name.clone(),
                        hostnames: hostnames.clone(),
                        matches: m,
                        filters: rule.filters.clone(),
                        backends: resolved.rules.get(ri).cloned().unwrap_or_default(),
                        timeouts: rule.timeouts.clone(),
                    },
                ));
            }
        }
    }
    if attached {
        Ok(())
    } else {
        Err((
            "NoMatchingListenerHostname",
            "no listener hostname intersects the route's hostnames".into(),
        ))
    }
}
