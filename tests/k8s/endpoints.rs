//! Scenarios about what routes point at: endpoints leaving an EndpointSlice, and
//! Services and TLS Secrets that appear (and rotate) after the route.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::future::join_all;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::CertificateDer;
use serde_json::json;

use crate::backend::Backend;
use crate::client::{open, refused_eventually, tls_connect, upgrade_eventually, upgrade_tls};
use crate::objects::{
    condition, has, namespace, programmed, route, service, slice, tls_secret, wait_status,
    Endpoint::{Ready, Terminating},
};
use crate::{eventually, Env, Run};

/// Scenario 4: An endpoint leaves the slice: new tunnels avoid it at once, its open tunnels
/// get Close 1001 after `drain.gracePeriod` (not before), the other endpoint's
/// tunnels are untouched. A terminating endpoint gets no new tunnels.
pub fn endpoint_drain(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, env.gw.listen);
        let ns = "s4";
        let a = Backend::start("s4-a", "192.0.2.5").await?;
        let b = Backend::start("s4-b", "192.0.2.6").await?;
        let term = Backend::start("s4-terminating", "192.0.2.7").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "pods")).await?;
        c.apply(slice(ns, "pods-1", "pods", &[Ready(&a), Ready(&b)]))
            .await?;
        let spec = json!({"hostnames": ["s4.test"], "backends": [{"service": {"name": "pods", "port": "ws"}}],
            "drain": {"gracePeriod": "2s"}});
        c.apply(route(ns, "drain", spec)).await?;
        wait_status(c, ns, "drain", 20.0, "programmed with 2 backends", |r| {
            programmed(r) && r["status"]["backends"] == 2
        })
        .await?;
        let mut on_a = Vec::new();
        let mut on_b = Vec::new();
        upgrade_eventually(gw, "s4.test", "/", 10.0).await?;
        for _ in 0..6 {
            let t = open(gw, "s4.test", "/").await?;
            if t.backend == "s4-a" {
                on_a.push(t)
            } else {
                on_b.push(t)
            }
        }
        ensure!(
            !on_a.is_empty() && !on_b.is_empty(),
            "6 tunnels: {} on s4-a, {} on s4-b",
            on_a.len(),
            on_b.len()
        );

        // s4-a leaves the slice.
        let t0 = Instant::now();
        c.apply(slice(ns, "pods-1", "pods", &[Ready(&b)])).await?;
        wait_status(c, ns, "drain", 10.0, "1 backend after s4-a left", |r| {
            r["status"]["backends"] == 1
        })
        .await?;
        let applied = t0.elapsed();
        // Inside the grace period its tunnels still carry messages (on a machine so
        // busy that the change took most of the grace to land, only the close times
        // below can show the grace was kept).
        if applied < Duration::from_millis(1500) {
            for t in &mut on_a {
                t.echo()
                    .await
                    .context("a tunnel to the removed endpoint, inside its grace period")?;
            }
        } else {
            println!(
                "    (the change took {applied:?} to land; not echoing inside the grace period)"
            );
        }
        for _ in 0..6 {
            let t = open(gw, "s4.test", "/").await?;
            ensure!(
                t.backend == "s4-b",
                "a new tunnel went to {} after it left the slice",
                t.backend
            );
        }
        let limit = Duration::from_secs(8)
            .saturating_sub(t0.elapsed())
            .as_secs_f64();
        let closes = join_all(on_a.iter_mut().map(|t| t.closed_within(limit))).await;
        let mut at = Vec::new();
        for closed in closes {
            let closed = closed
                .context("a tunnel to the removed endpoint was still open 8s after the change")?;
            ensure!(
                closed.code == Some(1001),
                "a drained tunnel closed with {:?}, want 1001",
                closed.code
            );
            let after = closed.at - t0;
            ensure!(
                after >= Duration::from_secs(2),
                "a drained tunnel closed {after:?} after the change, before the 2s grace"
            );
            at.push(after.as_secs_f64());
        }
        for t in &mut on_b {
            t.echo()
                .await
                .context("a tunnel to the remaining endpoint after the drain")?;
        }
        println!(
            "    s4-a removed (applied in {:.0} ms): {} tunnels closed 1001 after {:.2}–{:.2}s (grace 2s); {} on s4-b untouched",
            applied.as_secs_f64() * 1000.0,
            at.len(),
            at.iter().cloned().fold(f64::MAX, f64::min),
            at.iter().cloned().fold(0.0, f64::max),
            on_b.len()
        );

        // s4-a back, and a terminating endpoint: it gets nothing new.
        c.apply(slice(
            ns,
            "pods-1",
            "pods",
            &[Ready(&a), Ready(&b), Terminating(&term)],
        ))
        .await?;
        wait_status(
            c,
            ns,
            "drain",
            10.0,
            "2 backends (terminating one excluded)",
            |r| r["status"]["backends"] == 2,
        )
        .await?;
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(open(gw, "s4.test", "/").await?.backend);
        }
        ensure!(
            !seen.iter().any(|n| n == "s4-terminating"),
            "a terminating endpoint got a new tunnel: {seen:?}"
        );
        ensure!(
            seen.iter().any(|n| n == "s4-a") && seen.iter().any(|n| n == "s4-b"),
            "new tunnels: {seen:?}"
        );
        println!("    terminating endpoint got none of 8 new tunnels");
        Ok(())
    })
}

/// A test CA and certificates it signs.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Result<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wsgate k8s test CA");
        Ok(Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        AsRef::<rcgen::Certificate>::as_ref(&self.ca).der().clone()
    }

    /// A fresh key and certificate for `host`: (cert PEM, key PEM, cert DER).
    pub fn leaf(&self, host: &str) -> Result<(String, String, CertificateDer<'static>)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, host);
        let cert = params.signed_by(&key, &self.ca)?;
        Ok((cert.pem(), key.serialize_pem(), cert.der().clone()))
    }
}

/// Scenario 7: A route naming a missing Service, then a missing TLS Secret: ResolvedRefs
/// False naming it; created → True and traffic (ws, then wss); the Secret rotated →
/// the next handshake presents the new certificate.
pub fn missing_refs(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, &env.gw);
        let ns = "s7";
        let pod = Backend::start("s7", "192.0.2.10").await?;
        c.apply(namespace(ns)).await?;
        let spec = json!({"hostnames": ["s7.test"], "backends": [{"service": {"name": "late", "port": 80}}]});
        c.apply(route(ns, "late", spec)).await?;
        let r = wait_status(c, ns, "late", 20.0, "ResolvedRefs=False", |r| {
            has(r, "ResolvedRefs", "False", None)
        })
        .await?;
        let msg = condition(&r, "ResolvedRefs")
            .map(|c| c.message)
            .unwrap_or_default();
        ensure!(
            msg.contains("Service s7/late"),
            "ResolvedRefs message does not name the Service: {msg:?}"
        );
        ensure!(
            has(&r, "Accepted", "True", None) && has(&r, "Programmed", "False", None),
            "late: {}",
            crate::objects::describe(&r)
        );
        refused_eventually(gw.listen, "s7.test", "/", 404, 5.0)
            .await
            .context("a route with a missing Service")?;
        c.apply(service(ns, "late")).await?;
        c.apply(slice(ns, "late-1", "late", &[Ready(&pod)])).await?;
        wait_status(
            c,
            ns,
            "late",
            20.0,
            "programmed once the Service exists",
            programmed,
        )
        .await?;
        let t = upgrade_eventually(gw.listen, "s7.test", "/", 10.0).await?;
        ensure!(t.backend == "s7", "traffic reached {}", t.backend);
        println!("    missing Service: ResolvedRefs=False ({msg}); created → True, traffic flows");

        let host = "secure.s7.test";
        let pki = Pki::new()?;
        let ca = pki.ca_der();
        let spec = json!({"hostnames": [host], "backends": [{"service": {"name": "late", "port": 80}}],
            "tls": {"secretName": "secure-tls"}});
        c.apply(route(ns, "secure", spec)).await?;
        let r = wait_status(c, ns, "secure", 20.0, "ResolvedRefs=False", |r| {
            has(r, "ResolvedRefs", "False", None)
        })
        .await?;
        let msg = condition(&r, "ResolvedRefs")
            .map(|c| c.message)
            .unwrap_or_default();
        ensure!(
            msg.contains("s7/secure-tls"),
            "ResolvedRefs message does not name the Secret: {msg:?}"
        );
        let (crt1, key1, der1) = pki.leaf(host)?;
        c.apply(tls_secret(ns, "secure-tls", &crt1, &key1)).await?;
        wait_status(
            c,
            ns,
            "secure",
            20.0,
            "programmed once the Secret exists",
            programmed,
        )
        .await?;
        let (served, tunnel) = upgrade_tls(gw.tls, host, "/", &ca).await?;
        ensure!(
            served == der1,
            "wss handshake presented another certificate than the Secret's"
        );
        match tunnel {
            Ok(t) => ensure!(t.backend == "s7", "wss reached {}", t.backend),
            Err(s) => bail!("wss upgrade refused with {s}"),
        }

        let (crt2, key2, der2) = pki.leaf(host)?;
        let t0 = Instant::now();
        c.apply(tls_secret(ns, "secure-tls", &crt2, &key2)).await?;
        eventually(
            20.0,
            "a handshake presenting the rotated certificate",
            || async {
                let tls = tls_connect(gw.tls, host, &ca).await.ok()?;
                let served = tls.get_ref().1.peer_certificates()?.first()?.clone();
                (served == der2).then_some(())
            },
        )
        .await?;
        let rotated = t0.elapsed();
        let (served, tunnel) = upgrade_tls(gw.tls, host, "/", &ca).await?;
        ensure!(
            served == der2,
            "a later handshake went back to the old certificate"
        );
        ensure!(
            tunnel.is_ok(),
            "wss upgrade after rotation refused: {:?}",
            tunnel.err()
        );
        println!(
            "    missing Secret: ResolvedRefs=False ({msg}); created → wss works; rotated → new certificate served after {:.0} ms",
            rotated.as_secs_f64() * 1000.0
        );
        Ok(())
    })
}
