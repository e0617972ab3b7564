//! `--access-log`: one JSON line per finished tunnel, per refused upgrade and per
//! plain HTTP request, with no token or secret query value in it.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits until the log holds a line matching `pred`; returns it.
async fn line_where(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(5.0, what, || {
        let found = lines(path).into_iter().find(|l| pred(l));
        async move { found }
    })
    .await
}

async fn gate_logging_to(path: &Path, routes: &str) -> Wsgate {
    let opts = Options {
        args: vec!["--access-log".into(), path.display().to_string()],
        ..Default::default()
    };
    Wsgate::start_with(opts, routes).await
}

#[tokio::test]
async fn a_finished_tunnel_has_one_line_with_its_traffic_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let backend = EchoBackend::start("b").await;
    let gate = gate_logging_to(&log, &Route::new("chat").backend(backend.addr).yaml()).await;

    let mut ws = ws_connect(&gate.url("/chat?room=7&access_token=SECRET-abc")).await;
    assert_eq!(ws_roundtrip(&mut ws, "hello", 5.0).await, "hello");
    assert_eq!(ws_roundtrip(&mut ws, "world!", 5.0).await, "world!");
    ws.send_close(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })
    .await;
    ws_expect_close(&mut ws, 5.0).await;

    let l = line_where(&log, "the tunnel's line", |l| l["kind"] == "tunnel").await;
    assert_eq!(l["namespace"], "default");
    assert_eq!(l["route"], "chat");
    assert_eq!(l["backend"], backend.addr.to_string());
    assert!(l["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(l["status"], 101);
    assert_eq!(l["outcome"], "upgraded");
    assert_eq!(l["client_to_backend"]["messages"], 2);
    assert_eq!(l["client_to_backend"]["bytes"], 11);
    assert_eq!(l["backend_to_client"]["messages"], 2);
    assert_eq!(l["close_code"], 1000);
    assert_eq!(l["close_initiator"], "client");
    assert!(l["duration_s"].as_f64().unwrap() > 0.0);
    assert!(l["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines(&log).len(), 1, "one line per tunnel");
    assert!(!std::fs::read_to_string(&log).unwrap().contains("SECRET"));
}

trait SendClose {
    async fn send_close(&mut self, frame: CloseFrame);
}

impl SendClose for WsClient {
    async fn send_close(&mut self, frame: CloseFrame) {
        use futures_util::SinkExt;
        self.send(Message::Close(Some(frame)))
            .await
            .expect("send Close");
    }
}

#[tokio::test]
async fn refused_upgrades_and_http_requests_are_logged_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (_web, web) = node_backend("web", &[]).await;
    let routes = routes_yaml(&[
        Route::new("web").prefix("/web").backend(web),
        Route::new("strict")
            .prefix("/strict")
            .backend(web)
            .set("allowedOrigins", "[\"https://good.example\"]"),
    ]);
    let gate = gate_logging_to(&log, &routes).await;

    // An upgrade from a foreign Origin: 403, with wsgate's reason.
    let up = raw_upgrade(
        gate.listen,
        "/strict/ws?token=SECRET-1&room=5",
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(up.response.status, 403);
    let l = line_where(&log, "the refused upgrade's line", |l| {
        l["kind"] == "upgrade"
    })
    .await;
    assert_eq!(l["route"], "strict");
    assert_eq!(l["status"], 403);
    assert_eq!(l["outcome"], "rejected");
    assert_eq!(l["reason"], "Origin not allowed");
    assert_eq!(l["path"], "/strict/ws?token=REDACTED&room=5");
    assert!(l["close_code"].is_null());

    // No route at all: 404, no route in the line.
    let up = raw_upgrade(gate.listen, "/nowhere", &[]).await;
    assert_eq!(up.response.status, 404);
    let l = line_where(&log, "the 404 upgrade's line", |l| l["status"] == 404).await;
    assert!(l["route"].is_null());

    // Plain HTTP: the backend's answer, which backend gave it, the method.
    let r = http_get(gate.listen, "/web/page?client_secret=SECRET-2&x=1")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let l = line_where(&log, "the HTTP request's line", |l| l["kind"] == "http").await;
    assert_eq!(l["route"], "web");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["status"], 200);
    assert_eq!(l["outcome"], "proxied");
    assert_eq!(l["backend"], web.to_string());
    assert_eq!(l["path"], "/web/page?client_secret=REDACTED&x=1");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("SECRET"),
        "a secret reached the log:\n{text}"
    );
}

#[tokio::test]
async fn stdout_is_the_default_and_off_writes_nothing() {
    let backend = EchoBackend::start("b").await;
    let route = Route::new("r").prefix("/only").backend(backend.addr).yaml();
    // The harness sends stdout and stderr to one file: access lines are the JSON ones.
    let gate = Wsgate::start(&route).await;
    let r = http_get(gate.listen, "/x").await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");
    eventually(5.0, "an access-log line on stdout", || {
        let found = gate
            .log_text()
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"kind\":\"http\""));
        async move { found.then_some(()) }
    })
    .await;

    let off = Wsgate::start_with(
        Options {
            args: vec!["--access-log".into(), "off".into()],
            ..Default::default()
        },
        &route,
    )
    .await;
    let r = http_get(off.listen, "/x").await.unwrap();
    assert_eq!(r.status, 404);
    // The request is answered; give a writer a moment it would not need.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!off.log_text().contains("\"kind\""), "{}", off.log_text());
}
