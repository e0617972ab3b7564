//! `WebSocketPolicy` (`wsgate.io/v1alpha1`, GEP-713 policy attachment): what a
//! `WebSocketRoute` says about tunnels, attached to Gateway API HTTPRoutes (or to
//! a Gateway, as defaults for its routes).
//!
//! The fields are a `WebSocketRoute`'s, with the same meaning and defaults; an
//! absent field is the Gateway's policy's, else the default. Which backends, hosts
//! and paths is the HTTPRoute's to say, so those fields are not here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Auth, ClientAccess, Drain, FleetLimits, Keepalive, Limits, LoadBalancing, PassiveHealth,
    Rebalance, RouteTracing, Timeouts,
};

/// WebSocket behaviour for HTTPRoutes: keepalive, limits, auth, drain, balancing.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "wsgate.io",
    version = "v1alpha1",
    kind = "WebSocketPolicy",
    namespaced,
    shortname = "wsp",
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.ancestors[0].conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebSocketPolicySpec {
    /// HTTPRoutes or Gateways in the policy's namespace.
    pub target_refs: Vec<TargetRef>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<Keepalive>,
    /// As in `WebSocketRoute` (`request`/`backendRequest` of the HTTPRoute end at
    /// the 101; these bound the tunnel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subprotocols: Option<Vec<String>>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<Rebalance>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_health: Option<PassiveHealth>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_access: Option<ClientAccess>,
    /// As in `WebSocketRoute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<RouteTracing>,
    /// As in `WebSocketRoute` (needs `--limits-store`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_limits: Option<FleetLimits>,
}

/// A policy's target (GEP-713 `LocalPolicyTargetReference`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// `gateway.networking.k8s.io`.
    pub group: String,
    /// `HTTPRoute` or `Gateway`.
    pub kind: String,
    /// Its name, in the policy's namespace.
    pub name: String,
    /// One part of it (GEP-713): an HTTPRoute rule by its `name`, or a Gateway
    /// listener by its `name`. None: the whole object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// What the controller reports on a policy, per ancestor (GEP-713).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// One entry per target.
    #[serde(default)]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

/// A policy's status for one target.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    /// The target.
    pub ancestor_ref: AncestorRef,
    /// `wsgate.io/gateway-controller`.
    pub controller_name: String,
    /// `Accepted` (`Accepted`, `Conflicted`, `TargetNotFound`, `Invalid`).
    pub conditions: Vec<Condition>,
}

/// A policy status's ancestor reference.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AncestorRef {
    /// Group.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The rule or listener, when the policy targets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}
