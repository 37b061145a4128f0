//! The in-memory backend: entries in a bounded `moka` cache, vectors in flat indexes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::notification::RemovalCause;
use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::index::{VectorIndex, dot};
use crate::key::{EntryId, Partition, ScopeId};
use crate::store::{Invalidation, PartitionUsage, SearchQuery, Store};

/// Bounds of a [`MemoryStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Most entries kept (default 100 000).
    pub max_entries: u64,
    /// Most bytes kept, as counted by [`Entry::approx_bytes`] (default 256 MiB).
    pub max_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl MemoryConfig {
    setters! {
        plain { max_entries: u64, max_bytes: u64 }
    }
}

/// Weight units per entry slot: an entry weighs at least this much, so the total weight
/// bound (`max_entries * UNIT`) caps the entry count, and more in proportion to its bytes,
/// so the same bound caps the bytes.
const UNIT: u64 = 1024;

type IndexKey = (ScopeId, Arc<str>);

#[derive(Debug, Default)]
struct Indexes {
    by_partition: HashMap<Partition, HashMap<IndexKey, VectorIndex>>,
}

impl Indexes {
    fn remove(&mut self, entry: &Entry) {
        let Some(scopes) = self.by_partition.get_mut(&entry.scope.partition) else {
            return;
        };
        let key: IndexKey = (entry.scope_id(), Arc::from(entry.embedder.as_str()));
        if let Some(index) = scopes.get_mut(&key) {
            index.remove(&entry.id);
            if index.is_empty() {
                scopes.remove(&key);
            }
        }
        if scopes.is_empty() {
            self.by_partition.remove(&entry.scope.partition);
        }
    }
}

fn lock(indexes: &Mutex<Indexes>) -> MutexGuard<'_, Indexes> {
    // The index holds no invariant a panic could break half-way that a search relies on
    // (every hit is verified against the entry cache), so a poisoned lock is still usable.
    indexes.lock().unwrap_or_else(PoisonError::into_inner)
}

struct PerEntryTtl;

impl moka::Expiry<EntryId, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _: &EntryId, value: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(Duration::from_millis(
            value.expires_at_ms.saturating_sub(value.created_at_ms),
        ))
    }

    fn expire_after_update(
        &self,
        _: &EntryId,
        value: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(
            value.expires_at_ms.saturating_sub(value.created_at_ms),
        ))
    }
}

/// Entries in memory, bounded by entry count and bytes (least recently used go first,
/// `moka`'s TinyLFU policy) and by each entry's TTL.
///
/// Lookups by id cost one hash-map read. A search scans the flat index of the query's
/// scope (see [`VectorIndex`]). Invalidation by tag, namespace or tenant walks all entries,
/// O(n). Expiry is also checked against the cache's clock on every read, so a fake clock
/// expires entries in tests without waiting.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    entries: moka::sync::Cache<EntryId, Arc<Entry>>,
    indexes: Arc<Mutex<Indexes>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(MemoryConfig::default()).expect("the default configuration is valid")
    }
}

impl MemoryStore {
    /// A store with these bounds.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a bound is zero.
    pub fn new(config: MemoryConfig) -> Result<Self> {
        if config.max_entries == 0 || config.max_bytes == 0 {
            return Err(Error::InvalidConfig(
                "max_entries and max_bytes must be above 0".into(),
            ));
        }
        let capacity = config.max_entries.saturating_mul(UNIT);
        let max_bytes = config.max_bytes;
        let indexes = Arc::new(Mutex::new(Indexes::default()));
        let listener_indexes = Arc::clone(&indexes);
        let entries = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(move |_: &EntryId, entry: &Arc<Entry>| -> u32 {
                let bytes = entry.approx_bytes() as u128;
                let by_bytes = (bytes * u128::from(capacity)).div_ceil(u128::from(max_bytes));
                by_bytes.max(u128::from(UNIT)).min(u128::from(u32::MAX)) as u32
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(
                move |_id: Arc<EntryId>, entry: Arc<Entry>, cause: RemovalCause| {
                    if cause != RemovalCause::Replaced {
                        lock(&listener_indexes).remove(&entry);
                    }
                },
            )
            .build();
        Ok(Self { entries, indexes })
    }

    /// Let the cache apply pending evictions now (moka does it lazily); for tests.
    pub fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }

    /// Entries held right now (after [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    fn live(&self, partition: &Partition, id: &EntryId, now_ms: u64) -> Option<Arc<Entry>> {
        let entry = self.entries.get(id)?;
        if entry.scope.partition != *partition {
            return None;
        }
        if entry.is_expired(now_ms) {
            self.entries.invalidate(id);
            return None;
        }
        Some(entry)
    }

    /// Drop the index rows of entries that are no longer in the cache.
    fn forget(&self, query: &SearchQuery<'_>, ids: &[EntryId]) {
        if ids.is_empty() {
            return;
        }
        let mut indexes = lock(&self.indexes);
        let key: IndexKey = (query.scope, Arc::from(query.embedder));
        if let Some(index) = indexes
            .by_partition
            .get_mut(query.partition)
            .and_then(|s| s.get_mut(&key))
        {
            for id in ids {
                index.remove(id);
            }
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(&self, entry: Arc<Entry>, _ttl: Duration) -> Result<()> {
        let vector_ok = !entry.vector.is_empty();
        if vector_ok {
            // Check the vector before anything is stored: a bad one fails the whole insert.
            crate::embed::check_vector(&entry.vector, entry.vector.len())?;
        }
        // moka first, without the index lock: its eviction listener takes that lock.
        self.entries.insert(entry.id, Arc::clone(&entry));
        if vector_ok {
            let mut indexes = lock(&self.indexes);
            let scopes = indexes
                .by_partition
                .entry(entry.scope.partition.clone())
                .or_default();
            let index = scopes
                .entry((entry.scope_id(), Arc::from(entry.embedder.as_str())))
                .or_insert_with(|| VectorIndex::new(entry.vector.len()));
            index.insert(entry.id, &entry.vector)?;
        }
        Ok(())
    }

    async fn get(
        &self,
        partition: &Partition,
        id: &EntryId,
        now_ms: u64,
    ) -> Result<Option<Arc<Entry>>> {
        Ok(self.live(partition, id, now_ms))
    }

    async fn search(&self, query: SearchQuery<'_>) -> Result<Vec<(Arc<Entry>, f32)>> {
        let neighbors = {
            let indexes = lock(&self.indexes);
            let key: IndexKey = (query.scope, Arc::from(query.embedder));
            match indexes
                .by_partition
                .get(query.partition)
                .and_then(|s| s.get(&key))
            {
                Some(index) => index.search(query.vector, query.limit, query.min_similarity)?,
                None => {
                    crate::embed::check_vector(query.vector, query.vector.len())?;
                    Vec::new()
                }
            }
        };
        let mut found = Vec::with_capacity(neighbors.len());
        let mut gone = Vec::new();
        for n in neighbors {
            match self.live(query.partition, &n.id, query.now_ms) {
                Some(entry)
                    if entry.scope_id() == query.scope
                        && entry.vector.len() == query.vector.len() =>
                {
                    // Exact similarity: large partitions are searched approximately.
                    let similarity = dot(&entry.vector, query.vector);
                    if similarity >= query.min_similarity {
                        found.push((entry, similarity));
                    }
                }
                _ => gone.push(n.id),
            }
        }
        self.forget(&query, &gone);
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found.truncate(query.limit);
        Ok(found)
    }

    async fn invalidate(&self, what: &Invalidation) -> Result<u64> {
        if let Invalidation::Entry { partition, id } = what {
            let Some(entry) = self.entries.get(id) else {
                return Ok(0);
            };
            if entry.scope.partition != *partition {
                return Ok(0);
            }
            self.entries.invalidate(id);
            return Ok(1);
        }
        let ids: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|(_, e)| what.matches(e))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.entries.invalidate(id);
        }
        Ok(ids.len() as u64)
    }

    async fn usage(&self, partition: &Partition) -> Result<PartitionUsage> {
        let mut usage = PartitionUsage {
            entries: 0,
            bytes: Some(0),
        };
        for (_, entry) in &self.entries {
            if entry.scope.partition == *partition {
                usage.entries += 1;
                usage.bytes = usage.bytes.map(|b| b + entry.approx_bytes() as u64);
            }
        }
        Ok(usage)
    }
}
