//! Rebalancing after scale-out (`spec.rebalance`): 100 tunnels on one backend, a
//! second backend added to the route file; clients that reconnect on close (Python
//! `websockets`, Socket.IO) end up split evenly after `over`, each moved tunnel
//! closed once (Close 1012 to the client, 1001 to the backend), none on the backend
//! that was under its share, and a later reload without a new backend moves nothing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

const CLIENTS: usize = 100;

/// What the reconnecting clients reported, per client: the backends they were on,
/// in order, and their closes.
#[derive(Default, Debug)]
struct History {
    backends: Vec<String>,
    closes: Vec<Value>,
}

fn histories(events: &[Value]) -> HashMap<u64, History> {
    let mut h: HashMap<u64, History> = HashMap::new();
    for e in events {
        let Some(client) = e["client"].as_u64() else {
            continue;
        };
        match e["event"].as_str() {
            Some("open") => h
                .entry(client)
                .or_default()
                .backends
                .push(e["backend"].as_str().unwrap_or("?").to_owned()),
            Some("close") => h.entry(client).or_default().closes.push(e.clone()),
            _ => {}
        }
    }
    h
}

/// Waits until `n` clients have reported an open, all on `backend`.
async fn all_open_on(peer: &mut Peer, n: usize, backend: &str) {
    for _ in 0..n {
        let e = peer.expect("open", 20.0).await;
        assert_eq!(
            e["backend"], backend,
            "before the change every client is on {backend}"
        );
    }
}

fn route(a: &str, b: Option<&str>) -> String {
    let mut r = Route::new("chat")
        .backend(a)
        .no_keepalive()
        .set("rebalance", "{maxFraction: 0.5, over: 2s}");
    if let Some(b) = b {
        r = r.backend(b);
    }
    r.yaml()
}

/// Adds backend `b`, checks /connections during the window and everything the
/// clients and wsgate report after it. Returns the per-client histories.
async fn add_backend_and_check(
    gate: &Wsgate,
    peer: &mut Peer,
    (a, a_name): (&str, &str),
    (b, b_name): (&str, &str),
) -> HashMap<u64, History> {
    gate.reload(&route(a, Some(b)), "success").await;
    let conns = gate.connections().await;
    let moving: Vec<&Value> = conns.iter().filter(|c| c["rebalancing"] == true).collect();
    assert!(
        moving.len() >= 25,
        "/connections shows {} tunnels scheduled to move right after the change",
        moving.len()
    );
    for c in &moving {
        assert_eq!(
            c["backend"], a,
            "only the over-loaded backend's tunnels move"
        );
        assert!(c["rebalance_at"].is_string(), "{c}");
    }
    // The window (2 s), then the reconnects.
    peer.drain(1.5, 8.0).await;

    let h = histories(&peer.seen);
    let moved: Vec<(&u64, &History)> = h.iter().filter(|(_, h)| !h.closes.is_empty()).collect();
    for (client, hist) in &moved {
        assert_eq!(
            hist.closes.len(),
            1,
            "client {client} was closed twice: {hist:?}"
        );
        assert_eq!(
            hist.backends.first().map(String::as_str),
            Some(a_name),
            "client {client} was closed on the under-loaded backend: {hist:?}"
        );
    }
    // 100 on A, B new: fair share 50 each, maxFraction 0.5 caps the move at 50.
    assert_eq!(moved.len(), 50, "tunnels moved");
    let last = |name: &str| {
        h.values()
            .filter(|h| h.backends.last().map(String::as_str) == Some(name))
            .count()
    };
    let (on_a, on_b) = (last(a_name), last(b_name));
    assert!(
        on_a.abs_diff(on_b) <= 2 && on_a + on_b == CLIENTS,
        "after the window: {on_a} on A and {on_b} on B, not an even split"
    );
    let conns = gate.connections().await;
    let on = |addr: &str| conns.iter().filter(|c| c["backend"] == addr).count();
    assert!(
        on(a).abs_diff(on(b)) <= 2,
        "/connections: {} on A, {} on B",
        on(a),
        on(b)
    );
    assert!(conns.iter().all(|c| c["rebalancing"] == false));
    let m = gate.metrics().await;
    assert_eq!(m.get("wsgate_rebalanced_total", &[("route", "chat")]), 50.0);
    assert_eq!(
        m.get(
            "wsgate_closes_total",
            &[("code", "1012"), ("initiator", "proxy")]
        ),
        50.0
    );

    // Once per backend change: the same backends again move nothing.
    gate.reload(
        &(route(a, Some(b)) + "  drain: {gracePeriod: 31s}\n"),
        "success",
    )
    .await;
    peer.drain(1.5, 5.0).await;
    let after = histories(&peer.seen);
    let closes: usize = after.values().map(|h| h.closes.len()).sum();
    assert_eq!(closes, 50, "a reload without a new backend closed tunnels");
    assert_eq!(
        gate.metrics()
            .await
            .get("wsgate_rebalanced_total", &[("route", "chat")]),
        50.0
    );
    h
}

#[tokio::test]
async fn python_clients_are_spread_over_an_added_backend() {
    let a = EchoBackend::start("A").await;
    let b = EchoBackend::start("B").await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let gate = Wsgate::start(&route(&a_addr, None)).await;
    let mut peer = Peer::python(
        "py_reconnect.py",
        &[&gate.url("/"), "--clients", &CLIENTS.to_string()],
    );
    all_open_on(&mut peer, CLIENTS, "A").await;

    let h = add_backend_and_check(&gate, &mut peer, (&a_addr, "A"), (&b_addr, "B")).await;
    for hist in h.values().filter(|h| !h.closes.is_empty()) {
        assert_eq!(hist.closes[0]["code"], 1012, "{hist:?}");
    }
    // The backend leg of each moved tunnel got 1001 (Going Away); B lost none.
    let a_closes: Vec<_> = a.closes().into_iter().filter_map(|(_, c)| c).collect();
    assert_eq!(a_closes.len(), 50, "{a_closes:?}");
    assert!(
        a_closes.iter().all(|(code, _)| *code == 1001),
        "{a_closes:?}"
    );
    assert!(
        b.closes().is_empty(),
        "B's tunnels were closed: {:?}",
        b.closes()
    );
}

#[tokio::test]
async fn socketio_clients_are_spread_over_an_added_backend() {
    let (_a, a_addr) = listening(Peer::node("socketio-server.js", &["--name", "A"])).await;
    let (_b, b_addr) = listening(Peer::node("socketio-server.js", &["--name", "B"])).await;
    let (a_addr, b_addr) = (a_addr.to_string(), b_addr.to_string());
    let gate = Wsgate::start(&route(&a_addr, None)).await;
    let mut peer = Peer::node(
        "socketio-reconnect.js",
        &[
            &format!("http://{}", gate.listen),
            "--clients",
            &CLIENTS.to_string(),
        ],
    );
    all_open_on(&mut peer, CLIENTS, "A").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let h = add_backend_and_check(&gate, &mut peer, (&a_addr, "A"), (&b_addr, "B")).await;
    for hist in h.values().filter(|h| !h.closes.is_empty()) {
        // Socket.IO reports a closed WebSocket as "transport close" and reconnects.
        assert_eq!(hist.closes[0]["reason"], "transport close", "{hist:?}");
    }
}
