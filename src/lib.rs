//! wsgate: a WebSocket ingress. An upgrade-aware reverse proxy ([`proxy`]) holds
//! long-lived tunnels, pings both legs and exports per-route metrics; route tables
//! reach it from files ([`config`]) or from the Kubernetes API (`controller`), both
//! compiled by [`compile`] so the two sources can never disagree.

pub mod admin;
pub mod api;
pub mod compile;
pub mod config;
pub mod controller;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod telemetry;

/// The `WebSocketRoute` CustomResourceDefinition as YAML (what `wsgate crd` prints).
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&api::crd()).expect("the CRD serializes")
}

/// The `WebSocketPolicy` CustomResourceDefinition as YAML (`wsgate crd --kind
/// WebSocketPolicy`).
pub fn policy_crd_yaml() -> String {
    serde_yaml::to_string(&api::policy_crd()).expect("the CRD serializes")
}
