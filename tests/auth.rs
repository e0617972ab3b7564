//! `auth.jwt`: tokens minted here with real keys (RSA from the openssl CLI, P-256 and
//! Ed25519 from ring), presented the ways real clients do — wscat's Authorization
//! header, a Python websockets client's query parameter, a headless Chromium page's
//! subprotocol list and cookie — and what a user would notice: the status of a
//! refused upgrade, a token the backend never sees, a tunnel closed with 1008 at
//! `exp`, a rotated JWKS file taking effect without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use common::*;

const ISSUER: &str = "https://id.example.com";
const ROUTE: [(&str, &str); 2] = [("namespace", "default"), ("route", "chat")];

/// A signing key and its public JWK.
struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

fn ed25519(kid: &str) -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Signer {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
                    "x": B64.encode(pair.public_key().as_ref())}),
    }
}

fn p256(kid: &str) -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    Signer {
        alg: Algorithm::ES256,
        kid: kid.into(),
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                    "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])}),
    }
}

/// An RSA key from the openssl CLI, as an identity provider's would be made.
fn rsa(kid: &str, dir: &Path) -> Signer {
    let pem = dir.join(format!("{kid}.pem"));
    let der = dir.join(format!("{kid}.der"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl (tests/setup.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let p = pem.to_str().unwrap();
    run(&["genrsa", "-traditional", "-out", p, "2048"]);
    run(&[
        "rsa",
        "-in",
        p,
        "-traditional",
        "-outform",
        "DER",
        "-out",
        der.to_str().unwrap(),
    ]);
    let modulus = run(&["rsa", "-in", p, "-noout", "-modulus"]);
    let n: Vec<u8> = (0..modulus.trim().len() - 8)
        .step_by(2)
        .map(|i| u8::from_str_radix(&modulus.trim()["Modulus=".len()..][i..i + 2], 16).unwrap())
        .collect();
    Signer {
        alg: Algorithm::RS256,
        kid: kid.into(),
        key: EncodingKey::from_rsa_der(&std::fs::read(&der).unwrap()),
        jwk: json!({"kty": "RSA", "kid": kid, "n": B64.encode(&n), "e": "AQAB"}),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Signer {
    fn sign(&self, claims: Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }

    /// A token for `chat` from the right issuer, valid for `secs`.
    fn token(&self, secs: u64) -> String {
        self.sign(json!({"iss": ISSUER, "aud": "chat", "sub": "alice",
                         "iat": now(), "exp": now() + secs}))
    }
}

/// Writes a JWKS file by rename (as editors and Secret volumes replace files).
fn write_jwks(path: &Path, signers: &[&Signer]) {
    let set = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, set.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The token sources of route `chat`: what wscat, a Python client and a page's
/// subprotocol list send.
const SOURCES: &str = "[{header: Authorization, prefix: \"Bearer \"}, {query: access_token}, \
                       {subprotocol: access_token.}]";

/// The `auth` field of a route taking tokens from `sources`, reading `jwks`.
fn auth_field(jwks: &Path, sources: &str) -> String {
    format!(
        "{{jwt: {{issuer: \"{ISSUER}\", audiences: [chat], jwks: {{file: \"{}\"}}, \
         tokenFrom: {sources}, claimsToHeaders: [{{claim: sub, header: X-User-Id}}]}}}}",
        jwks.display()
    )
}

struct Setup {
    gate: Wsgate,
    backend: Peer,
    jwks: PathBuf,
    _dir: tempfile::TempDir,
}

/// A Node `ws` backend (it reports each request's URL and headers) behind a route
/// `chat` that takes tokens signed by `signers`, a route `cookie` that takes them
/// from a cookie (open only to the page's own origin, as a cookie route must be),
/// and an open route `/page` for the browser's page.
async fn setup(signers: &[&Signer]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, signers);
    let (backend, addr) = node_backend("chat", &[]).await;
    let routes = |origin: Option<String>| {
        let mut routes = vec![
            Route::new("chat")
                .prefix("/chat")
                .backend(addr)
                .set("auth", &auth_field(&jwks, SOURCES)),
            Route::new("page").exact("/page").backend(addr),
        ];
        if let Some(origin) = origin {
            routes.push(
                Route::new("cookie")
                    .prefix("/cookie")
                    .backend(addr)
                    .set("auth", &auth_field(&jwks, "[{cookie: token}]"))
                    .set("allowedOrigins", &format!("[\"{origin}\"]")),
            );
        }
        routes_yaml(&routes)
    };
    let gate = Wsgate::start(&routes(None)).await;
    // The page's origin names the port wsgate listens on.
    gate.reload(&routes(Some(format!("http://{}", gate.listen))), "success")
        .await;
    Setup {
        gate,
        backend,
        jwks,
        _dir: dir,
    }
}

async fn upgrade_status(gate: &Wsgate, path: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let req = upgrade_request(&gate.listen.to_string(), path, &new_key(), extra);
    raw_request(gate.listen, &req).await.response
}

async fn auth_count(gate: &Wsgate, result: &str) -> f64 {
    let mut l = ROUTE.to_vec();
    l.push(("result", result));
    gate.metrics().await.get("wsgate_auth_total", &l)
}

#[tokio::test]
async fn wscat_with_a_bearer_header_and_every_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (rs, ec, ed, stranger) = (
        rsa("rs", dir.path()),
        p256("ec"),
        ed25519("ed"),
        ed25519("ed"),
    );
    let mut s = setup(&[&rs, &ec, &ed]).await;
    let gate = &s.gate;

    // wscat, as a user would: the RS256 token in an Authorization header, and a forged
    // X-User-Id that must not reach the backend.
    let token = rs.token(300);
    let bearer = format!("Authorization: Bearer {token}");
    let out = run_wscat(
        &[
            "-c",
            &gate.url("/chat"),
            "-H",
            &bearer,
            "-H",
            "X-User-Id: mallory",
            "-x",
            "hello",
            "-w",
            "1",
        ],
        15.0,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello"),
        "wscat should get its echo: {out:?}"
    );
    let conn = s.backend.expect("connection", 5.0).await;
    let headers = &conn["headers"];
    assert!(
        headers.get("authorization").is_none(),
        "the backend saw the token: {conn}"
    );
    assert_eq!(headers["x-user-id"], "alice", "{conn}");

    // ES256 and EdDSA tokens open tunnels too.
    for t in [ec.token(300), ed.token(300)] {
        let r = upgrade_status(gate, "/chat", &[("Authorization", &format!("Bearer {t}"))]).await;
        assert_eq!(r.status, 101, "{r:?}");
    }

    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c =
            json!({"iss": ISSUER, "aud": "chat", "sub": "alice", "iat": now(), "exp": now() + 300});
        f(&mut c);
        c
    };
    let bearer = |t: String| Some(format!("Bearer {t}"));
    let refused: Vec<(&str, Option<String>, u16)> = vec![
        ("no token", None, 401),
        ("a Basic header", Some("Basic dXNlcjpwYXNz".into()), 401),
        (
            "a wrong issuer",
            bearer(ed.sign(claims(&|c| c["iss"] = json!("https://evil.example.com")))),
            401,
        ),
        ("a foreign signature", bearer(stranger.token(300)), 401),
        (
            "an expired token",
            bearer(ed.sign(claims(&|c| c["exp"] = json!(now() - 1)))),
            401,
        ),
        (
            "a token not yet valid",
            bearer(ed.sign(claims(&|c| c["nbf"] = json!(now() + 120)))),
            401,
        ),
        ("a garbled token", bearer("a.b.c".into()), 401),
        (
            "another audience",
            bearer(ed.sign(claims(&|c| c["aud"] = json!("billing")))),
            403,
        ),
    ];
    for (what, value, want) in &refused {
        let extra: Vec<(&str, &str)> = value
            .iter()
            .map(|v| ("Authorization", v.as_str()))
            .collect();
        let r = upgrade_status(gate, "/chat", &extra).await;
        assert_eq!(
            r.status, *want,
            "an upgrade with {what} must get {want}: {r:?}"
        );
        if *want == 401 {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{what}: {r:?}");
        }
    }
    s.backend.drain(0.5, 3.0).await;
    assert_eq!(
        s.backend.seen_named("connection").len(),
        3,
        "no refused upgrade may reach the backend"
    );
    let m = gate.metrics().await;
    let count = |r: &str| m.get("wsgate_auth_total", &[ROUTE[0], ROUTE[1], ("result", r)]);
    assert_eq!(
        [
            count("ok"),
            count("missing"),
            count("invalid"),
            count("expired"),
            count("forbidden")
        ],
        [3.0, 2.0, 4.0, 1.0, 1.0]
    );

    // Plain HTTP on a route is checked the same way; the token cookie goes, others stay.
    let r = http_get(gate.listen, "/cookie/poll").await.unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    let cookie = format!("theme=dark; token={token}; lang=en");
    let r = http_get_with(
        gate.listen,
        "/cookie/poll?x=1",
        &[("Cookie", cookie.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(seen["headers"]["cookie"], "theme=dark; lang=en", "{seen}");
    assert_eq!(seen["headers"]["x-user-id"], "alice", "{seen}");
    assert!(!gate.log_text().contains(&token), "wsgate logged a token");
}

#[tokio::test]
async fn python_query_token_is_stripped_and_the_tunnel_closes_at_exp() {
    let ed = ed25519("ed");
    let mut s = setup(&[&ed]).await;
    // A whole second boundary plus 2 s, so `exp` (whole seconds) is at least 2 s away.
    let exp = now() + 3;
    let token = ed.sign(json!({"iss": ISSUER, "aud": ["other", "chat"], "sub": "bob", "exp": exp}));
    let url = s
        .gate
        .url(&format!("/chat/room?room=1&access_token={token}&lang=en"));
    let mut client = python_client(&url, &["--no-compression"]);
    client.expect("open", 10.0).await;
    let conn = s.backend.expect("connection", 5.0).await;
    assert_eq!(conn["url"], "/chat/room?room=1&lang=en", "{conn}");
    assert_eq!(conn["headers"]["x-user-id"], "bob", "{conn}");
    client.send(text("before expiry")).await;
    let echo = client.expect("message", 5.0).await;
    assert_eq!(echo["data"], "before expiry");

    let closed = client.expect("close", 6.0).await;
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(
        closed["code"], 1008,
        "the client gets Close 1008 at exp: {closed}"
    );
    assert!(
        at >= exp as f64 && at < exp as f64 + 1.0,
        "closed at {at}, exp is {exp}: must be within a second of exp"
    );
    let bclose = s.backend.expect("close", 3.0).await;
    assert_eq!(
        bclose["code"], 1008,
        "the backend gets Close 1008 too: {bclose}"
    );
    s.gate
        .wait_metric(
            5.0,
            "wsgate_closes_total",
            &[ROUTE[0], ROUTE[1], ("code", "1008")],
            |v| v == 1.0,
        )
        .await;
    assert!(
        !s.gate.log_text().contains(&token),
        "wsgate logged the token"
    );
}

#[tokio::test]
async fn rotating_the_jwks_file_takes_effect_without_a_restart() {
    let (old, new) = (ed25519("old"), p256("new"));
    let s = setup(&[&old]).await;
    let bearer = |t: &str| format!("Bearer {t}");
    let r = upgrade_status(
        &s.gate,
        "/chat",
        &[("Authorization", &bearer(&new.token(300)))],
    )
    .await;
    assert_eq!(r.status, 401, "a key not yet in the JWKS: {r:?}");
    // A tunnel opened with the old key.
    let mut early = ws_connect_with_token(&s.gate, &old.token(300)).await;

    write_jwks(&s.jwks, &[&new]);
    let new_token = new.token(300);
    eventually(10.0, "the rotated JWKS to be used", || async {
        let r = upgrade_status(&s.gate, "/chat", &[("Authorization", &bearer(&new_token))]).await;
        (r.status == 101).then_some(())
    })
    .await;
    let r = upgrade_status(
        &s.gate,
        "/chat",
        &[("Authorization", &bearer(&old.token(300)))],
    )
    .await;
    assert_eq!(
        r.status, 401,
        "the removed key no longer opens tunnels: {r:?}"
    );
    assert_eq!(
        ws_roundtrip(&mut early, "still here", 5.0).await,
        "still here",
        "a tunnel opened with a removed key stays open until its exp"
    );
}

/// A tokio-tungstenite client with the token in an Authorization header.
async fn ws_connect_with_token(gate: &Wsgate, token: &str) -> WsClient {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = gate.url("/chat").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = within(10.0, "the upgrade", tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade with a valid token");
    ws
}

/// Runs tests/peers/browser.js: Chromium opens `page`, evaluates `script`.
async fn in_browser(page: &str, script: &str) -> Value {
    let chromium = which("chromium").expect("chromium is missing: run tests/setup.sh");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(peers_dir().join("browser.js"))
        .args([chromium.to_str().unwrap(), page, script])
        .env("NODE_PATH", node_modules())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = within(60.0, "the browser", cmd.output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("browser.js printed nothing useful: {out:?}"));
    assert_eq!(
        last["event"],
        "result",
        "{last} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    last["value"].clone()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Opens a WebSocket from the page and reports its protocol, the echo and any close.
fn open_script(url: &str, protocols: &str) -> String {
    format!(
        "new Promise((done) => {{
           const ws = new WebSocket('{url}', {protocols});
           ws.onopen = () => ws.send('from the browser');
           ws.onmessage = (e) => {{ done({{protocol: ws.protocol, echo: e.data}}); ws.close(); }};
           ws.onclose = (e) => done({{closed: e.code}});
         }})"
    )
}

#[tokio::test]
async fn chromium_sends_the_token_as_a_subprotocol_or_a_cookie() {
    let ec = p256("ec");
    let mut s = setup(&[&ec]).await;
    let token = ec.token(300);
    let url = s.gate.url("/chat");
    let page = format!("http://{}/page", s.gate.listen);

    // ['access_token.<jwt>', 'chat']: the backend is offered `chat` alone and picks it.
    let got = in_browser(
        &page,
        &open_script(&url, &format!("['access_token.{token}', 'chat']")),
    )
    .await;
    assert_eq!(got, json!({"protocol": "chat", "echo": "from the browser"}));
    let conn = s.backend.expect("connection", 5.0).await;
    assert_eq!(conn["headers"]["sec-websocket-protocol"], "chat", "{conn}");

    // The token entry alone: the 101 echoes it (or Chromium would fail the handshake)
    // and the backend is offered no subprotocol.
    let got = in_browser(
        &page,
        &open_script(&url, &format!("['access_token.{token}']")),
    )
    .await;
    assert_eq!(got["echo"], "from the browser", "{got}");
    let conn = s.backend.expect("connection", 5.0).await;
    assert!(
        conn["headers"].get("sec-websocket-protocol").is_none(),
        "{conn}"
    );

    // A cookie set by the page rides on the handshake (to the cookie route, which
    // takes only the page's own origin); only it is removed.
    let script = format!(
        "document.cookie = 'token={token}; path=/'; document.cookie = 'theme=dark; path=/'; {}",
        open_script(&s.gate.url("/cookie"), "[]")
    );
    let got = in_browser(&page, &script).await;
    assert_eq!(got["echo"], "from the browser", "{got}");
    let conn = s.backend.expect("connection", 5.0).await;
    assert_eq!(conn["headers"]["cookie"], "theme=dark", "{conn}");

    // Without a token the browser sees the handshake fail (1006).
    let got = in_browser(&page, &open_script(&url, "['chat']")).await;
    assert_eq!(got, json!({"closed": 1006}));
    assert_eq!(auth_count(&s.gate, "missing").await, 1.0);
    assert!(
        !s.gate.log_text().contains(&token),
        "wsgate logged the token"
    );
}

#[tokio::test]
async fn check_names_file_line_and_field_of_bad_auth() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let route = Route::new("chat").backend("127.0.0.1:9").set(
        "auth",
        "{jwt: {issuer: x, jwks: {file: a.json, uri: 'http://127.0.0.1:1/'}, tokenFrom: [{query: t, cookie: c}]}}",
    );
    std::fs::write(&file, route.yaml()).unwrap();
    let (code, out) = wsgate_cmd(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let f = file.display();
    assert!(
        out.contains(&format!(
            "{f}:9: spec.auth.jwt.jwks: set exactly one of secretName, configMapName, file, uri"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{f}:9: spec.auth.jwt.tokenFrom[0]: set exactly one of header, query, cookie, subprotocol")),
        "{out}"
    );
    // A JWKS file that is not there is refused with its path.
    let route = Route::new("chat").backend("127.0.0.1:9").set(
        "auth",
        "{jwt: {issuer: x, audiences: [a], jwks: {file: missing.json}}}",
    );
    std::fs::write(&file, route.yaml()).unwrap();
    let (code, out) = wsgate_cmd(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("spec.auth.jwt.jwks.file: cannot read"),
        "{out}"
    );
}

/// A JWKS endpoint over https (a certificate for `localhost` from a test CA, written
/// to `ca_file` for wsgate's `SSL_CERT_FILE`): serves `body` (or 500 while it is
/// empty), one request per connection, and counts the requests.
async fn jwks_server(
    body: std::sync::Arc<std::sync::Mutex<String>>,
    ca_file: &Path,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(ca_file, ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = requests.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut s) = acceptor.accept(tcp).await else {
                continue;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let b = body.lock().unwrap().clone();
            let head = if b.is_empty() {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let resp = format!(
                "HTTP/1.1 {head}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                b.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    (addr, requests, task)
}

#[tokio::test]
async fn a_jwks_uri_is_refreshed_and_its_last_good_set_kept() {
    let (a, b) = (ed25519("a"), p256("b"));
    let set = |s: &Signer| json!({"keys": [s.jwk.clone()]}).to_string();
    let body = std::sync::Arc::new(std::sync::Mutex::new(set(&a)));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let (addr, requests, _server) = jwks_server(body.clone(), &ca).await;
    let (_backend, backend_addr) = node_backend("chat", &[]).await;
    // Two routes name the URI (one asking for a longer refresh): it is fetched once
    // per refresh, at the shorter one (30 s, the shortest allowed).
    let auth = |refresh: &str| {
        format!(
            "{{jwt: {{issuer: \"{ISSUER}\", audiences: [chat], \
             jwks: {{uri: \"https://localhost:{}/jwks\", refresh: {refresh}}}}}}}",
            addr.port()
        )
    };
    let routes = routes_yaml(&[
        Route::new("chat")
            .prefix("/")
            .backend(backend_addr)
            .set("auth", &auth("30s")),
        Route::new("other")
            .prefix("/other")
            .backend(backend_addr)
            .set("auth", &auth("5m")),
    ]);
    let opts = Options {
        env: vec![("SSL_CERT_FILE".into(), ca.to_str().unwrap().into())],
        ..Default::default()
    };
    let gate = Wsgate::start_with(opts, &routes).await;
    let bearer = |t: String| format!("Bearer {t}");
    for path in ["/", "/other"] {
        let r = upgrade_status(&gate, path, &[("Authorization", &bearer(a.token(300)))]).await;
        assert_eq!(
            r.status, 101,
            "the first fetch serves the first upgrades: {r:?}"
        );
    }
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "two routes naming one URI fetch it once"
    );

    *body.lock().unwrap() = set(&b);
    let tb = b.token(300);
    eventually(45.0, "the refreshed JWKS to be used", || async {
        let r = upgrade_status(&gate, "/", &[("Authorization", &bearer(tb.clone()))]).await;
        (r.status == 101).then_some(())
    })
    .await;
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The endpoint fails: the last good set keeps serving.
    body.lock().unwrap().clear();
    eventually(45.0, "a failed fetch", || async {
        gate.log_text().contains("JWKS fetch failed").then_some(())
    })
    .await;
    let r = upgrade_status(&gate, "/", &[("Authorization", &bearer(b.token(300)))]).await;
    assert_eq!(r.status, 101, "{r:?}");
    let r = upgrade_status(&gate, "/", &[("Authorization", &bearer(a.token(300)))]).await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test]
async fn check_refuses_the_auth_settings_a_tenant_could_abuse() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, &[&ed25519("a")]);
    let j = jwks.display();
    for (field, want) in [
        (
            format!("{{jwt: {{issuer: x, jwks: {{file: \"{j}\"}}}}}}"),
            "spec.auth.jwt.audiences: at least one audience is required",
        ),
        (
            "{jwt: {issuer: x, audiences: [a], jwks: {uri: 'http://id.example.com/jwks'}}}".into(),
            "spec.auth.jwt.jwks.uri: \"http://id.example.com/jwks\" is not an https:// URL",
        ),
        (
            "{jwt: {issuer: x, audiences: [a], jwks: {uri: 'https://id.example.com/jwks', refresh: 1ms}}}".into(),
            "spec.auth.jwt.jwks.refresh: must be at least 30s",
        ),
        (
            format!("{{jwt: {{issuer: x, audiences: [a], jwks: {{file: \"{j}\"}}, tokenFrom: [{{cookie: t}}]}}}}"),
            "spec.auth.jwt.tokenFrom[0].cookie: a cookie token needs spec.allowedOrigins",
        ),
    ] {
        let route = Route::new("chat").backend("127.0.0.1:9").set("auth", &field);
        std::fs::write(&file, route.yaml()).unwrap();
        let (code, out) = wsgate_cmd(&["check", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{field}: {out}");
        assert!(out.contains(want), "{field}: wanted {want:?} in {out}");
    }
    // The cookie source with the Origin check it needs is accepted.
    let route = Route::new("chat")
        .backend("127.0.0.1:9")
        .set(
            "auth",
            &format!("{{jwt: {{issuer: x, audiences: [a], jwks: {{file: \"{j}\"}}, tokenFrom: [{{cookie: t}}]}}}}"),
        )
        .set("allowedOrigins", "[\"https://app.example.com\"]");
    std::fs::write(&file, route.yaml()).unwrap();
    let (code, out) = wsgate_cmd(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_client_cannot_forge_remove_or_smuggle_what_the_token_check_sets() {
    let ed = ed25519("ed");
    let mut s = setup(&[&ed]).await;
    let token = ed.token(300);
    let other =
        ed.sign(json!({"iss": ISSUER, "aud": "chat", "sub": "mallory", "exp": now() + 300}));
    // The token in the header; a second one in the query (another configured
    // source); a forged claim header under an underscore spelling; and the claim
    // header named in Connection so that hop-by-hop stripping would drop it.
    let r = upgrade_status(
        &s.gate,
        &format!("/chat?access_token={other}&room=1"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X_User_Id", "mallory"),
            ("x-user_id", "mallory"),
            ("Connection", "Upgrade, X-User-Id"),
        ],
    )
    .await;
    assert_eq!(r.status, 101, "{r:?}");
    let conn = s.backend.expect("connection", 5.0).await;
    let h = &conn["headers"];
    assert_eq!(h["x-user-id"], "alice", "the verified subject: {conn}");
    assert!(
        h.get("x_user_id").is_none() && h.get("x-user_id").is_none(),
        "a forged spelling of the claim header reached the backend: {conn}"
    );
    assert_eq!(
        conn["url"], "/chat?room=1",
        "the second token reached the backend: {conn}"
    );
}
