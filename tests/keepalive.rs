//! The proxy's own keepalive: it pings silent legs, consumes the answers, measures
//! their round trip, and closes tunnels whose peer stopped answering. Also the
//! idle and lifetime limits.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ROUTE: [(&str, &str); 2] = [("namespace", "default"), ("route", "ka")];

fn labels<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut l = ROUTE.to_vec();
    l.extend_from_slice(extra);
    l
}

#[tokio::test]
async fn idle_tunnel_gets_proxy_pings_on_both_legs_and_their_pongs_are_consumed() {
    let (mut backend, addr) = node_backend("ka", &[]).await;
    let route = Route::new("ka").backend(addr).set(
        "keepalive",
        "{interval: 1s, timeout: 900ms, backend: {interval: 1s, timeout: 900ms}}",
    );
    let gate = Wsgate::start(&route.yaml()).await;

    let mut client = node_client(&gate.url("/idle"), &[]);
    client.expect("open", 10.0).await;
    backend.expect("connection", 5.0).await;

    // Stay silent for 3.5 intervals: both sides see the proxy's pings (Node ws
    // answers them itself). The backend's ws server would fail the connection with
    // 1002 on an unmasked frame, so its pings arriving at all shows they are masked.
    client.drain(4.0, 3.5).await;
    backend.drain(0.2, 1.0).await;
    let client_pings = client.seen_named("ping").len();
    let backend_pings = backend.seen_named("ping").len();
    assert!(
        client_pings >= 2,
        "the idle client saw {client_pings} pings in 3.5s (interval 1s)"
    );
    assert!(
        backend_pings >= 2,
        "the idle backend saw {backend_pings} pings in 3.5s (interval 1s)"
    );
    assert!(
        client.seen_named("pong").is_empty(),
        "the backend's answers to proxy pings leaked to the client"
    );
    assert!(
        backend.seen_named("pong").is_empty(),
        "the client's answers to proxy pings leaked to the backend"
    );
    assert!(client.seen_named("close").is_empty() && backend.seen_named("close").is_empty());

    let m = gate.metrics().await;
    assert!(
        m.get("wsgate_pings_sent_total", &labels(&[("peer", "client")])) >= 2.0,
        "{}",
        m.text
    );
    assert!(
        m.get("wsgate_pings_sent_total", &labels(&[("peer", "backend")])) >= 2.0,
        "{}",
        m.text
    );
    assert!(
        m.get(
            "wsgate_ping_rtt_seconds_count",
            &labels(&[("peer", "client")])
        ) >= 1.0,
        "{}",
        m.text
    );
    assert_eq!(m.get("wsgate_pong_timeouts_total", &ROUTE), 0.0);

    let conns = gate.connections().await;
    assert_eq!(conns.len(), 1);
    let rtt = &conns[0]["client_rtt_ms"];
    assert!(
        rtt.as_f64().is_some_and(|v| v >= 0.0),
        "client_rtt_ms after answered pings: {rtt}"
    );

    // The tunnel still carries messages.
    client.send(text("still here")).await;
    assert_eq!(client.expect("message", 5.0).await["data"], "still here");
}

#[tokio::test]
async fn client_that_never_answers_pings_is_closed_and_its_backend_gets_1001() {
    let (mut backend, addr) = node_backend("ka", &[]).await;
    let route = Route::new("ka").backend(addr).set(
        "keepalive",
        "{interval: 1s, timeout: 500ms, backend: {interval: 0s, timeout: 0s}}",
    );
    let gate = Wsgate::start(&route.yaml()).await;

    let mut up = raw_upgrade(gate.listen, "/dead", &[]).await;
    assert_eq!(up.response.status, 101);
    let opened = Instant::now();
    backend.expect("connection", 5.0).await;

    // The first proxy ping comes after about one interval; this client ignores it.
    let ping = up.ws.recv(3.0).await;
    assert_eq!(ping.opcode, OP_PING, "{ping:?}");
    assert!(ping.mask.is_none(), "frames to the client are unmasked");
    let first_ping = opened.elapsed().as_secs_f64();
    assert!(
        first_ping > 0.7,
        "pinged after {first_ping:.2}s of silence, interval is 1s"
    );

    // Then the tunnel is torn down after the timeout.
    let frames = up.ws.until_eof(6.0).await;
    let closed = opened.elapsed().as_secs_f64();
    assert!(
        (1.3..=3.0).contains(&closed),
        "the dead client was dropped {closed:.2}s after opening (interval 1s + timeout 0.5s)"
    );
    assert!(
        frames
            .iter()
            .all(|f| f.opcode == OP_PING || f.opcode == OP_CLOSE),
        "{frames:?}"
    );

    let bclose = backend.expect("close", 3.0).await;
    assert_eq!(
        bclose["code"], 1001,
        "the live side (backend) gets Close 1001: {bclose}"
    );

    let m = gate
        .wait_metric(3.0, "wsgate_connections_active", &ROUTE, |v| v == 0.0)
        .await;
    assert_eq!(m, 0.0);
    let m = gate.metrics().await;
    assert_eq!(
        m.get("wsgate_pong_timeouts_total", &labels(&[("peer", "client")])),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "wsgate_pong_timeouts_total",
            &labels(&[("peer", "backend")])
        ),
        0.0
    );
}

#[tokio::test]
async fn backend_that_never_answers_pings_is_closed_and_its_client_gets_1001() {
    let backend = RawBackend::bind().await;
    let route = Route::new("ka").backend(backend.addr).set(
        "keepalive",
        "{interval: 0s, timeout: 0s, backend: {interval: 1s, timeout: 500ms}}",
    );
    let gate = Wsgate::start(&route.yaml()).await;

    let mut client = node_client(&gate.url("/dead-backend"), &[]);
    let mut server = backend.accept(10.0).await.accept().await;
    // The backend leg's silence starts with its 101.
    let opened = Instant::now();
    client.expect("open", 10.0).await;

    let ping = server.recv(3.0).await;
    assert_eq!(ping.opcode, OP_PING, "{ping:?}");
    assert!(
        ping.mask.is_some(),
        "a proxy ping toward the backend must be masked (RFC 6455 §5.3)"
    );

    let closed = client.expect("close", 5.0).await;
    let at = opened.elapsed().as_secs_f64();
    assert_eq!(
        closed["code"], 1001,
        "the live side (client) gets Close 1001: {closed}"
    );
    assert!(
        (1.3..=3.0).contains(&at),
        "closed {at:.2}s after opening (interval 1s + timeout 0.5s)"
    );

    let m = gate
        .wait_metric(
            3.0,
            "wsgate_pong_timeouts_total",
            &labels(&[("peer", "backend")]),
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(m, 1.0);
}

#[tokio::test]
async fn idle_timeout_closes_both_sides_with_1001() {
    let (mut backend, addr) = node_backend("ka", &[]).await;
    let route = Route::new("ka")
        .backend(addr)
        .no_keepalive()
        .set("timeouts", "{idle: 1s}");
    let gate = Wsgate::start(&route.yaml()).await;

    let mut client = node_client(&gate.url("/idle"), &[]);
    client.expect("open", 10.0).await;
    // Traffic keeps it open past the idle timeout...
    for i in 0..6 {
        client.send(text(&format!("tick {i}"))).await;
        assert_eq!(
            client.expect("message", 5.0).await["data"],
            format!("tick {i}")
        );
        pause(0.3).await;
    }
    // ...silence ends it.
    let quiet = Instant::now();
    let closed = client.expect("close", 5.0).await;
    let after = quiet.elapsed().as_secs_f64();
    assert_eq!(closed["code"], 1001, "{closed}");
    assert!(
        (0.6..=3.0).contains(&after),
        "closed {after:.2}s into the silence (idle timeout 1s)"
    );
    assert_eq!(backend.expect("close", 3.0).await["code"], 1001);
}

#[tokio::test]
async fn max_lifetime_closes_a_busy_tunnel_with_1001() {
    let (mut backend, addr) = node_backend("ka", &[]).await;
    let route = Route::new("ka")
        .backend(addr)
        .no_keepalive()
        .set("timeouts", "{maxLifetime: 2s}");
    let gate = Wsgate::start(&route.yaml()).await;

    let mut client = node_client(&gate.url("/life"), &[]);
    client.expect("open", 10.0).await;
    let opened = Instant::now();
    let closed = within(8.0, "the lifetime limit", async {
        loop {
            client.send_quiet(text("busy")).await;
            if let Some(ev) = client.try_next(0.2).await {
                if ev["event"] == "close" {
                    return ev;
                }
            }
            if opened.elapsed() > Duration::from_secs(7) {
                panic!("still open after 7s with maxLifetime 2s");
            }
        }
    })
    .await;
    let at = opened.elapsed().as_secs_f64();
    assert_eq!(closed["code"], 1001, "{closed}");
    assert!(
        (1.5..=4.0).contains(&at),
        "closed after {at:.2}s (maxLifetime 2s)"
    );
    let bclose = backend.expect("close", 3.0).await;
    assert_eq!(bclose["code"], 1001);
}

/// Interval 1s, timeout 3s: the proxy pings a silent client every second until the
/// timeout runs out (counted from the first ping), then closes it.
#[tokio::test]
async fn pings_repeat_every_interval_until_a_timeout_longer_than_the_interval() {
    let backend = RawBackend::bind().await;
    let route = Route::new("ka").backend(backend.addr).set(
        "keepalive",
        "{interval: 1s, timeout: 3s, backend: {interval: 0s, timeout: 0s}}",
    );
    let gate = Wsgate::start(&route.yaml()).await;

    let (up, server) = tokio::join!(raw_upgrade(gate.listen, "/slow", &[]), async {
        backend.accept(10.0).await.accept().await
    });
    assert_eq!(up.response.status, 101);
    let (mut client, mut server) = (up.ws, server);
    let opened = Instant::now();

    // This client never answers: it records when each ping came and how it ended.
    let (pings, close, closed_at) = within(8.0, "the tunnel to close", async {
        let mut pings = vec![];
        loop {
            match client.try_recv(8.0).await {
                Ok(f) if f.opcode == OP_PING => pings.push(opened.elapsed().as_secs_f64()),
                Ok(f) if f.opcode == OP_CLOSE => {
                    let at = opened.elapsed().as_secs_f64();
                    let rest = client.until_eof(3.0).await;
                    assert!(rest.is_empty(), "frames after the Close: {rest:?}");
                    return (pings, f, at);
                }
                Ok(f) => panic!("unexpected frame {f:?}"),
                Err(e) => panic!("the stream ended without a Close: {e}"),
            }
        }
    })
    .await;
    assert_eq!(
        pings.len(),
        3,
        "pings at {pings:?}s (interval 1s, timeout 3s from the first)"
    );
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((0.7..=1.5).contains(&gap), "pings at {pings:?}s, 1s apart");
    }
    let dead_after = closed_at - pings[0];
    assert!(
        (2.7..=4.0).contains(&dead_after),
        "closed {dead_after:.2}s after the first unanswered ping (timeout 3s)"
    );
    assert_eq!(close.close_code(), Some(1001), "{close:?}");
    // The live side (the backend) gets Close 1001 as well.
    let frames = server.until_eof(3.0).await;
    assert_eq!(
        frames.iter().map(Frame::close_code).collect::<Vec<_>>(),
        [Some(1001)],
        "{frames:?}"
    );
    let m = gate
        .wait_metric(
            3.0,
            "wsgate_pong_timeouts_total",
            &labels(&[("peer", "client")]),
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(m, 1.0);
    assert_eq!(
        gate.metrics()
            .await
            .get("wsgate_pings_sent_total", &labels(&[("peer", "client")])),
        3.0
    );
}

/// A client that answers only the second ping (the first is lost, say) keeps its
/// tunnel past the point where the first ping's timeout would have run out.
#[tokio::test]
async fn answering_a_repeated_ping_keeps_the_tunnel() {
    let backend = RawBackend::bind().await;
    let route = Route::new("ka").backend(backend.addr).set(
        "keepalive",
        "{interval: 1s, timeout: 3s, backend: {interval: 0s, timeout: 0s}}",
    );
    let gate = Wsgate::start(&route.yaml()).await;

    let (up, server) = tokio::join!(raw_upgrade(gate.listen, "/late", &[]), async {
        backend.accept(10.0).await.accept().await
    });
    assert_eq!(up.response.status, 101);
    let (mut client, mut server) = (up.ws, server);
    let opened = Instant::now();

    let first = client.recv(3.0).await;
    assert_eq!(first.opcode, OP_PING, "{first:?}");
    let second = client.recv(3.0).await;
    assert_eq!(second.opcode, OP_PING, "{second:?}");
    client
        .send(&Frame::pong(second.payload.clone()).masked([5, 6, 7, 8]))
        .await;

    // Past the first ping's timeout (about 4s after opening) the tunnel still
    // carries messages; the proxy's pong never reached the backend.
    let wait = 5.5 - opened.elapsed().as_secs_f64();
    let mut seen = vec![];
    let _ = tokio::time::timeout(Duration::from_secs_f64(wait.max(0.0)), async {
        loop {
            seen.push(client.recv(10.0).await);
        }
    })
    .await;
    assert!(
        seen.iter().all(|f| f.opcode == OP_PING),
        "the answered tunnel got {seen:?}"
    );
    let msg = Frame::text("still here").masked([1, 2, 3, 4]).encode();
    client.send_bytes(&msg).await;
    assert_eq!(
        server.read_bytes(msg.len(), 5.0).await,
        msg,
        "the backend gets the message, and before it nothing (no pong leaked)"
    );
    let m = gate.metrics().await;
    assert_eq!(
        m.get("wsgate_pong_timeouts_total", &labels(&[("peer", "client")])),
        0.0,
        "{}",
        m.text
    );
    assert!(
        m.get(
            "wsgate_ping_rtt_seconds_count",
            &labels(&[("peer", "client")])
        ) >= 1.0,
        "the answered ping's round trip is recorded: {}",
        m.text
    );
}
