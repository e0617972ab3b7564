//! Messages through wsgate with the clients users actually run: Node `ws`, Python
//! `websockets`, wscat, websocat and tokio-tungstenite.

mod common;

use common::*;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn node_ws_text_and_binary_echo() {
    let (mut backend, addr) = node_backend("node-echo", &[]).await;
    let gate = Wsgate::start(&Route::new("echo").backend(addr).yaml()).await;

    let mut client = node_client(&gate.url("/chat"), &[]);
    client.expect("open", 10.0).await;
    client.send(text("hello through wsgate")).await;
    let m = client.expect("message", 5.0).await;
    assert_eq!(m["binary"], false);
    assert_eq!(m["data"], "hello through wsgate");

    client.send(binary(&[0, 1, 2, 254, 255])).await;
    let m = client.expect("message", 5.0).await;
    assert_eq!(
        m["binary"], true,
        "a binary message must come back binary: {m}"
    );
    assert_eq!(m["b64"], "AAEC/v8=");

    // The backend got the same two messages, with their types.
    let conn = backend.expect("connection", 5.0).await;
    assert_eq!(conn["url"], "/chat");
    let first = backend.expect("message", 5.0).await;
    assert_eq!(
        (first["binary"].clone(), first["data"].clone()),
        (false.into(), "hello through wsgate".into())
    );
    let second = backend.expect("message", 5.0).await;
    assert_eq!(
        (second["binary"].clone(), second["b64"].clone()),
        (true.into(), "AAEC/v8=".into())
    );
}

#[tokio::test]
async fn python_websockets_text_and_binary_echo() {
    let (mut backend, addr) = python_backend("py-echo", &[]).await;
    let gate = Wsgate::start(&Route::new("echo").backend(addr).yaml()).await;

    let mut client = python_client(&gate.url("/py"), &["--no-compression"]);
    client.expect("open", 10.0).await;
    client.send(text("héllo from websockets ✓")).await;
    let m = client.expect("message", 5.0).await;
    assert_eq!(m["data"], "héllo from websockets ✓");
    client.send(binary(b"\x00\xffbinary")).await;
    let m = client.expect("message", 5.0).await;
    assert_eq!(m["binary"], true);
    assert_eq!(m["len"], 8);

    let conn = backend.expect("connection", 5.0).await;
    assert_eq!(conn["path"], "/py");
    client
        .send(serde_json::json!({"op": "close", "code": 1000, "reason": "done"}))
        .await;
    let closed = backend.expect("close", 5.0).await;
    assert_eq!(closed["code"], 1000);
    let closed = client.expect("close", 5.0).await;
    assert_eq!(closed["code"], 1000);
}

#[tokio::test]
async fn wscat_echo() {
    let (_backend, addr) = node_backend("wscat-echo", &[]).await;
    let gate = Wsgate::start(&Route::new("echo").backend(addr).yaml()).await;

    // `wscat -x` sends each message once connected, prints what arrives, and
    // closes after `-w` seconds.
    let out = run_wscat(
        &[
            "-c",
            &gate.url("/wscat"),
            "-x",
            "first from wscat",
            "-x",
            "second",
            "-w",
            "1",
        ],
        15.0,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["first from wscat", "second"],
        "wscat output; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn websocat_text_and_binary_echo() {
    let backend = EchoBackend::start("websocat-echo").await;
    let gate = Wsgate::start(&Route::new("echo").backend(backend.addr).yaml()).await;

    // Text: one line of stdin is one text message.
    let mut child = tokio::process::Command::new(websocat())
        .arg(gate.url("/websocat"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn websocat");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(b"hello from websocat\n").await.unwrap();
    let mut line = String::new();
    within(
        10.0,
        "websocat's echo",
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line),
    )
    .await
    .unwrap();
    assert_eq!(line, "hello from websocat\n");
    drop(stdin);
    within(10.0, "websocat to exit", child.wait())
        .await
        .unwrap();

    // Binary (-b): stdin chunks become binary messages, replies are written raw.
    let mut child = tokio::process::Command::new(websocat())
        .args(["-b", &gate.url("/websocat-bin")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn websocat -b");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let payload = [0u8, 159, 146, 150, 255, 10, 13, 0];
    stdin.write_all(&payload).await.unwrap();
    let mut got = [0u8; 8];
    within(10.0, "websocat -b's echo", stdout.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, payload);
    drop(stdin);
    within(10.0, "websocat to exit", child.wait())
        .await
        .unwrap();
    assert_eq!(backend.accepted(), 2);
}

/// Deterministic bytes that do not compress to nothing.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn sixteen_mib_message_streams_through_in_bounded_memory() {
    let backend = EchoBackend::start("big").await;
    let gate = Wsgate::start(
        &Route::new("big")
            .backend(backend.addr)
            .no_keepalive()
            .yaml(),
    )
    .await;

    let mut ws = ws_connect(&gate.url("/big")).await;
    // Warm up the relay so one-time allocations are not counted.
    assert_eq!(ws_roundtrip(&mut ws, "warm-up", 5.0).await, "warm-up");

    let message = pattern(16 << 20);
    let want = Sha1::digest(&message);
    gate.reset_peak_rss();
    let rss_before = gate.proc_status_kib("VmRSS");

    // One 16 MiB frame each way: a relay that buffered whole messages would hold
    // at least 16 MiB (twice, counting the echo).
    let echoed = within(60.0, "the 16 MiB echo", async {
        ws.send(Message::binary(message))
            .await
            .expect("send 16 MiB");
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return b,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected the echo, got {other:?}"),
            }
        }
    })
    .await;
    let peak = gate.proc_status_kib("VmHWM");
    assert_eq!(echoed.len(), 16 << 20);
    assert_eq!(Sha1::digest(&echoed), want, "the echoed message differs");

    let growth_kib = peak.saturating_sub(rss_before);
    eprintln!("wsgate RSS {rss_before} KiB before, peak {peak} KiB while relaying 16 MiB each way");
    assert!(
        growth_kib < 8 * 1024,
        "wsgate's peak RSS grew by {growth_kib} KiB while relaying 16 MiB each way \
         (from {rss_before} KiB to {peak} KiB); a streaming relay needs far less than 8 MiB"
    );
}

/// Opens `n` tunnels, 64 handshakes at a time, each echoing one message.
async fn open_wave(url: &str, n: usize) -> Vec<WsClient> {
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            let mut ws = ws_connect(url).await;
            assert_eq!(
                ws_roundtrip(&mut ws, &format!("t{i}"), 10.0).await,
                format!("t{i}")
            );
            ws
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// A reconnect storm's worth of tunnels opened at once, then all closed: wsgate's
/// RSS comes back near where it was. glibc keeps what the tunnels freed until
/// wsgate hands it back after the wave of closes (`src/proxy/trim.rs`); without
/// that, 8,000 tunnels left 19 MiB behind in the benchmark.
#[tokio::test]
async fn rss_comes_back_near_its_baseline_after_a_wave_of_tunnels_closes() {
    const N: usize = 3000;
    let backend = EchoBackend::start("wave").await;
    let gate = Wsgate::start(
        &Route::new("wave")
            .backend(backend.addr)
            .no_keepalive()
            .yaml(),
    )
    .await;
    let url = gate.url("/wave");
    // One-time allocations first: a small wave, below what triggers a trim.
    for mut ws in open_wave(&url, 64).await {
        ws.close(None).await.expect("close");
    }
    gate.wait_metric(10.0, "wsgate_connections_active", &[], |v| v == 0.0)
        .await;
    pause(2.5).await;
    let base = gate.proc_status_kib("VmRSS");

    let wave = open_wave(&url, N).await;
    let full = gate.proc_status_kib("VmRSS");
    futures_util::stream::iter(wave)
        .for_each_concurrent(256, |mut ws| async move {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    gate.wait_metric(20.0, "wsgate_connections_active", &[], |v| v == 0.0)
        .await;
    let closed = Instant::now();
    let grew = full.saturating_sub(base);
    let near = base + grew / 4;
    let mut after = gate.proc_status_kib("VmRSS");
    while after > near && closed.elapsed() < Duration::from_secs(8) {
        pause(0.25).await;
        after = gate.proc_status_kib("VmRSS");
    }
    eprintln!(
        "wsgate RSS {base} KiB before {N} tunnels, {full} KiB with them open (+{:.2} KiB each), \
         {after} KiB {:.1} s after the last closed (+{} KiB left)",
        grew as f64 / N as f64,
        closed.elapsed().as_secs_f64(),
        after.saturating_sub(base),
    );
    assert!(
        grew > 2048,
        "{N} tunnels grew RSS by only {grew} KiB: the wave did not happen"
    );
    assert!(
        after <= near,
        "wsgate's RSS stayed at {after} KiB after {N} tunnels closed: {} of the {grew} KiB \
         they took was not given back (started at {base} KiB)",
        after.saturating_sub(base)
    );
}

#[tokio::test]
async fn a_backend_that_stops_reading_pushes_back_on_the_client_instead_of_filling_memory() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let backend = RawBackend::bind().await;
    let gate = Wsgate::start(
        &Route::new("slow")
            .backend(backend.addr)
            .no_keepalive()
            .yaml(),
    )
    .await;
    let (up, server) = tokio::join!(raw_upgrade(gate.listen, "/slow", &[]), async {
        backend.accept(10.0).await.accept().await
    });
    assert_eq!(up.response.status, 101);
    let (mut client, mut server) = (up.ws, server);
    gate.reset_peak_rss();
    let rss_before = gate.proc_status_kib("VmRSS");

    // 32 frames of 1 MiB toward a backend that reads nothing for now.
    let frame = Frame::binary(pattern(1 << 20))
        .masked([0x11, 0x22, 0x33, 0x44])
        .encode();
    let total = frame.len() * 32;
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..32 {
            for chunk in frame.chunks(64 * 1024) {
                client.send_bytes(chunk).await;
                counter.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        }
        client
    });
    pause(2.0).await;
    let stalled_at = written.load(Ordering::Relaxed);
    let peak = gate.proc_status_kib("VmHWM");
    eprintln!("client stalled after {stalled_at} of {total} bytes; wsgate RSS {rss_before} -> peak {peak} KiB");
    assert!(
        stalled_at < total,
        "the client wrote all {total} bytes into a backend that reads nothing: wsgate buffered them"
    );
    let growth_kib = peak.saturating_sub(rss_before);
    assert!(
        growth_kib < 8 * 1024,
        "wsgate's peak RSS grew by {growth_kib} KiB holding back a stalled backend"
    );

    // Once the backend reads, everything arrives.
    let got = server.read_bytes(total, 30.0).await;
    assert_eq!(got.len(), total);
    within(10.0, "the writer to finish", writer).await.unwrap();
}
