//! TLS toward backends (`spec.backendTLS`): the rustls client settings a route
//! compiles to, the handshake, and the one place a failed handshake is explained.
//!
//! A handshake failure (or a backend that refuses our certificate after a TLS 1.3
//! handshake, which shows up on the first read) is classified by [`failure`] and
//! reported by [`report`]; passive health and the access log hook in there.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::proxy::stream::Stream;

/// Why a TLS connection to a backend failed; `reason()` is the log and metric label.
#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    /// The backend's chain does not lead to a trusted CA.
    #[error("unknown CA: the backend's certificate is not signed by a trusted CA")]
    UnknownCa,
    /// The certificate does not carry the expected name.
    #[error("name mismatch: the backend's certificate is not valid for {0}")]
    NameMismatch(String),
    /// The certificate's `notAfter` has passed.
    #[error("expired: the backend's certificate has expired")]
    Expired,
    /// The certificate's `notBefore` is still ahead.
    #[error("not yet valid: the backend's certificate is not valid yet")]
    NotYetValid,
    /// The backend requires a client certificate and wsgate has none (or the
    /// backend refused the one wsgate sent).
    #[error("no client certificate: the backend requires one ({0})")]
    NoClientCertificate(&'static str),
    /// The backend refused the client certificate wsgate presented.
    #[error("client certificate refused by the backend ({0:?})")]
    ClientCertificateRefused(AlertDescription),
    /// Anything else in the handshake (protocol, cipher suites, I/O).
    #[error("handshake failed: {0}")]
    Handshake(String),
}

impl BackendTlsError {
    /// A short, stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendTlsError::UnknownCa => "unknown_ca",
            BackendTlsError::NameMismatch(_) => "name_mismatch",
            BackendTlsError::Expired => "expired",
            BackendTlsError::NotYetValid => "not_yet_valid",
            BackendTlsError::NoClientCertificate(_) => "no_client_certificate",
            BackendTlsError::ClientCertificateRefused(_) => "client_certificate_refused",
            BackendTlsError::Handshake(_) => "handshake",
        }
    }
}

/// A route's compiled `backendTLS`: rustls settings and the name each backend must carry.
pub struct BackendTls {
    config: Arc<ClientConfig>,
    connector: TlsConnector,
    /// `hostname` when given: one name for every backend.
    hostname: Option<ServerName<'static>>,
    /// Otherwise the default per backend address (`<svc>.<ns>.svc` or the address's host).
    defaults: HashMap<String, ServerName<'static>>,
    client_certificate: bool,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("hostname", &self.hostname)
            .field("client_certificate", &self.client_certificate)
            .finish_non_exhaustive()
    }
}

/// The PEM a route's `backendTLS` names, read by a resolver (files or cluster objects).
#[derive(Debug, Default)]
pub struct Material {
    /// (where it came from, PEM) of each CA source; empty means the system roots.
    pub cas: Vec<(String, Vec<u8>)>,
    /// (where it came from, certificate chain PEM, private key PEM) for mTLS.
    pub client: Option<(String, Vec<u8>, Vec<u8>)>,
}

/// The operating system's trust store, read once: `rustls-native-certs` follows
/// the distribution's CA bundle (and `SSL_CERT_FILE`), so an image's
/// `ca-certificates` update reaches wsgate without a new binary.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "cannot read part of the system trust store");
            }
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found: backendTLS without caFile/caCertificateRefs will refuse every backend");
            }
            Arc::new(roots)
        })
        .clone()
}

/// Parses a DNS name or IP address into a TLS server name.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned())
        .map_err(|_| format!("{name:?} is not a DNS name or IP address"))
}

impl BackendTls {
    /// Builds the rustls client settings. `defaults` maps backend addresses to the
    /// name used when `hostname` is not given.
    pub fn new(
        material: &Material,
        hostname: Option<ServerName<'static>>,
        defaults: HashMap<String, ServerName<'static>>,
    ) -> Result<BackendTls, String> {
        let roots = if material.cas.is_empty() {
            system_roots()
        } else {
            let mut roots = RootCertStore::empty();
            for (what, pem) in &material.cas {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{what}: unreadable CA PEM: {e}"))?;
                if certs.is_empty() {
                    return Err(format!("{what}: no CA certificate in the PEM data"));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("{what}: unusable CA certificate: {e}"))?;
                }
            }
            Arc::new(roots)
        };
        let builder = ClientConfig::builder_with_provider(crate::proxy::crypto::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots);
        let mut config = match &material.client {
            None => builder.with_no_client_auth(),
            Some((what, cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{what}: unreadable certificate PEM: {e}"))?;
                if chain.is_empty() {
                    return Err(format!("{what}: no certificate in the PEM data"));
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("{what}: unreadable private key PEM: {e}"))?;
                // rustls checks that the key belongs to the certificate, so a
                // half-rotated pair is refused and the previous table keeps serving.
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{what}: unusable client certificate: {e}"))?
            }
        };
        // WebSocket upgrades and the proxied polling requests are HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        Ok(BackendTls {
            connector: TlsConnector::from(config.clone()),
            config,
            hostname,
            defaults,
            client_certificate: material.client.is_some(),
        })
    }

    /// The rustls settings (for tests and diagnostics).
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The name the backend at `address` must present.
    pub fn name_for(&self, address: &str) -> Result<ServerName<'static>, BackendTlsError> {
        if let Some(h) = &self.hostname {
            return Ok(h.clone());
        }
        if let Some(n) = self.defaults.get(address) {
            return Ok(n.clone());
        }
        // An endpoint the resolver did not name (cannot happen for compiled routes):
        // the address's host.
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        server_name(host).map_err(BackendTlsError::Handshake)
    }

    /// TLS handshake over a connected socket to the backend at `address`.
    pub async fn connect(&self, tcp: TcpStream, address: &str) -> Result<Stream, BackendTlsError> {
        let name = self.name_for(address)?;
        match self.connector.connect(name.clone(), tcp).await {
            Ok(s) => Ok(Stream::BackendTls(Box::new(s))),
            Err(e) => Err(failure(&e, &name, self.client_certificate)
                .unwrap_or_else(|| BackendTlsError::Handshake(e.to_string()))),
        }
    }

    /// Explains an error met after the handshake (hyper's, walking its sources):
    /// a TLS 1.3 server checks our certificate only after its Finished, so its
    /// refusal arrives on the first read.
    pub fn explain(
        &self,
        err: &(dyn StdError + 'static),
        address: &str,
    ) -> Option<BackendTlsError> {
        let name = self.name_for(address).ok()?;
        let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(found) = failure(e, &name, self.client_certificate) {
                return Some(found);
            }
            cur = e.source();
        }
        // OpenSSL-based servers (Python's `ssl`) may close at once after their
        // alert, so the reset can overtake it: a backend that hangs up on the first
        // request right after a handshake in which wsgate had no certificate to
        // offer is, in practice, one that requires it.
        let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = cur {
            let hung_up = e
                .downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_incomplete_message())
                || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    )
                });
            if hung_up && !self.client_certificate {
                return Some(BackendTlsError::NoClientCertificate(
                    "the backend hung up on the first request after the handshake; wsgate had no certificate to present",
                ));
            }
            cur = e.source();
        }
        None
    }
}

/// Classifies a rustls error (possibly inside an `io::Error`).
fn failure(
    err: &(dyn StdError + 'static),
    name: &ServerName<'_>,
    have_client_cert: bool,
) -> Option<BackendTlsError> {
    let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
        err.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })?;
    use rustls::Error as E;
    Some(match tls {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                BackendTlsError::UnknownCa
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                BackendTlsError::NameMismatch(name.to_str().into_owned())
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                BackendTlsError::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                BackendTlsError::NotYetValid
            }
            other => BackendTlsError::Handshake(format!("invalid certificate: {other:?}")),
        },
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            BackendTlsError::NoClientCertificate("certificate_required alert")
        }
        // TLS 1.2 servers answer a missing client certificate with handshake_failure.
        E::AlertReceived(AlertDescription::HandshakeFailure) if !have_client_cert => {
            BackendTlsError::NoClientCertificate("handshake_failure alert")
        }
        E::AlertReceived(
            a @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied),
        ) if have_client_cert => BackendTlsError::ClientCertificateRefused(*a),
        E::AlertReceived(
            AlertDescription::BadCertificate | AlertDescription::CertificateUnknown,
        ) => BackendTlsError::NoClientCertificate("bad_certificate alert"),
        other => BackendTlsError::Handshake(other.to_string()),
    })
}
