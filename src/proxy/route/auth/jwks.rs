//! JSON Web Key Sets (RFC 7517): the public keys a route's tokens are checked
//! against. A set read from a file, Secret or ConfigMap is fixed for the life of
//! the compiled route (a change recompiles the table); a set behind a URI is
//! fetched and refreshed by a task, keeping the last good set when a fetch fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Largest JWKS document accepted from a URI.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// One fetch of a remote JWKS may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A request waits this long for a remote JWKS's first fetch.
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(5);

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One usable signing key.
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The usable signature keys of a JWKS. Symmetric (`oct`) keys, encryption keys
/// and curves the verifier lacks are left out: a public key set has no business
/// holding shared secrets.
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`); fails when no usable key is in it.
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let keys: Vec<Key> = doc.keys.into_iter().filter_map(usable).collect();
        if keys.is_empty() {
            return Err(
                "the JWKS holds no usable signing key (RSA, EC P-256/P-384 or Ed25519)".into(),
            );
        }
        Ok(KeySet { keys })
    }

    /// The keys that may have signed a token with this header: the one with the
    /// token's `kid` when it names one, else every key of the algorithm.
    pub(super) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.algorithms.contains(&alg))
            .filter(move |k| kid.is_none() || k.kid.as_deref() == kid)
            .map(|k| &k.key)
    }
}

/// A key of the set, or `None` when it cannot verify signatures here.
fn usable(raw: Value) -> Option<Key> {
    let declared = raw.get("alg").and_then(Value::as_str).map(str::to_owned);
    if raw
        .get("use")
        .and_then(Value::as_str)
        .is_some_and(|u| u != "sig")
    {
        return None;
    }
    let jwk: Jwk = serde_json::from_value(raw).ok()?;
    let algorithms: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    // A key that declares its algorithm is used for that one only (RFC 7517 §4.4).
    let algorithms = match declared {
        Some(d) => algorithms
            .into_iter()
            .filter(|a| format!("{a:?}") == d)
            .collect(),
        None => algorithms,
    };
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id,
        algorithms,
        key,
    })
}

/// Where a route's keys are.
#[derive(Clone, Debug)]
pub enum Keys {
    /// Read when the route was compiled (file, Secret or ConfigMap).
    Fixed(Arc<KeySet>),
    /// Fetched from a URI and refreshed.
    Remote(Arc<RemoteJwks>),
}

impl Keys {
    /// The current set; `None` while a remote set has never been fetched.
    pub async fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            Keys::Fixed(k) => Some(k.clone()),
            Keys::Remote(r) => r.current().await,
        }
    }
}

/// A JWKS behind an `https` URI, refreshed every `refresh`; a failed fetch keeps
/// the last good set. One per URI in the process, fetched once however many routes
/// (and reloads) name it, at the shortest `refresh` any of them asked for; the
/// refresh task ends when the last route lets go.
#[derive(Debug)]
pub struct RemoteJwks {
    uri: http::Uri,
    /// Milliseconds; lowered when another route asks for a shorter refresh.
    refresh_ms: AtomicU64,
    keys: tokio::sync::watch::Sender<Option<Arc<KeySet>>>,
    started: std::sync::Once,
}

type RemoteMap = Mutex<HashMap<String, Weak<RemoteJwks>>>;

impl RemoteJwks {
    /// The shared source for `uri`.
    pub fn shared(uri: http::Uri, refresh: Duration) -> Arc<RemoteJwks> {
        static ALL: OnceLock<RemoteMap> = OnceLock::new();
        let mut all = ALL.get_or_init(Default::default).lock().expect("lock");
        all.retain(|_, w| w.strong_count() > 0);
        let key = uri.to_string();
        let ms = u64::try_from(refresh.as_millis()).unwrap_or(u64::MAX);
        if let Some(r) = all.get(&key).and_then(Weak::upgrade) {
            r.refresh_ms.fetch_min(ms, Relaxed);
            return r;
        }
        let r = Arc::new(RemoteJwks {
            uri,
            refresh_ms: AtomicU64::new(ms),
            keys: tokio::sync::watch::channel(None).0,
            started: std::sync::Once::new(),
        });
        all.insert(key, Arc::downgrade(&r));
        r
    }

    /// Starts the refresh task (once), from inside the runtime.
    pub fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            tokio::spawn(refresh_loop(Arc::downgrade(self)));
        });
    }

    async fn current(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        self.start();
        if let Some(k) = self.keys.borrow().clone() {
            return Some(k);
        }
        let mut rx = self.keys.subscribe();
        let first = tokio::time::timeout(FIRST_FETCH_WAIT, rx.wait_for(Option::is_some)).await;
        // The binding ends the `watch::Ref` borrow before `rx` drops (clippy's
        // let_and_return does not see that).
        #[allow(clippy::let_and_return)]
        let keys = first.ok()?.ok()?.clone();
        keys
    }
}

async fn refresh_loop(me: Weak<RemoteJwks>) {
    let ring = crate::proxy::crypto::provider;
    let https = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(ring())
    {
        Ok(b) => b,
        Err(e) => {
            // Every fetch then fails verification and says so.
            tracing::warn!(error = %e, "no system root certificates; JWKS URIs cannot be verified");
            let config = rustls::ClientConfig::builder_with_provider(ring())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = https.https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    loop {
        let Some(src) = me.upgrade() else { return };
        let uri = src.uri.clone();
        let refresh = Duration::from_millis(src.refresh_ms.load(Relaxed));
        drop(src);
        let result = tokio::time::timeout(FETCH_TIMEOUT, fetch(&client, uri.clone())).await;
        let Some(src) = me.upgrade() else { return };
        match result.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(set) => {
                tracing::debug!(%uri, keys = ?set, "JWKS fetched");
                src.keys.send_replace(Some(Arc::new(set)));
            }
            Err(e) => {
                tracing::warn!(%uri, error = %e, "JWKS fetch failed; keeping the last good key set")
            }
        }
        drop(src);
        tokio::time::sleep(refresh).await;
    }
}

async fn fetch<C>(
    client: &hyper_util::client::legacy::Client<C, Empty<Bytes>>,
    uri: http::Uri,
) -> Result<KeySet, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let resp = client
        .get(uri)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    KeySet::parse(&body)
}
