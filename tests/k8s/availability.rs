//! Scenarios about staying up: two replicas behind one Lease, and a kube-apiserver
//! outage.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::client::{open, upgrade_eventually};
use crate::cluster::{Cluster, WSGATE_NS};
use crate::gateway::{Gateway, LEASE};
use crate::objects::{namespace, programmed, route, service, slice, wait_status, Endpoint::Ready};
use crate::{eventually, Env, Run};

async fn lease_holder(c: &Cluster) -> Option<String> {
    let lease = c
        .get("coordination.k8s.io/v1", "Lease", Some(WSGATE_NS), LEASE)
        .await
        .ok()??;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

fn route_spec(host: &str) -> Value {
    json!({"hostnames": [host], "backends": [{"service": {"name": "echo", "port": 80}}]})
}

/// Scenario 8. Two replicas, one Lease: both serve traffic, only the holder writes
/// status; kill it and the other takes over and keeps status current.
pub fn two_replicas(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let ns = "s8";
        let pod = Backend::start("s8", "192.0.2.11").await?;
        let c = &env.cluster;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "echo")).await?;
        c.apply(slice(ns, "echo-1", "echo", &[Ready(&pod)])).await?;
        let mut second = Gateway::start(c, "wsgate-b", 1).await?;
        c.apply(route(ns, "ha", route_spec("s8.test"))).await?;
        wait_status(c, ns, "ha", 20.0, "programmed", programmed).await?;
        let first_id = env.gw.identity.clone();
        upgrade_eventually(env.gw.listen, "s8.test", "/", 10.0)
            .await
            .context("through the first replica")?;
        let mut via_second = upgrade_eventually(second.listen, "s8.test", "/", 10.0)
            .await
            .context("through the second replica")?;

        let holder = lease_holder(c).await;
        ensure!(
            holder.as_deref() == Some(first_id.as_str()),
            "Lease holder is {holder:?}, want {first_id}"
        );
        ensure!(
            !second.log_text().contains("became leader"),
            "the second replica says it became leader"
        );
        let r = c
            .get(crate::objects::WSR, "WebSocketRoute", Some(ns), "ha")
            .await?
            .context("route ha")?;
        let status_managers: Vec<&str> = r["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["subresource"] == "status")
            .filter_map(|m| m["manager"].as_str())
            .collect();
        ensure!(
            status_managers == ["wsgate"],
            "status field managers: {status_managers:?}"
        );

        let t0 = Instant::now();
        env.gw.kill();
        let second_id = second.identity.clone();
        eventually(40.0, "the second replica to take the Lease", || async {
            (lease_holder(c).await.as_deref() == Some(second_id.as_str())).then_some(())
        })
        .await?;
        let takeover = t0.elapsed();
        ensure!(
            takeover < Duration::from_secs(25),
            "takeover took {takeover:?}"
        );
        ensure!(second.running(), "the second replica exited");
        // The new leader keeps status current: a new route and an edit get status.
        c.apply(route(ns, "after-failover", route_spec("s8-after.test")))
            .await?;
        wait_status(
            c,
            ns,
            "after-failover",
            20.0,
            "programmed by the new leader",
            programmed,
        )
        .await?;
        let mut edited = route_spec("s8.test");
        edited["limits"] = json!({"maxConnections": 10});
        c.apply(route(ns, "ha", edited)).await?;
        wait_status(
            c,
            ns,
            "ha",
            20.0,
            "generation 2 programmed by the new leader",
            |r| programmed(r) && r["metadata"]["generation"] == 2,
        )
        .await?;
        via_second
            .echo()
            .await
            .context("a tunnel through the second replica after the failover")?;
        upgrade_eventually(second.listen, "s8-after.test", "/", 10.0).await?;
        let line = format!(
            "leader failover (SIGKILL → other replica holds the Lease): {:.1}s",
            takeover.as_secs_f64()
        );
        println!(
            "    both replicas served; Lease held by {first_id}; {line}; new leader wrote status"
        );
        env.summary.push(line);
        std::mem::swap(&mut env.gw, &mut second);
        Ok(())
    })
}

/// Scenario 9: kube-apiserver down for 10 s: tunnels and new upgrades keep working,
/// `/readyz` stays 200; afterwards a new route is picked up and the watch
/// restarts are counted.
pub fn apiserver_outage(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let ns = "s9";
        let pod = Backend::start("s9", "192.0.2.12").await?;
        let (c, gw) = (&env.cluster, &env.gw);
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "echo")).await?;
        c.apply(slice(ns, "echo-1", "echo", &[Ready(&pod)])).await?;
        c.apply(route(ns, "steady", route_spec("s9.test"))).await?;
        let mut tunnels = vec![upgrade_eventually(gw.listen, "s9.test", "/", 20.0).await?];
        tunnels.push(open(gw.listen, "s9.test", "/").await?);
        let restarts0 = gw
            .metric("wsgate_controller_watch_restarts_total", &[])
            .await?
            .unwrap_or(0.0);

        let (stopped, stop_took) = crate::timed(c.stop_apiserver()).await;
        stopped?;
        let down = Instant::now();
        let mut checks = 0;
        while down.elapsed() < Duration::from_secs(10) {
            for t in &mut tunnels {
                t.echo().await.context("an open tunnel during the outage")?;
            }
            open(gw.listen, "s9.test", "/")
                .await
                .context("a new upgrade during the outage")?;
            let (status, _) = gw.get("/readyz").await?;
            ensure!(status == 200, "/readyz answered {status} during the outage");
            checks += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (started, start_took) = crate::timed(c.start_apiserver()).await;
        started?;
        let outage = down.elapsed();

        let up = Instant::now();
        // Its own host name: "steady" (PathPrefix /) would serve any path of s9.test.
        // The admin client's pooled connection died with the server: retry the write.
        eventually(30.0, "applying a route after the restart", || async {
            c.apply(route(ns, "after", route_spec("s9-after.test")))
                .await
                .ok()
        })
        .await?;
        upgrade_eventually(gw.listen, "s9-after.test", "/", 90.0)
            .await
            .context("a route created after the restart")?;
        let pickup = up.elapsed();
        wait_status(
            c,
            ns,
            "after",
            30.0,
            "programmed after the restart",
            programmed,
        )
        .await?;
        let status_after = up.elapsed();
        for t in &mut tunnels {
            t.echo().await.context("an open tunnel after the outage")?;
        }
        let restarts = gw
            .metric("wsgate_controller_watch_restarts_total", &[])
            .await?
            .unwrap_or(0.0);
        ensure!(
            restarts > restarts0,
            "wsgate_controller_watch_restarts_total stayed at {restarts}"
        );
        println!(
            "    stop-apiserver {:.1}s, outage {:.1}s (incl. start-apiserver {:.1}s): {checks} rounds of echo/upgrade/readyz ok; \
             new route served {:.1}s and its status written {:.1}s after the restart; watch restarts {restarts0} → {restarts}",
            stop_took.as_secs_f64(),
            outage.as_secs_f64(),
            start_took.as_secs_f64(),
            pickup.as_secs_f64(),
            status_after.as_secs_f64()
        );
        Ok(())
    })
}
