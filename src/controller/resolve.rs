//! From the cluster's objects to a [`RouteTable`]: Services and EndpointSlices give
//! backend addresses, Secrets give certificates, and each route gets an outcome the
//! status writer turns into conditions.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use rustls::sign::CertifiedKey;

use crate::api::{
    Backend, BackendTls, CaKind, JwksRef, PortRef, Tls, WebSocketRoute, DEFAULT_CLASS,
};
use crate::compile::{self, FieldError, Resolver};
use crate::proxy::route::auth::KeySet;
use crate::proxy::route::backend_tls::Material;
use crate::proxy::route::table::{BackendAddr, Route, RouteTable};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The watched objects, one store per watched namespace (or one for all).
#[derive(Clone, Default)]
pub struct Cluster {
    /// WebSocketRoutes.
    pub routes: Vec<Store<WebSocketRoute>>,
    /// Services.
    pub services: Vec<Store<Service>>,
    /// EndpointSlices of Services.
    pub slices: Vec<Store<EndpointSlice>>,
    /// TLS Secrets.
    pub secrets: Vec<Store<Secret>>,
    /// Opaque Secrets (JWKS of `auth.jwt.jwks.secretName`).
    pub opaque_secrets: Vec<Store<Secret>>,
    /// ConfigMaps (JWKS of `auth.jwt.jwks.configMapName`).
    pub config_maps: Vec<Store<ConfigMap>>,
}

fn find<K>(stores: &[Store<K>], ns: &str, name: &str) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let key = ObjectRef::new(name).within(ns);
    stores.iter().find_map(|s| s.get(&key))
}

impl Resolver for Cluster {
    fn backends(
        &self,
        ns: &str,
        index: usize,
        b: &Backend,
    ) -> Result<Vec<BackendAddr>, FieldError> {
        if let Some(a) = &b.address {
            return Ok(vec![BackendAddr {
                address: a.as_str().into(),
                weight: b.weight,
            }]);
        }
        let Some(svc_ref) = &b.service else {
            return Ok(vec![]);
        };
        let field = format!("spec.backends[{index}].service");
        let svc = find(&self.services, ns, &svc_ref.name).ok_or_else(|| {
            FieldError::new(
                format!("{field}.name"),
                format!("Service {ns}/{} not found", svc_ref.name),
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
            for slice in store.state() {
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
                        let address = if ip.contains(':') {
                            format!("[{ip}]:{number}")
                        } else {
                            format!("{ip}:{number}")
                        };
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
        let secret = find(&self.secrets, ns, name).ok_or_else(|| {
            FieldError::new(
                field,
                format!("Secret {ns}/{name} not found (type kubernetes.io/tls)"),
            )
        })?;
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
                let secret = find(&self.opaque_secrets, ns, name).ok_or_else(|| {
                    FieldError::new(field, format!("Secret {ns}/{name} not found (type Opaque)"))
                })?;
                let data = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.clone());
                (field, format!("Secret {ns}/{name}"), data)
            }
            (None, Some(name)) => {
                let field = "spec.auth.jwt.jwks.configMapName";
                let cm = find(&self.config_maps, ns, name).ok_or_else(|| {
                    FieldError::new(field, format!("ConfigMap {ns}/{name} not found"))
                })?;
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
        compile::key_set(&json, &what)
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
                    let cm = find(&self.config_maps, ns, &r.name)
                        .ok_or_else(|| FieldError::new(&field, format!("{what} not found")))?;
                    let pem = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get(&r.key))
                        .map(|t| t.clone().into_bytes());
                    (what, pem)
                }
                CaKind::Secret => {
                    // cert-manager keeps `ca.crt` in kubernetes.io/tls Secrets; others are Opaque.
                    let what = format!("Secret {ns}/{}", r.name);
                    let secret = find(&self.opaque_secrets, ns, &r.name)
                        .or_else(|| find(&self.secrets, ns, &r.name))
                        .ok_or_else(|| FieldError::new(&field, format!("{what} not found")))?;
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
            let secret = find(&self.secrets, ns, &r.name).ok_or_else(|| {
                FieldError::new(field, format!("{what} not found (type kubernetes.io/tls)"))
            })?;
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
    /// The spec breaks a rule (`Accepted=False`, reason `Invalid`).
    Invalid(Vec<FieldError>),
    /// Another, older route serves the same hostnames and path.
    Conflicted { winner: String },
    /// A Service, port or Secret is missing or unusable (`ResolvedRefs=False`).
    Unresolved(Vec<FieldError>),
}

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

/// Compiles every route of `class`. Of two routes claiming the same hostnames and
/// path, the older (by creation time, then namespace/name) wins.
pub fn build(cluster: &Cluster, class: &str) -> Build {
    let mut routes: Vec<Arc<WebSocketRoute>> = cluster
        .routes
        .iter()
        .flat_map(|s| s.state())
        .filter(|r| in_class(r, class))
        .collect();
    routes.sort_by(|a, b| {
        let t = |r: &WebSocketRoute| r.metadata.creation_timestamp.clone().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| a.namespace().cmp(&b.namespace()))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    let mut served: Vec<Route> = Vec::new();
    let mut claims: compile::Claims<usize> = compile::Claims::default();
    let mut outcomes = Vec::new();
    for obj in routes {
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let invalid = compile::validate(&obj.spec);
        let outcome = if !invalid.is_empty() {
            Outcome::Invalid(invalid)
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
