//! What `/metrics` costs an operator: a route's series appear only once it sees
//! traffic, the close-code label stays bounded whatever codes clients send, and a
//! removed route's series go away.

mod common;

use std::collections::BTreeSet;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;

/// The samples (series) of one route.
fn route_series(m: &Metrics, route: &str) -> Vec<String> {
    m.samples
        .iter()
        .filter(|s| s.labels.get("route").map(String::as_str) == Some(route))
        .map(|s| format!("{}{:?}", s.name, s.labels))
        .collect()
}

/// One tunnel that echoes a message, then the client closes it with `code`.
async fn tunnel_closed_with(gate: &Wsgate, path: &str, code: u16) {
    let mut ws = ws_connect(&gate.url(path)).await;
    assert_eq!(ws_roundtrip(&mut ws, "hi", 5.0).await, "hi");
    let bye = CloseFrame {
        code: CloseCode::from(code),
        reason: "bye".into(),
    };
    within(5.0, "sending Close", ws.send(Message::Close(Some(bye))))
        .await
        .unwrap();
    ws_expect_close(&mut ws, 5.0).await;
}

#[tokio::test]
async fn a_route_has_no_series_until_its_first_tunnel() {
    let backend = EchoBackend::start("A").await;
    let gate = Wsgate::start(&routes_yaml(&[
        Route::new("used").prefix("/used").backend(backend.addr),
        Route::new("idle").prefix("/idle").backend(backend.addr),
    ]))
    .await;
    let m = gate.metrics().await;
    assert!(m.has("wsgate_routes"), "{}", m.text);
    for route in ["used", "idle"] {
        let s = route_series(&m, route);
        assert!(
            s.is_empty(),
            "route {route} exports before any traffic: {s:?}"
        );
    }

    tunnel_closed_with(&gate, "/used", 1000).await;
    let used = [("namespace", "default"), ("route", "used")];
    gate.wait_metric(
        5.0,
        "wsgate_connection_duration_seconds_count",
        &used,
        |v| v == 1.0,
    )
    .await;
    let m = gate.metrics().await;
    assert_eq!(m.get("wsgate_connections_active", &used), 0.0);
    assert!(m.matching("wsgate_connections_active", &used).count() == 1);
    let upgraded = [used[0], used[1], ("outcome", "upgraded")];
    assert_eq!(m.get("wsgate_connections_total", &upgraded), 1.0);
    for dir in ["client_to_backend", "backend_to_client"] {
        let l = [used[0], used[1], ("direction", dir)];
        assert_eq!(m.get("wsgate_messages_total", &l), 1.0, "{dir}");
        assert_eq!(m.get("wsgate_bytes_total", &l), 2.0, "{dir}");
    }
    let closes = [used[0], used[1], ("code", "1000"), ("initiator", "client")];
    assert_eq!(m.get("wsgate_closes_total", &closes), 1.0);
    // Few series per used route: no label combination nothing has touched.
    let series = route_series(&m, "used");
    assert!(series.len() <= 20, "{} series: {series:#?}", series.len());
    let idle = route_series(&m, "idle");
    assert!(idle.is_empty(), "an unused route exports: {idle:?}");
}

#[tokio::test]
async fn close_code_label_is_bounded_per_route() {
    let backend = EchoBackend::start("A").await;
    let gate = Wsgate::start(&routes_yaml(&[
        Route::new("codes").prefix("/codes").backend(backend.addr),
        Route::new("other").prefix("/other").backend(backend.addr),
    ]))
    .await;
    // 45 distinct application codes, some twice, and registry codes.
    let mut sent = 0;
    for code in (3000..3045).chain([3001, 3044, 4999]) {
        tunnel_closed_with(&gate, "/codes", code).await;
        sent += 1;
    }
    for code in [1000, 1001, 1008, 1011] {
        tunnel_closed_with(&gate, "/codes", code).await;
        sent += 1;
    }
    // An invalid code (reserved range) on a raw socket: the client's number
    // never becomes a label.
    let mut raw = frames::raw_upgrade(gate.listen, "/codes", &[]).await;
    assert_eq!(raw.response.status, 101);
    raw.ws
        .send(&frames::Frame::close(2999, "bad").masked([1, 2, 3, 4]))
        .await;
    raw.ws.until_eof(10.0).await;
    sent += 1;
    // The bound is per route: another route gets its own twenty.
    tunnel_closed_with(&gate, "/other", 4321).await;

    let codes = [("namespace", "default"), ("route", "codes")];
    gate.wait_metric(5.0, "wsgate_closes_total", &codes, |v| v == sent as f64)
        .await;
    let m = gate.metrics().await;
    let labels: BTreeSet<String> = m
        .matching("wsgate_closes_total", &codes)
        .map(|s| s.labels["code"].clone())
        .collect();
    let app: Vec<u16> = labels
        .iter()
        .filter_map(|c| c.parse::<u16>().ok())
        .filter(|c| (3000..=4999).contains(c))
        .collect();
    assert_eq!(app, (3000..3020).collect::<Vec<_>>(), "{labels:?}");
    assert!(!labels.contains("2999"), "{labels:?}");
    for c in ["1000", "1001", "1008", "1011", "other"] {
        assert!(labels.contains(c), "no code={c} in {labels:?}");
    }
    let other = [codes[0], codes[1], ("code", "other")];
    // 3020..=3044, 3044 again and 4999: 27 tunnels; 3001 again keeps its own label.
    assert_eq!(m.get("wsgate_closes_total", &other), 27.0, "{}", m.text);
    let again = [codes[0], codes[1], ("code", "3001")];
    assert_eq!(m.get("wsgate_closes_total", &again), 2.0);
    let series = m.matching("wsgate_closes_total", &codes).count();
    assert!(series <= 30, "{series} close series for one route");
    let on_other = [("route", "other"), ("code", "4321")];
    assert_eq!(m.get("wsgate_closes_total", &on_other), 1.0);
}

#[tokio::test]
async fn a_removed_route_loses_its_series() {
    let backend = EchoBackend::start("A").await;
    let keep = Route::new("keep").prefix("/keep").backend(backend.addr);
    let gone = Route::new("gone").prefix("/gone").backend(backend.addr);
    let gate = Wsgate::start(&routes_yaml(&[keep.clone(), gone])).await;
    tunnel_closed_with(&gate, "/keep", 1000).await;
    tunnel_closed_with(&gate, "/gone", 1000).await;
    let g = [("route", "gone")];
    gate.wait_metric(5.0, "wsgate_connection_duration_seconds_count", &g, |v| {
        v == 1.0
    })
    .await;
    // The relay lets go of the route just after it leaves /connections.
    eventually(5.0, "no open tunnel", || async {
        gate.connections().await.is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    gate.reload(&routes_yaml(&[keep]), "success").await;
    let m = gate.metrics().await;
    let left = route_series(&m, "gone");
    assert!(left.is_empty(), "a removed route still exports: {left:?}");
    let k = [("route", "keep"), ("code", "1000")];
    assert_eq!(m.get("wsgate_closes_total", &k), 1.0, "{}", m.text);
}
