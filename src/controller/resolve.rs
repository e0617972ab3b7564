//! From the cluster's objects to a [`RouteTable`]: Services and EndpointSlices give
//! backend addresses, Secrets give certificates, and each route gets an outcome the
//! status writer turns into conditions.
//!
//! Every object is read on its own: a route wsgate cannot parse is refused with the
//! field that failed, and the others are served (one tenant's object never stops
//! another's routes).

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use rustls::sign::CertifiedKey;

use super::refs::{Fetched, RefKey, RefKind, Snapshot};
use super::tenancy::{hostname_owners, Tenancy};
use crate::api::{
    Backend, BackendTls, CaKind, JwksRef, PortRef, Tls, WebSocketRoute, WebSocketRouteSpec,
    DEFAULT_CLASS,
};
use crate::compile::{self, FieldError, Resolver};
use crate::proxy::route::auth::KeySet;
use crate::proxy::route::backend_tls::Material;
use crate::proxy::route::table::{BackendAddr, Route, RouteTable};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The watched objects, one store per watched namespace (or one for all), the
/// Secrets and ConfigMaps routes name, and the operator's tenancy rules.
#[derive(Clone, Default)]
pub struct Cluster {
    /// WebSocketRoutes, unparsed: each is read on its own ([`routes`]).
    pub routes: Vec<Store<DynamicObject>>,
    /// Services (one that cannot be read is skipped, not the whole watch).
    pub services: Vec<Store<DeserializeGuard<Service>>>,
    /// EndpointSlices of Services.
    pub slices: Vec<Store<DeserializeGuard<EndpointSlice>>>,
    /// The Secrets and ConfigMaps routes name, as last read by name.
    pub refs: Arc<Snapshot>,
    /// Which addresses, hostnames and catch-alls a route may have.
    pub tenancy: Arc<Tenancy>,
}

fn find<K>(
    stores: &[Store<DeserializeGuard<K>>],
    ns: &str,
    name: &str,
) -> Option<Arc<DeserializeGuard<K>>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let key = ObjectRef::new(name).within(ns);
    stores.iter().find_map(|s| s.get(&key))
}

impl Cluster {
    /// The Service `ns/name`, when it exists and can be read.
    pub(crate) fn service(&self, ns: &str, name: &str) -> Option<Service> {
        let guard = find(&self.services, ns, name)?;
        guard.0.as_ref().ok().cloned()
    }

    fn fetched(&self, kind: RefKind, ns: &str, name: &str) -> Option<&Fetched> {
        self.refs.get(&RefKey {
            kind,
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The Secret `ns/name`, or why there is none.
    pub(crate) fn secret(&self, ns: &str, name: &str) -> Result<Arc<Secret>, String> {
        match self.fetched(RefKind::Secret, ns, name) {
            Some(Fetched::Secret(s)) => Ok(s.clone()),
            Some(Fetched::Failed(e)) => Err(format!("Secret {ns}/{name} cannot be read: {e}")),
            _ => Err(format!("Secret {ns}/{name} not found")),
        }
    }

    /// The ConfigMap `ns/name`, or why there is none.
    fn config_map(&self, ns: &str, name: &str) -> Result<Arc<ConfigMap>, String> {
        match self.fetched(RefKind::ConfigMap, ns, name) {
            Some(Fetched::ConfigMap(c)) => Ok(c.clone()),
            Some(Fetched::Failed(e)) => Err(format!("ConfigMap {ns}/{name} cannot be read: {e}")),
            _ => Err(format!("ConfigMap {ns}/{name} not found")),
        }
    }
}

impl Resolver for Cluster {
    fn backends(
        &self,
        ns: &str,
        index: usize,
        b: &Backend,
    ) -> Result<Vec<BackendAddr>, FieldError> {
        if let Some(a) = &b.address {
            // Checked again here (not only in `build`): the table gets the addresses
            // this check saw, never a name a later DNS answer could redirect.
            let resolved = self
                .tenancy
                .address_backend(a)
                .map_err(|e| FieldError::new(format!("spec.backends[{index}].address"), e))?;
            return Ok(resolved
                .into_iter()
                .map(|r| BackendAddr {
                    address: r.to_string().into(),
                    weight: b.weight,
                })
                .collect());
        }
        let Some(svc_ref) = &b.service else {
            return Ok(vec![]);
        };
        let field = format!("spec.backends[{index}].service");
        let guard = find(&self.services, ns, &svc_ref.name).ok_or_else(|| {
            FieldError::new(
                format!("{field}.name"),
                format!("Service {ns}/{} not found", svc_ref.name),
            )
        })?;
        let svc = guard.0.as_ref().map_err(|e| {
            FieldError::new(
                format!("{field}.name"),
                format!("Service {ns}/{} cannot be read: {e}", svc_ref.name),
            )
        })?;
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| match &svc_ref.port {
                PortRef::Number(n) => p.port == i32::from(*n),
                PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
            })
            .ok_or_else(|| {
                let want = match &svc_ref.port {
                    PortRef::Number(n) => n.to_string(),
                    PortRef::Name(n) => format!("{n:?}"),
                };
                FieldError::new(
                    format!("{field}.port"),
                    format!("Service {ns}/{} has no port {want}", svc_ref.name),
                )
            })?;
        let port_name = port.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        for store in &self.slices {
            for guard in store.state() {
                let Ok(slice) = &guard.0 else { continue };
                let owned = slice.namespace().as_deref() == Some(ns)
                    && slice.labels().get(SERVICE_NAME_LABEL) == Some(&svc_ref.name);
                if !owned {
                    continue;
                }
                let Some(p) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.clone().unwrap_or_default() == port_name)
                else {
                    continue;
                };
                let Some(number) = p.port else { continue };
                for ep in &slice.endpoints {
                    let c = ep.conditions.as_ref();
                    // Unknown readiness counts as ready (EndpointSlice API); terminating
                    // endpoints take no new tunnels.
                    let ready = c.and_then(|c| c.ready).unwrap_or(true);
                    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                    if !ready || terminating {
                        continue;
                    }
                    for ip in &ep.addresses {
                        let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
                            continue;
                        };
                        let Ok(port) = u16::try_from(number) else {
                            continue;
                        };
                        let sa = SocketAddr::new(ip, port);
                        // A hand-made EndpointSlice may name anything; loopback and
                        // wsgate's own listeners are never dialled whatever names them.
                        if let Some(why) = self.tenancy.never_dialled(sa) {
                            tracing::warn!(namespace = %ns, service = %svc_ref.name, %why, "endpoint skipped");
                            continue;
                        }
                        let address = sa.to_string();
                        if !out.iter().any(|b: &BackendAddr| *b.address == *address) {
                            out.push(BackendAddr {
                                address: address.into(),
                                weight: b.weight,
                            });
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    fn certificate(&self, ns: &str, tls: &Tls) -> Result<Arc<CertifiedKey>, FieldError> {
        let Some(name) = &tls.secret_name else {
            return Err(FieldError::new(
                "spec.tls.secretName",
                "controller mode takes certificates from a Secret",
            ));
        };
        let field = "spec.tls.secretName";
        let secret = self
            .secret(ns, name)
            .map_err(|e| FieldError::new(field, e))?;
        let data = secret.data.clone().unwrap_or_default();
        let (Some(crt), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
            return Err(FieldError::new(
                field,
                format!("Secret {ns}/{name} lacks tls.crt or tls.key"),
            ));
        };
        compile::certified_key(&crt.0, &key.0)
            .map_err(|e| FieldError::new(field, format!("Secret {ns}/{name}: {e}")))
    }

    fn jwks(&self, ns: &str, jwks: &JwksRef) -> Result<Arc<KeySet>, FieldError> {
        let key = jwks.key.as_deref().unwrap_or_default();
        let (field, what, json) = match (&jwks.secret_name, &jwks.config_map_name) {
            (Some(name), _) => {
                let field = "spec.auth.jwt.jwks.secretName";
                let secret = self
                    .secret(ns, name)
                    .map_err(|e| FieldError::new(field, e))?;
                let data = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.clone());
                (field, format!("Secret {ns}/{name}"), data)
            }
            (None, Some(name)) => {
                let field = "spec.auth.jwt.jwks.configMapName";
                let cm = self
                    .config_map(ns, name)
                    .map_err(|e| FieldError::new(field, e))?;
                let data = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|t| t.clone().into_bytes());
                (field, format!("ConfigMap {ns}/{name}"), data)
            }
            (None, None) => {
                return Err(FieldError::new(
                    "spec.auth.jwt.jwks",
                    "controller mode takes a JWKS from secretName, configMapName or uri",
                ))
            }
        };
        let json =
            json.ok_or_else(|| FieldError::new(field, format!("{what} has no key {key:?}")))?;
        // The parser's message may quote the value it choked on; a route author who
        // cannot read the Secret must not learn it from the route's status.
        compile::key_set(&json, &what).map_err(|_| {
            FieldError::new(
                field,
                format!("{what} key {key:?} is not a JSON Web Key Set"),
            )
        })
    }

    fn backend_tls(&self, ns: &str, tls: &BackendTls) -> Result<Material, FieldError> {
        if tls.ca_file.is_some() || tls.cert_file.is_some() || tls.key_file.is_some() {
            return Err(FieldError::new(
                "spec.backendTLS",
                "controller mode takes caCertificateRefs and clientCertificateRef (caFile, certFile and keyFile are for standalone mode)",
            ));
        }
        let mut material = Material::default();
        for (i, r) in tls.ca_certificate_refs.iter().enumerate() {
            let field = format!("spec.backendTLS.caCertificateRefs[{i}]");
            let (what, pem) = match r.kind {
                CaKind::ConfigMap => {
                    let what = format!("ConfigMap {ns}/{}", r.name);
                    let cm = self
                        .config_map(ns, &r.name)
                        .map_err(|e| FieldError::new(&field, e))?;
                    let pem = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get(&r.key))
                        .map(|t| t.clone().into_bytes());
                    (what, pem)
                }
                CaKind::Secret => {
                    let what = format!("Secret {ns}/{}", r.name);
                    let secret = self
                        .secret(ns, &r.name)
                        .map_err(|e| FieldError::new(&field, e))?;
                    let pem = secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(&r.key))
                        .map(|b| b.0.clone());
                    (what, pem)
                }
            };
            let pem = pem.ok_or_else(|| {
                FieldError::new(
                    format!("{field}.key"),
                    format!("{what} has no key {:?}", r.key),
                )
            })?;
            material.cas.push((what, pem));
        }
        if let Some(r) = &tls.client_certificate_ref {
            let field = "spec.backendTLS.clientCertificateRef.name";
            let what = format!("Secret {ns}/{}", r.name);
            let secret = self
                .secret(ns, &r.name)
                .map_err(|e| FieldError::new(field, e))?;
            let data = secret.data.clone().unwrap_or_default();
            let (Some(crt), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
                return Err(FieldError::new(
                    field,
                    format!("{what} lacks tls.crt or tls.key"),
                ));
            };
            material.client = Some((what, crt.0.clone(), key.0.clone()));
        }
        Ok(material)
    }
}

/// Why a route is or is not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// In the table, with this many backend addresses.
    Programmed { backends: usize },
    /// The spec breaks a rule or cannot be read (`Accepted=False`, reason `Invalid`).
    Invalid(Vec<FieldError>),
    /// Another, older route serves the same hostnames and path.
    Conflicted { winner: String },
    /// A Service, port or Secret is missing or unusable (`ResolvedRefs=False`).
    Unresolved(Vec<FieldError>),
    /// A tenancy rule refuses it (`Accepted=False` with this reason:
    /// `AddressNotAllowed`, `HostnameConflict`, `CatchAllNotAllowed`).
    NotAllowed {
        reason: &'static str,
        errors: Vec<FieldError>,
    },
}

/// Reason of a route whose `address` backend is not allowed.
pub const ADDRESS_NOT_ALLOWED: &str = "AddressNotAllowed";
/// Reason of a route naming a hostname another namespace owns.
pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
/// Reason of a route without hostnames outside `--catch-all-namespace`.
pub const CATCH_ALL_NOT_ALLOWED: &str = "CatchAllNotAllowed";

/// The table and what happened to each route of our class.
pub struct Build {
    /// Routes to serve.
    pub table: RouteTable,
    /// Each route of our class, with its outcome.
    pub outcomes: Vec<(Arc<WebSocketRoute>, Outcome)>,
}

/// Whether a route belongs to this wsgate's class.
pub fn in_class(route: &WebSocketRoute, class: &str) -> bool {
    route.spec.class_name.as_deref().unwrap_or(DEFAULT_CLASS) == class
}

/// A route object as read: the route, or (when its spec cannot be read) its
/// metadata and status with the field that failed.
pub struct Parsed {
    /// The route; a default spec when `error` is set.
    pub route: Arc<WebSocketRoute>,
    /// Why the spec could not be read.
    pub error: Option<FieldError>,
}

/// Reads one route object on its own. A spec wsgate cannot hold (a port above
/// 65535, a duration beyond ten years) becomes an error naming the field.
pub fn parse(obj: &DynamicObject) -> Parsed {
    let status = obj
        .data
        .get("status")
        .cloned()
        .and_then(|s| serde_json::from_value(s).ok());
    let spec = obj.data.get("spec").cloned().unwrap_or_default();
    let (spec, error) = match serde_path_to_error::deserialize::<_, WebSocketRouteSpec>(spec) {
        Ok(spec) => (spec, None),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_owned()
            } else {
                format!("spec.{path}")
            };
            (
                WebSocketRouteSpec::default(),
                Some(FieldError::new(field, e.into_inner().to_string())),
            )
        }
    };
    let route = WebSocketRoute {
        metadata: obj.metadata.clone(),
        spec,
        status,
    };
    Parsed {
        route: Arc::new(route),
        error,
    }
}

/// The routes of `class`, each read on its own.
pub fn routes(cluster: &Cluster, class: &str) -> Vec<Parsed> {
    cluster
        .routes
        .iter()
        .flat_map(|s| s.state())
        .filter(|o| {
            let named = o.data.pointer("/spec/className").and_then(|c| c.as_str());
            named.unwrap_or(DEFAULT_CLASS) == class
        })
        .map(|o| parse(&o))
        .collect()
}

/// Oldest first (creation time, then namespace/name): the order in which claims
/// on hostnames and paths are decided.
fn oldest_first(routes: &mut [Parsed]) {
    routes.sort_by(|a, b| {
        let (a, b) = (&a.route, &b.route);
        let t = |r: &WebSocketRoute| r.metadata.creation_timestamp.clone().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| a.namespace().cmp(&b.namespace()))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

/// The Secrets and ConfigMaps the routes name (each in its route's namespace).
pub fn wanted_refs(routes: &[Parsed]) -> BTreeSet<RefKey> {
    let mut out = BTreeSet::new();
    for p in routes.iter().filter(|p| p.error.is_none()) {
        let ns = p.route.namespace().unwrap_or_default();
        let mut add = |kind, name: &str| {
            out.insert(RefKey {
                kind,
                namespace: ns.clone(),
                name: name.to_owned(),
            });
        };
        let spec = &p.route.spec;
        if let Some(n) = spec.tls.as_ref().and_then(|t| t.secret_name.as_deref()) {
            add(RefKind::Secret, n);
        }
        if let Some(jwt) = spec.auth.as_ref().and_then(|a| a.jwt.as_ref()) {
            if let Some(n) = &jwt.jwks.secret_name {
                add(RefKind::Secret, n);
            }
            if let Some(n) = &jwt.jwks.config_map_name {
                add(RefKind::ConfigMap, n);
            }
        }
        if let Some(bt) = &spec.backend_tls {
            for r in &bt.ca_certificate_refs {
                let kind = match r.kind {
                    CaKind::ConfigMap => RefKind::ConfigMap,
                    CaKind::Secret => RefKind::Secret,
                };
                add(kind, &r.name);
            }
            if let Some(r) = &bt.client_certificate_ref {
                add(RefKind::Secret, &r.name);
            }
        }
    }
    out
}

/// The Services the routes name, as `(namespace, name)`: only changes to these
/// (and their EndpointSlices) rebuild the table.
pub fn wanted_services(routes: &[Parsed]) -> HashSet<(String, String)> {
    routes
        .iter()
        .filter(|p| p.error.is_none())
        .flat_map(|p| {
            let ns = p.route.namespace().unwrap_or_default();
            p.route
                .spec
                .backends
                .iter()
                .filter_map(move |b| b.service.as_ref().map(|s| (ns.clone(), s.name.clone())))
        })
        .collect()
}

/// Why a tenancy rule refuses a route, if one does.
fn not_allowed(
    tenancy: &Tenancy,
    owners: &std::collections::HashMap<String, (String, String)>,
    ns: &str,
    spec: &WebSocketRouteSpec,
) -> Option<Outcome> {
    if spec.hostnames.is_empty() && !tenancy.catch_all_allowed(ns) {
        return Some(Outcome::NotAllowed {
            reason: CATCH_ALL_NOT_ALLOWED,
            errors: vec![FieldError::new(
                "spec.hostnames",
                format!("a route without hostnames takes every host; namespace {ns} may not publish one (the operator allows namespaces with --catch-all-namespace)"),
            )],
        });
    }
    // With --shared-hostnames other namespaces may route paths of a hostname, but
    // its certificate still comes only from its owner: a route bringing its own
    // `tls` for a hostname it does not own is refused either way.
    if !tenancy.shared_hostnames || spec.tls.is_some() {
        let errors: Vec<FieldError> = spec
            .hostnames
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let (owner_ns, owner) = owners.get(&h.to_ascii_lowercase())?;
                let why = if tenancy.shared_hostnames {
                    "its certificate comes only from that namespace's routes; remove tls"
                } else {
                    "routes of other namespaces may not name it"
                };
                (owner_ns != ns).then(|| {
                    FieldError::new(
                        format!("spec.hostnames[{i}]"),
                        format!("{h} belongs to namespace {owner_ns} (route {owner_ns}/{owner} named it first); {why}"),
                    )
                })
            })
            .collect();
        if !errors.is_empty() {
            return Some(Outcome::NotAllowed {
                reason: HOSTNAME_CONFLICT,
                errors,
            });
        }
    }
    let errors: Vec<FieldError> = spec
        .backends
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let a = b.address.as_deref()?;
            let e = tenancy.address_backend(a).err()?;
            Some(FieldError::new(format!("spec.backends[{i}].address"), e))
        })
        .collect();
    (!errors.is_empty()).then_some(Outcome::NotAllowed {
        reason: ADDRESS_NOT_ALLOWED,
        errors,
    })
}

/// Compiles `routes`, oldest first. Of two routes claiming the
/// same hostnames and path, the older wins; a hostname belongs to the namespace
/// that named it first.
pub fn build(cluster: &Cluster, mut routes: Vec<Parsed>) -> Build {
    oldest_first(&mut routes);
    let owners = hostname_owners(routes.iter().filter(|p| p.error.is_none()).map(|p| {
        (
            p.route.metadata.namespace.as_deref().unwrap_or_default(),
            p.route.metadata.name.as_deref().unwrap_or_default(),
            &p.route.spec.hostnames[..],
        )
    }));
    let mut served: Vec<Route> = Vec::new();
    let mut claims: compile::Claims<usize> = compile::Claims::default();
    let mut outcomes = Vec::new();
    for Parsed { route: obj, error } in routes {
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        if let Some(e) = error {
            outcomes.push((obj, Outcome::Invalid(vec![e])));
            continue;
        }
        let invalid = compile::validate(&obj.spec);
        let outcome = if !invalid.is_empty() {
            Outcome::Invalid(invalid)
        } else if let Some(refused) = not_allowed(&cluster.tenancy, &owners, &ns, &obj.spec) {
            refused
        } else {
            match compile::compile(&ns, &name, &obj.spec, cluster) {
                Err(errs) => Outcome::Unresolved(errs),
                Ok(route) => match claims.overlapping(&route) {
                    Some(&w) => Outcome::Conflicted {
                        winner: served[w].key.to_string(),
                    },
                    None => {
                        let n = route.backends.len();
                        claims.insert(&route, served.len());
                        served.push(route);
                        Outcome::Programmed { backends: n }
                    }
                },
            }
        };
        outcomes.push((obj, outcome));
    }
    Build {
        table: RouteTable::new(served),
        outcomes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use serde_json::json;

    fn object(ns: &str, name: &str, age: i64, spec: serde_json::Value) -> DynamicObject {
        let ar = kube::core::ApiResource::erase::<WebSocketRoute>(&());
        let mut o = DynamicObject::new(name, &ar)
            .within(ns)
            .data(json!({ "spec": spec }));
        o.metadata = ObjectMeta {
            creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(1_000_000 + age).unwrap(),
            )),
            ..o.metadata
        };
        o
    }

    fn cluster(tenancy: Tenancy) -> Cluster {
        Cluster {
            tenancy: Arc::new(tenancy),
            ..Cluster::default()
        }
    }

    fn allow_test_net() -> Tenancy {
        Tenancy {
            allow_address_backends: vec!["192.0.2.0/24".parse().unwrap()],
            own_listeners: vec!["192.0.2.9:8080".parse().unwrap()],
            ..Tenancy::default()
        }
    }

    fn outcomes(c: &Cluster, objs: &[DynamicObject]) -> Vec<(String, Outcome)> {
        let routes = objs.iter().map(parse).collect();
        build(c, routes)
            .outcomes
            .into_iter()
            .map(|(r, o)| (format!("{}/{}", r.namespace().unwrap(), r.name_any()), o))
            .collect()
    }

    fn reason(o: &Outcome) -> &str {
        match o {
            Outcome::Programmed { .. } => "Programmed",
            Outcome::Invalid(_) => "Invalid",
            Outcome::Conflicted { .. } => "Conflicted",
            Outcome::Unresolved(_) => "Unresolved",
            Outcome::NotAllowed { reason, .. } => reason,
        }
    }

    #[test]
    fn a_route_wsgate_cannot_read_is_refused_naming_the_field_and_the_others_serve() {
        let c = cluster(allow_test_net());
        let objs = [
            object(
                "a",
                "port",
                0,
                json!({"hostnames": ["a.test"], "backends": [{"service": {"name": "x", "port": 70000}}]}),
            ),
            object(
                "b",
                "idle",
                1,
                json!({"hostnames": ["b.test"], "backends": [{"address": "192.0.2.1:9001"}], "timeouts": {"idle": "100000h"}}),
            ),
            object(
                "c",
                "ok",
                2,
                json!({"hostnames": ["c.test"], "backends": [{"address": "192.0.2.1:9001"}]}),
            ),
        ];
        let out = outcomes(&c, &objs);
        let Outcome::Invalid(e) = &out[0].1 else {
            panic!("{out:?}")
        };
        assert_eq!(e[0].field, "spec.backends[0].service.port");
        assert!(e[0].message.contains("70000"), "{e:?}");
        let Outcome::Invalid(e) = &out[1].1 else {
            panic!("{out:?}")
        };
        assert_eq!(e[0].field, "spec.timeouts.idle");
        assert!(e[0].message.contains("87600h"), "{e:?}");
        assert_eq!(out[2].1, Outcome::Programmed { backends: 1 });
    }

    #[test]
    fn address_backends_need_the_operator_and_never_reach_loopback_or_wsgate_itself() {
        let spec = |a: &str| json!({"hostnames": ["x.test"], "backends": [{"address": a}]});
        let off = cluster(Tenancy::default());
        let out = outcomes(&off, &[object("t", "r", 0, spec("192.0.2.1:9001"))]);
        assert_eq!(reason(&out[0].1), ADDRESS_NOT_ALLOWED);
        let on = cluster(Tenancy {
            allow_address_backends: vec!["0.0.0.0/0".parse().unwrap()],
            ..allow_test_net()
        });
        for bad in [
            "127.0.0.1:9090",
            "localhost:443",
            "192.0.2.9:8080",
            "169.254.169.254:80",
        ] {
            let out = outcomes(&on, &[object("t", "r", 0, spec(bad))]);
            assert_eq!(reason(&out[0].1), ADDRESS_NOT_ALLOWED, "{bad}");
        }
        let out = outcomes(&on, &[object("t", "r", 0, spec("192.0.2.1:9001"))]);
        assert_eq!(out[0].1, Outcome::Programmed { backends: 1 });
    }

    #[test]
    fn a_hostname_belongs_to_the_namespace_that_named_it_first() {
        let spec = |path: &str| json!({"hostnames": ["chat.example.com"], "path": {"value": path}, "backends": [{"address": "192.0.2.1:9001"}]});
        let objs = [
            object("b", "late", 5, spec("/x")),
            object("a", "first", 1, spec("/")),
            object("a", "second", 7, spec("/y")),
        ];
        let out = outcomes(&cluster(allow_test_net()), &objs);
        assert_eq!(out[0].0, "a/first");
        assert_eq!(reason(&out[0].1), "Programmed");
        assert_eq!(out[1].0, "b/late");
        let Outcome::NotAllowed { reason, errors } = &out[1].1 else {
            panic!("{out:?}")
        };
        assert_eq!(*reason, HOSTNAME_CONFLICT);
        assert!(errors[0].message.contains("namespace a"), "{errors:?}");
        assert_eq!(reason_of(&out, "a/second"), "Programmed");
        let shared = cluster(Tenancy {
            shared_hostnames: true,
            ..allow_test_net()
        });
        let out = outcomes(&shared, &objs);
        assert_eq!(reason_of(&out, "b/late"), "Programmed");
        // Shared paths, never a shared certificate.
        let mut with_tls = object("b", "late", 5, spec("/x"));
        with_tls.data["spec"]["tls"] = json!({"secretName": "b-cert"});
        let out = outcomes(&shared, &[objs[1].clone(), with_tls]);
        assert_eq!(reason_of(&out, "b/late"), HOSTNAME_CONFLICT);
    }

    fn reason_of(out: &[(String, Outcome)], key: &str) -> String {
        out.iter()
            .find(|(k, _)| k == key)
            .map(|(_, o)| reason(o).to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn a_secret_that_is_no_key_set_is_reported_without_its_value() {
        use k8s_openapi::ByteString;
        let mut secret = Secret::default();
        secret.metadata.resource_version = Some("1".into());
        secret.data = Some(
            [
                ("pin".to_owned(), ByteString(b"4242".to_vec())),
                ("word".to_owned(), ByteString(br#""hunter2""#.to_vec())),
            ]
            .into(),
        );
        let key = RefKey {
            kind: RefKind::Secret,
            namespace: "t".into(),
            name: "creds".into(),
        };
        let c = Cluster {
            refs: Arc::new([(key, Fetched::Secret(Arc::new(secret)))].into()),
            ..Cluster::default()
        };
        for k in ["pin", "word"] {
            let jwks = JwksRef {
                secret_name: Some("creds".into()),
                key: Some(k.into()),
                ..JwksRef::default()
            };
            let Err(e) = c.jwks("t", &jwks) else {
                panic!("{k}: parsed as a key set")
            };
            assert!(
                !e.message.contains("4242") && !e.message.contains("hunter2"),
                "{e}"
            );
            assert!(e.message.contains("Secret t/creds"), "{e}");
        }
    }

    #[test]
    fn catch_all_routes_only_from_the_namespaces_the_operator_names() {
        let spec = json!({"backends": [{"address": "192.0.2.1:9001"}]});
        let c = cluster(Tenancy {
            catch_all_namespaces: vec!["ingress".into()],
            ..allow_test_net()
        });
        let out = outcomes(
            &c,
            &[
                object("tenant", "any", 0, spec.clone()),
                object("ingress", "default", 1, spec),
            ],
        );
        assert_eq!(reason_of(&out, "tenant/any"), CATCH_ALL_NOT_ALLOWED);
        assert_eq!(reason_of(&out, "ingress/default"), "Programmed");
    }
}
