//! wsgate's own answers: the response body type every path shares, the short
//! plain-text responses wsgate makes itself, and the markers the access log reads
//! on a response.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Response bodies: wsgate's own short texts or a backend's streamed body.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// wsgate's own explanation on a response it made itself (not a backend's): the
/// access log reads it.
#[derive(Clone, Debug)]
pub struct Refusal(pub String);

/// Marks the response that opened a tunnel (`101`, or `200` to an HTTP/2 extended
/// CONNECT): the tunnel writes its own access-log line when it closes.
#[derive(Clone, Copy, Debug)]
pub struct TunnelOpened;

/// A short plain-text response from wsgate itself.
pub fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|n: Infallible| match n {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.extensions_mut().insert(Refusal(message.to_owned()));
    r
}
