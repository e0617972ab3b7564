//! The Gateway API objects wsgate reads (standard channel, `gateway.networking.k8s.io/v1`),
//! with only the fields it acts on.
//!
//! Written here rather than taken from the `gateway-api` crate: its releases pin an
//! older `kube` and `k8s-openapi` than wsgate's, and two copies of either cannot share
//! a client. The CRDs themselves are the upstream ones (the chart does not own them);
//! these types only read what the API server already validated, so every field is
//! optional or defaulted and unknown fields are ignored.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The API group of every Gateway API object.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The `controllerName` wsgate answers for.
pub const CONTROLLER_NAME: &str = "wsgate.io/gateway-controller";

/// `GatewayClass`: which controller implements the Gateways naming it.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GatewayClass",
    status = "GatewayClassStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// The implementing controller, e.g. `wsgate.io/gateway-controller`.
    pub controller_name: String,
    /// Implementation-specific parameters (not read by wsgate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<serde_json::Value>,
}

/// What wsgate reports on a GatewayClass.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    /// `Accepted`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The features this implementation passes the conformance tests of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_features: Vec<SupportedFeature>,
}

/// One entry of `supportedFeatures`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct SupportedFeature {
    /// The feature's name, e.g. `HTTPRouteBackendProtocolWebSocket`.
    pub name: String,
}

/// `Gateway`: listeners (port, protocol, hostname, TLS) that routes attach to.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The GatewayClass this Gateway belongs to.
    pub gateway_class_name: String,
    /// Its listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Addresses asked for (`GatewayStaticAddresses`, not supported).
    #[serde(default)]
    pub addresses: Vec<serde_json::Value>,
}

/// One listener of a Gateway.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Unique within the Gateway; routes name it as `sectionName`.
    pub name: String,
    /// Exact or `*.` wildcard host name; none matches any.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Port the listener serves.
    pub port: u16,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP` or an implementation's own.
    pub protocol: String,
    /// TLS settings (HTTPS).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Which routes may attach.
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// A listener's TLS settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (default) or `Passthrough`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Certificates (Secrets of type `kubernetes.io/tls`).
    #[serde(default)]
    pub certificate_refs: Vec<ObjectRef>,
}

/// A reference to an object, possibly in another namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// API group; empty is the core group.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind; a default depends on where the reference is.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace; none is the referring object's.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Which routes may attach to a listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    /// From which namespaces.
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Which kinds; empty is every kind the listener's protocol supports.
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

/// `allowedRoutes.namespaces`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    #[serde(default)]
    pub from: Option<String>,
    /// Namespace labels, with `from: Selector`.
    #[serde(default)]
    pub selector: Option<LabelSelector>,
}

/// A route group and kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// Group; none is `gateway.networking.k8s.io`.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind, e.g. `HTTPRoute`.
    pub kind: String,
}

/// What wsgate reports on a Gateway.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Where the Gateway is reachable.
    #[serde(default)]
    pub addresses: Vec<GatewayAddress>,
    /// `Accepted` and `Programmed`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// One entry per listener.
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

/// One address of a Gateway.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub value: String,
}

/// One listener's status.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// The listener's name.
    pub name: String,
    /// The route kinds it accepts.
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Routes attached to it.
    pub attached_routes: i32,
    /// `Accepted`, `Programmed`, `ResolvedRefs`, `Conflicted`.
    pub conditions: Vec<Condition>,
}

/// `HTTPRoute`: matches, filters and backends for HTTP requests on the listeners it
/// attaches to.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced,
    status = "RouteStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteSpec {
    /// Gateways (and listeners of them) to attach to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names; intersected with each listener's.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules; none is one rule matching `/` with no backends.
    #[serde(default)]
    pub rules: Vec<HTTPRouteRule>,
}

/// A route's reference to its parent (a Gateway, or one listener of it).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Group; none is `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind; none is `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace; none is the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// One listener by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Listeners on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// One rule of an HTTPRoute.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteRule {
    /// The rule's name (GEP-995): a `WebSocketPolicy` can target it as `sectionName`.
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these matches selects the rule; none is `PathPrefix /`.
    #[serde(default)]
    pub matches: Vec<HTTPRouteMatch>,
    /// Applied in order to requests the rule selects.
    #[serde(default)]
    pub filters: Vec<HTTPRouteFilter>,
    /// Where requests go, by weight.
    #[serde(default)]
    pub backend_refs: Vec<HTTPBackendRef>,
    /// Request and backend-request timeouts (GEP-1742).
    #[serde(default)]
    pub timeouts: Option<HTTPRouteTimeouts>,
}

/// A request match: every condition must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteMatch {
    /// Path; none is `PathPrefix /`.
    #[serde(default)]
    pub path: Option<HTTPPathMatch>,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<HTTPValueMatch>,
    /// Query parameters.
    #[serde(default)]
    pub query_params: Vec<HTTPValueMatch>,
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
}

/// A path match.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    /// The path; none is `/`.
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    /// Header or parameter name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A filter of a rule or of a backendRef.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect`,
    /// `URLRewrite`, `RequestMirror`, `CORS` or `ExtensionRef`.
    #[serde(rename = "type")]
    pub type_: String,
    /// With `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// With `ResponseHeaderModifier`.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// With `RequestRedirect`.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    /// With `URLRewrite`.
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
}

/// Headers to set, add and remove.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Replace (or add) these.
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// Append these.
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Remove these names.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct HeaderValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A redirect answered by the gateway itself.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host name (no port).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path replacement.
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default)]
    pub status_code: Option<u16>,
}

/// A URL rewrite before the request reaches the backend.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// Host header replacement.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path replacement.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// A path replacement: the whole path or the matched prefix.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// With `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// A weighted backend of a rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HTTPBackendRef {
    /// Group; none is the core group.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind; none is `Service`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace; none is the route's (another needs a ReferenceGrant).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative weight; none is 1, 0 is never chosen.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Filters for requests sent to this backend.
    #[serde(default)]
    pub filters: Vec<HTTPRouteFilter>,
}

/// GEP-1742 timeouts: they end at the response head (the 101 for a WebSocket).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteTimeouts {
    /// Whole request, from the gateway's view.
    #[serde(default)]
    pub request: Option<String>,
    /// One backend request.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// What controllers report on a route, per parent.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// One entry per (parent, controller).
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// A route's status for one parent.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parentRef as the route wrote it.
    pub parent_ref: ParentRef,
    /// Which controller wrote this entry.
    pub controller_name: String,
    /// `Accepted` and `ResolvedRefs`.
    pub conditions: Vec<Condition>,
}

/// `ReferenceGrant`: lets objects of other namespaces refer to objects of this one.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1beta1",
    kind = "ReferenceGrant",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    /// Who may refer.
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    /// To what.
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

/// `ReferenceGrant.spec.from`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct GrantFrom {
    /// Group of the referring kind.
    #[serde(default)]
    pub group: String,
    /// Referring kind.
    pub kind: String,
    /// Referring namespace.
    pub namespace: String,
}

/// `ReferenceGrant.spec.to`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct GrantTo {
    /// Group of the referred kind.
    #[serde(default)]
    pub group: String,
    /// Referred kind.
    pub kind: String,
    /// One name; none is every object of the kind.
    #[serde(default)]
    pub name: Option<String>,
}
