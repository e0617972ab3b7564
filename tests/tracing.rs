//! OpenTelemetry traces (`--otel-endpoint`), asserted from what a real Jaeger v2
//! (`tests/common/jaeger.rs`) stored: the upgrade's SERVER span, the backend
//! handshake's CLIENT span (whose id the backend receives in `traceparent`), and
//! the tunnel's span with how it ended — for a normal close, an untrusted client
//! context, sampling ratio 0, a refused token, token expiry, a rate limit, plain
//! HTTP, HTTP/2, a collector that goes away and SIGTERM.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use common::jaeger::{ids, span, traceparent, Jaeger};
use common::*;

const SERVER: u64 = 2;
const CLIENT: u64 = 3;
const INTERNAL: u64 = 1;

/// wsgate exporting every new trace to `jaeger`, quickly (the batch goes out every
/// 100 ms rather than 5 s).
async fn gate(jaeger: &Jaeger, routes: &str, extra: &[&str]) -> Wsgate {
    let mut args = vec![
        "--otel-endpoint".to_string(),
        jaeger.endpoint(),
        "--otel-sampling-ratio".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Wsgate::start_with(
        Options {
            args,
            env: vec![
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
                ("POD_NAME".into(), "wsgate-test-0".into()),
                ("POD_NAMESPACE".into(), "ingress".into()),
            ],
            drain_timeout: Some("1s".into()),
            ..Default::default()
        },
        routes,
    )
    .await
}

/// A tokio-tungstenite client with extra request headers.
async fn connect(url: &str, headers: &[(&str, &str)]) -> WsClient {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name = ::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, v.parse().expect("header value"));
    }
    let (ws, resp) = within(10.0, "the upgrade", tokio_tungstenite::connect_async(req))
        .await
        .unwrap_or_else(|e| panic!("upgrade {url}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// The `traceparent` the echo backend received with its `n`-th upgrade.
fn received_traceparent(backend: &EchoBackend, n: usize) -> String {
    let log = backend.log.lock().unwrap();
    let headers = &log.requests[n];
    let all: Vec<&String> = headers
        .iter()
        .filter(|(k, _)| k == "traceparent")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(all.len(), 1, "one traceparent to the backend: {headers:?}");
    all[0].clone()
}

async fn close_1000(ws: &mut WsClient) {
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    ws_expect_close(ws, 5.0).await;
}

#[tokio::test]
async fn the_upgrade_the_backend_handshake_and_the_tunnel_each_have_a_span() {
    let jaeger = Jaeger::start().await;
    let backend = EchoBackend::start("a").await;
    let g = gate(
        &jaeger,
        &Route::new("chat").backend(backend.addr).yaml(),
        &[],
    )
    .await;
    let (trace, parent) = ids();
    let mut ws = connect(
        &g.url("/chat/room?x=1"),
        &[
            ("traceparent", &format!("00-{trace}-{parent}-01")),
            ("user-agent", "tracing-test/1.0"),
        ],
    )
    .await;
    let opened = Instant::now();
    for m in ["one", "two", "three"] {
        assert_eq!(ws_roundtrip(&mut ws, m, 5.0).await, m);
    }
    // Held open a while: the tunnel's span must cover it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    close_1000(&mut ws).await;
    let held = opened.elapsed();

    let spans = jaeger
        .wait_spans(&trace, &["GET chat", "GET", "wsgate.tunnel"], 15.0)
        .await;
    assert_eq!(spans.len(), 3, "three spans per WebSocket: {spans:#?}");
    let server = span(&spans, "GET chat");
    assert_eq!(server.kind, SERVER);
    assert_eq!(
        server.parent, parent,
        "the client's traceparent is the parent"
    );
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("101")
    );
    assert_eq!(server.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(server.attr("http.route").as_deref(), Some("chat"));
    assert_eq!(server.attr("url.path").as_deref(), Some("/chat/room"));
    assert_eq!(server.attr("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        server.attr("network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(
        server.attr("user_agent.original").as_deref(),
        Some("tracing-test/1.0")
    );
    assert_eq!(server.status, 0, "a 101 is no error");
    assert!(server.attr("error.type").is_none());
    let res = |k: &str| server.resource.get(k).map(|v| v["stringValue"].clone());
    assert_eq!(res("service.name"), Some(json!("wsgate")));
    assert_eq!(res("service.instance.id"), Some(json!("wsgate-test-0")));
    assert_eq!(res("k8s.pod.name"), Some(json!("wsgate-test-0")));
    assert_eq!(res("k8s.namespace.name"), Some(json!("ingress")));

    let client = span(&spans, "GET");
    assert_eq!(client.kind, CLIENT);
    assert_eq!(client.parent, server.span_id);
    let (t, p, flags) = traceparent(&received_traceparent(&backend, 0));
    assert_eq!(t, trace, "the backend continues the client's trace");
    assert_eq!(p, client.span_id, "the backend's parent is the CLIENT span");
    assert_eq!(flags, "01");
    assert_eq!(
        client.attr("http.response.status_code").as_deref(),
        Some("101")
    );
    assert_eq!(
        client.attr("server.port"),
        Some(backend.addr.port().to_string())
    );

    let tunnel = span(&spans, "wsgate.tunnel");
    assert_eq!(tunnel.kind, INTERNAL);
    assert_eq!(tunnel.parent, server.span_id);
    assert!(
        tunnel.start_ns >= server.end_ns,
        "the tunnel starts after the 101"
    );
    assert_eq!(tunnel.attr("wsgate.route").as_deref(), Some("chat"));
    assert_eq!(tunnel.attr("wsgate.close.code").as_deref(), Some("1000"));
    assert_eq!(
        tunnel.attr("wsgate.close.initiator").as_deref(),
        Some("client")
    );
    assert_eq!(
        tunnel.attr("wsgate.close.reason").as_deref(),
        Some("closed")
    );
    for dir in ["client_to_backend", "backend_to_client"] {
        assert_eq!(
            tunnel.attr(&format!("wsgate.{dir}.messages")).as_deref(),
            Some("3"),
            "{dir}"
        );
        assert_eq!(
            tunnel.attr(&format!("wsgate.{dir}.bytes")).as_deref(),
            Some("11"),
            "{dir}: one + two + three"
        );
    }
    assert!(
        tunnel.duration() >= Duration::from_millis(1200)
            && tunnel.duration() <= held + Duration::from_secs(3),
        "the tunnel span lasts while the tunnel was open ({held:?}): {:?}",
        tunnel.duration()
    );
    assert_eq!(tunnel.status, 0, "a normal close is no error");
    let closes: Vec<_> = tunnel
        .events
        .iter()
        .filter(|(n, _)| n == "websocket.close")
        .collect();
    assert_eq!(
        closes.len(),
        1,
        "one close event, no event per message: {:?}",
        tunnel.events
    );
    assert_eq!(tunnel.events.len(), 1, "{:?}", tunnel.events);
    assert_eq!(
        g.metrics()
            .await
            .get("wsgate_trace_spans_dropped_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn otlp_over_grpc_reaches_jaeger_too() {
    let jaeger = Jaeger::start().await;
    let backend = EchoBackend::start("a").await;
    let g = Wsgate::start_with(
        Options {
            args: vec![
                "--otel-endpoint".into(),
                format!("http://{}", jaeger.otlp_grpc),
                "--otel-protocol".into(),
                "grpc".into(),
                "--otel-sampling-ratio".into(),
                "1".into(),
            ],
            env: vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into())],
            ..Default::default()
        },
        &Route::new("chat").backend(backend.addr).yaml(),
    )
    .await;
    let (trace, parent) = ids();
    let mut ws = connect(
        &g.url("/"),
        &[("traceparent", &format!("00-{trace}-{parent}-01"))],
    )
    .await;
    assert_eq!(ws_roundtrip(&mut ws, "hi", 5.0).await, "hi");
    close_1000(&mut ws).await;
    let spans = jaeger
        .wait_spans(&trace, &["GET chat", "GET", "wsgate.tunnel"], 15.0)
        .await;
    assert_eq!(span(&spans, "GET chat").parent, parent);
    assert_eq!(
        span(&spans, "wsgate.tunnel")
            .attr("wsgate.close.code")
            .as_deref(),
        Some("1000")
    );
}

#[tokio::test]
async fn an_https_collector_is_verified_against_the_trust_store() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let jaeger = Jaeger::start_with(Some((&cert_file, &key_file))).await;
    let backend = EchoBackend::start("a").await;
    let start = |trusted: bool| {
        let mut env = vec![("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string())];
        if trusted {
            env.push(("SSL_CERT_FILE".into(), ca_file.display().to_string()));
        }
        let args = vec![
            "--otel-endpoint".to_string(),
            format!("https://localhost:{}", jaeger.otlp_http.port()),
            "--otel-sampling-ratio".into(),
            "1".into(),
        ];
        let routes = Route::new("chat").backend(backend.addr).yaml();
        async move {
            Wsgate::start_with(
                Options {
                    args,
                    env,
                    ..Default::default()
                },
                &routes,
            )
            .await
        }
    };
    let g = start(true).await;
    let (trace, parent) = ids();
    let mut ws = connect(
        &g.url("/"),
        &[("traceparent", &format!("00-{trace}-{parent}-01"))],
    )
    .await;
    close_1000(&mut ws).await;
    jaeger
        .wait_spans(&trace, &["GET chat", "GET", "wsgate.tunnel"], 15.0)
        .await;
    // Without the CA the collector's certificate is refused: nothing is
    // delivered, the spans are counted as dropped.
    let g = start(false).await;
    let (trace, parent) = ids();
    let mut ws = connect(
        &g.url("/"),
        &[("traceparent", &format!("00-{trace}-{parent}-01"))],
    )
    .await;
    close_1000(&mut ws).await;
    g.wait_metric(10.0, "wsgate_trace_spans_dropped_total", &[], |v| v >= 3.0)
        .await;
    assert!(jaeger.spans(&trace).await.is_empty());
}

#[tokio::test]
async fn an_untrusting_route_starts_a_new_trace_linked_to_the_clients() {
    let jaeger = Jaeger::start().await;
    let backend = EchoBackend::start("a").await;
    let route = Route::new("public")
        .backend(backend.addr)
        .set("tracing", "{trustIncomingContext: false, samplingRatio: 1}");
    let g = gate(&jaeger, &route.yaml(), &[]).await;
    let (trace, parent) = ids();
    let mut ws = connect(
        &g.url("/"),
        &[("traceparent", &format!("00-{trace}-{parent}-01"))],
    )
    .await;
    close_1000(&mut ws).await;

    let (new_trace, p, flags) = traceparent(&received_traceparent(&backend, 0));
    assert_ne!(new_trace, trace, "the client may not choose the trace id");
    assert_eq!(flags, "01");
    let spans = jaeger
        .wait_spans(&new_trace, &["GET public", "GET", "wsgate.tunnel"], 15.0)
        .await;
    let server = span(&spans, "GET public");
    assert_eq!(server.parent, "", "a new root");
    assert_eq!(
        server.links,
        vec![(trace.clone(), parent.clone())],
        "linked to the client's context"
    );
    assert_eq!(span(&spans, "GET").span_id, p);
    assert!(
        jaeger.spans(&trace).await.is_empty(),
        "nothing is recorded under the client's trace id"
    );
}

#[tokio::test]
async fn ratio_zero_records_nothing_but_the_backend_still_gets_a_traceparent() {
    let jaeger = Jaeger::start().await;
    let backend = EchoBackend::start("a").await;
    let routes = routes_yaml(&[
        Route::new("quiet")
            .prefix("/quiet")
            .backend(backend.addr)
            .set("tracing", "{samplingRatio: 0}"),
        Route::new("loud").prefix("/loud").backend(backend.addr),
    ]);
    let g = gate(&jaeger, &routes, &[]).await;
    let mut ws = connect(&g.url("/quiet"), &[]).await;
    assert_eq!(ws_roundtrip(&mut ws, "hi", 5.0).await, "hi");
    close_1000(&mut ws).await;
    let (quiet, _, flags) = traceparent(&received_traceparent(&backend, 0));
    assert_eq!(
        flags, "00",
        "the backend follows the decision not to record"
    );

    // A recorded trace after it proves the pipeline delivers: by the time it is
    // in Jaeger, the quiet one would be too.
    let mut ws = connect(&g.url("/loud"), &[]).await;
    close_1000(&mut ws).await;
    let (loud, _, flags) = traceparent(&received_traceparent(&backend, 1));
    assert_eq!(flags, "01");
    jaeger
        .wait_spans(&loud, &["GET loud", "GET", "wsgate.tunnel"], 15.0)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        jaeger.spans(&quiet).await.is_empty(),
        "ratio 0: no span of the quiet route"
    );
}

#[tokio::test]
async fn plain_http_gets_a_server_and_a_client_span() {
    let jaeger = Jaeger::start().await;
    let (mut backend, addr) = node_backend("poll", &[]).await;
    let g = gate(&jaeger, &Route::new("sio").backend(addr).yaml(), &[]).await;
    let (trace, parent) = ids();
    let tp = format!("00-{trace}-{parent}-01");
    let r = http_get_with(
        g.listen,
        "/socket.io/?EIO=4&transport=polling",
        &[("traceparent", &tp)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.expect("http", 5.0).await;
    let (t, p, _) = traceparent(seen["headers"]["traceparent"].as_str().unwrap());
    assert_eq!(t, trace);
    let spans = jaeger.wait_spans(&trace, &["GET sio", "GET"], 15.0).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = span(&spans, "GET sio");
    assert_eq!(server.kind, SERVER);
    assert_eq!(server.parent, parent);
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    let client = span(&spans, "GET");
    assert_eq!(client.kind, CLIENT);
    assert_eq!(client.span_id, p);
    assert_eq!(client.parent, server.span_id);
}

#[tokio::test]
async fn an_http2_stream_is_traced_like_an_upgrade() {
    let jaeger = Jaeger::start().await;
    let (mut backend, addr) = node_backend("h2", &[]).await;
    let g = gate(&jaeger, &Route::new("chat").backend(addr).yaml(), &[]).await;
    let (trace, parent) = ids();
    let header = format!("traceparent: 00-{trace}-{parent}-01");
    let mut client = Peer::node(
        "h2-ws-client.js",
        &[&format!("http://{}/chat", g.listen), "--header", &header],
    );
    client.expect("open", 10.0).await;
    let conn = backend.expect("connection", 5.0).await;
    let (_, p, _) = traceparent(conn["headers"]["traceparent"].as_str().unwrap());
    client.send(text("over h2")).await;
    client.expect("message", 5.0).await;
    client
        .send(json!({"op": "close", "code": 1000, "reason": "bye"}))
        .await;
    client.expect("close", 5.0).await;
    let spans = jaeger
        .wait_spans(&trace, &["GET chat", "GET", "wsgate.tunnel"], 15.0)
        .await;
    let server = span(&spans, "GET chat");
    assert_eq!(server.parent, parent);
    assert_eq!(
        server.attr("network.protocol.version").as_deref(),
        Some("2")
    );
    assert_eq!(
        server.attr("http.request.method").as_deref(),
        Some("CONNECT")
    );
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(span(&spans, "GET").span_id, p);
    let tunnel = span(&spans, "wsgate.tunnel");
    assert_eq!(tunnel.attr("wsgate.close.code").as_deref(), Some("1000"));
    assert_eq!(
        tunnel.attr("wsgate.close.initiator").as_deref(),
        Some("client")
    );
    assert_eq!(
        tunnel.attr("wsgate.client_to_backend.messages").as_deref(),
        Some("1")
    );
}

/// An Ed25519 key whose public half is written as a JWKS file.
struct Signer {
    key: jsonwebtoken::EncodingKey,
}

fn signer(jwks: &std::path::Path) -> Signer {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k", "alg": "EdDSA",
                     "x": B64.encode(pair.public_key().as_ref())});
    std::fs::write(jwks, json!({"keys": [jwk]}).to_string()).unwrap();
    Signer {
        key: jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
    }
}

impl Signer {
    fn token(&self, exp: u64) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some("k".into());
        let claims =
            json!({"iss": "https://id.example.com", "aud": "chat", "sub": "alice", "exp": exp});
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_refused_token_is_a_401_span_and_an_expired_one_ends_the_tunnel_with_its_reason() {
    let jaeger = Jaeger::start().await;
    let backend = EchoBackend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let key = signer(&jwks);
    let auth = format!(
        "{{jwt: {{issuer: \"https://id.example.com\", audiences: [chat], jwks: {{file: \"{}\"}}, \
         tokenFrom: [{{header: Authorization, prefix: \"Bearer \"}}]}}}}",
        jwks.display()
    );
    let g = gate(
        &jaeger,
        &Route::new("chat")
            .backend(backend.addr)
            .set("auth", &auth)
            .yaml(),
        &[],
    )
    .await;

    // A bad token: 401, one SERVER span, nothing else.
    let (bad, parent) = ids();
    let tp = format!("00-{bad}-{parent}-01");
    let r = http_get_with(
        g.listen,
        "/chat",
        &[
            ("traceparent", &tp),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("authorization", "Bearer not.a.token"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);

    // A token that expires 2-3 s from now: the tunnel is closed at `exp`.
    let (expiring, parent2) = ids();
    let token = key.token(unix_now() + 3);
    let mut ws = connect(
        &g.url("/chat"),
        &[
            ("traceparent", &format!("00-{expiring}-{parent2}-01")),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(ws_expect_close(&mut ws, 6.0).await.map(|c| c.0), Some(1008));
    let spans = jaeger
        .wait_spans(&expiring, &["GET chat", "GET", "wsgate.tunnel"], 15.0)
        .await;
    let tunnel = span(&spans, "wsgate.tunnel");
    assert_eq!(
        tunnel.attr("wsgate.close.reason").as_deref(),
        Some("token_expired")
    );
    assert_eq!(tunnel.attr("wsgate.close.code").as_deref(), Some("1008"));
    assert_eq!(
        tunnel.attr("wsgate.close.initiator").as_deref(),
        Some("proxy")
    );
    assert_eq!(tunnel.status, 0, "wsgate's own close is no error");
    assert_eq!(
        span(&spans, "GET chat")
            .attr("wsgate.auth.result")
            .as_deref(),
        Some("ok")
    );

    // By now the refused request's span is long exported.
    let spans = jaeger.spans(&bad).await;
    assert_eq!(
        spans.len(),
        1,
        "only the SERVER span of a refusal: {spans:#?}"
    );
    let server = span(&spans, "GET chat");
    assert_eq!(server.parent, parent);
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("401")
    );
    assert_eq!(server.attr("error.type").as_deref(), Some("401"));
    assert_eq!(
        server.attr("wsgate.auth.result").as_deref(),
        Some("invalid")
    );
    assert_eq!(server.status, 0, "a 4xx leaves the status unset");
}

#[tokio::test]
async fn a_tunnel_closed_for_its_rate_says_so() {
    let jaeger = Jaeger::start().await;
    let backend = EchoBackend::start("a").await;
    let route = Route::new("chat").backend(backend.addr).set(
        "limits",
        "{messagesPerSecond: 1, burst: 1, onExceed: Close}",
    );
    let g = gate(&jaeger, &route.yaml(), &[]).await;
    let (trace, parent) = ids();
    let mut ws = connect(
        &g.url("/"),
        &[("traceparent", &format!("00-{trace}-{parent}-01"))],
    )
    .await;
    for i in 0..5 {
        let _ = ws.send(Message::text(format!("m{i}"))).await;
    }
    assert_eq!(ws_expect_close(&mut ws, 5.0).await.map(|c| c.0), Some(1008));
    let spans = jaeger.wait_spans(&trace, &["wsgate.tunnel"], 15.0).await;
    let tunnel = span(&spans, "wsgate.tunnel");
    assert_eq!(
        tunnel.attr("wsgate.close.reason").as_deref(),
        Some("rate_limit")
    );
    assert_eq!(tunnel.attr("wsgate.close.code").as_deref(), Some("1008"));
    assert_eq!(
        tunnel.attr("wsgate.close.initiator").as_deref(),
        Some("proxy")
    );
    let mut names: Vec<&str> = tunnel.events.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["websocket.close", "wsgate.limit_exceeded"]);
}

/// Median time of `n` upgrades (connect, 101), one after another.
async fn median_handshake(g: &Wsgate, n: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut ws = connect(&g.url("/"), &[]).await;
        times.push(t.elapsed());
        let _ = ws.close(None).await;
    }
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn a_collector_that_goes_away_costs_no_handshake_time_and_drops_are_counted() {
    let mut jaeger = Jaeger::start().await;
    let backend = EchoBackend::start("a").await;
    let g = gate(
        &jaeger,
        &Route::new("chat").backend(backend.addr).yaml(),
        &[],
    )
    .await;
    let with_collector = median_handshake(&g, 30).await;
    jaeger.stop();
    let without = median_handshake(&g, 30).await;
    // Generous: the machine is shared; a blocked export would add whole seconds.
    assert!(
        without <= with_collector * 3 + Duration::from_millis(50),
        "handshakes slowed from {with_collector:?} to {without:?} with the collector gone"
    );
    let mut ws = connect(&g.url("/"), &[]).await;
    assert_eq!(
        ws_roundtrip(&mut ws, "still serving", 5.0).await,
        "still serving"
    );
    g.wait_metric(10.0, "wsgate_trace_spans_dropped_total", &[], |v| v >= 60.0)
        .await;
    let log = g.log_text();
    assert!(!log.contains("panicked"), "wsgate panicked:\n{log}");
}

#[tokio::test]
async fn sigterm_ends_an_open_tunnels_span_with_reason_shutdown_and_exports_it() {
    let jaeger = Jaeger::start().await;
    let backend = EchoBackend::start("a").await;
    let mut g = gate(
        &jaeger,
        &Route::new("chat").backend(backend.addr).yaml(),
        &[],
    )
    .await;
    let (trace, parent) = ids();
    let mut ws = connect(
        &g.url("/"),
        &[("traceparent", &format!("00-{trace}-{parent}-01"))],
    )
    .await;
    assert_eq!(ws_roundtrip(&mut ws, "hi", 5.0).await, "hi");
    g.sigterm();
    // The drain closes the tunnel; the client answers as clients do.
    let close = ws_expect_close(&mut ws, 5.0).await;
    assert_eq!(close.map(|c| c.0), Some(1001));
    let status = g.wait_exit(15.0).await;
    assert!(status.success(), "{status}");
    // wsgate is gone: whatever reaches Jaeger now was flushed before exit.
    let spans = jaeger.wait_spans(&trace, &["wsgate.tunnel"], 5.0).await;
    let tunnel = span(&spans, "wsgate.tunnel");
    assert_eq!(
        tunnel.attr("wsgate.close.reason").as_deref(),
        Some("shutdown")
    );
    assert_eq!(tunnel.attr("wsgate.close.code").as_deref(), Some("1001"));
    assert_eq!(
        tunnel.attr("wsgate.close.initiator").as_deref(),
        Some("proxy")
    );
}
