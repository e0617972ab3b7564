//! Choosing and reaching a backend: the order to try a route's backends in
//! ([`balance`]), dialling them ([`connect`]), passive health ([`health`]), and
//! moving tunnels after a scale-out ([`rebalance`]). [`BackendSet`] is the state
//! they share per route.

pub(crate) mod balance;
pub(crate) mod connect;
pub(crate) mod health;
pub(crate) mod rebalance;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use health::BackendHealth;

/// One route's backends as balancing sees them: the round-robin position, the open
/// tunnels per backend, and passive health. Lives in the route's runtime, so it
/// outlives reloads.
#[derive(Default)]
pub struct BackendSet {
    /// Round-robin position.
    pub rr: AtomicU64,
    per_backend: Mutex<HashMap<Arc<str>, u64>>,
    /// Passive health of the route's backends.
    pub health: BackendHealth,
}

impl BackendSet {
    /// Open tunnels to a backend.
    pub fn load(&self, address: &str) -> u64 {
        self.per_backend
            .lock()
            .expect("lock")
            .get(address)
            .copied()
            .unwrap_or(0)
    }

    /// A tunnel to `address` opened.
    pub fn count_in(&self, address: &Arc<str>) {
        *self
            .per_backend
            .lock()
            .expect("lock")
            .entry(address.clone())
            .or_default() += 1;
    }

    /// A tunnel to `address` closed.
    pub fn count_out(&self, address: &Arc<str>) {
        let mut per_backend = self.per_backend.lock().expect("lock");
        if let Some(n) = per_backend.get_mut(address) {
            *n -= 1;
            if *n == 0 {
                per_backend.remove(address);
            }
        }
    }
}
