//! `Relay`: moves one tunnel's frames between client and backend after the 101.
//!
//! Frame-aware but payload-blind: headers are parsed, payload bytes are forwarded
//! as they arrive (client frames keep their mask), and the proxy slips its own
//! control frames (keepalive pings, closes) in between frames. One task owns both
//! legs; it waits for readiness and reads into a per-thread scratch buffer, so an
//! idle tunnel holds no buffer at all and a busy one batches many messages per
//! system call. Counters are added once per batch, not once per message.

mod direction;
pub mod frame;
mod keepalive;
pub mod protocol;
pub(crate) mod ratelimit;
pub mod reader;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;
use std::task::Context;
use std::task::Poll::{self, Pending, Ready};
use std::time::{Duration, Instant};

use thin_vec::ThinVec;
use tokio::time::{sleep_until, Sleep};

use crate::metrics::Initiator;
use crate::proxy::live::Proxy;
use crate::proxy::registry::{ClientProtocol, CloseReason, TunnelEnd, TunnelInfo};
use crate::proxy::route::policy::{Exceed, LegPing};
use crate::proxy::runtime::Admission;
use crate::proxy::stream::Stream;
use direction::{flush, send, Dir, Pass};
use frame::{FrameError, OP_CLOSE};
use keepalive::{ping_frame, Due, Leg};
use protocol::{Extensions, Rules};
use ratelimit::Limiter;

/// How long a tunnel waits for the far side's Close after a Close went through.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(5);
/// How long the proxy lingers after closing a tunnel itself.
const PROXY_CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Reads per wake-up before other tunnels get a turn.
const READS_PER_WAKE: usize = 4;
/// Size of the per-thread read buffer.
const SCRATCH: usize = 64 * 1024;
struct Scratch {
    read: Vec<u8>,
    out: Vec<u8>,
}

thread_local! {
    static SCRATCH_BUF: RefCell<Scratch> =
        RefCell::new(Scratch { read: vec![0; SCRATCH], out: Vec::with_capacity(SCRATCH + 512) });
}

/// What woke the relay.
enum Wake {
    Signal,
    Read(Side),
    Write(Side),
    Gone(Side),
    Timer,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Client,
    Backend,
}

/// A tunnel after both handshakes.
pub(crate) struct Relay {
    pub client: Stream,
    pub backend: Stream,
    pub info: Arc<TunnelInfo>,
    /// The tunnel's place in its route's counts (and the route's state:
    /// `admission.runtime()`).
    pub admission: Admission,
    /// Extensions the backend's 101 negotiated: which RSV bits frames may carry.
    pub extensions: Extensions,
    /// The proxy: its timers, and its registry (left when the tunnel ends).
    pub proxy: Arc<Proxy>,
}

pub(crate) struct State {
    c: Leg,
    b: Leg,
    c2b: Dir,
    b2c: Dir,
    last_data: Instant,
    /// When the tunnel ends regardless (after a close went through).
    closing: Option<Instant>,
    first_close: Option<(u16, Initiator)>,
    finished: bool,
    /// The route's rate limits on the client (boxed: most tunnels have none).
    limiter: Option<Box<Limiter>>,
    /// The tick of the deadline filed with the shared timers (`u64::MAX`: none).
    filed: u64,
    /// A throttle pause's end, to the millisecond (the shared timers keep 10 ms
    /// ticks); only while paused.
    resume: Option<Pin<Box<Sleep>>>,
}

impl State {
    fn leg(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::Client => &mut self.c,
            Side::Backend => &mut self.b,
        }
    }

    fn leg_ref(&self, side: Side) -> &Leg {
        match side {
            Side::Client => &self.c,
            Side::Backend => &self.b,
        }
    }

    /// The direction whose bytes come from `side`.
    fn from(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.c2b,
            Side::Backend => &mut self.b2c,
        }
    }

    fn can_read(&self, side: Side) -> bool {
        let (leg, dir) = match side {
            Side::Client => (&self.c, &self.c2b),
            Side::Backend => (&self.b, &self.b2c),
        };
        let throttled = side == Side::Client && self.limiter.as_ref().is_some_and(|l| l.paused());
        !self.finished
            && !leg.eof
            && !leg.ended
            && dir.out.is_empty()
            && !dir.tls_pending
            && !throttled
    }

    fn done(&self) -> bool {
        // A client closed for its rate is still sending: read (and drop) its bytes
        // until it goes or the linger ends, or closing the socket over unread bytes
        // would reset it and the client would lose the Close 1008.
        let reading = !self.c.eof && !self.c.ended;
        if !self.finished && reading && self.limiter.as_ref().is_some_and(|l| l.refused()) {
            return false;
        }
        let flushed = |d: &Dir| d.out.is_empty() && !d.tls_pending;
        let closed = self.c2b.close_sent && self.b2c.close_sent;
        self.finished
            || (closed && flushed(&self.c2b) && flushed(&self.b2c))
            || (self.c.eof && self.b.eof)
            || (self.c.eof && (flushed(&self.c2b) || self.b.eof))
            || (self.b.eof && (flushed(&self.b2c) || self.c.eof))
    }
}

/// An open tunnel's task, written by hand rather than as `async` code: what
/// this future holds, every idle tunnel holds. An `async fn` keeps its arguments
/// twice (as arguments and as the locals they move into), and each `async` level
/// adds its captured references, the readiness closure and a discriminant; as
/// `async` code the task was 1,280 bytes, then 768. This is the relay and its
/// state (its deadlines live in the shared `Timers`), then the boxed closing
/// steps; tokio's task around it is 512 bytes (see the test below).
// The large variant is the tunnel for all its life, the small one its last
// second: boxing the large one would add an allocation per tunnel.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Tunnel {
    Relaying(Relay, State),
    Finishing(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Future for Tunnel {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Tunnel::Relaying(relay, st) = this {
            while !st.done() {
                relay.arm(st);
                match relay.poll_wake(st, cx) {
                    Ready(wake) => relay.on_wake(wake, st),
                    Pending => return Pending,
                }
            }
            let placeholder = Tunnel::Finishing(Box::pin(std::future::ready(())));
            if let Tunnel::Relaying(relay, st) = std::mem::replace(this, placeholder) {
                *this = Tunnel::Finishing(Box::pin(relay.finish(st)));
            }
        }
        match this {
            Tunnel::Finishing(steps) => steps.as_mut().poll(cx),
            Tunnel::Relaying(..) => unreachable!("a tunnel stops relaying only to finish"),
        }
    }
}

impl Relay {
    /// The tunnel's life: relays until it closes. `client_early`/`backend_early`
    /// are bytes that arrived with the handshakes; they are handled now, before
    /// the future is returned.
    pub fn run(mut self, client_early: Vec<u8>, backend_early: Vec<u8>) -> Tunnel {
        // An HTTP/1.1 tunnel keeps its client connection, which hyper stopped
        // counting at the upgrade (an HTTP/2 connection is counted by its listener).
        if self.info.client_protocol == ClientProtocol::Http1 {
            self.http1_connections().inc();
        }
        let now = Instant::now();
        let leg = || Leg::new(now);
        let mut st = State {
            c: leg(),
            b: leg(),
            c2b: Dir::new(Rules::from_client(self.extensions)),
            b2c: Dir::new(Rules::from_server(self.extensions)),
            last_data: now,
            closing: None,
            first_close: None,
            finished: false,
            limiter: Limiter::for_tunnel(
                self.info.route.rate_limit.as_ref(),
                self.admission.budget(),
                now,
            ),
            filed: u64::MAX,
            resume: None,
        };
        if !client_early.is_empty() {
            self.ingest(Side::Client, &client_early, &mut st);
        }
        if !backend_early.is_empty() {
            self.ingest(Side::Backend, &backend_early, &mut st);
        }
        Tunnel::Relaying(self, st)
    }

    /// Files the next deadline with the shared timers when it moved earlier than
    /// the one filed (or that one fired): a deadline that fires early finds
    /// nothing due and is filed again, which is cheaper than filing on every read.
    /// A throttle pause gets a timer of its own.
    fn arm(&self, st: &mut State) {
        let timers = &self.proxy.timers;
        let tick = timers.tick(self.next_deadline(st));
        if tick < st.filed {
            timers.file(self.info.id, tick, st.filed);
            st.filed = tick;
        }
        match st.limiter.as_ref().and_then(|l| l.paused_until()) {
            Some(until) => {
                let until = until.into();
                match &mut st.resume {
                    Some(sleep) if sleep.deadline() == until => {}
                    Some(sleep) => sleep.as_mut().reset(until),
                    None => st.resume = Some(Box::pin(sleep_until(until))),
                }
            }
            None => st.resume = None,
        }
    }

    /// Acts on what woke the tunnel.
    fn on_wake(&mut self, wake: Wake, st: &mut State) {
        match wake {
            Wake::Signal => {}
            Wake::Read(side) => self.read(side, st),
            Wake::Gone(side) => self.gone(side, st),
            Wake::Write(Side::Backend) => {
                if !flush(&mut self.backend, &mut st.c2b) {
                    self.gone(Side::Backend, st);
                }
            }
            Wake::Write(Side::Client) => {
                if !flush(&mut self.client, &mut st.b2c) {
                    self.gone(Side::Client, st);
                }
            }
            Wake::Timer => {
                if self.proxy.timers.now() >= st.filed {
                    st.filed = u64::MAX;
                }
                self.on_timer(st);
            }
        }
    }

    /// One hand-written poll instead of `select!` over readiness futures: the
    /// sockets keep the waker, so an idle tunnel's task is a few hundred bytes.
    fn poll_wake(&mut self, st: &mut State, cx: &mut Context<'_>) -> Poll<Wake> {
        self.info.waker.register(cx.waker());
        if self.info.signal.swap(false, Relaxed) {
            return Ready(Wake::Signal);
        }
        if self.info.timer.load(Relaxed) && self.info.timer.swap(false, Acquire) {
            return Ready(Wake::Timer);
        }
        for side in [Side::Client, Side::Backend] {
            if !st.can_read(side) {
                continue;
            }
            if st.leg_ref(side).maybe_more {
                return Ready(Wake::Read(side));
            }
            if let Ready(r) = self.stream(side).poll_read_ready(cx) {
                return Ready(if r.is_ok() {
                    Wake::Read(side)
                } else {
                    Wake::Gone(side)
                });
            }
        }
        for (side, dir) in [(Side::Backend, &st.c2b), (Side::Client, &st.b2c)] {
            if dir.out.is_empty() && !dir.tls_pending {
                continue;
            }
            if let Ready(r) = self.stream(side).poll_write_ready(cx) {
                return Ready(if r.is_ok() {
                    Wake::Write(side)
                } else {
                    Wake::Gone(side)
                });
            }
        }
        if let Some(resume) = &mut st.resume {
            if resume.as_mut().poll(cx).is_ready() {
                return Ready(Wake::Timer);
            }
        }
        Pending
    }

    fn stream(&mut self, side: Side) -> &mut Stream {
        match side {
            Side::Client => &mut self.client,
            Side::Backend => &mut self.backend,
        }
    }

    /// The route's ping settings toward one leg.
    fn ping_of(&self, side: Side) -> Option<LegPing> {
        match side {
            Side::Client => self.info.route.client_ping,
            Side::Backend => self.info.route.backend_ping,
        }
    }

    fn http1_connections(&self) -> prometheus::IntGauge {
        self.proxy
            .metrics
            .client_connections_active
            .with_label_values(&["http1"])
    }

    fn next_deadline(&self, st: &State) -> Instant {
        let now = Instant::now();
        let route = &self.info.route;
        let mut d = now + Duration::from_secs(3600);
        let mut at = |t: Instant| d = d.min(t);
        if let Some(c) = st.closing {
            at(c);
        }
        if let Some(c) = self.info.close_deadline(self.proxy.registry.epoch()) {
            at(c);
        }
        if st.closing.is_none() {
            if let Some(l) = route.max_lifetime {
                at(self.info.opened + l);
            }
            if let Some(i) = route.idle_timeout {
                at(st.last_data + i);
            }
            for (leg, ping) in [(&st.c, route.client_ping), (&st.b, route.backend_ping)] {
                if let Some(p) = ping {
                    at(leg.next_due(p));
                }
            }
        }
        d
    }

    /// Reads from one leg and forwards what it sent.
    fn read(&mut self, side: Side, st: &mut State) {
        SCRATCH_BUF.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let Scratch { read, out } = &mut *scratch;
            let mut exhausted = true;
            if side == Side::Client {
                if let Some(l) = st.limiter.as_deref_mut() {
                    if l.wait_for_budget(Instant::now()) {
                        return;
                    }
                }
            }
            for _ in 0..READS_PER_WAKE {
                if !st.can_read(side) {
                    break;
                }
                // A throttled client is read in small batches, so it overshoots its
                // tokens by a bounded amount before the pause.
                let cap = match (side, &st.limiter) {
                    (Side::Client, Some(l)) => l.read_cap(read.len()),
                    _ => read.len(),
                };
                let src = match side {
                    Side::Client => &mut self.client,
                    Side::Backend => &mut self.backend,
                };
                match src.try_read(&mut read[..cap]) {
                    Ok(0) => {
                        exhausted = false;
                        self.ended(side, st);
                        break;
                    }
                    Ok(n) => {
                        self.process(side, &read[..n], out, st);
                        // A short read drained the socket (tokio has noted it): wait
                        // for readiness rather than read again into EAGAIN.
                        if n < cap && matches!(self.stream(side), Stream::Tcp(_)) {
                            exhausted = false;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        exhausted = false;
                        break;
                    }
                    Err(_) => {
                        exhausted = false;
                        self.gone(side, st);
                        break;
                    }
                }
            }
            st.leg(side).maybe_more = exhausted && !st.leg(side).eof;
        });
    }

    /// Handles bytes that arrived with the handshake.
    fn ingest(&mut self, side: Side, bytes: &[u8], st: &mut State) {
        let mut out = Vec::new();
        self.process(side, bytes, &mut out, st);
    }

    fn process(&mut self, side: Side, input: &[u8], out: &mut Vec<u8>, st: &mut State) {
        let now = Instant::now();
        st.leg(side).heard(now);
        let max = self.info.route.max_message_bytes;
        out.clear();
        let (dir, mut limit) = match side {
            Side::Client => (&mut st.c2b, st.limiter.as_deref_mut()),
            Side::Backend => (&mut st.b2c, None),
        };
        if let Some(l) = &mut limit {
            l.refill(now);
        }
        let mut pass = Pass {
            out,
            discard: dir.close_sent,
            messages: 0,
            bytes: 0,
            close: None,
            pong: None,
            limit,
            limited: false,
        };
        let result = dir.reader.feed(input, max, &mut pass);
        let Pass {
            out,
            discard: after_close,
            messages,
            bytes,
            close,
            pong,
            limited,
            ..
        } = pass;
        let (dst, dir) = match side {
            Side::Client => (&mut self.backend, &mut st.c2b),
            Side::Backend => (&mut self.client, &mut st.b2c),
        };
        let alive = out.is_empty() || send(dst, dir, out);
        if messages > 0 || bytes > 0 {
            st.last_data = now;
            let (m, b, mc, bc) = match side {
                Side::Client => (
                    &self.info.c2b_messages,
                    &self.info.c2b_bytes,
                    self.admission.runtime().metrics.messages_c2b(),
                    self.admission.runtime().metrics.bytes_c2b(),
                ),
                Side::Backend => (
                    &self.info.b2c_messages,
                    &self.info.b2c_bytes,
                    self.admission.runtime().metrics.messages_b2c(),
                    self.admission.runtime().metrics.bytes_b2c(),
                ),
            };
            m.fetch_add(messages, Relaxed);
            b.fetch_add(bytes, Relaxed);
            mc.inc_by(messages);
            bc.inc_by(bytes);
        }
        if let Some(token) = pong {
            if let Some(rtt) = st.leg(side).answered(token, now) {
                let (hist, slot) = match side {
                    Side::Client => (
                        self.admission.runtime().metrics.rtt_client(),
                        &self.info.client_rtt_us,
                    ),
                    Side::Backend => (
                        self.admission.runtime().metrics.rtt_backend(),
                        &self.info.backend_rtt_us,
                    ),
                };
                hist.observe(rtt.as_secs_f64());
                slot.store(rtt.as_micros() as u64, Relaxed);
            }
        }
        if let Some(code) = close {
            st.from(side).close_sent = true;
            let initiator = match side {
                Side::Client => Initiator::Client,
                Side::Backend => Initiator::Backend,
            };
            st.first_close.get_or_insert((code, initiator));
            self.info.closing(TunnelEnd::Closed, code);
            st.closing.get_or_insert(now + CLOSE_HANDSHAKE);
        }
        if !alive {
            let other = match side {
                Side::Client => Side::Backend,
                Side::Backend => Side::Client,
            };
            self.gone(other, st);
        }
        if side == Side::Client {
            self.after_limits(limited, now, st);
        }
        // Bytes after this direction's Close are dropped unread: their errors do
        // not matter.
        match result {
            Err(e) if !after_close => self.fail(side, &e, st),
            _ => {}
        }
    }

    /// `offender` broke RFC 6455 or a limit: the proxy ends the tunnel with the
    /// error's close code toward the offender and the other side's code (1001, or
    /// 1009 for a message too big) toward the other side.
    fn fail(&mut self, offender: Side, e: &FrameError, st: &mut State) {
        tracing::debug!(tunnel = self.info.id, peer = ?offender, error = %e, "closing tunnel on a framing error");
        let (own, other) = e.close_codes();
        st.first_close.get_or_insert((own, Initiator::Proxy));
        let backend = offender == Side::Backend;
        self.info.closing(TunnelEnd::ProtocolError { backend }, own);
        self.send_close(offender, own, &e.to_string(), st);
        let why = match (e, offender) {
            (FrameError::TooBig { .. }, _) => "message too big",
            (_, Side::Client) => "the client broke the WebSocket protocol",
            (_, Side::Backend) => "the backend broke the WebSocket protocol",
        };
        self.send_close(side_other(offender), other, why, st);
        self.linger(st);
    }

    /// A leg's read side ended. On an HTTP/2 stream that is END_STREAM, a half-close
    /// (RFC 8441 §5): after the leg's Close went through it is the orderly end of
    /// its side, and the other side's Close must still reach it (Chromium sends
    /// END_STREAM with its Close frame, and reports 1006 if no Close comes back).
    /// Otherwise the leg is gone.
    fn ended(&mut self, side: Side, st: &mut State) {
        if matches!(self.stream(side), Stream::H2(_)) && st.from(side).close_sent {
            st.leg(side).ended = true;
        } else {
            self.gone(side, st);
        }
    }

    /// A leg closed its connection or failed.
    fn gone(&mut self, side: Side, st: &mut State) {
        if st.leg(side).eof {
            return;
        }
        st.leg(side).eof = true;
        // Nothing more can reach the gone peer.
        let toward = match side {
            Side::Client => &mut st.b2c,
            Side::Backend => &mut st.c2b,
        };
        toward.out = ThinVec::new();
        toward.tls_pending = false;
        let initiator = match side {
            Side::Client => Initiator::Client,
            Side::Backend => Initiator::Backend,
        };
        if st.first_close.is_none() {
            // Abnormal closure (1006, never sent on the wire); tell the live side it went away.
            st.first_close = Some((1006, initiator));
            self.info.closing(TunnelEnd::Gone, 1006);
            self.send_close(side_other(side), 1001, "peer went away", st);
        }
    }

    /// Queues a Close frame toward `to`, if a frame may start there.
    fn send_close(&mut self, to: Side, code: u16, reason: &str, st: &mut State) {
        let (dst, dir, masked) = match to {
            Side::Client => (&mut self.client, &mut st.b2c, false),
            Side::Backend => (&mut self.backend, &mut st.c2b, true),
        };
        let dead = match to {
            Side::Client => st.c.eof,
            Side::Backend => st.b.eof,
        };
        if dir.close_sent || dead || !dir.reader.at_boundary() {
            dir.close_sent = true;
            return;
        }
        dir.close_sent = true;
        let mask = masked.then(rand::random::<[u8; 4]>);
        let bytes = frame::control_frame(OP_CLOSE, &frame::close_payload(code, reason), mask);
        if !send(dst, dir, &bytes) {
            self.gone(to, st);
        }
    }

    /// The proxy ends the tunnel: Close `code` to both live sides.
    fn proxy_close(&mut self, why: TunnelEnd, code: u16, reason: &str, st: &mut State) {
        st.first_close.get_or_insert((code, Initiator::Proxy));
        self.info.closing(why, code);
        self.send_close(Side::Backend, code, reason, st);
        self.send_close(Side::Client, code, reason, st);
        self.linger(st);
    }

    /// After the proxy's own Close, the tunnel ends within a short bound.
    fn linger(&self, st: &mut State) {
        let linger = Instant::now() + PROXY_CLOSE_LINGER;
        st.closing = Some(st.closing.map_or(linger, |c| c.min(linger)));
    }

    /// Acts on the client's rate limits after a batch: Close 1008 for a refused
    /// frame, or a pause of reading until the buckets' debt is paid.
    fn after_limits(&mut self, limited: bool, now: Instant, st: &mut State) {
        let Some(l) = st.limiter.as_deref_mut() else {
            return;
        };
        if limited {
            let reason = if l.over_budget() {
                self.admission.runtime().metrics.fleet_rejected("budget");
                tracing::info!(tunnel = self.info.id, route = %self.info.route.key, "client over its fleet message budget; closing tunnel");
                "message budget exceeded"
            } else {
                self.admission.runtime().metrics.rate_limited("close");
                tracing::info!(tunnel = self.info.id, route = %self.info.route.key, "client above its rate limit; closing tunnel");
                "rate limit exceeded"
            };
            // The refused frame's header was never forwarded, so a Close may start
            // on the backend's stream although the reader is inside that frame.
            if !st.c2b.close_sent && !st.b.eof {
                st.c2b.close_sent = true;
                let payload = frame::close_payload(1008, reason);
                let bytes = frame::control_frame(OP_CLOSE, &payload, Some(rand::random()));
                if !send(&mut self.backend, &mut st.c2b, &bytes) {
                    self.gone(Side::Backend, st);
                }
            }
            let end = if reason == "message budget exceeded" {
                TunnelEnd::Budget
            } else {
                TunnelEnd::RateLimit
            };
            self.proxy_close(end, 1008, reason, st);
        } else if l.on_exceed() == Exceed::Throttle && !l.paused() {
            if let Some(wait) = l.pause() {
                l.pause_until(now + wait);
                self.admission.runtime().metrics.rate_limited("throttle");
            }
        }
    }

    /// Moves the tunnel for the rebalancer: Close 1012 (Service Restart) tells the
    /// client to reconnect, and it lands on a less-loaded backend; the backend gets
    /// 1001 (Going Away).
    fn rebalance_close(&mut self, st: &mut State) {
        self.admission.runtime().metrics.rebalanced();
        st.first_close.get_or_insert((1012, Initiator::Proxy));
        self.info
            .closing(TunnelEnd::Scheduled(CloseReason::Rebalance), 1012);
        self.send_close(Side::Backend, 1001, "rebalancing", st);
        self.send_close(Side::Client, 1012, "rebalancing: please reconnect", st);
        let linger = Instant::now() + PROXY_CLOSE_LINGER;
        st.closing = Some(st.closing.map_or(linger, |c| c.min(linger)));
    }

    fn on_timer(&mut self, st: &mut State) {
        let now = Instant::now();
        if let Some(l) = st.limiter.as_deref_mut() {
            l.resume_if_due(now);
        }
        if st.closing.is_some_and(|c| now >= c) {
            st.finished = true;
            return;
        }
        if st.closing.is_some() {
            return;
        }
        if let Some(at) = self.info.close_deadline(self.proxy.registry.epoch()) {
            if now >= at {
                let reason = self.info.close_reason();
                if reason == CloseReason::Rebalance {
                    return self.rebalance_close(st);
                }
                let (code, text) = reason.close_frame();
                if reason == CloseReason::ClientDenied {
                    // The backend did nothing wrong: it is told its client went away.
                    st.first_close.get_or_insert((code, Initiator::Proxy));
                    self.info.closing(TunnelEnd::Scheduled(reason), code);
                    self.send_close(Side::Backend, 1001, text, st);
                    self.send_close(Side::Client, code, text, st);
                    self.linger(st);
                    return;
                }
                self.proxy_close(TunnelEnd::Scheduled(reason), code, text, st);
                return;
            }
        }
        let route = self.info.route.clone();
        if route
            .max_lifetime
            .is_some_and(|l| now >= self.info.opened + l)
        {
            self.proxy_close(
                TunnelEnd::MaxLifetime,
                1001,
                "maximum tunnel lifetime reached",
                st,
            );
            return;
        }
        if route.idle_timeout.is_some_and(|i| now >= st.last_data + i) {
            self.proxy_close(TunnelEnd::Idle, 1001, "idle timeout", st);
            return;
        }
        for side in [Side::Client, Side::Backend] {
            let Some(p) = self.ping_of(side) else {
                continue;
            };
            match st.leg(side).due(p, now) {
                Due::Dead => {
                    let m = &self.admission.runtime().metrics;
                    match side {
                        Side::Client => m.pong_timeouts_client().inc(),
                        Side::Backend => m.pong_timeouts_backend().inc(),
                    }
                    tracing::info!(tunnel = self.info.id, route = %route.key, peer = ?side, "no answer to keepalive ping; closing tunnel");
                    self.proxy_close(
                        TunnelEnd::Keepalive,
                        1001,
                        "peer did not answer keepalive ping",
                        st,
                    );
                    return;
                }
                Due::Ping => self.ping(side, st),
                Due::Nothing => {}
            }
        }
    }

    fn ping(&mut self, to: Side, st: &mut State) {
        let (dst, dir, masked) = match to {
            Side::Client => (&mut self.client, &mut st.b2c, false),
            Side::Backend => (&mut self.backend, &mut st.c2b, true),
        };
        if dir.close_sent || !dir.reader.at_boundary() {
            // Mid-frame toward this peer: the timer fires again right after.
            let interval = self.ping_of(to).map_or(Duration::ZERO, |p| p.interval);
            st.leg(to).postpone(interval, Instant::now());
            return;
        }
        let token = rand::random::<u32>();
        let bytes = ping_frame(token, masked.then(rand::random::<[u8; 4]>));
        let ok = send(dst, dir, &bytes);
        st.leg(to).pinged(token, Instant::now());
        let m = &self.admission.runtime().metrics;
        match to {
            Side::Client => m.pings_client().inc(),
            Side::Backend => m.pings_backend().inc(),
        }
        if !ok {
            self.gone(to, st);
        }
    }

    async fn finish(mut self, st: State) {
        self.proxy.timers.cancel(self.info.id, st.filed);
        let State {
            mut c2b,
            mut b2c,
            first_close,
            c,
            b,
            ..
        } = st;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        // Last bytes (typically the Close frames) go out within a short bound.
        let _ = tokio::time::timeout_at(deadline, async {
            while !b.eof && (!c2b.out.is_empty() || c2b.tls_pending) {
                if self.backend.writable().await.is_err() || !flush(&mut self.backend, &mut c2b) {
                    break;
                }
            }
            while !c.eof && (!b2c.out.is_empty() || b2c.tls_pending) {
                if self.client.writable().await.is_err() || !flush(&mut self.client, &mut b2c) {
                    break;
                }
            }
        })
        .await;
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), async {
            tokio::join!(self.client.shutdown(), self.backend.shutdown());
        })
        .await;
        let (code, initiator) = first_close.unwrap_or((1006, Initiator::Proxy));
        let m = &self.admission.runtime().metrics;
        m.close(code, initiator);
        m.duration()
            .observe(self.info.opened.elapsed().as_secs_f64());
        tracing::debug!(
            tunnel = self.info.id,
            code,
            initiator = initiator.as_str(),
            "tunnel closed"
        );
        if self.info.client_protocol == ClientProtocol::Http1 {
            self.http1_connections().dec();
        }
        drop(self.admission);
        self.proxy.registry.close(self.info.id, code, initiator);
    }
}

fn side_other(side: Side) -> Side {
    match side {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    }
}

#[cfg(test)]
mod tests {
    use super::Relay;

    /// Size of what a function returns, without calling it.
    fn size_of_return<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_idle_tunnels_task_fits_in_512_bytes() {
        // tokio puts a spawned future in a cell aligned to 128 bytes with 104 bytes
        // of its own, so this future's size decides each idle tunnel's task in steps
        // of 128: 408 bytes or less is a 512-byte task (it was 1,280 when `run` was
        // an `async fn` holding its arguments twice). Grow the relay or its state
        // and every idle tunnel pays the next step.
        let size = size_of_return(Relay::run);
        assert!(size <= 408, "the relay future is {size} bytes, over 408");
    }
}
