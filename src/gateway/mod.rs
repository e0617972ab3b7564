//! Gateway API mode: wsgate as an implementation of the Kubernetes Gateway API
//! (standard channel, v1.6) for GatewayClasses whose `controllerName` is
//! `wsgate.io/gateway-controller`.
//!
//! [`api`] holds the objects as wsgate reads them; [`build`] turns a snapshot of
//! them into the listeners and rules to serve and the status to report.

pub mod api;
pub mod build;
pub mod policy;
pub mod routes;

/// The features `GatewayClass.status.supportedFeatures` lists: only those whose
/// conformance tests wsgate passes in CI (`make conformance`).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "HTTPRoute",
    "ReferenceGrant",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteHostRewrite",
    "HTTPRoutePathRewrite",
    "HTTPRoutePathRedirect",
    "HTTPRouteSchemeRedirect",
    "HTTPRoutePortRedirect",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteRequestTimeout",
    "HTTPRouteBackendTimeout",
    "HTTPRouteNamedRouteRule",
    "GatewayPort8080",
    "HTTPRouteParentRefPort",
    "GatewayHTTPListenerIsolation",
];

#[cfg(test)]
mod tests;
