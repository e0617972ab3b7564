use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use http::{HeaderMap, HeaderValue, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use super::*;

struct Signer {
    alg: Algorithm,
    kid: &'static str,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn ed25519(kid: &'static str) -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Signer {
        alg: Algorithm::EdDSA,
        kid,
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                    "x": B64.encode(pair.public_key().as_ref())}),
    }
}

fn p256(kid: &'static str) -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    Signer {
        alg: Algorithm::ES256,
        kid,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                    "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])}),
    }
}

impl Signer {
    fn sign(&self, claims: serde_json::Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.into());
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn auth(signers: &[&Signer], sources: Vec<TokenSource>) -> JwtAuth {
    let jwks = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
    JwtAuth {
        issuer: "https://id.example.com".into(),
        audiences: vec!["chat".into()],
        keys: Keys::Fixed(Arc::new(
            KeySet::parse(jwks.to_string().as_bytes()).unwrap(),
        )),
        sources,
        claims_to_headers: vec![("sub".into(), HeaderName::from_static("x-user-id"))],
        close_on_expiry: true,
        clock_skew: Duration::from_secs(30),
    }
}

fn claims(exp_in: f64) -> serde_json::Value {
    json!({"iss": "https://id.example.com", "aud": "chat", "sub": "alice",
           "exp": (now() + exp_in) as u64, "iat": now() as u64})
}

fn check(a: &JwtAuth, token: &str) -> Result<(), Denial> {
    let Keys::Fixed(keys) = &a.keys else {
        unreachable!()
    };
    a.verify(keys, token, SystemTime::now()).map(|_| ())
}

#[test]
fn claims_and_time_rules() {
    let (ed, ec, other) = (ed25519("ed"), p256("ec"), ed25519("ed"));
    let a = auth(&[&ed, &ec], vec![]);
    assert_eq!(check(&a, &ed.sign(claims(60.0))), Ok(()));
    assert_eq!(check(&a, &ec.sign(claims(60.0))), Ok(()));
    assert!(matches!(
        check(&a, &other.sign(claims(60.0))),
        Err(Denial::Invalid(_))
    ));
    assert!(matches!(check(&a, "not.a.jwt"), Err(Denial::Invalid(_))));
    let mut c = claims(60.0);
    c["iss"] = json!("https://evil.example.com");
    assert!(matches!(check(&a, &ed.sign(c)), Err(Denial::Invalid(_))));
    let mut c = claims(60.0);
    c["aud"] = json!(["billing", "chat"]);
    assert_eq!(check(&a, &ed.sign(c)), Ok(()));
    let mut c = claims(60.0);
    c["aud"] = json!("billing");
    assert_eq!(check(&a, &ed.sign(c)), Err(Denial::Forbidden));
    // `exp` has no leeway: one second in the past is expired.
    assert_eq!(check(&a, &ed.sign(claims(-1.0))), Err(Denial::Expired));
    // `nbf` within the skew passes; beyond it, the token is not yet valid.
    let mut c = claims(60.0);
    c["nbf"] = json!((now() + 20.0) as u64);
    assert_eq!(check(&a, &ed.sign(c)), Ok(()));
    let mut c = claims(120.0);
    c["nbf"] = json!((now() + 60.0) as u64);
    assert!(matches!(check(&a, &ed.sign(c)), Err(Denial::Invalid(_))));
    let mut c = claims(60.0);
    c.as_object_mut().unwrap().remove("exp");
    assert!(matches!(check(&a, &ed.sign(c)), Err(Denial::Invalid(_))));
}

fn request(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[tokio::test]
async fn each_source_is_removed_alone() {
    let ed = ed25519("ed");
    let token = ed.sign(claims(60.0));
    let a = auth(
        &[&ed],
        vec![
            TokenSource::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            },
            TokenSource::Query("access_token".into()),
            TokenSource::Cookie("token".into()),
            TokenSource::Subprotocol("access_token.".into()),
        ],
    );

    // A Basic header is not this source: the query parameter is used, and only it goes.
    let mut h = request(&[("authorization", "Basic dTpw"), ("x-user-id", "mallory")]);
    let mut uri: Uri = format!("/chat?room=1&access_token={token}&x=2")
        .parse()
        .unwrap();
    let v = a.authenticate(&mut h, &mut uri).await.unwrap();
    assert_eq!(uri.to_string(), "/chat?room=1&x=2");
    assert_eq!(h["authorization"], "Basic dTpw");
    assert_eq!(h["x-user-id"], "alice");
    assert!(v.expires.is_some() && v.echo_protocol.is_none());

    let mut h = request(&[("cookie", &format!("a=1; token={token}; b=2"))]);
    let mut uri: Uri = "/chat".parse().unwrap();
    a.authenticate(&mut h, &mut uri).await.unwrap();
    assert_eq!(h["cookie"], "a=1; b=2");

    let mut h = request(&[(
        "sec-websocket-protocol",
        &format!("access_token.{token}, chat"),
    )]);
    let v = a.authenticate(&mut h, &mut uri).await.unwrap();
    assert_eq!(h["sec-websocket-protocol"], "chat");
    assert!(v.echo_protocol.is_none());

    let mut h = request(&[("sec-websocket-protocol", &format!("access_token.{token}"))]);
    let v = a.authenticate(&mut h, &mut uri).await.unwrap();
    assert!(!h.contains_key("sec-websocket-protocol"));
    assert_eq!(
        v.echo_protocol.unwrap(),
        format!("access_token.{token}").as_str()
    );

    let mut h = request(&[("authorization", &format!("bearer {token}"))]);
    a.authenticate(&mut h, &mut uri).await.unwrap();
    assert!(!h.contains_key("authorization"));

    let mut h = request(&[("x-user-id", "mallory")]);
    assert_eq!(
        a.authenticate(&mut h, &mut uri).await.unwrap_err(),
        Denial::Missing
    );
    assert!(
        !h.contains_key("x-user-id"),
        "client copies of claim headers go"
    );
}

#[test]
fn unusable_keys_are_left_out() {
    let ed = ed25519("ed");
    let set = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-256", "use": "enc", "x": "AA", "y": "AA"},
        {"kty": "weird"},
        ed.jwk,
    ]});
    let keys = KeySet::parse(set.to_string().as_bytes()).unwrap();
    assert_eq!(keys.candidates(None, Algorithm::EdDSA).count(), 1);
    assert_eq!(keys.candidates(None, Algorithm::HS256).count(), 0);
    assert!(KeySet::parse(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
}

#[tokio::test]
async fn an_exp_past_what_a_clock_holds_means_never_not_a_panic() {
    use crate::proxy::registry::{ClientProtocol, Registry};
    use crate::proxy::route::policy::Balance;
    use crate::proxy::route::table::Route;
    let ed = ed25519("ed");
    let a = auth(&[&ed], vec![TokenSource::Query("t".into())]);
    let registry = Registry::default();
    let route = Arc::new(Route::for_test(
        "r",
        Balance::RoundRobin,
        &[("127.0.0.1:1", 1)],
    ));
    for exp in [9e18, 1.8e19, 1e300, f64::MAX] {
        let token = ed.sign(json!({"iss": "https://id.example.com", "aud": "chat", "exp": exp}));
        let mut h = HeaderMap::new();
        let mut uri: Uri = format!("/chat?t={token}").parse().unwrap();
        let v = a.authenticate(&mut h, &mut uri).await.unwrap();
        // Whatever it is, the tunnel's registry holds it without overflowing.
        if let Some(at) = v.expires {
            let t = registry.open(
                route.clone(),
                crate::proxy::client::ClientAddr::of(&crate::proxy::client::ConnAddr::direct(
                    "127.0.0.1:1".parse().unwrap(),
                    false,
                )),
                ClientProtocol::Http1,
                "127.0.0.1:1".into(),
                None,
            );
            registry.expire_at(&t, at);
            assert_eq!(t.close_deadline(registry.epoch()), None, "exp {exp}");
        }
    }
}
