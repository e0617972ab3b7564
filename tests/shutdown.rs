//! SIGTERM: wsgate stops being ready, stops accepting, closes every tunnel with
//! 1001 spread over --drain-timeout (no reconnect storm), and exits 0.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn sigterm_drains_every_tunnel_with_1001_spread_over_the_drain_timeout() {
    let backend = EchoBackend::start("A").await;
    let opts = Options {
        drain_timeout: Some("2s".into()),
        ..Options::default()
    };
    let mut gate = Wsgate::start_with(opts, &Route::new("echo").backend(backend.addr).yaml()).await;

    let mut tasks = vec![];
    for i in 0..10 {
        let mut ws = ws_connect(&gate.url(&format!("/t/{i}"))).await;
        assert_eq!(ws_roundtrip(&mut ws, "hi", 5.0).await, "hi");
        tasks.push(tokio::spawn(async move {
            let close = ws_expect_close(&mut ws, 8.0).await;
            (Instant::now(), close)
        }));
    }

    let term = Instant::now();
    gate.sigterm();

    // Not ready any more (load balancers stop sending), while still draining.
    eventually(1.5, "/readyz to turn 503", || async {
        match http_get(gate.admin, "/readyz").await {
            Ok(r) if r.status == 503 => Some(()),
            _ => None,
        }
    })
    .await;
    // New tunnels are refused: the listener is closed or no longer upgrades.
    eventually(1.5, "the listener to stop accepting", || async {
        let late = tokio::time::timeout(
            Duration::from_millis(500),
            tokio_tungstenite::connect_async(gate.url("/late")),
        )
        .await;
        match late {
            Ok(Ok(_)) => None, // still upgrading
            _ => Some(()),
        }
    })
    .await;

    let mut closes = vec![];
    for t in tasks {
        closes.push(within(8.0, "a tunnel's Close", t).await.unwrap());
    }
    for (_, close) in &closes {
        assert_eq!(
            close.as_ref().map(|c| c.0),
            Some(1001),
            "every tunnel gets Close 1001"
        );
    }
    let offsets: Vec<f64> = closes
        .iter()
        .map(|(at, _)| (*at - term).as_secs_f64())
        .collect();
    eprintln!("tunnels closed at {offsets:.2?} s after SIGTERM");
    let first = offsets.iter().cloned().fold(f64::MAX, f64::min);
    let last = offsets.iter().cloned().fold(0.0, f64::max);
    assert!(
        last <= 3.5,
        "the last tunnel closed {last:.2}s after SIGTERM (drain timeout 2s)"
    );
    assert!(
        last - first >= 0.6,
        "10 tunnels closed within {:.2}s of each other: not spread over the 2s drain timeout \
         (offsets {offsets:.2?})",
        last - first
    );

    let status = gate.wait_exit(5.0).await;
    assert_eq!(status.code(), Some(0), "wsgate exits 0 after draining");
    eventually(3.0, "the backend to see ten Close 1001", || async {
        let closes = backend.closes();
        (closes.len() == 10).then_some(closes)
    })
    .await
    .iter()
    .for_each(|(_, c)| {
        assert_eq!(
            c.as_ref().map(|c| c.0),
            Some(1001),
            "the backend side gets 1001 too"
        )
    });
}
