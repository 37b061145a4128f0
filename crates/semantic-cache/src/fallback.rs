//! [`FailureMode::FallbackToMemory`](crate::FailureMode::FallbackToMemory): a store that
//! answers from a local [`MemoryStore`] while the primary backend is down, and never forgets
//! an invalidation the primary did not confirm.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::key::{EntryId, Partition};
use crate::memory::MemoryStore;
use crate::stats::names;
use crate::store::{Invalidation, PartitionUsage, SearchQuery, Store};

/// Most invalidations kept for replay while the primary is down. Past it, an invalidation
/// that fails on the primary is still applied locally and returned as an error, but not
/// queued (logged at ERROR).
pub const MAX_PENDING_INVALIDATIONS: usize = 10_000;

/// The primary/fallback pair behind [`FailureMode::FallbackToMemory`](crate::FailureMode).
///
/// - Reads and inserts go to the primary; a backend error ([`Error::is_backend`]) sends the
///   operation to the memory store instead (counted in
///   `palisade_semantic_cache_fallbacks_total{op}`, logged at WARN).
/// - Invalidations are applied to both. One the primary fails to apply is **returned as an
///   error** (the caller learns it is not done everywhere) and **queued**: before the
///   primary serves anything again, the queue is replayed in order; while the replay fails,
///   the memory store keeps answering. So an answer invalidated during an outage never comes
///   back from Redis when it recovers with its data.
#[derive(Debug)]
pub(crate) struct Fallback {
    primary: Arc<dyn Store>,
    fallback: MemoryStore,
    pending: Mutex<VecDeque<(u64, Invalidation)>>,
    pending_len: AtomicUsize,
    next_seq: AtomicU64,
}

fn fell_back(op: &'static str, err: &Error) {
    tracing::warn!(
        op,
        error = err as &dyn std::error::Error,
        "semantic cache backend failed; using the memory fallback"
    );
    metrics::counter!(names::FALLBACKS, "op" => op).increment(1);
}

impl Fallback {
    pub(crate) fn new(primary: Arc<dyn Store>, fallback: MemoryStore) -> Self {
        Self {
            primary,
            fallback,
            pending: Mutex::new(VecDeque::new()),
            pending_len: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
        }
    }

    pub(crate) fn memory(&self) -> &MemoryStore {
        &self.fallback
    }

    /// Invalidations waiting for the primary.
    pub(crate) fn pending(&self) -> usize {
        self.pending_len.load(Ordering::Acquire)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Invalidation)>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replay queued invalidations on the primary, oldest first. Concurrent replays may
    /// apply one twice, which is harmless: invalidation is idempotent.
    async fn replay(&self) -> Result<()> {
        while self.pending() > 0 {
            let Some((seq, what)) = self.queue().front().cloned() else {
                return Ok(());
            };
            self.primary.invalidate(&what).await?;
            let mut queue = self.queue();
            if queue.front().is_some_and(|(s, _)| *s == seq) {
                queue.pop_front();
                self.pending_len.store(queue.len(), Ordering::Release);
            }
            drop(queue);
            tracing::info!(
                kind = what.kind(),
                "semantic cache replayed an invalidation on the recovered backend"
            );
        }
        Ok(())
    }

    /// The primary, once nothing is pending for it.
    async fn ready(&self) -> Result<&dyn Store> {
        if self.pending() > 0 {
            self.replay().await?;
        }
        Ok(&*self.primary)
    }

    fn remember(&self, what: &Invalidation) -> bool {
        let mut queue = self.queue();
        if queue.len() >= MAX_PENDING_INVALIDATIONS {
            return false;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        queue.push_back((seq, what.clone()));
        self.pending_len.store(queue.len(), Ordering::Release);
        true
    }
}

macro_rules! or_fallback {
    ($self:ident, $op:literal, |$store:ident| $call:expr) => {{
        let primary = match $self.ready().await {
            Ok(store) => {
                let $store = store;
                $call.await
            }
            Err(e) => Err(e),
        };
        match primary {
            Err(e) if e.is_backend() => {
                fell_back($op, &e);
                let $store: &dyn Store = &$self.fallback;
                $call.await
            }
            other => other,
        }
    }};
}

#[async_trait]
impl Store for Fallback {
    async fn insert(&self, entry: Arc<Entry>, ttl: Duration) -> Result<()> {
        or_fallback!(self, "insert", |store| store
            .insert(Arc::clone(&entry), ttl))
    }

    async fn get(
        &self,
        partition: &Partition,
        id: &EntryId,
        now_ms: u64,
    ) -> Result<Option<Arc<Entry>>> {
        or_fallback!(self, "get", |store| store.get(partition, id, now_ms))
    }

    async fn search(&self, query: SearchQuery<'_>) -> Result<Vec<(Arc<Entry>, f32)>> {
        or_fallback!(self, "search", |store| store.search(query))
    }

    async fn invalidate(&self, what: &Invalidation) -> Result<u64> {
        let local = self.fallback.invalidate(what).await?;
        let primary = match self.ready().await {
            Ok(store) => store.invalidate(what).await,
            Err(e) => Err(e),
        };
        match primary {
            Ok(n) => Ok(n + local),
            Err(e) if e.is_backend() => {
                fell_back("invalidate", &e);
                if self.remember(what) {
                    tracing::warn!(
                        kind = what.kind(),
                        "invalidation applied in memory only; queued for the backend"
                    );
                } else {
                    tracing::error!(
                        kind = what.kind(),
                        max = MAX_PENDING_INVALIDATIONS,
                        "invalidation applied in memory only; the replay queue is full, it will not be retried"
                    );
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn usage(&self, partition: &Partition) -> Result<PartitionUsage> {
        or_fallback!(self, "usage", |store| store.usage(partition))
    }

    /// The primary's health: the memory fallback keeps answering, but `/health` should show
    /// that Redis is gone.
    async fn health(&self) -> Result<()> {
        self.primary.health().await
    }
}

/// A primary store with a memory fallback.
#[deprecated(
    since = "0.2.0",
    note = "use `SemanticCache::builder().failure_mode(FailureMode::FallbackToMemory)`"
)]
#[derive(Debug, Clone)]
pub struct FallbackStore {
    inner: Arc<Fallback>,
}

#[allow(deprecated)]
impl FallbackStore {
    /// A primary store with a memory fallback; see
    /// [`FailureMode::FallbackToMemory`](crate::FailureMode::FallbackToMemory) for what it
    /// does.
    pub fn new(primary: impl Store + 'static, fallback: MemoryStore) -> Self {
        Self {
            inner: Arc::new(Fallback::new(Arc::new(primary), fallback)),
        }
    }

    /// The local fallback.
    pub fn fallback(&self) -> &MemoryStore {
        self.inner.memory()
    }
}

#[allow(deprecated)]
#[async_trait]
impl Store for FallbackStore {
    async fn insert(&self, entry: Arc<Entry>, ttl: Duration) -> Result<()> {
        self.inner.insert(entry, ttl).await
    }

    async fn get(
        &self,
        partition: &Partition,
        id: &EntryId,
        now_ms: u64,
    ) -> Result<Option<Arc<Entry>>> {
        self.inner.get(partition, id, now_ms).await
    }

    async fn search(&self, query: SearchQuery<'_>) -> Result<Vec<(Arc<Entry>, f32)>> {
        self.inner.search(query).await
    }

    async fn invalidate(&self, what: &Invalidation) -> Result<u64> {
        self.inner.invalidate(what).await
    }

    async fn usage(&self, partition: &Partition) -> Result<PartitionUsage> {
        self.inner.usage(partition).await
    }

    async fn health(&self) -> Result<()> {
        self.inner.health().await
    }
}
