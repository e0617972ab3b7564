//! Passive backend health (`spec.passiveHealth`), NGINX's `max_fails` and
//! `fail_timeout`: a backend whose connects failed `maxFails` times in a row
//! (refused, timed out) is skipped for `failTimeout`, for upgrades and plain HTTP
//! alike. A black-holed backend (a pod whose node died before its endpoint was
//! removed) then costs one connect timeout, not one per request balanced to it.
//!
//! When every backend is ejected they are all tried anyway, as NGINX does: a
//! route never refuses a client on stale evidence alone. After `failTimeout` a
//! backend is tried again; one more failure ejects it again at once, a success
//! clears its record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use crate::metrics::RouteMetrics;
use crate::proxy::route::table::Route;

/// One backend's failures.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FailureRecord {
    /// Failed connects in a row.
    pub(crate) fails: u32,
    /// Skipped until then.
    pub(crate) ejected_until: Option<Instant>,
}

/// The failure records of one route's backends, by address. Only backends with
/// a failure have a record, so a healthy route costs one atomic load per choice.
#[derive(Default)]
pub struct BackendHealth {
    records: Mutex<HashMap<String, FailureRecord>>,
    /// `records.len()`, readable without the lock.
    failing: AtomicUsize,
}

impl BackendHealth {
    /// Drops the ejected backends from `candidates` (indexes into
    /// `route.backends`), unless that would leave none.
    pub fn live(&self, route: &Route, candidates: Vec<usize>) -> Vec<usize> {
        if self.failing.load(Relaxed) == 0 || route.passive_health.max_fails == 0 {
            return candidates;
        }
        let now = Instant::now();
        let records = self.records.lock().expect("lock");
        let ejected = |i: &usize| {
            records
                .get(&*route.backends[*i].address)
                .and_then(|r| r.ejected_until)
                .is_some_and(|until| until > now)
        };
        if candidates.iter().all(ejected) {
            return candidates;
        }
        candidates.into_iter().filter(|i| !ejected(i)).collect()
    }

    /// A connect to `address` succeeded: its record is cleared.
    pub fn connected(&self, address: &str) {
        if self.failing.load(Relaxed) == 0 {
            return;
        }
        let mut records = self.records.lock().expect("lock");
        records.remove(address);
        self.failing.store(records.len(), Relaxed);
    }

    /// A connect to `address` failed; true when this failure ejected it.
    pub fn failed(&self, route: &Route, address: &str) -> bool {
        let policy = route.passive_health;
        let now = Instant::now();
        let mut records = self.records.lock().expect("lock");
        // Records of backends that left the route would otherwise pile up as
        // pods come and go.
        if records.len() > 2 * route.backends.len() + 8 {
            records.retain(|a, _| route.backends.iter().any(|b| *b.address == **a));
        }
        let r = records.entry(address.to_owned()).or_insert(FailureRecord {
            fails: 0,
            ejected_until: None,
        });
        r.fails = r.fails.saturating_add(1);
        let already = r.ejected_until.is_some_and(|until| until > now);
        let eject = policy.max_fails > 0 && r.fails >= policy.max_fails && !already;
        if eject {
            r.ejected_until = Some(now + policy.fail_timeout);
        }
        self.failing.store(records.len(), Relaxed);
        eject
    }

    /// The failure record of `address`, if it has one.
    pub(crate) fn get(&self, address: &str) -> Option<FailureRecord> {
        if self.failing.load(Relaxed) == 0 {
            return None;
        }
        self.records.lock().expect("lock").get(address).copied()
    }
}

/// Records a connect's result for `route`'s backend at `address`, counting an
/// ejection in `wsgate_backend_ejections_total`.
pub fn record(
    health: &BackendHealth,
    metrics: &RouteMetrics,
    route: &Route,
    address: &str,
    ok: bool,
) {
    if ok {
        health.connected(address);
    } else if health.failed(route, address) {
        metrics.ejected();
        tracing::warn!(
            route = %route.key,
            backend = address,
            fail_timeout = ?route.passive_health.fail_timeout,
            "backend ejected after failed connects; it is skipped until failTimeout passes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::route::policy::{Balance, PassiveHealth};
    use std::time::Duration;

    #[test]
    fn ejects_after_max_fails_and_keeps_one_when_all_are_out() {
        let mut route = Route::for_test("r", Balance::RoundRobin, &[("a:1", 1), ("b:1", 1)]);
        route.passive_health = PassiveHealth {
            max_fails: 2,
            fail_timeout: Duration::from_millis(50),
        };
        let h = BackendHealth::default();
        assert!(!h.failed(&route, "a:1"));
        assert_eq!(h.live(&route, vec![0, 1]), [0, 1]);
        assert!(h.failed(&route, "a:1"));
        assert_eq!(h.live(&route, vec![0, 1]), [1]);
        assert!(
            !h.failed(&route, "a:1"),
            "already ejected: not counted twice"
        );
        assert!(h.failed(&route, "b:1") || h.failed(&route, "b:1"));
        assert_eq!(h.live(&route, vec![0, 1]), [0, 1], "all out: try them all");
        std::thread::sleep(Duration::from_millis(60));
        h.connected("b:1");
        assert_eq!(h.live(&route, vec![0, 1]), [0, 1]);
        assert!(
            h.failed(&route, "a:1"),
            "after failTimeout one failure ejects again"
        );
    }

    #[test]
    fn max_fails_zero_never_ejects() {
        let mut route = Route::for_test("r", Balance::RoundRobin, &[("a:1", 1), ("b:1", 1)]);
        route.passive_health.max_fails = 0;
        let h = BackendHealth::default();
        for _ in 0..5 {
            assert!(!h.failed(&route, "a:1"));
        }
        assert_eq!(h.live(&route, vec![0, 1]), [0, 1]);
    }
}
