//! The listeners of Gateways: one socket per data-plane port, bound and closed as
//! Gateways come and go. Closing a listener stops new connections only; tunnels
//! and requests already accepted on it carry on (each connection is its own task).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::task::JoinHandle;

use super::{serve_listener, Http2Settings, Listener};
use crate::proxy::handshake::forwarded::ForwardedTrust;
use crate::proxy::listen::limits::HeadLimits;
use crate::proxy::listen::proxy_protocol::ProxyProtocol;
use crate::proxy::live::Proxy;
use crate::proxy::route::table::HostMatch;

/// What every Gateway listener shares with wsgate's own listeners.
#[derive(Clone)]
pub struct Template {
    /// Address the data-plane ports are bound on (all interfaces by default).
    pub ip: IpAddr,
    /// Listen backlog.
    pub backlog: u32,
    /// Request-head limits.
    pub limits: HeadLimits,
    /// HTTP/2 settings.
    pub http2: Option<Http2Settings>,
    /// PROXY protocol.
    pub proxy_protocol: Option<Arc<ProxyProtocol>>,
    /// Whose `X-Forwarded-For` names the client.
    pub forwarded: Arc<ForwardedTrust>,
}

/// One data-plane port as the Gateways want it.
#[derive(Clone, Default)]
pub struct Port {
    /// TLS terminated here (HTTPS listeners).
    pub tls: bool,
    /// Certificates of the HTTPS listeners on it: hostname (`None`: any) and key pair.
    pub certificates: Vec<(Option<HostMatch>, Arc<CertifiedKey>)>,
}

type Certificates = ArcSwap<HashMap<u16, Vec<(Option<HostMatch>, Arc<CertifiedKey>)>>>;

/// The bound data-plane ports.
pub struct GatewayListeners {
    proxy: Arc<Proxy>,
    template: Template,
    bound: Mutex<HashMap<u16, (bool, JoinHandle<()>)>>,
    certificates: Arc<Certificates>,
}

impl GatewayListeners {
    /// None bound yet.
    pub fn new(proxy: Arc<Proxy>, template: Template) -> Arc<Self> {
        Arc::new(GatewayListeners {
            proxy,
            template,
            bound: Mutex::default(),
            certificates: Arc::default(),
        })
    }

    /// Binds the ports `wanted` names and not yet bound, closes those it no longer
    /// names (a port whose TLS setting changed is bound again) and swaps in the
    /// certificates. Returns the ports that could not be bound, with why.
    pub fn sync(&self, wanted: &BTreeMap<u16, Port>) -> Vec<(u16, String)> {
        self.certificates.store(Arc::new(
            wanted
                .iter()
                .map(|(p, w)| (*p, w.certificates.clone()))
                .collect(),
        ));
        let mut bound = self.bound.lock().expect("lock");
        bound.retain(|port, (tls, task)| {
            let keep = wanted.get(port).is_some_and(|w| w.tls == *tls);
            if !keep {
                tracing::info!(port, "Gateway listener closed (open connections carry on)");
                task.abort();
            }
            keep
        });
        let mut failed = Vec::new();
        for (&port, w) in wanted {
            if bound.contains_key(&port) {
                continue;
            }
            match self.bind(port, w.tls) {
                Ok(task) => {
                    tracing::info!(port, tls = w.tls, "Gateway listener bound");
                    bound.insert(port, (w.tls, task));
                }
                Err(e) => {
                    tracing::warn!(port, error = %e, "cannot bind a Gateway listener");
                    failed.push((port, e.to_string()));
                }
            }
        }
        failed
    }

    fn bind(&self, port: u16, tls: bool) -> std::io::Result<JoinHandle<()>> {
        let t = &self.template;
        let addr = SocketAddr::new(t.ip, port);
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let socket = socket.listen(t.backlog)?;
        let tls = tls.then(|| server_config(self.certificates.clone(), port, t.http2.is_some()));
        Ok(tokio::spawn(serve_listener(
            self.proxy.clone(),
            Listener {
                socket,
                tls,
                limits: t.limits,
                http2: t.http2,
                proxy_protocol: t.proxy_protocol.clone(),
                forwarded: t.forwarded.clone(),
                gateway_port: Some(port),
            },
        )))
    }
}

/// An HTTPS Gateway listener's TLS: SNI picks the most specific listener hostname.
fn server_config(certificates: Arc<Certificates>, port: u16, http2: bool) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(crate::proxy::crypto::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(PortResolver { certificates, port }));
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(cfg)
}

struct PortResolver {
    certificates: Arc<Certificates>,
    port: u16,
}

impl fmt::Debug for PortResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortResolver({})", self.port)
    }
}

impl ResolvesServerCert for PortResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let all = self.certificates.load();
        let certs = all.get(&self.port)?;
        let Some(sni) = hello.server_name().map(str::to_ascii_lowercase) else {
            return certs.first().map(|(_, c)| c.clone());
        };
        certs
            .iter()
            .filter_map(|(host, c)| match host {
                None => Some((0, c)),
                Some(h) => h.score(&sni).map(|s| (s.saturating_add(1), c)),
            })
            .max_by_key(|(s, _)| *s)
            .map(|(_, c)| c.clone())
    }
}
