//! Keepalive of one leg: the proxy's own pings (marked so their pongs are told from
//! the application's and consumed), when the next is due, and when a silent leg
//! counts as dead. The relay asks [`Leg::due`] when its timer fires and writes the
//! ping; nothing here touches a socket.

use std::time::{Duration, Instant};

use super::frame::{control_frame, OP_PING};
use crate::proxy::route::policy::LegPing;

/// Prefix of the proxy's ping payloads, so their pongs can be told from the
/// application's and consumed.
const PING_MARK: &[u8; 7] = b"\0wsgate";

/// What a leg's keepalive needs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Nothing yet.
    Nothing,
    /// A ping.
    Ping,
    /// The leg did not answer within the timeout: close the tunnel.
    Dead,
}

/// The proxy's ping frame carrying `token` (masked toward a backend, §5.3).
pub(super) fn ping_frame(token: u32, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = PING_MARK.to_vec();
    payload.extend_from_slice(&u64::from(token).to_be_bytes());
    control_frame(OP_PING, &payload, mask)
}

/// The token of a pong that answers one of the proxy's pings; `None` for the
/// application's own pongs, which pass through.
pub(super) fn pong_token(payload: &[u8]) -> Option<u64> {
    let token = payload.strip_prefix(PING_MARK.as_slice())?;
    Some(u64::from_be_bytes(token.try_into().ok()?))
}

/// The proxy's pings to a leg that has not answered yet.
#[derive(Clone, Copy)]
pub(super) struct Probe {
    /// When the latest went out: the next follows `interval` later.
    last: Instant,
    /// The latest one's token (its pong gives the round trip). Sent as 8 bytes,
    /// drawn from 32 bits: a `u64` here would make every idle tunnel 16 bytes larger.
    token: u32,
    /// How long before `last` the first went out, in ms (the leg is dead at
    /// `since + timeout`). Not a second `Instant`: every idle tunnel holds two probes.
    since_ms: u32,
}

impl Probe {
    fn new(since: Instant, last: Instant, token: u32) -> Probe {
        // Rounded up, so `since()` is never after the first ping really went out.
        let ms = last
            .saturating_duration_since(since)
            .as_micros()
            .div_ceil(1000);
        Probe {
            last,
            token,
            since_ms: u32::try_from(ms).unwrap_or(u32::MAX),
        }
    }

    /// When the first ping went out.
    fn since(&self) -> Instant {
        self.last - Duration::from_millis(self.since_ms.into())
    }
}

/// One peer's liveness (its ping settings are the route's: see `Relay::ping_of`).
pub(super) struct Leg {
    last_rx: Instant,
    /// Pings sent since the leg fell silent; anything the leg sends answers them.
    probe: Option<Probe>,
    /// The leg sent its FIN (or failed).
    pub eof: bool,
    /// The leg ended its side after its Close went through (an HTTP/2 stream's
    /// END_STREAM): nothing more to read, but it still takes the other side's Close.
    pub ended: bool,
    /// Reading stopped before the socket ran dry (TLS may hold decrypted bytes).
    pub maybe_more: bool,
}

impl Leg {
    /// A leg that was last heard from at `now`.
    pub fn new(now: Instant) -> Leg {
        Leg {
            last_rx: now,
            probe: None,
            eof: false,
            ended: false,
            maybe_more: false,
        }
    }

    /// The leg sent something: that answers any ping.
    pub fn heard(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// The probe still waiting for an answer: none once the leg sent anything after
    /// the first of its pings. (An answered probe is kept until the next ping, so a
    /// late pong still gives its round trip.)
    fn unanswered(&self) -> Option<Probe> {
        self.probe.filter(|p| self.last_rx <= p.since())
    }

    /// What the leg's keepalive needs at `now`.
    pub fn due(&self, p: LegPing, now: Instant) -> Due {
        match self.unanswered() {
            Some(probe) if now >= probe.since() + p.timeout => Due::Dead,
            // Pings repeat every interval until the leg answers or the timeout
            // runs out (which may be longer than the interval).
            Some(probe) if now >= probe.last + p.interval => Due::Ping,
            Some(_) => Due::Nothing,
            None if now >= self.last_rx + p.interval => Due::Ping,
            None => Due::Nothing,
        }
    }

    /// When [`Leg::due`] next has something to say.
    pub fn next_due(&self, p: LegPing) -> Instant {
        match self.unanswered() {
            Some(probe) => (probe.since() + p.timeout).min(probe.last + p.interval),
            None => self.last_rx + p.interval,
        }
    }

    /// A ping with `token` went out at `now`.
    pub fn pinged(&mut self, token: u32, now: Instant) {
        let since = self.unanswered().map_or(now, |p| p.since());
        self.probe = Some(Probe::new(since, now, token));
    }

    /// A ping is due but cannot go out now (mid-frame toward this peer): the timer
    /// fires again in 20 ms, and a leg already being probed keeps its timeout.
    pub fn postpone(&mut self, interval: Duration, now: Instant) {
        let retry = now - interval + Duration::from_millis(20);
        match self.unanswered() {
            Some(probe) => self.probe = Some(Probe::new(probe.since(), retry, probe.token)),
            None => {
                self.probe = None;
                self.last_rx = retry;
            }
        }
    }

    /// A pong of the proxy's with `token` arrived at `now`: the round trip, when it
    /// answers the latest ping.
    pub fn answered(&mut self, token: u64, now: Instant) -> Option<Duration> {
        let probe = self.probe.filter(|p| u64::from(p.token) == token)?;
        self.probe = None;
        Some(now.duration_since(probe.last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: LegPing = LegPing {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
    };

    #[test]
    fn a_silent_leg_is_pinged_then_dead_unless_it_answers() {
        let t0 = Instant::now();
        let mut leg = Leg::new(t0);
        assert_eq!(leg.due(P, t0 + Duration::from_secs(9)), Due::Nothing);
        assert_eq!(leg.next_due(P), t0 + P.interval);
        let t1 = t0 + P.interval;
        assert_eq!(leg.due(P, t1), Due::Ping);
        leg.pinged(7, t1);
        assert_eq!(leg.next_due(P), t1 + P.timeout);
        assert_eq!(leg.due(P, t1 + Duration::from_secs(4)), Due::Nothing);
        assert_eq!(leg.due(P, t1 + P.timeout), Due::Dead);
        // Any byte from the leg answers; the pong still gives the round trip.
        leg.heard(t1 + Duration::from_secs(1));
        assert_eq!(leg.due(P, t1 + P.timeout), Due::Nothing);
        assert_eq!(
            leg.answered(7, t1 + Duration::from_millis(1500)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(leg.answered(7, t1 + Duration::from_secs(2)), None);
    }

    #[test]
    fn the_proxys_pongs_are_recognised() {
        let frame = ping_frame(42, None);
        // A ping's payload, answered as is by the peer's pong (§5.5.3).
        assert_eq!(pong_token(&frame[2..]), Some(42));
        assert_eq!(pong_token(b"application pong"), None);
        assert_eq!(pong_token(b"\0wsgate"), None);
    }
}
