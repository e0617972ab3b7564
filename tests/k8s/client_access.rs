//! Scenario about `clientAccess` from the CRD: a change closes exactly the tunnels it
//! denies, and a list the API server cannot read never replaces the one in force.

use anyhow::{anyhow, ensure};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::client::{refused_eventually, upgrade_eventually};
use crate::objects::{namespace, programmed, route, service, slice, wait_status, Endpoint::Ready};
use crate::{Env, Run};

/// Scenario 15: a route allows the client, a tunnel echoes; the route's deny list
/// grows to cover the client: the tunnel gets Close 1008 and new upgrades 403; a
/// deny entry that is no CIDR is refused by the API server naming the field, and
/// the client is still refused.
pub fn client_access_from_the_crd(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, env.gw.listen);
        let ns = "s15";
        let pod = Backend::start("s15", "192.0.2.20").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "echo")).await?;
        c.apply(slice(ns, "echo-1", "echo", &[Ready(&pod)])).await?;
        let spec = |deny: Value| {
            json!({"hostnames": ["s15.test"], "backends": [{"service": {"name": "echo", "port": 80}}],
                "clientAccess": {"deny": deny}})
        };
        c.apply(route(ns, "acl", spec(json!(["192.0.2.0/24"]))))
            .await?;
        let mut t = upgrade_eventually(gw, "s15.test", "/", 30.0).await?;
        t.echo().await?;

        c.apply(route(ns, "acl", spec(json!(["0.0.0.0/0", "::/0"]))))
            .await?;
        wait_status(c, ns, "acl", 20.0, "generation 2 programmed", |r| {
            programmed(r) && r["metadata"]["generation"] == 2
        })
        .await?;
        let closed = t
            .closed_within(10.0)
            .await
            .ok_or_else(|| anyhow!("the now denied tunnel is still open 10s after the change"))?;
        ensure!(
            closed.code == Some(1008),
            "the denied tunnel closed with {:?}, want 1008",
            closed.code
        );
        refused_eventually(gw, "s15.test", "/", 403, 10.0).await?;

        let bad = c
            .apply(route(ns, "acl", spec(json!(["10.0.0.0/33"]))))
            .await;
        let err = match bad {
            Ok(_) => return Err(anyhow!("the API server took deny: [10.0.0.0/33]")),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains("clientAccess.deny[0]") && err.contains("must be a CIDR"),
            "the refusal does not name the field: {err}"
        );
        refused_eventually(gw, "s15.test", "/", 403, 2.0).await?;
        println!("    deny grew to cover the client: its tunnel closed 1008, new upgrades 403; deny: [10.0.0.0/33] refused by the API server, old list in force");
        Ok(())
    })
}
