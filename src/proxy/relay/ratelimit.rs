//! Per-tunnel rate limits on the client-to-backend direction: one token bucket per
//! limit (messages, payload bytes), refilled once per read batch and charged once
//! per data frame, so a limited tunnel costs a few float operations per frame and
//! no allocation.
//!
//! A message is a whole data message, charged when its first frame arrives; control
//! frames are never charged. `Close` refuses a frame the bucket cannot pay for;
//! `Throttle` lets the bucket go into debt and the relay stops reading the client
//! until the debt is paid back, so the client is held to the rate by TCP
//! backpressure with nothing buffered in the proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frame::{FrameHeader, OP_CONTINUATION};
use crate::proxy::fleet::budget::{Account, Take};
use crate::proxy::route::policy::{Exceed, RateLimit};

/// A token bucket. Tokens may go negative (debt) only in throttle mode.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    depth: f64,
    tokens: f64,
}

impl Bucket {
    fn new((rate, depth): (f64, f64)) -> Bucket {
        Bucket {
            rate,
            depth,
            tokens: depth,
        }
    }

    fn refill(&mut self, elapsed: f64) {
        self.tokens = (self.tokens + self.rate * elapsed).min(self.depth);
    }

    /// Seconds until the debt is paid back (0 when there is none).
    fn debt_secs(&self) -> f64 {
        (-self.tokens).max(0.0) / self.rate
    }
}

/// The per-tunnel state of a [`RateLimit`].
#[derive(Debug)]
pub struct Limiter {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    on_exceed: Exceed,
    refilled: Instant,
    /// Messages and payload bytes seen, to size reads while throttled.
    seen_messages: u64,
    seen_bytes: u64,
    /// Reading the client stopped until then (throttle mode).
    paused_until: Option<Instant>,
    /// A frame was refused (close mode): the tunnel is closing.
    refused: bool,
    /// The fleet budget (`fleetLimits.messageBudget`) the client's messages draw
    /// on, and whether a frame was refused for it.
    budget: Option<Arc<Account>>,
    over_budget: bool,
}

/// How long reading waits for a budget lease in flight before it looks again.
const LEASE_WAIT: Duration = Duration::from_millis(5);

/// Smallest read while throttled: a few frame headers' worth, so a resumed
/// tunnel always makes progress.
const MIN_READ: usize = 256;
/// A throttled tunnel reads about this long's worth of tokens per wake: short
/// enough that the rate holds within a few percent over a second, long enough that
/// a throttled tunnel is not woken per message.
const QUANTUM: f64 = 0.05;

impl Limiter {
    /// Full buckets at `now`.
    pub fn new(limit: &RateLimit, now: Instant) -> Limiter {
        Limiter {
            messages: limit.messages.map(Bucket::new),
            bytes: limit.bytes.map(Bucket::new),
            on_exceed: limit.on_exceed,
            refilled: now,
            seen_messages: 0,
            seen_bytes: 0,
            paused_until: None,
            refused: false,
            budget: None,
            over_budget: false,
        }
    }

    /// The limiter of a tunnel with these rate limits and this fleet budget;
    /// none when it has neither.
    pub fn for_tunnel(
        limit: Option<&RateLimit>,
        budget: Option<&Arc<Account>>,
        now: Instant,
    ) -> Option<Box<Limiter>> {
        if limit.is_none() && budget.is_none() {
            return None;
        }
        let none = RateLimit {
            messages: None,
            bytes: None,
            on_exceed: Exceed::Close,
        };
        let mut l = Limiter::new(limit.unwrap_or(&none), now);
        l.budget = budget.cloned();
        Some(Box::new(l))
    }

    /// True once a frame was refused for the fleet budget (not the rate).
    pub fn over_budget(&self) -> bool {
        self.over_budget
    }

    /// Stops reading the client for a moment while its budget lease is empty and
    /// a new one is on its way: a client is never refused for a lease in flight.
    pub fn wait_for_budget(&mut self, now: Instant) -> bool {
        let Some(b) = &self.budget else { return false };
        if !b.must_wait(now, || refill(b)) {
            return false;
        }
        self.paused_until = Some(
            self.paused_until
                .map_or(now + LEASE_WAIT, |p| p.max(now + LEASE_WAIT)),
        );
        true
    }

    /// True once a frame was refused: the tunnel is closing for its rate.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Reading the client is paused.
    pub fn paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// When the pause ends.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Stops reading the client until `at`.
    pub fn pause_until(&mut self, at: Instant) {
        self.paused_until = Some(at);
    }

    /// Ends a pause whose time has come.
    pub fn resume_if_due(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|at| now >= at) {
            self.paused_until = None;
        }
    }

    /// Close or Throttle.
    pub fn on_exceed(&self) -> Exceed {
        self.on_exceed
    }

    /// Adds the tokens earned since the last refill; called once per read batch.
    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        for b in [&mut self.messages, &mut self.bytes].into_iter().flatten() {
            b.refill(elapsed);
        }
    }

    /// Charges one data frame. False (and nothing charged) when `Close` applies and a
    /// bucket cannot pay; in throttle mode a frame is always admitted, on credit.
    pub fn admit(&mut self, h: &FrameHeader) -> bool {
        let first = h.opcode != OP_CONTINUATION;
        let msg_cost = if first { 1.0 } else { 0.0 };
        let byte_cost = h.payload_len as f64;
        if self.on_exceed == Exceed::Close {
            let short = |b: &Option<Bucket>, cost: f64| b.as_ref().is_some_and(|b| b.tokens < cost);
            if short(&self.messages, msg_cost) || short(&self.bytes, byte_cost) {
                self.refused = true;
                return false;
            }
        }
        if let Some(b) = &self.budget {
            // Charged after the rate check, so a frame the rate refuses costs no
            // budget; a frame the lease cannot pay closes the tunnel.
            if b.take(u64::from(first), h.payload_len, Instant::now(), || {
                refill(b)
            }) != Take::Charged
            {
                self.refused = true;
                self.over_budget = true;
                return false;
            }
        }
        if let Some(b) = &mut self.messages {
            b.tokens -= msg_cost;
        }
        if let Some(b) = &mut self.bytes {
            b.tokens -= byte_cost;
        }
        self.seen_messages += u64::from(first);
        self.seen_bytes += h.payload_len;
        true
    }

    /// In debt: how long the relay must stop reading the client.
    pub fn pause(&self) -> Option<Duration> {
        let secs = [&self.messages, &self.bytes]
            .into_iter()
            .flatten()
            .map(Bucket::debt_secs)
            .fold(0.0, f64::max);
        // Resume a quantum late so the next read takes a batch of messages rather
        // than one: fewer wake-ups, and the long-run rate is unchanged.
        (secs > 0.0).then(|| Duration::from_secs_f64(secs + QUANTUM))
    }

    /// How many bytes the next read may take, so a throttled tunnel overshoots its
    /// tokens by at most about one quantum's worth.
    pub fn read_cap(&self, max: usize) -> usize {
        let max = self.budget.as_ref().map_or(max, |b| b.read_cap(max));
        if self.on_exceed == Exceed::Close {
            return max;
        }
        let mut cap = max as f64;
        if let Some(b) = &self.bytes {
            cap = cap.min(b.tokens.max(b.rate * QUANTUM));
        }
        if let Some(b) = &self.messages {
            // Wire bytes per message as seen so far (6 = a small client frame's header);
            // a guess of 64 until the first message.
            let per = match self.seen_messages {
                0 => 64.0,
                n => self.seen_bytes as f64 / n as f64 + 6.0,
            };
            cap = cap.min(b.tokens.max(b.rate * QUANTUM) * per);
        }
        (cap as usize).clamp(MIN_READ.min(max), max)
    }
}

/// Asks for a new lease of `budget` in the background.
fn refill(budget: &Arc<Account>) {
    if let Some(fleet) = crate::proxy::fleet::get() {
        fleet.refill(budget);
    } else {
        budget.failed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::relay::frame::{OP_BINARY, OP_TEXT};

    fn header(opcode: u8, fin: bool, len: u64) -> FrameHeader {
        FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask: Some([1, 2, 3, 4]),
            payload_len: len,
            header_len: 6,
        }
    }

    #[test]
    fn depth_zero_is_one_seconds_worth() {
        let l = RateLimit::new(10, 0, 0, 0, Exceed::Close).unwrap();
        assert_eq!(l.messages, Some((10.0, 10.0)));
        assert_eq!(l.bytes, None);
        assert!(RateLimit::new(0, 5, 0, 0, Exceed::Close).is_none());
    }

    #[test]
    fn close_refuses_past_the_burst_and_refills() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&RateLimit::new(10, 3, 0, 0, Exceed::Close).unwrap(), t0);
        for _ in 0..3 {
            assert!(l.admit(&header(OP_TEXT, true, 5)));
        }
        assert!(!l.admit(&header(OP_TEXT, true, 5)));
        l.refill(t0 + Duration::from_millis(100));
        assert!(l.admit(&header(OP_BINARY, true, 5)));
        assert!(!l.admit(&header(OP_BINARY, true, 5)));
    }

    #[test]
    fn fragments_cost_one_message_and_their_bytes() {
        let t0 = Instant::now();
        let limit = RateLimit::new(1, 1, 100, 100, Exceed::Close).unwrap();
        let mut l = Limiter::new(&limit, t0);
        assert!(l.admit(&header(OP_TEXT, false, 40)));
        assert!(l.admit(&header(OP_CONTINUATION, false, 40)));
        assert!(
            !l.admit(&header(OP_CONTINUATION, true, 40)),
            "bytes ran out"
        );
        assert!(l.admit(&header(OP_CONTINUATION, true, 20)));
        assert!(!l.admit(&header(OP_TEXT, true, 0)), "messages ran out");
    }

    #[test]
    fn throttle_goes_into_debt_and_pauses_for_it() {
        let t0 = Instant::now();
        let limit = RateLimit::new(100, 10, 0, 0, Exceed::Throttle).unwrap();
        let mut l = Limiter::new(&limit, t0);
        for _ in 0..30 {
            assert!(l.admit(&header(OP_TEXT, true, 10)));
        }
        // 20 messages of debt at 100/s: 200 ms, plus the quantum.
        let p = l.pause().unwrap().as_secs_f64();
        assert!((p - 0.25).abs() < 1e-6, "{p}");
        l.refill(t0 + Duration::from_millis(250));
        assert!(l.pause().is_none());
        // Reads are sized from the message size seen (10 + 6 bytes).
        assert_eq!(l.read_cap(65536), 256.max((5.0 * 16.0) as usize));
    }

    #[test]
    fn byte_cap_bounds_a_throttled_read() {
        let limit = RateLimit::new(0, 0, 10_000, 0, Exceed::Throttle).unwrap();
        let l = Limiter::new(&limit, Instant::now());
        assert_eq!(l.read_cap(65536), 10_000);
        let close = Limiter::new(
            &RateLimit::new(0, 0, 10_000, 0, Exceed::Close).unwrap(),
            Instant::now(),
        );
        assert_eq!(close.read_cap(65536), 65536);
    }
}
