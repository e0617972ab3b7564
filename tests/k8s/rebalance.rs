//! Scenario 12: rate limits and rebalance in controller mode. The CRD's CEL rules
//! refuse what `wsgate check` refuses; a second endpoint joining the EndpointSlice
//! moves the over-loaded endpoint's excess (capped by maxFraction) with Close 1012
//! spread over the window, and the clients' reconnects land on the new endpoint.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures_util::future::join_all;
use serde_json::json;

use crate::backend::Backend;
use crate::client::{open, upgrade_eventually};
use crate::objects::{
    namespace, programmed, route, service, slice, wait_status, Endpoint::Ready, WSR,
};
use crate::{Env, Run};

/// Tunnels on the first endpoint before the second joins.
const TUNNELS: usize = 20;

pub fn rebalance_by_endpoints(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, env.gw.listen);
        let ns = "s13";
        c.apply(namespace(ns)).await?;

        let ok = "  backends: [{address: \"192.0.2.1:9001\"}]";
        let doc = |spec: &str| {
            format!("apiVersion: {WSR}\nkind: WebSocketRoute\nmetadata: {{name: cel, namespace: {ns}}}\nspec:\n{ok}\n{spec}\n")
        };
        for (what, spec, message) in [
            (
                "rebalance with Cookie",
                "  loadBalancing: {policy: Cookie}\n  rebalance: {maxFraction: 0.2}",
                "rebalance is valid only with loadBalancing.policy RoundRobin or LeastConnections",
            ),
            (
                "maxFraction above 1",
                "  rebalance: {maxFraction: 1.5}",
                "rebalance.maxFraction must be above 0 and at most 1",
            ),
            (
                "burst without a rate",
                "  limits: {burst: 10}",
                "limits.burst needs messagesPerSecond above 0",
            ),
        ] {
            let out = c.kubectl(&["apply", "-f", "-"], Some(&doc(spec))).await?;
            ensure!(!out.ok, "kubectl accepted a route with {what}");
            ensure!(
                out.stderr.contains(message),
                "kubectl refused a route with {what} without the rule's message {message:?}: {}",
                out.stderr.trim()
            );
        }
        let valid = "  loadBalancing: {policy: LeastConnections}\n  rebalance: {maxFraction: 0.5, over: 2s}\n  limits: {messagesPerSecond: 100, burst: 10, onExceed: Throttle}";
        let out = c
            .kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&doc(valid)))
            .await?;
        ensure!(out.ok, "a valid route was refused: {}", out.stderr.trim());

        let a = Backend::start("s13-a", "192.0.2.17").await?;
        let b = Backend::start("s13-b", "192.0.2.18").await?;
        c.apply(service(ns, "pods")).await?;
        c.apply(slice(ns, "pods-1", "pods", &[Ready(&a)])).await?;
        let spec = json!({"hostnames": ["s13.test"], "backends": [{"service": {"name": "pods", "port": "ws"}}],
            "rebalance": {"maxFraction": 0.5, "over": "2s"}});
        c.apply(route(ns, "chat", spec)).await?;
        wait_status(c, ns, "chat", 20.0, "programmed with 1 backend", |r| {
            programmed(r) && r["status"]["backends"] == 1
        })
        .await?;
        upgrade_eventually(gw, "s13.test", "/", 10.0).await?;
        let mut tunnels = Vec::new();
        for _ in 0..TUNNELS {
            let t = open(gw, "s13.test", "/").await?;
            ensure!(t.backend == "s13-a", "a tunnel went to {}", t.backend);
            tunnels.push(t);
        }

        // s13-b joins the slice: fair share 10 each, maxFraction 0.5 caps at 10.
        let t0 = Instant::now();
        c.apply(slice(ns, "pods-1", "pods", &[Ready(&a), Ready(&b)]))
            .await?;
        wait_status(c, ns, "chat", 10.0, "2 backends", |r| {
            r["status"]["backends"] == 2
        })
        .await?;
        let closes = join_all(tunnels.iter_mut().map(|t| t.closed_within(5.0))).await;
        let mut moved = 0;
        let mut last = Duration::ZERO;
        for closed in closes.into_iter().flatten() {
            ensure!(
                closed.code == Some(1012),
                "a rebalanced tunnel closed with {:?}, want 1012",
                closed.code
            );
            moved += 1;
            last = last.max(closed.at - t0);
        }
        ensure!(
            moved == TUNNELS / 2,
            "{moved} of {TUNNELS} tunnels moved, want {}",
            TUNNELS / 2
        );
        // The clients reconnect: each lands on the least-loaded endpoint.
        let mut landed = Vec::new();
        for _ in 0..moved {
            landed.push(open(gw, "s13.test", "/").await?.backend);
        }
        ensure!(
            landed.iter().all(|n| n == "s13-b"),
            "reconnects landed on {landed:?}, want all on s13-b"
        );
        let counted = env
            .gw
            .metric("wsgate_rebalanced_total", &["namespace=\"s13\""])
            .await?
            .context("no wsgate_rebalanced_total sample for s13")?;
        ensure!(
            counted == moved as f64,
            "wsgate_rebalanced_total = {counted}, want {moved}"
        );
        println!(
            "    CEL refused 3 bad routes; s13-b joined: {moved} of {TUNNELS} tunnels closed 1012 within {:.2}s (over 2s), reconnects all on s13-b",
            last.as_secs_f64()
        );
        Ok(())
    })
}
