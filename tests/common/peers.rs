//! Real peers: Node and Python programs from tests/peers that speak JSON lines, and
//! an in-process tokio-tungstenite echo backend.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{node_modules, peers_dir, python};

/// A peer program that prints one JSON event per line and reads one JSON command
/// per line. Killed when dropped; its stderr is printed when the test failed.
pub struct Peer {
    pub label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every event read so far, in order (including those `expect` skipped).
    pub seen: Vec<Value>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Spawns `program args...` with piped stdin/stdout.
    pub fn spawn(label: &str, mut cmd: Command) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr");
        let err_file = std::fs::File::create(&stderr).unwrap();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Peer {
            label: label.into(),
            child,
            stdin,
            lines,
            seen: vec![],
            stderr,
            _dir: dir,
        }
    }

    /// `node tests/peers/SCRIPT ARGS...`
    pub fn node(script: &str, args: &[&str]) -> Peer {
        let mut cmd = Command::new("node");
        cmd.arg(peers_dir().join(script))
            .args(args)
            .env("NODE_PATH", node_modules());
        Peer::spawn(&format!("node {script} {}", args.join(" ")), cmd)
    }

    /// `python tests/peers/SCRIPT ARGS...` in the virtualenv.
    pub fn python(script: &str, args: &[&str]) -> Peer {
        let mut cmd = Command::new(python());
        cmd.arg(peers_dir().join(script))
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        Peer::spawn(&format!("python {script} {}", args.join(" ")), cmd)
    }

    /// Writes one command.
    pub async fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("peer stdin open");
        let line = format!("{cmd}\n");
        super::within(5.0, "writing to a peer", stdin.write_all(line.as_bytes()))
            .await
            .unwrap_or_else(|e| panic!("{}: write command: {e}", self.label));
    }

    /// Writes one command, ignoring a peer that already exited.
    pub async fn send_quiet(&mut self, cmd: Value) {
        if let Some(stdin) = self.stdin.as_mut() {
            let line = format!("{cmd}\n");
            let _ = tokio::time::timeout(Duration::from_secs(5), stdin.write_all(line.as_bytes()))
                .await;
        }
    }

    /// Closes the peer's stdin (the peers exit when it closes).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// The next event, or None when none comes within `secs` or the peer exited.
    pub async fn try_next(&mut self, secs: f64) -> Option<Value> {
        match tokio::time::timeout(Duration::from_secs_f64(secs), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{}: bad event line {line:?}: {e}", self.label));
                self.seen.push(v.clone());
                Some(v)
            }
            _ => None,
        }
    }

    /// The next event whose "event" is `name`, skipping (but recording) others.
    pub async fn expect(&mut self, name: &str, secs: f64) -> Value {
        self.expect_where(secs, &format!("event {name:?}"), |v| v["event"] == name)
            .await
    }

    /// The next event satisfying `pred`, skipping (but recording) others.
    pub async fn expect_where(
        &mut self,
        secs: f64,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
            match self.try_next(left).await {
                Some(v) if pred(&v) => return v,
                Some(_) => {}
                None => panic!(
                    "{}: no {what} within {secs}s; events so far: {}\nstderr:\n{}",
                    self.label,
                    self.seen_text(),
                    self.stderr_text()
                ),
            }
        }
    }

    /// Events seen so far named `name`.
    pub fn seen_named(&self, name: &str) -> Vec<&Value> {
        self.seen.iter().filter(|v| v["event"] == name).collect()
    }

    /// Reads events until none arrives for `quiet` seconds (at most `secs` in all).
    pub async fn drain(&mut self, quiet: f64, secs: f64) {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
            if left <= 0.0 || self.try_next(quiet.min(left)).await.is_none() {
                return;
            }
        }
    }

    fn seen_text(&self) -> String {
        let mut s = String::new();
        for v in self
            .seen
            .iter()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let line = v.to_string();
            s += "\n  ";
            s += &line[..line.len().min(400)];
        }
        s
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the process to exit, returning its exit code.
    pub async fn wait_exit(&mut self, secs: f64) -> Option<i32> {
        let label = self.label.clone();
        super::within(secs, &format!("{label} to exit"), self.child.wait())
            .await
            .expect("wait for peer")
            .code()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {}: events {}\n---- stderr:\n{}",
                self.label,
                self.seen_text(),
                self.stderr_text()
            );
        }
    }
}

/// A Node `ws` backend (tests/peers/ws-server.js) and its address.
pub async fn node_backend(name: &str, args: &[&str]) -> (Peer, SocketAddr) {
    let mut a = vec!["--name", name];
    a.extend_from_slice(args);
    listening(Peer::node("ws-server.js", &a)).await
}

/// A Python `websockets` backend (tests/peers/py_server.py) and its address.
pub async fn python_backend(name: &str, args: &[&str]) -> (Peer, SocketAddr) {
    let mut a = vec!["--name", name];
    a.extend_from_slice(args);
    listening(Peer::python("py_server.py", &a)).await
}

/// Waits for a server peer's "listening" event.
pub async fn listening(mut peer: Peer) -> (Peer, SocketAddr) {
    let ev = peer.expect("listening", 15.0).await;
    let port = ev["port"].as_u64().expect("listening port") as u16;
    (peer, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A Node `ws` client (tests/peers/ws-client.js) connecting to `url`.
pub fn node_client(url: &str, args: &[&str]) -> Peer {
    let mut a = vec![url];
    a.extend_from_slice(args);
    Peer::node("ws-client.js", &a)
}

/// A Python `websockets` client (tests/peers/py_client.py) connecting to `url`.
pub fn python_client(url: &str, args: &[&str]) -> Peer {
    let mut a = vec![url];
    a.extend_from_slice(args);
    Peer::python("py_client.py", &a)
}

/// A text-message command for the client peers.
pub fn text(data: &str) -> Value {
    json!({"op": "text", "data": data})
}

/// A binary-message command for the client peers.
pub fn binary(data: &[u8]) -> Value {
    use base64::Engine;
    json!({"op": "binary", "b64": base64::engine::general_purpose::STANDARD.encode(data)})
}

/// What the in-process echo backend saw.
#[derive(Default, Debug)]
pub struct EchoLog {
    /// Request headers of every accepted upgrade (names lower-cased).
    pub requests: Vec<Vec<(String, String)>>,
    /// Close frames received (code, reason) or None when the connection just ended.
    pub closes: Vec<(Instant, Option<(u16, String)>)>,
    pub open: usize,
}

/// An in-process tokio-tungstenite backend that echoes every message and answers
/// "__name__" with its name. Stops when dropped.
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub log: Arc<Mutex<EchoLog>>,
    task: tokio::task::JoinHandle<()>,
}

/// Tungstenite limits lifted: tests send up to 16 MiB in one frame.
pub fn unlimited() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

impl EchoBackend {
    pub async fn start(name: &str) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(EchoLog::default()));
        let (name2, log2) = (name.to_string(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (name, log) = (name2.clone(), log2.clone());
                tokio::spawn(async move { echo_conn(stream, name, log).await });
            }
        });
        EchoBackend {
            addr,
            name: name.into(),
            log,
            task,
        }
    }

    pub fn open(&self) -> usize {
        self.log.lock().unwrap().open
    }
    pub fn accepted(&self) -> usize {
        self.log.lock().unwrap().requests.len()
    }
    pub fn closes(&self) -> Vec<(Instant, Option<(u16, String)>)> {
        self.log.lock().unwrap().closes.clone()
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// tungstenite's handshake callback signature fixes the large `Err` type.
#[allow(clippy::result_large_err)]
async fn echo_conn(stream: tokio::net::TcpStream, name: String, log: Arc<Mutex<EchoLog>>) {
    let log_hdr = log.clone();
    let callback = move |req: &Request, resp: Response| {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect();
        log_hdr.lock().unwrap().requests.push(headers);
        Ok(resp)
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(unlimited())).await
    else {
        return;
    };
    log.lock().unwrap().open += 1;
    let mut close = None;
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) if t.as_str() == "__name__" => Message::text(name.clone()),
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            Message::Close(f) => {
                close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
    // Finishes the closing handshake when the peer started it.
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    let mut l = log.lock().unwrap();
    l.open -= 1;
    l.closes.push((Instant::now(), close));
}

/// A tokio-tungstenite client stream.
pub type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a tokio-tungstenite client to `url`, within 10 s.
pub async fn ws_connect(url: &str) -> WsClient {
    let (ws, _) = super::within(
        10.0,
        &format!("WebSocket handshake with {url}"),
        tokio_tungstenite::connect_async_with_config(url, Some(unlimited()), false),
    )
    .await
    .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// Sends a text message and returns the next data message's text, within `secs`.
pub async fn ws_roundtrip(ws: &mut WsClient, msg: &str, secs: f64) -> String {
    super::within(secs, &format!("the echo of {msg:?}"), async {
        ws.send(Message::text(msg)).await.expect("send");
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Binary(b))) => return String::from_utf8_lossy(&b).into_owned(),
                Some(Ok(Message::Close(f))) => panic!("closed instead of echoing: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error instead of echoing: {e}"),
                None => panic!("stream ended instead of echoing"),
            }
        }
    })
    .await
}

/// Reads until a Close frame arrives (skipping data); returns its code and reason,
/// or None when the connection ended without one.
pub async fn ws_expect_close(ws: &mut WsClient, secs: f64) -> Option<(u16, String)> {
    super::within(secs, "a Close frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => {
                    return f.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
}

/// Runs `wscat ARGS...` to completion (within `secs`). Its stdin stays open (wscat
/// quits as soon as stdin closes) but nothing is typed.
pub async fn run_wscat(args: &[&str], secs: f64) -> std::process::Output {
    let mut child = Command::new(super::wscat())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wscat");
    let _stdin = child.stdin.take();
    super::within(secs, "wscat to finish", child.wait_with_output())
        .await
        .expect("run wscat")
}

/// Waits for `n` tunnels of a client peer (`h2-ws-client.js`) to open.
pub async fn opened(client: &mut Peer, n: usize) {
    for i in 0..n {
        client
            .expect_where(15.0, &format!("tunnel {i} of {n} to open"), |v| {
                v["event"] == "open"
            })
            .await;
    }
}

/// The next event `name` on a client peer's tunnel `id`.
pub async fn event_on(client: &mut Peer, name: &str, id: u64, secs: f64) -> Value {
    client
        .expect_where(secs, &format!("{name} on tunnel {id}"), |v| {
            v["event"] == name && v["id"] == id
        })
        .await
}
