//! The Redis side of fleet limits: one connection (a multiplexed
//! `ConnectionManager`, a cluster connection, or the master a Sentinel names) and
//! the four Lua scripts that do all counting atomically inside Redis. Every call
//! here is bounded by the caller's deadline; nothing here decides what a failure
//! means (that is [`super::Fleet`]'s fallback).
//!
//! Layout (one hash per limited dimension, see `keys.rs`): fields `c:<replica>`
//! (that replica's open tunnels) and `t:<replica>` (its last heartbeat, in ms of
//! Redis `TIME`, so replicas' clocks never matter). A replica whose `t:` is older
//! than the stale bound is ignored and its fields deleted by the next acquire.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{RedisFuture, Script, Value};

/// How wsgate reaches Redis (`--limits-store-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    /// One Redis server (or a proxy in front of several).
    Single,
    /// Sentinels that name the master; the URL's path is the master's name.
    Sentinel,
    /// Redis Cluster; the URL lists seed nodes, comma-separated.
    Cluster,
}

impl StoreMode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreMode::Single => "single",
            StoreMode::Sentinel => "sentinel",
            StoreMode::Cluster => "cluster",
        }
    }
}

/// One of the connection kinds, behind one `ConnectionLike`.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Why a store call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection yet (Redis unreachable since start, or being resolved).
    #[error("not connected")]
    NotConnected,
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// Redis answered with an error or the connection failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// Check-and-increment over several dimension hashes at once (single and
/// Sentinel mode; Cluster calls it with one key at a time, since the dimensions
/// live on different slots). Returns `{1, live}` when every key was under its
/// limit and all were incremented, `{0, i}` naming the first key at its limit.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local stale = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 + i])
  local h = redis.call('HGETALL', key)
  local f = {}
  for j = 1, #h, 2 do f[h[j]] = h[j + 1] end
  local total = 0
  for name, v in pairs(f) do
    if string.sub(name, 1, 2) == 't:' then
      local r = string.sub(name, 3)
      if r ~= me and now - tonumber(v) > stale then
        redis.call('HDEL', key, name, 'c:' .. r)
      else
        total = total + tonumber(f['c:' .. r] or '0')
      end
    end
  end
  if total >= limit then return {0, i} end
end
for i, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'c:' .. me, 1)
  redis.call('HSET', key, 't:' .. me, now)
  redis.call('PEXPIRE', key, ttl)
end
return {1, 0}
";

/// One tunnel fewer on these keys; a count that reaches 0 leaves the hash.
const RELEASE: &str = r"
local me = ARGV[1]
for _, key in ipairs(KEYS) do
  local n = redis.call('HINCRBY', key, 'c:' .. me, -1)
  if n <= 0 then redis.call('HDEL', key, 'c:' .. me, 't:' .. me) end
end
return 1
";

/// The heartbeat: this replica's absolute count on each key (a lost release, a
/// restart of Redis or a FLUSHALL heal here), its timestamp refreshed.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local ttl = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[2 + i])
  if n > 0 then
    redis.call('HSET', key, 'c:' .. me, n, 't:' .. me, now)
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('HDEL', key, 'c:' .. me, 't:' .. me)
  end
end
return #KEYS
";

/// The replica registry: marks this replica live, drops stale ones, and returns
/// how many are live (the N of local-share while the store is away).
const REPLICAS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
local h = redis.call('HGETALL', KEYS[1])
local live = 0
for j = 1, #h, 2 do
  if now - tonumber(h[j + 1]) > stale then
    redis.call('HDEL', KEYS[1], h[j])
  else
    live = live + 1
  end
end
return live
";

/// A lease of a message budget: takes up to a chunk of what is left of the
/// current window (fixed windows of Redis `TIME`). Returns the messages and bytes
/// granted (-1 for a dimension without a budget) and the ms left in the window.
const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local window = tonumber(ARGV[1])
local w = tostring(math.floor(now / window))
if redis.call('HGET', key, 'w') ~= w then
  redis.call('HSET', key, 'w', w, 'm', ARGV[2], 'b', ARGV[3])
  redis.call('PEXPIRE', key, 2 * window)
end
local left = window - (now % window)
local m = tonumber(redis.call('HGET', key, 'm'))
local b = tonumber(redis.call('HGET', key, 'b'))
local cm = tonumber(ARGV[4])
local cb = tonumber(ARGV[5])
local tm = -1
local tb = -1
if m >= 0 then tm = math.min(cm, m) end
if b >= 0 then tb = math.min(cb, b) end
if tm == 0 or tb == 0 then return {0, 0, left} end
if tm > 0 then redis.call('HINCRBY', key, 'm', -tm) end
if tb > 0 then redis.call('HINCRBY', key, 'b', -tb) end
return {tm, tb, left}
";

/// The scripts, hashed once.
struct Scripts {
    acquire: Script,
    release: Script,
    heartbeat: Script,
    replicas: Script,
    lease: Script,
}

/// A connection to the limits store, established in the background: wsgate
/// starts and serves (on its fallback) while Redis is away.
pub struct Store {
    mode: StoreMode,
    url: String,
    conn: ArcSwapOption<Conn>,
    scripts: Scripts,
}

impl Store {
    /// A store that is not connected yet; [`Store::connect`] connects it.
    pub fn new(mode: StoreMode, url: &str) -> Store {
        Store {
            mode,
            url: url.to_owned(),
            conn: ArcSwapOption::empty(),
            scripts: Scripts {
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
                heartbeat: Script::new(HEARTBEAT),
                replicas: Script::new(REPLICAS),
                lease: Script::new(LEASE),
            },
        }
    }

    /// The mode this store was configured with.
    pub fn mode(&self) -> StoreMode {
        self.mode
    }

    /// Whether a connection exists (it may still be failing).
    pub fn connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// Checks the URL without connecting: what `--limits-store` must look like.
    pub fn check_url(mode: StoreMode, url: &str) -> Result<(), String> {
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        for u in &urls {
            let parsed = redis::parse_redis_url(u)
                .ok_or_else(|| format!("{u:?} is not a redis:// or rediss:// URL"))?;
            if !matches!(parsed.scheme(), "redis" | "rediss") {
                return Err(format!("{u:?}: the scheme must be redis or rediss"));
            }
        }
        match mode {
            StoreMode::Single if urls.len() > 1 => {
                Err("one URL in single mode (several are for sentinel or cluster)".into())
            }
            StoreMode::Sentinel if sentinel_master(urls[0]).is_none() => Err(
                "in sentinel mode the URL's path names the master, e.g. redis://sentinel:26379/mymaster"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// Connects (or reconnects, for Sentinel after a failover). The connection
    /// reconnects by itself afterwards; its own timeouts sit above the caller's
    /// deadline, which is what bounds a handshake.
    pub async fn connect(&self, timeout: Duration) -> Result<(), StoreError> {
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        // The connection's own limits: generous, since the per-call deadline is
        // what a handshake waits; a reconnect is tried in the background.
        let patience = (timeout * 40).max(Duration::from_secs(1));
        let conn = match self.mode {
            StoreMode::Single => {
                let client = redis::Client::open(urls[0])?;
                Conn::Single(manager(client, patience).await?)
            }
            StoreMode::Sentinel => {
                let master = sentinel_master(urls[0]).unwrap_or_default();
                let sentinels: Vec<String> = urls.iter().map(|u| strip_path(u)).collect();
                let mut info = redis::sentinel::SentinelNodeConnectionInfo::default();
                if urls[0].starts_with("rediss://") {
                    info = info.set_tls_mode(redis::TlsMode::Secure);
                }
                let mut sentinel = redis::sentinel::SentinelClient::build(
                    sentinels,
                    master,
                    Some(info),
                    redis::sentinel::SentinelServerType::Master,
                )?;
                let client = sentinel.async_get_client().await?;
                Conn::Single(manager(client, patience).await?)
            }
            StoreMode::Cluster => {
                let client = redis::cluster::ClusterClient::builder(urls)
                    .connection_timeout(patience)
                    .response_timeout(patience)
                    .retries(2)
                    .build()?;
                Conn::Cluster(client.get_async_connection().await?)
            }
        };
        self.conn.store(Some(Arc::new(conn)));
        Ok(())
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        self.conn
            .load_full()
            .map(|c| (*c).clone())
            .ok_or(StoreError::NotConnected)
    }

    /// Check-and-increment `keys` against `limits`: `Ok(None)` when all were
    /// under and are now counted, `Ok(Some(i))` for the first key at its limit.
    pub async fn acquire(
        &self,
        deadline: Duration,
        replica: &str,
        stale_ms: u64,
        keys: &[&str],
        limits: &[u64],
    ) -> Result<Option<usize>, StoreError> {
        let mut conn = self.conn()?;
        let mut inv = self.scripts.acquire.prepare_invoke();
        inv.arg(replica).arg(stale_ms).arg(ttl_ms(stale_ms));
        for (k, l) in keys.iter().zip(limits) {
            inv.key(*k).arg(*l);
        }
        let (ok, index): (i64, i64) = bounded(deadline, inv.invoke_async(&mut conn)).await?;
        Ok((ok == 0).then(|| usize::try_from(index - 1).unwrap_or(0)))
    }

    /// One tunnel fewer on `keys`.
    pub async fn release(
        &self,
        deadline: Duration,
        replica: &str,
        keys: &[&str],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut inv = self.scripts.release.prepare_invoke();
        inv.arg(replica);
        for k in keys {
            inv.key(*k);
        }
        let _: i64 = bounded(deadline, inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Writes this replica's absolute counts (0 removes its fields).
    pub async fn heartbeat(
        &self,
        deadline: Duration,
        replica: &str,
        stale_ms: u64,
        counts: &[(&str, u64)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.arg(replica).arg(ttl_ms(stale_ms));
        for (k, n) in counts {
            inv.key(*k).arg(*n);
        }
        let _: i64 = bounded(deadline, inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Marks this replica live in `key`; returns how many replicas are live.
    pub async fn replicas(
        &self,
        deadline: Duration,
        key: &str,
        replica: &str,
        stale_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn()?;
        let mut inv = self.scripts.replicas.key(key);
        inv.arg(replica).arg(stale_ms).arg(ttl_ms(stale_ms));
        bounded(deadline, inv.invoke_async(&mut conn)).await
    }

    /// Takes a lease of a message budget: `(messages, bytes, window left)`, where
    /// `-1` is a dimension without a budget and `(0, 0)` an exhausted window.
    pub async fn lease(
        &self,
        deadline: Duration,
        key: &str,
        window: Duration,
        budget: (i64, i64),
        chunk: (i64, i64),
    ) -> Result<(i64, i64, Duration), StoreError> {
        let mut conn = self.conn()?;
        let mut inv = self.scripts.lease.key(key);
        inv.arg(window.as_millis().max(1) as u64)
            .arg(budget.0)
            .arg(budget.1)
            .arg(chunk.0)
            .arg(chunk.1);
        let (m, b, left): (i64, i64, i64) = bounded(deadline, inv.invoke_async(&mut conn)).await?;
        Ok((m, b, Duration::from_millis(left.max(0) as u64)))
    }
}

/// Counts outlive their last heartbeat by a margin, then leave Redis on their own.
fn ttl_ms(stale_ms: u64) -> u64 {
    stale_ms.saturating_mul(4).max(1000)
}

async fn bounded<T>(
    deadline: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(deadline, f).await {
        Err(_) => Err(StoreError::Timeout),
        Ok(r) => Ok(r?),
    }
}

async fn manager(
    client: redis::Client,
    patience: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(patience))
        .set_response_timeout(Some(patience))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config).await
}

/// The master's name in a Sentinel URL: its path.
fn sentinel_master(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let path = rest.split_once('/')?.1;
    (!path.is_empty()).then(|| path.trim_end_matches('/').to_owned())
}

fn strip_path(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest))
        }
        None => url.to_owned(),
    }
}
