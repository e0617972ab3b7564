//! A small WebSocket echo backend for the quickstart (`make demo`): echoes text and
//! binary messages, answers pings, and prints each connection.
//!
//! `cargo run --example echo -- 127.0.0.1:9001`

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("echo backend listening on ws://{addr}");
    loop {
        let (tcp, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            eprintln!("echo: {peer} connected");
            while let Some(Ok(msg)) = ws.next().await {
                let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err()) {
                    break;
                }
            }
            eprintln!("echo: {peer} disconnected");
        });
    }
}
