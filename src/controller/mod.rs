//! Controller mode: watches WebSocketRoutes and the Services, EndpointSlices and
//! Secrets they name, compiles them (with [`crate::compile`], like the file source)
//! into the proxy's table, and reports status. The proxy keeps serving the last
//! good table whenever the API server is away; watches resume with backoff.

mod leader;
pub mod resolve;
pub mod status;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
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
use resolve::{Cluster, Outcome, SERVICE_NAME_LABEL};

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

fn reflect<K>(api: Api<K>, cfg: watcher::Config, trigger: Arc<Notify>, metrics: Metrics) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, cfg)
        .backoff(WatchBackoff::default())
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => trigger.notify_one(),
                Err(e) => {
                    metrics.controller_watch_restarts_total.inc();
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff (serving the last good table)");
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

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client, opts: Options, proxy: Arc<Proxy>) {
    let trigger = Arc::new(Notify::new());
    let m = proxy.metrics.clone();
    let scopes: Vec<Option<&str>> = if opts.namespaces.is_empty() {
        vec![None]
    } else {
        opts.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut cluster = Cluster::default();
    for ns in scopes {
        let t = || trigger.clone();
        cluster.routes.push(reflect(
            api::<WebSocketRoute>(&client, ns),
            watcher::Config::default(),
            t(),
            m.clone(),
        ));
        cluster.services.push(reflect(
            api::<Service>(&client, ns),
            watcher::Config::default(),
            t(),
            m.clone(),
        ));
        cluster.slices.push(reflect(
            api::<EndpointSlice>(&client, ns),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
            t(),
            m.clone(),
        ));
        cluster.secrets.push(reflect(
            api::<Secret>(&client, ns),
            watcher::Config::default().fields("type=kubernetes.io/tls"),
            t(),
            m.clone(),
        ));
        // JWKS of `auth.jwt` (the TLS store above only holds kubernetes.io/tls).
        cluster.opaque_secrets.push(reflect(
            api::<Secret>(&client, ns),
            watcher::Config::default().fields("type=Opaque"),
            t(),
            m.clone(),
        ));
        cluster.config_maps.push(reflect(
            api::<ConfigMap>(&client, ns),
            watcher::Config::default(),
            t(),
            m.clone(),
        ));
    }
    tracing::info!(namespaces = ?opts.namespaces, class = %opts.class, "waiting for the initial list of routes, Services, EndpointSlices, Secrets and ConfigMaps");
    for s in &cluster.routes {
        let _ = s.wait_until_ready().await;
    }
    for s in &cluster.services {
        let _ = s.wait_until_ready().await;
    }
    for s in &cluster.slices {
        let _ = s.wait_until_ready().await;
    }
    for s in cluster.secrets.iter().chain(&cluster.opaque_secrets) {
        let _ = s.wait_until_ready().await;
    }
    for s in &cluster.config_maps {
        let _ = s.wait_until_ready().await;
    }

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
        let build = resolve::build(&cluster, &opts.class);
        let served = build.table.routes().len();
        proxy.apply(build.table);
        m.controller_last_sync_timestamp_seconds
            .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
        let mut ok = true;
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
    }
}
