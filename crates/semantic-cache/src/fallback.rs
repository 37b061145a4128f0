//! A store decorator that answers from memory while the primary backend is down.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::entry::Entry;
use crate::error::Result;
use crate::key::{EntryId, Partition};
use crate::memory::MemoryStore;
use crate::stats::names;
use crate::store::{Invalidation, PartitionUsage, SearchQuery, Store};

/// Wraps a primary store (typically Redis) and sends every operation that fails with a
/// transient error ([`crate::Error::is_transient`]) to a local [`MemoryStore`] instead, so a
/// Redis outage degrades the cache to per-instance instead of failing requests.
///
/// Entries written to the fallback while the primary is down stay local; once the primary
/// answers again, reads go back to it (the fallback is only consulted on failure).
/// Invalidations are applied to both, so nothing stale is served from memory later.
/// Every fallback is counted in `palisade_semantic_cache_fallbacks_total{op}` and logged at
/// `warn`.
#[derive(Debug, Clone)]
pub struct FallbackStore {
    primary: Arc<dyn Store>,
    fallback: MemoryStore,
}

impl FallbackStore {
    /// A primary store with a memory fallback.
    pub fn new(primary: impl Store + 'static, fallback: MemoryStore) -> Self {
        Self {
            primary: Arc::new(primary),
            fallback,
        }
    }

    /// The local fallback.
    pub fn fallback(&self) -> &MemoryStore {
        &self.fallback
    }
}

fn fell_back(op: &'static str, err: &crate::Error) {
    tracing::warn!(op, error = %err, "semantic cache backend failed; using the memory fallback");
    metrics::counter!(names::FALLBACKS, "op" => op).increment(1);
}

#[async_trait]
impl Store for FallbackStore {
    async fn insert(&self, entry: Arc<Entry>, ttl: Duration) -> Result<()> {
        match self.primary.insert(Arc::clone(&entry), ttl).await {
            Err(e) if e.is_transient() => {
                fell_back("insert", &e);
                self.fallback.insert(entry, ttl).await
            }
            other => other,
        }
    }

    async fn get(
        &self,
        partition: &Partition,
        id: &EntryId,
        now_ms: u64,
    ) -> Result<Option<Arc<Entry>>> {
        match self.primary.get(partition, id, now_ms).await {
            Err(e) if e.is_transient() => {
                fell_back("get", &e);
                self.fallback.get(partition, id, now_ms).await
            }
            other => other,
        }
    }

    async fn search(&self, query: SearchQuery<'_>) -> Result<Vec<(Arc<Entry>, f32)>> {
        match self.primary.search(query).await {
            Err(e) if e.is_transient() => {
                fell_back("search", &e);
                self.fallback.search(query).await
            }
            other => other,
        }
    }

    async fn invalidate(&self, what: &Invalidation) -> Result<u64> {
        let local = self.fallback.invalidate(what).await?;
        match self.primary.invalidate(what).await {
            Err(e) if e.is_transient() => {
                fell_back("invalidate", &e);
                Ok(local)
            }
            Ok(n) => Ok(n + local),
            Err(e) => Err(e),
        }
    }

    async fn usage(&self, partition: &Partition) -> Result<PartitionUsage> {
        match self.primary.usage(partition).await {
            Err(e) if e.is_transient() => {
                fell_back("usage", &e);
                self.fallback.usage(partition).await
            }
            other => other,
        }
    }
}
