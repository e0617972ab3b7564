//! Scenario: `auth.jwt` with its JWKS in a Secret — a missing Secret is
//! `ResolvedRefs=False` naming it, the API server's CEL rules refuse a malformed
//! `jwks`, and a rotated Secret takes effect without a restart.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

use crate::backend::Backend;
use crate::client::{refused_eventually, upgrade_eventually};
use crate::objects::{
    condition, has, namespace, programmed, route, service, slice, wait_status, Endpoint::Ready,
};
use crate::{Env, Run};

pub const ISSUER: &str = "https://id.s12.test";

/// An Ed25519 signing key and its JWKS.
pub struct Key {
    kid: String,
    pkcs8: Vec<u8>,
    jwks: String,
}

impl Key {
    pub fn new(kid: &str) -> Result<Key> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("key generation"))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("key parse"))?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x}]});
        Ok(Key {
            kid: kid.into(),
            pkcs8: pkcs8.as_ref().to_vec(),
            jwks: jwks.to_string(),
        })
    }

    fn token(&self) -> Result<String> {
        self.token_for(600)
    }

    /// A token for `aud: chat` that expires in `secs`.
    pub fn token_for(&self, secs: u64) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(self.kid.clone());
        let claims = json!({"iss": ISSUER, "aud": "chat", "sub": "alice", "exp": now + secs});
        Ok(jsonwebtoken::encode(
            &h,
            &claims,
            &EncodingKey::from_ed_der(&self.pkcs8),
        )?)
    }
}

pub fn jwks_secret(ns: &str, name: &str, key: &Key) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
        "type": "Opaque", "data": {"jwks.json": STANDARD.encode(&key.jwks)}})
}

fn spec(host: &str, secret: &str) -> Value {
    json!({"hostnames": [host], "backends": [{"service": {"name": "chat", "port": 80}}],
        "auth": {"jwt": {"issuer": ISSUER, "audiences": ["chat"], "jwks": {"secretName": secret, "key": "jwks.json"},
            "tokenFrom": [{"query": "access_token"}]}}})
}

/// Scenario 12.
pub fn jwks_secret_refs(env: &mut Env) -> Run<'_> {
    Box::pin(async move {
        let (c, gw) = (&env.cluster, env.gw.listen);
        let ns = "s12";
        let pod = Backend::start("s12", "192.0.2.19").await?;
        c.apply(namespace(ns)).await?;
        c.apply(service(ns, "chat")).await?;
        c.apply(slice(ns, "chat-1", "chat", &[Ready(&pod)])).await?;

        // CEL: a jwks naming two sources is refused at apply time.
        let mut bad = spec("bad.s12.test", "jwks");
        bad["auth"]["jwt"]["jwks"]["uri"] = json!("http://idp.s12.test/jwks");
        let refused = c.apply(route(ns, "bad", bad)).await;
        let err = format!(
            "{:#}",
            refused
                .err()
                .context("a jwks with secretName and uri was accepted")?
        );
        ensure!(
            err.contains("set exactly one of secretName, configMapName, file, uri"),
            "{err}"
        );

        c.apply(route(ns, "missing", spec("missing.s12.test", "nope")))
            .await?;
        let r = wait_status(c, ns, "missing", 20.0, "ResolvedRefs=False", |r| {
            has(r, "ResolvedRefs", "False", None)
        })
        .await?;
        let msg = condition(&r, "ResolvedRefs")
            .map(|c| c.message)
            .unwrap_or_default();
        ensure!(
            msg.contains("Secret s12/nope"),
            "ResolvedRefs message does not name the Secret: {msg:?}"
        );

        let (k1, k2) = (Key::new("one")?, Key::new("two")?);
        c.apply(jwks_secret(ns, "jwks", &k1)).await?;
        c.apply(route(ns, "chat", spec("s12.test", "jwks"))).await?;
        wait_status(
            c,
            ns,
            "chat",
            20.0,
            "programmed with the JWKS Secret",
            programmed,
        )
        .await?;
        refused_eventually(gw, "s12.test", "/", 401, 10.0)
            .await
            .context("no token")?;
        let path = |k: &Key| -> Result<String> { Ok(format!("/?access_token={}", k.token()?)) };
        let t = upgrade_eventually(gw, "s12.test", &path(&k1)?, 10.0).await?;
        ensure!(t.backend == "s12", "traffic reached {}", t.backend);

        c.apply(jwks_secret(ns, "jwks", &k2)).await?;
        upgrade_eventually(gw, "s12.test", &path(&k2)?, 20.0)
            .await
            .context("a token of the rotated Secret's key")?;
        refused_eventually(gw, "s12.test", &path(&k1)?, 401, 10.0)
            .await
            .context("a token of the removed key")?;
        println!("    missing JWKS Secret: ResolvedRefs=False ({msg}); Secret rotation applied without restart");
        Ok(())
    })
}
