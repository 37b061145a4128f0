//! The Redis backend: entries live in Redis with their TTL and are shared by every
//! instance; each instance keeps a local vector index fed from a Redis Stream of inserts
//! and invalidations, and checks every candidate in Redis before serving it.
//!
//! Works on plain Redis 7 (no search module). Key layout, with `P` the configured prefix
//! and `T` the percent-encoded tenant (every key of one tenant shares the hash tag `{T}`,
//! so each script touches one Redis Cluster slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{T}:e:<id>` | string, `PX` = TTL | the entry as JSON |
//! | `P:{T}:ns:<N>` | set | ids of namespace `N` |
//! | `P:{T}:tag:<G>` | set | ids tagged `G` |
//! | `P:{T}:nss` | set | the tenant's namespaces |
//! | `P:stream` | stream | `ins` (id, partition, scope, embedder, vector) and `del` (ids) events |
//!
//! Sets get the longest TTL of their members and may name expired ids; deleting those is
//! a no-op. The stream is capped (`MAXLEN ~`), so a new instance only learns the vectors of
//! the most recent inserts; older entries still serve exact hits.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::Pool;
use redis::Value;
use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::error::{BoxError, Error, Result};
use crate::index::FlatIndex;
use crate::key::{EntryId, Partition, ScopeId, encode_key_part};
use crate::store::{Invalidation, PartitionUsage, SearchQuery, Store};

/// Settings of a [`RedisStore`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// Prefix of every key (default `"psc"`).
    pub prefix: String,
    /// Approximate length the event stream is trimmed to (default 100 000).
    pub stream_max_len: u64,
    /// Most vectors the local index keeps (default 1 000 000); inserts beyond are still
    /// stored and served exactly, but not found by meaning on this instance.
    pub max_local_entries: usize,
    /// Timeout of one Redis operation (default 1 s); a timeout is a transient
    /// [`Error::Backend`], which a [`crate::FallbackStore`] answers from memory.
    pub op_timeout: Duration,
    /// How long one stream read waits for new events (default 100 ms).
    pub poll_block: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "psc".to_owned(),
            stream_max_len: 100_000,
            max_local_entries: 1_000_000,
            op_timeout: Duration::from_secs(1),
            poll_block: Duration::from_millis(100),
        }
    }
}

type IndexKey = (Partition, ScopeId, Arc<str>);

#[derive(Debug, Default)]
struct LocalIndex {
    indexes: HashMap<IndexKey, FlatIndex>,
    location: HashMap<EntryId, IndexKey>,
}

impl LocalIndex {
    fn insert(&mut self, key: IndexKey, id: EntryId, vector: &[f32], max: usize) -> Result<()> {
        if self.location.len() >= max && !self.location.contains_key(&id) {
            return Ok(());
        }
        self.remove(&id);
        let index = self
            .indexes
            .entry(key.clone())
            .or_insert_with(|| FlatIndex::new(vector.len()));
        index.insert(id, vector)?;
        self.location.insert(id, key);
        Ok(())
    }

    fn remove(&mut self, id: &EntryId) {
        if let Some(key) = self.location.remove(id)
            && let Some(index) = self.indexes.get_mut(&key)
        {
            index.remove(id);
            if index.is_empty() {
                self.indexes.remove(&key);
            }
        }
    }

    fn clear(&mut self) {
        self.indexes.clear();
        self.location.clear();
    }
}

struct Shared {
    pool: Pool,
    config: RedisConfig,
    index: Mutex<LocalIndex>,
    insert_script: redis::Script,
    drop_set_script: redis::Script,
    drop_tenant_script: redis::Script,
    usage_script: redis::Script,
}

/// Entries in Redis, shared by every instance; see the [module docs](self) for the design.
///
/// Cost: an exact lookup is one `GET`; a semantic lookup scans the local index and reads
/// the candidates with one `MGET`; an insert is one script call plus one `XADD`.
/// Invalidation by tag, namespace or tenant is one script call plus one `XADD`.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    _reader: Arc<ReaderHandle>,
}

struct ReaderHandle(tokio::task::JoinHandle<()>);

impl Drop for ReaderHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

const INSERT: &str = r"
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
local function track(key, member)
  redis.call('SADD', key, member)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
track(KEYS[2], ARGV[3])
track(KEYS[3], ARGV[4])
for i = 4, #KEYS do track(KEYS[i], ARGV[3]) end
return 1
";

// KEYS[1]: a set of ids. ARGV[1]: the entry key prefix. Deletes the entries and the set.
const DROP_SET: &str = r"
local removed = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('DEL', ARGV[1] .. id) == 1 then table.insert(removed, id) end
end
redis.call('DEL', KEYS[1])
return removed
";

// KEYS[1]: the tenant's namespace set. ARGV[1]: entry key prefix, ARGV[2]: namespace set prefix.
const DROP_TENANT: &str = r"
local removed = {}
for _, ns in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local set = ARGV[2] .. ns
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    if redis.call('DEL', ARGV[1] .. id) == 1 then table.insert(removed, id) end
  end
  redis.call('DEL', set)
end
redis.call('DEL', KEYS[1])
return removed
";

// KEYS[1]: a namespace set. ARGV[1]: entry key prefix. Returns {live entries, bytes}.
const USAGE: &str = r"
local n, bytes = 0, 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local len = redis.call('STRLEN', ARGV[1] .. id)
  if len > 0 then n = n + 1; bytes = bytes + len end
end
return {n, bytes}
";

fn backend(err: impl Into<BoxError>) -> Error {
    Error::backend(err, true)
}

fn lock(index: &Mutex<LocalIndex>) -> MutexGuard<'_, LocalIndex> {
    // Every hit is verified in Redis, so a half-updated index after a panic is harmless.
    index.lock().unwrap_or_else(PoisonError::into_inner)
}

fn vector_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vector_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Shared {
    fn tenant_tag(&self, tenant: &str) -> String {
        format!("{}:{{{}}}", self.config.prefix, encode_key_part(tenant))
    }

    fn entry_prefix(&self, tenant: &str) -> String {
        format!("{}:e:", self.tenant_tag(tenant))
    }

    fn stream_key(&self) -> String {
        format!("{}:stream", self.config.prefix)
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection> {
        match tokio::time::timeout(self.config.op_timeout, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(backend(e)),
            Err(_) => Err(backend("timed out waiting for a Redis connection")),
        }
    }

    async fn timed<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.config.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(backend(e)),
            Err(_) => Err(backend("Redis operation timed out")),
        }
    }

    async fn publish_removed(&self, ids: &[String]) -> Result<()> {
        {
            let mut index = lock(&self.index);
            for id in ids.iter().filter_map(|h| EntryId::from_hex(h)) {
                index.remove(&id);
            }
        }
        for chunk in ids.chunks(1000) {
            let mut conn = self.conn().await?;
            let cmd = redis::cmd("XADD")
                .arg(self.stream_key())
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.stream_max_len)
                .arg("*")
                .arg("op")
                .arg("del")
                .arg("ids")
                .arg(chunk.join(","))
                .to_owned();
            let _: String = self.timed(cmd.query_async(&mut conn)).await?;
        }
        Ok(())
    }

    fn apply_event(&self, map: &HashMap<String, Value>) {
        let text = |name: &str| {
            map.get(name)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        };
        match text("op").as_deref() {
            Some("ins") => {
                let parsed = (|| {
                    let id = EntryId::from_hex(&text("id")?)?;
                    let partition = Partition::new(text("t")?, text("n")?).ok()?;
                    let scope = ScopeId::from_hex(&text("s")?)?;
                    let embedder: Arc<str> = Arc::from(text("m")?.as_str());
                    let bytes: Vec<u8> = redis::from_redis_value_ref(map.get("v")?).ok()?;
                    Some((id, (partition, scope, embedder), vector_from_bytes(&bytes)))
                })();
                if let Some((id, key, vector)) = parsed {
                    let max = self.config.max_local_entries;
                    if let Err(e) = lock(&self.index).insert(key, id, &vector, max) {
                        tracing::warn!(error = %e, "ignoring a bad vector from the stream");
                    }
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
                .arg(self.config.poll_block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(self.stream_key()).arg(last);
        let reply: Option<redis::streams::StreamReadReply> = match tokio::time::timeout(
            self.config.op_timeout + self.config.poll_block,
            cmd.query_async(&mut conn),
        )
        .await
        {
            Ok(r) => r.map_err(backend)?,
            Err(_) => return Err(backend("stream read timed out")),
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
                    tracing::warn!(error = %e, "semantic cache stream reader lost Redis; retrying");
                }
                healthy = false;
                tokio::time::sleep(pause).await;
            }
        }
    }
}

impl RedisStore {
    /// A store on `pool` with default settings; replays the event stream into the local
    /// index, then follows it in a background task (stopped when the last clone drops).
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis cannot be reached.
    pub async fn connect(pool: Pool) -> Result<Self> {
        Self::connect_with(pool, RedisConfig::default()).await
    }

    /// A store with these settings.
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis cannot be reached, [`Error::InvalidConfig`] for an
    /// empty prefix or zero limits.
    pub async fn connect_with(pool: Pool, config: RedisConfig) -> Result<Self> {
        if config.prefix.is_empty() || config.stream_max_len == 0 || config.op_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "prefix, stream_max_len and op_timeout must be set".into(),
            ));
        }
        let shared = Arc::new(Shared {
            pool,
            config,
            index: Mutex::new(LocalIndex::default()),
            insert_script: redis::Script::new(INSERT),
            drop_set_script: redis::Script::new(DROP_SET),
            drop_tenant_script: redis::Script::new(DROP_TENANT),
            usage_script: redis::Script::new(USAGE),
        });
        let last = shared.resync().await?;
        let reader = tokio::spawn(follow(Arc::downgrade(&shared), last));
        Ok(Self {
            shared,
            _reader: Arc::new(ReaderHandle(reader)),
        })
    }

    /// Vectors in this instance's local index.
    pub fn local_entries(&self) -> usize {
        lock(&self.shared.index).location.len()
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
        let raw: Vec<Option<Vec<u8>>> = self
            .shared
            .timed(redis::cmd("MGET").arg(&keys).query_async(&mut conn))
            .await?;
        Ok(raw
            .into_iter()
            .map(|bytes| bytes.and_then(|b| serde_json::from_slice::<Entry>(&b).ok()))
            .collect())
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn insert(&self, entry: Arc<Entry>, ttl: Duration) -> Result<()> {
        let s = &self.shared;
        if !entry.vector.is_empty() {
            crate::embed::check_vector(&entry.vector, entry.vector.len())?;
        }
        let tenant = entry.scope.partition.tenant.as_str();
        let tag = s.tenant_tag(tenant);
        let ns = encode_key_part(entry.scope.partition.namespace.as_str());
        let id = entry.id.to_hex();
        let payload = serde_json::to_vec(&*entry)?;
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        let mut invocation = s.insert_script.prepare_invoke();
        invocation
            .key(format!("{tag}:e:{id}"))
            .key(format!("{tag}:ns:{ns}"))
            .key(format!("{tag}:nss"));
        for t in &entry.tags {
            invocation.key(format!("{tag}:tag:{}", encode_key_part(t.as_str())));
        }
        invocation.arg(payload).arg(ttl_ms).arg(&id).arg(&ns);
        let mut conn = s.conn().await?;
        let _: i64 = s.timed(invocation.invoke_async(&mut conn)).await?;
        if !entry.vector.is_empty() {
            let key: IndexKey = (
                entry.scope.partition.clone(),
                entry.scope_id(),
                Arc::from(entry.embedder.as_str()),
            );
            lock(&s.index).insert(key, entry.id, &entry.vector, s.config.max_local_entries)?;
            let cmd = redis::cmd("XADD")
                .arg(s.stream_key())
                .arg("MAXLEN")
                .arg("~")
                .arg(s.config.stream_max_len)
                .arg("*")
                .arg("op")
                .arg("ins")
                .arg("id")
                .arg(&id)
                .arg("t")
                .arg(tenant)
                .arg("n")
                .arg(entry.scope.partition.namespace.as_str())
                .arg("s")
                .arg(entry.scope_id().to_hex())
                .arg("m")
                .arg(&entry.embedder)
                .arg("v")
                .arg(vector_bytes(&entry.vector))
                .to_owned();
            let _: String = s.timed(cmd.query_async(&mut conn)).await?;
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
        let neighbors = {
            let index = lock(&self.shared.index);
            let key: IndexKey = (
                query.partition.clone(),
                query.scope,
                Arc::from(query.embedder),
            );
            match index.indexes.get(&key) {
                Some(flat) => flat.search(query.vector, query.limit, query.min_similarity)?,
                None => {
                    crate::embed::check_vector(query.vector, query.vector.len())?;
                    Vec::new()
                }
            }
        };
        let ids: Vec<EntryId> = neighbors.iter().map(|n| n.id).collect();
        let entries = self.fetch(query.partition.tenant.as_str(), &ids).await?;
        let mut found = Vec::new();
        let mut gone = Vec::new();
        for (n, entry) in neighbors.into_iter().zip(entries) {
            match entry {
                Some(e) if e.scope.partition == *query.partition && e.scope_id() == query.scope => {
                    if !e.is_expired(query.now_ms) {
                        found.push((Arc::new(e), n.similarity));
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
        Ok(found)
    }

    async fn invalidate(&self, what: &Invalidation) -> Result<u64> {
        let s = &self.shared;
        let removed: Vec<String> = match what {
            Invalidation::Entry { partition, id } => match self.get(partition, id, 0).await? {
                Some(_) => {
                    let key = format!(
                        "{}{}",
                        s.entry_prefix(partition.tenant.as_str()),
                        id.to_hex()
                    );
                    let mut conn = s.conn().await?;
                    let n: i64 = s
                        .timed(redis::cmd("DEL").arg(key).query_async(&mut conn))
                        .await?;
                    if n == 1 {
                        vec![id.to_hex()]
                    } else {
                        Vec::new()
                    }
                }
                None => Vec::new(),
            },
            Invalidation::Tag { tenant, tag } => {
                let set = format!(
                    "{}:tag:{}",
                    s.tenant_tag(tenant.as_str()),
                    encode_key_part(tag.as_str())
                );
                let mut invocation = s.drop_set_script.prepare_invoke();
                invocation.key(set).arg(s.entry_prefix(tenant.as_str()));
                let mut conn = s.conn().await?;
                s.timed(invocation.invoke_async(&mut conn)).await?
            }
            Invalidation::Namespace(partition) => {
                let tenant = partition.tenant.as_str();
                let set = format!(
                    "{}:ns:{}",
                    s.tenant_tag(tenant),
                    encode_key_part(partition.namespace.as_str())
                );
                let mut invocation = s.drop_set_script.prepare_invoke();
                invocation.key(set).arg(s.entry_prefix(tenant));
                let mut conn = s.conn().await?;
                s.timed(invocation.invoke_async(&mut conn)).await?
            }
            Invalidation::Tenant(tenant) => {
                let tag = s.tenant_tag(tenant.as_str());
                let mut invocation = s.drop_tenant_script.prepare_invoke();
                invocation
                    .key(format!("{tag}:nss"))
                    .arg(s.entry_prefix(tenant.as_str()))
                    .arg(format!("{tag}:ns:"));
                let mut conn = s.conn().await?;
                s.timed(invocation.invoke_async(&mut conn)).await?
            }
            Invalidation::EmbedderOtherThan(version) => self.drop_other_embedders(version).await?,
        };
        if !removed.is_empty() {
            s.publish_removed(&removed).await?;
        }
        Ok(removed.len() as u64)
    }

    async fn usage(&self, partition: &Partition) -> Result<PartitionUsage> {
        let s = &self.shared;
        let tenant = partition.tenant.as_str();
        let set = format!(
            "{}:ns:{}",
            s.tenant_tag(tenant),
            encode_key_part(partition.namespace.as_str())
        );
        let mut invocation = s.usage_script.prepare_invoke();
        invocation.key(set).arg(s.entry_prefix(tenant));
        let mut conn = s.conn().await?;
        let (entries, bytes): (u64, u64) = s.timed(invocation.invoke_async(&mut conn)).await?;
        Ok(PartitionUsage {
            entries,
            bytes: Some(bytes),
        })
    }
}

impl RedisStore {
    /// SCAN every entry key and delete those of another embedder version (an operator's
    /// clean-up: O(entries), one `GET` each).
    async fn drop_other_embedders(&self, version: &str) -> Result<Vec<String>> {
        let s = &self.shared;
        let pattern = format!("{}:{{*}}:e:*", s.config.prefix);
        let mut cursor: u64 = 0;
        let mut removed = Vec::new();
        loop {
            let mut conn = s.conn().await?;
            let (next, keys): (u64, Vec<String>) = s
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut conn),
                )
                .await?;
            for key in keys {
                let raw: Option<Vec<u8>> = s
                    .timed(redis::cmd("GET").arg(&key).query_async(&mut conn))
                    .await?;
                let Some(entry) = raw.and_then(|b| serde_json::from_slice::<Entry>(&b).ok()) else {
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
        Ok(removed)
    }
}
