//! What fleet limits write in the background: the heartbeat (this replica
//! marked live, its absolute counts rewritten, the connection made or remade) and
//! the releases of closed tunnels, gathered. Both write absolute counts, so a
//! write that is lost, late or repeated can only leave a count too high until
//! the next heartbeat.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::breaker::Gate;
use super::store::{StoreError, StoreMode};
use super::{keys, Fleet};

impl Fleet {
    /// Writes these absolute counts, unless the breaker is open (the heartbeat
    /// writes them once the store answers again).
    pub(super) async fn write_counts(&self, counts: &[(String, u64)]) {
        if self.gate() == Gate::Skip {
            return;
        }
        match self.heartbeat_keys(counts, self.settings.timeout * 4).await {
            Ok(()) => self.answered(),
            Err(e) => self.failed(&e),
        }
    }

    /// Writes absolute counts: one call in single mode, one per key in Cluster.
    async fn heartbeat_keys(
        &self,
        counts: &[(String, u64)],
        deadline: Duration,
    ) -> Result<(), StoreError> {
        let s = &self.settings;
        let stale = s.stale_after.as_millis() as u64;
        let per_call = if self.store.mode() == StoreMode::Cluster {
            1
        } else {
            500
        };
        for chunk in counts.chunks(per_call * 32) {
            let calls = chunk.chunks(per_call).map(|part| {
                let part: Vec<(&str, u64)> = part.iter().map(|(k, n)| (k.as_str(), *n)).collect();
                async move {
                    self.store
                        .heartbeat(deadline, &s.replica, stale, &part)
                        .await
                }
            });
            for r in futures_util::future::join_all(calls).await {
                r?;
            }
        }
        Ok(())
    }
}

/// Writes the counts of keys that went down, gathered for [`RELEASE_BATCH`]: a
/// freed slot is usable by other replicas a few ms after the close, and the
/// closes of a busy replica share one call instead of paying one each (a store
/// round trip costs a handshake more CPU than anything else fleet limits do).
/// The counts are absolute, like a heartbeat's: a write that is lost or late
/// can only leave a count too high until the next heartbeat.
pub(super) async fn releases(fleet: Arc<Fleet>) {
    loop {
        fleet.release_wake.notified().await;
        tokio::time::sleep(RELEASE_BATCH).await;
        let keys = std::mem::take(&mut *fleet.released.lock().expect("lock"));
        if keys.is_empty() {
            continue;
        }
        let counts = fleet.counts_of(keys.into_iter());
        fleet.write_counts(&counts).await;
    }
}

/// How long closes are gathered before their counts are written.
const RELEASE_BATCH: Duration = Duration::from_millis(5);

/// Connects, then every heartbeat: marks this replica live (learning N), and
/// writes its absolute counts. A heartbeat that gets through closes the breaker.
pub(super) async fn heartbeat(fleet: Arc<Fleet>) {
    let s = fleet.settings.clone();
    let stale = s.stale_after.as_millis() as u64;
    let deadline = (s.timeout * 4)
        .max(Duration::from_millis(100))
        .min(s.heartbeat);
    let mut said_unreachable = false;
    let mut tick = tokio::time::interval(s.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let resolve = !fleet.store.connected()
            || (s.mode == StoreMode::Sentinel && fleet.breaker.lock().expect("lock").is_open());
        if resolve {
            match fleet.store.connect(s.timeout).await {
                Ok(()) => {
                    said_unreachable = false;
                    tracing::info!(mode = s.mode.as_str(), replica = %s.replica, "limits store connected");
                }
                Err(e) => {
                    fleet.failed(&e);
                    if !said_unreachable {
                        said_unreachable = true;
                        tracing::warn!(error = %e, mode = s.mode.as_str(), "cannot connect to the limits store; retrying every heartbeat");
                    }
                    continue;
                }
            }
        }
        match fleet
            .store
            .replicas(deadline, keys::REPLICAS_KEY, &s.replica, stale)
            .await
        {
            Ok(n) => {
                fleet.live.store(n.max(1), Relaxed);
                fleet.answered();
            }
            Err(e) => {
                fleet.failed(&e);
                continue;
            }
        }
        let counts: Vec<(String, u64)> = fleet
            .counts
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        match fleet.heartbeat_keys(&counts, deadline).await {
            Ok(()) => {
                // Zeros were written (their fields deleted): forget them.
                fleet.counts.lock().expect("lock").retain(|_, n| *n > 0);
            }
            Err(e) => fleet.failed(&e),
        }
        fleet
            .accounts
            .lock()
            .expect("lock")
            .retain(|_, a| a.strong_count() > 0);
    }
}
