//! wss: wsgate terminates TLS on --tls-listen with each route's certificate, picked
//! by SNI, and tells the backend the client came over https.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

struct Pki {
    ca: CertificateDer<'static>,
    leaves: Vec<(String, CertificateDer<'static>)>,
    dir: tempfile::TempDir,
}

/// A test CA and one certificate per host, written as PEM files into a temp dir
/// (`HOST.crt`, `HOST.key`).
fn pki(hosts: &[&str]) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsgate test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut leaves = vec![];
    for host in hosts {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, *host);
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join(format!("{host}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.path().join(format!("{host}.key")), key.serialize_pem()).unwrap();
        leaves.push((host.to_string(), cert.der().clone()));
    }
    let ca_der = AsRef::<rcgen::Certificate>::as_ref(&ca).der().clone();
    Pki {
        ca: ca_der,
        leaves,
        dir,
    }
}

/// A TLS connection to `addr` with SNI `host`, trusting only `ca`.
async fn tls_connect(
    addr: SocketAddr,
    host: &str,
    ca: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
}

#[tokio::test]
async fn wss_uses_the_certificate_that_sni_names() {
    let hosts = ["a.example.test", "b.example.test"];
    let pki = pki(&hosts);
    let (mut backend, addr) = node_backend("secure", &[]).await;
    let routes: Vec<Route> = hosts
        .iter()
        .map(|h| {
            let crt = pki.dir.path().join(format!("{h}.crt"));
            let key = pki.dir.path().join(format!("{h}.key"));
            Route::new(&h.replace('.', "-")).host(h).backend(addr).set(
                "tls",
                &format!(
                    "{{certFile: \"{}\", keyFile: \"{}\"}}",
                    crt.display(),
                    key.display()
                ),
            )
        })
        .collect();
    let opts = Options {
        tls: true,
        ..Options::default()
    };
    let gate = Wsgate::start_with(opts, &routes_yaml(&routes)).await;
    let tls_addr = gate.tls.unwrap();

    for (host, leaf) in &pki.leaves {
        let tls = within(
            10.0,
            "the TLS handshake",
            tls_connect(tls_addr, host, &pki.ca),
        )
        .await
        .unwrap_or_else(|e| panic!("TLS to {host}: {e}"));
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert!(served == *leaf, "SNI {host} must get {host}'s certificate");

        let (mut ws, resp) = within(
            10.0,
            "the wss upgrade",
            tokio_tungstenite::client_async(format!("wss://{host}/secure"), tls),
        )
        .await
        .unwrap_or_else(|e| panic!("wss upgrade for {host}: {e}"));
        assert_eq!(resp.status(), 101);
        use futures_util::{SinkExt, StreamExt};
        ws.send(Message::text(format!("hello {host}")))
            .await
            .unwrap();
        let echo = within(5.0, "the wss echo", ws.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), format!("hello {host}"));

        let conn = backend.expect("connection", 5.0).await;
        assert_eq!(conn["headers"]["x-forwarded-proto"], "https", "{conn}");
        assert_eq!(conn["headers"]["host"], *host);
    }

    // The plain listener serves the same routes, by Host.
    let up = raw_upgrade(gate.listen, "/plain", &[]).await;
    assert_eq!(
        up.response.status, 404,
        "no route has the bare address as hostname"
    );
    let req = upgrade_request("a.example.test", "/plain", &new_key(), &[]);
    let up = raw_request(gate.listen, &req).await;
    assert_eq!(up.response.status, 101);
    let conn = backend.expect("connection", 5.0).await;
    assert_eq!(conn["headers"]["x-forwarded-proto"], "http");
}

/// Certificate files replaced on disk (a renewal) are picked up by the next TLS
/// handshake, without restarting wsgate or touching the route file.
#[tokio::test]
async fn renewed_certificate_files_are_served_without_a_restart() {
    let host = "renew.example.test";
    let first = pki(&[host]);
    let (_backend, addr) = node_backend("secure", &[]).await;
    let crt = first.dir.path().join(format!("{host}.crt"));
    let key = first.dir.path().join(format!("{host}.key"));
    let route = Route::new("renew").host(host).backend(addr).set(
        "tls",
        &format!(
            "{{certFile: \"{}\", keyFile: \"{}\"}}",
            crt.display(),
            key.display()
        ),
    );
    let opts = Options {
        tls: true,
        ..Options::default()
    };
    let gate = Wsgate::start_with(opts, &routes_yaml(&[route])).await;
    let tls_addr = gate.tls.unwrap();
    let served = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let tls = within(
        10.0,
        "the first TLS handshake",
        tls_connect(tls_addr, host, &first.ca),
    )
    .await
    .unwrap();
    assert!(
        served(&tls) == first.leaves[0].1,
        "the original certificate is served first"
    );

    // A renewal from another CA, written over the same files.
    let second = pki(&[host]);
    std::fs::copy(second.dir.path().join(format!("{host}.crt")), &crt).unwrap();
    std::fs::copy(second.dir.path().join(format!("{host}.key")), &key).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(tls) = tls_connect(tls_addr, host, &second.ca).await {
            assert!(served(&tls) == second.leaves[0].1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not served within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
