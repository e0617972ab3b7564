//! Fleet-wide message budgets without a store call per message: each replica
//! holds a lease (a chunk of what is left of the window, taken atomically in
//! Redis) and charges messages against it locally. A budget is never exceeded,
//! since every message a replica lets through was leased first; the price is
//! under-use, at most what the replicas hold unspent when the window ends
//! (`replicas × 2 × chunk`, chunk = budget / 32: see `keys::lease_chunk`).
//!
//! The relay stops reading a client whose lease is low while a new one is on its
//! way, and refuses (Close 1008) once the store says the window is spent; the one
//! exception is a single message larger than a quarter of a lease of bytes
//! (budget / 128), which may be refused while the window still has room.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::keys::lease_chunk;
use crate::proxy::route::policy::BudgetPolicy;

/// What charging a frame to a budget gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Charged.
    Charged,
    /// The lease cannot pay and a new one is on its way.
    Wait,
    /// The window's budget is spent across the fleet.
    Exhausted,
}

/// The part of a budget this replica holds for the current window.
#[derive(Debug)]
struct Lease {
    messages: u64,
    bytes: u64,
    /// When the window the lease belongs to ends.
    ends: Instant,
    /// The store said the window is spent.
    exhausted: bool,
    /// Until when the fallback's one grant per window was given.
    fallback_ends: Option<Instant>,
}

/// One budget (a subject's or a route's) on this replica, shared by its tunnels.
#[derive(Debug)]
pub struct Account {
    /// The store key.
    pub key: String,
    /// The budget.
    pub policy: BudgetPolicy,
    lease: Mutex<Lease>,
    refilling: AtomicBool,
}

/// A grant of the store (or of the fallback): messages and bytes (`u64::MAX`
/// for a dimension without a budget), and the time left in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Messages granted.
    pub messages: u64,
    /// Bytes granted.
    pub bytes: u64,
    /// Until the window ends.
    pub left: Duration,
}

impl Account {
    /// An account with an empty lease.
    pub fn new(key: String, policy: BudgetPolicy) -> Account {
        Account {
            key,
            policy,
            lease: Mutex::new(Lease {
                messages: 0,
                bytes: 0,
                ends: Instant::now(),
                exhausted: false,
                fallback_ends: None,
            }),
            refilling: AtomicBool::new(false),
        }
    }

    /// The chunk a lease asks for: `(messages, bytes)`, `-1` for no budget.
    pub fn chunk(&self) -> (i64, i64) {
        let c = |n: u64| if n == 0 { -1 } else { lease_chunk(n) as i64 };
        (c(self.policy.messages), c(self.policy.bytes))
    }

    /// The whole budget: `(messages, bytes)`, `-1` for no budget.
    pub fn budget(&self) -> (i64, i64) {
        let c = |n: u64| if n == 0 { -1 } else { n as i64 };
        (c(self.policy.messages), c(self.policy.bytes))
    }

    /// Charges one frame (`messages` is 1 for a message's first frame). Asks for a
    /// new lease (through `refill`) when this one runs low or cannot pay.
    pub fn take(&self, messages: u64, bytes: u64, now: Instant, refill: impl FnOnce()) -> Take {
        let mut l = self.lease.lock().expect("lock");
        expire(&mut l, now);
        let (cm, cb) = self.chunk();
        let result = if l.messages >= messages && l.bytes >= bytes {
            l.messages -= messages;
            l.bytes -= bytes;
            Take::Charged
        } else if l.exhausted {
            Take::Exhausted
        } else {
            Take::Wait
        };
        // Below a chunk, the next is asked for: a lease holds at most two.
        let low = (cm > 0 && l.messages < cm as u64) || (cb > 0 && l.bytes < cb as u64);
        let ask = !l.exhausted && (low || result == Take::Wait);
        drop(l);
        if ask && !self.refilling.swap(true, Relaxed) {
            refill();
        }
        result
    }

    /// Whether reading the client should wait while a new lease is on its way
    /// (asked for through `refill`): no message left, or less than half a chunk
    /// of bytes (see [`Account::read_cap`]: a frame the lease cannot pay cannot
    /// be held back, it closes the tunnel).
    pub fn must_wait(&self, now: Instant, refill: impl FnOnce()) -> bool {
        let mut l = self.lease.lock().expect("lock");
        expire(&mut l, now);
        let (cm, cb) = self.chunk();
        let empty =
            (cm > 0 && l.messages == 0) || (cb > 0 && l.bytes.saturating_mul(2) < cb as u64);
        let wait = empty && !l.exhausted;
        drop(l);
        if wait && !self.refilling.swap(true, Relaxed) {
            refill();
        }
        wait
    }

    /// The most wire bytes one read may take so that the frames in it cannot
    /// outrun the lease. A masked client frame is at least 6 bytes, so a read
    /// holds at most cap / 6 messages. Whole frames in a read carry at most cap
    /// payload bytes, and the frame the read ends inside charges its whole
    /// payload: leaving a quarter chunk for it, any message up to budget / 128
    /// bytes always fits.
    pub fn read_cap(&self, max: usize) -> usize {
        let l = self.lease.lock().expect("lock");
        if l.exhausted {
            return max;
        }
        let (cm, cb) = self.chunk();
        let mut cap = max as u64;
        if cm > 0 {
            cap = cap.min(l.messages.saturating_mul(6));
        }
        if cb > 0 {
            cap = cap.min(l.bytes.saturating_sub(cb as u64 / 4));
        }
        (cap as usize).max(1)
    }

    /// Adds a grant; `(0, 0)` marks the window spent.
    pub fn grant(&self, g: Grant, now: Instant) {
        let mut l = self.lease.lock().expect("lock");
        let ends = now + g.left;
        // A grant of a later window voids what was left of the earlier one.
        if ends > l.ends + self.policy.window / 2 {
            l.messages = 0;
            l.bytes = 0;
            l.exhausted = false;
        }
        l.ends = l.ends.max(ends);
        if g.messages == 0 || g.bytes == 0 {
            l.exhausted = true;
        } else {
            l.messages = l.messages.saturating_add(g.messages);
            l.bytes = l.bytes.saturating_add(g.bytes);
        }
        drop(l);
        self.refilling.store(false, Relaxed);
    }

    /// The fallback's grant (the store did not answer): given once per window,
    /// nothing more until the window ends.
    pub fn fallback_grant(&self, g: Grant) -> Grant {
        let now = Instant::now();
        let mut l = self.lease.lock().expect("lock");
        if l.fallback_ends.is_some_and(|e| now < e) {
            return Grant {
                messages: 0,
                bytes: 0,
                left: g.left,
            };
        }
        l.fallback_ends = Some(now + g.left);
        g
    }

    /// A lease request that got no answer: another may be asked for.
    pub fn failed(&self) {
        self.refilling.store(false, Relaxed);
    }
}

/// At the window's end the lease is void: its rest belonged to that window.
fn expire(l: &mut Lease, now: Instant) {
    if now >= l.ends {
        l.messages = 0;
        l.bytes = 0;
        l.exhausted = false;
    }
}

/// Shared by the tunnels charging one budget on this replica.
pub type SharedAccount = Arc<Account>;

#[cfg(test)]
mod tests {
    use super::*;

    fn account(messages: u64, bytes: u64) -> Account {
        Account::new(
            "k".into(),
            BudgetPolicy {
                per_subject: false,
                messages,
                bytes,
                window: Duration::from_secs(60),
            },
        )
    }

    #[test]
    fn a_lease_is_charged_refilled_and_exhausted() {
        let a = account(64, 0);
        assert_eq!(a.chunk(), (2, -1));
        let t0 = Instant::now();
        let mut asked = 0;
        assert_eq!(a.take(1, 10, t0, || asked += 1), Take::Wait);
        assert_eq!(asked, 1);
        assert!(
            a.must_wait(t0, || asked += 1),
            "empty lease, refill in flight"
        );
        assert_eq!(asked, 1, "one refill at a time");
        let g = |m| Grant {
            messages: m,
            bytes: u64::MAX,
            left: Duration::from_secs(30),
        };
        a.grant(g(2), t0);
        assert!(!a.must_wait(t0, || asked += 1));
        assert_eq!(a.read_cap(65536), 12, "two messages of at least 6 bytes");
        assert_eq!(a.take(1, 10, t0, || asked += 1), Take::Charged);
        assert_eq!(asked, 2, "below a chunk: the next lease is asked for");
        assert_eq!(a.take(0, 10, t0, || asked += 1), Take::Charged);
        assert_eq!(asked, 2, "one request in flight");
        a.grant(g(2), t0);
        assert_eq!(a.read_cap(65536), 18);
        for _ in 0..3 {
            assert_eq!(a.take(1, 10, t0, || asked += 1), Take::Charged);
        }
        assert_eq!(asked, 3);
        a.grant(g(0), t0);
        assert_eq!(a.take(1, 1, t0, || asked += 1), Take::Exhausted);
        assert!(!a.must_wait(t0, || asked += 1));
        assert_eq!(asked, 3, "a spent window asks no more");
        // The next window starts empty and asks again.
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(a.take(1, 1, t1, || asked += 1), Take::Wait);
        assert_eq!(asked, 4);
    }

    #[test]
    fn a_grant_of_the_next_window_voids_the_rest_of_this_one() {
        let a = account(0, 3200);
        let t0 = Instant::now();
        let g = |left| Grant {
            messages: u64::MAX,
            bytes: 100,
            left: Duration::from_secs(left),
        };
        a.grant(g(1), t0);
        a.grant(g(59), t0);
        // 100 bytes leased, chunk 100: reads leave a quarter chunk for the frame
        // they end inside.
        assert_eq!(a.read_cap(65536), 75);
        assert!(!a.must_wait(t0, || ()), "100 bytes is a whole chunk");
        assert_eq!(a.take(1, 60, t0, || ()), Take::Charged);
        assert!(a.must_wait(t0, || ()), "40 bytes is under half a chunk");
        assert_eq!(a.take(1, 41, t0, || ()), Take::Wait);
    }
}
