//! WebSocket clients through wsgate: upgrades with a chosen `Host`, echoes that
//! report which fake pod answered, Close frames with their arrival time, and wss
//! with a test CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::within;

/// TLS toward wsgate's `--tls-listen`.
pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// An open tunnel.
pub struct Tunnel<S = TcpStream> {
    ws: WebSocketStream<S>,
    /// The fake pod that answered the first echo.
    pub backend: String,
    sent: u64,
}

/// How a tunnel ended, seen from the client.
#[derive(Debug)]
pub struct Closed {
    /// The Close code (None: no Close frame, the connection just ended).
    pub code: Option<u16>,
    /// When it arrived.
    pub at: Instant,
}

fn request(
    scheme: &str,
    host: &str,
    path: &str,
) -> Result<tungstenite::handshake::client::Request> {
    // The URL names the virtual host (Host header, SNI); the TCP connection,
    // made by the caller, goes to wsgate.
    Ok(format!("{scheme}://{host}{path}").into_client_request()?)
}

/// Upgrades `ws://host/path` through wsgate at `gw`: Ok(Ok(tunnel)) on 101 (after a
/// first echo that names the backend), Ok(Err(status)) when wsgate refuses it.
pub async fn upgrade(gw: SocketAddr, host: &str, path: &str) -> Result<Result<Tunnel, u16>> {
    let tcp = within(5.0, "TCP connect to wsgate", TcpStream::connect(gw)).await??;
    handshake(tcp, "ws", host, path).await
}

/// Like [`upgrade`], over TLS with SNI `host`, trusting only `ca`; also returns
/// the certificate wsgate presented.
pub async fn upgrade_tls(
    gw: SocketAddr,
    host: &str,
    path: &str,
    ca: &CertificateDer<'static>,
) -> Result<(CertificateDer<'static>, Result<Tunnel<Tls>, u16>)> {
    let tls = tls_connect(gw, host, ca).await?;
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .context("no server certificate")?;
    Ok((served, handshake(tls, "wss", host, path).await?))
}

/// A TLS connection to `gw` with SNI `host`, trusting only `ca`.
pub async fn tls_connect(gw: SocketAddr, host: &str, ca: &CertificateDer<'static>) -> Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = within(5.0, "TCP connect to wsgate", TcpStream::connect(gw)).await??;
    let name = ServerName::try_from(host.to_owned())?;
    Ok(within(
        5.0,
        "TLS handshake with wsgate",
        connector.connect(name, tcp),
    )
    .await??)
}

async fn handshake<S>(io: S, scheme: &str, host: &str, path: &str) -> Result<Result<Tunnel<S>, u16>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = request(scheme, host, path)?;
    match within(
        10.0,
        "the WebSocket upgrade",
        tokio_tungstenite::client_async(req, io),
    )
    .await?
    {
        Ok((ws, _)) => {
            let mut t = Tunnel {
                ws,
                backend: String::new(),
                sent: 0,
            };
            t.backend = t.echo().await?;
            Ok(Ok(t))
        }
        Err(tungstenite::Error::Http(resp)) => Ok(Err(resp.status().as_u16())),
        Err(e) => Err(anyhow!("upgrade of {scheme}://{host}{path} failed: {e}")),
    }
}

/// Upgrades once; a refusal is an error.
pub async fn open(gw: SocketAddr, host: &str, path: &str) -> Result<Tunnel> {
    match upgrade(gw, host, path).await? {
        Ok(t) => Ok(t),
        Err(status) => bail!("ws://{host}{path} refused with HTTP {status}"),
    }
}

/// Upgrades, retrying every 20 ms for `secs` until wsgate answers 101.
pub async fn upgrade_eventually(
    gw: SocketAddr,
    host: &str,
    path: &str,
    secs: f64,
) -> Result<Tunnel> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let last = match upgrade(gw, host, path).await {
            Ok(Ok(t)) => return Ok(t),
            Ok(Err(status)) => format!("HTTP {status}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!("ws://{host}{path} not upgraded within {secs}s (last answer: {last})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Upgrades, retrying for `secs` until wsgate refuses with `want`.
pub async fn refused_eventually(
    gw: SocketAddr,
    host: &str,
    path: &str,
    want: u16,
    secs: f64,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let last = match upgrade(gw, host, path).await {
            Ok(Err(status)) if status == want => return Ok(()),
            Ok(Err(status)) => format!("HTTP {status}"),
            Ok(Ok(t)) => format!("101 (tunnel to {})", t.backend),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!("ws://{host}{path} still not refused with {want} after {secs}s (last answer: {last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Tunnel<S> {
    /// Sends a text message and waits (5 s) for its echo; returns the backend name.
    pub async fn echo(&mut self) -> Result<String> {
        self.sent += 1;
        let text = format!("message {}", self.sent);
        within(
            5.0,
            "sending a message",
            self.ws.send(Message::text(text.clone())),
        )
        .await?
        .context("send")?;
        let reply = within(5.0, "an echo", self.next_data()).await??;
        let (name, rest) = reply
            .split_once(':')
            .ok_or_else(|| anyhow!("unexpected echo {reply:?}"))?;
        if rest != text {
            bail!("echo {reply:?} does not carry {text:?}");
        }
        if !self.backend.is_empty() && name != self.backend {
            bail!("tunnel to {} answered by {name}", self.backend);
        }
        Ok(name.to_owned())
    }

    async fn next_data(&mut self) -> Result<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(f))) => bail!("tunnel closed: {f:?}"),
                Some(Ok(other)) => bail!("unexpected message {other:?}"),
                Some(Err(e)) => bail!("tunnel failed: {e}"),
                None => bail!("tunnel ended"),
            }
        }
    }

    /// Waits up to `secs` for the tunnel to end; None when it is still open.
    pub async fn closed_within(&mut self, secs: f64) -> Option<Closed> {
        let wait = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(f))) => {
                        return Closed {
                            code: f.map(|f| u16::from(f.code)),
                            at: Instant::now(),
                        }
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        return Closed {
                            code: None,
                            at: Instant::now(),
                        }
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs_f64(secs), wait)
            .await
            .ok()
    }
}
