//! What a request's spans cost wsgate's CPU, measured away from the noise of a
//! shared machine's load: the work `websocket()` adds per upgrade (the SERVER span
//! and its attributes, the CLIENT span and the `traceparent` it writes, the tunnel
//! span and its end), with traces off, with a trace that is not recorded (ratio 0)
//! and with one that is (ratio 1), exported to an exporter that discards the
//! batches (the export itself is the batch thread's, measured by bench/tracing.sh).
//! Process CPU time (every thread: the batch processor's too) per upgrade.
//!
//!   cargo run --release --example trace_cost [ITERATIONS]

use std::time::Duration;

use http::{Request, Response, StatusCode};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use wsgate::proxy::client::{ClientAddr, ConnAddr};
use wsgate::proxy::trace::RequestTrace;
use wsgate::proxy::RouteKey;

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec the call fills.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn upgrade_request() -> Request<()> {
    Request::get("/chat/room?x=1")
        .header("host", "chat.example.com")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0")
        .body(())
        .unwrap()
}

/// One upgrade's tracing work; the tunnel's end with the attributes the registry
/// gives it.
fn one(
    tracer: Option<&opentelemetry_sdk::trace::SdkTracer>,
    req: &Request<()>,
    client: &ClientAddr,
    key: &RouteKey,
) {
    let trace = RequestTrace::start(tracer, req, client, None, "GET");
    let mut headers = req.headers().clone();
    let backend = trace.backend("GET", &mut headers);
    backend.backend("10.0.0.7:3000", "/chat/room?x=1", false);
    backend.end(Ok(StatusCode::SWITCHING_PROTOCOLS));
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    trace.end(&resp);
    if let Some(span) = trace.tunnel(key) {
        span.event(
            "websocket.close",
            vec![
                KeyValue::new("websocket.close.code", 1000),
                KeyValue::new("wsgate.close.reason", "closed"),
            ],
        );
        let attrs = vec![
            KeyValue::new("wsgate.close.code", 1000),
            KeyValue::new("wsgate.close.initiator", "client"),
            KeyValue::new("wsgate.close.reason", "closed"),
            KeyValue::new("wsgate.client_to_backend.messages", 3),
            KeyValue::new("wsgate.client_to_backend.bytes", 11),
            KeyValue::new("wsgate.backend_to_client.messages", 3),
            KeyValue::new("wsgate.backend_to_client.bytes", 11),
            KeyValue::new("wsgate.backend", "10.0.0.7:3000"),
            KeyValue::new("network.protocol.name", "websocket"),
        ];
        span.end(attrs, None);
    }
    std::hint::black_box(headers);
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let req = upgrade_request();
    let client = ClientAddr::of(&ConnAddr::direct(
        "203.0.113.9:50000".parse().unwrap(),
        false,
    ));
    let key = RouteKey {
        namespace: "apps".into(),
        name: "chat".into(),
    };
    let mut off = Duration::ZERO;
    println!("{n} upgrades each; process CPU per upgrade (all threads)");
    for (name, ratio) in [
        ("off", None),
        ("ratio 0", Some(0.0)),
        ("ratio 1", Some(1.0)),
    ] {
        let dropped = prometheus::IntCounter::new("dropped", "dropped").unwrap();
        let t = ratio.map(|r| wsgate::telemetry::with_exporter(Discard, r, dropped.clone()));
        let tracer = t.as_ref().map(|t| &t.tracer);
        for _ in 0..n / 10 {
            one(tracer, &req, &client, &key);
        }
        let before = cpu();
        for i in 0..n {
            one(tracer, &req, &client, &key);
            // Paced, as handshakes come (64,000 a second at most here): the batch
            // thread keeps up, and a dropped span (cheaper) does not flatter.
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if let Some(t) = &t {
            t.shutdown();
        }
        let per = (cpu() - before) / n;
        if ratio.is_none() {
            off = per;
        }
        println!(
            "  {name:<8} {:>7.2} us   (+{:.2} us over off; {} spans dropped)",
            per.as_secs_f64() * 1e6,
            (per.as_secs_f64() - off.as_secs_f64()) * 1e6,
            dropped.get()
        );
    }
}
