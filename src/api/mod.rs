//! The `WebSocketRoute` resource (`wsgate.io/v1alpha1`): one set of types for the CRD
//! and for standalone route files, so both sources describe routes the same way.
//!
//! Defaults live here (serde and the generated schema agree on them); meaning —
//! validation and resolution into a live table — lives in [`crate::compile`].

mod auth;
mod backend_tls;
mod crd;
mod duration;
mod fleet_limits;
mod policy;

pub use auth::{Auth, ClaimToHeader, JwksRef, JwtAuth, TokenSource};
pub use backend_tls::{BackendTls, CaCertificateRef, CaKind, SecretRef};
pub use crd::{crd, policy_crd};
pub use duration::{Duration, DURATION_PATTERN};
pub use fleet_limits::{BudgetExceed, BudgetScope, FleetLimits, MessageBudget};
pub use policy::{
    AncestorRef, PolicyAncestorStatus, PolicyStatus, TargetRef, WebSocketPolicy,
    WebSocketPolicySpec,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every wsgate resource.
pub const GROUP: &str = "wsgate.io";
/// The served version of `WebSocketRoute`.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in documents.
pub const API_VERSION: &str = "wsgate.io/v1alpha1";
/// The class a route belongs to when it names none.
pub const DEFAULT_CLASS: &str = "wsgate";

/// A WebSocket route: which requests (host, path) go to which backends, and how the
/// proxy treats their tunnels (keepalive, limits, affinity, drain).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "wsgate.io",
    version = "v1alpha1",
    kind = "WebSocketRoute",
    namespaced,
    shortname = "wsr",
    status = "WebSocketRouteStatus",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hostnames"}"#,
    printcolumn = r#"{"name":"Path","type":"string","jsonPath":".spec.path.value"}"#,
    printcolumn = r#"{"name":"Backends","type":"integer","jsonPath":".status.backends"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebSocketRouteSpec {
    /// Which wsgate instances serve this route (their `--class`); empty means `wsgate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Host names this route answers: exact (`chat.example.com`) or one leading
    /// wildcard label (`*.example.com`). Empty means any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// The request path this route answers; the longest matching route wins.
    #[serde(default)]
    pub path: PathMatch,
    /// Where tunnels go: one or more backends.
    pub backends: Vec<Backend>,
    /// How a backend is chosen for each new tunnel or request.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Proxy-generated pings that keep idle tunnels alive and find dead peers.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// Connect, handshake, idle and lifetime limits.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Connection and message-size limits.
    #[serde(default)]
    pub limits: Limits,
    /// Origins allowed to open tunnels (exact match); empty allows any Origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Subprotocols a client may ask for; empty allows any `Sec-WebSocket-Protocol`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subprotocols: Vec<String>,
    /// Also proxy plain HTTP requests (Socket.IO and SockJS polling and streaming
    /// fallbacks). Without it, non-upgrade requests get 426.
    #[serde(default = "default_true")]
    pub proxy_http: bool,
    /// How tunnels of a removed route or backend are closed.
    #[serde(default)]
    pub drain: Drain,
    /// Terminates `wss` for the route's hostnames (SNI picks the certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Authenticates upgrades and plain HTTP requests before any backend is contacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Spreads tunnels again after backends are added (RoundRobin and
    /// LeastConnections only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<Rebalance>,
    /// Skip a backend for a while after failed connects (NGINX's `max_fails`
    /// and `fail_timeout`); on by default.
    #[serde(default)]
    pub passive_health: PassiveHealth,
    /// TLS (and optionally mTLS) toward the backends; plain TCP when absent.
    #[serde(
        default,
        rename = "backendTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_tls: Option<BackendTls>,
    /// Which client addresses may use the route: deny is checked first, then
    /// allow (empty allows all); a refused client gets 403 before any backend is
    /// contacted. The address is the effective client (PROXY protocol, trusted
    /// `X-Forwarded-For`), not the load balancer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_access: Option<ClientAccess>,
    /// OpenTelemetry traces of the route's upgrades and tunnels, when wsgate
    /// exports traces (`--otel-endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<RouteTracing>,
    /// Connection caps and message budgets shared by every replica through the
    /// store of `--limits-store`; refused without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_limits: Option<FleetLimits>,
}

fn default_true() -> bool {
    true
}

/// How the request path is matched.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// `PathPrefix` matches whole segments (`/chat` matches `/chat/room`, not `/chatter`);
    /// `Exact` matches the path alone.
    #[serde(default, rename = "type")]
    pub kind: PathMatchType,
    /// The path, starting with `/`.
    #[serde(default = "default_path")]
    pub value: String,
}

fn default_path() -> String {
    "/".into()
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch {
            kind: PathMatchType::PathPrefix,
            value: default_path(),
        }
    }
}

/// The two path match kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum PathMatchType {
    /// Matches the path and everything below it, segment-wise.
    #[default]
    PathPrefix,
    /// Matches exactly this path.
    Exact,
}

/// One backend: a Service in the route's namespace or a static address.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// A Service in the route's namespace; its ready endpoints become backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// A static `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Relative share of new tunnels (0 takes none).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A Service and one of its ports.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    /// The Service's name.
    pub name: String,
    /// The Service port, by number or by name.
    pub port: PortRef,
}

/// A Service port given by number or by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    /// The port number.
    Number(u16),
    /// The port's name.
    Name(String),
}

impl<'de> Deserialize<'de> for PortRef {
    /// By hand rather than `untagged`, so a number out of range says so (and a
    /// route's status names it) instead of "did not match any variant".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortRef;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number from 1 to 65535 or a port name")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<PortRef, E> {
                match u16::try_from(n) {
                    Ok(p) if p > 0 => Ok(PortRef::Number(p)),
                    _ => Err(E::custom(format!(
                        "port {n} is out of range: a port is from 1 to 65535"
                    ))),
                }
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<PortRef, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "port {n} is out of range: a port is from 1 to 65535"
                    ))),
                }
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PortRef, E> {
                Ok(PortRef::Name(s.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for PortRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortRef".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Kubernetes' structural form of "number or name" (like a Service's targetPort).
        // A number must be a port (the bounds apply to numbers only); a name is a
        // Service port name (IANA_SVC_NAME: at most 15 characters).
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "minimum": 1,
            "maximum": 65535,
            "maxLength": 15
        })
    }
}

/// Backend choice.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancing {
    /// The policy; `RoundRobin` by default.
    #[serde(default)]
    pub policy: Policy,
    /// What `ConsistentHash` hashes: exactly one of its fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// The affinity cookie of the `Cookie` policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<AffinityCookie>,
}

/// Load-balancing policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Policy {
    /// In turn, by weight.
    #[default]
    RoundRobin,
    /// The backend with the fewest open tunnels.
    LeastConnections,
    /// The same key always reaches the same backend while it exists (`hashOn`).
    ConsistentHash,
    /// The proxy sets an affinity cookie on the first response and honours it.
    Cookie,
}

/// The key of `ConsistentHash`: exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashOn {
    /// Hash the client's IP address.
    #[serde(
        default,
        rename = "clientIP",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub client_ip: bool,
    /// Hash this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Hash this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Hash this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// The cookie of the `Cookie` policy.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityCookie {
    /// Cookie name.
    #[serde(default = "default_cookie_name")]
    pub name: String,
    /// Cookie lifetime (`Max-Age`); `0s` makes a session cookie.
    #[serde(default = "default_cookie_ttl")]
    pub ttl: Duration,
}

fn default_cookie_name() -> String {
    "wsgate-affinity".into()
}

fn default_cookie_ttl() -> Duration {
    Duration::from_secs(3600)
}

impl Default for AffinityCookie {
    fn default() -> Self {
        AffinityCookie {
            name: default_cookie_name(),
            ttl: default_cookie_ttl(),
        }
    }
}

/// Proxy pings on the client leg and, optionally, the backend leg.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Keepalive {
    /// Ping the client when it has been silent this long; `0s` turns pings off.
    #[serde(default = "default_ping_interval")]
    pub interval: Duration,
    /// The client is dead when nothing arrives this long after the first ping; pings
    /// repeat every `interval` meanwhile, so it may be longer than `interval`.
    #[serde(default = "default_ping_timeout")]
    pub timeout: Duration,
    /// Pings on the backend leg (off unless given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<LegKeepalive>,
}

fn default_ping_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_ping_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: default_ping_interval(),
            timeout: default_ping_timeout(),
            backend: None,
        }
    }
}

/// Ping settings of one leg.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegKeepalive {
    /// Ping the leg when it has been silent this long; `0s` turns pings off.
    #[serde(default = "default_ping_interval")]
    pub interval: Duration,
    /// The leg is dead when nothing arrives this long after the first ping (pings
    /// repeat every `interval` meanwhile).
    #[serde(default = "default_ping_timeout")]
    pub timeout: Duration,
}

/// Time limits (`0s` = none, except `connect` and `handshake`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect to a backend; a failed connect tries the next backend.
    #[serde(default = "default_connect")]
    pub connect: Duration,
    /// The backend's answer to the upgrade request.
    #[serde(default = "default_handshake")]
    pub handshake: Duration,
    /// Close a tunnel after this long without a data message either way.
    #[serde(default)]
    pub idle: Duration,
    /// Close a tunnel this long after it opened.
    #[serde(default)]
    pub max_lifetime: Duration,
}

fn default_connect() -> Duration {
    Duration::from_secs(5)
}

fn default_handshake() -> Duration {
    Duration::from_secs(10)
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            handshake: default_handshake(),
            idle: Duration::default(),
            max_lifetime: Duration::default(),
        }
    }
}

/// Limits (`0` = none).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Open tunnels on this route; more get 503.
    #[serde(default)]
    pub max_connections: u64,
    /// Open tunnels per client IP on this route; more get 429.
    #[serde(default, rename = "maxConnectionsPerClientIP")]
    pub max_connections_per_client_ip: u64,
    /// Largest message (all fragments) either way; larger closes the tunnel with 1009.
    #[serde(default)]
    pub max_message_bytes: u64,
    /// Data messages per second per tunnel, client to backend.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub messages_per_second: u64,
    /// Data-frame payload bytes per second per tunnel, client to backend.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_per_second: u64,
    /// Depth of the message bucket; 0 = one second's worth.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub burst: u64,
    /// Depth of the byte bucket; 0 = one second's worth.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub burst_bytes: u64,
    /// What a tunnel above its rate gets.
    #[serde(default, skip_serializing_if = "OnExceed::is_close")]
    pub on_exceed: OnExceed,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What happens to a tunnel whose client sends above its rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum OnExceed {
    /// Close 1008 (Policy Violation) to both sides.
    #[default]
    Close,
    /// Stop reading the client until tokens refill (TCP backpressure).
    Throttle,
}

impl OnExceed {
    fn is_close(&self) -> bool {
        *self == OnExceed::Close
    }
}

/// Moving tunnels off over-loaded backends after backends are added.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rebalance {
    /// At most this share (above 0, at most 1) of an over-loaded backend's tunnels
    /// is moved.
    #[serde(default = "default_max_fraction")]
    pub max_fraction: f64,
    /// The window the moved tunnels' Close 1012 is spread over.
    #[serde(default = "default_rebalance_over")]
    pub over: Duration,
}

fn default_max_fraction() -> f64 {
    0.2
}

fn default_rebalance_over() -> Duration {
    Duration::from_secs(300)
}

impl Default for Rebalance {
    fn default() -> Self {
        Rebalance {
            max_fraction: default_max_fraction(),
            over: default_rebalance_over(),
        }
    }
}

/// Drain of tunnels whose route or backend is gone.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Drain {
    /// How long such tunnels live on before Close 1001.
    #[serde(default = "default_grace")]
    pub grace_period: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            grace_period: default_grace(),
        }
    }
}

/// Passive backend health: a backend whose connects failed `maxFails` times in a
/// row (refused or timed out) is skipped for `failTimeout`. When every backend
/// is skipped they are all tried anyway.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PassiveHealth {
    /// Failed connects in a row that take a backend out; `0` turns this off.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long such a backend is skipped.
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Duration,
}

fn default_max_fails() -> u32 {
    1
}

fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            max_fails: default_max_fails(),
            fail_timeout: default_fail_timeout(),
        }
    }
}

/// `clientAccess`: CIDR lists of client addresses.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientAccess {
    /// Addresses allowed (CIDRs like `10.0.0.0/8` or bare addresses); empty
    /// allows every address that is not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Addresses denied; deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// IPv6 clients are compared by this many leading bits of their address (64:
    /// one customer's /64 counts as one address).
    #[serde(default = "default_ipv6_prefix_length")]
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix_length: u8,
    /// When the lists change: `CloseDenied` sends Close 1008 to the open tunnels
    /// whose client is now denied (1001 to their backend); `KeepExisting` leaves
    /// open tunnels alone.
    #[serde(default)]
    pub on_policy_change: OnPolicyChange,
}

fn default_ipv6_prefix_length() -> u8 {
    128
}

impl Default for ClientAccess {
    fn default() -> Self {
        ClientAccess {
            allow: Vec::new(),
            deny: Vec::new(),
            ipv6_prefix_length: default_ipv6_prefix_length(),
            on_policy_change: OnPolicyChange::default(),
        }
    }
}

/// What a change of `clientAccess` does to open tunnels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum OnPolicyChange {
    /// Close the tunnels whose client the new lists deny.
    #[default]
    CloseDenied,
    /// Leave open tunnels alone; the lists apply to new ones.
    KeepExisting,
}

/// `tracing`: how a route's requests are traced.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTracing {
    /// The share of new traces recorded, from 0 to 1 (a trusted client's sampled
    /// `traceparent` is followed whatever this says); `--otel-sampling-ratio`
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_ratio: Option<f64>,
    /// Continue the client's W3C `traceparent`. `false` (for routes open to the
    /// internet): every request starts a new trace, linked to the client's, so a
    /// client can neither choose trace ids nor force sampling.
    #[serde(default = "default_true")]
    pub trust_incoming_context: bool,
}

/// Certificate for `wss`: a Secret in Kubernetes, files in standalone mode.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// A `kubernetes.io/tls` Secret in the route's namespace (controller mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// PEM certificate chain file (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key file (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// What the controller observed of a route.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketRouteStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Resolved backend endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
