//! Route files as users write them: `wsgate check` accepts the documented format
//! and points at the file, line and field of each mistake; `wsgate serve` refuses a
//! bad command line or an unreadable config with a one-line reason.

mod common;

use common::*;

/// Every field of the standalone route format, as the docs show it.
fn documented_example(cert: &str, key: &str) -> String {
    format!(
        r#"apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {{name: echo}}            # namespace defaults to "default"
spec:
  hostnames: []                   # exact or "*.suffix"
  path: {{type: PathPrefix, value: /}}
  backends: [{{address: "127.0.0.1:9001", weight: 1}}]
  loadBalancing: {{policy: Cookie, cookie: {{name: wsgate-affinity, ttl: 1h}}}}
  keepalive: {{interval: 1s, timeout: 500ms, backend: {{interval: 1s, timeout: 500ms}}}}
  timeouts: {{connect: 5s, handshake: 10s, idle: 0s, maxLifetime: 0s}}
  limits: {{maxConnections: 0, maxConnectionsPerClientIP: 0, maxMessageBytes: 0}}
  allowedOrigins: []
  subprotocols: []
  proxyHttp: true
  drain: {{gracePeriod: 30s}}
  tls: {{certFile: {cert}, keyFile: {key}}}
"#
    )
}

/// The contract's own example, with a static backend as standalone mode requires.
const CONTRACT_EXAMPLE: &str = r#"apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {name: chat, namespace: default}
spec:
  className: wsgate
  hostnames: ["chat.example.com"]
  path: {type: PathPrefix, value: /}
  backends:
    - address: "127.0.0.1:9001"
      weight: 1
    - address: "127.0.0.1:9002"
  loadBalancing:
    policy: ConsistentHash
    hashOn: {clientIP: true}
  keepalive:
    interval: 30s
    timeout: 10s
    backend: {interval: 30s, timeout: 10s}
  timeouts: {connect: 5s, handshake: 10s, idle: 0s, maxLifetime: 0s}
  limits: {maxConnections: 0, maxConnectionsPerClientIP: 0, maxMessageBytes: 0}
  allowedOrigins: []
  subprotocols: []
  proxyHttp: true
  drain: {gracePeriod: 30s}
"#;

fn self_signed(dir: &std::path::Path) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["chat.example.com".to_string()]).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn check_accepts_the_documented_standalone_example() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let documented = dir.path().join("documented.yaml");
    std::fs::write(&documented, documented_example(&cert, &key)).unwrap();
    let (code, out) = wsgate_cmd(&["check", "--config", documented.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "the documented standalone example must be valid:\n{out}"
    );
}

#[test]
fn check_accepts_the_contract_example_and_a_directory_of_route_files() {
    let dir = tempfile::tempdir().unwrap();
    let contract = dir.path().join("contract.yaml");
    std::fs::write(&contract, CONTRACT_EXAMPLE).unwrap();
    let (code, out) = wsgate_cmd(&["check", "--config", contract.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "PRODUCT.md's example (static backends) must be valid:\n{out}"
    );

    // A directory of *.yaml files, one of them multi-document.
    let routes = dir.path().join("routes");
    std::fs::create_dir(&routes).unwrap();
    let two = routes_yaml(&[
        Route::new("one").prefix("/one").backend("127.0.0.1:9001"),
        Route::new("two")
            .namespace("team-b")
            .exact("/two")
            .backend("127.0.0.1:9002"),
    ]);
    std::fs::write(routes.join("a.yaml"), two).unwrap();
    std::fs::write(
        routes.join("b.yaml"),
        Route::new("three")
            .host("*.example.org")
            .backend("127.0.0.1:9003")
            .yaml(),
    )
    .unwrap();
    std::fs::write(routes.join("README.txt"), "not a route file").unwrap();
    let (code, out) = wsgate_cmd(&["check", "--config", routes.to_str().unwrap()]);
    assert_eq!(code, 0, "a directory of route files:\n{out}");
}

#[test]
fn check_points_at_file_line_and_field_of_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let content = routes_yaml(&[
        Route::new("bad-address")
            .prefix("/a")
            .backend("127.0.0.1:9001")
            .backend("nowhere"),
        Route::new("bad-policy")
            .prefix("/b")
            .backend("127.0.0.1:9002")
            .set("loadBalancing", "{policy: Random}"),
        Route::new("bad-duration")
            .prefix("/c")
            .backend("127.0.0.1:9003")
            .set("timeouts", "{connect: soon}"),
    ]);
    std::fs::write(&file, &content).unwrap();
    let line = |needle: &str| content.lines().position(|l| l.contains(needle)).unwrap() + 1;

    let (code, out) = wsgate_cmd(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "`wsgate check` exits 1 on errors:\n{out}");
    for (needle, field) in [
        ("nowhere", "spec.backends[1].address"),
        ("Random", "spec.loadBalancing.policy"),
        ("soon", "spec.timeouts.connect"),
    ] {
        let want = format!("routes.yaml:{}: {field}: ", line(needle));
        assert!(
            out.lines().any(|l| l.contains(&want)),
            "expected a line containing {want:?}; `wsgate check` printed:\n{out}"
        );
    }
}

#[test]
fn serve_refuses_a_bad_flag_or_an_unreadable_config_with_one_line() {
    let (code, out) = wsgate_cmd(&[
        "serve",
        "--config",
        "/nonexistent/routes.yaml",
        "--admin-listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0, "an unreadable config must fail: {out}");
    assert_eq!(
        out.trim().lines().count(),
        1,
        "one line of reason, got:\n{out}"
    );
    assert!(
        out.contains("/nonexistent/routes.yaml"),
        "the reason names the file: {out}"
    );

    let (code, out) = wsgate_cmd(&["serve", "--no-such-flag"]);
    assert_ne!(code, 0, "a bad flag must fail: {out}");
}
