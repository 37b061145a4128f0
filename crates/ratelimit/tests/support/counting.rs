//! Shared by the lease tests (a `#[path]` module): a real `RedisStore` with counters on the
//! lease batches it is given. Nothing is mocked: every call goes to Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palisade_ratelimit::{LeaseCall, Policy, RedisStore, ReleaseCall, Store};

/// A store that counts the lease batches (`lease_many` calls) and the lease calls in them
/// that it is given, before Redis answers them, and the give-back batches (`release_many`
/// calls) and give-backs in them.
#[derive(Debug)]
pub(crate) struct Counting {
    inner: RedisStore,
    pub(crate) batches: Arc<AtomicU64>,
    pub(crate) calls: Arc<AtomicU64>,
    pub(crate) releases: Arc<AtomicU64>,
    pub(crate) gives: Arc<AtomicU64>,
}

impl Counting {
    pub(crate) fn new(inner: RedisStore) -> Self {
        Self {
            inner,
            batches: Arc::default(),
            calls: Arc::default(),
            releases: Arc::default(),
            gives: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn acquire(
        &self,
        key: &str,
        policy: &Policy,
        cost: u64,
    ) -> palisade_ratelimit::Result<palisade_ratelimit::Decision> {
        self.inner.acquire(key, policy, cost).await
    }
    async fn peek(
        &self,
        key: &str,
        policy: &Policy,
    ) -> palisade_ratelimit::Result<palisade_ratelimit::Decision> {
        self.inner.peek(key, policy).await
    }
    async fn refund(
        &self,
        key: &str,
        policy: &Policy,
        cost: u64,
    ) -> palisade_ratelimit::Result<()> {
        self.inner.refund(key, policy, cost).await
    }
    async fn reset(&self, key: &str, policy: &Policy) -> palisade_ratelimit::Result<()> {
        self.inner.reset(key, policy).await
    }
    fn backend_name(&self) -> &'static str {
        "counting"
    }
    async fn lease_many(
        &self,
        calls: &[LeaseCall<'_>],
    ) -> Vec<palisade_ratelimit::Result<palisade_ratelimit::Lease>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.calls.fetch_add(calls.len() as u64, Ordering::SeqCst);
        self.inner.lease_many(calls).await
    }
    async fn release_many(&self, gives: &[ReleaseCall<'_>]) -> Vec<palisade_ratelimit::Result<()>> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.gives.fetch_add(gives.len() as u64, Ordering::SeqCst);
        self.inner.release_many(gives).await
    }
}
