//! `spec.auth`: authentication of the upgrade (and of plain HTTP on the route).
//! Browsers cannot set headers on `new WebSocket()`, so a token may also arrive in a
//! query parameter, a cookie or the `Sec-WebSocket-Protocol` list.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

/// How a route authenticates clients.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Auth {
    /// A signed JSON Web Token checked against a JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
}

/// JWT verification: signature against a JWKS (RS*, PS*, ES256/384, EdDSA), `iss`,
/// `aud`, `exp` (no leeway) and `nbf`/`iat` (within `clockSkew`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtAuth {
    /// The required `iss`.
    pub issuer: String,
    /// One of these must be in `aud`; empty accepts any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the public keys come from.
    pub jwks: JwksRef,
    /// Where the token is looked for, in order; the first source present wins.
    /// Default: the `Authorization` header with prefix `Bearer `.
    #[serde(default = "default_token_from")]
    pub token_from: Vec<TokenSource>,
    /// Claims copied into request headers for the backend (client-sent copies of
    /// those headers are removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Close the tunnel with 1008 to both sides when the token's `exp` passes.
    #[serde(default = "default_true")]
    pub close_on_expiry: bool,
    /// Tolerance for `nbf` and `iat` (never for `exp`).
    #[serde(default = "default_clock_skew")]
    pub clock_skew: Duration,
}

fn default_true() -> bool {
    true
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}

fn default_token_from() -> Vec<TokenSource> {
    vec![TokenSource {
        header: Some("Authorization".into()),
        prefix: Some("Bearer ".into()),
        ..TokenSource::default()
    }]
}

/// A JWKS (RFC 7517 key set): exactly one of a Secret or ConfigMap key (controller
/// mode), a file (standalone mode) or a URI fetched and refreshed.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwksRef {
    /// A Secret in the route's namespace (controller mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// A ConfigMap in the route's namespace (controller mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
    /// The key in the Secret or ConfigMap holding the JWKS JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A JWKS JSON file, relative to the route file (standalone mode); watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An `http://` or `https://` URL serving the JWKS (system roots for https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// How often `uri` is fetched again; a failed fetch keeps the last good set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Duration>,
}

/// One place a token may be: set exactly one of `header`, `query`, `cookie`,
/// `subprotocol`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSource {
    /// A request header; the whole header is removed before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// With `header`: the value must start with this (e.g. `Bearer `), else the
    /// source counts as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A query parameter; only it is removed from the forwarded URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A cookie; only it is removed from the forwarded `Cookie` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// A `Sec-WebSocket-Protocol` entry starting with this prefix (e.g.
    /// `access_token.`); only that entry is removed from the list the backend sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subprotocol: Option<String>,
}

/// A claim passed to the backend as a request header.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The claim's name (strings as they are; numbers and booleans as text;
    /// arrays and objects as JSON).
    pub claim: String,
    /// The header set for the backend.
    pub header: String,
}
