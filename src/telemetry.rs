//! OpenTelemetry traces (`--otel-endpoint`): the exporter, the sampler and the
//! resource, set up once at start. The spans themselves are made by the data plane
//! (`proxy/trace.rs`); this module decides where they go and how many are kept.
//!
//! **Off the proxy's threads.** Spans end into the SDK's `BatchSpanProcessor`, a
//! bounded queue drained by a thread of its own that exports over OTLP with the
//! blocking reqwest client (http/protobuf). That client needs no tokio reactor
//! (the SDK's reactor trap: an async client on the processor's thread panics with
//! "there is no reactor running", opentelemetry-rust#2673) and a collector that is
//! slow or down stalls that thread alone, never a handshake. With the `otlp-grpc`
//! feature (default), `--otel-protocol grpc` exports through tonic: each export is
//! a task on wsgate's runtime (tonic needs its reactor), awaited from that thread.
//!
//! **Counted drops.** The SDK counts spans its full queue refuses but does not say
//! so; [`Counted`] sits in front of it with the same bound and counts them itself
//! in `wsgate_trace_spans_dropped_total`, together with the spans of a batch the
//! exporter could not deliver (collector down, timeout, refused).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingResult, SdkTracer, SdkTracerProvider,
    ShouldSample, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use crate::proxy::trace::RouteRatio;

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over HTTP with protobuf bodies, to `<endpoint>/v1/traces` (port 4318).
    HttpProtobuf,
    /// OTLP over gRPC (port 4317); needs the `otlp-grpc` build feature.
    Grpc,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "grpc" => Ok(Protocol::Grpc),
            other => Err(format!(
                "{other:?}: expected http/protobuf or grpc (http/json is not supported)"
            )),
        }
    }
}

/// What the flags and the `OTEL_*` environment say.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--otel-endpoint`: the collector's base URL. Without it the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` decide,
    /// and with neither, traces are off.
    pub endpoint: Option<String>,
    /// `--otel-protocol`; else `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`, else
    /// http/protobuf.
    pub protocol: Option<Protocol>,
    /// `--otel-sampling-ratio`: the share of new traces recorded (a route's
    /// `tracing.samplingRatio` overrides it; a trusted parent's decision wins);
    /// else `OTEL_TRACES_SAMPLER_ARG`, else 0.05.
    pub ratio: Option<f64>,
}

/// Traces are exported: the tracer the proxy uses and the provider to flush at exit.
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// Makes the spans.
    pub tracer: SdkTracer,
}

impl Telemetry {
    /// Exports what is queued and stops the exporter's thread; for shutdown, after
    /// the tunnels closed. Blocks (up to the exporter's timeout): call it off the
    /// runtime's worker threads.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "traces: could not export every span before exit");
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether traces are on: an endpoint was given, by flag or by the standard
/// variables, and `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none` do not say no.
pub fn enabled(settings: &Settings) -> bool {
    let endpoint = settings.endpoint.is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    endpoint && !disabled
}

/// Starts the exporter when traces are on; `dropped` counts the spans lost.
/// Must be called inside the tokio runtime (the gRPC exporter binds to it).
pub fn start(settings: &Settings, dropped: IntCounter) -> anyhow::Result<Option<Telemetry>> {
    if !enabled(settings) {
        return Ok(None);
    }
    // The variables are read only now: a platform that sets OTEL_* for every pod
    // (say http/json) cannot stop a wsgate that exports nothing.
    let protocol = match settings.protocol {
        Some(p) => p,
        None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => p
                .parse()
                .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_PROTOCOL {e}"))?,
            None => Protocol::HttpProtobuf,
        },
    };
    let ratio = match settings.ratio {
        Some(r) => r,
        None => match env("OTEL_TRACES_SAMPLER_ARG") {
            Some(r) => r
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("OTEL_TRACES_SAMPLER_ARG {r:?}: not a number"))?,
            None => 0.05,
        },
    };
    if !(0.0..=1.0).contains(&ratio) {
        anyhow::bail!("--otel-sampling-ratio {ratio}: must be from 0 to 1");
    }
    let endpoint = settings
        .endpoint
        .clone()
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_default();
    if protocol == Protocol::Grpc && endpoint.starts_with("https:") {
        // tonic is built without TLS: say so now rather than drop every span.
        anyhow::bail!(
            "--otel-endpoint {endpoint}: gRPC over TLS is not supported; \
             use --otel-protocol http/protobuf (https works there) or a plain http:// collector"
        );
    }
    // The SDK reads OTEL_BSP_MAX_QUEUE_SIZE too; the same bound is kept here so
    // `Counted` refuses exactly what the SDK's queue would.
    let queue = env("OTEL_BSP_MAX_QUEUE_SIZE")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2048);
    let pending = Arc::new(AtomicUsize::new(0));
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(queue)
        .build();
    let processor = match protocol {
        Protocol::HttpProtobuf => {
            // An https:// collector: reqwest's rustls takes the process's default
            // provider, wsgate's own (ring), which nothing else installs.
            let _ = rustls::crypto::CryptoProvider::install_default(
                crate::proxy::crypto::provider().as_ref().clone(),
            );
            use opentelemetry_otlp::WithExportConfig;
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
            if let Some(base) = &settings.endpoint {
                // A base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is (the SDK takes a
                // programmatic endpoint as the full URL).
                builder =
                    builder.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
            }
            let exporter = builder
                .build()
                .context("traces: cannot build the OTLP http/protobuf exporter")?;
            BatchSpanProcessor::new(
                Counted::new(exporter, pending.clone(), dropped.clone()),
                config,
            )
        }
        Protocol::Grpc => grpc_processor(settings, config, pending.clone(), dropped.clone())?,
    };
    let telemetry = assemble(processor, pending, queue, dropped, ratio);
    tracing::info!(
        endpoint = settings
            .endpoint
            .as_deref()
            .unwrap_or("(from OTEL_EXPORTER_OTLP_*)"),
        ?protocol,
        ratio,
        "traces: exporting over OTLP"
    );
    Ok(Some(telemetry))
}

/// The provider around a batch processor: the gate that counts drops, the
/// sampler, the resource.
fn assemble(
    processor: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    queue: usize,
    dropped: IntCounter,
    ratio: f64,
) -> Telemetry {
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Gate {
            inner: processor,
            pending,
            queue,
            dropped,
        })
        .with_sampler(RouteSampler { ratio })
        .with_resource(resource())
        .build();
    let tracer = provider.tracer("wsgate");
    Telemetry { provider, tracer }
}

/// What [`start`] builds, around another exporter (`examples/trace_cost.rs`
/// measures the spans' own cost with one that discards them).
pub fn with_exporter<E: SpanExporter + 'static>(
    exporter: E,
    ratio: f64,
    dropped: IntCounter,
) -> Telemetry {
    let queue = 2048;
    let pending = Arc::new(AtomicUsize::new(0));
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(queue)
        .build();
    let processor = BatchSpanProcessor::new(
        Counted::new(exporter, pending.clone(), dropped.clone()),
        config,
    );
    assemble(processor, pending, queue, dropped, ratio)
}

#[cfg(feature = "otlp-grpc")]
fn grpc_processor(
    settings: &Settings,
    config: opentelemetry_sdk::trace::BatchConfig,
    pending: Arc<AtomicUsize>,
    dropped: IntCounter,
) -> anyhow::Result<BatchSpanProcessor> {
    use opentelemetry_otlp::WithExportConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(base) = &settings.endpoint {
        builder = builder.with_endpoint(base.clone());
    }
    let exporter = builder
        .build()
        .context("traces: cannot build the OTLP gRPC exporter")?;
    // tonic needs the runtime's reactor, which the processor's thread has not:
    // each export runs as a task on the runtime and the thread waits for it.
    let handle = tokio::runtime::Handle::current();
    Ok(BatchSpanProcessor::new(
        Counted::new(
            OnRuntime {
                exporter: Arc::new(exporter),
                handle,
            },
            pending,
            dropped,
        ),
        config,
    ))
}

#[cfg(not(feature = "otlp-grpc"))]
fn grpc_processor(
    _: &Settings,
    _: opentelemetry_sdk::trace::BatchConfig,
    _: Arc<AtomicUsize>,
    _: IntCounter,
) -> anyhow::Result<BatchSpanProcessor> {
    anyhow::bail!(
        "--otel-protocol grpc: this wsgate was built without the otlp-grpc feature; \
         use http/protobuf (port 4318) or build with --features otlp-grpc"
    )
}

/// An exporter whose exports run on a tokio runtime (for tonic), awaited from the
/// batch processor's own thread.
#[cfg(feature = "otlp-grpc")]
#[derive(Debug)]
struct OnRuntime<E> {
    exporter: Arc<E>,
    handle: tokio::runtime::Handle,
}

#[cfg(feature = "otlp-grpc")]
impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let exporter = self.exporter.clone();
        match self
            .handle
            .spawn(async move { exporter.export(batch).await })
            .await
        {
            Ok(r) => r,
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                e.to_string(),
            )),
        }
    }
}

/// `service.name` (unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say
/// otherwise), the version, and the pod, namespace and node the chart passes from
/// the downward API (`POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`).
fn resource() -> Resource {
    let mut attrs = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let instance = env("POD_NAME").unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    attrs.push(KeyValue::new("service.instance.id", instance));
    for (var, key) in [
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
        ("NODE_NAME", "k8s.node.name"),
    ] {
        if let Some(v) = env(var) {
            attrs.push(KeyValue::new(key, v));
        }
    }
    let mut builder = Resource::builder_empty().with_attributes(attrs);
    if env("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name("wsgate");
    }
    // The standard detectors last: OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    // win over wsgate's own values.
    let detected = Resource::builder().build();
    let mut merged: Vec<KeyValue> = builder
        .build()
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    for (k, v) in detected.iter() {
        // The SDK's default `unknown_service` never replaces wsgate.
        if k.as_str() == "service.name" && v.as_str().starts_with("unknown_service") {
            continue;
        }
        merged.retain(|kv| kv.key != *k);
        merged.push(KeyValue::new(k.clone(), v.clone()));
    }
    Resource::builder_empty().with_attributes(merged).build()
}

/// Parent-based ratio sampling: a span with a (trusted) parent follows the
/// parent's decision; a new trace is recorded with the route's ratio when the
/// parent context carries one ([`RouteRatio`]), else `--otel-sampling-ratio`.
#[derive(Clone, Debug)]
struct RouteSampler {
    ratio: f64,
}

impl ShouldSample for RouteSampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let (has_parent, ratio) = match parent {
            Some(cx) => (
                cx.has_active_span() && cx.span().span_context().is_valid(),
                cx.get::<RouteRatio>().map_or(self.ratio, |r| r.0),
            ),
            None => (false, self.ratio),
        };
        if has_parent {
            return Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
                .should_sample(parent, trace_id, name, kind, attributes, links);
        }
        let decision = Sampler::TraceIdRatioBased(ratio)
            .should_sample(None, trace_id, name, kind, attributes, links)
            .decision;
        SamplingResult {
            decision,
            attributes: Vec::new(),
            trace_state: Default::default(),
        }
    }
}

/// In front of the SDK's batch processor: refuses (and counts) a span when the
/// queue already holds its bound, so the SDK's own silent drop never happens.
#[derive(Debug)]
struct Gate {
    inner: BatchSpanProcessor,
    /// Spans handed to the processor and not yet through the exporter.
    pending: Arc<AtomicUsize>,
    queue: usize,
    dropped: IntCounter,
}

impl SpanProcessor for Gate {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Relaxed) >= self.queue {
            self.pending.fetch_sub(1, Relaxed);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, counting the spans of each batch out of `pending` and, when the
/// batch could not be delivered, into the dropped spans.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    dropped: IntCounter,
}

impl<E> Counted<E> {
    fn new(inner: E, pending: Arc<AtomicUsize>, dropped: IntCounter) -> Self {
        Counted {
            inner,
            pending,
            dropped,
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(n, Relaxed);
        if let Err(e) = &result {
            self.dropped.inc_by(n as u64);
            tracing::debug!(spans = n, error = %e, "traces: export failed; spans dropped");
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::SamplingDecision;

    fn decide(sampler: &RouteSampler, cx: &Context) -> SamplingDecision {
        let id = TraceId::from_bytes([0xff; 16]);
        sampler
            .should_sample(Some(cx), id, "GET chat", &SpanKind::Server, &[], &[])
            .decision
    }

    fn parent(sampled: bool) -> Context {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            flags,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn a_new_trace_takes_the_routes_ratio_and_a_parent_decides_for_its_children() {
        let s = RouteSampler { ratio: 1.0 };
        let record = SamplingDecision::RecordAndSample;
        assert_eq!(decide(&s, &Context::new()), record);
        let quiet = Context::new().with_value(RouteRatio(0.0));
        assert_eq!(decide(&s, &quiet), SamplingDecision::Drop);
        // A sampled parent wins over the route's 0, an unsampled one over 1.
        assert_eq!(
            decide(&s, &parent(true).with_value(RouteRatio(0.0))),
            record
        );
        assert_eq!(decide(&s, &parent(false)), SamplingDecision::Drop);
        let off = RouteSampler { ratio: 0.0 };
        assert_eq!(
            decide(&off, &Context::new().with_value(RouteRatio(1.0))),
            record
        );
    }

    #[test]
    fn protocols() {
        assert_eq!("grpc".parse(), Ok(Protocol::Grpc));
        assert_eq!("http/protobuf".parse(), Ok(Protocol::HttpProtobuf));
        assert!("http/json".parse::<Protocol>().is_err());
    }
}
