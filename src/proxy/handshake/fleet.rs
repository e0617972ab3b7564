//! The fleet-wide caps as a step of the handshake: the route's `fleetLimits`
//! checked and counted in the limits store, and a refusal turned into its
//! response (429 with `Retry-After` for a client's or a subject's cap, 503 for
//! the route's cap or a failed store under `fail-closed`).

use std::net::IpAddr;

use http::header::{HeaderValue, RETRY_AFTER};
use http::StatusCode;

use crate::metrics::RouteMetrics;
use crate::proxy::fleet::{self, Ticket};
use crate::proxy::response::{status, Body};
use crate::proxy::route::policy::FleetPolicy;
use crate::proxy::route::table::Route;

/// Counts the upgrade in the fleet, or the response that refuses it.
pub async fn admit(
    route: &Route,
    metrics: &RouteMetrics,
    policy: &FleetPolicy,
    ip: IpAddr,
    subject: Option<&str>,
) -> Result<Ticket, http::Response<Body>> {
    // Compilation refuses fleetLimits without a store, so this is there.
    let Some(fleet) = fleet::get() else {
        return Err(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "fleet limits without a limits store",
        ));
    };
    let refused = match fleet.admit(&route.key, policy, ip, subject).await {
        Ok(ticket) => return Ok(ticket),
        Err(r) => r,
    };
    metrics.outcome("limited");
    let code = StatusCode::from_u16(refused.status()).expect("429 or 503");
    let why = match refused.scope {
        Some(scope) => {
            metrics.fleet_rejected(scope.as_str());
            tracing::debug!(route = %route.key, %ip, scope = scope.as_str(), "upgrade over a fleet-wide limit");
            "fleet connection limit reached"
        }
        None => "connection limits unavailable",
    };
    let mut r = status(code, why);
    if code == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(fleet.retry_after()));
    }
    Err(r)
}
