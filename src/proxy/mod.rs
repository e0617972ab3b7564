//! The data plane: listeners, the WebSocket handshake, the frame-aware relay, plain
//! HTTP proxying, keepalive and drain. It never imports `kube` nor knows where its
//! routes come from: a source hands it a [`RouteTable`] through [`Proxy::apply`],
//! which swaps it in atomically without touching open tunnels.
//!
//! The folders follow a tunnel's life: [`listen`] (accept, TLS, HTTP/1.1 and
//! HTTP/2), [`handshake`] (route, Origin, auth, the upgrade — or plain HTTP),
//! [`relay`] (the frames after the 101), with [`backends`] (choosing and reaching
//! one) beside them and [`route`] (the compiled configuration a tunnel carries)
//! below. A file at this level is state or vocabulary every stage shares.

pub mod access_log;
pub mod backends;
pub mod client;
pub mod crypto;
pub mod first_head;
pub mod fleet;
pub mod handshake;
pub mod listen;
pub mod live;
pub mod registry;
pub mod relay;
pub mod response;
pub mod route;
pub mod runtime;
pub mod stream;
pub mod timers;
pub mod trace;
pub mod trim;
pub mod views;

pub use access_log::AccessLog;
pub use listen::limits::HeadLimits;
pub use listen::tls::server_config;
pub use listen::{serve_listener, Http2Settings, Listener};
pub use live::Proxy;
pub use registry::{ClientProtocol, CloseReason, Registry, TunnelInfo};
pub use route::table::{Route, RouteKey, RouteTable};
pub use runtime::RouteRuntime;
pub use views::{backends_view, RouteBackends};
