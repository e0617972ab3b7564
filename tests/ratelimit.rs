//! Per-tunnel rate limits (`limits.messagesPerSecond`, `bytesPerSecond`, `burst`,
//! `burstBytes`, `onExceed`): a Python `websockets` client sending as fast as it can
//! is closed with 1008 (`Close`) or held to the rate (`Throttle`, measured where
//! the messages arrive: at the backend), while another tunnel on the route goes on
//! unhindered.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// One test at a time: each measures a flooding client's rate, and four floods at
/// once on two cores starve the debug build they go through (a throttled tunnel
/// measured 110 of its 200 messages/s that way).
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One tunnel as the backend saw it: the first message (which names the client),
/// each data message's arrival time and payload size, and the Close it got.
#[derive(Default)]
struct Seen {
    first: String,
    arrivals: Vec<(Instant, usize)>,
    close: Option<u16>,
}

/// A tokio-tungstenite backend that echoes and records every message's arrival.
struct CountingBackend {
    addr: std::net::SocketAddr,
    tunnels: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingBackend {
    async fn start() -> CountingBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>> = Arc::default();
        let all = tunnels.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::new(Mutex::new(Seen::default()));
                all.lock().unwrap().push(seen.clone());
                tokio::spawn(async move {
                    let Ok(mut ws) =
                        tokio_tungstenite::accept_async_with_config(stream, Some(unlimited()))
                            .await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let size = match &msg {
                            Message::Text(t) => t.len(),
                            Message::Binary(b) => b.len(),
                            Message::Close(f) => {
                                seen.lock().unwrap().close = f.as_ref().map(|f| u16::from(f.code));
                                break;
                            }
                            _ => continue,
                        };
                        {
                            let mut s = seen.lock().unwrap();
                            if s.arrivals.is_empty() {
                                s.first = msg.to_text().unwrap_or("").to_owned();
                            }
                            s.arrivals.push((Instant::now(), size));
                        }
                        // Echo only what a round trip measures: the flood is not echoed,
                        // so its client's receive buffer never stalls it.
                        if seen.lock().unwrap().first != "flood" && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                    let _ = ws.close(None).await;
                });
            }
        });
        CountingBackend {
            addr,
            tunnels,
            task,
        }
    }

    /// The tunnel whose first message was `first`.
    fn tunnel(&self, first: &str) -> Arc<Mutex<Seen>> {
        self.tunnels
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.lock().unwrap().first == first)
            .cloned()
            .unwrap_or_else(|| panic!("no tunnel sent {first:?} first"))
    }
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn flood(gate: &Wsgate, size: usize, seconds: f64) -> Peer {
    Peer::python(
        "py_flood.py",
        &[
            &gate.url("/"),
            "--size",
            &size.to_string(),
            "--seconds",
            &seconds.to_string(),
        ],
    )
}

/// Round trips on a second tunnel of the route: each must come back promptly.
async fn other_tunnel_is_unaffected(other: &mut Peer, label: &str, count: usize) {
    for i in 0..count {
        let msg = format!("{label}-{i}");
        let sent = Instant::now();
        other.send(text(&msg)).await;
        let echo = other.expect("message", 5.0).await;
        assert_eq!(echo["data"], msg.as_str());
        assert!(
            sent.elapsed() < Duration::from_millis(500),
            "the other tunnel's round trip took {:?}",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Data messages per second (and payload bytes per second) that arrived in
/// [from, to) seconds after the tunnel's first message.
fn rate(seen: &Seen, from: f64, to: f64) -> (f64, f64) {
    let t0 = seen.arrivals.first().expect("some messages arrived").0;
    let window: Vec<usize> = seen
        .arrivals
        .iter()
        .filter(|(t, _)| {
            let s = t.duration_since(t0).as_secs_f64();
            s >= from && s < to
        })
        .map(|(_, n)| *n)
        .collect();
    let secs = to - from;
    (
        window.len() as f64 / secs,
        window.iter().sum::<usize>() as f64 / secs,
    )
}

#[tokio::test]
async fn a_client_above_its_message_rate_is_closed_with_1008() {
    let _alone = ALONE.lock().await;
    let backend = CountingBackend::start().await;
    let route = Route::new("limited")
        .backend(backend.addr)
        .no_keepalive()
        .set(
            "limits",
            "{messagesPerSecond: 50, burst: 20, onExceed: Close}",
        );
    let gate = Wsgate::start(&route.yaml()).await;

    let mut other = python_client(&gate.url("/"), &[]);
    other.expect("open", 10.0).await;
    other.send(text("other")).await;
    other.expect("message", 5.0).await;

    let mut flooder = flood(&gate, 16, 10.0);
    flooder.expect("open", 10.0).await;
    let closed = flooder.expect("close", 10.0).await;
    assert_eq!(
        closed["code"], 1008,
        "the flooding client's close: {closed}"
    );
    let seen = backend.tunnel("flood");
    let arrived = seen.lock().unwrap().arrivals.len();
    // The burst (20, "flood" included) and what refilled in the moment it took.
    assert!(
        arrived <= 25,
        "{arrived} messages reached the backend past a burst of 20"
    );
    eventually(5.0, "the backend's Close 1008", || async {
        (seen.lock().unwrap().close == Some(1008)).then_some(())
    })
    .await;

    other_tunnel_is_unaffected(&mut other, "after", 5).await;
    let m = gate.metrics().await;
    assert_eq!(
        m.get("wsgate_rate_limited_total", &[("action", "close")]),
        1.0
    );
    assert_eq!(
        m.get(
            "wsgate_closes_total",
            &[("code", "1008"), ("initiator", "proxy")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_throttled_client_is_held_to_its_message_rate() {
    let _alone = ALONE.lock().await;
    let backend = CountingBackend::start().await;
    let route = Route::new("throttled")
        .backend(backend.addr)
        .no_keepalive()
        .set("limits", "{messagesPerSecond: 200, onExceed: Throttle}");
    let gate = Wsgate::start(&route.yaml()).await;
    let mut other = python_client(&gate.url("/"), &[]);
    other.expect("open", 10.0).await;

    let mut flooder = flood(&gate, 8, 5.0);
    flooder.expect("open", 10.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    other_tunnel_is_unaffected(&mut other, "during", 10).await;
    // Held back, never closed: the client's sends just take longer.
    flooder.expect("done", 10.0).await;

    let seen = backend.tunnel("flood");
    // After the first second (the bucket starts full: one second's worth).
    let (per_second, _) = rate(&seen.lock().unwrap(), 1.5, 4.5);
    eprintln!("throttled to 200 messages/s: measured {per_second:.1} at the backend");
    assert!(
        (per_second - 200.0).abs() <= 20.0,
        "the throttled tunnel ran at {per_second:.1} messages/s, not 200 ± 10%"
    );
    let m = gate.metrics().await;
    let pauses = m.get("wsgate_rate_limited_total", &[("action", "throttle")]);
    assert!(pauses >= 10.0, "{pauses} throttle pauses counted");
    assert_eq!(
        m.get("wsgate_rate_limited_total", &[("action", "close")]),
        0.0
    );
}

#[tokio::test]
async fn a_throttled_client_is_held_to_its_byte_rate() {
    let _alone = ALONE.lock().await;
    let backend = CountingBackend::start().await;
    let route = Route::new("bytes")
        .backend(backend.addr)
        .no_keepalive()
        .set(
            "limits",
            "{bytesPerSecond: 100000, burstBytes: 20000, onExceed: Throttle}",
        );
    let gate = Wsgate::start(&route.yaml()).await;
    let mut other = python_client(&gate.url("/"), &[]);
    other.expect("open", 10.0).await;

    let mut flooder = flood(&gate, 1000, 5.0);
    flooder.expect("open", 10.0).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    other_tunnel_is_unaffected(&mut other, "during", 10).await;
    flooder.expect("done", 10.0).await;

    let seen = backend.tunnel("flood");
    let (_, bytes_per_second) = rate(&seen.lock().unwrap(), 1.0, 4.5);
    eprintln!("throttled to 100000 bytes/s: measured {bytes_per_second:.0} at the backend");
    assert!(
        (bytes_per_second - 100_000.0).abs() <= 10_000.0,
        "the throttled tunnel ran at {bytes_per_second:.0} bytes/s, not 100000 ± 10%"
    );
}

#[test]
fn check_points_at_bad_limits_and_rebalance_fields() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        "apiVersion: wsgate.io/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: bad}\nspec:\n  backends: [{address: \"127.0.0.1:9001\"}]\n  loadBalancing: {policy: ConsistentHash, hashOn: {clientIP: true}}\n  limits:\n    burst: 10\n  rebalance:\n    maxFraction: 1.5\n",
    )
    .unwrap();
    let (code, out) = wsgate_cmd(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "`wsgate check` exits 1 on errors:\n{out}");
    let f = file.display();
    for want in [
        format!("{f}:8: spec.limits.burst: needs messagesPerSecond above 0"),
        format!("{f}:9: spec.rebalance: valid only with loadBalancing.policy RoundRobin or LeastConnections"),
        format!("{f}:10: spec.rebalance.maxFraction: 1.5 must be above 0 and at most 1"),
    ] {
        assert!(out.contains(&want), "expected {want:?}; `wsgate check` printed:\n{out}");
    }
}
