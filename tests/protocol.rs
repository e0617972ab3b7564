//! RFC 6455 on each leg: wsgate is the server to the client and the client to the
//! backend. A frame that breaks the rules (unmasked from the client, masked from the
//! backend, RSV bits no negotiated extension defines, a reserved opcode, a malformed
//! control frame, an invalid Close payload) fails the connection: Close 1002 (1007
//! for a Close reason that is not UTF-8) toward the offender, Close 1001 toward the
//! other side, and the bad frame never reaches the other side. Raw sockets on both
//! ends, so every byte each peer receives is checked.

mod common;

use common::*;

const K: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A tunnel through wsgate between two raw sockets: (client, backend). The client
/// offers `extensions` (if any) and the backend's 101 accepts them.
async fn tunnel(gate: &Wsgate, backend: &RawBackend, extensions: Option<&str>) -> (RawWs, RawWs) {
    let extra: Vec<(&str, &str)> = extensions
        .map(|e| ("Sec-WebSocket-Extensions", e))
        .into_iter()
        .collect();
    let (up, server) = tokio::join!(raw_upgrade(gate.listen, "/p", &extra), async {
        let req = backend.accept(10.0).await;
        let key = req.header("sec-websocket-key").expect("key").to_string();
        let ext = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        req.respond(&format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{ext}\r\n",
            accept_key(&key)
        ))
        .await
    });
    assert_eq!(up.response.status, 101, "upgrade: {:?}", up.response);
    (up.ws, server)
}

async fn start(name: &str, backend: &RawBackend) -> Wsgate {
    Wsgate::start(&Route::new(name).backend(backend.addr).no_keepalive().yaml()).await
}

/// A valid frame goes through byte for byte; then `bad` from the client fails the
/// tunnel: the client gets `client_code`, the backend Close 1001 and nothing of `bad`.
async fn client_sends(gate: &Wsgate, backend: &RawBackend, bad: &Frame, client_code: u16) {
    let (mut client, mut server) = tunnel(gate, backend, None).await;
    let good = Frame::text("before").masked(K).encode();
    client.send_bytes(&good).await;
    assert_eq!(server.read_bytes(good.len(), 5.0).await, good);
    client.send(bad).await;
    let close = client.expect_close_then_eof(client_code, 5.0).await;
    assert!(close.mask.is_none(), "frames to the client are unmasked");
    let close = server.expect_close_then_eof(1001, 5.0).await;
    assert!(close.mask.is_some(), "frames to the backend are masked");
}

/// The same from the backend's side.
async fn backend_sends(gate: &Wsgate, backend: &RawBackend, bad: &Frame, backend_code: u16) {
    let (mut client, mut server) = tunnel(gate, backend, None).await;
    let good = Frame::binary(vec![9u8; 300]).encode();
    server.send_bytes(&good).await;
    assert_eq!(client.read_bytes(good.len(), 5.0).await, good);
    server.send(bad).await;
    server.expect_close_then_eof(backend_code, 5.0).await;
    client.expect_close_then_eof(1001, 5.0).await;
}

#[tokio::test]
async fn unmasked_client_frame_fails_the_client_with_1002_and_never_reaches_the_backend() {
    let backend = RawBackend::bind().await;
    let gate = start("mask", &backend).await;
    client_sends(&gate, &backend, &Frame::text("not masked"), 1002).await;
    client_sends(&gate, &backend, &Frame::ping("not masked"), 1002).await;

    let m = gate.metrics().await;
    let closes = m.get(
        "wsgate_closes_total",
        &[
            ("namespace", "default"),
            ("route", "mask"),
            ("code", "1002"),
            ("initiator", "proxy"),
        ],
    );
    assert_eq!(closes, 2.0, "{}", m.text);
}

#[tokio::test]
async fn masked_backend_frame_fails_the_backend_with_1002_and_the_client_gets_1001() {
    let backend = RawBackend::bind().await;
    let gate = start("mask", &backend).await;
    backend_sends(&gate, &backend, &Frame::text("masked").masked(K), 1002).await;
}

#[tokio::test]
async fn rsv_bits_without_a_negotiated_extension_fail_the_sender() {
    let backend = RawBackend::bind().await;
    let gate = start("rsv", &backend).await;
    for rsv in [0b001, 0b010, 0b100] {
        let mut f = Frame::text("reserved bits").masked(K);
        f.rsv = rsv;
        client_sends(&gate, &backend, &f, 1002).await;
    }
    let mut f = Frame::binary(b"compressed?".to_vec());
    f.rsv = 0b100;
    backend_sends(&gate, &backend, &f, 1002).await;
}

#[tokio::test]
async fn rsv1_flows_both_ways_when_permessage_deflate_was_negotiated() {
    let backend = RawBackend::bind().await;
    let gate = start("deflate", &backend).await;
    let ext = Some("permessage-deflate; client_max_window_bits");
    let (mut client, mut server) = tunnel(&gate, &backend, ext).await;

    // "Hello" compressed (RFC 7692 §7.2.3.1), split in two frames: RSV1 on the first.
    let mut first = Frame::text("").masked(K).fin(false);
    first.payload = vec![0xf2, 0x48, 0xcd];
    first.rsv = 0b100;
    let rest = Frame::cont(vec![0xc9, 0xc9, 0x07, 0x00]).masked(K);
    let bytes = [first.encode(), rest.encode()].concat();
    client.send_bytes(&bytes).await;
    assert_eq!(server.read_bytes(bytes.len(), 5.0).await, bytes);

    let mut back = Frame::binary(vec![0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    back.rsv = 0b100;
    let bytes = back.encode();
    server.send_bytes(&bytes).await;
    assert_eq!(client.read_bytes(bytes.len(), 5.0).await, bytes);

    // RSV1 on a continuation, or RSV2 at all, is still undefined.
    let mut bad = Frame::text("x").masked(K);
    bad.rsv = 0b010;
    client.send(&bad).await;
    client.expect_close_then_eof(1002, 5.0).await;
    server.expect_close_then_eof(1001, 5.0).await;
}

#[tokio::test]
async fn invalid_close_payloads_fail_with_1002_or_1007_and_valid_ones_pass() {
    let backend = RawBackend::bind().await;
    let gate = start("close", &backend).await;
    let one_byte = Frame::new(OP_CLOSE, vec![0x03]);
    client_sends(&gate, &backend, &one_byte.clone().masked(K), 1002).await;
    for code in [999, 1004, 1005, 1006, 1015, 2999, 5000] {
        client_sends(&gate, &backend, &Frame::close(code, "").masked(K), 1002).await;
    }
    let mut not_utf8 = Frame::close(1000, "bye");
    not_utf8.payload.push(0xc3);
    client_sends(&gate, &backend, &not_utf8.clone().masked(K), 1007).await;
    backend_sends(&gate, &backend, &one_byte, 1002).await;
    backend_sends(&gate, &backend, &Frame::close(1005, ""), 1002).await;
    backend_sends(&gate, &backend, &not_utf8, 1007).await;

    // Valid closes pass byte for byte (the masked one still masked) and are answered.
    for close in [
        Frame::close(1000, "bye"),
        Frame::close(4999, "ça va"),
        Frame::new(OP_CLOSE, Vec::new()),
    ] {
        let (mut client, mut server) = tunnel(&gate, &backend, None).await;
        let bytes = close.clone().masked(K).encode();
        client.send_bytes(&bytes).await;
        assert_eq!(server.read_bytes(bytes.len(), 5.0).await, bytes);
        let answer = close.encode();
        server.send_bytes(&answer).await;
        assert_eq!(client.read_bytes(answer.len(), 5.0).await, answer);
    }
}

#[tokio::test]
async fn reserved_opcodes_and_malformed_control_frames_fail_the_sender() {
    let backend = RawBackend::bind().await;
    let gate = start("ctl", &backend).await;
    for bad in [
        Frame::new(0x3, b"reserved data".to_vec()),
        Frame::new(0xB, b"reserved control".to_vec()),
        Frame::ping("fragmented").fin(false),
        Frame::pong(vec![0u8; 126]),
        Frame::cont("no message"),
    ] {
        client_sends(&gate, &backend, &bad.clone().masked(K), 1002).await;
        backend_sends(&gate, &backend, &bad, 1002).await;
    }
}
