//! `backendTLS`: wsgate dials `wss://`/`https://` backends (Python `websockets`,
//! Node `ws`) with a CA made here, verifies them, presents a client certificate to
//! mTLS backends, and picks up rotated CA and client certificate files without a
//! restart. Verification failures are a 502 with the reason in wsgate's log.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A test CA that signs leaf certificates into PEM files.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// Writes the CA certificate to `path`.
    fn write(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).unwrap();
    }

    /// Writes a leaf for `cn` with DNS names `dns` and IP 127.0.0.1 to
    /// `dir/stem.crt` and `dir/stem.key`; `expired` puts `notAfter` in the past.
    fn leaf(
        &self,
        dir: &Path,
        stem: &str,
        cn: &str,
        dns: &[&str],
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = dns
            .iter()
            .map(|d| SanType::DnsName((*d).try_into().unwrap()))
            .chain([SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))])
            .collect();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        // Written next to the final name and renamed, the way Secret volumes and
        // cert-manager's tools replace files.
        replace(&crt, &cert.pem());
        replace(&k, &key.serialize_pem());
        (crt, k)
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A Python or Node backend serving wss with `cert`/`key` (and requiring a client
/// certificate signed by `client_ca` when given).
async fn tls_backend(
    node: bool,
    name: &str,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> (Peer, SocketAddr) {
    let (c, k) = (p(cert), p(key));
    let mut args = vec!["--tls-cert", &c, "--tls-key", &k];
    let ca = client_ca.map(p);
    if let Some(ca) = &ca {
        args.extend(["--tls-client-ca", ca.as_str()]);
    }
    if node {
        node_backend(name, &args).await
    } else {
        python_backend(name, &args).await
    }
}

async fn upgrade_status(gate: &Wsgate, path: &str) -> u16 {
    raw_upgrade(gate.listen, path, &[]).await.response.status
}

#[tokio::test]
async fn python_and_node_wss_backends_echo_through_wsgate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    ca.write(&dir.path().join("ca.pem"));
    let (crt, key) = ca.leaf(dir.path(), "backend", "backend", &["chat.internal"], false);
    let (_py, py_addr) = tls_backend(false, "py", &crt, &key, None).await;
    let (mut node, node_addr) = tls_backend(true, "node", &crt, &key, None).await;
    let ca_file = p(&dir.path().join("ca.pem"));
    let gate = Wsgate::start(&routes_yaml(&[
        // Default name: the address's host (an IP SAN).
        Route::new("py")
            .prefix("/py")
            .backend(py_addr)
            .set("backendTLS", &format!("{{caFile: \"{ca_file}\"}}")),
        Route::new("node").prefix("/node").backend(node_addr).set(
            "backendTLS",
            &format!("{{hostname: chat.internal, caFile: \"{ca_file}\"}}"),
        ),
    ]))
    .await;
    for path in ["/py", "/node"] {
        let mut ws = ws_connect(&gate.url(path)).await;
        for i in 0..20 {
            let msg = format!("{path} message {i} {}", "x".repeat(i * 500));
            assert_eq!(ws_roundtrip(&mut ws, &msg, 5.0).await, msg);
        }
    }
    // Plain HTTP (polling transports) goes over TLS too.
    let r = within(10.0, "GET over https", http_get(gate.listen, "/node/poll"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-backend"), Some("node"));
    node.expect_where(5.0, "the polling request", |v| {
        v["event"] == "http" && v["url"] == "/node/poll"
    })
    .await;
}

#[tokio::test]
async fn verification_failures_are_502_with_the_reason_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Ca::new("trusted CA");
    let other = Ca::new("other CA");
    trusted.write(&dir.path().join("ca.pem"));
    let (c1, k1) = other.leaf(dir.path(), "foreign", "foreign", &["chat.internal"], false);
    let (c2, k2) = trusted.leaf(
        dir.path(),
        "misnamed",
        "misnamed",
        &["elsewhere.internal"],
        false,
    );
    let (c3, k3) = trusted.leaf(dir.path(), "expired", "expired", &["chat.internal"], true);
    let (_a, wrong_ca) = tls_backend(false, "a", &c1, &k1, None).await;
    let (_b, wrong_name) = tls_backend(true, "b", &c2, &k2, None).await;
    let (_c, expired) = tls_backend(false, "c", &c3, &k3, None).await;
    let tls = format!(
        "{{hostname: chat.internal, caFile: \"{}\"}}",
        p(&dir.path().join("ca.pem"))
    );
    let gate = Wsgate::start(&routes_yaml(&[
        Route::new("wrong-ca")
            .prefix("/wrong-ca")
            .backend(wrong_ca)
            .set("backendTLS", &tls),
        Route::new("wrong-name")
            .prefix("/wrong-name")
            .backend(wrong_name)
            .set("backendTLS", &tls),
        Route::new("expired")
            .prefix("/expired")
            .backend(expired)
            .set("backendTLS", &tls),
    ]))
    .await;
    for (path, reason) in [
        ("/wrong-ca", "unknown CA"),
        ("/wrong-name", "name mismatch"),
        ("/expired", "expired"),
    ] {
        assert_eq!(upgrade_status(&gate, path).await, 502, "{path}");
        let route = &path[1..];
        let log = gate.log_text();
        assert!(
            log.lines().any(|l| l.contains("backend TLS failed")
                && l.contains(route)
                && l.contains(reason)),
            "{path}: no log line naming {reason:?}:\n{log}"
        );
        let m = gate.metrics().await;
        assert_eq!(
            m.get(
                "wsgate_connections_total",
                &[("route", route), ("outcome", "backend_unavailable")]
            ),
            1.0,
            "{path}"
        );
        // Plain HTTP on the same route is refused the same way.
        let r = within(10.0, "GET", http_get(gate.listen, path))
            .await
            .unwrap();
        assert_eq!(r.status, 502, "{path}: {}", r.text());
    }
}

#[tokio::test]
async fn an_mtls_backend_accepts_the_client_certificate_and_refuses_a_client_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    server_ca.write(&dir.path().join("ca.pem"));
    client_ca.write(&dir.path().join("client-ca.pem"));
    let (sc, sk) = server_ca.leaf(dir.path(), "server", "server", &["chat.internal"], false);
    let (cc, ck) = client_ca.leaf(dir.path(), "client", "wsgate-client", &["wsgate"], false);
    let client_ca_file = dir.path().join("client-ca.pem");
    let (mut node, node_addr) = tls_backend(true, "node", &sc, &sk, Some(&client_ca_file)).await;
    let (mut py, py_addr) = tls_backend(false, "py", &sc, &sk, Some(&client_ca_file)).await;
    let ca = p(&dir.path().join("ca.pem"));
    let with_cert = format!(
        "{{hostname: chat.internal, caFile: \"{ca}\", certFile: \"{}\", keyFile: \"{}\"}}",
        p(&cc),
        p(&ck)
    );
    let without = format!("{{hostname: chat.internal, caFile: \"{ca}\"}}");
    let gate = Wsgate::start(&routes_yaml(&[
        Route::new("node-mtls")
            .prefix("/node-mtls")
            .backend(node_addr)
            .set("backendTLS", &with_cert),
        Route::new("py-mtls")
            .prefix("/py-mtls")
            .backend(py_addr)
            .set("backendTLS", &with_cert),
        Route::new("node-none")
            .prefix("/node-none")
            .backend(node_addr)
            .set("backendTLS", &without),
        Route::new("py-none")
            .prefix("/py-none")
            .backend(py_addr)
            .set("backendTLS", &without),
    ]))
    .await;
    for (path, peer) in [("/node-mtls", &mut node), ("/py-mtls", &mut py)] {
        let mut ws = ws_connect(&gate.url(path)).await;
        assert_eq!(ws_roundtrip(&mut ws, "hello", 5.0).await, "hello");
        let ev = peer.expect("connection", 5.0).await;
        assert_eq!(ev["client_cert"], "wsgate-client", "{path}: {ev}");
    }
    for path in ["/node-none", "/py-none"] {
        assert_eq!(upgrade_status(&gate, path).await, 502, "{path}");
        let log = gate.log_text();
        assert!(
            log.lines().any(|l| l.contains("backend TLS failed")
                && l.contains(&path[1..])
                && l.contains("no client certificate")),
            "{path}: no log line naming the missing client certificate:\n{log}"
        );
    }
    assert!(node.seen_named("connection").len() == 1 && py.seen_named("connection").len() == 1);
}

#[tokio::test]
async fn rotated_ca_and_client_certificate_apply_to_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let client_ca = Ca::new("client CA");
    let ca_file = dir.path().join("ca.pem");
    old_ca.write(&ca_file);
    client_ca.write(&dir.path().join("client-ca.pem"));
    // The backend already presents a certificate from the new CA.
    let (sc, sk) = new_ca.leaf(dir.path(), "server", "server", &["chat.internal"], false);
    let (cc, ck) = client_ca.leaf(dir.path(), "client", "client-1", &["wsgate"], false);
    let (mut backend, addr) = tls_backend(
        true,
        "node",
        &sc,
        &sk,
        Some(&dir.path().join("client-ca.pem")),
    )
    .await;
    let gate = Wsgate::start(
        &Route::new("r")
            .backend(addr)
            .set(
                "backendTLS",
                &format!(
                    "{{hostname: chat.internal, caFile: \"{}\", certFile: \"{}\", keyFile: \"{}\"}}",
                    p(&ca_file),
                    p(&cc),
                    p(&ck)
                ),
            )
            .yaml(),
    )
    .await;
    assert_eq!(upgrade_status(&gate, "/").await, 502);
    assert!(gate.log_text().contains("unknown CA"));

    new_ca.write(&ca_file);
    eventually(10.0, "the rotated CA to be trusted", || async {
        (upgrade_status(&gate, "/").await == 101).then_some(())
    })
    .await;
    let ev = backend.expect("connection", 5.0).await;
    assert_eq!(ev["client_cert"], "client-1");

    client_ca.leaf(dir.path(), "client", "client-2", &["wsgate"], false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // Until both files are in place the previous pair keeps serving.
        assert_eq!(upgrade_status(&gate, "/").await, 101);
        let ev = backend.expect("connection", 5.0).await;
        if ev["client_cert"] == "client-2" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated client certificate was never presented"
        );
        pause(0.1).await;
    }
    let mut ws = ws_connect(&gate.url("/")).await;
    assert_eq!(
        ws_roundtrip(&mut ws, "after rotation", 5.0).await,
        "after rotation"
    );
}

#[tokio::test]
async fn check_reports_backend_tls_mistakes_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        Route::new("r")
            .backend("127.0.0.1:9")
            .set(
                "backendTLS",
                "{hostname: 'not a name', certFile: client.crt}",
            )
            .yaml(),
    )
    .unwrap();
    let out = std::process::Command::new(WSGATE)
        .args(["check", "--config"])
        .arg(&routes)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let at = format!("{}:9: spec.backendTLS", routes.display());
    assert!(text.contains(&format!("{at}.hostname: ")), "{text}");
    assert!(
        text.contains(&format!("{at}.keyFile: required with certFile")),
        "{text}"
    );
}
