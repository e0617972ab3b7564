//! The spans a request and a tunnel leave (`--otel-endpoint`; see docs/tracing.md):
//!
//! - `GET <route>`, SERVER: the upgrade (or `<METHOD> <route>` for plain HTTP),
//!   from the request to its status — the 101, or the refusal. Stable HTTP server
//!   semantic conventions; `http.route` is the route's name, never the raw URL.
//! - `GET`, CLIENT: the backend handshake (connect, TLS, request, answer). Its id is
//!   the parent in the `traceparent` the backend receives.
//! - `wsgate.tunnel`, INTERNAL: from the 101 to the close, with how it ended and the
//!   messages and bytes each way (from the registry's counters, read once at the
//!   end: nothing is recorded per message).
//!
//! With traces off every handle here is empty and each call is one branch.

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use crate::proxy::client::ClientAddr;
use crate::proxy::registry::TunnelSpan;
use crate::proxy::route::table::{Route, RouteKey};

/// A route's `tracing.samplingRatio`, carried to the sampler (`telemetry.rs`) in
/// the parent context of the request's SERVER span.
#[derive(Clone, Copy, Debug)]
pub struct RouteRatio(pub f64);

/// A request's spans: its SERVER span, the parent of everything else it causes.
/// Empty when traces are off.
#[derive(Clone, Default)]
pub struct RequestTrace {
    inner: Option<Box<Active>>,
}

#[derive(Clone)]
struct Active {
    tracer: SdkTracer,
    /// Holds the SERVER span (recording or not: an unsampled one still has ids to
    /// pass on with flags 00).
    cx: Context,
}

/// Reads `traceparent`/`tracestate` from request headers.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes `traceparent`/`tracestate` into a backend request's headers.
struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(v)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, v);
        }
    }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "2",
        Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

/// `host[:port]` of the request: `Host`, or the HTTP/2 `:authority`.
fn authority<B>(req: &Request<B>) -> Option<(String, Option<i64>)> {
    let raw = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))?;
    let a: http::uri::Authority = raw.parse().ok()?;
    Some((a.host().to_owned(), a.port_u16().map(i64::from)))
}

/// The stable HTTP server attributes of a request (and wsgate's own).
fn server_attributes<B>(
    req: &Request<B>,
    client: &ClientAddr,
    route: Option<&Route>,
) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("http.request.method", req.method().as_str().to_owned()),
        KeyValue::new("url.path", req.uri().path().to_owned()),
        KeyValue::new("url.scheme", if client.tls { "https" } else { "http" }),
        KeyValue::new("client.address", client.ip.to_canonical().to_string()),
        KeyValue::new("network.peer.address", client.peer.ip().to_string()),
        KeyValue::new("network.peer.port", i64::from(client.peer.port())),
        KeyValue::new("network.protocol.version", protocol_version(req.version())),
    ];
    if let Some(port) = client.port {
        attrs.push(KeyValue::new("client.port", i64::from(port)));
    }
    if let Some((host, port)) = authority(req) {
        attrs.push(KeyValue::new("server.address", host));
        if let Some(p) = port {
            attrs.push(KeyValue::new("server.port", p));
        }
    }
    if let Some(ua) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attrs.push(KeyValue::new("user_agent.original", ua.to_owned()));
    }
    if let Some(r) = route {
        attrs.push(KeyValue::new("http.route", r.key.name.clone()));
        attrs.push(KeyValue::new("wsgate.route", r.key.name.clone()));
        attrs.push(KeyValue::new(
            "wsgate.route.namespace",
            r.key.namespace.clone(),
        ));
    }
    attrs
}

impl RequestTrace {
    /// Starts the SERVER span of `req` for `route` (`None`: no route matched).
    /// `name` is the span's name without the route (`GET` for every upgrade, so
    /// HTTP/1.1 and HTTP/2 tunnels share it; the method for plain HTTP).
    pub fn start<B>(
        tracer: Option<&SdkTracer>,
        req: &Request<B>,
        client: &ClientAddr,
        route: Option<&Route>,
        name: &str,
    ) -> Self {
        let Some(tracer) = tracer else {
            return RequestTrace::default();
        };
        let incoming = TraceContextPropagator::new()
            .extract_with_context(&Context::new(), &Headers(req.headers()));
        let incoming = incoming.span().span_context().clone();
        let trust = route.is_none_or(|r| r.tracing.trust_incoming_context);
        let mut parent = if trust && incoming.is_valid() {
            Context::new().with_remote_span_context(incoming.clone())
        } else {
            Context::new()
        };
        if let Some(ratio) = route.and_then(|r| r.tracing.sampling_ratio) {
            parent = parent.with_value(RouteRatio(ratio));
        }
        let span_name = match route {
            Some(r) => format!("{name} {}", r.key.name),
            None => name.to_owned(),
        };
        let mut builder = tracer.span_builder(span_name).with_kind(SpanKind::Server);
        if !trust && incoming.is_valid() {
            // A new root, linked to what the client claimed (it may not choose the
            // trace id nor force sampling).
            builder = builder.with_links(vec![Link::with_context(incoming)]);
        }
        let mut span = tracer.build_with_context(builder, &parent);
        // Attributes only for a recorded span (the sampler reads none): an
        // unrecorded request costs its ids and the header, not a dozen strings.
        if span.is_recording() {
            span.set_attributes(server_attributes(req, client, route));
        }
        RequestTrace {
            inner: Some(Box::new(Active {
                tracer: tracer.clone(),
                cx: parent.with_span(span),
            })),
        }
    }

    /// Adds an attribute to the SERVER span.
    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(a) = &self.inner {
            a.cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Ends the SERVER span with the status written: a 4xx leaves the span's
    /// status unset (the client's doing) with `error.type`; a 5xx is an Error.
    pub fn end<B>(&self, resp: &Response<B>) {
        let Some(a) = &self.inner else { return };
        let span = a.cx.span();
        let code = resp.status();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(code.as_u16()),
        ));
        if code.as_u16() >= 400 {
            span.set_attribute(KeyValue::new("error.type", code.as_str().to_owned()));
        }
        if code.is_server_error() {
            span.set_status(Status::error(
                code.canonical_reason().unwrap_or("server error"),
            ));
        }
        span.end();
    }

    /// Starts the CLIENT span of the backend request and puts its context in
    /// `headers` as `traceparent` (flags 00 when the trace is not recorded, so the
    /// backend follows the decision).
    pub fn backend(&self, method: &str, headers: &mut HeaderMap) -> BackendSpan {
        let Some(a) = &self.inner else {
            return BackendSpan::default();
        };
        let span = a
            .tracer
            .span_builder(method.to_owned())
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("http.request.method", method.to_owned())])
            .start_with_context(&a.tracer, &a.cx);
        let cx = a.cx.with_span(span);
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
        BackendSpan { cx: Some(cx) }
    }

    /// Starts the tunnel's span (after the 101), when the trace is recorded.
    pub fn tunnel(&self, route: &RouteKey) -> Option<TunnelSpan> {
        let a = self.inner.as_ref()?;
        // The SERVER span has ended by now (at the 101): its flags say whether
        // the trace is recorded.
        if !a.cx.span().span_context().is_sampled() {
            return None;
        }
        let span = a
            .tracer
            .span_builder("wsgate.tunnel")
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("wsgate.route", route.name.clone()),
                KeyValue::new("wsgate.route.namespace", route.namespace.clone()),
            ])
            .start_with_context(&a.tracer, &a.cx);
        Some(TunnelSpan::new(span))
    }
}

/// The CLIENT span of a backend request; empty when traces are off.
#[derive(Default)]
pub struct BackendSpan {
    cx: Option<Context>,
}

impl BackendSpan {
    /// Names the backend reached (`host:port`) and the path asked for (its query
    /// is left out: it may carry credentials).
    pub fn backend(&self, address: &str, path: &str, tls: bool) {
        let Some(cx) = &self.cx else { return };
        let span = cx.span();
        if !span.is_recording() {
            return;
        }
        let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
        span.set_attribute(KeyValue::new(
            "server.address",
            host.trim_matches(['[', ']']).to_owned(),
        ));
        if let Ok(p) = port.parse::<i64>() {
            span.set_attribute(KeyValue::new("server.port", p));
        }
        let scheme = if tls { "https" } else { "http" };
        let path = path.split('?').next().unwrap_or("/");
        span.set_attribute(KeyValue::new(
            "url.full",
            format!("{scheme}://{address}{path}"),
        ));
    }

    /// Ends the span with the backend's status (a 4xx or 5xx is an Error, as for
    /// any HTTP client span), or with why there was none (`error.type`, an Error:
    /// wsgate answers 502 or 504).
    pub fn end(&self, result: Result<StatusCode, &'static str>) {
        let Some(cx) = &self.cx else { return };
        let span = cx.span();
        match result {
            Ok(code) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(code.as_u16()),
                ));
                if code.as_u16() >= 400 {
                    span.set_attribute(KeyValue::new("error.type", code.as_str().to_owned()));
                    span.set_status(Status::error(code.as_str().to_owned()));
                }
            }
            Err(why) => {
                span.set_attribute(KeyValue::new("error.type", why));
                span.set_status(Status::error(why));
            }
        }
        span.end();
    }
}
