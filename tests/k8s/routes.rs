//! Scenarios about routes themselves: the CRD's CEL rules, traffic and status,
//! apply→traffic latency, edits, deletion, conflicts, metrics and quiet status.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

use crate::backend::Backend;
use crate::client::{open, refused_eventually, upgrade, upgrade_eventually};
use crate::objects::{
    condition, has, namespace, programmed, route, service, slice, wait_status, Endpoint::Ready, WSR,
};
use crate::{eventually, Env, Run};

fn svc_backend(name: &str) -> serde_json::Value {
    json!([{"service": {"name": name, "port": 80}}])
}

/// Scenario 1: The CRD's CEL rules refuse bad routes at `kubectl apply` time.
pub fn crd_rules(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let c = &env.cluster;
        c.apply(namespace("s1")).await?;
        let ok = "  backends: [{address: \"192.0.2.1:9001\"}]";
        let cases: [(&str, String, &str); 6] = [
            (
                "path without /",
                format!("  path: {{value: chat}}\n{ok}"),
                "path.value must start with /",
            ),
            (
                "both service and address",
                "  backends: [{address: \"192.0.2.1:9001\", service: {name: x, port: 80}}]".into(),
                "set exactly one of service and address",
            ),
            (
                "ConsistentHash without hashOn",
                format!("{ok}\n  loadBalancing: {{policy: ConsistentHash}}"),
                "hashOn is required when policy is ConsistentHash",
            ),
            (
                "keepalive timeout 0 with pings on",
                format!("{ok}\n  keepalive: {{interval: 10s, timeout: 0s}}"),
                "keepalive.timeout must be above 0 while pings are on",
            ),
            (
                "malformed duration",
                format!("{ok}\n  drain: {{gracePeriod: 1.5.5s}}"),
                "gracePeriod must be a duration such as 500ms, 30s or 1h",
            ),
            (
                "duration out of range",
                format!("{ok}\n  timeouts: {{idle: 99999999999h}}"),
                "idle must be a duration such as 500ms, 30s or 1h",
            ),
        ];
        let doc = |spec: &str| {
            format!("apiVersion: {WSR}\nkind: WebSocketRoute\nmetadata: {{name: cel, namespace: s1}}\nspec:\n{spec}\n")
        };
        for (what, spec, message) in &cases {
            let out = c.kubectl(&["apply", "-f", "-"], Some(&doc(spec))).await?;
            ensure!(!out.ok, "kubectl accepted a route with {what}");
            ensure!(
                out.stderr.contains(message),
                "kubectl refused a route with {what} without the rule's message {message:?}: {}",
                out.stderr.trim()
            );
        }
        // The same document with the bad parts fixed passes.
        let out = c
            .kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&doc(ok)))
            .await?;
        ensure!(out.ok, "a valid route was refused: {}", out.stderr.trim());
        // A keepalive timeout longer than the interval is valid (pings repeat).
        let long = format!("{ok}\n  keepalive: {{interval: 1s, timeout: 3s, backend: {{interval: 1s, timeout: 1s}}}}");
        let out = c
            .kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&doc(&long)))
            .await?;
        ensure!(
            out.ok,
            "a keepalive timeout longer than the interval was refused: {}",
            out.stderr.trim()
        );
        println!(
            "    kubectl refused {} bad routes with their rules' messages",
            cases.len()
        );
        Ok(())
    })
}

/// Scenario 2: Service + EndpointSlice for two pods, a route, traffic through `wsgate run`
/// (round robin over both), status conditions and `kubectl get wsr` columns.
pub fn traffic_and_status(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, env.gw.listen);
        let ns = "s2";
        let a = Backend::start("s2-a", "192.0.2.2").await?;
        let b = Backend::start("s2-b", "192.0.2.3").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "echo")).await?;
        c.apply(slice(ns, "echo-1", "echo", &[Ready(&a), Ready(&b)]))
            .await?;
        let spec = json!({"hostnames": ["s2.test"], "path": {"type": "PathPrefix", "value": "/chat"},
            "backends": svc_backend("echo")});
        c.apply(route(ns, "chat", spec)).await?;
        let mut tunnels = vec![upgrade_eventually(gw, "s2.test", "/chat/room", 30.0).await?];
        for _ in 0..5 {
            tunnels.push(open(gw, "s2.test", "/chat").await?);
        }
        let on = |name: &str| tunnels.iter().filter(|t| t.backend == name).count();
        let (na, nb) = (on("s2-a"), on("s2-b"));
        ensure!(
            na == 3 && nb == 3,
            "RoundRobin over 2 endpoints put {na} of 6 tunnels on s2-a and {nb} on s2-b"
        );
        for t in &mut tunnels {
            t.echo().await?;
        }
        match upgrade(gw, "s2.test", "/chatter").await? {
            Err(404) => {}
            Err(s) => bail!("/chatter (outside the /chat prefix) got {s}, want 404"),
            Ok(t) => bail!("/chatter (outside the /chat prefix) reached {}", t.backend),
        }

        let r = wait_status(
            c,
            ns,
            "chat",
            20.0,
            "Accepted, ResolvedRefs, Programmed True with 2 backends",
            |r| programmed(r) && r["status"]["backends"] == 2,
        )
        .await?;
        for kind in ["Accepted", "ResolvedRefs", "Programmed"] {
            let cond = condition(&r, kind).context("condition")?;
            ensure!(
                cond.observed_generation == r["metadata"]["generation"].as_i64(),
                "{kind} has no observedGeneration"
            );
        }

        let out = c.kubectl(&["get", "wsr", "-n", ns], None).await?;
        ensure!(out.ok, "kubectl get wsr failed: {}", out.stderr);
        let mut lines = out.stdout.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        ensure!(
            header == ["NAME", "HOSTS", "PATH", "BACKENDS", "PROGRAMMED", "AGE"],
            "kubectl get wsr columns: {header:?}"
        );
        let row: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        ensure!(
            row.len() == 6 && row[..5] == ["chat", "[\"s2.test\"]", "/chat", "2", "True"],
            "kubectl get wsr row: {row:?}"
        );
        println!(
            "    6 tunnels: 3 on each endpoint; status current; kubectl get wsr: {}",
            row.join(" ")
        );
        Ok(())
    })
}

/// Scenario 3: apply → first successful upgrade, over 20 new routes.
pub fn apply_latency(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, env.gw.listen);
        let ns = "s3";
        let pod = Backend::start("s3", "192.0.2.4").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "echo")).await?;
        c.apply(slice(ns, "echo-1", "echo", &[Ready(&pod)])).await?;
        let mut ms = Vec::new();
        for i in 0..20 {
            let path = format!("/lat/{i:02}");
            let spec = json!({"hostnames": ["s3.test"], "path": {"type": "Exact", "value": path},
                "backends": svc_backend("echo")});
            let t = Instant::now();
            c.apply(route(ns, &format!("lat-{i:02}"), spec)).await?;
            loop {
                match upgrade(gw, "s3.test", &path).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(404)) => {}
                    Ok(Err(s)) => bail!("{path}: got {s} while waiting for the route"),
                    Err(e) => bail!("{path}: {e}"),
                }
                ensure!(
                    t.elapsed() < Duration::from_secs(30),
                    "{path} not served 30s after the apply"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        // Nearest rank: p50 is the 10th of 20 samples, p99 the 20th.
        let rank =
            |p: f64| ms[((p / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        let line = format!(
            "apply→first upgrade (20 routes): p50 {:.0} ms, p99 {:.0} ms (min {:.0}, max {:.0})",
            rank(50.0),
            rank(99.0),
            ms[0],
            ms[ms.len() - 1]
        );
        println!("    {line}");
        env.summary.push(line);
        Ok(())
    })
}

/// Scenario 5: Editing a route leaves its open tunnels alone.
pub fn edit_keeps_tunnels(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, env.gw.listen);
        let ns = "s5";
        let pod = Backend::start("s5", "192.0.2.8").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "echo")).await?;
        c.apply(slice(ns, "echo-1", "echo", &[Ready(&pod)])).await?;
        let spec = |interval: &str, timeout: &str, max: u32| {
            json!({"hostnames": ["s5.test"], "backends": svc_backend("echo"),
                "keepalive": {"interval": interval, "timeout": timeout},
                "limits": {"maxConnections": max}})
        };
        c.apply(route(ns, "edit", spec("30s", "10s", 0))).await?;
        let mut tunnels = vec![upgrade_eventually(gw, "s5.test", "/", 30.0).await?];
        for _ in 0..2 {
            tunnels.push(open(gw, "s5.test", "/").await?);
        }
        for (n, (interval, timeout, max)) in [("20s", "5s", 100), ("25s", "5s", 50)]
            .into_iter()
            .enumerate()
        {
            c.apply(route(ns, "edit", spec(interval, timeout, max)))
                .await?;
            let generation = n as i64 + 2;
            wait_status(
                c,
                ns,
                "edit",
                20.0,
                &format!("generation {generation} programmed"),
                |r| programmed(r) && r["metadata"]["generation"] == generation,
            )
            .await?;
            for t in &mut tunnels {
                t.echo()
                    .await
                    .with_context(|| format!("an open tunnel after edit {}", n + 1))?;
            }
        }
        let active = env
            .gw
            .metric(
                "wsgate_connections_active",
                &["namespace=\"s5\"", "route=\"edit\""],
            )
            .await?;
        ensure!(
            active == Some(3.0),
            "wsgate_connections_active for s5/edit is {active:?}, want 3"
        );
        open(gw, "s5.test", "/")
            .await
            .context("a new tunnel after the edits")?;
        println!("    3 tunnels kept echoing across 2 edits (keepalive, maxConnections)");
        Ok(())
    })
}

/// Scenario 6: A deleted route answers 404, and its tunnels drain after its grace period.
pub fn delete_gives_404(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, env.gw.listen);
        let ns = "s6";
        let pod = Backend::start("s6", "192.0.2.9").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "echo")).await?;
        c.apply(slice(ns, "echo-1", "echo", &[Ready(&pod)])).await?;
        let spec = json!({"hostnames": ["s6.test"], "backends": svc_backend("echo"), "drain": {"gracePeriod": "1s"}});
        c.apply(route(ns, "gone", spec)).await?;
        let mut t = upgrade_eventually(gw, "s6.test", "/", 30.0).await?;
        let t0 = Instant::now();
        c.delete(WSR, "WebSocketRoute", Some(ns), "gone").await?;
        refused_eventually(gw, "s6.test", "/", 404, 20.0).await?;
        let took = t0.elapsed();
        let closed = t
            .closed_within(10.0)
            .await
            .context("the deleted route's tunnel was not closed within 10s")?;
        let after = closed.at - t0;
        ensure!(
            closed.code == Some(1001),
            "the deleted route's tunnel closed with {:?}, want 1001",
            closed.code
        );
        ensure!(
            after >= Duration::from_secs(1),
            "tunnel closed {after:?} after the delete, before its 1s grace"
        );
        println!(
            "    404 {:.0} ms after the delete; open tunnel got 1001 after {:.1}s (grace 1s)",
            took.as_secs_f64() * 1000.0,
            after.as_secs_f64()
        );
        Ok(())
    })
}

/// Scenario 10: A later route claiming the same host and path is refused as `Conflicted`,
/// with an Event; when the winner goes, it takes over.
pub fn conflict(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, env.gw.listen);
        let ns = "s10";
        let _first = Backend::start("s10-first", "192.0.2.13").await?;
        let _second = Backend::start("s10-second", "192.0.2.14").await?;
        c.apply(namespace(ns)).await?;
        let spec = |ip: &str| json!({"hostnames": ["s10.test"], "backends": [{"address": format!("{ip}:9001")}]});
        c.apply(route(ns, "first", spec("192.0.2.13"))).await?;
        wait_status(c, ns, "first", 20.0, "programmed", programmed).await?;
        // A route of another class (another wsgate's) neither conflicts nor gets status.
        let mut other = spec("192.0.2.14");
        other["className"] = json!("other");
        c.apply(route(ns, "other-class", other)).await?;
        // Creation times have 1 s resolution; make "later" unambiguous.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.apply(route(ns, "second", spec("192.0.2.14"))).await?;
        let r = wait_status(c, ns, "second", 20.0, "Accepted=False Conflicted", |r| {
            has(r, "Accepted", "False", Some("Conflicted"))
        })
        .await?;
        let msg = condition(&r, "Accepted")
            .map(|c| c.message)
            .unwrap_or_default();
        ensure!(
            msg.contains("s10/first"),
            "the Conflicted message does not name the winner: {msg:?}"
        );
        ensure!(
            has(&r, "Programmed", "False", None),
            "the conflicting route says it is programmed"
        );
        let first = c
            .get(WSR, "WebSocketRoute", Some(ns), "first")
            .await?
            .context("route first")?;
        ensure!(programmed(&first), "the older route lost its status");
        let other = c
            .get(WSR, "WebSocketRoute", Some(ns), "other-class")
            .await?
            .context("route other-class")?;
        ensure!(
            other.get("status").is_none(),
            "wsgate (class wsgate) wrote status on a route of class other: {}",
            crate::objects::describe(&other)
        );
        let t = open(gw, "s10.test", "/").await?;
        ensure!(
            t.backend == "s10-first",
            "traffic went to {}, not the older route's backend",
            t.backend
        );

        let events: Api<Event> = Api::namespaced(c.client.clone(), ns);
        let ev = eventually(20.0, "a Conflicted Event for s10/second", || {
            let events = events.clone();
            async move {
                let list = events.list(&ListParams::default()).await.ok()?;
                list.items.into_iter().find(|e| {
                    e.reason.as_deref() == Some("Conflicted")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("second")
                })
            }
        })
        .await?;
        ensure!(
            ev.type_.as_deref() == Some("Warning"),
            "the Conflicted Event is {:?}, want Warning",
            ev.type_
        );

        c.delete(WSR, "WebSocketRoute", Some(ns), "first").await?;
        wait_status(
            c,
            ns,
            "second",
            20.0,
            "programmed once the winner is gone",
            programmed,
        )
        .await?;
        let t = upgrade_eventually(gw, "s10.test", "/", 10.0).await?;
        ensure!(
            t.backend == "s10-second",
            "after the winner's deletion traffic went to {}",
            t.backend
        );
        println!("    other-class route ignored (no status, no conflict); second: Accepted=False Conflicted ({msg}); Warning Event {:?}; takes over after delete", ev.note.unwrap_or_default());
        Ok(())
    })
}

/// Scenario 11: `/metrics` has the controller's series, and status is not rewritten while
/// nothing changes.
pub fn metrics_and_quiet_status(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let c = &env.cluster;
        let gvk = GroupVersionKind::gvk("wsgate.io", "v1alpha1", "WebSocketRoute");
        let api: Api<DynamicObject> = Api::all_with(
            c.client.clone(),
            &ApiResource::from_gvk_with_plural(&gvk, "websocketroutes"),
        );
        let versions = || async {
            let list = api.list(&ListParams::default()).await?;
            let mut out = BTreeMap::new();
            let mut served = 0;
            for r in list.items {
                let v = serde_json::to_value(&r)?;
                served += usize::from(programmed(&v));
                let key = format!(
                    "{}/{}",
                    v["metadata"]["namespace"].as_str().unwrap_or(""),
                    v["metadata"]["name"].as_str().unwrap_or("")
                );
                out.insert(
                    key,
                    v["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                );
            }
            anyhow::Ok((out, served))
        };
        let (before, served) = versions().await?;
        ensure!(
            before.len() > 1,
            "expected routes from earlier scenarios, found {}",
            before.len()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (after, _) = versions().await?;
        let changed: Vec<&String> = before
            .keys()
            .filter(|k| before.get(*k) != after.get(*k))
            .collect();
        ensure!(
            changed.is_empty(),
            "status rewritten with nothing changing: {changed:?}"
        );

        let gw = &env.gw;
        let reconciles = gw
            .metric(
                "wsgate_controller_reconciles_total",
                &["result=\"success\""],
            )
            .await?;
        ensure!(
            reconciles.is_some_and(|n| n > 0.0),
            "wsgate_controller_reconciles_total{{result=\"success\"}} is {reconciles:?}"
        );
        let routes = gw.metric("wsgate_routes", &[]).await?;
        ensure!(
            routes == Some(served as f64),
            "wsgate_routes is {routes:?}, but {served} routes say Programmed=True"
        );
        println!("    {} routes, resourceVersions unchanged over 5s; wsgate_routes {served}; reconciles {}", before.len(), reconciles.unwrap_or(0.0));
        Ok(())
    })
}
