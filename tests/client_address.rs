//! The client's address at the edge: PROXY protocol from real HAProxy 2.6 and NGINX
//! (and from raw sockets, byte by byte), X-Forwarded-For from a trusted HAProxy in
//! `mode http`, and a route's `clientAccess` lists, including what a live change
//! does to open tunnels. Clients are told apart by binding their sockets to
//! 127.0.0.2, 127.0.0.3, … (any address of 127/8 works on Linux).

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PP: &str = "wsgate_proxy_protocol_rejections_total";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// wsgate with PROXY protocol `mode` trusting 127.0.0.1, a 1 s header timeout, an
/// access log in `log`, and `more` flags.
async fn gate_behind_lb(mode: &str, log: &Path, more: &[&str], routes: &str) -> Wsgate {
    let mut args: Vec<String> = [
        "--proxy-protocol",
        mode,
        "--proxy-protocol-trusted",
        "127.0.0.1/32",
        "--proxy-protocol-timeout",
        "1s",
        "--access-log",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(log.display().to_string());
    args.extend(more.iter().map(|s| s.to_string()));
    let opts = Options {
        args,
        ..Default::default()
    };
    Wsgate::start_with(opts, routes).await
}

/// An upgrade on an open connection (after whatever the test wrote first).
async fn upgrade_on(stream: TcpStream, extra: &[(&str, &str)]) -> RawUpgrade {
    upgrade_after(stream, &[], extra).await
}

/// `prefix` and an upgrade request in one write, and the response.
async fn upgrade_after(stream: TcpStream, prefix: &[u8], extra: &[(&str, &str)]) -> RawUpgrade {
    let key = new_key();
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(upgrade_request("chat.example.com", "/ws", &key, extra).as_bytes());
    let mut io = BufReader::new(stream);
    io.get_mut().write_all(&bytes).await.unwrap();
    let response = within(10.0, "the upgrade response", read_response(&mut io, "GET"))
        .await
        .expect("read the response");
    RawUpgrade {
        response,
        key,
        ws: RawWs { io },
    }
}

/// The upgrade request's headers as the echo backend saw them (ws-server.js
/// answers `__headers__` with them).
async fn backend_headers(ws: &mut RawWs) -> Value {
    ws.send(&Frame::text("__headers__").masked(rand::random()))
        .await;
    let f = ws.recv_data(5.0).await;
    serde_json::from_slice(&f.payload).expect("headers as JSON")
}

async fn echoes(ws: &mut RawWs, text: &str) {
    ws.send(&Frame::text(text).masked(rand::random())).await;
    let f = ws.recv_data(5.0).await;
    assert_eq!(f.payload, text.as_bytes(), "echo of {text:?}");
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn log_line(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(5.0, what, || {
        let found = log_lines(path).into_iter().find(|l| pred(l));
        async move { found }
    })
    .await
}

/// Reads what the server sends until it closes; the bytes (none expected).
async fn bytes_until_closed(mut s: TcpStream, secs: f64) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = within(secs, "the connection to close", s.read_to_end(&mut got)).await;
    got
}

/// A v2 PROXY header (PROXY, TCP over IPv4) naming `source`.
fn v2_header(source: &str, crc: bool) -> Vec<u8> {
    let addrs = proxy_header::ProxiedAddress::stream(
        source.parse().unwrap(),
        "127.0.0.1:443".parse().unwrap(),
    );
    let mut h = proxy_header::ProxyHeader::with_address(addrs);
    if crc {
        h.append_tlv(proxy_header::Tlv::Crc32c(0));
    }
    let mut buf = Vec::new();
    h.encode_v2(&mut buf).unwrap();
    if crc {
        let n = buf.len();
        let sum = crc32c::crc32c(&buf);
        buf[n - 4..].copy_from_slice(&sum.to_be_bytes());
    }
    buf
}

fn pp_count(m: &Metrics, reason: &str) -> f64 {
    m.get(PP, &[("reason", reason)])
}

// ---- real load balancers -----------------------------------------------------

#[tokio::test]
async fn haproxy_send_proxy_v2_names_the_client_and_its_health_checks_keep_the_server_up() {
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gate = gate_behind_lb(
        "v2",
        &log,
        &[],
        &Route::new("echo").backend(backend).no_keepalive().yaml(),
    )
    .await;
    let front = free_port();
    let haproxy = EdgeProxy::haproxy(
        &format!(
            "frontend nlb_tcp\n  mode tcp\n  bind 127.0.0.1:{front}\n  default_backend wsgate\n\n\
             backend wsgate\n  mode tcp\n  option httpchk GET /healthz\n  \
             server w1 {} send-proxy-v2 proxy-v2-options crc32c,unique-id check inter 300ms\n",
            gate.listen
        ),
        &[front],
    )
    .await;

    // A client at 127.0.0.2 through HAProxy: the backend, /connections and the
    // access log name 127.0.0.2, not HAProxy's 127.0.0.1.
    let up = raw_upgrade_from(
        Some(ip("127.0.0.2")),
        ([127, 0, 0, 1], front).into(),
        "/ws",
        &[],
    )
    .await;
    assert_eq!(up.response.status, 101, "{:?}", up.response);
    let mut ws = up.ws;
    let h = backend_headers(&mut ws).await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.2", "{h}");
    assert_eq!(h["x-real-ip"], "127.0.0.2", "{h}");
    let conns = gate.connections().await;
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert!(
        conns[0]["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.2:"),
        "{conns:?}"
    );
    ws.send(&Frame::close(1000, "bye").masked(rand::random()))
        .await;
    let _ = ws.until_eof(5.0).await;
    let l = log_line(&log, "the tunnel's access-log line", |l| {
        l["kind"] == "tunnel"
    })
    .await;
    assert_eq!(l["client_addr"], "127.0.0.2", "{l}");
    assert!(
        l["peer_addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );

    // HAProxy's health checks (v2 LOCAL with a CRC32C TLV, then GET /healthz)
    // are accepted: after 2 s of checks every 300 ms the server is UP.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = haproxy.haproxy_command("show servers state wsgate").await;
    let w1 = state
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some("w1"))
        .unwrap_or_else(|| panic!("no w1 in {state}"));
    // Field 6 is srv_op_state: 2 = running (UP).
    assert_eq!(
        w1.split_whitespace().nth(5),
        Some("2"),
        "w1 not UP: {state}"
    );
    let m = gate.metrics().await;
    // ("invalid" is not asserted: the harness's own readiness probe connects
    // from 127.0.0.1 and leaves without a header.)
    for reason in ["crc", "too_large", "timeout"] {
        assert_eq!(
            pp_count(&m, reason),
            0.0,
            "{reason}: HAProxy's headers are all valid"
        );
    }
}

#[tokio::test]
async fn haproxy_send_proxy_and_nginx_stream_send_v1() {
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gate = gate_behind_lb("v1", &log, &[], &Route::new("echo").backend(backend).yaml()).await;
    let (hp, np) = (free_port(), free_port());
    let _haproxy = EdgeProxy::haproxy(
        &format!(
            "listen v1\n  mode tcp\n  bind 127.0.0.1:{hp}\n  server w1 {} send-proxy\n",
            gate.listen
        ),
        &[hp],
    )
    .await;
    let _nginx = EdgeProxy::nginx_stream(
        &format!(
            "  server {{\n    listen 127.0.0.1:{np};\n    proxy_pass {};\n    proxy_protocol on;\n  }}",
            gate.listen
        ),
        &[np],
    )
    .await;
    for (client, port) in [("127.0.0.3", hp), ("127.0.0.4", np)] {
        let up =
            raw_upgrade_from(Some(ip(client)), ([127, 0, 0, 1], port).into(), "/ws", &[]).await;
        assert_eq!(
            up.response.status, 101,
            "via port {port}: {:?}",
            up.response
        );
        let mut ws = up.ws;
        let h = backend_headers(&mut ws).await;
        assert_eq!(h["x-forwarded-for"], client, "via port {port}: {h}");
        let conns = gate.connections().await;
        assert!(
            conns.iter().any(|c| c["client"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{client}:"))),
            "{conns:?}"
        );
    }
}

#[tokio::test]
async fn haproxy_http_forwardfor_is_believed_only_from_the_trusted_proxy() {
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let opts = Options {
        args: vec![
            "--trusted-proxies".into(),
            "127.0.0.1".into(),
            "--access-log".into(),
            log.display().to_string(),
        ],
        ..Default::default()
    };
    let gate = Wsgate::start_with(opts, &Route::new("echo").backend(backend).yaml()).await;
    let front = free_port();
    let _haproxy = EdgeProxy::haproxy(
        &format!(
            "frontend l7\n  mode http\n  bind 127.0.0.1:{front}\n  option forwardfor\n  \
             timeout tunnel 1h\n  default_backend wsgate\n\n\
             backend wsgate\n  mode http\n  server w1 {}\n",
            gate.listen
        ),
        &[front],
    )
    .await;
    let spoof = [("X-Forwarded-For", "6.6.6.6"), ("X-Real-IP", "6.6.6.6")];

    // Through HAProxy from 127.0.0.2 with a spoofed header: HAProxy appends the
    // real peer; wsgate reads right to left and the spoof never becomes the client.
    let up = raw_upgrade_from(
        Some(ip("127.0.0.2")),
        ([127, 0, 0, 1], front).into(),
        "/ws",
        &spoof,
    )
    .await;
    assert_eq!(up.response.status, 101, "{:?}", up.response);
    let mut ws = up.ws;
    let h = backend_headers(&mut ws).await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.2", "{h}");
    assert_eq!(h["x-real-ip"], "127.0.0.2", "{h}");
    let conns = gate.connections().await;
    assert_eq!(conns[0]["client"], "127.0.0.2", "{conns:?}");

    // The same headers straight to wsgate from 127.0.0.3 (not a trusted proxy):
    // dropped; the socket address is the client.
    let up = raw_upgrade_from(Some(ip("127.0.0.3")), gate.listen, "/ws", &spoof).await;
    assert_eq!(up.response.status, 101);
    let mut direct = up.ws;
    let h = backend_headers(&mut direct).await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.3", "{h}");
    assert_eq!(h["x-real-ip"], "127.0.0.3", "{h}");
    assert!(!log_lines(&log)
        .iter()
        .any(|l| l["client_addr"] == "6.6.6.6"));
}

// ---- raw sockets ---------------------------------------------------------------

#[tokio::test]
async fn an_untrusted_peer_is_refused_without_a_byte_and_counted() {
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_behind_lb(
        "any",
        &dir.path().join("a.log"),
        &[],
        &Route::new("e").backend(backend).yaml(),
    )
    .await;
    let before = pp_count(&gate.metrics().await, "untrusted");
    let mut s = connect_from(Some(ip("127.0.0.3")), gate.listen).await;
    let _ = s
        .write_all(upgrade_request("x", "/ws", &new_key(), &[]).as_bytes())
        .await;
    assert!(
        bytes_until_closed(s, 5.0).await.is_empty(),
        "no HTTP byte for an untrusted peer"
    );
    gate.wait_metric(5.0, PP, &[("reason", "untrusted")], |v| v == before + 1.0)
        .await;
}

#[tokio::test]
async fn a_trusted_peer_must_send_a_header_in_time() {
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_behind_lb(
        "any",
        &dir.path().join("a.log"),
        &[],
        &Route::new("e").backend(backend).yaml(),
    )
    .await;
    let m = gate.metrics().await;
    let (invalid, timeout) = (pp_count(&m, "invalid"), pp_count(&m, "timeout"));

    // A plain upgrade with no header: closed, no response, counted as invalid.
    let mut s = connect_from(None, gate.listen).await;
    s.write_all(upgrade_request("x", "/ws", &new_key(), &[]).as_bytes())
        .await
        .unwrap();
    assert!(bytes_until_closed(s, 5.0).await.is_empty());
    gate.wait_metric(5.0, PP, &[("reason", "invalid")], |v| v >= invalid + 1.0)
        .await;

    // An idle connection (an NLB health check sends nothing): closed at the 1 s
    // timeout, counted, and never logged above debug.
    let s = connect_from(None, gate.listen).await;
    let t0 = Instant::now();
    assert!(bytes_until_closed(s, 5.0).await.is_empty());
    let took = t0.elapsed().as_secs_f64();
    assert!(
        (0.8..2.5).contains(&took),
        "closed after {took:.2}s, timeout is 1s"
    );
    gate.wait_metric(5.0, PP, &[("reason", "timeout")], |v| v == timeout + 1.0)
        .await;
    let log = gate.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("PROXY") && (l.contains("ERROR") || l.contains("WARN"))),
        "a header timeout is not an error: {log}"
    );
}

#[tokio::test]
async fn a_header_in_three_writes_is_accepted() {
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_behind_lb(
        "any",
        &dir.path().join("a.log"),
        &[],
        &Route::new("e").backend(backend).yaml(),
    )
    .await;
    let header = v2_header("198.51.100.7:40000", true);
    let mut s = connect_from(None, gate.listen).await;
    for part in [&header[..5], &header[5..17], &header[17..]] {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up = upgrade_on(s, &[]).await;
    assert_eq!(up.response.status, 101, "{:?}", up.response);
    let mut ws = up.ws;
    assert_eq!(
        backend_headers(&mut ws).await["x-forwarded-for"],
        "198.51.100.7"
    );
    echoes(&mut ws, "after a fragmented header").await;
}

#[tokio::test]
async fn a_bad_crc_an_oversize_header_and_stacked_headers_are_refused() {
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_behind_lb(
        "any",
        &dir.path().join("a.log"),
        &[],
        &Route::new("e").backend(backend).yaml(),
    )
    .await;
    let m = gate.metrics().await;
    let (crc, large) = (pp_count(&m, "crc"), pp_count(&m, "too_large"));

    let mut bad = v2_header("198.51.100.7:40000", true);
    let n = bad.len();
    bad[n - 1] ^= 0x5a;
    let mut s = connect_from(None, gate.listen).await;
    s.write_all(&bad).await.unwrap();
    let _ = s
        .write_all(upgrade_request("x", "/ws", &new_key(), &[]).as_bytes())
        .await;
    assert!(bytes_until_closed(s, 5.0).await.is_empty());
    gate.wait_metric(5.0, PP, &[("reason", "crc")], |v| v == crc + 1.0)
        .await;

    let mut huge = v2_header("198.51.100.7:40000", false)[..16].to_vec();
    huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
    let mut s = connect_from(None, gate.listen).await;
    s.write_all(&huge).await.unwrap();
    let _ = s.write_all(&[0u8; 2000]).await;
    assert!(bytes_until_closed(s, 5.0).await.is_empty());
    gate.wait_metric(5.0, PP, &[("reason", "too_large")], |v| v == large + 1.0)
        .await;

    // Two headers: the second is payload, and as HTTP it is garbage.
    let s = connect_from(None, gate.listen).await;
    let mut two = v2_header("198.51.100.7:40000", false);
    two.extend(v2_header("203.0.113.9:40000", false));
    let up = upgrade_after(s, &two, &[]).await;
    assert_eq!(up.response.status, 400, "{:?}", up.response);
    assert!(gate.connections().await.is_empty());
}

#[tokio::test]
async fn a_forged_proxy_line_from_an_untrusted_peer_in_direct_mode_gets_400() {
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    let gate = gate_behind_lb(
        "any",
        &log,
        &["--proxy-protocol-untrusted", "direct"],
        &Route::new("e").backend(backend).yaml(),
    )
    .await;
    let s = connect_from(Some(ip("127.0.0.3")), gate.listen).await;
    let up = upgrade_after(s, b"PROXY TCP4 10.9.9.9 127.0.0.1 5555 80\r\n", &[]).await;
    assert_eq!(up.response.status, 400, "{:?}", up.response);
    // Served as the direct client it is.
    let up = raw_upgrade_from(Some(ip("127.0.0.3")), gate.listen, "/ws", &[]).await;
    assert_eq!(up.response.status, 101);
    let mut ws = up.ws;
    assert_eq!(
        backend_headers(&mut ws).await["x-forwarded-for"],
        "127.0.0.3"
    );
    assert!(!log_lines(&log)
        .iter()
        .any(|l| l["client_addr"] == "10.9.9.9"));
    assert!(!std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("10.9.9.9"));
}

// ---- clientAccess ------------------------------------------------------------

#[tokio::test]
async fn client_access_denies_first_then_allows_with_403_before_any_backend() {
    let backend = RawBackend::bind().await;
    let route = Route::new("office")
        .backend(backend.addr)
        .set("clientAccess", "{allow: [127.0.0.0/29], deny: [127.0.0.3]}");
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_behind_lb("v2", &dir.path().join("a.log"), &[], &route.yaml()).await;

    // Behind PROXY protocol the PROXY address is judged: the socket is 127.0.0.1
    // (allowed), the clients are 127.0.0.3 (denied), 10.1.1.1 (not allowed).
    for client in ["127.0.0.3:5000", "10.1.1.1:5000"] {
        let s = connect_from(None, gate.listen).await;
        let up = upgrade_after(s, &v2_header(client, false), &[]).await;
        assert_eq!(up.response.status, 403, "{client}: {:?}", up.response);
    }
    let nothing = tokio::time::timeout(Duration::from_millis(500), backend.listener.accept()).await;
    assert!(nothing.is_err(), "a denied client reached the backend");
    let m = gate.metrics().await;
    assert_eq!(
        m.get(
            "wsgate_connections_total",
            &[("route", "office"), ("outcome", "client_denied")]
        ),
        2.0
    );

    let s = connect_from(None, gate.listen).await;
    let client = tokio::spawn(async move {
        let up = upgrade_after(s, &v2_header("127.0.0.2:5000", false), &[]).await;
        (up.response.status, up.ws)
    });
    let req = backend.accept(5.0).await;
    assert_eq!(req.header("x-forwarded-for"), Some("127.0.0.2"));
    let _backend_ws = req.accept().await;
    let (status, _ws) = client.await.unwrap();
    assert_eq!(status, 101);
}

/// Opens a tunnel from `source` to wsgate's plain listener.
async fn tunnel_from(gate: &Wsgate, source: &str) -> RawWs {
    let up = raw_upgrade_from(Some(ip(source)), gate.listen, "/ws", &[]).await;
    assert_eq!(up.response.status, 101, "{source}: {:?}", up.response);
    up.ws
}

#[tokio::test]
async fn a_live_change_closes_exactly_the_tunnels_it_denies() {
    let (mut backend, addr) = node_backend("echo", &[]).await;
    let route = |deny: &str| {
        Route::new("chat")
            .backend(addr)
            .no_keepalive()
            .set("clientAccess", &format!("{{deny: [{deny}]}}"))
            .yaml()
    };
    let gate = Wsgate::start(&route("192.0.2.1")).await;
    let mut kept = tunnel_from(&gate, "127.0.0.2").await;
    let mut denied = tunnel_from(&gate, "127.0.0.3").await;
    echoes(&mut denied, "before").await;

    let t0 = Instant::now();
    gate.reload(&route("127.0.0.3"), "success").await;
    let close = denied.recv_data(2.5).await;
    assert_eq!(close.close_code(), Some(1008), "{close:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    let ev = backend
        .expect_where(5.0, "the backend's close", |e| e["event"] == "close")
        .await;
    assert_eq!(ev["code"], 1001, "{ev}");

    // The other tunnel is untouched: it keeps echoing for 10 more seconds.
    for i in 0..10 {
        echoes(&mut kept, &format!("still here {i}")).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(gate.connections().await.len(), 1);
    // And the denied client cannot come back.
    let up = raw_upgrade_from(Some(ip("127.0.0.3")), gate.listen, "/ws", &[]).await;
    assert_eq!(up.response.status, 403);
}

#[tokio::test]
async fn keep_existing_leaves_open_tunnels_alone() {
    let (_backend, addr) = node_backend("echo", &[]).await;
    let route = |deny: &str| {
        Route::new("chat")
            .backend(addr)
            .no_keepalive()
            .set(
                "clientAccess",
                &format!("{{deny: [{deny}], onPolicyChange: KeepExisting}}"),
            )
            .yaml()
    };
    let gate = Wsgate::start(&route("192.0.2.1")).await;
    let mut ws = tunnel_from(&gate, "127.0.0.3").await;
    gate.reload(&route("127.0.0.3"), "success").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    echoes(&mut ws, "still open").await;
    let up = raw_upgrade_from(Some(ip("127.0.0.3")), gate.listen, "/ws", &[]).await;
    assert_eq!(up.response.status, 403, "new tunnels follow the new list");
}

#[tokio::test]
async fn an_invalid_cidr_is_refused_and_the_old_list_still_applies() {
    let (_backend, addr) = node_backend("echo", &[]).await;
    let route = |deny: &str| {
        Route::new("chat")
            .backend(addr)
            .set("clientAccess", &format!("{{deny: [{deny}]}}"))
            .yaml()
    };
    let gate = Wsgate::start(&route("127.0.0.3")).await;
    gate.reload(&route("127.0.0.0/33"), "error").await;
    let up = raw_upgrade_from(Some(ip("127.0.0.3")), gate.listen, "/ws", &[]).await;
    assert_eq!(up.response.status, 403, "the old list still applies");
    let up = raw_upgrade_from(Some(ip("127.0.0.2")), gate.listen, "/ws", &[]).await;
    assert_eq!(up.response.status, 101);

    // `wsgate check` names the field.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, route("127.0.0.0/33")).unwrap();
    let out = std::process::Command::new(WSGATE)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("spec.clientAccess.deny[0]"), "{text}");
}

// ---- TLS: terminated by the load balancer, or by wsgate behind it --------------

/// A self-signed certificate for `host`: (cert PEM, key PEM, DER to trust).
fn self_signed(host: &str) -> (String, String, rustls_pki_types::CertificateDer<'static>) {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    (
        c.cert.pem(),
        c.signing_key.serialize_pem(),
        c.cert.der().clone(),
    )
}

/// TLS with SNI `host` over `tcp`, trusting only `cert`.
async fn tls_over(
    tcp: TcpStream,
    host: &str,
    cert: &rustls_pki_types::CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).unwrap();
    within(
        10.0,
        "the TLS handshake",
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake")
}

/// The backend's view of a `wss` upgrade over `tls` (tokio-tungstenite client).
async fn wss_headers<S>(tls: S, host: &str) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, resp) = within(
        10.0,
        "the wss upgrade",
        tokio_tungstenite::client_async(format!("wss://{host}/ws"), tls),
    )
    .await
    .expect("wss upgrade");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("__headers__")).await.unwrap();
    let m = within(5.0, "the headers", ws.next())
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(m.to_text().unwrap()).unwrap()
}

#[tokio::test]
async fn behind_haproxy_tls_termination_the_ssl_tlv_makes_it_https() {
    let host = "chat.example.test";
    let (cert, key, der) = self_signed(host);
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gate = gate_behind_lb("v2", &log, &[], &Route::new("echo").backend(backend).yaml()).await;
    let pem = dir.path().join("haproxy.pem");
    std::fs::write(&pem, format!("{cert}{key}")).unwrap();
    let front = free_port();
    let _haproxy = EdgeProxy::haproxy(
        &format!(
            "listen nlb_tls\n  mode tcp\n  bind 127.0.0.1:{front} ssl crt {}\n  \
             server w1 {} send-proxy-v2-ssl-cn proxy-v2-options authority,ssl-cipher,unique-id\n",
            pem.display(),
            gate.listen
        ),
        &[front],
    )
    .await;
    let tcp = connect_from(Some(ip("127.0.0.3")), ([127, 0, 0, 1], front).into()).await;
    let tls = tls_over(tcp, host, &der).await;
    let h = wss_headers(tls, host).await;
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.3", "{h}");
    // The AUTHORITY TLV (the SNI HAProxy saw) reaches the access log.
    let l = log_line(&log, "a line from 127.0.0.3", |l| {
        l["client_addr"] == "127.0.0.3"
    })
    .await;
    assert_eq!(l["proxy_authority"], host, "{l}");
}

#[tokio::test]
async fn wsgates_own_tls_listener_reads_the_header_before_the_client_hello() {
    let host = "chat.example.test";
    let (cert, key, der) = self_signed(host);
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (crt, keyf) = (dir.path().join("c.crt"), dir.path().join("c.key"));
    std::fs::write(&crt, cert).unwrap();
    std::fs::write(&keyf, key).unwrap();
    let route = Route::new("secure").host(host).backend(backend).set(
        "tls",
        &format!(
            "{{certFile: \"{}\", keyFile: \"{}\"}}",
            crt.display(),
            keyf.display()
        ),
    );
    let opts = Options {
        tls: true,
        args: [
            "--proxy-protocol",
            "any",
            "--proxy-protocol-trusted",
            "127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Default::default()
    };
    let gate = Wsgate::start_with(opts, &route.yaml()).await;
    let mut tcp = connect_from(None, gate.tls.unwrap()).await;
    tcp.write_all(&v2_header("198.51.100.9:41000", true))
        .await
        .unwrap();
    let tls = tls_over(tcp, host, &der).await;
    let h = wss_headers(tls, host).await;
    assert_eq!(h["x-forwarded-for"], "198.51.100.9", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
}

#[tokio::test]
async fn every_http2_stream_of_a_connection_has_the_proxy_headers_client() {
    let (_backend, backend) = node_backend("echo", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = gate_behind_lb(
        "v2",
        &dir.path().join("a.log"),
        &[],
        &Route::new("echo").backend(backend).no_keepalive().yaml(),
    )
    .await;
    let front = free_port();
    let _haproxy = EdgeProxy::haproxy(
        &format!(
            "listen nlb\n  mode tcp\n  bind 127.0.0.1:{front}\n  server w1 {} send-proxy-v2\n",
            gate.listen
        ),
        &[front],
    )
    .await;
    // Node's http2 client, h2c with prior knowledge through HAProxy from
    // 127.0.0.2: three WebSockets as streams of one connection.
    let url = format!("http://127.0.0.1:{front}/ws");
    let mut client = Peer::node(
        "h2-ws-client.js",
        &[url.as_str(), "--count", "3", "--local-address", "127.0.0.2"],
    );
    for i in 0..3 {
        client
            .expect_where(15.0, &format!("tunnel {i} to open"), |v| {
                v["event"] == "open"
            })
            .await;
    }
    let conns = gate.connections().await;
    assert_eq!(conns.len(), 3, "{conns:?}");
    let first = conns[0]["client"].as_str().unwrap().to_string();
    assert!(first.starts_with("127.0.0.2:"), "{conns:?}");
    for c in &conns {
        assert_eq!(c["client_protocol"], "h2", "{c}");
        assert_eq!(
            c["client"],
            first.as_str(),
            "one address for every stream: {conns:?}"
        );
    }
}

#[tokio::test]
async fn a_dual_stack_listener_judges_ipv4_clients_by_their_ipv4_address() {
    let (_backend, addr) = node_backend("echo", &[]).await;
    let route = Route::new("chat")
        .backend(addr)
        .set("clientAccess", "{deny: [127.0.0.3/32]}");
    let opts = Options {
        dual_stack: true,
        ..Default::default()
    };
    let gate = Wsgate::start_with(opts, &route.yaml()).await;
    // The socket says ::ffff:127.0.0.3; the IPv4 entry still matches.
    let up = raw_upgrade_from(Some(ip("127.0.0.3")), gate.listen, "/ws", &[]).await;
    assert_eq!(up.response.status, 403, "{:?}", up.response);
    let mut ws = tunnel_from(&gate, "127.0.0.2").await;
    assert_eq!(
        backend_headers(&mut ws).await["x-forwarded-for"],
        "127.0.0.2"
    );
    let conns = gate.connections().await;
    assert!(
        conns[0]["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.2:"),
        "{conns:?}"
    );
}
