//! A real trace receiver for tests/tracing.rs: Jaeger v2 (`hack/jaeger.sh` builds
//! it once into the cache; `tests/setup.sh` runs that), on free loopback ports with
//! in-memory storage, receiving OTLP over HTTP and gRPC and answering its query API
//! (`/api/v3/traces/<id>`, OTLP-shaped JSON). Killed when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{cache_dir, free_port, http_get};

/// The Jaeger binary `hack/jaeger.sh` builds.
pub fn jaeger_bin() -> PathBuf {
    let bin = cache_dir().join("jaeger/v1.75.0/jaeger");
    assert!(
        bin.is_file(),
        "{} is missing: run tests/setup.sh (it builds Jaeger with hack/jaeger.sh)",
        bin.display()
    );
    bin
}

/// A running Jaeger.
pub struct Jaeger {
    child: Option<Child>,
    /// OTLP over HTTP (the base URL wsgate's `--otel-endpoint` takes).
    pub otlp_http: SocketAddr,
    /// OTLP over gRPC.
    pub otlp_grpc: SocketAddr,
    /// The query API.
    pub query: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// One span as Jaeger's OTLP-shaped API returns it.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub name: String,
    /// OTLP kind: 1 internal, 2 server, 3 client.
    pub kind: u64,
    pub start_ns: u128,
    pub end_ns: u128,
    pub attrs: HashMap<String, Value>,
    /// (name, attributes)
    pub events: Vec<(String, HashMap<String, Value>)>,
    /// (trace id, span id)
    pub links: Vec<(String, String)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: u64,
    /// The resource's attributes.
    pub resource: HashMap<String, Value>,
}

impl Span {
    /// An attribute as a string (OTLP JSON carries ints as strings).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attrs.get(key).map(scalar)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos((self.end_ns - self.start_ns) as u64)
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(o) => o.values().next().map(scalar).unwrap_or_default(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn attrs(list: &Value) -> HashMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["key"].as_str()?.to_owned(), a["value"].clone())))
        .collect()
}

fn num(v: &Value) -> u128 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64().map(u128::from))
        .unwrap_or(0)
}

impl Jaeger {
    /// Starts Jaeger and waits until it answers queries.
    pub async fn start() -> Jaeger {
        Jaeger::start_with(None).await
    }

    /// Starts Jaeger; with `tls` (certificate and key PEM files) its OTLP/HTTP
    /// receiver speaks https.
    pub async fn start_with(tls: Option<(&std::path::Path, &std::path::Path)>) -> Jaeger {
        let bin = jaeger_bin();
        let http_tls = match tls {
            Some((cert, key)) => format!(
                ", tls: {{cert_file: \"{}\", key_file: \"{}\"}}",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        for attempt in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
            let (otlp_http, otlp_grpc, query, query_grpc) = (port(), port(), port(), port());
            // Only what the tests use: OTLP in, memory storage, the query API; its
            // own metrics are off (they would take :8888).
            let config = format!(
                "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {{receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}}
  telemetry:
    metrics: {{level: none}}
extensions:
  jaeger_storage: {{backends: {{mem: {{memory: {{max_traces: 100000}}}}}}}}
  jaeger_query:
    storage: {{traces: mem}}
    http: {{endpoint: \"{query}\"}}
    grpc: {{endpoint: \"{query_grpc}\"}}
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: \"{otlp_grpc}\"}}, http: {{endpoint: \"{otlp_http}\"{http_tls}}}}}}}
processors: {{batch: {{timeout: 50ms}}}}
exporters: {{jaeger_storage_exporter: {{trace_storage: mem}}}}
"
            );
            let cfg = dir.path().join("jaeger.yaml");
            std::fs::write(&cfg, config).unwrap();
            let log = dir.path().join("jaeger.log");
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new(&bin)
                .arg("--config")
                .arg(format!("file:{}", cfg.display()))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("spawn jaeger");
            let mut j = Jaeger {
                child: Some(child),
                otlp_http,
                otlp_grpc,
                query,
                log,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(st) = j.child.as_mut().unwrap().try_wait().unwrap() {
                    let text = j.log_text();
                    if attempt < 2 && text.contains("address already in use") {
                        break;
                    }
                    panic!("jaeger exited ({st}):\n{text}");
                }
                let up = http_get(query, "/api/services")
                    .await
                    .is_ok_and(|r| r.status == 200);
                if up && tokio::net::TcpStream::connect(otlp_http).await.is_ok() {
                    return j;
                }
                assert!(
                    Instant::now() < deadline,
                    "jaeger not ready in 30s:\n{}",
                    j.log_text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        unreachable!("jaeger could not get free ports")
    }

    /// `http://127.0.0.1:PORT`: the OTLP/HTTP base URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.otlp_http)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills Jaeger (the collector goes away under wsgate).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The spans of a trace now (empty when Jaeger has none).
    pub async fn spans(&self, trace_id: &str) -> Vec<Span> {
        let r = http_get(self.query, &format!("/api/v3/traces/{trace_id}"))
            .await
            .expect("query jaeger");
        if r.status == 404 {
            return Vec::new();
        }
        assert_eq!(r.status, 200, "jaeger query: {}", r.text());
        let v: Value = serde_json::from_slice(&r.body).expect("jaeger JSON");
        let mut out = Vec::new();
        for rs in v["result"]["resourceSpans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let resource = attrs(&rs["resource"]["attributes"]);
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push(Span {
                        trace_id: s["traceId"].as_str().unwrap_or_default().to_owned(),
                        span_id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        kind: s["kind"].as_u64().unwrap_or(0),
                        start_ns: num(&s["startTimeUnixNano"]),
                        end_ns: num(&s["endTimeUnixNano"]),
                        attrs: attrs(&s["attributes"]),
                        events: s["events"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| {
                                (
                                    e["name"].as_str().unwrap_or_default().to_owned(),
                                    attrs(&e["attributes"]),
                                )
                            })
                            .collect(),
                        links: s["links"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|l| {
                                (
                                    l["traceId"].as_str().unwrap_or_default().to_owned(),
                                    l["spanId"].as_str().unwrap_or_default().to_owned(),
                                )
                            })
                            .collect(),
                        status: s["status"]["code"].as_u64().unwrap_or(0),
                        resource: resource.clone(),
                    });
                }
            }
        }
        out
    }

    /// Polls until the trace holds spans named all of `names`; returns them all.
    pub async fn wait_spans(&self, trace_id: &str, names: &[&str], secs: f64) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let spans = self.spans(trace_id).await;
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            if Instant::now() > deadline {
                let got: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
                panic!("trace {trace_id}: waited {secs}s for spans {names:?}, Jaeger has {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The span named `name` among `spans`.
pub fn span<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

/// `(trace id, parent span id, flags)` of a `traceparent` value.
pub fn traceparent(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {v:?}");
    assert_eq!(p[0], "00", "traceparent version {v:?}");
    (p[1].into(), p[2].into(), p[3].into())
}

/// A fresh random W3C trace id and span id (hex).
pub fn ids() -> (String, String) {
    (
        format!("{:032x}", rand::random::<u128>()),
        format!("{:016x}", rand::random::<u64>() | 1),
    )
}
