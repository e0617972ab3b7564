//! The Kubernetes objects scenarios write, as JSON, and waits on what wsgate
//! reports back in a route's status.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::backend::{Backend, PORT};
use crate::cluster::Cluster;

/// `wsgate.io/v1alpha1`.
pub const WSR: &str = "wsgate.io/v1alpha1";

/// A namespace.
pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A ClusterIP Service with port 80 (named `ws`) to the fake pods' port.
pub fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "ws", "port": 80, "targetPort": PORT, "protocol": "TCP"}]}})
}

/// How an endpoint appears in a slice.
pub enum Endpoint<'a> {
    /// `conditions: {ready: true}`.
    Ready(&'a Backend),
    /// A pod shutting down: `conditions: {serving: true, terminating: true}` (ready
    /// left unset, which on its own would read as ready).
    Terminating(&'a Backend),
}

/// An EndpointSlice of `service` (the `kubernetes.io/service-name` label) with
/// port `ws` = the fake pods' port.
pub fn slice(ns: &str, name: &str, service: &str, endpoints: &[Endpoint]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|e| match e {
            Endpoint::Ready(b) => json!({"addresses": [b.ip], "conditions": {"ready": true}}),
            Endpoint::Terminating(b) => {
                json!({"addresses": [b.ip], "conditions": {"serving": true, "terminating": true}})
            }
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "ws", "port": PORT, "protocol": "TCP"}],
        "endpoints": eps})
}

/// A WebSocketRoute.
pub fn route(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": WSR, "kind": "WebSocketRoute", "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A `kubernetes.io/tls` Secret.
pub fn tls_secret(ns: &str, name: &str, cert_pem: &str, key_pem: &str) -> Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls", "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem)}})
}

/// One condition of a route's status.
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// The condition `kind` of a route object.
pub fn condition(route: &Value, kind: &str) -> Option<Cond> {
    let c = route["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?;
    Some(Cond {
        status: c["status"].as_str()?.to_owned(),
        reason: c["reason"].as_str().unwrap_or_default().to_owned(),
        message: c["message"].as_str().unwrap_or_default().to_owned(),
        observed_generation: c["observedGeneration"].as_i64(),
    })
}

/// A short view of a route's status for failure messages.
pub fn describe(route: &Value) -> String {
    let conds: Vec<String> = route["status"]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    format!(
                        "{}={} ({}: {}; gen {})",
                        c["type"], c["status"], c["reason"], c["message"], c["observedGeneration"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "generation {}, status.observedGeneration {}, backends {}, conditions [{}]",
        route["metadata"]["generation"],
        route["status"]["observedGeneration"],
        route["status"]["backends"],
        conds.join(", ")
    )
}

/// Waits (`secs`) until the route's status, for its current generation, satisfies
/// `check`; returns the route.
pub async fn wait_status(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    secs: f64,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut last = Value::Null;
    loop {
        if let Ok(Some(r)) = cluster.get(WSR, "WebSocketRoute", Some(ns), name).await {
            let current =
                r["status"]["observedGeneration"].as_i64() == r["metadata"]["generation"].as_i64();
            if current && check(&r) {
                return Ok(r);
            }
            last = r;
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {secs}s waiting for {ns}/{name}: {what}; last seen: {}",
                describe(&last)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether condition `kind` has `status` (and, if given, `reason`) at the route's
/// generation.
pub fn has(route: &Value, kind: &str, status: &str, reason: Option<&str>) -> bool {
    let generation = route["metadata"]["generation"].as_i64();
    condition(route, kind).is_some_and(|c| {
        c.status == status
            && reason.is_none_or(|r| c.reason == r)
            && c.observed_generation == generation
    })
}

/// All three conditions True at the route's generation.
pub fn programmed(route: &Value) -> bool {
    ["Accepted", "ResolvedRefs", "Programmed"]
        .iter()
        .all(|k| has(route, k, "True", None))
}
