//! HTTP/2 as a browser meets it: headless Chromium loads a page through wsgate's TLS
//! listener (ALPN `h2`) and opens `wss://` WebSockets from it. Because wsgate
//! advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, Chromium carries them as extended
//! CONNECT streams (RFC 8441) of the page's own connection: one TCP connection for
//! the page, its scripts, Socket.IO/SockJS polling and every tunnel. With
//! `--http2 false` the same page works over HTTP/1.1, one connection per WebSocket.
//!
//! Every close the page sees is checked: Chromium sends END_STREAM with its own
//! Close frame, and reports 1006 unless the other side's Close still reaches it
//! (issue 24); the backend's and the proxy's closes must reach it too.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData};
use serde_json::{json, Value};

use common::*;

/// The site's name; Chromium resolves it to 127.0.0.1 (`--host-resolver-rules`).
const HOST: &str = "chat.example.test";

/// A certificate for [`HOST`], the page and the browser scripts it loads, in a
/// temp dir served by tests/peers/static-server.js.
struct Site {
    dir: tempfile::TempDir,
    /// base64(SHA-256(SubjectPublicKeyInfo)): Chromium trusts this key and no other
    /// (`--ignore-certificate-errors-spki-list`), the test CA of a real deployment.
    spki: String,
    _server: Peer,
    addr: std::net::SocketAddr,
}

impl Site {
    async fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![HOST.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, HOST);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("site.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("site.key"), key.serialize_pem()).unwrap();
        let spki = B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            &key.subject_public_key_info(),
        ));

        let bundles = node_modules();
        for (from, to) in [
            ("socket.io-client/dist/socket.io.min.js", "socket.io.min.js"),
            ("sockjs-client/dist/sockjs.min.js", "sockjs.min.js"),
        ] {
            std::fs::copy(bundles.join(from), dir.path().join(to))
                .unwrap_or_else(|e| panic!("{from}: {e}"));
        }
        std::fs::write(
            dir.path().join("page.html"),
            format!(
                "<!doctype html><title>wsgate over HTTP/2</title>\n\
                 <script>{RECORD_SOCKETS_JS}</script>\n\
                 <script src=\"socket.io.min.js\"></script>\n\
                 <script src=\"sockjs.min.js\"></script>\n"
            ),
        )
        .unwrap();
        let root = dir.path().to_str().unwrap().to_string();
        let (server, addr) = listening(Peer::node("static-server.js", &["--root", &root])).await;
        Site {
            dir,
            spki,
            _server: server,
            addr,
        }
    }

    /// The route serving the page (`/static/…`); it carries the site's certificate.
    fn page_route(&self) -> Route {
        let (crt, key) = (
            self.dir.path().join("site.crt"),
            self.dir.path().join("site.key"),
        );
        Route::new("page")
            .host(HOST)
            .prefix("/static/")
            .backend(self.addr)
            .set(
                "tls",
                &format!(
                    "{{certFile: \"{}\", keyFile: \"{}\"}}",
                    crt.display(),
                    key.display()
                ),
            )
    }

    fn page_url(&self, gate: &Wsgate) -> String {
        format!(
            "https://{HOST}:{}/static/page.html",
            gate.tls.unwrap().port()
        )
    }
}

/// Chromium with a page open (tests/peers/browser.js --hold): the page and its
/// connections stay open until [`Browser::close`].
struct Browser {
    peer: Peer,
}

impl Browser {
    /// Opens `page`, evaluates `script` there and returns its result.
    async fn open(site: &Site, page: &str, script: &str) -> (Browser, Value) {
        let chromium = which("chromium").expect("chromium is missing: run tests/setup.sh");
        let resolve = format!("--host-resolver-rules=MAP {HOST} 127.0.0.1");
        let trust = format!("--ignore-certificate-errors-spki-list={}", site.spki);
        let mut peer = Peer::node(
            "browser.js",
            &[
                chromium.to_str().unwrap(),
                page,
                script,
                "--hold",
                &resolve,
                &trust,
            ],
        );
        let ev = peer
            .expect_where(60.0, "the page's result", |v| {
                v["event"] == "result" || v["event"] == "error"
            })
            .await;
        assert_eq!(ev["event"], "result", "{ev}");
        (Browser { peer }, ev["value"].clone())
    }

    /// Evaluates `script` in the open page (awaiting its promise) and returns its
    /// result.
    async fn eval(&mut self, script: &str) -> Value {
        self.peer
            .send(json!({"op": "eval", "expression": script}))
            .await;
        let ev = self
            .peer
            .expect_where(30.0, "the page's result", |v| {
                v["event"] == "result" || v["event"] == "error"
            })
            .await;
        assert_eq!(ev["event"], "result", "{ev}");
        ev["value"].clone()
    }

    /// Closes Chromium (and with it every connection the page held).
    async fn close(mut self) {
        self.peer.close_stdin();
        assert_eq!(self.peer.wait_exit(15.0).await, Some(0));
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs in the page before its libraries load: every WebSocket the page or a
/// library (Socket.IO, SockJS) opens is kept in `window.allSockets`, and its
/// `closed` promise resolves with its close event: `{code, reason, wasClean}`.
const RECORD_SOCKETS_JS: &str = "
window.allSockets = [];
window.WebSocket = class extends WebSocket {
  constructor(...args) {
    super(...args);
    this.closed = new Promise((resolve) => this.addEventListener('close',
      (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean })));
    window.allSockets.push(this);
  }
};";

/// Closes every socket of `window.sockets` with 1000 and returns their close events.
const CLOSE_SOCKETS_SCRIPT: &str = "Promise.all(window.sockets.map((ws) => {
  ws.close(1000, 'page done');
  return ws.closed;
}))";

/// A clean close with `code` and `reason`, as the page's `onclose` reports it.
fn clean(code: u16, reason: &str) -> Value {
    json!({"code": code, "reason": reason, "wasClean": true})
}

/// Each backend saw its tunnel closed with 1000 (`reason`) by the page.
async fn backends_closed_with_1000(backends: &mut [Peer], reason: &str) {
    for b in backends {
        let c = b.expect("close", 10.0).await;
        assert_eq!(
            (c["code"].as_u64(), c["reason"].as_str()),
            (Some(1000), Some(reason)),
            "{c}"
        );
    }
}

/// The page opens one WebSocket to each path, asks the backend its name, sends a
/// message and reports the echo; the sockets stay open. Also reports the protocol
/// the page itself came over (DevTools' "Protocol" column).
fn three_sockets_script(paths: &[&str]) -> String {
    format!(
        "(async () => {{
           window.sockets = [];
           const open = (path) => new Promise((done) => {{
             const ws = new WebSocket(`wss://${{location.host}}${{path}}`);
             window.sockets.push(ws);
             let name = null;
             ws.onopen = () => ws.send('__name__');
             ws.onmessage = (e) => {{
               if (name === null) {{ name = e.data; ws.send('hello ' + path); }}
               else done({{path, name, echo: e.data}});
             }};
             ws.onclose = (e) => done({{path, closed: e.code}});
           }});
           const sockets = await Promise.all({paths:?}.map(open));
           const page = performance.getEntriesByType('navigation')[0].nextHopProtocol;
           return {{page, sockets}};
         }})()"
    )
}

/// wsgate with the page route and one route per backend name (`/a` → A, …).
async fn three_routes(site: &Site, args: &[&str]) -> (Wsgate, Vec<Peer>) {
    let mut routes = vec![site.page_route()];
    let mut backends = vec![];
    for name in ["A", "B", "C"] {
        let (peer, addr) = node_backend(name, &[]).await;
        let path = format!("/{}", name.to_lowercase());
        routes.push(
            Route::new(&name.to_lowercase())
                .host(HOST)
                .prefix(&path)
                .backend(addr),
        );
        backends.push(peer);
    }
    let opts = Options {
        tls: true,
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Options::default()
    };
    (
        Wsgate::start_with(opts, &routes_yaml(&routes)).await,
        backends,
    )
}

async fn client_connections(gate: &Wsgate, protocol: &str) -> f64 {
    gate.metrics().await.get(
        "wsgate_client_connections_active",
        &[("protocol", protocol)],
    )
}

/// While the page is open wsgate counts its HTTP/2 connection and no HTTP/1.1 one;
/// once the browser is gone the HTTP/2 gauge falls back to 0. Chromium sometimes
/// keeps a second, idle preconnected socket beside the one it uses: the tunnels'
/// single client address (checked by the caller) is what counts.
async fn h2_connection_until_closed(gate: &Wsgate, browser: Browser, what: &str) {
    let h2 = client_connections(gate, "h2").await;
    assert!((1.0..=2.0).contains(&h2), "{what}: h2 connections: {h2}");
    assert_eq!(client_connections(gate, "http1").await, 0.0, "{what}");
    browser.close().await;
    gate.wait_metric(
        10.0,
        "wsgate_client_connections_active",
        &[("protocol", "h2")],
        |v| v == 0.0,
    )
    .await;
}

/// The tunnels' client addresses, and each tunnel's (route, client_protocol).
async fn tunnels(gate: &Wsgate) -> (BTreeSet<String>, Vec<(String, String)>) {
    let conns = gate.connections().await;
    let clients = conns
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_string())
        .collect();
    let mut seen: Vec<(String, String)> = conns
        .iter()
        .map(|c| {
            (
                c["route"].as_str().unwrap().to_string(),
                c["client_protocol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    (clients, seen)
}

fn expect_echoes(got: &Value) {
    let sockets = got["sockets"].as_array().expect("sockets");
    for (s, name) in sockets.iter().zip(["A", "B", "C"]) {
        let path = format!("/{}/ws", name.to_lowercase());
        assert_eq!(
            *s,
            json!({"path": path, "name": name, "echo": format!("hello {path}")}),
            "{got}"
        );
    }
}

#[tokio::test]
async fn chromium_opens_three_websockets_as_streams_of_one_http2_connection() {
    let site = Site::start().await;
    let (gate, mut backends) = three_routes(&site, &[]).await;
    let script = three_sockets_script(&["/a/ws", "/b/ws", "/c/ws"]);
    let (mut browser, got) = Browser::open(&site, &site.page_url(&gate), &script).await;

    assert_eq!(got["page"], "h2", "the page came over HTTP/2: {got}");
    expect_echoes(&got);
    let (clients, seen) = tunnels(&gate).await;
    assert_eq!(
        seen,
        [("a", "h2"), ("b", "h2"), ("c", "h2")].map(|(r, p)| (r.to_string(), p.to_string())),
        "/connections"
    );
    assert_eq!(
        clients.len(),
        1,
        "three tunnels on one client connection: {clients:?}"
    );
    // The page closes its sockets: each onclose reports the backend's answer, 1000.
    let closes = browser.eval(CLOSE_SOCKETS_SCRIPT).await;
    assert_eq!(
        closes,
        Value::Array(vec![clean(1000, "page done"); 3]),
        "the page's onclose"
    );
    backends_closed_with_1000(&mut backends, "page done").await;
    h2_connection_until_closed(&gate, browser, "the page").await;
    assert!(gate.connections().await.is_empty());
}

#[tokio::test]
async fn with_http2_off_the_same_page_uses_one_http1_connection_per_websocket() {
    let site = Site::start().await;
    let (gate, mut backends) = three_routes(&site, &["--http2", "false"]).await;
    let script = three_sockets_script(&["/a/ws", "/b/ws", "/c/ws"]);
    let (mut browser, got) = Browser::open(&site, &site.page_url(&gate), &script).await;

    assert_eq!(got["page"], "http/1.1", "{got}");
    expect_echoes(&got);
    let (clients, seen) = tunnels(&gate).await;
    assert_eq!(
        seen,
        [("a", "http/1.1"), ("b", "http/1.1"), ("c", "http/1.1")]
            .map(|(r, p)| (r.to_string(), p.to_string())),
        "/connections"
    );
    assert_eq!(
        clients.len(),
        3,
        "one client connection per tunnel: {clients:?}"
    );
    assert_eq!(client_connections(&gate, "h2").await, 0.0);
    assert!(client_connections(&gate, "http1").await >= 3.0);
    // The same closes as over HTTP/2.
    let closes = browser.eval(CLOSE_SOCKETS_SCRIPT).await;
    assert_eq!(
        closes,
        Value::Array(vec![clean(1000, "page done"); 3]),
        "the page's onclose"
    );
    backends_closed_with_1000(&mut backends, "page done").await;
    browser.close().await;
}

/// Engine.IO session ids a Socket.IO backend saw requests for.
fn sids(peer: &Peer) -> BTreeSet<String> {
    peer.seen_named("request")
        .iter()
        .filter_map(|r| r["sid"].as_str().map(String::from))
        .collect()
}

/// SockJS session ids a SockJS backend saw requests for (/echo/<server>/<session>/…).
fn sockjs_sessions(peer: &Peer) -> BTreeSet<String> {
    peer.seen_named("request")
        .iter()
        .filter_map(|r| {
            let parts: Vec<&str> = r["url"].as_str()?.split('/').collect();
            (parts.len() >= 5).then(|| parts[3].to_string())
        })
        .collect()
}

/// Two Socket.IO sessions (polling first, then the upgrade to WebSocket) and one
/// SockJS session per transport; every session stays open.
const POLLING_SCRIPT: &str = "(async () => {
  window.keep = [];
  const socketio = () => new Promise((done) => {
    const socket = io({ forceNew: true, transports: ['polling', 'websocket'] });
    window.keep.push(socket);
    socket.on('connect_error', (e) => done({ error: String(e) }));
    socket.on('connect', () => {
      const engine = socket.io.engine;
      const first = engine.transport.name;
      const ask = () => socket.emit('echo', 'over h2', (ack) =>
        done({ first, sid: engine.id, name: ack.name, msg: ack.msg, transport: ack.transport }));
      if (engine.transport.name === 'websocket') ask(); else engine.once('upgrade', ask);
    });
  });
  const sockjs = (transport) => new Promise((done) => {
    const sock = new SockJS('/echo', null, { transports: [transport] });
    window.keep.push(sock);
    const replies = [];
    sock.onopen = () => ['one', 'two', 'three'].forEach((m) => sock.send(m));
    sock.onmessage = (e) => {
      replies.push(e.data);
      if (replies.length === 3) done({ transport: sock.transport, replies });
    };
    sock.onclose = (e) => done({ transport, closed: e.code, replies });
  });
  const out = { socketio: [], sockjs: [] };
  for (let i = 0; i < 2; i++) out.socketio.push(await socketio());
  for (const t of ['xhr-polling', 'xhr-streaming', 'websocket']) out.sockjs.push(await sockjs(t));
  return out;
})()";

/// Ends the page's Socket.IO and SockJS sessions; returns how each WebSocket the
/// page opened closed.
const END_SESSIONS_SCRIPT: &str = "(async () => {
  for (const s of window.keep) s.disconnect ? s.disconnect() : s.close();
  return Promise.all(window.allSockets.map((ws) => ws.closed));
})()";

/// The (code, wasClean) of the sessions' WebSockets, sorted: SockJS's server
/// answers the page's Close with 1000; Engine.IO closes its WebSocket without a
/// code and its server answers the same way (1005: no status code).
const SESSION_CLOSES: [(u64, bool); 3] = [(1000, true), (1005, true), (1005, true)];

#[tokio::test]
async fn socketio_and_sockjs_from_chromium_over_http2_stick_to_one_replica() {
    let site = Site::start().await;
    let (mut sio_a, sio_a_addr) =
        listening(Peer::node("socketio-server.js", &["--name", "A"])).await;
    let (mut sio_b, sio_b_addr) =
        listening(Peer::node("socketio-server.js", &["--name", "B"])).await;
    let (mut sjs_a, sjs_a_addr) = listening(Peer::node("sockjs-server.js", &["--name", "A"])).await;
    let (mut sjs_b, sjs_b_addr) = listening(Peer::node("sockjs-server.js", &["--name", "B"])).await;
    // One cookie per route: each names a backend of its own route.
    let sticky = |cookie: &str| format!("{{policy: Cookie, cookie: {{name: {cookie}}}}}");
    let routes = [
        site.page_route(),
        Route::new("socketio")
            .host(HOST)
            .prefix("/socket.io/")
            .backend(sio_a_addr)
            .backend(sio_b_addr)
            .set("loadBalancing", &sticky("wsgate-sio")),
        Route::new("sockjs")
            .host(HOST)
            .prefix("/echo")
            .backend(sjs_a_addr)
            .backend(sjs_b_addr)
            .set("loadBalancing", &sticky("wsgate-sockjs")),
    ];
    let opts = Options {
        tls: true,
        ..Options::default()
    };
    let gate = Wsgate::start_with(opts, &routes_yaml(&routes)).await;

    // Two browsers, each with its own cookie jar: new clients are spread over the
    // replicas (round robin), and each browser's sessions stay on its replica.
    let mut replicas = BTreeSet::new();
    for run in 0..2 {
        let (mut browser, got) = Browser::open(&site, &site.page_url(&gate), POLLING_SCRIPT).await;
        let sessions = got["socketio"].as_array().unwrap();
        let name = sessions[0]["name"]
            .as_str()
            .expect("a Socket.IO ack")
            .to_string();
        // Polling is not checked here: Engine.IO may finish its upgrade before the
        // page reads the transport at `connect`. The backends' request logs below
        // show each replica's polls.
        for s in sessions {
            assert_eq!(s["transport"], "websocket", "browser {run}: {got}");
            assert_eq!(s["msg"], "over h2", "browser {run}: {got}");
            assert_eq!(
                s["name"],
                name.as_str(),
                "browser {run}: one replica: {got}"
            );
        }
        for s in got["sockjs"].as_array().unwrap() {
            let replies: Vec<&str> = s["replies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            let on = &name;
            assert_eq!(
                replies,
                [
                    format!("{on}:one"),
                    format!("{on}:two"),
                    format!("{on}:three")
                ],
                "browser {run}: SockJS {} on the same replica: {got}",
                s["transport"]
            );
        }
        replicas.insert(name);

        // Everything the page did (page, scripts, polls, streams and the three
        // WebSocket tunnels) rode one HTTP/2 connection.
        let (clients, seen) = tunnels(&gate).await;
        assert_eq!(
            seen,
            [("socketio", "h2"), ("socketio", "h2"), ("sockjs", "h2")]
                .map(|(r, p)| (r.to_string(), p.to_string())),
            "browser {run}: /connections"
        );
        assert_eq!(clients.len(), 1, "browser {run}: {clients:?}");
        // The page ends its sessions: each WebSocket under them (two Socket.IO, one
        // SockJS) closes with the code its library's server answers with.
        let closes = browser.eval(END_SESSIONS_SCRIPT).await;
        eprintln!("browser {run}: the sessions' WebSockets closed with {closes}");
        let mut codes: Vec<(u64, bool)> = closes
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["code"].as_u64().unwrap(), c["wasClean"] == true))
            .collect();
        codes.sort();
        assert_eq!(codes, SESSION_CLOSES, "browser {run}: {closes}");
        h2_connection_until_closed(&gate, browser, &format!("browser {run}")).await;
    }
    assert_eq!(replicas.len(), 2, "both browsers on {replicas:?}");

    // No session's requests (polls, posts, streams, the upgrade) were split.
    for p in [&mut sio_a, &mut sio_b, &mut sjs_a, &mut sjs_b] {
        p.drain(0.3, 2.0).await;
    }
    let (a, b) = (sids(&sio_a), sids(&sio_b));
    assert!(
        a.is_disjoint(&b),
        "Socket.IO sessions split: A {a:?}, B {b:?}"
    );
    assert_eq!((a.len(), b.len()), (2, 2), "A {a:?}, B {b:?}");
    let polls = |p: &Peer| {
        p.seen_named("request")
            .iter()
            .filter(|r| r["transport"] == "polling" && r["sid"].is_string())
            .count()
    };
    assert!(polls(&sio_a) >= 2 && polls(&sio_b) >= 2, "polling requests");
    let (a, b) = (sockjs_sessions(&sjs_a), sockjs_sessions(&sjs_b));
    assert!(a.is_disjoint(&b), "SockJS sessions split: A {a:?}, B {b:?}");
    assert_eq!((a.len(), b.len()), (3, 3), "A {a:?}, B {b:?}");
}

/// Page helper: `openSocket(path)` resolves with a WebSocket once it has echoed one
/// message (its `closed` promise comes from [`RECORD_SOCKETS_JS`]).
const OPEN_SOCKET_JS: &str = "window.openSocket = (path) => new Promise((done, fail) => {
  const ws = new WebSocket(`wss://${location.host}${path}`);
  ws.onopen = () => ws.send('hello ' + path);
  ws.onmessage = () => done(ws);
  ws.onerror = () => fail(new Error(`WebSocket ${path} failed before its echo`));
});";

/// wsgate (TLS, HTTP/2) with the page route and `/a` to one `ws` backend started
/// with `backend_args`; `keepalive` is the route's field.
async fn one_route(
    site: &Site,
    backend_args: &[&str],
    keepalive: Option<&str>,
    opts: Options,
) -> (Wsgate, Peer) {
    let (backend, addr) = node_backend("A", backend_args).await;
    let mut route = Route::new("a").host(HOST).prefix("/a").backend(addr);
    if let Some(k) = keepalive {
        route = route.set("keepalive", k);
    }
    let opts = Options { tls: true, ..opts };
    let routes = routes_yaml(&[site.page_route(), route]);
    (Wsgate::start_with(opts, &routes).await, backend)
}

/// Opens `n` sockets to `/a/ws` in `window.sockets`, each after the one before.
async fn open_sockets(site: &Site, gate: &Wsgate, n: usize) -> Browser {
    let script = format!(
        "(async () => {{
           {OPEN_SOCKET_JS}
           window.sockets = [];
           for (let i = 0; i < {n}; i++) window.sockets.push(await openSocket('/a/ws'));
           return window.sockets.length;
         }})()"
    );
    let (browser, got) = Browser::open(site, &site.page_url(gate), &script).await;
    assert_eq!(got, n, "sockets open");
    browser
}

/// Waits until wsgate has counted one close with `code` by `initiator` (it counts
/// a tunnel once the tunnel has ended, a moment after the Close frames).
async fn closed_once(gate: &Wsgate, code: &str, initiator: &str) {
    let labels = [("code", code), ("initiator", initiator)];
    gate.wait_metric(5.0, "wsgate_closes_total", &labels, |v| v == 1.0)
        .await;
}

/// Issue 24: Chromium ends its stream with its own Close frame (END_STREAM on that
/// DATA frame); the backend's answer must still reach the page, which otherwise
/// reports 1006.
#[tokio::test]
async fn the_pages_close_with_1000_and_4000_is_answered_over_http2() {
    let site = Site::start().await;
    let (gate, mut backend) = one_route(&site, &[], None, Options::default()).await;
    let script = format!(
        "(async () => {{
           {OPEN_SOCKET_JS}
           const out = [];
           for (const code of [1000, 4000]) {{
             const ws = await openSocket('/a/ws');
             ws.close(code, 'page bye ' + code);
             out.push(await ws.closed);
           }}
           return out;
         }})()"
    );
    let (browser, got) = Browser::open(&site, &site.page_url(&gate), &script).await;
    assert_eq!(
        got,
        json!([clean(1000, "page bye 1000"), clean(4000, "page bye 4000")]),
        "the page's onclose"
    );
    for code in [1000, 4000] {
        let c = backend.expect("close", 5.0).await;
        assert_eq!(
            (c["code"].as_u64(), c["reason"].as_str()),
            (Some(code), Some(format!("page bye {code}").as_str())),
            "the backend: {c}"
        );
    }
    closed_once(&gate, "1000", "client").await;
    closed_once(&gate, "4000", "client").await;
    h2_connection_until_closed(&gate, browser, "the page").await;
}

#[tokio::test]
async fn the_backends_close_with_1000_and_4001_reaches_the_page_over_http2() {
    let site = Site::start().await;
    let (gate, mut backend) = one_route(&site, &[], None, Options::default()).await;
    let mut browser = open_sockets(&site, &gate, 2).await;
    let mut ids = vec![];
    for _ in 0..2 {
        ids.push(backend.expect("connection", 5.0).await["id"].clone());
    }
    backend
        .send(json!({"op": "close", "id": ids[0], "code": 1000, "reason": "backend bye"}))
        .await;
    backend
        .send(json!({"op": "close", "id": ids[1], "code": 4001, "reason": "backend bye 4001"}))
        .await;
    let got = browser
        .eval("Promise.all(window.sockets.map((ws) => ws.closed))")
        .await;
    assert_eq!(
        got,
        json!([clean(1000, "backend bye"), clean(4001, "backend bye 4001")]),
        "the page's onclose"
    );
    let mut answers = vec![];
    for _ in 0..2 {
        answers.push(backend.expect("close", 5.0).await["code"].clone());
    }
    answers.sort_by_key(|c| c.as_u64());
    assert_eq!(answers, [json!(1000), json!(4001)], "the page's answers");
    closed_once(&gate, "1000", "backend").await;
    closed_once(&gate, "4001", "backend").await;
    h2_connection_until_closed(&gate, browser, "the page").await;
}

#[tokio::test]
async fn sigterm_closes_the_pages_socket_with_1001_over_http2() {
    let site = Site::start().await;
    let opts = Options {
        drain_timeout: Some("2s".into()),
        ..Options::default()
    };
    let (mut gate, mut backend) = one_route(&site, &[], None, opts).await;
    let mut browser = open_sockets(&site, &gate, 1).await;
    gate.sigterm();
    let got = browser.eval("window.sockets[0].closed").await;
    assert_eq!(
        got,
        clean(1001, "server shutting down"),
        "the page's onclose"
    );
    let c = backend.expect("close", 5.0).await;
    assert_eq!(c["code"], 1001, "the backend: {c}");
    assert_eq!(gate.wait_exit(10.0).await.code(), Some(0));
    browser.close().await;
}

#[tokio::test]
async fn a_backend_missing_keepalive_pings_closes_the_pages_socket_with_1001_over_http2() {
    let site = Site::start().await;
    let keepalive = "{interval: 30s, timeout: 10s, backend: {interval: 500ms, timeout: 1s}}";
    let (gate, mut backend) = one_route(
        &site,
        &["--no-auto-pong"],
        Some(keepalive),
        Options::default(),
    )
    .await;
    let mut browser = open_sockets(&site, &gate, 1).await;
    let got = browser.eval("window.sockets[0].closed").await;
    assert_eq!(
        got,
        clean(1001, "peer did not answer keepalive ping"),
        "the page's onclose"
    );
    let c = backend.expect("close", 5.0).await;
    assert_eq!(c["code"], 1001, "the backend: {c}");
    closed_once(&gate, "1001", "proxy").await;
    h2_connection_until_closed(&gate, browser, "the page").await;
}
