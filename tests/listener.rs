//! Listener defences an operator can see: a request head that arrives too slowly
//! gets 408, one that is too large 431, one that does not parse 400, and each of
//! them (and a failed TLS handshake) moves
//! `wsgate_listener_rejections_total{reason}` and leaves a rate-limited warning.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REJECTIONS: &str = "wsgate_listener_rejections_total";

fn args(a: &[&str]) -> Options {
    Options {
        args: a.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Everything the server sends until it closes, within `secs`.
async fn read_all(s: &mut TcpStream, secs: f64) -> String {
    let mut out = Vec::new();
    within(
        secs,
        "the server to answer and close",
        s.read_to_end(&mut out),
    )
    .await
    .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slowloris_sockets_get_408_and_are_counted_and_logged_once() {
    let gate = Wsgate::start_with(
        args(&["--header-read-timeout", "1s"]),
        &Route::new("r").backend("127.0.0.1:9").yaml(),
    )
    .await;
    const SOCKETS: usize = 20;
    let start = Instant::now();
    let mut held = Vec::new();
    for i in 0..SOCKETS {
        let mut s = TcpStream::connect(gate.listen).await.unwrap();
        // Half send a partial head at once, half dribble it (a byte at a time
        // keeps the socket readable, which must not reset the deadline).
        if i % 2 == 0 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        }
        held.push(s);
    }
    let dribble = async {
        for b in b"GET / HTTP/1.1\r\nX-Slow: ".iter().cycle().take(30) {
            for (i, s) in held.iter_mut().enumerate() {
                if i % 2 == 1 {
                    let _ = s.write_all(&[*b]).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The dribble lasts 3 s; the deadline (1 s) must cut every socket before.
    let _ = tokio::time::timeout(Duration::from_millis(1500), dribble).await;
    for s in &mut held {
        let answer = read_all(s, 5.0).await;
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "a slow request head gets 408, got {answer:?}"
        );
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "the 1s header timeout cut the sockets only after {elapsed:?}"
    );
    gate.wait_metric(5.0, REJECTIONS, &[("reason", "header_timeout")], |v| {
        v == SOCKETS as f64
    })
    .await;
    let log = gate.log_text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("listener rejected a connection") && l.contains("header_timeout"))
        .count();
    assert_eq!(
        warnings, 1,
        "20 rejections within 10 s leave one warning line; log:\n{log}"
    );

    // Prompt requests are still served.
    let r = http_get(gate.listen, "/").await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
}

#[tokio::test]
async fn a_huge_header_gets_431_and_a_garbage_request_line_400() {
    let gate = Wsgate::start(&Route::new("r").backend("127.0.0.1:9").yaml()).await;
    let big = "a".repeat(100 * 1024);
    let r = http_raw(
        gate.listen,
        &format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    gate.wait_metric(5.0, REJECTIONS, &[("reason", "header_too_large")], |v| {
        v == 1.0
    })
    .await;

    let mut s = TcpStream::connect(gate.listen).await.unwrap();
    s.write_all(b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut s, 5.0).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    gate.wait_metric(5.0, REJECTIONS, &[("reason", "malformed")], |v| v == 1.0)
        .await;
    assert!(gate
        .log_text()
        .lines()
        .any(|l| l.contains("listener rejected a connection") && l.contains("malformed")));
}

#[tokio::test]
async fn max_header_bytes_sets_the_limit() {
    let head = |n: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(n)
        )
    };
    // 20 KiB of headers pass the default 64 KiB (the route's dead backend answers 502)...
    let default = Wsgate::start(&Route::new("r").backend("127.0.0.1:9").yaml()).await;
    let r = http_raw(default.listen, &head(20 * 1024)).await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    // ...and are refused under --max-header-bytes 16384.
    let small = Wsgate::start_with(
        args(&["--max-header-bytes", "16384"]),
        &Route::new("r").backend("127.0.0.1:9").yaml(),
    )
    .await;
    let r = http_raw(small.listen, &head(20 * 1024)).await.unwrap();
    assert_eq!(r.status, 431, "{r:?}");
}

#[tokio::test]
async fn a_failed_tls_handshake_is_counted() {
    let gate = Wsgate::start_with(
        Options {
            tls: true,
            ..Default::default()
        },
        &Route::new("r").backend("127.0.0.1:9").yaml(),
    )
    .await;
    let tls = gate.tls.expect("TLS listener");
    // Plain HTTP on the TLS port: not a ClientHello.
    let mut s = TcpStream::connect(tls).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = within(5.0, "the TLS listener to close", async {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
    })
    .await;
    gate.wait_metric(5.0, REJECTIONS, &[("reason", "tls_handshake")], |v| {
        v == 1.0
    })
    .await;
    let m = gate.metrics().await;
    assert_eq!(m.get(REJECTIONS, &[("reason", "malformed")]), 0.0);
}

#[tokio::test]
async fn bad_limits_are_refused_at_start() {
    for (flag, value) in [
        ("--max-header-bytes", "100"),
        ("--header-read-timeout", "0s"),
    ] {
        let out = std::process::Command::new(WSGATE)
            .args(["serve", "--config", "/dev/null", flag, value])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(err.contains(flag), "the error names {flag}: {err}");
    }
}

/// The listen queue the kernel keeps for a listening port (`ss`'s Send-Q).
fn listen_queue(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("run ss (iproute2; tests/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener on :{port}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_listen_queue_has_room_for_a_reconnect_storm() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let backend = EchoBackend::start("echo").await;
    let route = Route::new("echo").backend(backend.addr).yaml();
    // The listeners had a queue of 128, which a storm of 8,000 reconnects
    // overflowed 1,131 times; the default is 4096 (the kernel caps it at somaxconn).
    let gate = Wsgate::start_with(
        Options {
            tls: true,
            ..Default::default()
        },
        &route,
    )
    .await;
    assert_eq!(listen_queue(gate.listen.port()), 4096.min(somaxconn));
    assert_eq!(listen_queue(gate.tls.unwrap().port()), 4096.min(somaxconn));
    let opts = Options {
        args: vec!["--listen-backlog".into(), "100".into()],
        ..Default::default()
    };
    let gate = Wsgate::start_with(opts, &route).await;
    assert_eq!(listen_queue(gate.listen.port()), 100);
}
