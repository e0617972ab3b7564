//! Fleet-wide limits (`fleetLimits`): connection caps per route, per client
//! address and per JWT subject, and message budgets, shared by every replica
//! through Redis (`--limits-store`).
//!
//! - **Caps** are checked and counted atomically in Redis at the upgrade (one
//!   script call; in Cluster mode one per dimension, in turn) and released at
//!   close. Each replica counts in fields of its own (`c:<replica>`), and rewrites
//!   its absolute counts every heartbeat, so a lost release, a Redis restart or a
//!   FLUSHALL heals within one interval; a replica that stops heart-beating is
//!   ignored after `--limits-stale-after`. The replica id carries a boot nonce: a
//!   restarted pod never inherits its predecessor's counts.
//! - **Budgets** are leased (`budget.rs`): no store call per message.
//! - **When the store fails** (each call has `--limits-store-timeout`), a circuit
//!   breaker stops handshakes from paying the deadline, and
//!   `--limits-on-store-error` decides: each replica enforces its share of the
//!   limit (`local-share`), or no limit (`fail-open`), or 503 (`fail-closed`).
//!
//! One [`Fleet`] per process, installed at start; routes with `fleetLimits` are
//! refused without it (see `crate::compile`).

mod breaker;
pub mod budget;
pub mod keys;
mod store;
mod sync;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGaugeVec};

use crate::proxy::route::policy::FleetPolicy;
use crate::proxy::route::table::RouteKey;
use breaker::{Breaker, Gate, Transition};
use budget::{Account, Grant};
pub use keys::Scope;
pub use store::{Store, StoreMode};

/// What a replica does while the store does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStoreError {
    /// Enforce `ceil(limit / live replicas)` locally.
    LocalShare,
    /// No fleet limit.
    FailOpen,
    /// Refuse upgrades (503) and close budgeted tunnels.
    FailClosed,
}

impl OnStoreError {
    /// The flag's spelling, also the `mode` label while it is in force.
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::LocalShare => "local-share",
            OnStoreError::FailOpen => "fail-open",
            OnStoreError::FailClosed => "fail-closed",
        }
    }
}

/// The `--limits-*` flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--limits-store`: one URL, or comma-separated seeds (cluster) or sentinels.
    pub url: String,
    /// `--limits-store-mode`.
    pub mode: StoreMode,
    /// `--limits-store-timeout`: the deadline of one store call on a handshake.
    pub timeout: Duration,
    /// `--limits-heartbeat`.
    pub heartbeat: Duration,
    /// `--limits-stale-after`.
    pub stale_after: Duration,
    /// `--limits-on-store-error`.
    pub on_error: OnStoreError,
    /// This replica's id: pod name (or host name) and a boot nonce.
    pub replica: String,
}

/// The process's fleet-limits metrics.
#[derive(Clone)]
pub struct FleetMetrics {
    /// `wsgate_limits_store_errors_total`
    pub errors: IntCounter,
    /// `wsgate_limits_store_mode{mode}`
    pub mode: IntGaugeVec,
}

/// The process's fleet limits: the store, the local counts it is told about, and
/// the fallback's state.
pub struct Fleet {
    settings: Settings,
    store: Store,
    breaker: Mutex<Breaker>,
    /// Open tunnels (and acquires in flight) per store key on this replica: what
    /// each heartbeat writes.
    counts: Mutex<HashMap<String, u64>>,
    /// Live replicas last seen in the store (local-share's N).
    live: AtomicU64,
    accounts: Mutex<HashMap<String, Weak<Account>>>,
    /// Keys whose count went down since the last release write, and the wake of
    /// the task that writes them (see [`releases`]).
    released: Mutex<HashSet<String>>,
    release_wake: tokio::sync::Notify,
    metrics: FleetMetrics,
}

static FLEET: OnceLock<Arc<Fleet>> = OnceLock::new();
/// A store is configured: set by [`start`], or by `wsgate check --limits-store`,
/// which validates routes for a fleet without connecting to it.
static CONFIGURED: AtomicBool = AtomicBool::new(false);

/// Whether routes may carry `fleetLimits`: a store is configured.
pub fn configured() -> bool {
    CONFIGURED.load(Relaxed)
}

/// Validate routes as for a process with a store (`wsgate check --limits-store`).
pub fn declare_store() {
    CONFIGURED.store(true, Relaxed);
}

/// The fleet limits, when `--limits-store` was given.
pub fn get() -> Option<&'static Arc<Fleet>> {
    FLEET.get()
}

/// A replica id: `name` and a random boot nonce.
pub fn replica_id(name: &str) -> String {
    format!("{name}-{:08x}", rand::random::<u32>())
}

/// Checks `--limits-store` without connecting.
pub fn check_url(mode: StoreMode, url: &str) -> Result<(), String> {
    Store::check_url(mode, url)
}

/// Installs the fleet limits and starts the connection and heartbeat task.
/// Call once, before any route is compiled.
pub fn start(settings: Settings, metrics: FleetMetrics) -> Arc<Fleet> {
    if settings
        .url
        .split(',')
        .any(|u| u.trim().starts_with("rediss://"))
    {
        // The redis crate builds its rustls config from the process default:
        // make that wsgate's provider (a no-op if one is installed already).
        let _ = rustls::crypto::CryptoProvider::install_default(
            (*crate::proxy::crypto::provider()).clone(),
        );
    }
    let fleet = Arc::new(Fleet {
        store: Store::new(settings.mode, &settings.url),
        breaker: Mutex::new(Breaker::new(
            (settings.heartbeat * 2).clamp(Duration::from_secs(1), Duration::from_secs(5)),
        )),
        counts: Mutex::default(),
        live: AtomicU64::new(1),
        accounts: Mutex::default(),
        released: Mutex::default(),
        release_wake: tokio::sync::Notify::new(),
        settings,
        metrics,
    });
    fleet.show_mode(false);
    let _ = FLEET.set(fleet.clone());
    declare_store();
    tokio::spawn(sync::heartbeat(fleet.clone()));
    tokio::spawn(sync::releases(fleet.clone()));
    fleet
}

/// An upgrade the fleet limits refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// The cap that was full; none when the store failed and `fail-closed` applies.
    pub scope: Option<Scope>,
}

impl Refused {
    /// 429 for a client's or a subject's cap, 503 otherwise.
    pub fn status(&self) -> u16 {
        match self.scope {
            Some(Scope::ClientIp | Scope::Subject) => 429,
            _ => 503,
        }
    }
}

/// An admitted tunnel's place in the fleet counts, released on drop; and the
/// budget its messages are charged to.
pub struct Ticket {
    fleet: Arc<Fleet>,
    keys: Vec<String>,
    budget: Option<Arc<Account>>,
}

impl Ticket {
    /// The budget this tunnel's client messages are charged to.
    pub fn budget(&self) -> Option<&Arc<Account>> {
        self.budget.as_ref()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        self.fleet.uncount(&self.keys);
        self.fleet
            .released
            .lock()
            .expect("lock")
            .extend(self.keys.drain(..));
        self.fleet.release_wake.notify_one();
    }
}

impl Fleet {
    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `Retry-After` of a 429: a tunnel elsewhere may close any time, and counts
    /// settle within a heartbeat.
    pub fn retry_after(&self) -> u64 {
        self.settings.heartbeat.as_secs().max(1)
    }

    /// Checks and counts an upgrade against the route's fleet caps, and finds the
    /// budget its messages are charged to.
    pub async fn admit(
        self: &Arc<Self>,
        route: &RouteKey,
        policy: &FleetPolicy,
        ip: IpAddr,
        subject: Option<&str>,
    ) -> Result<Ticket, Refused> {
        // Cheapest to fail first (Cluster acquires them in this order).
        let subject = subject.unwrap_or("");
        let mut dims: Vec<(Scope, String, u64)> = Vec::with_capacity(3);
        if policy.max_connections_per_subject > 0 {
            let k = keys::subject_key(route, subject);
            dims.push((Scope::Subject, k, policy.max_connections_per_subject));
        }
        if policy.max_connections_per_client_ip > 0 {
            let k = keys::client_ip_key(route, ip);
            dims.push((Scope::ClientIp, k, policy.max_connections_per_client_ip));
        }
        if policy.max_connections > 0 {
            dims.push((Scope::Route, keys::route_key(route), policy.max_connections));
        }
        let budget = policy.budget.as_ref().map(|b| {
            let key = keys::budget_key(route, b.per_subject.then_some(subject));
            let account = self.account(key, b);
            // A lease asked for now is likely there by the first message.
            account.must_wait(Instant::now(), || self.refill(&account));
            account
        });
        // Counted before the store is asked: an acquire in flight is part of what
        // a heartbeat writes, so a heartbeat can never erase it.
        let prior = self.count(dims.iter().map(|d| d.1.as_str()));
        let ticket = Ticket {
            fleet: self.clone(),
            keys: dims.iter().map(|d| d.1.clone()).collect(),
            budget,
        };
        if dims.is_empty() {
            return Ok(ticket);
        }
        let refuse = |scope: Scope, ticket: Ticket| {
            drop(ticket);
            Err(Refused { scope: Some(scope) })
        };
        if self.gate() != Gate::Skip {
            match self.acquire(&dims).await {
                Ok(None) => {
                    self.answered();
                    return Ok(ticket);
                }
                Ok(Some(i)) => {
                    self.answered();
                    return refuse(dims[i].0, ticket);
                }
                Err(e) => self.failed(&e),
            }
        }
        match self.settings.on_error {
            OnStoreError::FailOpen => Ok(ticket),
            OnStoreError::FailClosed => {
                drop(ticket);
                Err(Refused { scope: None })
            }
            OnStoreError::LocalShare => {
                let live = self.live.load(Relaxed);
                match dims
                    .iter()
                    .zip(&prior)
                    .find(|((_, _, limit), n)| **n >= keys::local_share(*limit, live))
                {
                    Some(((scope, ..), _)) => refuse(*scope, ticket),
                    None => Ok(ticket),
                }
            }
        }
    }

    /// The acquire: one script over all keys, or in Cluster mode one per key in
    /// turn (their slots differ). A refusal in Cluster mode leaves earlier keys
    /// incremented; the ticket's drop writes their absolute counts back.
    async fn acquire(
        &self,
        dims: &[(Scope, String, u64)],
    ) -> Result<Option<usize>, store::StoreError> {
        let s = &self.settings;
        let stale = s.stale_after.as_millis() as u64;
        if self.store.mode() != StoreMode::Cluster {
            let keys: Vec<&str> = dims.iter().map(|d| d.1.as_str()).collect();
            let limits: Vec<u64> = dims.iter().map(|d| d.2).collect();
            return self
                .store
                .acquire(s.timeout, &s.replica, stale, &keys, &limits)
                .await;
        }
        let started = Instant::now();
        for (i, (_, key, limit)) in dims.iter().enumerate() {
            // One deadline for the whole upgrade, whatever the number of slots.
            let left = s.timeout.saturating_sub(started.elapsed());
            let r = self
                .store
                .acquire(left, &s.replica, stale, &[key], &[*limit])
                .await?;
            if r.is_some() {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn count<'a>(&self, keys: impl Iterator<Item = &'a str>) -> Vec<u64> {
        let mut counts = self.counts.lock().expect("lock");
        keys.map(|k| {
            let n = counts.entry(k.to_owned()).or_default();
            *n += 1;
            *n - 1
        })
        .collect()
    }

    /// Counts a closed tunnel out. A zero stays until a write has sent it.
    fn uncount(&self, keys: &[String]) {
        let mut counts = self.counts.lock().expect("lock");
        for k in keys {
            if let Some(n) = counts.get_mut(k) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// The current counts of `keys` (0 for a key no longer counted).
    fn counts_of(&self, keys: impl Iterator<Item = String>) -> Vec<(String, u64)> {
        let counts = self.counts.lock().expect("lock");
        keys.map(|k| {
            let n = counts.get(&k).copied().unwrap_or(0);
            (k, n)
        })
        .collect()
    }

    fn gate(&self) -> Gate {
        self.breaker.lock().expect("lock").gate(Instant::now())
    }

    fn answered(&self) {
        let t = self.breaker.lock().expect("lock").success();
        if t == Some(Transition::Closed) {
            tracing::info!(
                store = self.store.mode().as_str(),
                "limits store answers again: fleet-wide counting resumed"
            );
            self.show_mode(false);
        }
    }

    fn failed(&self, e: &store::StoreError) {
        self.metrics.errors.inc();
        let t = self.breaker.lock().expect("lock").failure(Instant::now());
        if t == Some(Transition::Opened) {
            tracing::warn!(
                error = %e,
                fallback = self.settings.on_error.as_str(),
                live_replicas = self.live.load(Relaxed),
                "limits store not answering: the fallback is in force"
            );
            self.show_mode(true);
        } else {
            tracing::debug!(error = %e, "limits store call failed");
        }
    }

    fn show_mode(&self, fallback: bool) {
        let m = &self.metrics.mode;
        m.with_label_values(&["store"]).set(i64::from(!fallback));
        m.with_label_values(&[self.settings.on_error.as_str()])
            .set(i64::from(fallback));
    }

    /// The budget account of `key`, shared by this replica's tunnels charging it.
    fn account(
        &self,
        key: String,
        policy: &crate::proxy::route::policy::BudgetPolicy,
    ) -> Arc<Account> {
        let mut accounts = self.accounts.lock().expect("lock");
        if let Some(a) = accounts.get(&key).and_then(Weak::upgrade) {
            if a.policy == *policy {
                return a;
            }
        }
        let a = Arc::new(Account::new(key.clone(), policy.clone()));
        accounts.insert(key, Arc::downgrade(&a));
        a
    }

    /// Asks for a lease of `account`'s budget in the background.
    pub fn refill(self: &Arc<Self>, account: &Arc<Account>) {
        let (fleet, account) = (self.clone(), account.clone());
        tokio::spawn(async move {
            let grant = fleet.lease(&account).await;
            match grant {
                Some(g) => account.grant(g, Instant::now()),
                None => account.failed(),
            }
        });
    }

    async fn lease(&self, a: &Account) -> Option<Grant> {
        if self.gate() != Gate::Skip {
            let r = self
                .store
                .lease(
                    self.settings.timeout,
                    &a.key,
                    a.policy.window,
                    a.budget(),
                    a.chunk(),
                )
                .await;
            match r {
                Ok((m, b, left)) => {
                    self.answered();
                    let n = |x: i64| if x < 0 { u64::MAX } else { x as u64 };
                    return Some(Grant {
                        messages: n(m),
                        bytes: n(b),
                        left,
                    });
                }
                Err(e) => self.failed(&e),
            }
        }
        // The fallback's grant lasts to the end of the window by this replica's
        // clock; local-share's is the replica's share of the whole budget.
        let window = a.policy.window.as_millis().max(1) as u64;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let left = Duration::from_millis(window - now_ms % window);
        let (m, b) = match self.settings.on_error {
            OnStoreError::FailOpen => (u64::MAX, u64::MAX),
            OnStoreError::FailClosed => (0, 0),
            OnStoreError::LocalShare => {
                let live = self.live.load(Relaxed);
                let share = |n: u64| {
                    if n == 0 {
                        u64::MAX
                    } else {
                        keys::local_share(n, live)
                    }
                };
                (share(a.policy.messages), share(a.policy.bytes))
            }
        };
        // A fallback grant is given once per window: later asks get nothing more.
        Some(a.fallback_grant(Grant {
            messages: m,
            bytes: b,
            left,
        }))
    }
}
