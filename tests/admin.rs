//! What operators see: /metrics and /connections describe exactly the tunnels that
//! are open, and per-route connection limits refuse with 503 / 429.

mod common;

use std::net::IpAddr;

use common::*;
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

fn local_addr(ws: &WsClient) -> String {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s.local_addr().unwrap().to_string(),
        _ => unreachable!("plain ws"),
    }
}

#[tokio::test]
async fn metrics_and_connections_describe_the_open_tunnels() {
    let a = EchoBackend::start("A").await;
    let b = EchoBackend::start("B").await;
    let gate = Wsgate::start(&routes_yaml(&[
        Route::new("route-a")
            .prefix("/a")
            .backend(a.addr)
            .no_keepalive(),
        Route::new("route-b")
            .prefix("/b")
            .backend(b.addr)
            .no_keepalive(),
    ]))
    .await;
    assert_eq!(http_get(gate.admin, "/healthz").await.unwrap().status, 200);

    let mut on_a = vec![];
    for _ in 0..3 {
        on_a.push(ws_connect(&gate.url("/a")).await);
    }
    let mut on_b = vec![];
    for _ in 0..2 {
        on_b.push(ws_connect(&gate.url("/b")).await);
    }
    // Two 5-byte messages each way on the first tunnel of route-a.
    assert_eq!(ws_roundtrip(&mut on_a[0], "hello", 5.0).await, "hello");
    assert_eq!(ws_roundtrip(&mut on_a[0], "world", 5.0).await, "world");
    let busy_client = local_addr(&on_a[0]);

    let ra = [("namespace", "default"), ("route", "route-a")];
    let rb = [("namespace", "default"), ("route", "route-b")];
    let with = |base: &[(&'static str, &'static str)], extra: (&'static str, &'static str)| {
        let mut l = base.to_vec();
        l.push(extra);
        l
    };
    gate.wait_metric(
        5.0,
        "wsgate_messages_total",
        &with(&ra, ("direction", "backend_to_client")),
        |v| v >= 2.0,
    )
    .await;
    let m = gate.metrics().await;
    assert_eq!(m.get("wsgate_connections_active", &ra), 3.0, "{}", m.text);
    assert_eq!(m.get("wsgate_connections_active", &rb), 2.0);
    assert_eq!(
        m.get(
            "wsgate_connections_total",
            &with(&ra, ("outcome", "upgraded"))
        ),
        3.0
    );
    assert_eq!(
        m.get(
            "wsgate_connections_total",
            &with(&rb, ("outcome", "upgraded"))
        ),
        2.0
    );
    assert_eq!(
        m.get(
            "wsgate_messages_total",
            &with(&ra, ("direction", "client_to_backend"))
        ),
        2.0
    );
    assert_eq!(
        m.get(
            "wsgate_messages_total",
            &with(&ra, ("direction", "backend_to_client"))
        ),
        2.0
    );
    assert_eq!(m.get("wsgate_messages_total", &rb), 0.0);
    let c2b_bytes = m.get(
        "wsgate_bytes_total",
        &with(&ra, ("direction", "client_to_backend")),
    );
    assert!(
        (10.0..=22.0).contains(&c2b_bytes),
        "10 payload bytes (+ frame headers): {c2b_bytes}"
    );
    assert_eq!(m.get("wsgate_routes", &[]), 2.0);
    // Labels never carry a connection or a client address.
    assert!(
        !m.text.contains("127.0.0.1"),
        "an address in a metric label:\n{}",
        m.text
    );

    let conns = gate.connections().await;
    assert_eq!(conns.len(), 5, "{conns:#?}");
    let ids: std::collections::BTreeSet<String> =
        conns.iter().map(|c| c["id"].to_string()).collect();
    assert_eq!(ids.len(), 5, "connection ids must be unique: {conns:#?}");
    let clients_a: Vec<String> = on_a.iter().map(local_addr).collect();
    for c in &conns {
        for field in [
            "id",
            "namespace",
            "route",
            "client",
            "backend",
            "opened_at",
            "client_rtt_ms",
        ] {
            assert!(
                c.get(field).is_some(),
                "/connections entry without {field}: {c}"
            );
        }
        assert_eq!(c["namespace"], "default");
        let client = c["client"].as_str().unwrap();
        match c["route"].as_str().unwrap() {
            "route-a" => {
                assert!(
                    clients_a.iter().any(|a| a == client),
                    "unknown client {client}"
                );
                assert_eq!(c["backend"], a.addr.to_string());
            }
            "route-b" => assert_eq!(c["backend"], b.addr.to_string()),
            other => panic!("unknown route {other}"),
        }
    }
    let busy: &Value = conns
        .iter()
        .find(|c| c["client"] == busy_client.as_str())
        .unwrap();
    assert_eq!(busy["client_to_backend"]["messages"], 2, "{busy}");
    assert_eq!(busy["backend_to_client"]["messages"], 2, "{busy}");
    let bytes = busy["client_to_backend"]["bytes"].as_f64().unwrap();
    assert_eq!(
        bytes, c2b_bytes,
        "/connections and /metrics count bytes alike"
    );
    let quiet = conns.iter().find(|c| c["route"] == "route-b").unwrap();
    assert_eq!(quiet["client_to_backend"]["messages"], 0);

    // Everyone leaves.
    for ws in on_a.iter_mut().chain(on_b.iter_mut()) {
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        within(5.0, "sending Close", ws.send(Message::Close(Some(bye))))
            .await
            .unwrap();
        ws_expect_close(ws, 5.0).await;
    }
    gate.wait_metric(5.0, "wsgate_connections_active", &[], |v| v == 0.0)
        .await;
    assert!(gate.connections().await.is_empty());
    let m = gate.metrics().await;
    let closes = [("code", "1000"), ("initiator", "client")];
    assert_eq!(
        m.get("wsgate_closes_total", &[ra[0], ra[1], closes[0], closes[1]]),
        3.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.get("wsgate_closes_total", &[rb[0], rb[1], closes[0], closes[1]]),
        2.0
    );
    assert_eq!(m.get("wsgate_connection_duration_seconds_count", &ra), 3.0);
    assert_eq!(m.get("wsgate_connection_duration_seconds_count", &rb), 2.0);
}

#[tokio::test]
async fn connection_limits_refuse_with_503_per_route_and_429_per_client_ip() {
    let backend = EchoBackend::start("A").await;
    let gate = Wsgate::start(&routes_yaml(&[
        Route::new("capped")
            .prefix("/capped")
            .backend(backend.addr)
            .set("limits", "{maxConnections: 2}"),
        Route::new("per-ip")
            .prefix("/per-ip")
            .backend(backend.addr)
            .set("limits", "{maxConnectionsPerClientIP: 1}"),
    ]))
    .await;

    // The route holds at most two tunnels.
    let mut first = ws_connect(&gate.url("/capped")).await;
    let _second = ws_connect(&gate.url("/capped")).await;
    let third = raw_upgrade(gate.listen, "/capped", &[]).await;
    assert_eq!(third.response.status, 503, "{:?}", third.response);
    // A place frees up when one closes.
    within(5.0, "Close", first.send(Message::Close(None)))
        .await
        .unwrap();
    ws_expect_close(&mut first, 5.0).await;
    let capped = [("namespace", "default"), ("route", "capped")];
    gate.wait_metric(5.0, "wsgate_connections_active", &capped, |v| v == 1.0)
        .await;
    let again = raw_upgrade(gate.listen, "/capped", &[]).await;
    assert_eq!(again.response.status, 101);

    // One tunnel per client address; another address still gets in.
    let one = raw_upgrade(gate.listen, "/per-ip", &[]).await;
    assert_eq!(one.response.status, 101);
    let two = raw_upgrade(gate.listen, "/per-ip", &[]).await;
    assert_eq!(two.response.status, 429, "{:?}", two.response);
    let other_ip: IpAddr = "127.0.0.2".parse().unwrap();
    let other = raw_upgrade_from(Some(other_ip), gate.listen, "/per-ip", &[]).await;
    assert_eq!(other.response.status, 101);

    let m = gate.metrics().await;
    assert_eq!(
        m.get(
            "wsgate_connections_total",
            &[capped[0], capped[1], ("outcome", "limited")]
        ),
        1.0
    );
    let per_ip = [
        ("namespace", "default"),
        ("route", "per-ip"),
        ("outcome", "limited"),
    ];
    assert_eq!(
        m.get("wsgate_connections_total", &per_ip),
        1.0,
        "{}",
        m.text
    );
}
