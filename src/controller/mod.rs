//! Controller mode: watches WebSocketRoutes, the Services and EndpointSlices they
//! name, reads the Secrets and ConfigMaps they name (by name, [`refs`]), compiles
//! them (with [`crate::compile`], like the file source) into the proxy's table, and
//! reports status. The proxy keeps serving the last good table whenever the API
//! server is away; watches resume with backoff.

pub mod gateway;
mod leader;
pub mod refs;
pub mod resolve;
pub mod status;
pub mod tenancy;

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::core::{ApiResource, DeserializeGuard};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::api::WebSocketRoute;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
pub use leader::Leadership;
use refs::Refs;
use resolve::{Cluster, Outcome, SERVICE_NAME_LABEL};
pub use tenancy::{Cidr, Tenancy};

/// What `wsgate run` was told.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespaces to watch; empty watches all.
    pub namespaces: Vec<String>,
    /// Only routes of this class (`spec.className`, default `wsgate`).
    pub class: String,
    /// Where the leader-election Lease lives.
    pub lease_namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// What a route author may ask for (addresses, hostnames, catch-alls).
    pub tenancy: Tenancy,
    /// How often the Secrets and ConfigMaps routes name are read again.
    pub refs_refresh: Duration,
    /// Gateway API mode (when the API server serves the Gateway API); `None`: off.
    pub gateway: Option<gateway::Options>,
}

/// Quiet time after a change before the table is rebuilt (bursts become one build).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Retry delay after a failed status write.
const RETRY: Duration = Duration::from_secs(5);

/// A full rebuild this often even without changes, so the last-sync timestamp proves
/// the controller alive and a missed event cannot leave the table stale for long.
const RESYNC: Duration = Duration::from_secs(60);

/// Watch retry delays: 0.5 s doubling to 5 s, reset after a success. A lower cap
/// than kube's default (30 s), so a change made right after an API server comes
/// back is served within seconds; a few watches retrying every 5 s is no load.
#[derive(Clone, Copy)]
struct WatchBackoff(Duration);

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff(Duration::from_millis(500))
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.0;
        self.0 = (d * 2).min(Duration::from_secs(5));
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        *self = WatchBackoff::default();
    }
}

/// Whether a change to an object matters to the table (M7: a tenant updating an
/// unrelated object in a loop must not drive rebuilds).
type Relevant<K> = Arc<dyn Fn(&K) -> bool + Send + Sync>;

fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    dyntype: K::DynamicType,
    relevant: Relevant<K>,
    trigger: Arc<Notify>,
    metrics: Metrics,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype.clone());
    let reader = writer.as_reader();
    let stream = watcher(api, cfg)
        .backoff(WatchBackoff::default())
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    if relevant(&o) {
                        trigger.notify_one();
                    }
                }
                // A relist: objects may have changed while the watch was away.
                Ok(watcher::Event::InitDone) => trigger.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    metrics.controller_watch_restarts_total.inc();
                    tracing::warn!(kind = %K::kind(&dyntype), error = %e, "watch failed; retrying with backoff (serving the last good table)");
                }
            }
        }
    });
    reader
}

fn api<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The Services (namespace, name) the routes name, shared with the watches' filters.
#[derive(Clone, Default)]
struct NamedServices(Arc<RwLock<HashSet<(String, String)>>>);

impl NamedServices {
    fn set(&self, names: HashSet<(String, String)>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    fn contains(&self, namespace: Option<&str>, name: Option<&str>) -> bool {
        let (Some(ns), Some(name)) = (namespace, name) else {
            return false;
        };
        let names = self.0.read().unwrap_or_else(|p| p.into_inner());
        names.contains(&(ns.to_owned(), name.to_owned()))
    }
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client, opts: Options, proxy: Arc<Proxy>) {
    let trigger = Arc::new(Notify::new());
    let m = proxy.metrics.clone();
    let scopes: Vec<Option<&str>> = if opts.namespaces.is_empty() {
        vec![None]
    } else {
        opts.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    // The Services the routes name; only their changes (and their EndpointSlices')
    // trigger a rebuild.
    let wanted = NamedServices::default();
    let service_named = {
        let wanted = wanted.clone();
        move |s: &DeserializeGuard<Service>| {
            let meta = match &s.0 {
                Ok(s) => &s.metadata,
                Err(e) => &e.metadata,
            };
            wanted.contains(meta.namespace.as_deref(), meta.name.as_deref())
        }
    };
    let slice_named = {
        let wanted = wanted.clone();
        move |s: &DeserializeGuard<EndpointSlice>| {
            let meta = match &s.0 {
                Ok(s) => &s.metadata,
                Err(e) => &e.metadata,
            };
            let service = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
            wanted.contains(meta.namespace.as_deref(), service.map(String::as_str))
        }
    };
    let route_resource = ApiResource::erase::<WebSocketRoute>(&());
    let mut cluster = Cluster {
        tenancy: Arc::new(opts.tenancy.clone()),
        ..Cluster::default()
    };
    for ns in scopes {
        let t = || trigger.clone();
        let routes: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &route_resource),
            None => Api::all_with(client.clone(), &route_resource),
        };
        cluster.routes.push(reflect(
            routes,
            watcher::Config::default(),
            route_resource.clone(),
            Arc::new(|_: &DynamicObject| true),
            t(),
            m.clone(),
        ));
        cluster.services.push(reflect(
            api::<DeserializeGuard<Service>>(&client, ns),
            watcher::Config::default(),
            (),
            Arc::new(service_named.clone()),
            t(),
            m.clone(),
        ));
        cluster.slices.push(reflect(
            api::<DeserializeGuard<EndpointSlice>>(&client, ns),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
            (),
            Arc::new(slice_named.clone()),
            t(),
            m.clone(),
        ));
    }
    tracing::info!(namespaces = ?opts.namespaces, class = %opts.class, "waiting for the initial list of routes, Services and EndpointSlices");
    for s in &cluster.routes {
        let _ = s.wait_until_ready().await;
    }
    for s in &cluster.services {
        let _ = s.wait_until_ready().await;
    }
    for s in &cluster.slices {
        let _ = s.wait_until_ready().await;
    }
    let gateways = match &opts.gateway {
        Some(g) if gateway::installed(&client).await => {
            let with_policies = gateway::policies_installed(&client).await;
            if !with_policies {
                tracing::warn!("the WebSocketPolicy CRD is not installed: HTTPRoutes get the WebSocketRoute defaults (apply crds/websocketpolicy.yaml)");
            }
            let w = gateway::watch(&client, g, with_policies, &trigger, &m);
            tracing::info!(controller = crate::gateway::api::CONTROLLER_NAME, "Gateway API found: waiting for the initial list of GatewayClasses, Gateways, HTTPRoutes and ReferenceGrants");
            w.ready().await;
            Some((w, g))
        }
        Some(_) => {
            tracing::info!("the Gateway API CRDs are not installed: serving WebSocketRoutes only");
            None
        }
        None => None,
    };
    // Secrets and ConfigMaps: read by name, again every `refs_refresh`.
    let refs = Arc::new(Refs::new(client.clone()));
    tokio::spawn({
        let (refs, trigger, every) = (refs.clone(), trigger.clone(), opts.refs_refresh);
        async move {
            loop {
                tokio::time::sleep(every).await;
                if refs.refresh().await {
                    trigger.notify_one();
                }
            }
        }
    });

    let leadership = Leadership::default();
    tokio::spawn(leader::run(
        client.clone(),
        opts.lease_namespace.clone(),
        opts.lease_name.clone(),
        opts.identity.clone(),
        leadership.clone(),
        trigger.clone(),
    ));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "wsgate".into(),
            instance: Some(opts.identity.clone()),
        },
    );
    let mut last_programmed: HashMap<(String, String), String> = HashMap::new();

    loop {
        let routes = resolve::routes(&cluster, &opts.class);
        let mut services = resolve::wanted_services(&routes);
        let mut wanted_refs = resolve::wanted_refs(&routes);
        if let Some((w, _)) = &gateways {
            services.extend(w.wanted_services());
            wanted_refs.extend(w.wanted_refs());
        }
        wanted.set(services);
        cluster.refs = Arc::new(refs.ensure(&wanted_refs).await);
        // `address` backends may be names: resolved here, off the async workers.
        let mut build = tokio::task::block_in_place(|| resolve::build(&cluster, routes));
        let gateway_build = gateways
            .as_ref()
            .map(|(w, g)| gateway::build(w, &cluster, g, leadership.is_leader()));
        if let Some(gb) = &gateway_build {
            let all = build
                .table
                .routes()
                .iter()
                .map(|r| (**r).clone())
                .chain(gb.routes.iter().cloned())
                .collect();
            build.table = crate::proxy::route::table::RouteTable::new(all)
                .with_gateway_listeners(gb.listeners.clone());
        }
        let served = build.table.routes().len();
        proxy.apply(build.table);
        let mut ok = true;
        if let (Some((w, g)), Some(gb)) = (&gateways, &gateway_build) {
            if leadership.is_leader() {
                ok &= gateway::write(&client, w, g, gb).await;
            }
        }
        m.controller_last_sync_timestamp_seconds
            .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
        // A route whose outcome changed counts as a reload: `error` when it is now
        // refused (the cluster's analogue of a refused file change).
        let mut reload: Option<&str> = None;
        let before = last_programmed.len();
        for (obj, outcome) in &build.outcomes {
            let key = (obj.namespace().unwrap_or_default(), obj.name_any());
            let summary = format!("{outcome:?}");
            if last_programmed.get(&key) != Some(&summary) {
                let refused = !matches!(outcome, Outcome::Programmed { .. });
                reload = Some(if refused || reload == Some("error") {
                    "error"
                } else {
                    "success"
                });
                match outcome {
                    Outcome::Programmed { backends } => {
                        tracing::info!(route = %format!("{}/{}", key.0, key.1), backends, "route programmed")
                    }
                    other => {
                        tracing::warn!(route = %format!("{}/{}", key.0, key.1), outcome = ?other, "route not served")
                    }
                }
                last_programmed.insert(key, summary);
            }
            if !leadership.is_leader() {
                continue;
            }
            let (want, changed) = status::merge(obj.status.as_ref(), status::desired(obj, outcome));
            if !changed {
                continue;
            }
            if let Err(e) = status::write(&client, obj, &want).await {
                ok = false;
                tracing::warn!(route = %obj.name_any(), error = %e, "status write failed; will retry");
                continue;
            }
            if let Some((reason, note)) = refusal(outcome) {
                let ev = Event {
                    type_: EventType::Warning,
                    reason: reason.into(),
                    note: Some(note),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
                    tracing::warn!(route = %obj.name_any(), error = %e, "cannot publish event");
                }
            }
        }
        build_outcomes_gc(&mut last_programmed, &build.outcomes);
        if last_programmed.len() < before && reload.is_none() {
            reload = Some("success");
        }
        if let Some(result) = reload {
            m.config_reloads_total.with_label_values(&[result]).inc();
        }
        m.controller_reconciles_total
            .with_label_values(&[if ok { "success" } else { "error" }])
            .inc();
        tracing::debug!(routes = served, "route table rebuilt");
        let wait = if ok { RESYNC } else { RETRY };
        let _ = tokio::time::timeout(wait, trigger.notified()).await;
        tokio::time::sleep(DEBOUNCE).await;
    }
}

fn build_outcomes_gc(
    seen: &mut HashMap<(String, String), String>,
    outcomes: &[(Arc<WebSocketRoute>, Outcome)],
) {
    seen.retain(|k, _| {
        outcomes
            .iter()
            .any(|(o, _)| o.namespace().as_deref() == Some(&k.0) && o.name_any() == k.1)
    });
}

fn refusal(outcome: &Outcome) -> Option<(&'static str, String)> {
    let join = |e: &[crate::compile::FieldError]| {
        e.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    match outcome {
        Outcome::Programmed { .. } => None,
        Outcome::Invalid(e) => Some(("Invalid", join(e))),
        Outcome::Conflicted { winner } => Some((
            "Conflicted",
            format!("route {winner} already serves these hostnames and path"),
        )),
        Outcome::Unresolved(e) => Some(("UnresolvedRefs", join(e))),
        Outcome::NotAllowed { reason, errors } => Some((reason, join(errors))),
    }
}
