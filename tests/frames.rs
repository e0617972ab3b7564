//! The relay is frame-aware but leaves frames alone: client frames reach the
//! backend byte for byte (mask kept), fragmented messages and control frames pass
//! through in order, close codes travel both ways, and oversized messages end the
//! tunnel with 1009.

mod common;

use common::*;
use serde_json::json;

/// The frames of `frames` as one byte string.
fn wire(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(Frame::encode).collect()
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i}: {:#04x} vs {:#04x}",
            a[i], b[i]
        ),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

#[tokio::test]
async fn frames_reach_the_other_side_byte_for_byte() {
    let backend = RawBackend::bind().await;
    let gate = Wsgate::start(
        &Route::new("raw")
            .backend(backend.addr)
            .no_keepalive()
            .yaml(),
    )
    .await;

    let (up, req) = tokio::join!(raw_upgrade(gate.listen, "/raw", &[]), async {
        let req = backend.accept(10.0).await;
        req.accept().await
    });
    assert_eq!(up.response.status, 101, "upgrade: {:?}", up.response);
    let (mut client, mut server) = (up.ws, req);

    // Client to backend: every length encoding, fragments with a ping between
    // them, an empty frame; each masked with its own key.
    let from_client = [
        Frame::text("hello").masked([1, 2, 3, 4]),
        Frame::binary(vec![7u8; 300]).masked([0xde, 0xad, 0xbe, 0xef]),
        Frame::binary((0..70_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
            .masked([9, 8, 7, 6]),
        Frame::text("frag-")
            .fin(false)
            .masked([0x10, 0x20, 0x30, 0x40]),
        Frame::ping("inside a message").masked([0xaa, 0xbb, 0xcc, 0xdd]),
        Frame::cont("ment").masked([5, 6, 7, 8]),
        Frame::binary(Vec::new()).masked([0, 0, 0, 0]),
    ];
    let bytes = wire(&from_client);
    client.send_bytes(&bytes).await;
    let got = server.read_bytes(bytes.len(), 10.0).await;
    assert!(
        got == bytes,
        "client frames changed on the way: {}",
        first_difference(&got, &bytes)
    );

    // Backend to client: unmasked, same shapes.
    let from_backend = [
        Frame::text("hello back"),
        Frame::binary(vec![3u8; 65_535]),
        Frame::binary(vec![4u8; 65_536]),
        Frame::binary(b"part one ".to_vec()).fin(false),
        Frame::pong("unsolicited"),
        Frame::cont(b"part two".to_vec()),
    ];
    let bytes = wire(&from_backend);
    server.send_bytes(&bytes).await;
    let got = client.read_bytes(bytes.len(), 10.0).await;
    assert!(
        got == bytes,
        "backend frames changed on the way: {}",
        first_difference(&got, &bytes)
    );
}

#[tokio::test]
async fn fragmented_message_with_interleaved_pings_is_reassembled_by_the_backend() {
    let (mut backend, addr) = node_backend("frag", &[]).await;
    let gate = Wsgate::start(&Route::new("frag").backend(addr).no_keepalive().yaml()).await;

    let mut up = raw_upgrade(gate.listen, "/frag", &[]).await;
    assert_eq!(up.response.status, 101);
    let k = [0x37, 0xfa, 0x21, 0x3d];
    for f in [
        Frame::text("Hel").fin(false).masked(k),
        Frame::ping("p1").masked(k),
        Frame::cont("lo, ").fin(false).masked(k),
        Frame::ping("p2").masked(k),
        Frame::cont("world").masked(k),
    ] {
        up.ws.send(&f).await;
        pause(0.05).await;
    }

    // The backend (Node ws) saw both pings and one whole message.
    let p1 = backend.expect("ping", 5.0).await;
    assert_eq!(p1["data"], "p1");
    let p2 = backend.expect("ping", 5.0).await;
    assert_eq!(p2["data"], "p2");
    let m = backend.expect("message", 5.0).await;
    assert_eq!(m["data"], "Hello, world");

    // The client got the backend's pongs and the echo.
    let mut pongs = vec![];
    let echo = within(5.0, "pongs and the echo", async {
        loop {
            let f = up.ws.recv(5.0).await;
            match f.opcode {
                OP_PONG => pongs.push(String::from_utf8(f.payload).unwrap()),
                OP_TEXT => return f,
                _ => panic!("unexpected frame {f:?}"),
            }
        }
    })
    .await;
    assert_eq!(String::from_utf8(echo.payload).unwrap(), "Hello, world");
    assert!(
        echo.mask.is_none(),
        "frames to the client must not be masked"
    );
    if pongs.len() < 2 {
        let f = up.ws.recv(5.0).await;
        assert_eq!(f.opcode, OP_PONG);
        pongs.push(String::from_utf8(f.payload).unwrap());
    }
    assert_eq!(pongs, ["p1", "p2"]);
}

#[tokio::test]
async fn application_pings_and_pongs_pass_through_both_ways() {
    let (mut backend, addr) = node_backend("pingpong", &[]).await;
    // Keepalive on (but slow): the proxy's own pings must not swallow the
    // application's.
    let route = Route::new("pingpong").backend(addr).set(
        "keepalive",
        "{interval: 30s, timeout: 10s, backend: {interval: 30s, timeout: 10s}}",
    );
    let gate = Wsgate::start(&route.yaml()).await;

    let mut client = node_client(&gate.url("/pp"), &[]);
    client.expect("open", 10.0).await;
    backend.expect("connection", 5.0).await;

    client
        .send(json!({"op": "ping", "data": "from-client"}))
        .await;
    assert_eq!(backend.expect("ping", 5.0).await["data"], "from-client");
    assert_eq!(client.expect("pong", 5.0).await["data"], "from-client");

    backend
        .send(json!({"op": "ping", "data": "from-backend"}))
        .await;
    assert_eq!(client.expect("ping", 5.0).await["data"], "from-backend");
    assert_eq!(backend.expect("pong", 5.0).await["data"], "from-backend");

    // Unsolicited pongs (RFC 6455 §5.5.3 allows them as heartbeats) pass too.
    client
        .send(json!({"op": "pong", "data": "heartbeat"}))
        .await;
    assert_eq!(backend.expect("pong", 5.0).await["data"], "heartbeat");
}

#[tokio::test]
async fn close_codes_and_reasons_propagate_both_ways() {
    let (mut backend, addr) = node_backend("closer", &[]).await;
    let gate = Wsgate::start(&Route::new("closer").backend(addr).yaml()).await;

    // The client closes.
    let mut client = node_client(&gate.url("/a"), &[]);
    client.expect("open", 10.0).await;
    let conn = backend.expect("connection", 5.0).await;
    client
        .send(json!({"op": "close", "code": 4001, "reason": "client says bye"}))
        .await;
    let closed = backend.expect("close", 5.0).await;
    assert_eq!(closed["id"], conn["id"]);
    assert_eq!(
        (closed["code"].clone(), closed["reason"].clone()),
        (4001.into(), "client says bye".into())
    );
    let echoed = client.expect("close", 5.0).await;
    assert_eq!(
        echoed["code"], 4001,
        "the backend's answering Close reaches the client"
    );

    // The backend closes.
    let mut client = node_client(&gate.url("/b"), &[]);
    client.expect("open", 10.0).await;
    let conn = backend.expect("connection", 5.0).await;
    backend
        .send(json!({"op": "close", "id": conn["id"], "code": 4002, "reason": "backend says bye"}))
        .await;
    let closed = client.expect("close", 5.0).await;
    assert_eq!(
        (closed["code"].clone(), closed["reason"].clone()),
        (4002.into(), "backend says bye".into())
    );
    assert_eq!(backend.expect("close", 5.0).await["code"], 4002);

    let route = [("namespace", "default"), ("route", "closer")];
    let m = gate
        .wait_metric(5.0, "wsgate_connections_active", &route, |v| v == 0.0)
        .await;
    assert_eq!(m, 0.0);
    let m = gate.metrics().await;
    let closes = |code, initiator| {
        m.get(
            "wsgate_closes_total",
            &[route[0], route[1], ("code", code), ("initiator", initiator)],
        )
    };
    assert_eq!(closes("4001", "client"), 1.0, "{}", m.text);
    assert_eq!(closes("4002", "backend"), 1.0, "{}", m.text);
}

#[tokio::test]
async fn oversized_messages_close_both_sides_with_1009() {
    let (mut backend, addr) = node_backend("limit", &[]).await;
    let route = Route::new("limit")
        .backend(addr)
        .no_keepalive()
        .set("limits", "{maxMessageBytes: 1024}");
    let gate = Wsgate::start(&route.yaml()).await;

    // Under the limit: echoed.
    let mut client = node_client(&gate.url("/limit"), &[]);
    client.expect("open", 10.0).await;
    client.send(binary(&[1u8; 1000])).await;
    assert_eq!(client.expect("message", 5.0).await["len"], 1000);

    // Over it in one frame: Close 1009 to both sides.
    client.send(binary(&[2u8; 2000])).await;
    let closed = client.expect("close", 5.0).await;
    assert_eq!(closed["code"], 1009, "client: {closed}");
    let closed = backend.expect("close", 5.0).await;
    assert_eq!(closed["code"], 1009, "backend: {closed}");
    assert!(
        backend
            .seen_named("message")
            .iter()
            .all(|m| m["len"] != 2000),
        "the oversized message reached the backend"
    );

    // Over it across fragments (each under the limit): the message counts.
    let mut up = raw_upgrade(gate.listen, "/limit", &[]).await;
    assert_eq!(up.response.status, 101);
    up.ws
        .send(
            &Frame::text(&"a".repeat(600))
                .fin(false)
                .masked([1, 1, 1, 1]),
        )
        .await;
    up.ws
        .send(&Frame::cont("b".repeat(600)).masked([2, 2, 2, 2]))
        .await;
    let f = up.ws.recv_data(5.0).await;
    assert_eq!(f.close_code(), Some(1009), "raw client: {f:?}");
    let closed = backend.expect("close", 5.0).await;
    assert_eq!(
        closed["code"], 1009,
        "backend of the fragmented message: {closed}"
    );
}
