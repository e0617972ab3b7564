//! A shared cluster, as an attacker on the internet meets it (issue 18, the proxy's
//! side): variants of a protected path never reach a weaker route and never reach a
//! backend un-normalised; a socket that sends a prefix of the HTTP/2 preface and
//! stops costs wsgate no CPU while it waits.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const APP: &str = "https://app.example.com";

/// Two routes on one Node `ws` backend (which reports each request's URL): `/ws`
/// open only to pages of [`APP`], and everything else open to anyone.
async fn two_routes() -> (Wsgate, Peer) {
    let (backend, addr) = node_backend("chat", &[]).await;
    let routes = routes_yaml(&[
        Route::new("ws")
            .exact("/ws")
            .backend(addr)
            .set("allowedOrigins", &format!("[\"{APP}\"]")),
        Route::new("open").prefix("/").backend(addr),
    ]);
    (Wsgate::start(&routes).await, backend)
}

#[tokio::test]
async fn path_variants_never_reach_the_weaker_route() {
    let (gate, mut backend) = two_routes().await;
    let host = gate.listen.to_string();
    let variants = [
        "/x/../ws",
        "/./ws",
        "//ws",
        "/%2e%2e/ws",
        "/%2E/ws",
        "/%77s",
        "/a/b/../../ws",
        "/ws%2f..",
        "/ws%5C",
    ];
    for path in variants {
        // Without an Origin of the app: refused, by /ws's allowlist (403) or, for an
        // encoded separator, as a bad request (400); never upgraded by `open`.
        let r = raw_request(gate.listen, &upgrade_request(&host, path, &new_key(), &[]))
            .await
            .response;
        assert!(
            r.status == 403 || r.status == 400,
            "an upgrade to {path} without the app's Origin must be refused, got {r:?}"
        );
    }
    // The same variants as plain requests (the `open` route proxies plain HTTP): the
    // backend sees only normalised paths, never a dot segment, `//` or an escape.
    for path in ["/x/../page", "//page", "/%70age", "/./b/../page?q=%2F.."] {
        let r = http_get(gate.listen, path).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let seen = backend
            .expect_where(5.0, "the backend's request", |v| v["event"] == "http")
            .await;
        let url = seen["url"].as_str().unwrap().to_owned();
        let (p, _) = url.split_once('?').unwrap_or((&url, ""));
        assert_eq!(p, "/page", "{path} reached the backend as {url}");
        if path.contains('?') {
            assert_eq!(url, "/page?q=%2F..", "the query is passed as sent");
        }
    }
    for path in ["/ws%2f..", "/a%2Fb", "/a%5cb"] {
        let r = http_get(gate.listen, path).await.unwrap();
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    // With the app's Origin, a variant is the protected route: upgraded, and the
    // backend gets `/ws`.
    let ok = raw_request(
        gate.listen,
        &upgrade_request(&host, "/x/../%77s", &new_key(), &[("Origin", APP)]),
    )
    .await
    .response;
    assert_eq!(ok.status, 101, "{ok:?}");
    let conn = backend.expect("connection", 5.0).await;
    assert_eq!(conn["url"], "/ws", "{conn}");
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn a_stalled_http2_preface_costs_no_cpu() {
    let backend = EchoBackend::start("echo").await;
    let gate = Wsgate::start(&Route::new("echo").backend(backend.addr).yaml()).await;
    // 200 sockets send the first half of the h2c preface and stop: until more
    // bytes come, wsgate cannot tell HTTP/2 from an HTTP/1.1 method named "PRI…".
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(gate.listen).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_seconds(gate.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = cpu_seconds(gate.pid()) - before;
    // Polling every 5 ms cost about 0.1 s of CPU per second for 200 such sockets.
    assert!(
        spent < 0.05,
        "200 stalled prefaces cost {spent:.2} s of CPU in 3 s"
    );
    // They are still served once they go on: the rest of the preface and a
    // SETTINGS frame get the server's SETTINGS back (HTTP/2 was sniffed right).
    let s = &mut stalled[0];
    s.write_all(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    within(5.0, "the server's SETTINGS", s.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(
        head[3], 0x4,
        "the first frame from wsgate is SETTINGS: {head:?}"
    );
    // And one that turns out to be HTTP/1.1 after all gets an HTTP/1.1 answer.
    let mut h1 = TcpStream::connect(gate.listen).await.unwrap();
    h1.write_all(b"PRI").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h1.write_all(b"NT / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    within(5.0, "an HTTP/1.1 answer", h1.read_exact(&mut buf))
        .await
        .unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_probes_only() {
    let backend = EchoBackend::start("echo").await;
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let opts = Options {
        args: vec!["--metrics-listen".into(), metrics.to_string()],
        ..Default::default()
    };
    let gate = Wsgate::start_with(opts, &Route::new("echo").backend(backend.addr).yaml()).await;
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = http_get(metrics, path).await.unwrap();
        assert_eq!(r.status, 200, "{path} on --metrics-listen: {r:?}");
    }
    for path in ["/connections", "/backends"] {
        let r = http_get(metrics, path).await.unwrap();
        assert_eq!(
            r.status, 404,
            "{path} must not be on --metrics-listen: {r:?}"
        );
        let r = http_get(gate.admin, path).await.unwrap();
        assert_eq!(r.status, 200, "{path} on --admin-listen: {r:?}");
    }
    // A client that never finishes its request head is dropped, on both listeners.
    for addr in [metrics, gate.admin] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // It answers 408 or just closes; either way within the header timeout (5 s).
        let mut buf = Vec::new();
        within(
            10.0,
            "the admin server to drop a slow head",
            s.read_to_end(&mut buf),
        )
        .await
        .ok();
    }
}

#[tokio::test]
async fn the_http2_send_buffer_per_stream_is_a_bounded_setting() {
    // What a client that stops reading can pin per connection is this × the
    // concurrent streams; a value outside 16 KiB..16 MiB is refused by name.
    for bad in ["1024", "33554432"] {
        let (code, out) = wsgate_cmd(&[
            "serve",
            "--config",
            "/nonexistent",
            "--http2-stream-send-buffer",
            bad,
        ]);
        assert_eq!(code, 2, "{bad}: {out}");
        assert!(out.contains("--http2-stream-send-buffer"), "{bad}: {out}");
    }
    // A smaller buffer still relays WebSockets over HTTP/2 (h2c, Node's http2).
    let backend = EchoBackend::start("echo").await;
    let opts = Options {
        args: vec!["--http2-stream-send-buffer".into(), "16384".into()],
        ..Default::default()
    };
    let gate = Wsgate::start_with(opts, &Route::new("echo").backend(backend.addr).yaml()).await;
    let mut client = Peer::node(
        "h2-ws-client.js",
        &[&format!("http://{}/chat", gate.listen)],
    );
    client.expect("open", 10.0).await;
    client.send(text(&"x".repeat(100_000))).await;
    let echo = client.expect("message", 10.0).await;
    assert_eq!(echo["len"], 100_000, "{echo}");
}
