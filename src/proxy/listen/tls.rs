//! `wss` termination: rustls with a certificate resolver that reads the live table,
//! so SNI picks the route's certificate and a reload (or a renewed file or Secret)
//! takes effect on the next handshake without restarting listeners.

use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::proxy::live::Proxy;

struct SniResolver {
    proxy: Arc<Proxy>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = self.proxy.live().table.certificate(hello.server_name());
        if cert.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no certificate for this server name");
        }
        cert
    }
}

/// The TLS settings of the `--tls-listen` listener: ALPN `h2` (WebSockets over
/// HTTP/2 streams, RFC 8441) before `http/1.1` unless HTTP/2 is off.
pub fn server_config(proxy: Arc<Proxy>, http2: bool) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(crate::proxy::crypto::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { proxy }));
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(cfg)
}
