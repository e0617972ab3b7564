//! The Gateway API half of controller mode: watches GatewayClasses, Gateways,
//! HTTPRoutes, ReferenceGrants and Namespaces; gives each of wsgate's Gateways a
//! Service of its own (type `LoadBalancer` by default) in wsgate's namespace, whose
//! ports lead to data-plane ports every wsgate replica listens on; and writes the
//! status of every GatewayClass, Gateway and HTTPRoute parent that is wsgate's.
//!
//! Every replica serves every Gateway; the Services are the one record of which
//! data-plane port belongs to which Gateway listener, so replicas agree on ports
//! without talking to each other. Only the leader writes them, and statuses.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort as K8sServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::Notify;

use super::refs::{RefKey, RefKind};
use super::resolve::Cluster;
use crate::api::{PolicyStatus, WebSocketPolicy};
use crate::compile;
use crate::gateway::api::{
    Gateway, GatewayAddress, GatewayClass, HTTPRoute, ReferenceGrant, RouteStatus, CONTROLLER_NAME,
};
use crate::gateway::build::{self, Inputs, Key, Output, ServicePort};
use crate::gateway::policy;
use crate::gateway::routes::{self, Ports};
use crate::metrics::Metrics;
use crate::proxy::listen::gateway::{GatewayListeners, Port};
use crate::proxy::route::table::{fnv1a, HostMatch, Route};

/// Labels on a Gateway's Service naming its Gateway.
pub const GATEWAY_NAMESPACE_LABEL: &str = "gateway.wsgate.io/namespace";
/// See [`GATEWAY_NAMESPACE_LABEL`].
pub const GATEWAY_NAME_LABEL: &str = "gateway.wsgate.io/name";
/// Field manager of the Services and statuses written here.
const MANAGER: &str = "wsgate-gateway-controller";

/// How Gateways are served.
#[derive(Clone)]
pub struct Options {
    /// wsgate's namespace: the Gateways' Services go there.
    pub namespace: String,
    /// `LoadBalancer` (default), `NodePort` or `ClusterIP`.
    pub service_type: String,
    /// Labels of wsgate's pods (the Services' selector).
    pub selector: BTreeMap<String, String>,
    /// Data-plane ports to hand out.
    pub ports: RangeInclusive<u16>,
    /// The data-plane listeners of this replica.
    pub listeners: Arc<GatewayListeners>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("namespace", &self.namespace)
            .field("service_type", &self.service_type)
            .field("selector", &self.selector)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// The watched Gateway API objects.
pub struct Watches {
    /// WebSocketPolicies, when their CRD is installed; read one by one (one that
    /// cannot be read is skipped, not the whole watch).
    policies: Option<Store<DeserializeGuard<WebSocketPolicy>>>,
    classes: Store<GatewayClass>,
    gateways: Store<Gateway>,
    routes: Store<HTTPRoute>,
    grants: Store<ReferenceGrant>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
}

/// Whether the API server serves the Gateway API (standard channel v1).
pub async fn installed(client: &kube::Client) -> bool {
    match client
        .list_api_group_resources("gateway.networking.k8s.io/v1")
        .await
    {
        Ok(list) => ["gateways", "httproutes", "gatewayclasses"]
            .iter()
            .all(|k| list.resources.iter().any(|r| r.name == *k)),
        Err(_) => false,
    }
}

/// Whether the API server serves wsgate's `WebSocketPolicy`.
pub async fn policies_installed(client: &kube::Client) -> bool {
    match client
        .list_api_group_resources(crate::api::API_VERSION)
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == "websocketpolicies"),
        Err(_) => false,
    }
}

/// Starts the watches; every change notifies `trigger`.
pub fn watch(
    client: &kube::Client,
    opts: &Options,
    with_policies: bool,
    trigger: &Arc<Notify>,
    m: &Metrics,
) -> Watches {
    let t = || trigger.clone();
    Watches {
        policies: with_policies.then(|| {
            super::reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                (),
                Arc::new(|_: &_| true),
                t(),
                m.clone(),
            )
        }),
        classes: super::reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            (),
            Arc::new(|_: &_| true),
            t(),
            m.clone(),
        ),
        gateways: super::reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            (),
            Arc::new(|_: &_| true),
            t(),
            m.clone(),
        ),
        routes: super::reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            (),
            Arc::new(|_: &_| true),
            t(),
            m.clone(),
        ),
        grants: super::reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            (),
            Arc::new(|_: &_| true),
            t(),
            m.clone(),
        ),
        namespaces: super::reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            (),
            Arc::new(|_: &_| true),
            t(),
            m.clone(),
        ),
        services: super::reflect(
            Api::namespaced(client.clone(), &opts.namespace),
            watcher::Config::default().labels(GATEWAY_NAME_LABEL),
            (),
            Arc::new(|_: &_| true),
            t(),
            m.clone(),
        ),
    }
}

impl Watches {
    /// The WebSocketPolicies that could be read.
    pub fn policies(&self) -> Vec<WebSocketPolicy> {
        let Some(store) = &self.policies else {
            return vec![];
        };
        store
            .state()
            .iter()
            .filter_map(|g| match &g.0 {
                Ok(p) => Some(p.clone()),
                Err(e) => {
                    tracing::warn!(policy = ?e.metadata.name, namespace = ?e.metadata.namespace, error = %e.error, "WebSocketPolicy cannot be read; ignored");
                    None
                }
            })
            .collect()
    }

    /// Waits for every initial list.
    pub async fn ready(&self) {
        if let Some(p) = &self.policies {
            let _ = p.wait_until_ready().await;
        }
        let _ = self.classes.wait_until_ready().await;
        let _ = self.gateways.wait_until_ready().await;
        let _ = self.routes.wait_until_ready().await;
        let _ = self.grants.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
    }

    /// The Services HTTPRoutes name, as `(namespace, name)`.
    pub fn wanted_services(&self) -> BTreeSet<Key> {
        let mut out = BTreeSet::new();
        for r in self.routes.state() {
            let ns = r.namespace().unwrap_or_default();
            for rule in &r.spec.rules {
                for b in &rule.backend_refs {
                    out.insert((
                        b.namespace.clone().unwrap_or_else(|| ns.clone()),
                        b.name.clone(),
                    ));
                }
            }
        }
        out
    }

    /// The Secrets Gateways name as certificates, and the Secrets and ConfigMaps
    /// of policies' JWKS.
    pub fn wanted_refs(&self) -> BTreeSet<RefKey> {
        let mut out = BTreeSet::new();
        for p in self.policies() {
            let ns = p.namespace().unwrap_or_default();
            let jwks = p
                .spec
                .auth
                .as_ref()
                .and_then(|a| a.jwt.as_ref())
                .map(|j| &j.jwks);
            if let Some(jwks) = jwks {
                for (kind, name) in [
                    (RefKind::Secret, &jwks.secret_name),
                    (RefKind::ConfigMap, &jwks.config_map_name),
                ] {
                    if let Some(name) = name {
                        out.insert(RefKey {
                            kind,
                            namespace: ns.clone(),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
        for g in self.gateways.state() {
            let ns = g.namespace().unwrap_or_default();
            for l in &g.spec.listeners {
                for r in l.tls.iter().flat_map(|t| &t.certificate_refs) {
                    if r.group.as_deref().unwrap_or("").is_empty()
                        && r.kind.as_deref().unwrap_or("Secret") == "Secret"
                    {
                        out.insert(RefKey {
                            kind: RefKind::Secret,
                            namespace: r.namespace.clone().unwrap_or_else(|| ns.clone()),
                            name: r.name.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Each Gateway's Service: its data-plane ports by listener port, and its address.
    fn gateway_services(&self) -> BTreeMap<Key, GatewayService> {
        let mut out = BTreeMap::new();
        for s in self.services.state() {
            let labels = s.labels();
            let (Some(ns), Some(name)) = (
                labels.get(GATEWAY_NAMESPACE_LABEL),
                labels.get(GATEWAY_NAME_LABEL),
            ) else {
                continue;
            };
            let spec = s.spec.clone().unwrap_or_default();
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let target = match &p.target_port {
                        Some(IntOrString::Int(t)) => u16::try_from(*t).ok()?,
                        _ => return None,
                    };
                    Some((u16::try_from(p.port).ok()?, target))
                })
                .collect();
            let mut addresses: Vec<GatewayAddress> = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| match (i.ip, i.hostname) {
                    (Some(ip), _) => Some(GatewayAddress {
                        type_: "IPAddress".into(),
                        value: ip,
                    }),
                    (None, Some(h)) => Some(GatewayAddress {
                        type_: "Hostname".into(),
                        value: h,
                    }),
                    _ => None,
                })
                .collect();
            if addresses.is_empty() && spec.type_.as_deref() != Some("LoadBalancer") {
                if let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") {
                    addresses.push(GatewayAddress {
                        type_: "IPAddress".into(),
                        value: ip,
                    });
                }
            }
            out.insert((ns.clone(), name.clone()), (s.clone(), ports, addresses));
        }
        out
    }
}

/// A Gateway's Service, its data-plane ports by listener port, and its addresses.
type GatewayService = (Arc<Service>, BTreeMap<u16, u16>, Vec<GatewayAddress>);

/// The Service name of a Gateway: hashed, so any Gateway name fits.
pub fn service_name(gw: &Key) -> String {
    format!(
        "wsgate-gw-{:016x}",
        fnv1a(format!("{}/{}", gw.0, gw.1).as_bytes())
    )
}

/// One rebuild's Gateway API part: the routes to serve and what to write.
pub struct Built {
    /// The routes of attached HTTPRoute rules.
    pub routes: Vec<Route>,
    output: Output,
    /// Data-plane ports by (Gateway, listener port), including new ones to write.
    ports: Ports,
    /// Each WebSocketPolicy's status.
    policies: BTreeMap<Key, PolicyStatus>,
    /// The listener hostnames on each data-plane port (for listener isolation).
    pub listeners: std::collections::HashMap<u16, Vec<Option<HostMatch>>>,
}

/// Resolves everything; binds this replica's data-plane listeners.
pub fn build(watches: &Watches, cluster: &Cluster, opts: &Options, leader: bool) -> Built {
    let services = watches.gateway_services();
    let mut inputs = Inputs {
        classes: watches
            .classes
            .state()
            .iter()
            .map(|c| (**c).clone())
            .collect(),
        gateways: watches
            .gateways
            .state()
            .iter()
            .map(|g| (**g).clone())
            .collect(),
        routes: watches
            .routes
            .state()
            .iter()
            .map(|r| (**r).clone())
            .collect(),
        grants: watches
            .grants
            .state()
            .iter()
            .map(|g| (**g).clone())
            .collect(),
        namespaces: watches
            .namespaces
            .state()
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect(),
        ..Inputs::default()
    };
    for (ns, name) in watches.wanted_services() {
        if let Some(svc) = cluster.service(&ns, &name) {
            let ports = svc
                .spec
                .and_then(|s| s.ports)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| {
                    Some(ServicePort {
                        port: u16::try_from(p.port).ok()?,
                        name: p.name,
                        app_protocol: p.app_protocol,
                    })
                })
                .collect();
            inputs.services.insert((ns, name), ports);
        }
    }
    for r in watches.wanted_refs() {
        let cert = cluster.secret(&r.namespace, &r.name).and_then(|s| {
            let data = s.data.clone().unwrap_or_default();
            match (data.get("tls.crt"), data.get("tls.key")) {
                (Some(c), Some(k)) => compile::certified_key(&c.0, &k.0),
                _ => Err("lacks tls.crt or tls.key".into()),
            }
        });
        match cert {
            Err(e) if e.ends_with("not found") => {}
            cert => {
                inputs.certificates.insert((r.namespace, r.name), cert);
            }
        }
    }
    for (key, (_, _, addresses)) in &services {
        inputs.addresses.insert(key.clone(), addresses.clone());
    }
    let output = build::build(&inputs);

    // Data-plane ports: those the Services record; the leader hands out new ones.
    let mut ports = Ports::new();
    let mut used: BTreeSet<u16> = services
        .values()
        .flat_map(|(_, p, _)| p.values().copied())
        .collect();
    for gw in &output.gateways {
        let recorded = services
            .get(&gw.key)
            .map(|(_, p, _)| p.clone())
            .unwrap_or_default();
        let wanted: BTreeSet<u16> = gw.listeners.iter().map(|l| l.port).collect();
        for port in wanted {
            let dp = match recorded.get(&port) {
                Some(&dp) => Some(dp),
                None if leader => opts.ports.clone().find(|p| !used.contains(p)),
                None => None,
            };
            if let Some(dp) = dp {
                used.insert(dp);
                ports.insert((gw.key.clone(), port), dp);
            }
        }
    }
    let policy_objects: Vec<WebSocketPolicy> = watches.policies().into_iter().collect();
    let (policies, mut policy_statuses) =
        policy::attach(&policy_objects, &inputs.routes, &inputs.gateways);
    let (routes, refused) = routes::routes(&output, &ports, &policies, cluster);
    // A policy whose settings do not compile: its targets get the defaults, and it
    // says why.
    for (key, why) in refused {
        if let Some(status) = policy_statuses.get_mut(&key) {
            for a in &mut status.ancestors {
                for c in &mut a.conditions {
                    if c.status == "True" {
                        c.status = "False".into();
                        c.reason = "Invalid".into();
                        c.message = why.clone();
                    }
                }
            }
        }
    }

    let mut wanted: BTreeMap<u16, Port> = BTreeMap::new();
    let mut listeners: std::collections::HashMap<u16, Vec<Option<HostMatch>>> = Default::default();
    for gw in &output.gateways {
        for l in &gw.listeners {
            let Some(&dp) = ports.get(&(gw.key.clone(), l.port)) else {
                continue;
            };
            listeners
                .entry(dp)
                .or_default()
                .push(l.hostname.as_deref().and_then(HostMatch::parse));
            let port = wanted.entry(dp).or_default();
            port.tls |= l.tls;
            for c in &l.certificates {
                port.certificates
                    .push((l.hostname.as_deref().and_then(HostMatch::parse), c.clone()));
            }
        }
    }
    let failed = opts.listeners.sync(&wanted);
    for (port, why) in failed {
        tracing::warn!(port, %why, "Gateway traffic on this data-plane port is not served by this replica");
    }
    Built {
        routes,
        output,
        ports,
        policies: policy_statuses,
        listeners,
    }
}

/// Leader only: Services for Gateways (created, updated, deleted), then statuses.
/// Returns false when a write failed (the caller retries sooner).
pub async fn write(
    client: &kube::Client,
    watches: &Watches,
    opts: &Options,
    built: &Built,
) -> bool {
    let mut ok = true;
    let services: Api<Service> = Api::namespaced(client.clone(), &opts.namespace);
    let existing = watches.gateway_services();
    let pp = PatchParams::apply(MANAGER).force();
    for gw in &built.output.gateways {
        let ports: BTreeMap<u16, u16> = built
            .ports
            .iter()
            .filter(|((k, _), _)| *k == gw.key)
            .map(|((_, l), dp)| (*l, *dp))
            .collect();
        let current = existing.get(&gw.key);
        let same_ports = current.is_some_and(|(_, p, _)| *p == ports);
        let same_type = current.is_some_and(|(s, _, _)| {
            s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some(opts.service_type.as_str())
        });
        if ports.is_empty() || (same_ports && same_type) {
            continue;
        }
        let svc = desired_service(&gw.key, &ports, opts);
        let name = service_name(&gw.key);
        if let Err(e) = services.patch(&name, &pp, &Patch::Apply(&svc)).await {
            ok = false;
            tracing::warn!(gateway = %format!("{}/{}", gw.key.0, gw.key.1), error = %e, "cannot write the Gateway's Service");
        } else {
            tracing::info!(gateway = %format!("{}/{}", gw.key.0, gw.key.1), service = %name, ?ports, "Gateway Service written");
        }
    }
    let ours: BTreeSet<&Key> = built.output.gateways.iter().map(|g| &g.key).collect();
    for (key, (svc, _, _)) in &existing {
        if !ours.contains(key) {
            let name = svc.name_any();
            match services.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(gateway = %format!("{}/{}", key.0, key.1), service = %name, "Gateway gone; its Service deleted")
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(service = %name, error = %e, "cannot delete the Service of a removed Gateway");
                }
            }
        }
    }

    for (name, want) in &built.output.classes {
        let Some(current) = watches
            .classes
            .state()
            .into_iter()
            .find(|c| c.name_any() == *name)
        else {
            continue;
        };
        let mut want = want.clone();
        let have = current.status.clone().unwrap_or_default();
        keep_times(&mut want.conditions, &have.conditions);
        if have != want {
            let api: Api<GatewayClass> = Api::all(client.clone());
            ok &= patch_status(&api, name, &want).await;
        }
    }
    for gw in &built.output.gateways {
        let Some(current) = watches
            .gateways
            .state()
            .into_iter()
            .find(|g| build_key(&**g) == gw.key)
        else {
            continue;
        };
        let mut want = gw.status.clone();
        let have = current.status.clone().unwrap_or_default();
        keep_times(&mut want.conditions, &have.conditions);
        for l in &mut want.listeners {
            if let Some(h) = have.listeners.iter().find(|h| h.name == l.name) {
                keep_times(&mut l.conditions, &h.conditions);
            }
        }
        if have != want {
            let api: Api<Gateway> = Api::namespaced(client.clone(), &gw.key.0);
            ok &= patch_status(&api, &gw.key.1, &want).await;
        }
    }
    for (key, want) in &built.policies {
        let Some(current) = watches
            .policies()
            .into_iter()
            .find(|p| build_key(p) == *key)
        else {
            continue;
        };
        let have = current.status.clone().unwrap_or_default();
        let mut want = PolicyStatus {
            ancestors: have
                .ancestors
                .iter()
                .filter(|a| a.controller_name != CONTROLLER_NAME)
                .cloned()
                .chain(want.ancestors.iter().cloned())
                .collect(),
        };
        for a in &mut want.ancestors {
            if let Some(h) = have.ancestors.iter().find(|h| {
                h.ancestor_ref == a.ancestor_ref && h.controller_name == a.controller_name
            }) {
                keep_times(&mut a.conditions, &h.conditions);
            }
        }
        if have != want {
            let api: Api<WebSocketPolicy> = Api::namespaced(client.clone(), &key.0);
            ok &= patch_status(&api, &key.1, &want).await;
        }
    }
    for (key, parents) in &built.output.routes {
        let Some(current) = watches
            .routes
            .state()
            .into_iter()
            .find(|r| build_key(&**r) == *key)
        else {
            continue;
        };
        let have = current.status.clone().unwrap_or_default();
        // Entries of other controllers stay as they are.
        let mut want = RouteStatus {
            parents: have
                .parents
                .iter()
                .filter(|p| p.controller_name != CONTROLLER_NAME)
                .cloned()
                .collect(),
        };
        for p in parents {
            let mut p = p.clone();
            if let Some(h) = have
                .parents
                .iter()
                .find(|h| h.controller_name == CONTROLLER_NAME && h.parent_ref == p.parent_ref)
            {
                keep_times(&mut p.conditions, &h.conditions);
            }
            want.parents.push(p);
        }
        if have != want {
            let api: Api<HTTPRoute> = Api::namespaced(client.clone(), &key.0);
            ok &= patch_status(&api, &key.1, &want).await;
        }
    }
    ok
}

fn build_key<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// A condition whose status did not change keeps the time it last changed.
fn keep_times(want: &mut [Condition], have: &[Condition]) {
    for c in want {
        // A transition is a change of status; a new reason or generation is not.
        if let Some(h) = have
            .iter()
            .find(|h| h.type_ == c.type_ && h.status == c.status)
        {
            c.last_transition_time = h.last_transition_time.clone();
        }
    }
}

async fn patch_status<K>(api: &Api<K>, name: &str, status: &impl serde::Serialize) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({ "status": status });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(kind = %K::kind(&()), name, error = %e, "status write failed; will retry");
            false
        }
    }
}

fn desired_service(gw: &Key, ports: &BTreeMap<u16, u16>, opts: &Options) -> Service {
    let labels = BTreeMap::from([
        (GATEWAY_NAMESPACE_LABEL.to_string(), gw.0.clone()),
        (GATEWAY_NAME_LABEL.to_string(), gw.1.clone()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "wsgate".to_string(),
        ),
    ]);
    Service {
        metadata: kube::api::ObjectMeta {
            name: Some(service_name(gw)),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "gateway.wsgate.io/gateway".to_string(),
                format!("{}/{}", gw.0, gw.1),
            )])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(opts.service_type.clone()),
            selector: Some(opts.selector.clone()),
            ports: Some(
                ports
                    .iter()
                    .map(|(l, dp)| K8sServicePort {
                        name: Some(format!("port-{l}")),
                        port: i32::from(*l),
                        target_port: Some(IntOrString::Int(i32::from(*dp))),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}
