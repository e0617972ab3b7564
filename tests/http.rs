//! Plain HTTP next to WebSocket: with `proxyHttp` on, non-upgrade requests reach the
//! route's backends and responses stream through (long-polling and streaming
//! fallbacks depend on it); with it off they get 426 Upgrade Required.

mod common;

use std::time::Instant;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test]
async fn plain_http_requests_reach_the_backend() {
    let (_backend, addr) = node_backend("web", &[]).await;
    let gate = Wsgate::start(&Route::new("web").backend(addr).yaml()).await;

    let r = http_get_with(
        gate.listen,
        "/index.html?x=1",
        &[("X-Forwarded-For", "198.51.100.2")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("x-backend"),
        Some("web"),
        "the backend's headers come back"
    );
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["method"], "GET");
    assert_eq!(body["url"], "/index.html?x=1");
    assert_eq!(
        body["headers"]["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's X-Forwarded-For is dropped, not appended to"
    );
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    assert_eq!(body["headers"]["x-real-ip"], "127.0.0.1");

    // A request body goes through too (SockJS and Socket.IO POST their messages).
    let post = "POST /submit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world";
    let r = http_raw(gate.listen, post).await.unwrap();
    assert_eq!(r.status, 200);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["headers"]["content-length"], "11");

    let m = gate.metrics().await;
    let labels = [("namespace", "default"), ("route", "web"), ("code", "200")];
    assert_eq!(
        m.get("wsgate_http_requests_total", &labels),
        2.0,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn http_responses_are_streamed_not_buffered() {
    let (_backend, addr) = node_backend("stream", &[]).await;
    let gate = Wsgate::start(&Route::new("stream").backend(addr).yaml()).await;

    let mut s = tokio::net::TcpStream::connect(gate.listen).await.unwrap();
    s.write_all(b"GET /stream?delay=1500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut r = BufReader::new(s);
    let (status, _) = within(5.0, "the response head", read_head(&mut r))
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The backend writes "chunk-1" at once and "chunk-2" 1.5 s later: the first
    // must arrive well before the second is even written.
    let mut body = String::new();
    within(
        1.2,
        "the first chunk while the response is still open",
        async {
            while !body.contains("chunk-1") {
                let mut line = String::new();
                assert!(
                    r.read_line(&mut line).await.unwrap() > 0,
                    "response ended early"
                );
                body += &line;
            }
        },
    )
    .await;
    let first = started.elapsed().as_secs_f64();
    within(5.0, "the second chunk", async {
        while !body.contains("chunk-2") {
            let mut line = String::new();
            assert!(
                r.read_line(&mut line).await.unwrap() > 0,
                "response ended early: {body:?}"
            );
            body += &line;
        }
    })
    .await;
    assert!(
        first < 1.0,
        "the first chunk took {first:.2}s: the response was buffered"
    );
}

#[tokio::test]
async fn plain_http_gets_426_when_proxy_http_is_off() {
    let (mut backend, addr) = node_backend("wsonly", &[]).await;
    let gate = Wsgate::start(
        &Route::new("wsonly")
            .backend(addr)
            .set("proxyHttp", "false")
            .yaml(),
    )
    .await;

    // The route exists but only for WebSocket: 426 tells the client to upgrade
    // (RFC 9110 §15.5.22), where 404 would claim there is nothing here.
    let r = http_get(gate.listen, "/page").await.unwrap();
    assert_eq!(r.status, 426, "{r:?}");
    assert_eq!(r.header("upgrade"), Some("websocket"), "{r:?}");
    // Upgrades on the same route still work.
    let mut client = node_client(&gate.url("/page"), &[]);
    client.expect("open", 10.0).await;
    backend.expect("connection", 5.0).await;
    assert!(
        backend.seen_named("http").is_empty(),
        "the plain request reached the backend"
    );
}
