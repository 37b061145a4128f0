//! The Redis backend (standalone, TLS or Cluster): entries live in Redis with their TTL
//! and are shared by every instance; each instance keeps a local vector index fed from a
//! Redis Stream of inserts and invalidations, and re-reads every candidate from Redis
//! before serving it.
//!
//! Works on plain Redis 7 (no search module). Key layout, with `P` the prefix and `T` the
//! percent-encoded tenant (every key of one tenant shares the hash tag `{T}`, so each
//! script touches one Redis Cluster slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{T}:e:<id>` | string, `PX` = TTL | the entry as JSON |
//! | `P:{T}:ns:<N>` | sorted set | ids of namespace `N`, scored by expiry |
//! | `P:{T}:tag:<G>` | sorted set | ids tagged `G`, scored by expiry |
//! | `P:{T}:nss` | sorted set | the tenant's namespaces, scored by their last expiry |
//! | `P:stream` | stream | `ins` (id, partition, scope, embedder, f16 vector, expiry) and `del` (ids) events |
//!
//! The sorted sets forget an id once its entry has expired (each insert into a set drops up
//! to 100 expired members), and each set itself expires with its last member, so under a
//! steady load they hold the live ids and a bounded backlog. Invalidations work through a
//! set in batches (`RedisConfig::invalidation_batch`, default 500 ids per script call), so
//! no script blocks Redis for long whatever the set's size. The stream is trimmed by length
//! (`MAXLEN ~`) and by age (events older than the longest TTL this instance wrote, at least
//! a minute, describe entries that have expired anyway).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::ConnectionLike;
use redis::{RedisResult, RetryMethod, Script, Value};
use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::index::dot;
use crate::key::{EntryId, Partition, ScopeId, encode_key_part};
use crate::local::{IndexKey, LocalIndex};
use crate::store::{Invalidation, PartitionUsage, SearchQuery, Store};

/// Settings of a [`RedisStore`] (serde: unknown fields refused, durations as `"1s"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Prefix of every key (default `"psc"`); `{` and `}` are encoded so that the prefix
    /// never changes a key's hash tag.
    pub prefix: String,
    /// Approximate length the event stream is trimmed to (default 100 000).
    pub stream_max_len: u64,
    /// Most vectors this instance's local index keeps (default 1 000 000), shared fairly
    /// between tenants; entries beyond are still stored and served exactly.
    pub max_local_entries: usize,
    /// Timeout of one Redis operation (default 1 s); a timeout is [`Error::Timeout`].
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
    /// How long one stream read waits for new events (default 100 ms).
    #[serde(with = "humantime_serde")]
    pub poll_block: Duration,
    /// Most ids one invalidation script call works through (default 500).
    pub invalidation_batch: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "psc".to_owned(),
            stream_max_len: 100_000,
            max_local_entries: 1_000_000,
            op_timeout: Duration::from_secs(1),
            poll_block: Duration::from_millis(100),
            invalidation_batch: 500,
        }
    }
}

impl RedisConfig {
    setters! {
        plain {
            prefix: String,
            stream_max_len: u64,
            max_local_entries: usize,
            op_timeout: Duration,
            poll_block: Duration,
            invalidation_batch: usize,
        }
    }

    fn check(&self) -> Result<()> {
        if self.stream_max_len == 0
            || self.max_local_entries == 0
            || self.op_timeout.is_zero()
            || self.poll_block.is_zero()
            || self.invalidation_batch == 0
        {
            return Err(Error::InvalidConfig(
                "stream_max_len, max_local_entries, op_timeout, poll_block and invalidation_batch must be above zero".into(),
            ));
        }
        Ok(())
    }
}

/// Most expired members one insert drops from each set it touches.
const TRIM_PER_INSERT: u64 = 100;
/// Stream events younger than this are kept whatever the TTLs.
const MIN_STREAM_RETENTION_MS: u64 = 60_000;

#[derive(Clone)]
enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

struct Scripts {
    insert: Script,
    drop_entry: Script,
    drop_set: Script,
    drop_tenant: Script,
    usage: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            insert: Script::new(include_str!("lua/insert.lua")),
            drop_entry: Script::new(include_str!("lua/drop_entry.lua")),
            drop_set: Script::new(include_str!("lua/drop_set.lua")),
            drop_tenant: Script::new(include_str!("lua/drop_tenant.lua")),
            usage: Script::new(include_str!("lua/usage.lua")),
        }
    }
}

struct ReaderHandle(tokio::task::JoinHandle<()>);

impl Drop for ReaderHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Shared {
    pool: Pool,
    config: RedisConfig,
    index: Mutex<LocalIndex>,
    scripts: Scripts,
    /// The stream reader, started by the first operation that needs the index.
    reader: tokio::sync::OnceCell<ReaderHandle>,
    /// Longest TTL this instance wrote (ms): how long stream events stay useful.
    longest_ttl_ms: AtomicU64,
}

/// Entries in Redis, shared by every instance. The design and key layout are in the guide,
/// docs/semantic-cache.md, *Redis backend*.
///
/// Built synchronously with no I/O ([`new`](Self::new) for a standalone or TLS server,
/// [`cluster`](Self::cluster) for Redis Cluster); the first insert, search or invalidation
/// replays the event stream into the local index and starts following it in a background
/// task (stopped when the last clone drops). [`ready`](Self::ready) does that up front.
///
/// Cost: an exact lookup is one `GET`; a semantic lookup searches the local index and reads
/// the candidates with one `MGET`; an insert is one script call plus one pipelined
/// `XADD`/`XTRIM`. Invalidation by tag, namespace or tenant is one script call per
/// [`RedisConfig::invalidation_batch`] ids plus one `XADD` per batch.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use palisade_semantic_cache::{FailureMode, RedisStore, SemanticCache};
/// use palisade_semantic_cache::deadpool_redis::{Config, Runtime};
///
/// let pool = Config::from_url("redis://127.0.0.1:6379").create_pool(Some(Runtime::Tokio1))?;
/// let cache = SemanticCache::builder()
///     .store(RedisStore::new(pool).with_prefix("myapp:cache"))
///     .failure_mode(FailureMode::FallbackToMemory)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.shared.pool, Pool::Cluster(_)))
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn lock(index: &Mutex<LocalIndex>) -> MutexGuard<'_, LocalIndex> {
    // Every hit is verified in Redis, so a half-updated index after a panic is harmless.
    index.lock().unwrap_or_else(PoisonError::into_inner)
}

fn redis_error(e: redis::RedisError) -> Error {
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || !matches!(e.retry_method(), RetryMethod::NoRetry);
    Error::backend(e, transient)
}

fn pool_error(e: deadpool_redis::PoolError) -> Error {
    let transient = !matches!(
        e,
        deadpool_redis::PoolError::Closed | deadpool_redis::PoolError::NoRuntimeSpecified
    );
    Error::backend(e, transient)
}

fn cluster_pool_error(e: deadpool_redis::cluster::PoolError) -> Error {
    let transient = !matches!(
        e,
        deadpool_redis::cluster::PoolError::Closed
            | deadpool_redis::cluster::PoolError::NoRuntimeSpecified
    );
    Error::backend(e, transient)
}

/// Vectors travel in the stream as little-endian IEEE f16 (half the bytes of f32); a
/// receiving instance re-scores every candidate with the entry's own f32 vector.
fn vector_bytes(vector: &[f32]) -> Vec<u8> {
    vector
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn vector_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// f16 rounding of the stream's vectors moves a similarity by well under this; the local
/// index is searched this much below the threshold and the candidates re-scored exactly.
const SEARCH_MARGIN: f32 = 0.01;

impl Shared {
    fn tenant_tag(&self, tenant: &str) -> String {
        format!("{}:{{{}}}", self.config.prefix, encode_key_part(tenant))
    }

    fn entry_prefix(&self, tenant: &str) -> String {
        format!("{}:e:", self.tenant_tag(tenant))
    }

    fn namespace_key(&self, partition: &Partition) -> String {
        format!(
            "{}:ns:{}",
            self.tenant_tag(partition.tenant.as_str()),
            encode_key_part(partition.namespace.as_str())
        )
    }

    fn stream_key(&self) -> String {
        format!("{}:stream", self.config.prefix)
    }

    fn timeout_error(&self) -> Error {
        Error::Timeout(self.config.op_timeout)
    }

    async fn conn(&self) -> Result<Conn> {
        let get = async {
            match &self.pool {
                Pool::Single(p) => p.get().await.map(Conn::Single).map_err(pool_error),
                Pool::Cluster(p) => p.get().await.map(Conn::Cluster).map_err(cluster_pool_error),
            }
        };
        tokio::time::timeout(self.config.op_timeout, get)
            .await
            .map_err(|_| self.timeout_error())?
    }

    /// One command or script call on a pooled connection, within the operation timeout.
    async fn timed<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.config.op_timeout, fut).await {
            Ok(r) => r.map_err(redis_error),
            Err(_) => Err(self.timeout_error()),
        }
    }

    fn stream_trim_id(&self) -> String {
        let keep = self
            .longest_ttl_ms
            .load(Ordering::Relaxed)
            .max(MIN_STREAM_RETENTION_MS);
        format!("{}-0", wall_ms().saturating_sub(keep))
    }

    /// Publish one event, trimming the stream by length and by age in the same round trip.
    async fn publish(&self, conn: &mut Conn, fields: &[(&str, Vec<u8>)]) -> Result<()> {
        let key = self.stream_key();
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.stream_max_len)
            .arg("*");
        for (name, value) in fields {
            xadd.arg(*name).arg(value.as_slice());
        }
        let mut pipe = redis::pipe();
        pipe.add_command(xadd)
            .ignore()
            .cmd("XTRIM")
            .arg(&key)
            .arg("MINID")
            .arg("~")
            .arg(self.stream_trim_id())
            .ignore();
        self.timed(pipe.query_async::<()>(conn)).await
    }

    async fn publish_removed(&self, ids: &[String]) -> Result<()> {
        {
            let mut index = lock(&self.index);
            for id in ids.iter().filter_map(|h| EntryId::from_hex(h)) {
                index.remove(&id);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        for chunk in ids.chunks(1000) {
            self.publish(
                &mut conn,
                &[
                    ("op", b"del".to_vec()),
                    ("ids", chunk.join(",").into_bytes()),
                ],
            )
            .await?;
        }
        Ok(())
    }

    fn apply_event(&self, map: &HashMap<String, Value>) {
        let text = |name: &str| {
            map.get(name)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        };
        let number = |name: &str| text(name).and_then(|t| t.parse::<u64>().ok());
        match text("op").as_deref() {
            Some("ins") => {
                let parsed = (|| {
                    let id = EntryId::from_hex(&text("id")?)?;
                    let partition = Partition::new(text("t")?, text("n")?).ok()?;
                    let scope = ScopeId::from_hex(&text("s")?)?;
                    let embedder: Arc<str> = Arc::from(text("m")?.as_str());
                    let bytes: Vec<u8> = redis::from_redis_value_ref(map.get("v")?).ok()?;
                    let expires = number("x")?;
                    let created = number("c")?;
                    let key: IndexKey = (partition, scope, embedder);
                    Some((id, key, vector_from_bytes(&bytes), expires, created))
                })();
                match parsed {
                    Some((id, key, vector, expires, created)) => {
                        if let Err(e) = lock(&self.index).insert(key, id, &vector, expires, created)
                        {
                            tracing::warn!(
                                error = &e as &dyn std::error::Error,
                                "ignoring a bad vector from the semantic cache stream"
                            );
                        }
                    }
                    None => tracing::warn!("ignoring a malformed semantic cache stream event"),
                }
            }
            Some("del") => {
                if let Some(ids) = text("ids") {
                    let mut index = lock(&self.index);
                    for id in ids.split(',').filter_map(EntryId::from_hex) {
                        index.remove(&id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Read the stream from `last` on; returns the new last id.
    async fn read_events(&self, last: &str, block: bool) -> Result<Option<String>> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(1000);
        if block {
            cmd.arg("BLOCK")
                .arg(u64::try_from(self.config.poll_block.as_millis()).unwrap_or(u64::MAX));
        }
        cmd.arg("STREAMS").arg(self.stream_key()).arg(last);
        let reply: Option<redis::streams::StreamReadReply> = match tokio::time::timeout(
            self.config.op_timeout + self.config.poll_block,
            cmd.query_async(&mut conn),
        )
        .await
        {
            Ok(r) => r.map_err(redis_error)?,
            Err(_) => return Err(self.timeout_error()),
        };
        let mut new_last = None;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for event in key.ids {
                self.apply_event(&event.map);
                new_last = Some(event.id);
            }
        }
        Ok(new_last)
    }

    /// Replay the whole stream into an empty index.
    async fn resync(&self) -> Result<String> {
        lock(&self.index).clear();
        let mut last = "0-0".to_owned();
        while let Some(next) = self.read_events(&last, false).await? {
            last = next;
        }
        Ok(last)
    }
}

async fn follow(shared: Weak<Shared>, mut last: String) {
    let mut healthy = true;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let result = if healthy {
            s.read_events(&last, true).await.map(|next| {
                if let Some(next) = next {
                    last = next;
                }
            })
        } else {
            // After an outage the server may have restarted empty: rebuild from scratch.
            s.resync().await.map(|next| last = next)
        };
        let pause = s.config.poll_block;
        drop(s);
        match result {
            Ok(()) => healthy = true,
            Err(e) => {
                if healthy {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "semantic cache stream reader lost Redis; retrying"
                    );
                }
                healthy = false;
                tokio::time::sleep(pause).await;
            }
        }
    }
}

impl RedisStore {
    fn with_pool(pool: Pool, config: RedisConfig) -> Self {
        let max = config.max_local_entries;
        Self {
            shared: Arc::new(Shared {
                pool,
                config,
                index: Mutex::new(LocalIndex::new(max)),
                scripts: Scripts::new(),
                reader: tokio::sync::OnceCell::new(),
                longest_ttl_ms: AtomicU64::new(0),
            }),
        }
    }

    /// A store on a standalone (or TLS, `rediss://`) Redis with default settings. No I/O
    /// happens until the store is first used.
    pub fn new(pool: deadpool_redis::Pool) -> Self {
        Self::with_pool(Pool::Single(pool), RedisConfig::default())
    }

    /// A store on a Redis Cluster with default settings. No I/O until first use.
    pub fn cluster(pool: deadpool_redis::cluster::Pool) -> Self {
        Self::with_pool(Pool::Cluster(pool), RedisConfig::default())
    }

    /// The same store with these settings (the prefix is encoded as by
    /// [`with_prefix`](Self::with_prefix)). Call it before the store is used: a fresh,
    /// empty local index comes with it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero limit, timeout or batch.
    pub fn with_config(self, mut config: RedisConfig) -> Result<Self> {
        config.check()?;
        config.prefix = config.prefix.replace('{', "%7B").replace('}', "%7D");
        Ok(Self::with_pool(self.shared.pool.clone(), config))
    }

    fn reconfigured(self, change: impl FnOnce(&mut RedisConfig)) -> Self {
        let mut config = self.shared.config.clone();
        change(&mut config);
        Self::with_pool(self.shared.pool.clone(), config)
    }

    /// Put every key under `prefix` (default `psc`); `{` and `}` are encoded so that the
    /// prefix never changes the hash tag. Call it before the store is used.
    #[must_use]
    pub fn with_prefix(self, prefix: &str) -> Self {
        let prefix = prefix.replace('{', "%7B").replace('}', "%7D");
        self.reconfigured(|c| c.prefix = prefix)
    }

    /// Give up on one Redis operation after `timeout` (default 1 s) with
    /// [`Error::Timeout`]. A zero timeout is refused at first use
    /// ([`Error::InvalidConfig`]). Call it before the store is used.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.reconfigured(|c| c.op_timeout = timeout)
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }

    /// A store on `pool`, replaying the event stream now.
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Timeout`] when Redis cannot be reached.
    #[deprecated(
        since = "0.2.0",
        note = "use `RedisStore::new(pool)` (no I/O until first use)"
    )]
    pub async fn connect(pool: deadpool_redis::Pool) -> Result<Self> {
        let store = Self::new(pool);
        store.ready().await?;
        Ok(store)
    }

    /// A store with these settings, replaying the event stream now.
    ///
    /// # Errors
    /// As [`with_config`](Self::with_config) and [`ready`](Self::ready).
    #[deprecated(
        since = "0.2.0",
        note = "use `RedisStore::new(pool).with_config(config)` (no I/O until first use)"
    )]
    pub async fn connect_with(pool: deadpool_redis::Pool, config: RedisConfig) -> Result<Self> {
        let store = Self::new(pool).with_config(config)?;
        store.ready().await?;
        Ok(store)
    }

    /// Replay the event stream into the local index and start following it, if not done
    /// yet (the first insert, search or invalidation does it otherwise). A failed attempt is
    /// retried by the next call.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero timeout; [`Error::Backend`] / [`Error::Timeout`]
    /// when Redis cannot be reached.
    pub async fn ready(&self) -> Result<()> {
        let shared = &self.shared;
        shared
            .reader
            .get_or_try_init(|| async {
                shared.config.check()?;
                let last = shared.resync().await?;
                let task = tokio::spawn(follow(Arc::downgrade(shared), last));
                Ok::<_, Error>(ReaderHandle(task))
            })
            .await?;
        Ok(())
    }

    /// Vectors in this instance's local index.
    pub fn local_entries(&self) -> usize {
        lock(&self.shared.index).len()
    }

    async fn fetch(&self, tenant: &str, ids: &[EntryId]) -> Result<Vec<Option<Entry>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = self.shared.entry_prefix(tenant);
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{prefix}{}", id.to_hex()))
            .collect();
        let mut conn = self.shared.conn().await?;
        let mut cmd = redis::cmd(if keys.len() == 1 { "GET" } else { "MGET" });
        cmd.arg(&keys);
        let raw: Vec<Option<Vec<u8>>> = if keys.len() == 1 {
            vec![self.shared.timed(cmd.query_async(&mut conn)).await?]
        } else {
            self.shared.timed(cmd.query_async(&mut conn)).await?
        };
        Ok(raw
            .into_iter()
            .map(|bytes| bytes.and_then(|b| serde_json::from_slice::<Entry>(&b).ok()))
            .collect())
    }

    /// Run a batched drop script until the set it works on is empty.
    async fn drain(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Vec<String>> {
        let s = &self.shared;
        let mut removed = Vec::new();
        let mut conn = s.conn().await?;
        loop {
            let (left, batch): (u64, Vec<String>) =
                s.timed(invocation.invoke_async(&mut conn)).await?;
            s.publish_removed(&batch).await?;
            removed.extend(batch);
            if left == 0 {
                return Ok(removed);
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn insert(&self, entry: Arc<Entry>, ttl: Duration) -> Result<()> {
        let s = &self.shared;
        if !entry.vector.is_empty() {
            crate::embed::check_vector(&entry.vector, entry.vector.len())?;
        }
        self.ready().await?;
        let tenant = entry.scope.partition.tenant.as_str();
        let tag = s.tenant_tag(tenant);
        let ns = encode_key_part(entry.scope.partition.namespace.as_str());
        let id = entry.id.to_hex();
        let payload = serde_json::to_vec(&*entry)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        s.longest_ttl_ms.fetch_max(ttl_ms, Ordering::Relaxed);
        let mut invocation = s.scripts.insert.prepare_invoke();
        invocation
            .key(format!("{tag}:e:{id}"))
            .key(format!("{tag}:ns:{ns}"))
            .key(format!("{tag}:nss"));
        for t in &entry.tags {
            invocation.key(format!("{tag}:tag:{}", encode_key_part(t.as_str())));
        }
        invocation
            .arg(payload)
            .arg(ttl_ms)
            .arg(&id)
            .arg(&ns)
            .arg(TRIM_PER_INSERT);
        let mut conn = s.conn().await?;
        let _: i64 = s.timed(invocation.invoke_async(&mut conn)).await?;
        if !entry.vector.is_empty() {
            let key: IndexKey = (
                entry.scope.partition.clone(),
                entry.scope_id(),
                Arc::from(entry.embedder.as_str()),
            );
            lock(&s.index).insert(
                key,
                entry.id,
                &entry.vector,
                entry.expires_at_ms,
                entry.created_at_ms,
            )?;
            let fields: [(&str, Vec<u8>); 9] = [
                ("op", b"ins".to_vec()),
                ("id", id.into_bytes()),
                ("t", tenant.as_bytes().to_vec()),
                (
                    "n",
                    entry.scope.partition.namespace.as_str().as_bytes().to_vec(),
                ),
                ("s", entry.scope_id().to_hex().into_bytes()),
                ("m", entry.embedder.as_bytes().to_vec()),
                ("v", vector_bytes(&entry.vector)),
                ("x", entry.expires_at_ms.to_string().into_bytes()),
                ("c", entry.created_at_ms.to_string().into_bytes()),
            ];
            s.publish(&mut conn, &fields).await?;
        }
        Ok(())
    }

    async fn get(
        &self,
        partition: &Partition,
        id: &EntryId,
        now_ms: u64,
    ) -> Result<Option<Arc<Entry>>> {
        let found = self
            .fetch(partition.tenant.as_str(), std::slice::from_ref(id))
            .await?;
        Ok(found
            .into_iter()
            .flatten()
            .find(|e| e.scope.partition == *partition && !e.is_expired(now_ms))
            .map(Arc::new))
    }

    async fn search(&self, query: SearchQuery<'_>) -> Result<Vec<(Arc<Entry>, f32)>> {
        crate::embed::check_vector(query.vector, query.vector.len())?;
        self.ready().await?;
        let key: IndexKey = (
            query.partition.clone(),
            query.scope,
            Arc::from(query.embedder),
        );
        let neighbors = lock(&self.shared.index)
            .search(
                &key,
                query.vector,
                query.limit.saturating_mul(2).saturating_add(2),
                query.min_similarity - SEARCH_MARGIN,
                query.now_ms,
            )?
            .unwrap_or_default();
        let ids: Vec<EntryId> = neighbors.iter().map(|n| n.id).collect();
        let entries = self.fetch(query.partition.tenant.as_str(), &ids).await?;
        let mut found = Vec::new();
        let mut gone = Vec::new();
        for (n, entry) in neighbors.into_iter().zip(entries) {
            match entry {
                Some(e)
                    if e.scope.partition == *query.partition
                        && e.scope_id() == query.scope
                        && e.embedder == query.embedder
                        && e.vector.len() == query.vector.len() =>
                {
                    if !e.is_expired(query.now_ms) {
                        // Exact similarity from the entry's own f32 vector.
                        let similarity = dot(&e.vector, query.vector);
                        if similarity >= query.min_similarity {
                            found.push((Arc::new(e), similarity));
                        }
                    }
                }
                // Expired in Redis or invalidated: forget it here too.
                _ => gone.push(n.id),
            }
        }
        if !gone.is_empty() {
            let mut index = lock(&self.shared.index);
            for id in &gone {
                index.remove(id);
            }
        }
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found.truncate(query.limit);
        Ok(found)
    }

    async fn invalidate(&self, what: &Invalidation) -> Result<u64> {
        let s = &self.shared;
        self.ready().await?;
        let batch = s.config.invalidation_batch;
        let removed: Vec<String> = match what {
            Invalidation::Entry { partition, id } => {
                let tenant = partition.tenant.as_str();
                let mut invocation = s.scripts.drop_entry.prepare_invoke();
                invocation
                    .key(format!("{}{}", s.entry_prefix(tenant), id.to_hex()))
                    .key(s.namespace_key(partition))
                    .arg(id.to_hex());
                let mut conn = s.conn().await?;
                let n: i64 = s.timed(invocation.invoke_async(&mut conn)).await?;
                let removed = if n == 1 {
                    vec![id.to_hex()]
                } else {
                    Vec::new()
                };
                s.publish_removed(&removed).await?;
                removed
            }
            Invalidation::Tag { tenant, tag } => {
                let set = format!(
                    "{}:tag:{}",
                    s.tenant_tag(tenant.as_str()),
                    encode_key_part(tag.as_str())
                );
                let mut invocation = s.scripts.drop_set.prepare_invoke();
                invocation
                    .key(set)
                    .arg(s.entry_prefix(tenant.as_str()))
                    .arg(batch);
                self.drain(&invocation).await?
            }
            Invalidation::Namespace(partition) => {
                let tenant = partition.tenant.as_str();
                let mut invocation = s.scripts.drop_set.prepare_invoke();
                invocation
                    .key(s.namespace_key(partition))
                    .key(format!("{}:nss", s.tenant_tag(tenant)))
                    .arg(s.entry_prefix(tenant))
                    .arg(batch)
                    .arg(encode_key_part(partition.namespace.as_str()));
                self.drain(&invocation).await?
            }
            Invalidation::Tenant(tenant) => {
                let tag = s.tenant_tag(tenant.as_str());
                let mut invocation = s.scripts.drop_tenant.prepare_invoke();
                invocation
                    .key(format!("{tag}:nss"))
                    .arg(s.entry_prefix(tenant.as_str()))
                    .arg(format!("{tag}:ns:"))
                    .arg(batch);
                self.drain(&invocation).await?
            }
            Invalidation::EmbedderOtherThan(version) => self.drop_other_embedders(version).await?,
        };
        Ok(removed.len() as u64)
    }

    async fn health(&self) -> Result<()> {
        let mut conn = self.shared.conn().await?;
        self.shared
            .timed(redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }

    async fn usage(&self, partition: &Partition) -> Result<PartitionUsage> {
        let s = &self.shared;
        let mut invocation = s.scripts.usage.prepare_invoke();
        invocation.key(s.namespace_key(partition));
        let mut conn = s.conn().await?;
        let entries: u64 = s.timed(invocation.invoke_async(&mut conn)).await?;
        Ok(PartitionUsage {
            entries,
            bytes: None,
        })
    }
}

impl RedisStore {
    /// The masters to SCAN: the one server, or every master of the cluster.
    async fn scan_targets(&self, conn: &mut Conn) -> Result<Vec<Option<(String, u16)>>> {
        let Conn::Cluster(_) = conn else {
            return Ok(vec![None]);
        };
        let nodes: String = self
            .shared
            .timed(redis::cmd("CLUSTER").arg("NODES").query_async(conn))
            .await?;
        let mut masters = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 3 || !fields[2].split(',').any(|f| f == "master") {
                continue;
            }
            if fields[2].split(',').any(|f| f == "fail" || f == "noaddr") {
                continue;
            }
            let address = fields[1].split('@').next().unwrap_or_default();
            if let Some((host, port)) = address.rsplit_once(':')
                && let Ok(port) = port.parse()
            {
                masters.push(Some((host.to_owned(), port)));
            }
        }
        Ok(masters)
    }

    /// SCAN every entry key (on every master of a cluster) and delete those of another
    /// embedder version: an operator's clean-up, O(entries), one `GET` each.
    async fn drop_other_embedders(&self, version: &str) -> Result<Vec<String>> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let s = &self.shared;
        let pattern = format!("{}:{{*}}:e:*", s.config.prefix);
        let mut conn = s.conn().await?;
        let mut removed = Vec::new();
        for target in self.scan_targets(&mut conn).await? {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500);
                let (next, keys): (u64, Vec<String>) = match (&target, &mut conn) {
                    (Some((host, port)), Conn::Cluster(c)) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        let value = s.timed(c.route_command(scan, routing)).await?;
                        redis::from_redis_value(value).map_err(|e| Error::backend(e, false))?
                    }
                    _ => s.timed(scan.query_async(&mut conn)).await?,
                };
                for key in keys {
                    let raw: Option<Vec<u8>> = s
                        .timed(redis::cmd("GET").arg(&key).query_async(&mut conn))
                        .await?;
                    let Some(entry) = raw.and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
                    else {
                        continue;
                    };
                    if entry.embedder != version {
                        let n: i64 = s
                            .timed(redis::cmd("DEL").arg(&key).query_async(&mut conn))
                            .await?;
                        if n == 1 {
                            removed.push(entry.id.to_hex());
                        }
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        s.publish_removed(&removed).await?;
        Ok(removed)
    }
}
