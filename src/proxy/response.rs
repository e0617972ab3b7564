//! wsgate's own answers: the response body type every path shares, the short
//! plain-text responses wsgate makes itself, and the markers the access log reads
//! on a response.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Whatever a body's source failed with: hyper's (HTTP/1.1, a backend's answer) or
/// h2's (an HTTP/2 client's request).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request and response bodies: wsgate's own short texts, a backend's streamed
/// answer, or a client's streamed request (HTTP/1.1 or HTTP/2).
pub type Body = BoxBody<Bytes, BoxError>;

/// Any body as a [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

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
    let mut r = Response::new(boxed(Full::new(Bytes::from(format!("{message}\n")))));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.extensions_mut().insert(Refusal(message.to_owned()));
    r
}
