//! Route status: `Accepted`, `ResolvedRefs` and `Programmed` conditions, written by
//! server-side apply only when they differ from what the object already says, so
//! steady state costs no writes and conditions never flap.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;

use super::resolve::Outcome;
use crate::api::{WebSocketRoute, WebSocketRouteStatus, API_VERSION};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "wsgate";

fn cond(kind: &str, ok: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition {
        type_: kind.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

fn join(errs: &[crate::compile::FieldError]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The status a route should have for this outcome.
pub fn desired(route: &WebSocketRoute, outcome: &Outcome) -> WebSocketRouteStatus {
    let g = route.metadata.generation;
    let (accepted, resolved, programmed, backends) = match outcome {
        Outcome::Programmed { backends } => (
            cond("Accepted", true, "Accepted", "route is valid".into(), g),
            cond(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all backends and certificates resolved".into(),
                g,
            ),
            cond(
                "Programmed",
                true,
                "Programmed",
                format!("serving with {backends} backend endpoint(s)"),
                g,
            ),
            Some(*backends as i64),
        ),
        Outcome::Invalid(errs) => (
            cond("Accepted", false, "Invalid", join(errs), g),
            cond(
                "ResolvedRefs",
                false,
                "Invalid",
                "route is not valid".into(),
                g,
            ),
            cond(
                "Programmed",
                false,
                "Invalid",
                "route is not valid".into(),
                g,
            ),
            None,
        ),
        Outcome::Conflicted { winner } => (
            cond(
                "Accepted",
                false,
                "Conflicted",
                format!("route {winner} already serves these hostnames and path"),
                g,
            ),
            cond(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all backends and certificates resolved".into(),
                g,
            ),
            cond(
                "Programmed",
                false,
                "Conflicted",
                format!("route {winner} is older and wins"),
                g,
            ),
            None,
        ),
        Outcome::NotAllowed { reason, errors } => (
            cond("Accepted", false, reason, join(errors), g),
            cond(
                "ResolvedRefs",
                false,
                reason,
                "route is not accepted".into(),
                g,
            ),
            cond(
                "Programmed",
                false,
                reason,
                "route is not accepted".into(),
                g,
            ),
            None,
        ),
        Outcome::Unresolved(errs) => {
            let reason = if errs.iter().any(|e| e.field.starts_with("spec.tls")) {
                "InvalidCertificateRef"
            } else {
                "BackendNotFound"
            };
            (
                cond("Accepted", true, "Accepted", "route is valid".into(), g),
                cond("ResolvedRefs", false, reason, join(errs), g),
                cond(
                    "Programmed",
                    false,
                    reason,
                    "not served until its references resolve".into(),
                    g,
                ),
                None,
            )
        }
    };
    WebSocketRouteStatus {
        observed_generation: g,
        backends,
        conditions: vec![accepted, resolved, programmed],
    }
}

/// Keeps `lastTransitionTime` of conditions whose status did not change, and says
/// whether anything but those timestamps differs.
pub fn merge(
    current: Option<&WebSocketRouteStatus>,
    mut want: WebSocketRouteStatus,
) -> (WebSocketRouteStatus, bool) {
    let Some(cur) = current else {
        return (want, true);
    };
    for c in &mut want.conditions {
        if let Some(old) = cur.conditions.iter().find(|o| o.type_ == c.type_) {
            if old.status == c.status {
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
    let same = cur.observed_generation == want.observed_generation
        && cur.backends == want.backends
        && cur.conditions.len() == want.conditions.len()
        && cur.conditions.iter().zip(&want.conditions).all(|(a, b)| {
            (
                &a.type_,
                &a.status,
                &a.reason,
                &a.message,
                a.observed_generation,
            ) == (
                &b.type_,
                &b.status,
                &b.reason,
                &b.message,
                b.observed_generation,
            )
        });
    (want, !same)
}

/// Writes a route's status by server-side apply.
pub async fn write(
    client: &kube::Client,
    route: &WebSocketRoute,
    status: &WebSocketRouteStatus,
) -> kube::Result<()> {
    let api: Api<WebSocketRoute> =
        Api::namespaced(client.clone(), &route.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "WebSocketRoute",
        "status": status,
    });
    api.patch_status(
        &route.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::WebSocketRouteSpec;

    #[test]
    fn unchanged_status_needs_no_write() {
        let mut r = WebSocketRoute::new("chat", WebSocketRouteSpec::default());
        r.metadata.generation = Some(2);
        let first = desired(&r, &Outcome::Programmed { backends: 2 });
        let (_, changed) = merge(
            Some(&first),
            desired(&r, &Outcome::Programmed { backends: 2 }),
        );
        assert!(!changed);
        let (next, changed) = merge(
            Some(&first),
            desired(&r, &Outcome::Programmed { backends: 3 }),
        );
        assert!(changed);
        // Still True: the transition time stays.
        assert_eq!(
            next.conditions[2].last_transition_time,
            first.conditions[2].last_transition_time
        );
    }
}
