//! `fleetLimits` with a real Redis (Debian's `redis-server`, started here on a free
//! loopback port, one per test) shared by two or three real wsgate processes:
//! caps that hold across replicas (route: 503; client address and token subject:
//! 429 with `Retry-After`), a replica SIGKILLed by its pid, FLUSHALL, Redis
//! SIGSTOPped and killed under each `--limits-on-store-error`, a message budget
//! across two replicas, and a three-node Redis Cluster. Clients are
//! tokio-tungstenite WebSocket clients bound to 127.0.0.2, 127.0.0.3, … (distinct
//! client addresses on Linux's 127/8); backends are Node `ws` servers.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};

use common::*;

/// Heartbeat and stale bound of every replica here (production: 5s and 15s).
const HEARTBEAT: &str = "200ms";
const STALE: &str = "1s";

/// A `redis-server` of its own on a free loopback port: no persistence, killed
/// when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
}

impl Redis {
    async fn start() -> Redis {
        Redis::start_on(free_port(), false).await
    }

    async fn start_on(port: u16, cluster: bool) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            child: None,
            port,
            dir,
            cluster,
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.path().join("nodes.conf"));
        }
        self.child = Some(
            cmd.spawn()
                .expect("redis-server (tests/setup.sh installs it)"),
        );
        let port = self.port;
        eventually(10.0, "redis-server answering PING", || async move {
            (cli(port, &["PING"]) == "PONG").then_some(())
        })
        .await;
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig} redis-server");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// This replica's count fields in a key, summed (what the fleet counts).
    fn total(&self, key: &str) -> u64 {
        let out = self.cli(&["HGETALL", key]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|kv| kv.len() == 2 && kv[0].starts_with("c:"))
            .map(|kv| kv[1].parse::<u64>().unwrap_or(0))
            .sum()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped server ignores SIGKILL's delivery order otherwise.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A wsgate replica sharing `store`, with the test's heartbeat and stale bound.
async fn replica(name: &str, store: &str, extra: &[&str], routes: &str) -> Wsgate {
    let mut args: Vec<String> = vec![
        "--limits-store".into(),
        store.into(),
        "--limits-heartbeat".into(),
        HEARTBEAT.into(),
        "--limits-stale-after".into(),
        STALE.into(),
    ];
    if !extra.contains(&"--limits-store-timeout") {
        // The machine running tests is loaded: a deadline that a busy loopback
        // Redis misses now and then would make the fallback, not the store, decide.
        args.extend(["--limits-store-timeout".into(), "250ms".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let opts = Options {
        args,
        env: vec![("POD_NAME".into(), name.into())],
        ..Options::default()
    };
    Wsgate::start_with(opts, routes).await
}

type Client = tokio_tungstenite::WebSocketStream<TcpStream>;

/// What an upgrade got: a tunnel, or a status (and `Retry-After`).
enum Upgrade {
    Open(Box<Client>),
    Refused(u16, Option<String>),
}

impl Upgrade {
    fn status(&self) -> u16 {
        match self {
            Upgrade::Open(_) => 101,
            Upgrade::Refused(s, _) => *s,
        }
    }

    fn open(self, what: &str) -> Client {
        match self {
            Upgrade::Open(c) => *c,
            Upgrade::Refused(s, _) => panic!("{what}: refused with {s}"),
        }
    }
}

/// Opens a tunnel through `gate` from the client address `from` (127.0.0.x),
/// with `token` in the query when given.
async fn upgrade(gate: &Wsgate, from: &str, token: Option<&str>) -> Upgrade {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let stream = within(10.0, "TCP connect to wsgate", socket.connect(gate.listen))
        .await
        .unwrap();
    let url = match token {
        Some(t) => gate.url(&format!("/?access_token={t}")),
        None => gate.url("/"),
    };
    let r = within(
        10.0,
        "the upgrade's answer",
        tokio_tungstenite::client_async_with_config(url, stream, Some(unlimited())),
    )
    .await;
    match r {
        Ok((ws, _)) => Upgrade::Open(Box::new(ws)),
        Err(tungstenite::Error::Http(resp)) => Upgrade::Refused(
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
        ),
        Err(e) => panic!("upgrade from {from}: {e}"),
    }
}

/// Echoes one message: the tunnel is really open end to end.
async fn echo(c: &mut Client) {
    c.send(Message::text("ping?")).await.unwrap();
    within(10.0, "an echo", async {
        loop {
            match c.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "ping?" => return,
                Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                other => panic!("no echo: {other:?}"),
            }
        }
    })
    .await;
}

/// Closes a tunnel cleanly.
async fn close(mut c: Client) {
    let _ = within(5.0, "a close", c.close(None)).await;
}

/// A route with these `fleetLimits` to the backend.
fn route(backend: SocketAddr, fleet: &str) -> String {
    Route::new("chat")
        .backend(backend)
        .set("fleetLimits", fleet)
        .yaml()
}

const ROUTE_KEY: &str = "wsg:{route:default/chat}:conns";

/// Until every replica's heartbeat has marked it live, and each has read the
/// registry since (local-share's N).
async fn replicas_live(redis: &Redis, n: usize) {
    eventually(10.0, "the replicas registering", || async move {
        (redis.cli(&["HLEN", "wsg:{replicas}"]).parse::<usize>().ok() == Some(n)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::test]
async fn a_route_cap_of_3_holds_across_two_replicas_and_a_close_admits_the_next() {
    let redis = Redis::start().await;
    let (_b, backend) = node_backend("b", &[]).await;
    let routes = route(backend, "{maxConnections: 3}");
    let a = replica("a", &redis.url(), &[], &routes).await;
    let b = replica("b", &redis.url(), &[], &routes).await;

    let mut a1 = upgrade(&a, "127.0.0.1", None).await.open("a1");
    let a2 = upgrade(&a, "127.0.0.1", None).await.open("a2");
    let mut b1 = upgrade(&b, "127.0.0.1", None).await.open("b1");
    echo(&mut a1).await;
    echo(&mut b1).await;
    assert_eq!(redis.total(ROUTE_KEY), 3);
    // Per-replica fields: a's 2 and b's 1, each with its heartbeat.
    let fields = redis.cli(&["HGETALL", ROUTE_KEY]);
    assert_eq!(
        fields.lines().filter(|l| l.starts_with("c:a-")).count(),
        1,
        "{fields}"
    );
    assert_eq!(
        fields.lines().filter(|l| l.starts_with("t:b-")).count(),
        1,
        "{fields}"
    );

    for gate in [&a, &b] {
        let r = upgrade(gate, "127.0.0.1", None).await;
        assert_eq!(r.status(), 503, "the 4th tunnel on either replica");
    }
    close(a2).await;
    // The release is written in the background: the next one gets in soon after.
    let mut b2 = eventually(5.0, "a 4th tunnel after a close", || async {
        match upgrade(&b, "127.0.0.1", None).await {
            Upgrade::Open(c) => Some(c),
            Upgrade::Refused(..) => None,
        }
    })
    .await;
    echo(&mut b2).await;
    assert_eq!(upgrade(&a, "127.0.0.1", None).await.status(), 503);
    // b refused its 4th, and maybe a retry while the release was on its way.
    let m = b.metrics().await;
    assert!(
        m.get(
            "wsgate_fleet_limit_rejections_total",
            &[
                ("namespace", "default"),
                ("route", "chat"),
                ("scope", "route")
            ]
        ) >= 1.0
    );
    assert_eq!(m.get("wsgate_limits_store_mode", &[("mode", "store")]), 1.0);
    assert_eq!(
        m.get("wsgate_limits_store_mode", &[("mode", "local-share")]),
        0.0
    );
}

#[tokio::test]
async fn a_per_address_cap_counts_an_address_on_every_replica() {
    let redis = Redis::start().await;
    let (_b, backend) = node_backend("b", &[]).await;
    let routes = route(backend, "{maxConnectionsPerClientIP: 2}");
    let a = replica("a", &redis.url(), &[], &routes).await;
    let b = replica("b", &redis.url(), &[], &routes).await;

    let _x1 = upgrade(&a, "127.0.0.2", None).await.open(".2 on a");
    let _x2 = upgrade(&b, "127.0.0.2", None).await.open(".2 on b");
    for gate in [&a, &b] {
        match upgrade(gate, "127.0.0.2", None).await {
            Upgrade::Refused(429, Some(after)) => {
                assert!(after.parse::<u64>().unwrap() >= 1, "Retry-After: {after}")
            }
            Upgrade::Refused(s, after) => panic!("3rd from .2: {s} Retry-After {after:?}"),
            Upgrade::Open(_) => panic!("3rd from .2 admitted"),
        }
    }
    // Another address is not affected, on either replica.
    let mut y1 = upgrade(&a, "127.0.0.3", None).await.open(".3 on a");
    let _y2 = upgrade(&b, "127.0.0.3", None).await.open(".3 on b");
    echo(&mut y1).await;
    assert_eq!(redis.total("wsg:{ip:default/chat:127.0.0.2}:conns"), 2);
    let m = a.metrics().await;
    assert_eq!(
        m.get(
            "wsgate_fleet_limit_rejections_total",
            &[
                ("namespace", "default"),
                ("route", "chat"),
                ("scope", "client_ip")
            ]
        ),
        1.0
    );
}

/// An Ed25519 key, its JWKS file, and tokens for a subject.
struct Tokens {
    key: EncodingKey,
    jwks: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tokens {
    fn new() -> Tokens {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
                         "x": B64.encode(pair.public_key().as_ref())});
        std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
        Tokens {
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwks,
            _dir: dir,
        }
    }

    fn auth(&self) -> String {
        auth_field(&self.jwks)
    }

    fn token(&self, sub: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("k1".into());
        let claims = json!({"iss": "https://id.example.com", "aud": "chat", "sub": sub,
                            "iat": now, "exp": now + 600});
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn auth_field(jwks: &Path) -> String {
    format!(
        "{{jwt: {{issuer: \"https://id.example.com\", audiences: [chat], jwks: {{file: \"{}\"}}, \
         tokenFrom: [{{query: access_token}}]}}}}",
        jwks.display()
    )
}

#[tokio::test]
async fn a_per_subject_cap_counts_a_subject_on_every_replica() {
    let redis = Redis::start().await;
    let tokens = Tokens::new();
    let (_b, backend) = node_backend("b", &[]).await;
    let routes = Route::new("chat")
        .backend(backend)
        .set("auth", &tokens.auth())
        .set("fleetLimits", "{maxConnectionsPerSubject: 2}")
        .yaml();
    let a = replica("a", &redis.url(), &[], &routes).await;
    let b = replica("b", &redis.url(), &[], &routes).await;
    let alice = tokens.token("alice");
    let mut x1 = upgrade(&a, "127.0.0.2", Some(&alice))
        .await
        .open("alice on a");
    let _x2 = upgrade(&b, "127.0.0.3", Some(&alice))
        .await
        .open("alice on b");
    echo(&mut x1).await;
    for gate in [&a, &b] {
        let r = upgrade(gate, "127.0.0.4", Some(&alice)).await;
        assert!(
            matches!(r, Upgrade::Refused(429, Some(_))),
            "alice's 3rd: {}",
            r.status()
        );
    }
    let bob = tokens.token("bob");
    let mut y = upgrade(&a, "127.0.0.2", Some(&bob)).await.open("bob on a");
    echo(&mut y).await;
    // The subject is stored hashed: no "alice" in any key.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(!keys.contains("alice"), "{keys}");
    assert_eq!(
        keys.lines().filter(|k| k.starts_with("wsg:{sub:")).count(),
        2,
        "{keys}"
    );
}

#[tokio::test]
async fn a_killed_replicas_tunnels_stop_counting_within_the_stale_bound() {
    let redis = Redis::start().await;
    let (_b, backend) = node_backend("b", &[]).await;
    let routes = route(backend, "{maxConnections: 2}");
    let mut a = replica("a", &redis.url(), &[], &routes).await;
    let b = replica("b", &redis.url(), &[], &routes).await;
    let _a1 = upgrade(&a, "127.0.0.1", None).await.open("a1");
    let _a2 = upgrade(&a, "127.0.0.1", None).await.open("a2");
    assert_eq!(upgrade(&b, "127.0.0.1", None).await.status(), 503);

    let ok = Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let killed = Instant::now();
    a.wait_exit(5.0).await;
    // Until a's last heartbeat is `--limits-stale-after` old, its 2 still count.
    assert_eq!(upgrade(&b, "127.0.0.1", None).await.status(), 503);
    let mut b1 = eventually(10.0, "b admitting a's share", || async {
        match upgrade(&b, "127.0.0.1", None).await {
            Upgrade::Open(c) => Some(c),
            Upgrade::Refused(..) => None,
        }
    })
    .await;
    let healed = killed.elapsed();
    let _b2 = upgrade(&b, "127.0.0.1", None).await.open("b2");
    echo(&mut b1).await;
    assert_eq!(upgrade(&b, "127.0.0.1", None).await.status(), 503);
    eprintln!("fleet-limits measure: killed replica's share admitted again after {healed:?} (stale 1s, heartbeat 200ms)");
    // Stale 1s, plus the heartbeat the kill may have just missed, plus a loaded
    // machine's margin.
    assert!(
        healed >= Duration::from_millis(700) && healed < Duration::from_secs(4),
        "{healed:?}"
    );
}

#[tokio::test]
async fn after_flushall_the_counts_reappear_within_a_heartbeat() {
    let redis = Redis::start().await;
    let (_b, backend) = node_backend("b", &[]).await;
    let routes = route(backend, "{maxConnections: 2}");
    let a = replica("a", &redis.url(), &[], &routes).await;
    let b = replica("b", &redis.url(), &[], &routes).await;
    let _a1 = upgrade(&a, "127.0.0.1", None).await.open("a1");
    let _a2 = upgrade(&a, "127.0.0.1", None).await.open("a2");
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    let flushed = Instant::now();
    eventually(3.0, "a's counts rewritten", || async {
        (redis.total(ROUTE_KEY) == 2).then_some(())
    })
    .await;
    let back = flushed.elapsed();
    eprintln!("fleet-limits measure: counts back {back:?} after FLUSHALL (heartbeat 200ms)");
    assert!(back < Duration::from_secs(1), "{back:?}");
    assert_eq!(upgrade(&b, "127.0.0.1", None).await.status(), 503);
}

/// Two replicas with `fallback`, route cap 4 (2 each while the store is away),
/// Redis stopped with SIGSTOP: each handshake still ends within the deadline
/// plus a margin, the fallback decides, and counting resumes after SIGCONT.
async fn redis_stopped(fallback: &str) -> (Redis, Wsgate, Wsgate, Vec<Client>, Peer) {
    let redis = Redis::start().await;
    let (b_peer, backend) = node_backend("b", &[]).await;
    let routes = route(backend, "{maxConnections: 4}");
    // The default deadline: what a handshake pays while Redis is stopped.
    let args = [
        "--limits-on-store-error",
        fallback,
        "--limits-store-timeout",
        "25ms",
    ];
    let a = replica("a", &redis.url(), &args, &routes).await;
    let b = replica("b", &redis.url(), &args, &routes).await;
    replicas_live(&redis, 2).await;
    redis.signal("-STOP");
    let mut open = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let started = Instant::now();
        let r = upgrade(&a, "127.0.0.1", None).await;
        let took = started.elapsed();
        eprintln!("fleet-limits measure: {fallback}: handshake {i} with Redis stopped took {took:?} (deadline 25ms)");
        // The deadline, plus what a loaded debug build needs for the rest of the
        // handshake (a few ms when the machine is idle).
        assert!(
            took < Duration::from_millis(525),
            "{fallback}: handshake {i} took {took:?}"
        );
        statuses.push(r.status());
        if let Upgrade::Open(c) = r {
            open.push(*c);
        }
    }
    let expected: &[u16] = match fallback {
        "local-share" => &[101, 101, 503, 503],
        "fail-open" => &[101, 101, 101, 101],
        _ => &[503, 503, 503, 503],
    };
    assert_eq!(statuses, expected, "{fallback}");
    let m = a.metrics().await;
    assert!(m.get("wsgate_limits_store_errors_total", &[]) >= 1.0);
    (redis, a, b, open, b_peer)
}

#[tokio::test]
async fn redis_stopped_local_share_enforces_each_replicas_share_then_counting_resumes() {
    let (redis, a, b, open, _peer) = redis_stopped("local-share").await;
    // b enforces its own share: 2.
    let _b1 = upgrade(&b, "127.0.0.1", None).await.open("b1");
    let _b2 = upgrade(&b, "127.0.0.1", None).await.open("b2");
    assert_eq!(upgrade(&b, "127.0.0.1", None).await.status(), 503);
    a.wait_metric(
        10.0,
        "wsgate_limits_store_mode",
        &[("mode", "local-share")],
        |v| v == 1.0,
    )
    .await;
    // The breaker is open: a handshake no longer waits for the store at all.
    let errors = a
        .metrics()
        .await
        .get("wsgate_limits_store_errors_total", &[]);
    let started = Instant::now();
    assert_eq!(upgrade(&a, "127.0.0.1", None).await.status(), 503);
    let took = started.elapsed();
    eprintln!("fleet-limits measure: local-share, breaker open: handshake took {took:?}");
    let after = a
        .metrics()
        .await
        .get("wsgate_limits_store_errors_total", &[]);
    // At most a heartbeat's failure in between; the handshake itself made no call.
    assert!(after - errors <= 1.0, "{errors} -> {after}");
    redis.signal("-CONT");
    // The heartbeats write a's 2 and b's 2: the fleet holds 4, the cap.
    eventually(5.0, "counting resumed", || async {
        (redis.total(ROUTE_KEY) == 4).then_some(())
    })
    .await;
    a.wait_metric(
        10.0,
        "wsgate_limits_store_mode",
        &[("mode", "store")],
        |v| v == 1.0,
    )
    .await;
    assert_eq!(upgrade(&a, "127.0.0.1", None).await.status(), 503);
    drop(open);
    let mut c = eventually(5.0, "a tunnel after a's closed", || async {
        match upgrade(&b, "127.0.0.1", None).await {
            Upgrade::Open(c) => Some(c),
            Upgrade::Refused(..) => None,
        }
    })
    .await;
    echo(&mut c).await;
    assert!(
        a.log_text().contains("limits store not answering"),
        "{}",
        a.log_text()
    );
    assert_eq!(
        a.log_text().matches("limits store not answering").count(),
        1,
        "the change is logged once"
    );
}

#[tokio::test]
async fn redis_stopped_fail_open_admits_past_the_cap() {
    let (redis, a, _b, mut open, _peer) = redis_stopped("fail-open").await;
    echo(&mut open[3]).await;
    let _fifth = upgrade(&a, "127.0.0.1", None).await.open("5th, fail-open");
    redis.signal("-CONT");
    eventually(5.0, "counting resumed", || async {
        (redis.total(ROUTE_KEY) == 5).then_some(())
    })
    .await;
    assert_eq!(upgrade(&a, "127.0.0.1", None).await.status(), 503);
}

#[tokio::test]
async fn redis_stopped_fail_closed_refuses_with_503_until_it_answers() {
    let (redis, a, _b, _open, _peer) = redis_stopped("fail-closed").await;
    redis.signal("-CONT");
    let mut c = eventually(5.0, "admitted once Redis answers", || async {
        match upgrade(&a, "127.0.0.1", None).await {
            Upgrade::Open(c) => Some(c),
            Upgrade::Refused(..) => None,
        }
    })
    .await;
    echo(&mut c).await;
    assert_eq!(redis.total(ROUTE_KEY), 1);
}

#[tokio::test]
async fn redis_killed_and_restarted_counts_reappear_and_the_cap_holds() {
    let mut redis = Redis::start().await;
    let (_b, backend) = node_backend("b", &[]).await;
    let routes = route(backend, "{maxConnections: 3}");
    let a = replica("a", &redis.url(), &[], &routes).await;
    let b = replica("b", &redis.url(), &[], &routes).await;
    replicas_live(&redis, 2).await;
    let _a1 = upgrade(&a, "127.0.0.1", None).await.open("a1");
    let _a2 = upgrade(&a, "127.0.0.1", None).await.open("a2");
    redis.kill();
    // Refused connections fail fast: local-share, 2 per replica (ceil(3/2)).
    let started = Instant::now();
    let _b1 = upgrade(&b, "127.0.0.1", None)
        .await
        .open("b1 while Redis is down");
    let took = started.elapsed();
    eprintln!("fleet-limits measure: an upgrade with Redis killed took {took:?}");
    assert!(took < Duration::from_millis(1250), "{took:?}");
    assert_eq!(upgrade(&a, "127.0.0.1", None).await.status(), 503);
    redis.spawn().await;
    let restarted = Instant::now();
    eventually(10.0, "counts rewritten after the restart", || async {
        (redis.total(ROUTE_KEY) == 3).then_some(())
    })
    .await;
    eprintln!(
        "fleet-limits measure: counts back {:?} after Redis restarted",
        restarted.elapsed()
    );
    eventually(5.0, "the store deciding again", || async {
        (upgrade(&b, "127.0.0.1", None).await.status() == 503).then_some(())
    })
    .await;
    assert_eq!(upgrade(&a, "127.0.0.1", None).await.status(), 503);
}

/// Sends `n` messages as fast as the tunnel takes them, then counts the echoes
/// (what reached the backend) until the Close.
async fn flood(c: Client, n: usize, size: usize) -> (usize, Option<u16>) {
    let (mut tx, mut rx) = c.split();
    let send = async move {
        for i in 0..n {
            let mut m = format!("m{i}-");
            m.extend(std::iter::repeat_n('x', size.saturating_sub(m.len())));
            if tx.send(Message::text(m)).await.is_err() {
                break;
            }
        }
        tx
    };
    let recv = async move {
        let mut echoed = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => echoed += 1,
                Ok(Some(Ok(Message::Close(f)))) => {
                    return (echoed, f.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return (echoed, None),
            }
        }
    };
    let (_, r) = tokio::join!(send, recv);
    r
}

#[tokio::test]
async fn a_message_budget_is_never_exceeded_across_two_replicas() {
    let redis = Redis::start().await;
    let (mut backend_peer, backend) = node_backend("b", &[]).await;
    let routes = route(
        backend,
        "{messageBudget: {scope: Route, messages: 100, window: 1m}}",
    );
    let a = replica("a", &redis.url(), &[], &routes).await;
    let b = replica("b", &redis.url(), &[], &routes).await;
    let x = upgrade(&a, "127.0.0.2", None).await.open("on a");
    let y = upgrade(&b, "127.0.0.3", None).await.open("on b");
    let ((ex, cx), (ey, cy)) = tokio::join!(flood(x, 80, 0), flood(y, 80, 0));
    // What the backend received is what the fleet let through (an echo in flight
    // when the proxy closes is lost, so the clients' counts may be lower).
    backend_peer.drain(1.0, 10.0).await;
    let total = backend_peer.seen_named("message").len();
    eprintln!("fleet-limits measure: budget 100, two tunnels × 80 as fast as possible: {total} reached the backend ({ex} + {ey} echoed), under-use {}", 100 - total.min(100));
    assert!(total <= 100, "{ex} + {ey} over the budget of 100");
    // Under-use is bounded by what the two replicas hold leased: 2 × 1.5 × 4.
    assert!(
        total >= 88,
        "{ex} + {ey}: more under-use than 2 × 1.5 × chunk"
    );
    assert_eq!(
        (cx, cy),
        (Some(1008), Some(1008)),
        "both closed for the budget"
    );
    let m = a.metrics().await;
    assert_eq!(
        m.get(
            "wsgate_fleet_limit_rejections_total",
            &[
                ("namespace", "default"),
                ("route", "chat"),
                ("scope", "budget")
            ]
        ),
        1.0
    );
    // The window's remainder is what the store still holds.
    let left: u64 = redis
        .cli(&["HGET", "wsg:{budget:default/chat:route}", "m"])
        .parse()
        .unwrap();
    assert!(left <= 100 - total as u64, "{left} left after {total}");
}

#[tokio::test]
async fn a_byte_budget_is_never_exceeded_across_two_replicas() {
    let redis = Redis::start().await;
    let (mut backend_peer, backend) = node_backend("b", &[]).await;
    let routes = route(
        backend,
        "{messageBudget: {scope: Route, bytes: 10000, window: 1m}}",
    );
    let a = replica("a", &redis.url(), &[], &routes).await;
    let b = replica("b", &redis.url(), &[], &routes).await;
    let x = upgrade(&a, "127.0.0.2", None).await.open("on a");
    let y = upgrade(&b, "127.0.0.3", None).await.open("on b");
    // 50-byte messages: under budget / 128, so none is refused for its size.
    let ((_, cx), (_, cy)) = tokio::join!(flood(x, 160, 50), flood(y, 160, 50));
    backend_peer.drain(1.0, 10.0).await;
    let bytes: u64 = backend_peer
        .seen_named("message")
        .iter()
        .map(|m| m["data"].as_str().map_or(0, |d| d.len() as u64))
        .sum();
    eprintln!("fleet-limits measure: byte budget 10000, two tunnels × 160 × 50 B: {bytes} B reached the backend, under-use {}", 10000 - bytes.min(10000));
    assert!(bytes <= 10000, "{bytes} bytes over the budget of 10000");
    // Under-use: at most 2 replicas × 2 chunks of 313 bytes.
    assert!(bytes >= 10000 - 1252, "{bytes}: more under-use than stated");
    assert_eq!(
        (cx, cy),
        (Some(1008), Some(1008)),
        "both closed for the budget"
    );
}

#[tokio::test]
async fn caps_hold_on_a_three_node_redis_cluster() {
    let nodes = [
        Redis::start_on(free_port(), true).await,
        Redis::start_on(free_port(), true).await,
        Redis::start_on(free_port(), true).await,
    ];
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    eventually(15.0, "cluster state ok", || async {
        nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            .then_some(())
    })
    .await;
    let seeds: Vec<String> = addrs.iter().map(|a| format!("redis://{a}")).collect();
    let store = seeds.join(",");
    let (_b, backend) = node_backend("b", &[]).await;
    let routes = route(backend, "{maxConnections: 3, maxConnectionsPerClientIP: 2}");
    let mode = ["--limits-store-mode", "cluster"];
    let a = replica("a", &store, &mode, &routes).await;
    let b = replica("b", &store, &mode, &routes).await;
    let mut x1 = upgrade(&a, "127.0.0.2", None).await.open(".2 on a");
    let _x2 = upgrade(&b, "127.0.0.2", None).await.open(".2 on b");
    echo(&mut x1).await;
    assert_eq!(upgrade(&a, "127.0.0.2", None).await.status(), 429);
    let _y1 = upgrade(&b, "127.0.0.3", None).await.open(".3 on b");
    // Route cap 3 reached; .4 has room for its address but not the route's.
    assert_eq!(upgrade(&a, "127.0.0.4", None).await.status(), 503);
    assert_eq!(upgrade(&b, "127.0.0.4", None).await.status(), 503);
    // The refused acquires released what they took on earlier slots: .4's count
    // is back to 0 within a heartbeat.
    let ip4 = "wsg:{ip:default/chat:127.0.0.4}:conns";
    eventually(3.0, ".4 uncounted", || async {
        let total: u64 = nodes
            .iter()
            .map(|n| {
                n.cli(&["-c", "HGETALL", ip4])
                    .lines()
                    .collect::<Vec<_>>()
                    .chunks(2)
                    .filter(|kv| kv.len() == 2 && kv[0].starts_with("c:"))
                    .map(|kv| kv[1].parse::<u64>().unwrap_or(0))
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        (total == 0).then_some(())
    })
    .await;
    let m = a.metrics().await;
    assert_eq!(m.get("wsgate_limits_store_errors_total", &[]), 0.0);
}

#[test]
fn a_route_with_fleet_limits_and_no_store_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        route("127.0.0.1:9".parse().unwrap(), "{maxConnections: 3}"),
    )
    .unwrap();
    let (code, out) = wsgate_cmd(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("spec.fleetLimits: needs wsgate to run with --limits-store"),
        "{out}"
    );
    let (code, out) = wsgate_cmd(&[
        "check",
        "--config",
        file.to_str().unwrap(),
        "--limits-store",
        "redis://127.0.0.1:1",
    ]);
    assert_eq!(code, 0, "{out}");
}

/// A Socket.IO client over WebSocket with `token`, through `gate`: `true` when it
/// connected (and echoed through the server), `false` on `connect_error`.
async fn socketio(gate: &Wsgate, token: &str) -> (Peer, bool) {
    let mut p = Peer::node(
        "socketio-hold.js",
        &[&format!("http://{}", gate.listen), "--token", token],
    );
    let ev = p
        .expect_where(15.0, "connect or connect_error", |v| {
            v["event"] == "connect" || v["event"] == "connect_error"
        })
        .await;
    let ok = ev["event"] == "connect";
    (p, ok)
}

#[tokio::test]
async fn socket_io_clients_through_two_replicas_share_a_per_subject_cap() {
    let redis = Redis::start().await;
    let tokens = Tokens::new();
    let (_server, backend) = listening(Peer::node("socketio-server.js", &["--name", "A"])).await;
    let routes = Route::new("chat")
        .backend(backend)
        .set("auth", &tokens.auth())
        .set("fleetLimits", "{maxConnectionsPerSubject: 2}")
        .yaml();
    let a = replica("a", &redis.url(), &[], &routes).await;
    let b = replica("b", &redis.url(), &[], &routes).await;
    let alice = tokens.token("alice");
    let (_p1, ok1) = socketio(&a, &alice).await;
    let (_p2, ok2) = socketio(&b, &alice).await;
    assert!(ok1 && ok2, "alice's first two");
    let (_p3, ok3) = socketio(&a, &alice).await;
    let (_p4, ok4) = socketio(&b, &alice).await;
    assert!(!ok3 && !ok4, "alice's third on either replica");
    let (_p5, ok5) = socketio(&b, &tokens.token("bob")).await;
    assert!(ok5, "bob");
    for gate in [&a, &b] {
        let m = gate.metrics().await;
        assert_eq!(
            m.get(
                "wsgate_fleet_limit_rejections_total",
                &[
                    ("namespace", "default"),
                    ("route", "chat"),
                    ("scope", "subject")
                ]
            ),
            1.0
        );
    }
}
