//! Secrets and ConfigMaps, read one by one by name — only those a route names, only
//! in the route's namespace — and read again every `--refs-refresh`.
//!
//! Why not a watch: RBAC cannot narrow `list`/`watch` to the objects routes name,
//! so a watch needs `list` on every Secret of every namespace, and the process that
//! parses internet traffic would hold all of them (the IngressNightmare lesson). A
//! `get` names one object: the token cannot enumerate Secrets, and the process
//! caches only what it serves. The price is a delay of up to one refresh period
//! before a rotated certificate or key set is served.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;

/// Reads in flight at once: a thousand routes with certificates must not become a
/// thousand simultaneous requests to the API server every refresh.
const CONCURRENT_READS: usize = 16;
/// One read's bound: an API server that stopped answering must not hold up the
/// rebuild (the last good copy keeps serving).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The two kinds routes name by reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    /// A Secret (`tls.secretName`, JWKS, backend TLS CAs and client certificates).
    Secret,
    /// A ConfigMap (JWKS, backend TLS CAs).
    ConfigMap,
}

/// One referenced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefKey {
    /// Its kind.
    pub kind: RefKind,
    /// The route's (and so the object's) namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What the last read of a referenced object found.
#[derive(Clone, Debug)]
pub enum Fetched {
    /// The Secret.
    Secret(Arc<Secret>),
    /// The ConfigMap.
    ConfigMap(Arc<ConfigMap>),
    /// It does not exist.
    Missing,
    /// It could not be read (the API server is away, or RBAC said no).
    Failed(String),
}

impl Fetched {
    /// What distinguishes one read from the next: a change here rebuilds the routes.
    fn version(&self) -> String {
        match self {
            Fetched::Secret(s) => s.metadata.resource_version.clone().unwrap_or_default(),
            Fetched::ConfigMap(c) => c.metadata.resource_version.clone().unwrap_or_default(),
            Fetched::Missing => "missing".into(),
            // A read that failed keeps serving what the table already has.
            Fetched::Failed(_) => "failed".into(),
        }
    }
}

/// The objects routes name, as last read.
pub type Snapshot = HashMap<RefKey, Fetched>;

/// The reader and its cache.
pub struct Refs {
    client: kube::Client,
    cache: Mutex<Snapshot>,
}

impl Refs {
    /// An empty cache reading through `client`.
    pub fn new(client: kube::Client) -> Self {
        Refs {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn get(&self, key: &RefKey) -> Fetched {
        let ns = &key.namespace;
        let read = async {
            match key.kind {
                RefKind::Secret => Api::<Secret>::namespaced(self.client.clone(), ns)
                    .get_opt(&key.name)
                    .await
                    .map(|o| o.map(|s| Fetched::Secret(Arc::new(s)))),
                RefKind::ConfigMap => Api::<ConfigMap>::namespaced(self.client.clone(), ns)
                    .get_opt(&key.name)
                    .await
                    .map(|o| o.map(|c| Fetched::ConfigMap(Arc::new(c)))),
            }
            .map_err(|e| e.to_string())
        };
        let res = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {READ_TIMEOUT:?}")));
        match res {
            Ok(Some(f)) => f,
            Ok(None) => Fetched::Missing,
            Err(e) => {
                tracing::warn!(kind = ?key.kind, namespace = %ns, name = %key.name, error = %e, "cannot read a referenced object");
                Fetched::Failed(e)
            }
        }
    }

    /// Reads `keys`, a few at a time; the results in the same order.
    async fn read_all(&self, keys: &[RefKey]) -> Vec<Fetched> {
        let reads: Vec<_> = keys.iter().map(|k| self.get(k)).collect();
        stream::iter(reads)
            .buffered(CONCURRENT_READS)
            .collect()
            .await
    }

    /// Reads the objects of `wanted` not read yet and forgets those no route names
    /// any more; returns the objects of `wanted`.
    pub async fn ensure(&self, wanted: &BTreeSet<RefKey>) -> Snapshot {
        let missing: Vec<RefKey> = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .iter()
                .filter(|k| !cache.contains_key(*k))
                .cloned()
                .collect()
        };
        let got = self.read_all(&missing).await;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.extend(missing.into_iter().zip(got));
        cache.retain(|k, _| wanted.contains(k));
        cache.clone()
    }

    /// Reads every cached object again; true when any of them changed (then the
    /// routes are rebuilt). A failed read keeps the last good copy.
    pub async fn refresh(&self) -> bool {
        let keys: Vec<RefKey> = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.keys().cloned().collect()
        };
        let got = self.read_all(&keys).await;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for (k, new) in keys.into_iter().zip(got) {
            let Some(old) = cache.get_mut(&k) else {
                continue;
            };
            if matches!(new, Fetched::Failed(_)) && !matches!(old, Fetched::Failed(_)) {
                continue;
            }
            if old.version() != new.version() {
                changed = true;
                *old = new;
            }
        }
        changed
    }
}
