//! Sticky sessions: the Cookie policy pins a browser to one backend for upgrades and
//! plain HTTP alike, which is what makes Socket.IO and SockJS polling fallbacks work
//! across replicas; ConsistentHash pins by header, query parameter or client IP.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use common::*;
use serde_json::Value;

const COOKIE: &str = "wsgate-affinity";

/// Upgrades through wsgate and asks the backend its name; returns (name, response).
async fn name_via_upgrade(
    gate: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, HttpResponse) {
    let mut up = raw_upgrade_from(source, gate, path, headers).await;
    assert_eq!(up.response.status, 101, "upgrade {path}: {:?}", up.response);
    up.ws
        .send(&Frame::text("__name__").masked(rand::random()))
        .await;
    let reply = up.ws.recv_data(5.0).await;
    assert_eq!(reply.opcode, OP_TEXT, "{reply:?}");
    (String::from_utf8(reply.payload).unwrap(), up.response)
}

/// A plain GET through wsgate to a ws-server.js backend; returns (name, response).
async fn name_via_get(
    gate: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, HttpResponse) {
    let r = within(
        5.0,
        "GET through wsgate",
        http_get_with(gate, path, headers),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    let body: Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    (body["name"].as_str().unwrap().to_string(), r)
}

#[tokio::test]
async fn cookie_affinity_pins_upgrades_and_polling_requests_to_one_backend() {
    let (_a, a) = node_backend("A", &[]).await;
    let (_b, b) = node_backend("B", &[]).await;
    let route = Route::new("sticky").backend(a).backend(b).set(
        "loadBalancing",
        &format!("{{policy: Cookie, cookie: {{name: {COOKIE}, ttl: 1h}}}}"),
    );
    let gate = Wsgate::start(&route.yaml()).await;

    // Requests without the cookie are spread and each is given a cookie naming the
    // backend that served it.
    let mut cookie_for: HashMap<String, String> = HashMap::new();
    for _ in 0..10 {
        let (name, r) = name_via_get(gate.listen, "/poll", &[]).await;
        let cookie = r
            .set_cookie(COOKIE)
            .unwrap_or_else(|| panic!("no {COOKIE} cookie: {r:?}"));
        cookie_for.entry(name).or_insert(cookie);
    }
    assert_eq!(
        cookie_for.len(),
        2,
        "10 new clients all went to {:?}",
        cookie_for.keys()
    );

    for (name, cookie) in &cookie_for {
        let header = format!("{COOKIE}={cookie}");
        let mixed = format!("theme=dark; {COOKIE}={cookie}; lang=en");
        for i in 0..5 {
            let (got, r) =
                name_via_get(gate.listen, &format!("/poll?n={i}"), &[("Cookie", &header)]).await;
            assert_eq!(&got, name, "polling request {i} with {name}'s cookie");
            assert!(
                r.set_cookie(COOKIE).is_none(),
                "a valid cookie is not set again: {r:?}"
            );
            let (got, _) = name_via_upgrade(gate.listen, None, "/ws", &[("Cookie", &header)]).await;
            assert_eq!(&got, name, "upgrade {i} with {name}'s cookie");
            let (got, _) = name_via_upgrade(gate.listen, None, "/ws", &[("Cookie", &mixed)]).await;
            assert_eq!(&got, name, "upgrade {i} with {name}'s cookie among others");
        }
    }

    // A cookie-less upgrade gets the cookie on its 101, and the polling requests
    // that follow with it reach the same backend.
    let (first, r) = name_via_upgrade(gate.listen, None, "/ws", &[]).await;
    let cookie = r
        .set_cookie(COOKIE)
        .unwrap_or_else(|| panic!("no {COOKIE} on the 101: {r:?}"));
    let header = format!("{COOKIE}={cookie}");
    for _ in 0..5 {
        assert_eq!(
            name_via_get(gate.listen, "/poll", &[("Cookie", &header)])
                .await
                .0,
            first
        );
    }

    // A cookie naming no backend is replaced, not an error.
    let (_, r) = name_via_get(
        gate.listen,
        "/poll",
        &[("Cookie", &format!("{COOKIE}=bogus"))],
    )
    .await;
    assert!(r.set_cookie(COOKIE).is_some_and(|c| c != "bogus"), "{r:?}");
}

#[tokio::test]
async fn consistent_hash_pins_by_header_query_and_client_ip() {
    let a = EchoBackend::start("A").await;
    let b = EchoBackend::start("B").await;
    let hashed = |name: &str, prefix: &str, on: &str| {
        Route::new(name)
            .prefix(prefix)
            .backend(a.addr)
            .backend(b.addr)
            .set(
                "loadBalancing",
                &format!("{{policy: ConsistentHash, hashOn: {on}}}"),
            )
    };
    let gate = Wsgate::start(&routes_yaml(&[
        hashed("by-header", "/h", "{header: X-User}"),
        hashed("by-query", "/q", "{query: room}"),
        hashed("by-ip", "/ip", "{clientIP: true}"),
    ]))
    .await;

    let mut by_header = BTreeSet::new();
    let mut by_query = BTreeSet::new();
    let mut by_ip = BTreeSet::new();
    for user in 0..16 {
        let id = format!("user-{user}");
        let (first, _) = name_via_upgrade(gate.listen, None, "/h", &[("X-User", &id)]).await;
        let room = format!("/q?room=room-{user}&t=1");
        let (first_q, _) = name_via_upgrade(gate.listen, None, &room, &[]).await;
        let ip: IpAddr = format!("127.0.0.{}", 10 + user).parse().unwrap();
        let (first_ip, _) = name_via_upgrade(gate.listen, Some(ip), "/ip", &[]).await;
        for again in 0..2 {
            let (n, _) = name_via_upgrade(gate.listen, None, "/h", &[("X-User", &id)]).await;
            assert_eq!(n, first, "{id} moved on request {again}");
            let other_t = room.replace("t=1", &format!("t={}", again + 2));
            let (n, _) = name_via_upgrade(gate.listen, None, &other_t, &[]).await;
            assert_eq!(n, first_q, "room-{user} moved on request {again}");
            let (n, _) = name_via_upgrade(gate.listen, Some(ip), "/ip", &[]).await;
            assert_eq!(n, first_ip, "client {ip} moved on request {again}");
        }
        by_header.insert(first);
        by_query.insert(first_q);
        by_ip.insert(first_ip);
    }
    assert_eq!(by_header.len(), 2, "16 users all hashed to {by_header:?}");
    assert_eq!(by_query.len(), 2, "16 rooms all hashed to {by_query:?}");
    assert_eq!(
        by_ip.len(),
        2,
        "16 client addresses all hashed to {by_ip:?}"
    );
}

/// Backend name → the Engine.IO session ids it saw requests for.
fn sids(peer: &Peer) -> BTreeSet<String> {
    peer.seen_named("request")
        .iter()
        .filter_map(|r| r["sid"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn socketio_polls_then_upgrades_through_wsgate_on_one_backend() {
    let (mut a, a_addr) = listening(Peer::node("socketio-server.js", &["--name", "A"])).await;
    let (mut b, b_addr) = listening(Peer::node("socketio-server.js", &["--name", "B"])).await;
    let route = Route::new("socketio").backend(a_addr).backend(b_addr).set(
        "loadBalancing",
        &format!("{{policy: Cookie, cookie: {{name: {COOKIE}}}}}"),
    );
    let gate = Wsgate::start(&route.yaml()).await;

    let mut sessions = vec![];
    for _ in 0..4 {
        let mut client = Peer::node("socketio-client.js", &[&format!("http://{}", gate.listen)]);
        let open = client.expect("engine-open", 15.0).await;
        assert_eq!(
            open["transport"], "polling",
            "Socket.IO starts on long-polling"
        );
        let upgrade = client.expect("upgrade", 10.0).await;
        assert_eq!(
            upgrade["transport"], "websocket",
            "then upgrades to WebSocket"
        );
        let ack = client.expect("ack", 10.0).await;
        assert_eq!(ack["msg"], "hello through wsgate");
        assert_eq!(ack["transport"], "websocket");
        assert_eq!(client.wait_exit(10.0).await, Some(0));
        sessions.push(ack["name"].as_str().unwrap().to_string());
    }

    // Every request of a session (polls, posts, the upgrade) went to the backend
    // that holds it: the other one never heard of it.
    a.drain(0.3, 2.0).await;
    b.drain(0.3, 2.0).await;
    let (sa, sb) = (sids(&a), sids(&b));
    assert!(
        sa.is_disjoint(&sb),
        "sessions split across backends: A {sa:?}, B {sb:?}"
    );
    assert_eq!(
        a.seen_named("connection").len() + b.seen_named("connection").len(),
        4
    );
    for (peer, name) in [(&a, "A"), (&b, "B")] {
        let upgraded = peer.seen_named("upgrade").len();
        let served = sessions.iter().filter(|s| *s == name).count();
        assert_eq!(
            upgraded, served,
            "backend {name} upgraded {upgraded} of its {served} sessions"
        );
    }
}

#[tokio::test]
async fn sockjs_polling_streaming_and_websocket_transports_work_through_wsgate() {
    let (mut a, a_addr) = listening(Peer::node("sockjs-server.js", &["--name", "A"])).await;
    let (mut b, b_addr) = listening(Peer::node("sockjs-server.js", &["--name", "B"])).await;
    let route = Route::new("sockjs").backend(a_addr).backend(b_addr).set(
        "loadBalancing",
        &format!("{{policy: Cookie, cookie: {{name: {COOKIE}}}}}"),
    );
    let gate = Wsgate::start(&route.yaml()).await;
    let url = format!("http://{}/echo", gate.listen);

    for transport in [
        "xhr-polling",
        "xhr-streaming",
        "websocket",
        "xhr-polling",
        "xhr-streaming",
    ] {
        let mut client = Peer::node("sockjs-client.js", &[&url, "--transport", transport]);
        let open = client.expect("open", 15.0).await;
        assert_eq!(open["transport"], transport);
        let closed = client.expect("close", 15.0).await;
        let replies: Vec<&str> = closed["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(replies.len(), 3, "{transport}: {closed}");
        let backend = &replies[0][..1];
        assert_eq!(
            replies,
            [
                format!("{backend}:one"),
                format!("{backend}:two"),
                format!("{backend}:three")
            ],
            "{transport}: every message of the session answered by one backend"
        );
        assert_eq!(closed["code"], 1000, "{transport}: {closed}");
        if transport != "websocket" {
            assert!(
                !client.seen_named("set-cookie").is_empty(),
                "{transport}: no affinity cookie"
            );
        }
    }

    // No SockJS session's requests were split between the backends.
    a.drain(0.3, 2.0).await;
    b.drain(0.3, 2.0).await;
    let sessions = |p: &Peer| -> BTreeSet<String> {
        p.seen_named("request")
            .iter()
            .filter_map(|r| {
                let url = r["url"].as_str()?;
                let parts: Vec<&str> = url.split('/').collect();
                // /echo/<server>/<session>/<transport>
                (parts.len() >= 5).then(|| parts[3].to_string())
            })
            .collect()
    };
    let (sa, sb) = (sessions(&a), sessions(&b));
    assert!(
        sa.is_disjoint(&sb),
        "sessions split across backends: A {sa:?}, B {sb:?}"
    );
    assert_eq!(sa.len() + sb.len(), 5, "A {sa:?}, B {sb:?}");
}

#[tokio::test]
async fn round_robin_follows_weights_and_least_connections_fills_the_emptier_backend() {
    let a = EchoBackend::start("A").await;
    let b = EchoBackend::start("B").await;
    let gate = Wsgate::start(&routes_yaml(&[
        Route::new("weighted")
            .prefix("/weighted")
            .weighted(a.addr, 3)
            .weighted(b.addr, 1)
            .set("loadBalancing", "{policy: RoundRobin}"),
        Route::new("least")
            .prefix("/least")
            .backend(a.addr)
            .backend(b.addr)
            .set("loadBalancing", "{policy: LeastConnections}"),
    ]))
    .await;

    let mut on_a = 0;
    for _ in 0..40 {
        let (name, _) = name_via_upgrade(gate.listen, None, "/weighted", &[]).await;
        on_a += (name == "A") as usize;
    }
    assert!(
        (24..=36).contains(&on_a),
        "weights 3:1 sent {on_a} of 40 tunnels to A"
    );

    // Four held tunnels split two and two; when A's two close, the next two go to A.
    let mut held: Vec<(String, RawWs)> = vec![];
    for _ in 0..4 {
        let mut up = raw_upgrade(gate.listen, "/least", &[]).await;
        assert_eq!(up.response.status, 101);
        up.ws
            .send(&Frame::text("__name__").masked([1, 2, 3, 4]))
            .await;
        let name = String::from_utf8(up.ws.recv_data(5.0).await.payload).unwrap();
        held.push((name, up.ws));
    }
    let count = |held: &[(String, RawWs)], n: &str| held.iter().filter(|(x, _)| x == n).count();
    assert_eq!(
        (count(&held, "A"), count(&held, "B")),
        (2, 2),
        "LeastConnections with 4 tunnels"
    );
    let mut kept = vec![];
    for (name, mut ws) in held {
        if name == "A" {
            ws.send(&Frame::close(1000, "").masked([1, 2, 3, 4])).await;
            ws.until_eof(5.0).await;
        } else {
            kept.push(ws);
        }
    }
    let least = [("namespace", "default"), ("route", "least")];
    gate.wait_metric(5.0, "wsgate_connections_active", &least, |v| v == 2.0)
        .await;
    for i in 0..2 {
        let mut up = raw_upgrade(gate.listen, "/least", &[]).await;
        up.ws
            .send(&Frame::text("__name__").masked([1, 2, 3, 4]))
            .await;
        let name = String::from_utf8(up.ws.recv_data(5.0).await.payload).unwrap();
        assert_eq!(name, "A", "new tunnel {i} goes to the backend with fewer");
        kept.push(up.ws);
    }
}
