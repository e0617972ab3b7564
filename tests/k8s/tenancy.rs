//! A shared cluster (issue 18): route authors are tenants. One tenant's object that
//! wsgate cannot read never stops another's routes; a tenant's route never reaches
//! wsgate itself, loopback or the API server; a hostname and its certificate belong
//! to the namespace that named it first; objects no route names never rebuild the
//! table.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::Backend;
use crate::client::{refused_eventually, tls_connect, upgrade_eventually};
use crate::cluster::Cluster;
use crate::endpoints::Pki;
use crate::gateway::Gateway;
use crate::objects::{
    condition, has, namespace, programmed, route, service, slice, tls_secret, wait_status,
    Endpoint::Ready, WSR,
};
use crate::{eventually, Env, Run};

const CRD: &str = "crd/websocketroutes.wsgate.io";

/// The two poison pills of the threat review: values the old CRD stored and no
/// wsgate could read.
fn pills() -> [(
    &'static str,
    &'static str,
    Value,
    &'static str,
    &'static str,
); 2] {
    [
        (
            "s15a",
            "port",
            json!({"hostnames": ["port.s15.test"], "backends": [{"service": {"name": "x", "port": 70000}}]}),
            "less than or equal to 65535",
            "spec.backends[0].service.port",
        ),
        (
            "s15b",
            "idle",
            json!({"hostnames": ["idle.s15.test"], "backends": [{"service": {"name": "x", "port": 80}}],
                "timeouts": {"idle": "100000h"}}),
            "at most 87600h",
            "spec.timeouts.idle",
        ),
    ]
}

/// Removes the rules that refuse the pills from a CRD (as an older wsgate's CRD
/// lacked them).
fn loosen(crd: &mut Value) {
    let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    if let Some(port) =
        spec["backends"]["items"]["properties"]["service"]["properties"]["port"].as_object_mut()
    {
        port.remove("maximum");
    }
    if let Some(idle) = spec["timeouts"]["properties"]["idle"].as_object_mut() {
        idle.remove("x-kubernetes-validations");
    }
}

async fn kubectl_json(c: &Cluster, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let out = c.kubectl(args, stdin).await?;
    if !out.ok {
        bail!("kubectl {} failed: {}", args.join(" "), out.stderr);
    }
    Ok(out.stdout)
}

/// Scenario 15. The poison pills are refused by `kubectl apply`; stored anyway (by
/// a CRD without the rules, as before this fix), they get `Accepted=False` naming
/// the field, a new replica becomes Ready, a valid route in a third namespace is
/// Programmed and served within 10 s, and no watch restarts.
pub fn poison_pills(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let c = &env.cluster;
        for (ns, name, spec, want, _) in pills() {
            c.apply(namespace(ns)).await?;
            let yaml = serde_json::to_string(&route(ns, name, spec))?;
            let out = c.kubectl(&["apply", "-f", "-"], Some(&yaml)).await?;
            ensure!(
                !out.ok && out.stderr.contains(want),
                "kubectl apply of {ns}/{name}: ok={} stderr={:?} (want a refusal saying {want:?})",
                out.ok,
                out.stderr
            );
            println!(
                "    kubectl apply {ns}/{name}: refused ({})",
                out.stderr.lines().last().unwrap_or("").trim()
            );
        }

        // Stored anyway, as objects admitted by an older CRD are.
        let original = kubectl_json(c, &["get", CRD, "-o", "json"], None).await?;
        let mut loose: Value = serde_json::from_str(&original)?;
        loosen(&mut loose);
        kubectl_json(
            c,
            &["replace", "-f", "-"],
            Some(&serde_json::to_string(&loose)?),
        )
        .await?;
        for (ns, name, spec, _, _) in pills() {
            let obj = route(ns, name, spec);
            eventually(10.0, "the loosened CRD to admit a pill", || async {
                c.apply(obj.clone()).await.ok()
            })
            .await?;
        }
        let mut restored: Value =
            serde_json::from_str(&kubectl_json(c, &["get", CRD, "-o", "json"], None).await?)?;
        let original: Value = serde_json::from_str(&original)?;
        restored["spec"] = original["spec"].clone();
        kubectl_json(
            c,
            &["replace", "-f", "-"],
            Some(&serde_json::to_string(&restored)?),
        )
        .await?;

        let ns = "s15c";
        let pod = Backend::start("s15c", "192.0.2.15").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "echo")).await?;
        c.apply(slice(ns, "echo-1", "echo", &[Ready(&pod)])).await?;
        let t0 = Instant::now();
        let spec = json!({"hostnames": ["ok.s15.test"], "backends": [{"service": {"name": "echo", "port": 80}}]});
        c.apply(route(ns, "ok", spec)).await?;
        let fresh = Gateway::start(c, "wsgate-pills", 3)
            .await
            .context("a new replica with the pills stored")?;
        let ready = t0.elapsed();
        let t = upgrade_eventually(fresh.listen, "ok.s15.test", "/", 10.0)
            .await
            .context("the valid route through the new replica")?;
        ensure!(t.backend == "s15c", "traffic reached {}", t.backend);
        wait_status(c, ns, "ok", 10.0, "programmed", programmed).await?;
        let served = t0.elapsed();
        ensure!(
            served < Duration::from_secs(10),
            "the valid route took {served:?} to be served and Programmed"
        );
        for (ns, name, _, _, field) in pills() {
            let r = wait_status(c, ns, name, 10.0, "Accepted=False", |r| {
                has(r, "Accepted", "False", Some("Invalid"))
            })
            .await?;
            let msg = condition(&r, "Accepted")
                .map(|c| c.message)
                .unwrap_or_default();
            ensure!(
                msg.contains(field),
                "{ns}/{name}: Accepted message {msg:?} does not name {field}"
            );
            println!("    {ns}/{name}: Accepted=False Invalid: {msg}");
        }
        let before = (restarts(&env.gw).await?, restarts(&fresh).await?);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = (restarts(&env.gw).await?, restarts(&fresh).await?);
        ensure!(
            before == after && after.1 == 0.0,
            "wsgate_controller_watch_restarts_total moved: {before:?} → {after:?}"
        );
        println!(
            "    new replica Ready after {:.1}s, ok.s15.test served and Programmed after {:.1}s; watch restarts {after:?}",
            ready.as_secs_f64(),
            served.as_secs_f64()
        );
        drop(fresh);
        for (ns, name, _, _, _) in pills() {
            c.delete(WSR, "WebSocketRoute", Some(ns), name).await?;
        }
        Ok(())
    })
}

async fn restarts(gw: &Gateway) -> Result<f64> {
    Ok(gw
        .metric("wsgate_controller_watch_restarts_total", &[])
        .await?
        .unwrap_or(0.0))
}

/// A plain HTTP GET through wsgate's public listener: status and body.
async fn http_get(gw: std::net::SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    crate::within(5.0, "a plain HTTP GET through wsgate", async {
        let mut tcp = tokio::net::TcpStream::connect(gw).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status line")?;
        Ok((status, text))
    })
    .await?
}

/// Scenario 16. `address` backends to wsgate's admin port, to the API server by
/// name, to wsgate's own listener and outside `--allow-address-backends`: each
/// `Accepted=False` with reason `AddressNotAllowed`, and nothing is served through
/// the proxy (never wsgate's own /metrics).
pub fn address_backends(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, &env.gw);
        let ns = "s16";
        c.apply(namespace(ns)).await?;
        let api_port = c
            .apiserver_url()?
            .rsplit(':')
            .next()
            .context("API server port")?
            .trim_end_matches('/')
            .to_owned();
        let cases = [
            (
                "admin",
                format!("127.0.0.1:{}", gw.admin.port()),
                "loopback",
            ),
            ("apiserver", format!("localhost:{api_port}"), "loopback"),
            (
                "itself",
                format!("127.0.0.1:{}", gw.listen.port()),
                "loopback",
            ),
            (
                "outside",
                "198.51.100.7:443".to_owned(),
                "outside --allow-address-backends",
            ),
        ];
        for (name, address, _) in &cases {
            let host = format!("{name}.s16.test");
            c.apply(route(
                ns,
                name,
                json!({"hostnames": [host], "backends": [{"address": address}]}),
            ))
            .await?;
        }
        for (name, address, why) in &cases {
            let r = wait_status(c, ns, name, 20.0, "Accepted=False AddressNotAllowed", |r| {
                has(r, "Accepted", "False", Some("AddressNotAllowed"))
            })
            .await?;
            let msg = condition(&r, "Accepted")
                .map(|c| c.message)
                .unwrap_or_default();
            ensure!(
                msg.contains(why),
                "{name}: message {msg:?} does not say {why:?}"
            );
            let host = format!("{name}.s16.test");
            for path in ["/metrics", "/connections", "/"] {
                let (status, text) = http_get(gw.listen, &host, path).await?;
                ensure!(
                    status == 404 || status == 503,
                    "GET {path} with Host {host} answered {status}"
                );
                ensure!(
                    !text.contains("wsgate_"),
                    "GET {path} with Host {host} returned wsgate's metrics"
                );
            }
            refused_eventually(gw.listen, &host, "/", 404, 5.0).await?;
            println!("    address {address}: AddressNotAllowed ({msg}); GET /metrics through the proxy: 404");
        }
        Ok(())
    })
}

/// Scenario 17. Namespace b claims a sub-path of namespace a's hostname with its own
/// certificate: `HostnameConflict`; SNI for the hostname still presents a's
/// certificate and the sub-path reaches a's backend. A route without hostnames in
/// a namespace the operator did not name: `CatchAllNotAllowed`.
pub fn hostname_ownership(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, &env.gw);
        let host = "chat.s17.test";
        let pki = Pki::new()?;
        let ca = pki.ca_der();
        let pod_a = Backend::start("s17a", "192.0.2.17").await?;
        let pod_b = Backend::start("s17b", "192.0.2.18").await?;
        for (ns, pod) in [("s17a", &pod_a), ("s17b", &pod_b)] {
            c.apply(namespace(ns)).await?;
            c.apply(service(ns, "echo")).await?;
            c.apply(slice(ns, "echo-1", "echo", &[Ready(pod)])).await?;
        }
        let (crt_a, key_a, der_a) = pki.leaf(host)?;
        let (crt_b, key_b, _) = pki.leaf(host)?;
        c.apply(tls_secret("s17a", "chat-tls", &crt_a, &key_a))
            .await?;
        c.apply(tls_secret("s17b", "chat-tls", &crt_b, &key_b))
            .await?;
        let spec = |path: &str| {
            json!({"hostnames": [host], "path": {"type": "PathPrefix", "value": path},
                "backends": [{"service": {"name": "echo", "port": 80}}], "tls": {"secretName": "chat-tls"}})
        };
        c.apply(route("s17a", "site", spec("/"))).await?;
        wait_status(c, "s17a", "site", 20.0, "programmed", programmed).await?;
        // creationTimestamp has a resolution of one second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.apply(route("s17b", "login", spec("/x"))).await?;
        let r = wait_status(c, "s17b", "login", 20.0, "HostnameConflict", |r| {
            has(r, "Accepted", "False", Some("HostnameConflict"))
        })
        .await?;
        let msg = condition(&r, "Accepted")
            .map(|c| c.message)
            .unwrap_or_default();
        ensure!(
            msg.contains("s17a"),
            "HostnameConflict message {msg:?} does not name s17a"
        );
        for _ in 0..5 {
            let tls = tls_connect(gw.tls, host, &ca).await?;
            let served = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().cloned())
                .context("no certificate")?;
            ensure!(
                served == der_a,
                "SNI {host} presented namespace b's certificate"
            );
        }
        let t = upgrade_eventually(gw.listen, host, "/x", 10.0).await?;
        ensure!(t.backend == "s17a", "{host}/x reached {}", t.backend);

        c.apply(route(
            "s17b",
            "anything",
            json!({"backends": [{"service": {"name": "echo", "port": 80}}]}),
        ))
        .await?;
        let r = wait_status(c, "s17b", "anything", 20.0, "CatchAllNotAllowed", |r| {
            has(r, "Accepted", "False", Some("CatchAllNotAllowed"))
        })
        .await?;
        let catch_all = condition(&r, "Accepted")
            .map(|c| c.message)
            .unwrap_or_default();
        refused_eventually(gw.listen, "elsewhere.s17.test", "/", 404, 5.0).await?;
        c.delete(WSR, "WebSocketRoute", Some("s17b"), "anything")
            .await?;
        println!(
            "    s17b/login: HostnameConflict ({msg}); SNI {host}: s17a's certificate; /x → s17a"
        );
        println!("    s17b/anything: CatchAllNotAllowed ({catch_all})");
        Ok(())
    })
}

/// Scenario 18. 40 updates of a ConfigMap and a Service no route names rebuild
/// nothing (`wsgate_controller_reconciles_total` flat, give or take the 60 s
/// resync); one update of a Service a route names rebuilds.
pub fn unrelated_churn(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, &env.gw);
        let ns = "s18";
        let pod = Backend::start("s18", "192.0.2.19").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "echo")).await?;
        c.apply(slice(ns, "echo-1", "echo", &[Ready(&pod)])).await?;
        c.apply(route(ns, "r", json!({"hostnames": ["s18.test"], "backends": [{"service": {"name": "echo", "port": 80}}]})))
            .await?;
        wait_status(c, ns, "r", 20.0, "programmed", programmed).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let count = || async {
            gw.metric("wsgate_controller_reconciles_total", &[])
                .await
                .map(|v| v.unwrap_or(0.0))
        };
        let before = count().await?;
        for i in 0..40 {
            c.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "noise", "namespace": ns}, "data": {"n": i.to_string()}}))
                .await?;
            let mut svc = service(ns, "unrelated");
            svc["metadata"]["labels"] = json!({"n": i.to_string()});
            c.apply(svc).await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = count().await?;
        ensure!(
            after - before <= 1.0,
            "80 updates of unrelated objects rebuilt the routes {} times",
            after - before
        );
        let mut svc = service(ns, "echo");
        svc["metadata"]["labels"] = json!({"touched": "yes"});
        c.apply(svc).await?;
        let moved = eventually(5.0, "a rebuild after the named Service changed", || async {
            let now = count().await.ok()?;
            (now > after).then_some(now)
        })
        .await?;
        println!(
            "    80 unrelated updates: {} rebuild(s) (resync allowed 1); the route's own Service touched: {} → {moved}",
            after - before,
            after
        );
        Ok(())
    })
}
