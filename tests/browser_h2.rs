//! HTTP/2 as a browser meets it: headless Chromium loads a page through wsgate's TLS
//! listener (ALPN `h2`) and opens `wss://` WebSockets from it. Because wsgate
//! advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, Chromium carries them as extended
//! CONNECT streams (RFC 8441) of the page's own connection: one TCP connection for
//! the page, its scripts, Socket.IO/SockJS polling and every tunnel. With
//! `--http2 false` the same page works over HTTP/1.1, one connection per WebSocket.

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
            "<!doctype html><title>wsgate over HTTP/2</title>\n\
             <script src=\"socket.io.min.js\"></script>\n\
             <script src=\"sockjs.min.js\"></script>\n",
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
    let (gate, _backends) = three_routes(&site, &[]).await;
    let script = three_sockets_script(&["/a/ws", "/b/ws", "/c/ws"]);
    let (browser, got) = Browser::open(&site, &site.page_url(&gate), &script).await;

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
    h2_connection_until_closed(&gate, browser, "the page").await;
    assert!(gate.connections().await.is_empty());
}

#[tokio::test]
async fn with_http2_off_the_same_page_uses_one_http1_connection_per_websocket() {
    let site = Site::start().await;
    let (gate, _backends) = three_routes(&site, &["--http2", "false"]).await;
    let script = three_sockets_script(&["/a/ws", "/b/ws", "/c/ws"]);
    let (browser, got) = Browser::open(&site, &site.page_url(&gate), &script).await;

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
        let (browser, got) = Browser::open(&site, &site.page_url(&gate), POLLING_SCRIPT).await;
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
