//! One timer for every tunnel's deadlines: keepalive pings, pong timeouts, idle
//! and lifetime limits, close handshakes, drains and token expiry.
//!
//! A tokio `Sleep` is 112 bytes inside each tunnel's task, most of an idle
//! tunnel's own state. Here a tunnel's next deadline is one `(tick, tunnel id)`
//! entry (16 bytes) in one ordered set of 10 ms ticks, and one task (`drive`)
//! sleeps until the earliest tick, then marks each due tunnel's record and wakes
//! its task. Ticks round up, so a deadline never fires early and at most 10 ms late.
//!
//! A tunnel has at most one entry. It files a deadline only when it moves earlier
//! than the one filed (or that one fired), replacing it: a deadline that moves
//! later, as a keepalive deadline does with every message, fires early, finds
//! nothing due and is filed again. A closing tunnel takes its entry out, so the set
//! holds nothing of closed tunnels (an entry left until its tick would pin the heap
//! pages around it after a wave of closes). Rate-limit pauses, which need the
//! millisecond, keep a `Sleep` of their own while they last (see `relay.rs`).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Release;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::proxy::registry::Registry;

/// How finely deadlines are kept.
const TICK: Duration = Duration::from_millis(10);

/// Deadlines of all tunnels, by tick.
pub struct Timers {
    epoch: Instant,
    /// `(tick, tunnel id)`, earliest first.
    due: Mutex<BTreeSet<(u64, u64)>>,
    /// Told when a deadline is filed before every other one.
    earlier: Notify,
}

impl Timers {
    /// No deadlines; ticks counted from `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Timers {
            epoch,
            due: Mutex::default(),
            earlier: Notify::new(),
        }
    }

    /// The tick `at` falls in, rounded up: the timer never fires before `at`.
    pub fn tick(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(ns.div_ceil(TICK.as_nanos())).unwrap_or(u64::MAX)
    }

    /// The tick now is in (rounded down: what is due now).
    pub fn now(&self) -> u64 {
        let ns = self.epoch.elapsed().as_nanos();
        u64::try_from(ns / TICK.as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant(&self, tick: u64) -> Instant {
        self.epoch + TICK * u32::try_from(tick).unwrap_or(u32::MAX)
    }

    /// Wakes tunnel `id` at `tick` instead of at `filed` (`u64::MAX`: nothing filed).
    pub fn file(&self, id: u64, tick: u64, filed: u64) {
        let mut due = self.due.lock().expect("lock");
        if filed != u64::MAX {
            due.remove(&(filed, id));
        }
        let first = due.first().map(|(t, _)| *t);
        due.insert((tick, id));
        drop(due);
        if first.is_none_or(|f| tick < f) {
            self.earlier.notify_one();
        }
    }

    /// Takes tunnel `id`'s deadline at `filed` out (`u64::MAX`: nothing filed).
    pub fn cancel(&self, id: u64, filed: u64) {
        if filed != u64::MAX {
            self.due.lock().expect("lock").remove(&(filed, id));
        }
    }

    /// The tunnels due by `now`, and the next tick after them.
    fn take_due(&self, now: u64) -> (Vec<u64>, Option<u64>) {
        let mut due = self.due.lock().expect("lock");
        let mut fired = Vec::new();
        while let Some(&(tick, id)) = due.first() {
            if tick > now {
                return (fired, Some(tick));
            }
            due.pop_first();
            fired.push(id);
        }
        (fired, None)
    }
}

/// Fires the tunnels' deadlines, for as long as the process runs.
pub async fn drive(timers: &Timers, registry: &Registry) {
    loop {
        let (fired, next) = timers.take_due(timers.now());
        for t in registry.find(&fired) {
            t.timer.store(true, Release);
            t.waker.wake();
        }
        let notified = timers.earlier.notified();
        match next {
            Some(tick) => {
                tokio::select! {
                    () = tokio::time::sleep_until(timers.instant(tick).into()) => {}
                    () = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_fires_at_its_tick_never_before() {
        let epoch = Instant::now();
        let t = Timers::new(epoch);
        assert_eq!(t.tick(epoch), 0);
        assert_eq!(t.tick(epoch + Duration::from_millis(1)), 1, "rounded up");
        assert_eq!(t.tick(epoch + Duration::from_millis(10)), 1);
        assert_eq!(t.tick(epoch + Duration::from_millis(11)), 2);
        t.file(7, 3, u64::MAX);
        t.file(8, 1, u64::MAX);
        t.file(9, 3, u64::MAX);
        t.file(10, 9, u64::MAX);
        t.file(10, 2, 9);
        t.file(11, 4, u64::MAX);
        t.cancel(11, 4);
        assert_eq!(t.take_due(0), (vec![], Some(1)));
        assert_eq!(t.take_due(2), (vec![8, 10], Some(3)));
        assert_eq!(t.take_due(5), (vec![7, 9], None), "10 moved, 11 cancelled");
        assert_eq!(t.take_due(100), (vec![], None));
    }
}
