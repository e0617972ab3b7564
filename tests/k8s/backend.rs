//! Fake pods: WebSocket echo servers on 192.0.2.x (the addresses `in-netns.sh`
//! puts on `lo`; EndpointSlices refuse loopback). Each answers a text message
//! with `NAME:message`, so a client knows which endpoint its tunnel reached.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// The port every fake pod listens on.
pub const PORT: u16 = 9001;

/// A running echo server; stops (with its tunnels) when dropped.
pub struct Backend {
    /// Its 192.0.2.x address.
    pub ip: String,
    accept: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Listens on `ip`:[`PORT`].
    pub async fn start(name: &str, ip: &str) -> Result<Backend> {
        let addr: SocketAddr = format!("{ip}:{PORT}").parse()?;
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} (is 192.0.2.x on lo? run through hack/k8s/in-netns.sh)"
            )
        })?;
        let prefix = name.to_owned();
        let accept = tokio::spawn(async move {
            // Owned here, so aborting the accept loop also ends every tunnel.
            let mut tunnels = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let prefix = prefix.clone();
                tunnels.spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let reply = match msg {
                            Message::Text(t) => Message::text(format!("{prefix}:{t}")),
                            Message::Binary(b) => Message::Binary(b),
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
                while tunnels.try_join_next().is_some() {}
            }
        });
        Ok(Backend {
            ip: ip.to_owned(),
            accept,
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
