//! The token check as a step of the handshake: the route's
//! [`JwtAuth`](crate::proxy::route::auth::JwtAuth) (if any)
//! applied to a request, counted, and turned into the response a refusal gets.

use crate::metrics::RouteMetrics;
use crate::proxy::response::Body;
use crate::proxy::route::auth::Verified;
use crate::proxy::route::table::Route;
use crate::proxy::trace::RequestTrace;

/// The route's token check (when it has `auth`), counted in `wsgate_auth_total`
/// and said on the request's span (`wsgate.auth.result`). The request leaves
/// stripped of the token either way; a refusal comes back as the response to send.
pub async fn admit<B>(
    route: &Route,
    metrics: &RouteMetrics,
    req: &mut http::Request<B>,
    trace: &RequestTrace,
) -> Result<Verified, http::Response<Body>> {
    let Some(auth) = &route.auth else {
        return Ok(Verified::default());
    };
    let mut headers = std::mem::take(req.headers_mut());
    let mut uri = std::mem::take(req.uri_mut());
    let result = auth.authenticate(&mut headers, &mut uri).await;
    *req.headers_mut() = headers;
    *req.uri_mut() = uri;
    match result {
        Ok(v) => {
            metrics.auth("ok");
            trace.set("wsgate.auth.result", "ok");
            Ok(v)
        }
        Err(denial) => {
            if let Some(r) = denial.result() {
                metrics.auth(r);
                trace.set("wsgate.auth.result", r);
            }
            tracing::debug!(route = %route.key, ?denial, "request refused by the token check");
            Err(denial.response())
        }
    }
}
