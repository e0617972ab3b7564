//! The circuit breaker in front of the limits store: after a few failed calls in a
//! row, handshakes stop asking the store for a while (they use the fallback
//! straight away instead of each paying the deadline), then one call probes it.
//! The heartbeat probes too, so a store that is back is used again within one
//! heartbeat.

use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub const THRESHOLD: u32 = 5;

/// What a call may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Closed: call the store.
    Call,
    /// Open, and the wait is over: this one call probes the store.
    Probe,
    /// Open: do not call the store.
    Skip,
}

/// A change worth one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The store stopped answering: the fallback is in force.
    Opened,
    /// The store answers again: fleet counting resumed.
    Closed,
}

/// Consecutive failures and, when open, until when calls are skipped.
#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    cool_down: Duration,
}

impl Breaker {
    /// A closed breaker that stays open `cool_down` once opened.
    pub fn new(cool_down: Duration) -> Breaker {
        Breaker {
            failures: 0,
            open_until: None,
            cool_down,
        }
    }

    /// Whether the breaker is open (the fallback is in force).
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    /// What a call at `now` may do. A probe pushes the next one a cool-down away,
    /// so only one call at a time pays the deadline.
    pub fn gate(&mut self, now: Instant) -> Gate {
        match self.open_until {
            None => Gate::Call,
            Some(until) if now >= until => {
                self.open_until = Some(now + self.cool_down);
                Gate::Probe
            }
            Some(_) => Gate::Skip,
        }
    }

    /// A call answered.
    pub fn success(&mut self) -> Option<Transition> {
        self.failures = 0;
        self.open_until.take().map(|_| Transition::Closed)
    }

    /// A call failed or timed out at `now`.
    pub fn failure(&mut self, now: Instant) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        if self.open_until.is_some() || self.failures < THRESHOLD {
            return None;
        }
        self.open_until = Some(now + self.cool_down);
        Some(Transition::Opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_five_failures_in_a_row_and_probes_after_the_cool_down() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Duration::from_secs(5));
        for _ in 0..4 {
            assert_eq!(b.failure(t0), None);
            assert_eq!(b.gate(t0), Gate::Call);
        }
        // A success in between starts the count again.
        assert_eq!(b.success(), None);
        for _ in 0..4 {
            assert_eq!(b.failure(t0), None);
        }
        assert_eq!(b.failure(t0), Some(Transition::Opened));
        assert!(b.is_open());
        assert_eq!(b.gate(t0 + Duration::from_secs(1)), Gate::Skip);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.gate(later), Gate::Probe);
        // One probe at a time: the next call waits another cool-down.
        assert_eq!(b.gate(later), Gate::Skip);
        assert_eq!(b.failure(later), None, "a failed probe keeps it open");
        assert_eq!(b.gate(later + Duration::from_secs(5)), Gate::Probe);
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.gate(later), Gate::Call);
        assert!(!b.is_open());
    }
}
