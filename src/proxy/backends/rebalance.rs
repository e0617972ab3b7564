//! The rebalancer: after a route gains a backend, moves tunnels off backends that
//! hold more than their weighted share by closing them (Close 1012 to the client,
//! which reconnects and is sent to the least-loaded backend).
//!
//! Fair share of backend b = its weight's share of the route's tunnels. From each
//! backend above its share, min(excess, floor(maxFraction × its tunnels)) tunnels
//! move, so no backend drops below its share and none under it loses a tunnel. The
//! closes are spread evenly over the window, interleaved across backends, so the
//! reconnects arrive as a trickle rather than a storm.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::proxy::registry::{CloseReason, Registry};
use crate::proxy::route::policy::RebalancePolicy;
use crate::proxy::route::table::RouteTable;

/// One backend as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendLoad {
    /// Its weight in the new table.
    pub weight: u32,
    /// Its open tunnels that are not already closing, oldest first.
    pub tunnels: Vec<u64>,
}

/// How many tunnels move off each backend (same order as `load`).
pub fn moves(load: &[BackendLoad], max_fraction: f64) -> Vec<usize> {
    let total: u64 = load.iter().map(|b| b.tunnels.len() as u64).sum();
    let weights: u64 = load.iter().map(|b| u64::from(b.weight)).sum();
    load.iter()
        .map(|b| {
            if weights == 0 {
                return 0;
            }
            let n = b.tunnels.len() as u64;
            // floor(n - total·w/W) in integers: n - ceil(total·w/W).
            let share_ceil = (total * u64::from(b.weight)).div_ceil(weights);
            let excess = n.saturating_sub(share_ceil);
            // The epsilon keeps 0.29 × 100 at 29 despite binary floating point.
            let cap = (max_fraction * n as f64 + 1e-9).floor() as u64;
            excess.min(cap) as usize
        })
        .collect()
}

/// Which tunnels close and when, as offsets into the window: the oldest tunnels of
/// each over-loaded backend, interleaved across backends, the i-th of m closing at
/// (i+1)/m of `over`.
pub fn plan(load: &[BackendLoad], policy: &RebalancePolicy) -> Vec<(u64, Duration)> {
    let counts = moves(load, policy.max_fraction);
    let picked: Vec<&[u64]> = load
        .iter()
        .zip(&counts)
        .map(|(b, &m)| &b.tunnels[..m])
        .collect();
    let m: usize = counts.iter().sum();
    let mut order = Vec::with_capacity(m);
    for round in 0..counts.iter().copied().max().unwrap_or(0) {
        for ids in &picked {
            if let Some(&id) = ids.get(round) {
                order.push(id);
            }
        }
    }
    order
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, policy.over.mul_f64((i + 1) as f64 / m as f64)))
        .collect()
}

/// Schedules the moves of every route with `rebalance` that gained a backend
/// between `old` and `new`: once per such change, over tunnels not already closing.
pub(crate) fn on_table_change(registry: &Registry, old: &RouteTable, new: &RouteTable) {
    let now = Instant::now();
    let mut tunnels = None;
    for route in new.routes() {
        let Some(policy) = &route.rebalance else {
            continue;
        };
        let Some(before) = old.routes().iter().find(|r| r.key == route.key) else {
            continue;
        };
        let known: HashSet<&str> = before.backends.iter().map(|b| &*b.address).collect();
        if route.backends.iter().all(|b| known.contains(&*b.address)) {
            continue;
        }
        let tunnels = tunnels.get_or_insert_with(|| registry.snapshot());
        let mut load: Vec<BackendLoad> = route
            .backends
            .iter()
            .map(|b| BackendLoad {
                weight: b.weight,
                tunnels: Vec::new(),
            })
            .collect();
        // The snapshot is sorted by id, so each list is oldest first.
        for t in tunnels.iter() {
            // A token's expiry is not a close already under way: such a tunnel may move.
            let closing = t.close_deadline(registry.epoch()).is_some()
                && t.close_reason() != CloseReason::TokenExpired;
            if t.route.key != route.key || closing {
                continue;
            }
            if let Some(i) = route.backends.iter().position(|b| b.address == t.backend) {
                load[i].tunnels.push(t.id);
            }
        }
        let plan = plan(&load, policy);
        tracing::info!(route = %route.key, moves = plan.len(), over = ?policy.over, "backends added; rebalancing tunnels");
        for (id, offset) in plan {
            if let Ok(i) = tunnels.binary_search_by_key(&id, |t| t.id) {
                registry.schedule_close(&tunnels[i], Some(now + offset), CloseReason::Rebalance);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(spec: &[(u32, usize)]) -> Vec<BackendLoad> {
        let mut next = 0;
        spec.iter()
            .map(|&(weight, n)| {
                let tunnels = (next..next + n as u64).collect();
                next += n as u64;
                BackendLoad { weight, tunnels }
            })
            .collect()
    }

    #[test]
    fn a_new_backend_takes_up_to_the_fraction() {
        // 100 on A, B new: share 50 each; 0.2 caps the move at 20.
        assert_eq!(moves(&load(&[(1, 100), (1, 0)]), 0.2), [20, 0]);
        // 0.5 moves the whole excess, and never more.
        assert_eq!(moves(&load(&[(1, 100), (1, 0)]), 0.5), [50, 0]);
        assert_eq!(moves(&load(&[(1, 100), (1, 0)]), 1.0), [50, 0]);
    }

    #[test]
    fn never_below_the_fair_share() {
        // 100 over three equal backends: share 33.3; A keeps 34, B keeps 34.
        assert_eq!(moves(&load(&[(1, 70), (1, 30), (1, 0)]), 1.0), [36, 0, 0]);
        assert_eq!(
            moves(&load(&[(1, 50), (1, 50), (1, 0)]), 1.0),
            [16, 16, 0],
            "each keeps ceil(33.3) = 34"
        );
    }

    #[test]
    fn weights_set_the_share() {
        // Weights 3:1 over 100 tunnels: shares 75 and 25.
        assert_eq!(moves(&load(&[(1, 60), (3, 40)]), 1.0), [35, 0]);
        assert_eq!(moves(&load(&[(1, 25), (3, 75)]), 1.0), [0, 0]);
        // Weight 0 has a share of nothing.
        assert_eq!(moves(&load(&[(0, 10), (1, 0)]), 0.5), [5, 0]);
        assert_eq!(moves(&load(&[(0, 10)]), 0.5), [0]);
    }

    #[test]
    fn fraction_floors_without_float_noise() {
        assert_eq!(moves(&load(&[(1, 100), (1, 0)]), 0.29), [29, 0]);
        assert_eq!(moves(&load(&[(1, 3), (1, 0)]), 0.5), [1, 0]);
        assert_eq!(moves(&load(&[(1, 1), (1, 0)]), 0.9), [0, 0]);
    }

    #[test]
    fn plan_interleaves_and_spreads_over_the_window() {
        let l = load(&[(1, 6), (1, 4), (1, 0), (1, 0)]);
        let policy = RebalancePolicy {
            max_fraction: 0.5,
            over: Duration::from_secs(4),
        };
        // Shares 2.5: A moves min(3, 3) = 3, B min(1, 2) = 1.
        let p = plan(&l, &policy);
        let ids: Vec<u64> = p.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [0, 6, 1, 2]);
        let at: Vec<u64> = p.iter().map(|(_, d)| d.as_millis() as u64).collect();
        assert_eq!(at, [1000, 2000, 3000, 4000]);
        assert!(plan(&load(&[(1, 5), (1, 5)]), &policy).is_empty());
    }
}
