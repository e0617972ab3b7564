//! The close handshake of WebSockets over HTTP/2 (RFC 8441), over h2c, from Node's
//! `http2` client (`peers/h2-ws-client.js`, `ws` framing) and Python's `h2`
//! (`peers/h2_client.py close`): whichever side closes (the client, the backend or
//! wsgate: drain, keepalive, token expiry, rate limit, rebalance) the other side
//! sees the code that was sent, and the stream ends with END_STREAM after the
//! Close frame. Clients end their own stream either with their Close frame, as
//! Chromium does (issue 24: it then reported 1006 for every close it started), or
//! after the server's Close, as `ws` does. `browser_h2.rs` has Chromium itself over
//! TLS.

mod common;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

/// `node h2-ws-client.js URL ARGS...`
fn node_h2(url: &str, args: &[&str]) -> Peer {
    let mut a = vec![url];
    a.extend_from_slice(args);
    Peer::node("h2-ws-client.js", &a)
}

/// `python h2_client.py ADDR close --path PATH ARGS...`
fn python_h2(addr: SocketAddr, path: &str, args: &[&str]) -> Peer {
    let addr = addr.to_string();
    let mut a = vec![addr.as_str(), "close", "--path", path];
    a.extend_from_slice(args);
    Peer::python("h2_client.py", &a)
}

/// (code, reason) of a close event.
fn code_reason(c: &Value) -> (Option<u64>, Option<&str>) {
    (c["code"].as_u64(), c["reason"].as_str())
}

/// Event `name` on Node tunnel `id`, among those already read or the next ones
/// (tunnels close in any order, and `ws` reports its close after the stream's).
async fn node_event(client: &mut Peer, name: &str, id: u64) -> Value {
    let seen = client.seen_named(name).into_iter().find(|v| v["id"] == id);
    match seen {
        Some(v) => v.clone(),
        None => event_on(client, name, id, 10.0).await,
    }
}

/// Node tunnel `id`'s HTTP/2 stream closed without RST_STREAM CANCEL (rstCode 0:
/// END_STREAM both ways, or NO_ERROR).
async fn node_stream_closed(client: &mut Peer, id: u64) {
    let s = node_event(client, "stream-close", id).await;
    assert_eq!(s["rstCode"], 0, "tunnel {id}'s stream: {s}");
}

/// Node tunnel `id` got the server's Close `code`/`reason`, and its stream closed
/// cleanly.
async fn node_saw_close(client: &mut Peer, id: u64, code: u64, reason: &str) {
    let c = node_event(client, "close", id).await;
    assert_eq!(
        code_reason(&c),
        (Some(code), Some(reason)),
        "tunnel {id}: {c}"
    );
    node_stream_closed(client, id).await;
}

/// A Python client got the server's Close `code`/`reason`, then END_STREAM (not
/// RST_STREAM).
async fn python_saw_close(client: &mut Peer, code: u64, reason: &str) {
    let c = client.expect("close", 10.0).await;
    assert_eq!(code_reason(&c), (Some(code), Some(reason)), "{c}");
    let end = client.expect("stream-end", 10.0).await;
    assert_eq!(
        end["reset"], false,
        "the stream ends with END_STREAM: {end}"
    );
    assert_eq!(client.wait_exit(5.0).await, Some(0));
}

/// The codes of the next `n` closes a backend reports, sorted.
async fn backend_closes(backend: &mut Peer, n: usize) -> Vec<u64> {
    let mut codes = vec![];
    for _ in 0..n {
        let c = backend.expect("close", 10.0).await;
        codes.push(c["code"].as_u64().unwrap());
    }
    codes.sort();
    codes
}

/// Waits until wsgate has counted `n` closes with `code` by `initiator`.
async fn counted(gate: &Wsgate, code: &str, initiator: &str, n: f64) {
    let labels = [("code", code), ("initiator", initiator)];
    gate.wait_metric(5.0, "wsgate_closes_total", &labels, |v| v == n)
        .await;
}

#[tokio::test]
async fn node_client_closes_with_1000_and_4000_ending_its_stream_with_or_after_the_close() {
    let (mut backend, addr) = node_backend("A", &[]).await;
    let gate = Wsgate::start(&Route::new("a").backend(addr).yaml()).await;
    let url = format!("http://{}/node", gate.listen);
    let mut client = node_h2(&url, &["--count", "4"]);
    opened(&mut client, 4).await;
    // Tunnels 2 and 3 end their stream right after their Close, as Chromium does.
    let cases = [
        (0, 1000, false),
        (1, 4000, false),
        (2, 1000, true),
        (3, 4000, true),
    ];
    for (id, code, end) in cases {
        let reason = format!("node bye {id}");
        client
            .send(json!({"op": "close", "id": id, "code": code, "reason": reason, "end": end}))
            .await;
    }
    for (id, code, _) in cases {
        // `ws` answers with the client's code and reason.
        node_saw_close(&mut client, id, code, &format!("node bye {id}")).await;
    }
    assert_eq!(
        backend_closes(&mut backend, 4).await,
        [1000, 1000, 4000, 4000]
    );
    counted(&gate, "1000", "client", 2.0).await;
    counted(&gate, "4000", "client", 2.0).await;
    assert!(client.seen_named("session-close").is_empty());
}

#[tokio::test]
async fn python_client_closes_with_1000_and_4000_ending_its_stream_with_or_after_the_close() {
    let (mut backend, addr) = node_backend("A", &[]).await;
    let gate = Wsgate::start(&Route::new("a").backend(addr).yaml()).await;
    for (code, end) in [(1000, true), (4000, true), (1000, false), (4000, false)] {
        let (code_s, reason) = (code.to_string(), format!("python bye {code}"));
        let mut args = vec!["--code", &code_s, "--reason", &reason];
        if end {
            args.push("--end-stream");
        }
        let mut client = python_h2(gate.listen, "/py", &args);
        client.expect("message", 10.0).await;
        python_saw_close(&mut client, code, &reason).await;
        let c = backend.expect("close", 5.0).await;
        assert_eq!(code_reason(&c), (Some(code), Some(reason.as_str())), "{c}");
    }
    counted(&gate, "1000", "client", 2.0).await;
    counted(&gate, "4000", "client", 2.0).await;
}

#[tokio::test]
async fn the_backends_close_with_1000_and_4001_reaches_node_and_python_clients() {
    let (mut backend, addr) = node_backend("A", &[]).await;
    let gate = Wsgate::start(&Route::new("a").backend(addr).yaml()).await;
    let mut node = node_h2(&format!("http://{}/node", gate.listen), &["--count", "2"]);
    opened(&mut node, 2).await;
    let mut py_end = python_h2(gate.listen, "/py-end", &["--wait", "--end-stream"]);
    py_end.expect("message", 10.0).await;
    let mut py = python_h2(gate.listen, "/py", &["--wait"]);
    py.expect("message", 10.0).await;

    // The backend's tunnel ids by path (the Node tunnels in the order they opened).
    let mut ids: Vec<(String, Value)> = vec![];
    for _ in 0..4 {
        let c = backend.expect("connection", 5.0).await;
        ids.push((c["url"].as_str().unwrap().to_string(), c["id"].clone()));
    }
    let close = |path: &str, nth: usize, code: u64| {
        let id = ids
            .iter()
            .filter(|(p, _)| p == path)
            .nth(nth)
            .unwrap()
            .1
            .clone();
        json!({"op": "close", "id": id, "code": code, "reason": format!("backend bye {code}")})
    };
    for cmd in [
        close("/node", 0, 1000),
        close("/node", 1, 4001),
        close("/py-end", 0, 1000),
        close("/py", 0, 4001),
    ] {
        backend.send(cmd).await;
    }
    let mut seen = vec![];
    for id in 0..2 {
        let c = node_event(&mut node, "close", id).await;
        seen.push(c["code"].as_u64().unwrap());
        node_stream_closed(&mut node, id).await;
    }
    seen.sort();
    assert_eq!(seen, [1000, 4001], "the Node tunnels' closes");
    python_saw_close(&mut py_end, 1000, "backend bye 1000").await;
    python_saw_close(&mut py, 4001, "backend bye 4001").await;
    // Each client answered with the backend's code.
    assert_eq!(
        backend_closes(&mut backend, 4).await,
        [1000, 1000, 4001, 4001]
    );
    counted(&gate, "1000", "backend", 2.0).await;
    counted(&gate, "4001", "backend", 2.0).await;
}

#[tokio::test]
async fn sigterm_closes_node_and_python_tunnels_with_1001() {
    let (mut backend, addr) = node_backend("A", &[]).await;
    let opts = Options {
        drain_timeout: Some("2s".into()),
        ..Options::default()
    };
    let mut gate = Wsgate::start_with(opts, &Route::new("a").backend(addr).yaml()).await;
    let mut node = node_h2(&format!("http://{}/node", gate.listen), &[]);
    opened(&mut node, 1).await;
    let mut py = python_h2(gate.listen, "/py", &["--wait", "--end-stream"]);
    py.expect("message", 10.0).await;

    gate.sigterm();
    node_saw_close(&mut node, 0, 1001, "server shutting down").await;
    python_saw_close(&mut py, 1001, "server shutting down").await;
    let goaway = &py.seen_named("goaway")[0];
    assert_eq!(goaway["error"], "NO_ERROR", "{goaway}");
    assert_eq!(backend_closes(&mut backend, 2).await, [1001, 1001]);
    assert_eq!(gate.wait_exit(10.0).await.code(), Some(0));
}

#[tokio::test]
async fn a_backend_missing_keepalive_pings_gets_node_and_python_tunnels_closed_with_1001() {
    let (mut backend, addr) = node_backend("A", &["--no-auto-pong"]).await;
    let route = Route::new("a").backend(addr).set(
        "keepalive",
        "{interval: 30s, timeout: 10s, backend: {interval: 500ms, timeout: 1s}}",
    );
    let gate = Wsgate::start(&route.yaml()).await;
    let mut node = node_h2(&format!("http://{}/node", gate.listen), &[]);
    opened(&mut node, 1).await;
    let mut py = python_h2(gate.listen, "/py", &["--wait", "--end-stream"]);
    py.expect("message", 10.0).await;

    let why = "peer did not answer keepalive ping";
    node_saw_close(&mut node, 0, 1001, why).await;
    python_saw_close(&mut py, 1001, why).await;
    assert_eq!(backend_closes(&mut backend, 2).await, [1001, 1001]);
    counted(&gate, "1001", "proxy", 2.0).await;
}

/// An Ed25519 key, its JWKS file and a route `a` that takes tokens from the query.
fn jwt_route(addr: SocketAddr, dir: &std::path::Path) -> (Route, EncodingKey) {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA",
                     "x": B64.encode(pair.public_key().as_ref())});
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap();
    let auth = format!(
        "{{jwt: {{issuer: \"https://id.example.com\", audiences: [chat], \
         jwks: {{file: \"{}\"}}, tokenFrom: [{{query: access_token}}]}}}}",
        jwks.display()
    );
    let route = Route::new("a").backend(addr).set("auth", &auth);
    (route, EncodingKey::from_ed_der(pkcs8.as_ref()))
}

#[tokio::test]
async fn token_expiry_closes_node_and_python_tunnels_with_1008() {
    let (mut backend, addr) = node_backend("A", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (route, key) = jwt_route(addr, dir.path());
    let gate = Wsgate::start(&route.yaml()).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed".into());
    let claims = json!({"iss": "https://id.example.com", "aud": "chat", "sub": "alice",
                        "exp": now + 3});
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let path = format!("/chat?access_token={token}");
    let mut node = node_h2(&format!("http://{}{path}", gate.listen), &[]);
    opened(&mut node, 1).await;
    let mut py = python_h2(
        gate.listen,
        &path,
        &["--wait", "--end-stream", "--seconds", "10"],
    );
    py.expect("message", 10.0).await;

    node_saw_close(&mut node, 0, 1008, "token expired").await;
    python_saw_close(&mut py, 1008, "token expired").await;
    assert_eq!(backend_closes(&mut backend, 2).await, [1008, 1008]);
    counted(&gate, "1008", "proxy", 2.0).await;
}

#[tokio::test]
async fn a_node_tunnel_above_its_message_rate_is_closed_with_1008() {
    let (mut backend, addr) = node_backend("A", &[]).await;
    let route = Route::new("a").backend(addr).no_keepalive().set(
        "limits",
        "{messagesPerSecond: 5, burst: 3, onExceed: Close}",
    );
    let gate = Wsgate::start(&route.yaml()).await;
    let mut node = node_h2(&format!("http://{}/node", gate.listen), &[]);
    opened(&mut node, 1).await;
    for i in 0..10 {
        node.send(json!({"op": "text", "data": format!("m{i}")}))
            .await;
    }
    node_saw_close(&mut node, 0, 1008, "rate limit exceeded").await;
    assert_eq!(backend_closes(&mut backend, 1).await, [1008]);
    counted(&gate, "1008", "proxy", 1.0).await;
}

#[tokio::test]
async fn rebalancing_closes_a_node_tunnel_with_1012() {
    let (_a, a) = node_backend("A", &[]).await;
    let (_b, b) = node_backend("B", &[]).await;
    let route = |backends: &[SocketAddr]| {
        let mut r = Route::new("a")
            .no_keepalive()
            .set("rebalance", "{maxFraction: 0.5, over: 1s}");
        for addr in backends {
            r = r.backend(addr);
        }
        r.yaml()
    };
    let gate = Wsgate::start(&route(&[a])).await;
    let mut node = node_h2(&format!("http://{}/node", gate.listen), &["--count", "2"]);
    opened(&mut node, 2).await;
    // B joins: one of the two tunnels on A is moved (Close 1012: reconnect).
    gate.reload(&route(&[a, b]), "success").await;
    let c = node
        .expect_where(10.0, "a tunnel's close", |v| v["event"] == "close")
        .await;
    let id = c["id"].as_u64().unwrap();
    assert_eq!(
        code_reason(&c),
        (Some(1012), Some("rebalancing: please reconnect")),
        "{c}"
    );
    node_stream_closed(&mut node, id).await;
    counted(&gate, "1012", "proxy", 1.0).await;
}
