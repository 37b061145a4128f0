//! Shared by the lease tests (a `#[path]` module): a real `RedisStore` with counters on the
//! lease batches it is given. Nothing is mocked: every call goes to Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// [`Counting::busy`]: lease batches run one at a time, each this much longer.
    busy: Option<(tokio::sync::Mutex<()>, Duration)>,
    /// Lease batches given and not answered yet.
    inside: AtomicU64,
    /// For each lease batch carrying a call a request waits on (cost > 0): how many
    /// batches were given and not answered when it came.
    pub(crate) ahead_of_requests: Arc<parking_lot::Mutex<Vec<u64>>>,
}

impl Counting {
    pub(crate) fn new(inner: RedisStore) -> Self {
        Self {
            inner,
            batches: Arc::default(),
            calls: Arc::default(),
            releases: Arc::default(),
            gives: Arc::default(),
            busy: None,
            inside: AtomicU64::new(0),
            ahead_of_requests: Arc::default(),
        }
    }

    /// A store as busy as a Redis saturated by lease calls: its lease batches run one at a
    /// time, in the order they came (a fair lock), each `extra` longer than Redis takes.
    #[allow(
        dead_code,
        reason = "tests/lease_batch.rs uses it; tests/lease_hang.rs shares this module"
    )]
    pub(crate) fn busy(inner: RedisStore, extra: Duration) -> Self {
        Self {
            busy: Some((tokio::sync::Mutex::new(()), extra)),
            ..Self::new(inner)
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
        let ahead = self.inside.fetch_add(1, Ordering::SeqCst);
        if calls.iter().any(|c| c.request.cost > 0) {
            self.ahead_of_requests.lock().push(ahead);
        }
        let answers = match &self.busy {
            None => self.inner.lease_many(calls).await,
            Some((one_at_a_time, extra)) => {
                let _turn = one_at_a_time.lock().await;
                tokio::time::sleep(*extra).await;
                self.inner.lease_many(calls).await
            }
        };
        self.inside.fetch_sub(1, Ordering::SeqCst);
        answers
    }
    async fn release_many(&self, gives: &[ReleaseCall<'_>]) -> Vec<palisade_ratelimit::Result<()>> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.gives.fetch_add(gives.len() as u64, Ordering::SeqCst);
        self.inner.release_many(gives).await
    }
}
