//! Leader election on a `coordination.k8s.io` Lease. Every replica serves traffic;
//! only the leader writes status and Events, so replicas never fight over them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// How long a lease holds without renewal.
const LEASE_SECONDS: i32 = 15;
/// How often the holder renews (and others check).
const RENEW_EVERY: Duration = Duration::from_secs(3);

/// Whether this replica leads, updated by [`run`].
#[derive(Clone, Default)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// True while this replica holds the lease.
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Keeps trying to acquire and renew the lease `name` in `namespace` as `identity`.
/// `changed` is notified when leadership is gained, so the new leader writes status.
pub async fn run(
    client: kube::Client,
    namespace: String,
    name: String,
    identity: String,
    leadership: Leadership,
    changed: Arc<tokio::sync::Notify>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    loop {
        let was = leadership.is_leader();
        let now = leadership_step(&api, &name, &identity).await;
        match now {
            Ok(lead) => {
                leadership.0.store(lead, Ordering::Release);
                if lead && !was {
                    tracing::info!(lease = %format!("{namespace}/{name}"), %identity, "became leader: writing status");
                    changed.notify_one();
                } else if !lead && was {
                    tracing::warn!(%identity, "lost leadership");
                }
            }
            Err(e) => {
                // Without the API we cannot know; stop writing until renewed.
                if was {
                    tracing::warn!(error = %e, "cannot renew the lease; stepping down");
                }
                leadership.0.store(false, Ordering::Release);
            }
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

async fn leadership_step(api: &Api<Lease>, name: &str, identity: &str) -> kube::Result<bool> {
    let now = MicroTime(jiff::Timestamp::now());
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let age = jiff::Timestamp::now().duration_since(t.0);
        age.as_secs() >= i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS))
    });
    if holder != identity && !expired && !holder.is_empty() {
        return Ok(false);
    }
    if holder != identity {
        spec.holder_identity = Some(identity.to_owned());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    spec.renew_time = Some(now);
    // Replace carries the resourceVersion we read: a concurrent taker gets 409.
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
