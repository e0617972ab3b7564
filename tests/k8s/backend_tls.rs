//! Scenario about `backendTLS` references: a CA ConfigMap and a client certificate
//! Secret that appear after the route.

use anyhow::ensure;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;

use crate::objects::{
    condition, has, namespace, programmed, route, service, tls_secret, wait_status,
};
use crate::{Env, Run};

/// Scenario 12: a route whose CA ConfigMap is missing is `ResolvedRefs=False` naming
/// it; so is one whose client certificate Secret is missing; created → programmed.
pub fn missing_backend_tls_refs(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let c = &env.cluster;
        let ns = "s14";
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "chat")).await?;
        let spec = json!({"hostnames": ["s14.test"], "backends": [{"service": {"name": "chat", "port": 80}}],
            "backendTLS": {"caCertificateRefs": [{"kind": "ConfigMap", "name": "chat-ca", "key": "ca.crt"}],
                           "clientCertificateRef": {"name": "wsgate-client"}}});
        c.apply(route(ns, "chat", spec)).await?;
        let message = |r: &serde_json::Value| {
            condition(r, "ResolvedRefs")
                .map(|c| c.message)
                .unwrap_or_default()
        };
        let r = wait_status(c, ns, "chat", 20.0, "ResolvedRefs=False", |r| {
            has(r, "ResolvedRefs", "False", None)
        })
        .await?;
        let msg = message(&r);
        ensure!(
            msg.contains("ConfigMap s14/chat-ca not found"),
            "ResolvedRefs message does not name the CA ConfigMap: {msg:?}"
        );

        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "s14 CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        c.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"namespace": ns, "name": "chat-ca"}, "data": {"ca.crt": ca.pem()}}))
            .await?;
        let r = wait_status(c, ns, "chat", 20.0, "the client Secret named", |r| {
            has(r, "ResolvedRefs", "False", None) && message(r).contains("wsgate-client")
        })
        .await?;
        let msg = message(&r);
        ensure!(
            msg.contains("Secret s14/wsgate-client not found"),
            "ResolvedRefs message does not name the client Secret: {msg:?}"
        );

        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["wsgate".to_owned()])?;
        leaf.distinguished_name.push(DnType::CommonName, "wsgate");
        let cert = leaf.signed_by(&key, &ca)?;
        c.apply(tls_secret(
            ns,
            "wsgate-client",
            &cert.pem(),
            &key.serialize_pem(),
        ))
        .await?;
        wait_status(
            c,
            ns,
            "chat",
            20.0,
            "programmed once both refs exist",
            programmed,
        )
        .await?;
        println!("    missing CA ConfigMap, then client Secret: ResolvedRefs=False naming each; created → True");
        Ok(())
    })
}
