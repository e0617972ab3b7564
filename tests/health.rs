//! Passive backend health: a black-holed backend (SYNs vanish, as when a pod's
//! node died before its endpoint was removed) costs the first upgrade one connect
//! timeout; later upgrades and plain HTTP requests skip it for `failTimeout`, then
//! it is tried again.
//!
//! The test runs in a network namespace of its own (the test binary re-runs
//! itself under `unshare -n`): a veth pair carries 192.0.2.0/24 and a permanent
//! neighbour entry for 192.0.2.99 whose MAC no interface owns, so SYNs to it are
//! sent and dropped by the peer end. Nothing leaves the machine.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const DEAD: &str = "192.0.2.99:80";
const IN_NETNS: &str = "WSGATE_TEST_IN_NETNS";

/// Re-runs the named test of this binary inside a fresh network namespace;
/// returns false when already inside one (the caller then runs the test body).
fn rerun_in_netns(test: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new("unshare");
    // As root a network namespace needs no user namespace.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        cmd.args(["--user", "--map-root-user"]);
    }
    let status = cmd
        .args(["--net", "--"])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .status()
        .expect("run unshare (util-linux); the test needs a network namespace");
    assert!(
        status.success(),
        "{test} failed inside its network namespace"
    );
    true
}

fn ip(args: &str) {
    let ok = Command::new("ip")
        .args(args.split(' '))
        .status()
        .unwrap_or_else(|e| panic!("ip {args}: {e} (iproute2 is required)"));
    assert!(ok.success(), "ip {args} failed");
}

/// Loopback up, and 192.0.2.99 a black hole.
fn black_hole() {
    ip("link set lo up");
    ip("link add wsg0 type veth peer name wsg1");
    ip("link set wsg0 up");
    ip("link set wsg1 up");
    ip("addr add 192.0.2.1/24 dev wsg0");
    ip("neigh replace 192.0.2.99 lladdr 02:00:00:00:00:99 dev wsg0 nud permanent");
}

async fn backends(gate: &Wsgate) -> Value {
    let r = http_get(gate.admin, "/backends")
        .await
        .expect("GET /backends");
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).expect("/backends is JSON")
}

fn dead_entry(view: &Value) -> Value {
    view[0]["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .find(|b| b["address"] == DEAD)
        .cloned()
        .expect("the dead backend is listed")
}

/// Opens a tunnel and proves it reaches the live backend; returns how long the
/// handshake took.
async fn timed_upgrade(gate: &Wsgate) -> Duration {
    let start = Instant::now();
    let mut ws = ws_connect(&gate.url("/")).await;
    let took = start.elapsed();
    assert_eq!(ws_roundtrip(&mut ws, "__name__", 5.0).await, "live");
    took
}

#[test]
fn a_black_holed_backend_is_skipped_after_one_connect_timeout() {
    if rerun_in_netns("a_black_holed_backend_is_skipped_after_one_connect_timeout") {
        return;
    }
    black_hole();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let live = EchoBackend::start("live").await;
        let route = Route::new("r")
            .backend(DEAD)
            .backend(live.addr)
            .no_keepalive()
            .set("timeouts", "{connect: 1s}")
            .set("passiveHealth", "{maxFails: 1, failTimeout: 4s}");
        let gate = Wsgate::start(&route.yaml()).await;

        // Round robin sends one of the first two upgrades to the dead backend:
        // it waits the connect timeout, then fails over to the live one.
        let first: Vec<Duration> = vec![timed_upgrade(&gate).await, timed_upgrade(&gate).await];
        let slow = first
            .iter()
            .filter(|d| **d >= Duration::from_millis(900))
            .count();
        assert_eq!(
            slow, 1,
            "one upgrade waits the 1s connect timeout: {first:?}"
        );
        gate.wait_metric(
            5.0,
            "wsgate_backend_ejections_total",
            &[("namespace", "default"), ("route", "r")],
            |v| v == 1.0,
        )
        .await;
        let view = backends(&gate).await;
        let dead = dead_entry(&view);
        assert_eq!(dead["ejected"], true, "{view}");
        assert_eq!(dead["consecutive_failures"], 1);
        assert!(dead["ejected_until"].is_string());
        assert_eq!(view[0]["max_fails"], 1);

        // While ejected: every upgrade goes straight to the live backend.
        let start = Instant::now();
        for _ in 0..6 {
            let took = timed_upgrade(&gate).await;
            assert!(
                took < Duration::from_millis(500),
                "an upgrade waited {took:?}"
            );
        }
        // Plain HTTP skips it too (the HTTP client's own connect timeout is 5 s).
        let t = Instant::now();
        let _ = within(3.0, "a plain HTTP request", http_get(gate.listen, "/")).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "HTTP waited {:?}",
            t.elapsed()
        );
        assert_eq!(
            gate.metrics()
                .await
                .get("wsgate_backend_ejections_total", &[("route", "r")]),
            1.0
        );

        // After failTimeout the dead backend is tried again (and ejected again).
        let rest = Duration::from_millis(4300).saturating_sub(start.elapsed());
        tokio::time::sleep(rest).await;
        assert_eq!(dead_entry(&backends(&gate).await)["ejected"], false);
        let again: Vec<Duration> = vec![timed_upgrade(&gate).await, timed_upgrade(&gate).await];
        assert!(
            again.iter().any(|d| *d >= Duration::from_millis(900)),
            "after failTimeout one upgrade tries the dead backend again: {again:?}"
        );
        gate.wait_metric(
            5.0,
            "wsgate_backend_ejections_total",
            &[("namespace", "default"), ("route", "r")],
            |v| v == 2.0,
        )
        .await;
    });
}

#[tokio::test]
async fn refused_connects_eject_too_and_max_fails_zero_turns_it_off() {
    // A closed loopback port refuses at once: with passive health the second
    // backend still takes every upgrade, and /backends shows why.
    let live = EchoBackend::start("live").await;
    let closed = format!("127.0.0.1:{}", free_port());
    let route = |health: &str| {
        Route::new("r")
            .backend(&closed)
            .backend(live.addr)
            .no_keepalive()
            .set("passiveHealth", health)
            .yaml()
    };
    let gate = Wsgate::start(&route("{maxFails: 2, failTimeout: 1m}")).await;
    for _ in 0..6 {
        timed_upgrade(&gate).await;
    }
    let m = gate.metrics().await;
    let labels = [("namespace", "default"), ("route", "r")];
    assert_eq!(m.get("wsgate_backend_ejections_total", &labels), 1.0);
    let view = backends(&gate).await;
    let entry = view[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == closed.as_str())
        .cloned()
        .unwrap();
    assert_eq!(entry["consecutive_failures"], 2, "{view}");
    assert_eq!(entry["ejected"], true);
    let live_entry = view[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == live.addr.to_string())
        .cloned()
        .unwrap();
    assert_eq!(live_entry["consecutive_failures"], 0);

    let off = Wsgate::start(&route("{maxFails: 0}")).await;
    for _ in 0..4 {
        timed_upgrade(&off).await;
    }
    let m = off.metrics().await;
    assert_eq!(m.get("wsgate_backend_ejections_total", &labels), 0.0);
    assert_eq!(
        dead_or(&backends(&off).await, &closed)["ejected"],
        false,
        "maxFails 0 never ejects"
    );
}

fn dead_or(view: &Value, address: &str) -> Value {
    view[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == address)
        .cloned()
        .unwrap()
}
