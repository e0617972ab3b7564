//! The Gateway API (issue 17) against the real API server: a GatewayClass of
//! wsgate's, a Gateway that gets its own Service (its address) and data-plane port,
//! an HTTPRoute whose rules route WebSocket upgrades by path and header, a rule
//! whose backend does not exist answering 500, the statuses the specification
//! names, and route edits that leave open tunnels alone.

use std::net::SocketAddr;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use futures_util::{SinkExt, StreamExt};

use crate::backend::Backend;
use crate::client::{refused_eventually, upgrade_eventually};
use crate::cluster::{Cluster, WSGATE_NS};
use crate::objects::{namespace, service, slice, Endpoint::Ready};
use crate::{eventually, within, Env, Run};

const GW_API: &str = "gateway.networking.k8s.io/v1";
const NS: &str = "s20";

/// The condition `kind` of a status's `conditions`: (status, reason, observedGeneration).
fn cond(conditions: &Value, kind: &str) -> Option<(String, String, Option<i64>)> {
    let c = conditions.as_array()?.iter().find(|c| c["type"] == kind)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["observedGeneration"].as_i64(),
    ))
}

async fn get(c: &Cluster, kind: &str, ns: Option<&str>, name: &str) -> Option<Value> {
    c.get(GW_API, kind, ns, name).await.ok().flatten()
}

fn route(rules: Value) -> Value {
    json!({"apiVersion": GW_API, "kind": "HTTPRoute", "metadata": {"name": "chat", "namespace": NS},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": rules}})
}

fn rules(broken_path: &str) -> Value {
    json!([
        {"matches": [{"path": {"type": "PathPrefix", "value": "/chat"}, "headers": [{"name": "x-room", "value": "b"}]}],
         "backendRefs": [{"name": "svc-b", "port": 80}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/chat"}}],
         "backendRefs": [{"name": "svc-a", "port": 80}]},
        {"matches": [{"path": {"type": "Exact", "value": broken_path}}],
         "backendRefs": [{"name": "missing", "port": 80}]},
    ])
}

/// An upgrade with an extra header: the name of the pod that echoed, or the
/// status wsgate refused it with.
async fn try_upgrade_with(
    gw: SocketAddr,
    path: &str,
    header: (&'static str, &str),
) -> Result<std::result::Result<String, u16>> {
    let tcp = within(5.0, "TCP connect", TcpStream::connect(gw)).await??;
    let mut req = format!("ws://gateway.test{path}").into_client_request()?;
    req.headers_mut().insert(header.0, header.1.parse()?);
    let (mut ws, _) =
        match within(5.0, "upgrade", tokio_tungstenite::client_async(req, tcp)).await? {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                return Ok(Err(resp.status().as_u16()))
            }
            Err(e) => return Err(e.into()),
        };
    ws.send(Message::text("hi")).await?;
    let reply = within(5.0, "echo", ws.next()).await?.context("closed")??;
    Ok(Ok(reply
        .into_text()?
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()))
}

async fn upgrade_with(gw: SocketAddr, path: &str, header: (&'static str, &str)) -> Result<String> {
    try_upgrade_with(gw, path, header)
        .await?
        .map_err(|status| anyhow::anyhow!("{path} refused with {status}"))
}

/// The data-plane port behind port 80 of the Gateway `name`'s Service.
async fn data_plane_port(c: &Cluster, name: &str) -> Result<u16> {
    let label = format!("gateway.wsgate.io/name={name}");
    let svc = eventually(
        15.0,
        "the Gateway's Service in wsgate's namespace",
        || async {
            let list = c
                .kubectl(
                    &["get", "svc", "-n", WSGATE_NS, "-l", &label, "-o", "json"],
                    None,
                )
                .await
                .ok()?;
            let v: Value = serde_json::from_str(&list.stdout).ok()?;
            v["items"].as_array()?.first().cloned()
        },
    )
    .await?;
    Ok(svc["spec"]["ports"][0]["targetPort"]
        .as_u64()
        .context("targetPort")? as u16)
}

/// Scenario 20.
pub fn gateway_api(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let c = &env.cluster;
        let gw_ip = env.gw.listen.ip();
        let (a, b) = (
            Backend::start("gw-a", "192.0.2.17").await?,
            Backend::start("gw-b", "192.0.2.18").await?,
        );
        c.apply(namespace(NS)).await?;
        for (svc, pod) in [("svc-a", &a), ("svc-b", &b)] {
            c.apply(service(NS, svc)).await?;
            c.apply(slice(NS, &format!("{svc}-1"), svc, &[Ready(pod)]))
                .await?;
        }
        c.apply(
            json!({"apiVersion": GW_API, "kind": "GatewayClass", "metadata": {"name": "wsgate-s20"},
            "spec": {"controllerName": "wsgate.io/gateway-controller"}}),
        )
        .await?;
        c.apply(
            json!({"apiVersion": GW_API, "kind": "GatewayClass", "metadata": {"name": "not-ours"},
            "spec": {"controllerName": "example.com/other"}}),
        )
        .await?;
        c.apply(json!({"apiVersion": GW_API, "kind": "Gateway", "metadata": {"name": "edge", "namespace": NS},
            "spec": {"gatewayClassName": "wsgate-s20", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}))
            .await?;
        c.apply(route(rules("/broken"))).await?;

        let class = eventually(15.0, "GatewayClass wsgate-s20 Accepted", || async {
            let gc = get(c, "GatewayClass", None, "wsgate-s20").await?;
            (cond(&gc["status"]["conditions"], "Accepted")?.0 == "True").then_some(gc)
        })
        .await?;
        println!(
            "    GatewayClass supportedFeatures: {}",
            class["status"]["supportedFeatures"]
        );
        ensure!(
            get(c, "GatewayClass", None, "not-ours")
                .await
                .context("not-ours")?["status"]["conditions"]
                .as_array()
                .is_none_or(|cs| cs.iter().all(|c| c["reason"] == "Pending")),
            "another controller's GatewayClass was touched"
        );

        // The Gateway's Service: its address, and the data-plane port behind port 80.
        let svc = eventually(
            15.0,
            "the Gateway's Service in wsgate's namespace",
            || async {
                let list = c
                    .kubectl(
                        &[
                            "get",
                            "svc",
                            "-n",
                            WSGATE_NS,
                            "-l",
                            "gateway.wsgate.io/name=edge",
                            "-o",
                            "json",
                        ],
                        None,
                    )
                    .await
                    .ok()?;
                let v: Value = serde_json::from_str(&list.stdout).ok()?;
                v["items"].as_array()?.first().cloned()
            },
        )
        .await?;
        let port = &svc["spec"]["ports"][0];
        ensure!(port["port"] == 80, "Service port {port}");
        let dp = port["targetPort"].as_u64().context("targetPort")? as u16;
        ensure!(
            (7000..=7099).contains(&dp),
            "data-plane port {dp} outside --gateway-ports"
        );
        ensure!(
            svc["spec"]["type"] == "LoadBalancer"
                && svc["spec"]["selector"]["app"] == "wsgate-test",
            "Service spec {}",
            svc["spec"]
        );
        let gw = get(c, "Gateway", Some(NS), "edge")
            .await
            .context("gateway")?;
        ensure!(
            cond(&gw["status"]["conditions"], "Programmed")
                .is_none_or(|p| p.1 == "AddressNotAssigned"),
            "Programmed before any address: {}",
            gw["status"]
        );
        // What a load balancer controller does: an address in the Service's status.
        let name = svc["metadata"]["name"].as_str().context("name")?;
        let patch =
            json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.30"}]}}}).to_string();
        let out = c
            .kubectl(
                &[
                    "patch",
                    "svc",
                    name,
                    "-n",
                    WSGATE_NS,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &patch,
                ],
                None,
            )
            .await?;
        ensure!(out.ok, "patching the Service's status: {}", out.stderr);
        let gw = eventually(
            15.0,
            "Gateway edge Programmed with the Service's address",
            || async {
                let gw = get(c, "Gateway", Some(NS), "edge").await?;
                let generation = gw["metadata"]["generation"].as_i64();
                let p = cond(&gw["status"]["conditions"], "Programmed")?;
                (p.0 == "True"
                    && p.2 == generation
                    && gw["status"]["addresses"][0]["value"] == "192.0.2.30")
                    .then_some(gw)
            },
        )
        .await?;
        let listener = &gw["status"]["listeners"][0];
        ensure!(
            listener["attachedRoutes"] == 1,
            "listener status {listener}"
        );
        let parent = eventually(15.0, "HTTPRoute chat's parent status", || async {
            let r = get(c, "HTTPRoute", Some(NS), "chat").await?;
            r["status"]["parents"].as_array()?.first().cloned()
        })
        .await?;
        ensure!(
            parent["controllerName"] == "wsgate.io/gateway-controller",
            "{parent}"
        );
        ensure!(
            cond(&parent["conditions"], "Accepted").is_some_and(|a| a.0 == "True"),
            "{parent}"
        );
        ensure!(
            cond(&parent["conditions"], "ResolvedRefs")
                .is_some_and(|r| r.0 == "False" && r.1 == "BackendNotFound"),
            "a backendRef to a missing Service: {parent}"
        );

        // Traffic on the Gateway's data-plane port.
        let at = SocketAddr::new(gw_ip, dp);
        let tunnel = upgrade_eventually(at, "gateway.s20.test", "/chat/room", 15.0).await?;
        ensure!(tunnel.backend == "gw-a", "/chat went to {}", tunnel.backend);
        let by_header = upgrade_with(at, "/chat/room", ("x-room", "b")).await?;
        ensure!(by_header == "gw-b", "the header match went to {by_header}");
        refused_eventually(at, "gateway.s20.test", "/broken", 500, 5.0).await?;
        refused_eventually(at, "gateway.s20.test", "/elsewhere", 404, 5.0).await?;
        refused_eventually(env.gw.listen, "gateway.s20.test", "/chat", 404, 5.0).await?;

        // A hundred edits, fifty of the HTTPRoute and fifty of the Gateway (a second
        // listener added and removed), while 200 tunnels are open: none drops.
        let mut tunnels = vec![tunnel];
        for _ in 1..200 {
            tunnels.push(crate::client::open(at, "gateway.s20.test", "/chat/room").await?);
        }
        let gateway = |extra: bool| {
            let mut listeners = vec![json!({"name": "http", "port": 80, "protocol": "HTTP"})];
            if extra {
                listeners.push(json!({"name": "extra", "port": 8081, "protocol": "HTTP"}));
            }
            json!({"apiVersion": GW_API, "kind": "Gateway", "metadata": {"name": "edge", "namespace": NS},
                "spec": {"gatewayClassName": "wsgate-s20", "listeners": listeners}})
        };
        // Each edit is waited for (served, or reported at its generation), so each is
        // a rebuild of its own rather than one of a debounced burst.
        for i in 0..50 {
            c.apply(route(rules(&format!("/broken-{i}")))).await?;
            refused_eventually(at, "gateway.s20.test", &format!("/broken-{i}"), 500, 10.0).await?;
            let applied = c.apply(gateway(i % 2 == 0)).await?;
            let generation = applied["metadata"]["generation"].as_i64();
            eventually(
                10.0,
                "the Gateway's status at its new generation",
                || async {
                    let gw = get(c, "Gateway", Some(NS), "edge").await?;
                    (cond(&gw["status"]["conditions"], "Accepted")?.2 == generation).then_some(())
                },
            )
            .await?;
        }
        let mut dropped = 0;
        for t in &mut tunnels {
            if !matches!(t.echo().await.as_deref(), Ok("gw-a")) {
                dropped += 1;
            }
        }
        ensure!(
            dropped == 0,
            "{dropped} of 200 tunnels dropped over 100 edits"
        );
        println!("    100 edits (50 HTTPRoute, 50 Gateway) with 200 tunnels open: 0 dropped");
        drop(tunnels);

        // The Gateway gone: its Service goes and its port stops taking connections
        // (its tunnels drain as a removed route's do, after the grace period).
        c.delete(GW_API, "Gateway", Some(NS), "edge").await?;
        eventually(15.0, "the Gateway's Service deleted", || async {
            let out = c
                .kubectl(&["get", "svc", name, "-n", WSGATE_NS], None)
                .await
                .ok()?;
            (!out.ok && out.stderr.contains("NotFound")).then_some(())
        })
        .await?;
        eventually(10.0, "the data-plane port closed", || async {
            TcpStream::connect(at).await.is_err().then_some(())
        })
        .await?;
        c.delete(GW_API, "GatewayClass", None, "wsgate-s20").await?;
        c.delete(GW_API, "GatewayClass", None, "not-ours").await?;
        Ok(())
    })
}

fn policy(name: &str, kind: &str, target: &str, settings: Value) -> Value {
    let mut spec = json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": kind, "name": target}]});
    let extra = settings.as_object().cloned().unwrap_or_default();
    spec.as_object_mut().expect("an object").extend(extra);
    json!({"apiVersion": "wsgate.io/v1alpha1", "kind": "WebSocketPolicy",
        "metadata": {"name": name, "namespace": "s21"}, "spec": spec})
}

/// A WebSocketPolicy's Accepted condition for its first target, at its generation.
async fn policy_accepted(c: &Cluster, name: &str) -> Option<(String, String)> {
    let p = c
        .get("wsgate.io/v1alpha1", "WebSocketPolicy", Some("s21"), name)
        .await
        .ok()??;
    let (status, reason, generation) =
        cond(&p["status"]["ancestors"][0]["conditions"], "Accepted")?;
    (generation == p["metadata"]["generation"].as_i64()).then_some((status, reason))
}

/// Scenario 21. WebSocketPolicy: an HTTPRoute's policy sets its allowed Origins, its
/// Gateway's policy fills in what the route's leaves out, the oldest of two
/// policies on one route applies and the other says Conflicted, a policy on a
/// route that does not exist says TargetNotFound, and deleting the applying
/// policy hands the route to the next.
pub fn websocket_policy(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let c = &env.cluster;
        let ns = "s21";
        let a = Backend::start("p-a", "192.0.2.19").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "svc-a")).await?;
        c.apply(slice(ns, "svc-a-1", "svc-a", &[Ready(&a)])).await?;
        c.apply(
            json!({"apiVersion": GW_API, "kind": "GatewayClass", "metadata": {"name": "wsgate-s21"},
            "spec": {"controllerName": "wsgate.io/gateway-controller"}}),
        )
        .await?;
        c.apply(json!({"apiVersion": GW_API, "kind": "Gateway", "metadata": {"name": "policy-edge", "namespace": ns},
            "spec": {"gatewayClassName": "wsgate-s21", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}))
            .await?;
        c.apply(json!({"apiVersion": GW_API, "kind": "HTTPRoute", "metadata": {"name": "chat", "namespace": ns},
            "spec": {"parentRefs": [{"name": "policy-edge"}], "rules": [{"backendRefs": [{"name": "svc-a", "port": 80}]}]}}))
            .await?;
        let at = SocketAddr::new(env.gw.listen.ip(), data_plane_port(c, "policy-edge").await?);
        let origin = |o: &'static str| ("origin", o);
        eventually(15.0, "the HTTPRoute served, any Origin allowed", || async {
            try_upgrade_with(at, "/", origin("https://evil.example"))
                .await
                .ok()?
                .ok()
        })
        .await?;

        c.apply(policy(
            "older",
            "HTTPRoute",
            "chat",
            json!({"allowedOrigins": ["https://ok.example"]}),
        ))
        .await?;
        // creationTimestamp has a resolution of one second.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        c.apply(policy(
            "newer",
            "HTTPRoute",
            "chat",
            json!({"allowedOrigins": ["https://other.example"]}),
        ))
        .await?;
        c.apply(policy(
            "lost",
            "HTTPRoute",
            "missing",
            json!({"allowedOrigins": ["https://ok.example"]}),
        ))
        .await?;
        c.apply(policy(
            "defaults",
            "Gateway",
            "policy-edge",
            json!({"subprotocols": ["chat.v1"], "allowedOrigins": ["https://gateway.example"]}),
        ))
        .await?;
        for (name, want) in [
            ("older", ("True", "Accepted")),
            ("newer", ("False", "Conflicted")),
            ("lost", ("False", "TargetNotFound")),
            ("defaults", ("True", "Accepted")),
        ] {
            let got = eventually(
                15.0,
                &format!("WebSocketPolicy {name} {want:?}"),
                || async {
                    policy_accepted(c, name)
                        .await
                        .filter(|(s, r)| s == want.0 && r == want.1)
                },
            )
            .await;
            ensure!(
                got.is_ok(),
                "WebSocketPolicy {name}: want {want:?}, have {:?}",
                policy_accepted(c, name).await
            );
        }
        eventually(
            15.0,
            "Origin https://evil.example refused with 403",
            || async {
                (try_upgrade_with(at, "/", origin("https://evil.example"))
                    .await
                    .ok()?
                    == Err(403))
                .then_some(())
            },
        )
        .await?;
        let ok = upgrade_with(at, "/", origin("https://ok.example")).await?;
        ensure!(ok == "p-a", "the allowed Origin reached {ok}");
        ensure!(
            try_upgrade_with(at, "/", origin("https://gateway.example")).await? == Err(403),
            "the route's allowedOrigins override the Gateway's"
        );
        let other = try_upgrade_with(at, "/", ("sec-websocket-protocol", "other.v2")).await?;
        ensure!(
            other.is_err(),
            "a subprotocol outside the Gateway policy's list was let through: {other:?}"
        );

        // The applying policy gone: the newer one takes the route.
        c.delete("wsgate.io/v1alpha1", "WebSocketPolicy", Some(ns), "older")
            .await?;
        eventually(15.0, "WebSocketPolicy newer Accepted", || async {
            policy_accepted(c, "newer")
                .await
                .filter(|(s, _)| s == "True")
        })
        .await?;
        eventually(15.0, "Origin https://other.example allowed", || async {
            try_upgrade_with(at, "/", origin("https://other.example"))
                .await
                .ok()?
                .ok()
        })
        .await?;
        for name in ["newer", "lost", "defaults"] {
            c.delete("wsgate.io/v1alpha1", "WebSocketPolicy", Some(ns), name)
                .await?;
        }
        c.delete(GW_API, "Gateway", Some(ns), "policy-edge").await?;
        c.delete(GW_API, "GatewayClass", None, "wsgate-s21").await?;
        Ok(())
    })
}

/// An upgrade through a Gateway port; the stream, to watch its frames.
async fn raw_upgrade(
    at: SocketAddr,
    path: &str,
) -> Result<std::result::Result<tokio_tungstenite::WebSocketStream<TcpStream>, u16>> {
    let tcp = within(5.0, "TCP connect", TcpStream::connect(at)).await??;
    let req = format!("ws://gateway.test{path}").into_client_request()?;
    match within(5.0, "upgrade", tokio_tungstenite::client_async(req, tcp)).await? {
        Ok((ws, _)) => Ok(Ok(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(Err(resp.status().as_u16())),
        Err(e) => Err(e.into()),
    }
}

/// The first Ping or Close a client sees within `secs`, reading as an idle client
/// would (tungstenite answers the pings).
async fn next_control(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    secs: f64,
) -> Result<Message> {
    within(secs, "a ping or a close from the proxy", async {
        loop {
            match ws.next().await {
                Some(Ok(m @ (Message::Ping(_) | Message::Close(_)))) => return Ok(m),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(anyhow::anyhow!("tunnel error: {e}")),
                None => return Err(anyhow::anyhow!("tunnel ended without a Close")),
            }
        }
    })
    .await?
}

fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(f)) => Some(f.code.into()),
        _ => None,
    }
}

/// Scenario 22. What a WebSocketPolicy brings to an HTTPRoute, end to end: the
/// proxy's keepalive pings seen by an idle client, `auth.jwt` refusing a missing
/// token with 401 and closing at the token's `exp` with 1008, and Close 1001 after
/// the policy's drain grace period when the route's backend is removed.
pub fn websocket_behaviour(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let c = &env.cluster;
        let ns = "s22";
        let pod = Backend::start("b-a", "192.0.2.20").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "svc")).await?;
        c.apply(slice(ns, "svc-1", "svc", &[Ready(&pod)])).await?;
        let key = crate::auth::Key::new("s22")?;
        c.apply(crate::auth::jwks_secret(ns, "jwks", &key)).await?;
        c.apply(
            json!({"apiVersion": GW_API, "kind": "GatewayClass", "metadata": {"name": "wsgate-s22"},
            "spec": {"controllerName": "wsgate.io/gateway-controller"}}),
        )
        .await?;
        c.apply(json!({"apiVersion": GW_API, "kind": "Gateway", "metadata": {"name": "behave", "namespace": ns},
            "spec": {"gatewayClassName": "wsgate-s22", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}))
            .await?;
        c.apply(json!({"apiVersion": GW_API, "kind": "HTTPRoute", "metadata": {"name": "live", "namespace": ns},
            "spec": {"parentRefs": [{"name": "behave"}], "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}}))
            .await?;
        c.apply(json!({"apiVersion": "wsgate.io/v1alpha1", "kind": "WebSocketPolicy",
            "metadata": {"name": "live", "namespace": ns},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "live"}],
                "keepalive": {"interval": "1s", "timeout": "5s"},
                "drain": {"gracePeriod": "1s"},
                "auth": {"jwt": {"issuer": crate::auth::ISSUER, "audiences": ["chat"],
                    "jwks": {"secretName": "jwks", "key": "jwks.json"},
                    "tokenFrom": [{"query": "access_token"}]}}}}))
            .await?;
        let at = SocketAddr::new(env.gw.listen.ip(), data_plane_port(c, "behave").await?);
        eventually(
            20.0,
            "the policy's auth.jwt in force: no token gets 401",
            || async { (raw_upgrade(at, "/").await.ok()?.err()? == 401).then_some(()) },
        )
        .await?;

        // An idle client sees the proxy's pings, then Close 1008 at the token's exp.
        let token = key.token_for(4)?;
        let mut ws = raw_upgrade(at, &format!("/?access_token={token}"))
            .await?
            .map_err(|s| anyhow::anyhow!("a valid token refused with {s}"))?;
        let first = next_control(&mut ws, 3.0).await?;
        ensure!(
            matches!(first, Message::Ping(_)),
            "an idle client saw {first:?} before any ping"
        );
        let closed = loop {
            let m = next_control(&mut ws, 8.0).await?;
            if let Message::Close(_) = m {
                break m;
            }
        };
        ensure!(
            close_code(&closed) == Some(1008),
            "at exp the tunnel closed with {closed:?}"
        );

        // The backend removed from the route: Close 1001 after the grace period.
        let mut ws = raw_upgrade(at, &format!("/?access_token={}", key.token_for(600)?))
            .await?
            .map_err(|s| anyhow::anyhow!("a valid token refused with {s}"))?;
        c.delete("discovery.k8s.io/v1", "EndpointSlice", Some(ns), "svc-1")
            .await?;
        let t0 = std::time::Instant::now();
        let closed = loop {
            let m = next_control(&mut ws, 10.0).await?;
            if let Message::Close(_) = m {
                break m;
            }
        };
        ensure!(
            close_code(&closed) == Some(1001),
            "the drained tunnel closed with {closed:?}"
        );
        println!("    pings seen idle; Close 1008 at exp; Close 1001 {:.1}s after the backend went (grace 1s)", t0.elapsed().as_secs_f64());

        c.delete(GW_API, "Gateway", Some(ns), "behave").await?;
        c.delete(GW_API, "GatewayClass", None, "wsgate-s22").await?;
        Ok(())
    })
}
