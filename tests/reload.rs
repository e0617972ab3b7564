//! Route files are watched and re-applied: open tunnels survive changes, a broken
//! change is refused while the old table keeps serving, and tunnels of a removed
//! route or backend are closed with 1001 only after the grace period.

mod common;

use std::time::Instant;

use common::*;

fn dir_mode() -> Options {
    Options {
        config_dir: true,
        ..Options::default()
    }
}

#[tokio::test]
async fn two_hundred_open_tunnels_survive_configuration_changes() {
    let a = EchoBackend::start("A").await;
    let b = EchoBackend::start("B").await;
    let echo = Route::new("echo")
        .backend(a.addr)
        .set("drain", "{gracePeriod: 1s}");
    let gate = Wsgate::start_with(dir_mode(), &routes_yaml(std::slice::from_ref(&echo))).await;

    let mut tunnels = Vec::with_capacity(200);
    for i in 0..200 {
        let mut ws = ws_connect(&gate.url(&format!("/t/{i}"))).await;
        assert_eq!(
            ws_roundtrip(&mut ws, &format!("open {i}"), 5.0).await,
            format!("open {i}")
        );
        tunnels.push(ws);
    }
    let echo_labels = [("namespace", "default"), ("route", "echo")];
    assert_eq!(
        gate.metrics()
            .await
            .get("wsgate_connections_active", &echo_labels),
        200.0
    );

    // A new route next to the old one.
    let other = Route::new("other").prefix("/other").backend(b.addr);
    gate.reload(&routes_yaml(&[echo.clone(), other.clone()]), "success")
        .await;
    // The tunnels' own route changes (another backend, other timeouts and
    // keepalive) while their backend stays.
    let echo2 = echo
        .clone()
        .backend(b.addr)
        .set("timeouts", "{connect: 3s, handshake: 5s}")
        .set("keepalive", "{interval: 20s, timeout: 5s}");
    gate.reload(&routes_yaml(&[echo2, other]), "success").await;

    // Past the grace period a wrongly drained tunnel would be closed by now.
    pause(1.5).await;
    for (i, ws) in tunnels.iter_mut().enumerate() {
        let msg = format!("after reload {i}");
        assert_eq!(
            ws_roundtrip(ws, &msg, 5.0).await,
            msg,
            "tunnel {i} after the changes"
        );
    }
    assert!(
        a.closes().is_empty(),
        "backend A saw tunnels close: {:?}",
        a.closes()
    );
    assert_eq!(a.open(), 200);
    let m = gate.metrics().await;
    assert_eq!(m.get("wsgate_connections_active", &echo_labels), 200.0);
    assert_eq!(
        m.get("wsgate_closes_total", &echo_labels),
        0.0,
        "{}",
        m.text
    );
    assert_eq!(m.get("wsgate_routes", &[]), 2.0);

    // The new route serves.
    let mut ws = ws_connect(&gate.url("/other")).await;
    assert_eq!(ws_roundtrip(&mut ws, "__name__", 5.0).await, "B");
}

/// The 1-based line of `content` holding `needle`.
fn line_of(content: &str, needle: &str) -> usize {
    content
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle in content")
        + 1
}

#[tokio::test]
async fn broken_route_file_is_refused_and_the_old_routes_keep_serving() {
    let a = EchoBackend::start("A").await;
    let good = routes_yaml(&[Route::new("echo").backend(a.addr)]);
    let gate = Wsgate::start_with(dir_mode(), &good).await;
    let routes_file = gate.routes_dir.join("routes.yaml");
    let (code, out) = wsgate_cmd(&["check", "--config", routes_file.to_str().unwrap()]);
    assert_eq!(code, 0, "`wsgate check` on a valid file: {out}");

    let mut ws = ws_connect(&gate.url("/chat")).await;
    assert_eq!(ws_roundtrip(&mut ws, "before", 5.0).await, "before");

    // A backend address that is not host:port.
    let broken = routes_yaml(&[
        Route::new("echo").backend(a.addr),
        Route::new("typo").prefix("/typo").backend("not-an-address"),
    ]);
    gate.reload(&broken, "error").await;

    // The old table still serves: the open tunnel, new tunnels, readiness.
    assert_eq!(ws_roundtrip(&mut ws, "after", 5.0).await, "after");
    let mut ws2 = ws_connect(&gate.url("/chat")).await;
    assert_eq!(ws_roundtrip(&mut ws2, "new", 5.0).await, "new");
    assert_eq!(http_get(gate.admin, "/readyz").await.unwrap().status, 200);
    let m = gate.metrics().await;
    assert_eq!(
        m.get("wsgate_routes", &[]),
        1.0,
        "the broken file must not be applied in part"
    );
    assert_eq!(
        m.get("wsgate_config_reloads_total", &[("result", "error")]),
        1.0
    );

    // `wsgate check` names the file, line and field.
    let (code, out) = wsgate_cmd(&["check", "--config", routes_file.to_str().unwrap()]);
    assert_eq!(
        code, 1,
        "`wsgate check` on a broken file must exit 1: {out}"
    );
    let want = format!(
        "routes.yaml:{}: spec.backends[0].address: ",
        line_of(&broken, "not-an-address")
    );
    assert!(
        out.lines().any(|l| l.contains(&want)),
        "`wsgate check` should print a line containing {want:?}; it printed:\n{out}"
    );

    // Fixing the file applies it.
    let fixed = routes_yaml(&[
        Route::new("echo").backend(a.addr),
        Route::new("typo").prefix("/typo").backend(a.addr),
    ]);
    gate.reload(&fixed, "success").await;
    let mut ws3 = ws_connect(&gate.url("/typo")).await;
    assert_eq!(ws_roundtrip(&mut ws3, "fixed", 5.0).await, "fixed");
    assert_eq!(ws_roundtrip(&mut ws, "still", 5.0).await, "still");
}

#[tokio::test]
async fn removed_route_drains_with_1001_after_its_grace_period() {
    let a = EchoBackend::start("A").await;
    let keep = Route::new("keep")
        .prefix("/keep")
        .backend(a.addr)
        .no_keepalive();
    let gone = Route::new("gone")
        .prefix("/gone")
        .backend(a.addr)
        .no_keepalive()
        .set("drain", "{gracePeriod: 2s}");
    let gate = Wsgate::start_with(dir_mode(), &routes_yaml(&[keep.clone(), gone])).await;

    let mut kept = ws_connect(&gate.url("/keep")).await;
    let mut doomed = ws_connect(&gate.url("/gone")).await;
    assert_eq!(ws_roundtrip(&mut doomed, "hi", 5.0).await, "hi");

    let removed_at = Instant::now();
    gate.reload(&routes_yaml(&[keep]), "success").await;

    // No new tunnels on the removed route...
    let r = raw_upgrade(gate.listen, "/gone", &[]).await;
    assert_eq!(r.response.status, 404);
    // ...but the open one lives through the grace period.
    pause(1.2 - removed_at.elapsed().as_secs_f64().min(1.2)).await;
    assert_eq!(
        ws_roundtrip(&mut doomed, "still within grace", 2.0).await,
        "still within grace",
        "closed before its 2s grace period"
    );

    let close = ws_expect_close(&mut doomed, 6.0).await;
    let at = removed_at.elapsed().as_secs_f64();
    assert_eq!(
        close.map(|c| c.0),
        Some(1001),
        "the drained tunnel gets Close 1001"
    );
    assert!(
        (1.8..=4.5).contains(&at),
        "drained {at:.2}s after the route was removed (grace 2s)"
    );
    eventually(3.0, "the backend to see Close 1001", || async {
        a.closes()
            .iter()
            .any(|(_, c)| c.as_ref().map(|c| c.0) == Some(1001))
            .then_some(())
    })
    .await;

    assert_eq!(ws_roundtrip(&mut kept, "untouched", 5.0).await, "untouched");
}

#[tokio::test]
async fn removed_backend_drains_only_its_own_tunnels() {
    let a = EchoBackend::start("A").await;
    let b = EchoBackend::start("B").await;
    let pool = |backends: &[&EchoBackend]| {
        let mut r = Route::new("pool")
            .no_keepalive()
            .set("loadBalancing", "{policy: RoundRobin}")
            .set("drain", "{gracePeriod: 1s}");
        for be in backends {
            r = r.backend(be.addr);
        }
        routes_yaml(&[r])
    };
    let gate = Wsgate::start_with(dir_mode(), &pool(&[&a, &b])).await;

    let mut on_a = vec![];
    let mut on_b = vec![];
    for _ in 0..6 {
        let mut ws = ws_connect(&gate.url("/pool")).await;
        match ws_roundtrip(&mut ws, "__name__", 5.0).await.as_str() {
            "A" => on_a.push(ws),
            "B" => on_b.push(ws),
            other => panic!("unknown backend {other}"),
        }
    }
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "RoundRobin used one backend only"
    );

    let removed_at = Instant::now();
    gate.reload(&pool(&[&a]), "success").await;
    for ws in on_b.iter_mut() {
        let close = ws_expect_close(ws, 5.0).await;
        assert_eq!(close.map(|c| c.0), Some(1001));
    }
    let at = removed_at.elapsed().as_secs_f64();
    assert!(
        (0.8..=3.5).contains(&at),
        "drained {at:.2}s after the backend was removed (grace 1s)"
    );
    for ws in on_a.iter_mut() {
        assert_eq!(ws_roundtrip(ws, "__name__", 5.0).await, "A");
    }
    // New tunnels go to the remaining backend only.
    for _ in 0..4 {
        let mut ws = ws_connect(&gate.url("/pool")).await;
        assert_eq!(ws_roundtrip(&mut ws, "__name__", 5.0).await, "A");
    }
}

/// The name of the echo backend that serves an upgrade of `path`, if one does.
async fn served_by(gate: &Wsgate, path: &str) -> Option<String> {
    let mut up = raw_upgrade(gate.listen, path, &[]).await;
    if up.response.status != 101 {
        return None;
    }
    up.ws
        .send(&Frame::text("__name__").masked([7, 7, 7, 7]))
        .await;
    String::from_utf8(up.ws.recv_data(5.0).await.payload).ok()
}

#[tokio::test]
async fn route_files_added_to_or_removed_from_the_directory_are_applied() {
    let a = EchoBackend::start("A").await;
    let b = EchoBackend::start("B").await;
    let gate = Wsgate::start_with(dir_mode(), &Route::new("main").backend(a.addr).yaml()).await;
    let mut main = ws_connect(&gate.url("/")).await;

    gate.write_routes(
        "extra.yaml",
        &Route::new("extra").prefix("/extra").backend(b.addr).yaml(),
    );
    // "/" still matches everything: the longer prefix must take over.
    eventually(10.0, "the new file's route to serve", || async {
        (served_by(&gate, "/extra").await.as_deref() == Some("B")).then_some(())
    })
    .await;
    let mut extra = ws_connect(&gate.url("/extra")).await;
    assert_eq!(ws_roundtrip(&mut extra, "__name__", 5.0).await, "B");

    std::fs::remove_file(gate.routes_dir.join("extra.yaml")).unwrap();
    eventually(10.0, "the removed file's route to stop serving", || async {
        (served_by(&gate, "/extra").await.as_deref() == Some("A")).then_some(())
    })
    .await;
    assert_eq!(ws_roundtrip(&mut main, "__name__", 5.0).await, "A");
}

#[tokio::test]
async fn a_single_route_file_edited_in_place_is_reapplied() {
    let a = EchoBackend::start("A").await;
    let b = EchoBackend::start("B").await;
    // --config names the file itself; the edit truncates and rewrites it in place.
    let gate = Wsgate::start(&routes_yaml(&[Route::new("main").backend(a.addr)])).await;
    let mut main = ws_connect(&gate.url("/")).await;

    let file = gate.routes_dir.join("routes.yaml");
    std::fs::write(
        &file,
        routes_yaml(&[
            Route::new("main").backend(a.addr),
            Route::new("new").prefix("/new").backend(b.addr),
        ]),
    )
    .unwrap();
    eventually(10.0, "the edited file's new route to serve", || async {
        (served_by(&gate, "/new").await.as_deref() == Some("B")).then_some(())
    })
    .await;
    assert_eq!(ws_roundtrip(&mut main, "__name__", 5.0).await, "A");
    assert_eq!(gate.metrics().await.get("wsgate_routes", &[]), 2.0);
}
