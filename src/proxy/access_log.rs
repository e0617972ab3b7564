//! The access log (`--access-log stdout|off|PATH`): one JSON line per finished
//! tunnel, per refused upgrade and per plain HTTP request.
//!
//! Lines are written by a thread of their own, fed through a bounded queue the
//! proxy only ever `try_send`s into, in batches: the writer sleeps until a line
//! comes, lets the lines of the next 50 ms gather, writes them in one go and
//! sleeps again, so the proxy's threads wake it a few times a second at most
//! rather than once per line. A write to a slow disk or to a stdout pipe
//! whose reader stalled (a log shipper restarting) blocks in the kernel; on a
//! thread it stalls the log alone, never a tunnel or a handshake. When the queue
//! is full, lines are dropped and counted, and a warning says how many.
//!
//! Secrets: a line carries the request path with its query, but the value of
//! every query parameter named like a credential (`token`, `access_token`,
//! `secret`, `password`, `key`, …) is replaced by `REDACTED`, and a route's auth
//! adds the names of its own token sources through [`loggable_path`]'s
//! `secret_params`. Headers and cookies are never logged.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::proxy::client::ClientAddr;

/// Lines waiting for the writer; beyond this they are dropped, never waited for.
const QUEUE: usize = 16 * 1024;
/// How long the writer lets lines gather after the first wakes it. Waking a thread
/// costs a futex call and a thread switch; once per line that was most of the
/// system calls a handshake added over NGINX's. Gathered, a busy proxy wakes the
/// writer at most 20 times a second, and a line still reaches the log within 50 ms.
const GATHER: Duration = Duration::from_millis(50);

/// Where `--access-log` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard output (the default: `kubectl logs` and log shippers read it).
    Stdout,
    /// No access log.
    Off,
    /// Appended to this file.
    File(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => Target::Stdout,
            "off" => Target::Off,
            path => Target::File(path.into()),
        })
    }
}

enum Msg {
    Line(Box<Record>),
    Flush(SyncSender<()>),
}

/// A handle to the access log; cheap to clone, a no-op when off.
#[derive(Clone, Default)]
pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// No access log.
    pub fn off() -> Self {
        AccessLog::default()
    }

    /// Opens the target (a file is created or appended to) and starts the writer.
    pub fn open(target: &Target) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            Target::Off => return Ok(AccessLog::off()),
            Target::Stdout => Box::new(io::stdout()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out))?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    /// Whether lines are written (callers skip building records otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a line; never waits.
    pub fn write(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Line(Box::new(record))) {
            let n = self.dropped.fetch_add(1, Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "access log writer cannot keep up (slow disk or stalled stdout reader); lines are being dropped"
                );
            }
        }
    }

    /// Waits (at most `within`) until every queued line is written; for shutdown.
    pub fn flush(&self, within: Duration) {
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if send_within(tx, Msg::Flush(done_tx), within) {
            let _ = done_rx.recv_timeout(within);
        }
    }
}

/// `SyncSender` has no `send_timeout` on stable: retry `try_send` briefly.
fn send_within(tx: &SyncSender<Msg>, mut msg: Msg, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match tx.try_send(msg) {
            Ok(()) => return true,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return false,
        }
    }
}

fn writer(rx: Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut last_error: Option<Instant> = None;
    // Asleep until a line comes; then the lines of the next `GATHER` are written
    // and flushed together, and the thread sleeps again.
    while let Ok(first) = rx.recv() {
        let gather = matches!(first, Msg::Line(_));
        let mut result = handle(first, &mut out);
        if gather {
            std::thread::sleep(GATHER);
        }
        while let Ok(msg) = rx.try_recv() {
            result = result.and(handle(msg, &mut out));
        }
        result = result.and(out.flush());
        if let Err(e) = result {
            if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_error = Some(Instant::now());
                tracing::warn!(error = %e, "cannot write the access log");
            }
        }
    }
    let _ = out.flush();
}

/// Writes a line, or answers a flush request once everything before it is out.
fn handle(msg: Msg, out: &mut impl Write) -> io::Result<()> {
    match msg {
        Msg::Line(r) => serde_json::to_writer(&mut *out, &r)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n")),
        Msg::Flush(done) => {
            let r = out.flush();
            let _ = done.try_send(());
            r
        }
    }
}

/// What one line is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A WebSocket tunnel that was open and has closed.
    Tunnel,
    /// An upgrade that did not become a tunnel.
    Upgrade,
    /// A plain HTTP request.
    Http,
}

/// Messages and payload bytes one way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Data messages.
    pub messages: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// One access-log line. Fields that do not apply are `null`, so every line has
/// the same keys.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// When the tunnel closed or the response was sent (RFC 3339, UTC, ms).
    pub time: String,
    /// `tunnel`, `upgrade` or `http`.
    pub kind: Kind,
    /// The route's namespace (null when no route matched).
    pub namespace: Option<String>,
    /// The route's name.
    pub route: Option<String>,
    /// The client's address and port: the effective client (as `client_addr`),
    /// with the port when it is known.
    pub client: String,
    /// The effective client address: the PROXY protocol source, or the
    /// `X-Forwarded-For` entry a trusted proxy vouched for, else the socket peer.
    pub client_addr: String,
    /// The socket peer's address and port (behind a load balancer, the balancer).
    pub peer_addr: String,
    /// The PROXY v2 AUTHORITY TLV (the SNI a TLS-terminating balancer saw).
    pub proxy_authority: Option<String>,
    /// The backend's address, when one was reached.
    pub backend: Option<String>,
    /// The request method.
    pub method: Option<String>,
    /// The request path and query, credentials redacted ([`loggable_path`]).
    pub path: Option<String>,
    /// The HTTP status the client got (101 for a tunnel).
    pub status: u16,
    /// The `wsgate_connections_total` outcome for upgrades; `proxied`,
    /// `rejected`, `limited` or `backend_unavailable` for plain HTTP.
    pub outcome: &'static str,
    /// wsgate's own explanation when it refused the request itself.
    pub reason: Option<String>,
    /// Seconds from the request (or the tunnel's open) to the end.
    pub duration_s: f64,
    /// Client to backend traffic of a tunnel.
    pub client_to_backend: Option<Traffic>,
    /// Backend to client traffic of a tunnel.
    pub backend_to_client: Option<Traffic>,
    /// The first Close code of a tunnel (1006: none was sent).
    pub close_code: Option<u16>,
    /// Who closed a tunnel first: `client`, `backend` or `proxy`.
    pub close_initiator: Option<&'static str>,
}

impl Record {
    /// A line of `kind` with the fields every line has; the rest are null.
    pub fn new(kind: Kind, client: &ClientAddr, status: u16, outcome: &'static str) -> Self {
        Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind,
            namespace: None,
            route: None,
            client: client.to_string(),
            client_addr: client.ip.to_string(),
            peer_addr: client.peer.to_string(),
            proxy_authority: client.authority.as_deref().map(str::to_owned),
            backend: None,
            method: None,
            path: None,
            status,
            outcome,
            reason: None,
            duration_s: 0.0,
            client_to_backend: None,
            backend_to_client: None,
            close_code: None,
            close_initiator: None,
        }
    }
}

/// Parameter names (lower case, any part of the name) whose values never reach
/// the log.
const SECRET_WORDS: [&str; 9] = [
    "token", "secret", "password", "passwd", "auth", "key", "sig", "jwt", "session",
];

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path and query as the log shows them: the value of each query parameter
/// named like a credential, or named in `secret_params` (a route's auth passes
/// its `tokenFrom` query names here), becomes `REDACTED`.
pub fn loggable_path(uri: &http::Uri, secret_params: &[&str]) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return path.to_owned();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_decoded(name).to_ascii_lowercase();
            let secret = SECRET_WORDS.iter().any(|w| decoded.contains(w))
                || secret_params
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(&decoded));
            if secret && !value.is_empty() {
                format!("{name}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(uri: &str, extra: &[&str]) -> String {
        loggable_path(&uri.parse().unwrap(), extra)
    }

    #[test]
    fn credentials_in_the_query_are_redacted() {
        assert_eq!(p("/chat", &[]), "/chat");
        assert_eq!(
            p("/chat?room=1&access_token=abc.def&x", &[]),
            "/chat?room=1&access_token=REDACTED&x"
        );
        assert_eq!(
            p("/c?Access%5FToken=abc&API_KEY=k&client_secret=s", &[]),
            "/c?Access%5FToken=REDACTED&API_KEY=REDACTED&client_secret=REDACTED"
        );
        assert_eq!(p("/c?t=abc&room=2", &["t"]), "/c?t=REDACTED&room=2");
    }

    #[test]
    fn a_line_is_one_json_object_with_every_key() {
        let mut r = Record::new(
            Kind::Upgrade,
            &ClientAddr::of(&crate::proxy::client::ConnAddr::direct(
                "127.0.0.1:5".parse().unwrap(),
                false,
            )),
            403,
            "rejected",
        );
        r.reason = Some("Origin not allowed".into());
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "upgrade");
        assert_eq!(v["status"], 403);
        assert!(v["close_code"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 19);
    }
}
