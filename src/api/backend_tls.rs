//! `spec.backendTLS`: `wss`/`https` toward the route's backends, with the backend's
//! certificate verified (there is no switch that turns verification off) and an
//! optional client certificate for backends that require mTLS.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// TLS toward backends. Controller mode names ConfigMap/Secret keys; standalone
/// mode names files (`caFile`, `certFile`, `keyFile`), watched for rotation.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTls {
    /// SNI and the name the backend's certificate must carry. Default:
    /// `<service>.<namespace>.svc` for Service backends, the host of an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// CA certificates (PEM) that sign the backends' certificates (controller mode);
    /// none given (and no `caFile`): the system roots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificate_refs: Vec<CaCertificateRef>,
    /// A `kubernetes.io/tls` Secret whose certificate wsgate presents (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<SecretRef>,
    /// PEM file of CA certificates, relative to the route file (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM client certificate chain file (standalone mode, mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key of `certFile` (standalone mode, mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// A key of a ConfigMap or Secret in the route's namespace holding PEM CA certificates.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaCertificateRef {
    /// `ConfigMap` or `Secret`.
    pub kind: CaKind,
    /// The object's name.
    pub name: String,
    /// The key holding the PEM data (e.g. `ca.crt`).
    pub key: String,
}

/// Where a CA certificate is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum CaKind {
    /// A ConfigMap's `data`.
    ConfigMap,
    /// A Secret's `data` (type `Opaque` or `kubernetes.io/tls`).
    Secret,
}

/// A Secret in the route's namespace.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
}
