//! The opening handshake (RFC 6455 §4): what a client gets when its upgrade is
//! refused, what the backend receives when it is not, and how each outcome is
//! counted.

mod common;

use std::time::Instant;

use common::*;
use tokio::io::AsyncWriteExt;

const ECHO: [(&str, &str); 2] = [("namespace", "default"), ("route", "echo")];

async fn outcome(gate: &Wsgate, labels: &[(&str, &str)], outcome: &str) -> f64 {
    let mut l = labels.to_vec();
    l.push(("outcome", outcome));
    gate.metrics().await.get("wsgate_connections_total", &l)
}

#[tokio::test]
async fn malformed_upgrades_get_400() {
    let backend = EchoBackend::start("echo").await;
    let gate = Wsgate::start(&Route::new("echo").backend(backend.addr).yaml()).await;
    let host = gate.listen.to_string();

    let no_key = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let bad_key = upgrade_request(&host, "/chat", "not-sixteen-bytes", &[]);
    let post = upgrade_request(&host, "/chat", &new_key(), &[("Content-Length", "0")])
        .replacen("GET", "POST", 1);
    for (what, req) in [
        ("no Sec-WebSocket-Key", no_key),
        ("a bad key", bad_key),
        ("POST", post),
    ] {
        let r = raw_request(gate.listen, &req).await.response;
        assert_eq!(r.status, 400, "an upgrade with {what} must get 400: {r:?}");
    }
    assert_eq!(
        backend.accepted(),
        0,
        "no malformed upgrade may reach the backend"
    );
    assert_eq!(outcome(&gate, &ECHO, "rejected").await, 3.0);
}

#[tokio::test]
async fn unsupported_version_gets_426_naming_13() {
    let backend = EchoBackend::start("echo").await;
    let gate = Wsgate::start(&Route::new("echo").backend(backend.addr).yaml()).await;
    let req = upgrade_request(&gate.listen.to_string(), "/chat", &new_key(), &[])
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let r = raw_request(gate.listen, &req).await.response;
    assert_eq!(r.status, 426, "{r:?}");
    assert_eq!(r.header("sec-websocket-version"), Some("13"), "{r:?}");
    assert_eq!(backend.accepted(), 0);
    assert_eq!(outcome(&gate, &ECHO, "rejected").await, 1.0);
}

#[tokio::test]
async fn origin_outside_the_allowlist_gets_403() {
    let backend = EchoBackend::start("echo").await;
    let route = Route::new("echo")
        .backend(backend.addr)
        .set("allowedOrigins", "[\"https://app.example.com\"]");
    let gate = Wsgate::start(&route.yaml()).await;

    // wscat, as a user would try it.
    let out = run_wscat(
        &[
            "-c",
            &gate.url("/chat"),
            "-o",
            "https://evil.example.com",
            "-x",
            "hi",
        ],
        15.0,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("403"),
        "wscat should report the 403: {stderr}"
    );

    let mut evil = node_client(
        &gate.url("/chat"),
        &["--origin", "https://evil.example.com"],
    );
    assert_eq!(
        evil.expect("unexpected-response", 10.0).await["status"],
        403
    );

    let mut good = node_client(&gate.url("/chat"), &["--origin", "https://app.example.com"]);
    good.expect("open", 10.0).await;
    good.send(text("allowed")).await;
    assert_eq!(good.expect("message", 5.0).await["data"], "allowed");

    assert_eq!(backend.accepted(), 1);
    assert_eq!(outcome(&gate, &ECHO, "rejected").await, 2.0);
}

#[tokio::test]
async fn unmatched_host_or_path_gets_404() {
    let backend = EchoBackend::start("echo").await;
    let route = Route::new("echo")
        .backend(backend.addr)
        .host("chat.example.com")
        .host("*.example.org")
        .prefix("/chat");
    let gate = Wsgate::start(&route.yaml()).await;
    let up = |host: &'static str, path: &'static str| {
        let gate_addr = gate.listen;
        async move {
            let req = upgrade_request(host, path, &new_key(), &[]);
            raw_request(gate_addr, &req).await.response.status
        }
    };
    assert_eq!(
        up("chat.example.com", "/other").await,
        404,
        "path outside the prefix"
    );
    assert_eq!(
        up("other.example.com", "/chat").await,
        404,
        "host not in hostnames"
    );
    assert_eq!(
        up("example.org", "/chat").await,
        404,
        "*.example.org does not match example.org"
    );
    assert_eq!(up("chat.example.com", "/chat/room").await, 101);
    assert_eq!(
        up("chat.example.com:8080", "/chat").await,
        101,
        "the port is not part of the host"
    );
    assert_eq!(
        up("eu.example.org", "/chat").await,
        101,
        "wildcard hostname"
    );
    assert_eq!(backend.accepted(), 3);
    // Requests that match no route are counted with empty route labels.
    let none = [("namespace", ""), ("route", "")];
    assert_eq!(outcome(&gate, &none, "rejected").await, 3.0);
}

#[tokio::test]
async fn subprotocol_outside_the_allowlist_gets_400() {
    let (mut backend, addr) = node_backend("proto", &[]).await;
    let route = Route::new("proto")
        .backend(addr)
        .set("subprotocols", "[\"chat.v1\", \"chat.v2\"]");
    let gate = Wsgate::start(&route.yaml()).await;

    let mut mqtt = node_client(&gate.url("/p"), &["--protocol", "mqtt"]);
    assert_eq!(
        mqtt.expect("unexpected-response", 10.0).await["status"],
        400
    );

    let mut ok = node_client(&gate.url("/p"), &["--protocol", "chat.v2"]);
    let open = ok.expect("open", 10.0).await;
    assert_eq!(
        open["protocol"], "chat.v2",
        "the backend's choice reaches the client"
    );
    let conn = backend.expect("connection", 5.0).await;
    assert_eq!(conn["headers"]["sec-websocket-protocol"], "chat.v2");
    assert_eq!(
        backend.seen_named("connection").len(),
        1,
        "the refused upgrade reached the backend"
    );
}

#[tokio::test]
async fn unreachable_backend_gets_502() {
    let dead = free_port(); // nothing listens there
    let gate = Wsgate::start(
        &Route::new("echo")
            .backend(format!("127.0.0.1:{dead}"))
            .yaml(),
    )
    .await;
    let mut client = node_client(&gate.url("/chat"), &[]);
    assert_eq!(
        client.expect("unexpected-response", 15.0).await["status"],
        502
    );
    assert_eq!(outcome(&gate, &ECHO, "backend_unavailable").await, 1.0);
}

#[tokio::test]
async fn wrong_accept_from_backend_gets_502() {
    let backend = RawBackend::bind().await;
    let gate = Wsgate::start(&Route::new("echo").backend(backend.addr).yaml()).await;
    let (up, _backend_side) = tokio::join!(raw_upgrade(gate.listen, "/chat", &[]), async {
        let req = backend.accept(10.0).await;
        req.respond(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: dGhpcyBpcyBub3QgdGhlIGtleQ==\r\n\r\n",
        )
        .await
    });
    assert_eq!(up.response.status, 502, "{:?}", up.response);
    assert_eq!(outcome(&gate, &ECHO, "backend_rejected").await, 1.0);
}

#[tokio::test]
async fn backend_refusal_status_reaches_the_client() {
    let (_backend, addr) = node_backend("refuser", &["--reject-status", "403"]).await;
    let gate = Wsgate::start(&Route::new("echo").backend(addr).yaml()).await;
    let mut client = node_client(&gate.url("/chat"), &[]);
    assert_eq!(
        client.expect("unexpected-response", 10.0).await["status"],
        403
    );
    assert_eq!(outcome(&gate, &ECHO, "backend_rejected").await, 1.0);
}

#[tokio::test]
async fn backend_that_never_answers_the_upgrade_times_out() {
    let backend = RawBackend::bind().await;
    let route = Route::new("echo")
        .backend(backend.addr)
        .set("timeouts", "{handshake: 1s}");
    let gate = Wsgate::start(&route.yaml()).await;
    let started = Instant::now();
    let (up, _silent) = tokio::join!(raw_upgrade(gate.listen, "/chat", &[]), backend.accept(10.0));
    let took = started.elapsed().as_secs_f64();
    assert!(
        (500..600).contains(&up.response.status),
        "a backend that never answers must end in a 5xx: {:?}",
        up.response
    );
    assert!(
        took < 3.5,
        "the handshake timeout is 1s but the client waited {took:.1}s"
    );
    assert_eq!(outcome(&gate, &ECHO, "timeout").await, 1.0);
}

#[tokio::test]
async fn forwarding_headers_reach_the_backend() {
    let (mut backend, addr) = node_backend("headers", &[]).await;
    let gate = Wsgate::start(&Route::new("echo").backend(addr).yaml()).await;
    let req = format!(
        "GET /chat?room=1 HTTP/1.1\r\nHost: chat.example.com:8443\r\nUpgrade: websocket\r\n\
         Connection: Upgrade, X-Hop-Secret\r\nX-Hop-Secret: must-not-pass\r\n\
         Keep-Alive: timeout=5\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\
         X-Forwarded-For: 203.0.113.7\r\nX-Custom: kept\r\nCookie: session=abc\r\n\
         Content-Length: 0\r\n\r\n",
        new_key()
    );
    let up = raw_request(gate.listen, &req).await;
    assert_eq!(up.response.status, 101, "{:?}", up.response);

    let conn = backend.expect("connection", 5.0).await;
    let h = &conn["headers"];
    assert_eq!(conn["url"], "/chat?room=1");
    assert_eq!(
        h["host"], "chat.example.com:8443",
        "Host as the client sent it"
    );
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "X-Forwarded-For is exactly the client: what an untrusted client sent is dropped"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "chat.example.com:8443");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["cookie"], "session=abc");
    assert!(
        h.get("x-hop-secret").is_none(),
        "a header named in Connection is hop-by-hop: {h}"
    );
    assert!(
        h.get("keep-alive").is_none(),
        "Keep-Alive is hop-by-hop: {h}"
    );
    assert!(
        h.get("content-length").is_none(),
        "the backend gets a head alone, with no length to wait for: {h}"
    );
}

/// The bytes after an upgrade's head are the tunnel's, so an upgrade that announces
/// a body is refused; and wsgate is no forward proxy: CONNECT gets 405.
#[tokio::test]
async fn an_upgrade_with_a_body_gets_400_and_a_plain_connect_405() {
    let backend = EchoBackend::start("echo").await;
    let gate = Wsgate::start(&Route::new("echo").backend(backend.addr).yaml()).await;
    let host = gate.listen.to_string();
    let with_body =
        upgrade_request(&host, "/chat", &new_key(), &[("Content-Length", "5")]) + "hello";
    let r = raw_request(gate.listen, &with_body).await.response;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "a WebSocket upgrade has no body\n"
    );
    let chunked = upgrade_request(
        &host,
        "/chat",
        &new_key(),
        &[("Transfer-Encoding", "chunked")],
    ) + "5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(
        raw_request(gate.listen, &chunked).await.response.status,
        400
    );

    let connect = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    let r = raw_request(gate.listen, connect).await.response;
    assert_eq!(r.status, 405, "{r:?}");
    assert!(
        r.header("allow").is_some_and(|a| !a.contains("CONNECT")),
        "{r:?}"
    );
    assert_eq!(backend.accepted(), 0, "nothing reached the backend");
    assert_eq!(outcome(&gate, &ECHO, "rejected").await, 2.0);
}

#[tokio::test]
async fn permessage_deflate_is_negotiated_end_to_end_with_python_websockets() {
    let (mut backend, addr) = python_backend("deflate-py", &[]).await;
    let gate = Wsgate::start(&Route::new("echo").backend(addr).yaml()).await;

    let mut client = python_client(&gate.url("/deflate"), &[]);
    let open = client.expect("open", 10.0).await;
    let ext = open["extensions"].as_str().unwrap_or_default();
    assert!(
        ext.contains("permessage-deflate"),
        "client's negotiated extensions: {open}"
    );
    let conn = backend.expect("connection", 5.0).await;
    let offered = conn["headers"]["sec-websocket-extensions"]
        .as_str()
        .unwrap_or_default();
    assert!(
        offered.contains("permessage-deflate"),
        "the offer reached the backend: {conn}"
    );
    let answered = conn["response_extensions"].as_str().unwrap_or_default();
    assert_eq!(
        answered, ext,
        "the client got the backend's answer unchanged"
    );

    // 120 KiB of repetitive text compresses to a few hundred bytes on the wire.
    let big = "wsgate relays compressed frames untouched. ".repeat(2800);
    client.send(text(&big)).await;
    let echo = client.expect("message", 10.0).await;
    assert_eq!(echo["len"], big.len());
    let m = backend.expect("message", 5.0).await;
    assert_eq!(m["sha1"], echo["sha1"]);

    // wsgate counted the compressed bytes it relayed, not the inflated message.
    let bytes = gate.metrics().await.get(
        "wsgate_bytes_total",
        &[ECHO[0], ECHO[1], ("direction", "client_to_backend")],
    );
    assert!(
        bytes > 0.0 && bytes < 20_000.0,
        "{bytes} bytes relayed for a {} byte message: it did not cross compressed",
        big.len()
    );
}

#[tokio::test]
async fn permessage_deflate_is_negotiated_end_to_end_with_node_ws() {
    let (mut backend, addr) = node_backend("deflate-node", &["--deflate"]).await;
    let gate = Wsgate::start(&Route::new("echo").backend(addr).yaml()).await;
    let mut client = node_client(&gate.url("/deflate"), &["--deflate"]);
    let open = client.expect("open", 10.0).await;
    assert!(
        open["extensions"]
            .as_str()
            .unwrap_or_default()
            .contains("permessage-deflate"),
        "{open}"
    );
    let conn = backend.expect("connection", 5.0).await;
    assert!(
        conn["extensions"]
            .as_str()
            .unwrap_or_default()
            .contains("permessage-deflate"),
        "{conn}"
    );
    let big = "compress me ".repeat(5000);
    client.send(text(&big)).await;
    assert_eq!(client.expect("message", 10.0).await["len"], big.len());
}

/// Upgrades through wsgate with `host` and asks the echo backend its name.
async fn backend_name(gate: &Wsgate, host: &str, path: &str) -> Result<String, u16> {
    let req = upgrade_request(host, path, &new_key(), &[]);
    let mut up = raw_request(gate.listen, &req).await;
    if up.response.status != 101 {
        return Err(up.response.status);
    }
    up.ws
        .send(&Frame::text("__name__").masked(rand::random()))
        .await;
    Ok(String::from_utf8(up.ws.recv_data(5.0).await.payload).unwrap())
}

#[tokio::test]
async fn longest_path_wins_and_exact_paths_match_only_themselves() {
    let root = EchoBackend::start("root").await;
    let api = EchoBackend::start("api").await;
    let exact = EchoBackend::start("exact").await;
    let chat = EchoBackend::start("chat-host").await;
    let gate = Wsgate::start(&routes_yaml(&[
        Route::new("root").backend(root.addr),
        Route::new("api").prefix("/api").backend(api.addr),
        Route::new("exact").exact("/api/ws").backend(exact.addr),
        Route::new("chat")
            .host("chat.example.com")
            .prefix("/api")
            .backend(chat.addr),
    ]))
    .await;
    let host = "app.example.com";
    assert_eq!(backend_name(&gate, host, "/").await, Ok("root".into()));
    assert_eq!(
        backend_name(&gate, host, "/anything").await,
        Ok("root".into())
    );
    assert_eq!(
        backend_name(&gate, host, "/api/other").await,
        Ok("api".into())
    );
    assert_eq!(
        backend_name(&gate, host, "/api/ws").await,
        Ok("exact".into())
    );
    assert_eq!(
        backend_name(&gate, host, "/api/ws?token=1").await,
        Ok("exact".into()),
        "the query is not part of the path"
    );
    assert_eq!(
        backend_name(&gate, host, "/api/ws/sub").await,
        Ok("api".into())
    );
    assert_eq!(
        backend_name(&gate, "chat.example.com", "/api/x").await,
        Ok("chat-host".into()),
        "a route for the host beats any-host routes"
    );
}

#[tokio::test]
async fn an_unreachable_backend_is_passed_over_while_another_answers() {
    let live = EchoBackend::start("live").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let route = Route::new("echo")
        .backend(&dead)
        .backend(live.addr)
        .set("loadBalancing", "{policy: RoundRobin}")
        .set("timeouts", "{connect: 1s}");
    let gate = Wsgate::start(&route.yaml()).await;
    for i in 0..6 {
        let name = backend_name(&gate, "app.example.com", "/").await;
        assert_eq!(name, Ok("live".into()), "upgrade {i} with one backend down");
    }
}

/// wsgate answers a connection's first upgrade itself and hands anything else to
/// hyper with the bytes already read: after a refused upgrade the same connection
/// still serves the next request, an upgrade included.
#[tokio::test]
async fn a_refused_upgrade_leaves_the_connection_to_the_next_request() {
    let backend = EchoBackend::start("echo").await;
    let route = Route::new("echo").backend(backend.addr).prefix("/chat");
    let gate = Wsgate::start(&route.yaml()).await;
    let host = gate.listen.to_string();
    let mut refused = raw_upgrade(gate.listen, "/nowhere", &[]).await;
    assert_eq!(refused.response.status, 404, "{:?}", refused.response);
    assert!(
        refused.response.header("date").is_some(),
        "a refusal carries a Date like hyper's answers: {:?}",
        refused.response
    );
    assert_eq!(
        String::from_utf8_lossy(&refused.response.body),
        "no route for this host and path\n"
    );

    let key = new_key();
    refused
        .ws
        .send_bytes(upgrade_request(&host, "/chat", &key, &[]).as_bytes())
        .await;
    let resp = within(5.0, "the second request's answer", async {
        read_response(&mut refused.ws.io, "GET").await.unwrap()
    })
    .await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(&*accept_key(&key))
    );
    let mut ws = refused.ws;
    ws.send(&Frame::text("again").masked([1, 2, 3, 4])).await;
    assert_eq!(ws.recv_data(5.0).await.payload, b"again");
}

/// A head that trickles in byte by byte is read to its end, and a frame the client
/// sent in the same write as the head's last bytes is relayed, not lost.
#[tokio::test]
async fn a_trickled_head_and_a_frame_sent_with_it_both_arrive() {
    let backend = EchoBackend::start("echo").await;
    let gate = Wsgate::start(&Route::new("echo").backend(backend.addr).yaml()).await;
    let key = new_key();
    let head = upgrade_request(&gate.listen.to_string(), "/chat", &key, &[]);
    let (first, last) = head.as_bytes().split_at(head.len() - 2);
    let mut io = tokio::io::BufReader::new(connect_from(None, gate.listen).await);
    for b in first {
        io.get_mut().write_all(&[*b]).await.unwrap();
        pause(0.002).await;
    }
    let mut tail = last.to_vec();
    tail.extend(Frame::text("early").masked([9, 8, 7, 6]).encode());
    io.get_mut().write_all(&tail).await.unwrap();
    let resp = within(5.0, "the upgrade's answer", async {
        read_response(&mut io, "GET").await.unwrap()
    })
    .await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let mut ws = RawWs { io };
    assert_eq!(ws.recv_data(5.0).await.payload, b"early");
}

/// A backend's refusal whose body has no length (chunked) reaches the client whole.
#[tokio::test]
async fn a_backend_refusal_with_a_chunked_body_reaches_the_client_whole() {
    let backend = RawBackend::bind().await;
    let gate = Wsgate::start(&Route::new("echo").backend(backend.addr).yaml()).await;
    let answer = tokio::spawn(async move {
        let req = backend.accept(5.0).await;
        let _ws = req
            .respond(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
                 6\r\nnot yo\r\n8\r\nur room\n\r\n0\r\n\r\n",
            )
            .await;
        pause(2.0).await;
    });
    let r = raw_upgrade(gate.listen, "/chat", &[]).await.response;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(String::from_utf8_lossy(&r.body), "not your room\n");
    assert_eq!(outcome(&gate, &ECHO, "backend_rejected").await, 1.0);
    answer.abort();
}
