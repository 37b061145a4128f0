//! [`RateLimiter`]: a store behind a per-call timeout and a failure mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::decision::{Decision, DecisionSource};
use crate::error::{Error, Result};
use crate::memory::MemoryStore;
use crate::quota::Policy;
use crate::store::Store;

/// The `tier` label of decisions made outside the rules engine.
static NO_TIER: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("none"));

/// The default per-call backend timeout: 50 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// What a [`RateLimiter`] does when its store fails or does not answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureMode {
    /// Admit the request uncounted (the service stays up; limits are off while the store
    /// is down). The usual choice for limits that protect fairness.
    #[default]
    FailOpen,
    /// Deny the request (limits are never exceeded; the service is down while the store is).
    /// The choice for limits that protect money or a fragile upstream.
    FailClosed,
    /// Count the request in an in-memory store of this process: limits hold per instance
    /// while the shared store is down, and the shared store takes over again as soon as it
    /// answers.
    FallbackToMemory,
}

impl FailureMode {
    /// A stable lowercase name.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
            Self::FallbackToMemory => "fallback_to_memory",
        }
    }
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    failure_mode: FailureMode,
    timeout: Option<Duration>,
    fallback: Option<MemoryStore>,
}

/// Decides requests against a [`Store`], with a per-call timeout (default
/// [`DEFAULT_TIMEOUT`], 50 ms) so a hung backend never stalls a request, and a
/// [`FailureMode`] that turns backend failures into decisions. Cheap to clone.
///
/// # Metrics and traces
/// Names are stable (the `metrics` facade; install any recorder):
///
/// | name | kind | labels |
/// |---|---|---|
/// | `palisade_ratelimit_decisions_total` | counter | `outcome` (`allowed`, `denied`, `shadow_denied`), `policy`, `tier`, `source` (`store`, `fallback`, `fail_open`, `fail_closed`) |
/// | `palisade_ratelimit_backend_errors_total` | counter | `backend`, `kind` (`timeout`, `backend`, `protocol`, `other`), `policy` |
/// | `palisade_ratelimit_decision_duration_seconds` | histogram | `backend`, `source` |
///
/// Every decision runs in a `tracing` span `ratelimit.acquire` (fields `policy`, `cost`,
/// `backend`); each backend failure is logged at `WARN` with the error and the failure mode.
///
/// ```
/// use palisade_ratelimit::{FailureMode, MemoryStore, Policy, Quota, RateLimiter, Algorithm};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> palisade_ratelimit::Result<()> {
/// let limiter = RateLimiter::builder(MemoryStore::new())
///     .failure_mode(FailureMode::FallbackToMemory)
///     .timeout(Duration::from_millis(20))
///     .build();
/// let policy = Policy::single("search", Algorithm::TokenBucket, Quota::per_second(5).with_burst(10))?;
/// let d = limiter.acquire("ip:203.0.113.7", &policy, 3).await; // an expensive request
/// assert!(d.allowed);
/// assert_eq!(d.remaining(), Some(7));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

impl RateLimiter {
    /// A limiter over `store` with [`FailureMode::FailOpen`] and the default timeout.
    pub fn new(store: impl Store + 'static) -> Self {
        Self::builder(store).build()
    }

    /// A limiter with another failure mode or timeout.
    pub fn builder(store: impl Store + 'static) -> RateLimiterBuilder {
        RateLimiterBuilder {
            store: Arc::new(store),
            failure_mode: FailureMode::default(),
            timeout: Some(DEFAULT_TIMEOUT),
            fallback: None,
        }
    }

    /// The store decisions are made by.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The failure mode.
    pub fn failure_mode(&self) -> FailureMode {
        self.inner.failure_mode
    }

    /// Whether the store answers right now, for a `/health` endpoint: one
    /// [`Store::health`] call (a `PING` with the Redis store) bounded by the limiter's
    /// timeout. A failure here does not stop decisions: the [`FailureMode`] answers them.
    ///
    /// # Errors
    /// The store's error, or [`Error::Timeout`].
    pub async fn health(&self) -> Result<()> {
        self.with_timeout(self.inner.store.health()).await
    }

    /// Count a request of `cost` units for `key`. Never fails: a store failure or timeout
    /// becomes a decision according to the [`FailureMode`] (see
    /// [`Decision::source`](Decision::source)).
    ///
    /// Costs one store call (one Redis round trip with the Redis store), bounded by the
    /// timeout.
    ///
    /// With a store that decides without waiting (the memory store, see
    /// [`Store::acquire_now`]) no future is boxed and, for a single-quota policy, nothing is
    /// allocated at all.
    pub async fn acquire(&self, key: &str, policy: &Policy, cost: u64) -> Decision {
        self.acquire_labeled(key, policy, cost, &NO_TIER, false)
            .await
    }

    /// Like [`acquire`](Self::acquire), but a store failure is returned instead of being
    /// turned into a decision (the timeout still applies).
    ///
    /// # Errors
    /// [`Error::Timeout`] and the store's errors.
    pub async fn try_acquire(&self, key: &str, policy: &Policy, cost: u64) -> Result<Decision> {
        self.with_timeout(self.inner.store.acquire(key, policy, cost))
            .await
    }

    /// What a request of cost 1 would get now, consuming nothing.
    ///
    /// # Errors
    /// [`Error::Timeout`] and the store's errors.
    pub async fn peek(&self, key: &str, policy: &Policy) -> Result<Decision> {
        self.with_timeout(self.inner.store.peek(key, policy)).await
    }

    /// Give `cost` units back (also to the fallback store, if it counted them).
    ///
    /// # Errors
    /// [`Error::Timeout`] and the store's errors.
    pub async fn refund(&self, key: &str, policy: &Policy, cost: u64) -> Result<()> {
        if let Some(fallback) = &self.inner.fallback {
            fallback.refund_sync(key, policy, cost);
        }
        self.with_timeout(self.inner.store.refund(key, policy, cost))
            .await
    }

    /// Forget everything counted for `key` under `policy` (also in the fallback store).
    ///
    /// # Errors
    /// [`Error::Timeout`] and the store's errors.
    pub async fn reset(&self, key: &str, policy: &Policy) -> Result<()> {
        if let Some(fallback) = &self.inner.fallback {
            fallback.reset_sync(key, policy);
        }
        self.with_timeout(self.inner.store.reset(key, policy)).await
    }

    async fn with_timeout<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match self.inner.timeout {
            Some(limit) => tokio::time::timeout(limit, fut)
                .await
                .unwrap_or(Err(Error::Timeout(limit))),
            None => fut.await,
        }
    }

    /// [`acquire`](Self::acquire) with the tier and shadow flag for metrics (used by the
    /// rules engine).
    pub(crate) async fn acquire_labeled(
        &self,
        key: &str,
        policy: &Policy,
        cost: u64,
        tier: &Arc<str>,
        shadow: bool,
    ) -> Decision {
        let backend = self.inner.store.backend_name();
        let span = tracing::debug_span!("ratelimit.acquire", policy = policy.name(), cost, backend);
        let started = Instant::now();
        // A store that decides at once needs neither the timeout nor a boxed future.
        let decision = match self.inner.store.acquire_now(key, policy, cost) {
            Some(Ok(d)) => d,
            Some(Err(error)) => span.in_scope(|| self.on_failure(key, policy, cost, &error)),
            None => {
                async {
                    match self.try_acquire(key, policy, cost).await {
                        Ok(d) => d,
                        Err(error) => self.on_failure(key, policy, cost, &error),
                    }
                }
                .instrument(span.clone())
                .await
            }
        };
        let _entered = span.enter();
        metrics::histogram!(
            "palisade_ratelimit_decision_duration_seconds",
            "backend" => backend,
            "source" => decision.source.as_str(),
        )
        .record(started.elapsed().as_secs_f64());
        let outcome = match (decision.allowed, shadow) {
            (true, _) => "allowed",
            (false, false) => "denied",
            (false, true) => "shadow_denied",
        };
        // Label values share the policy's and tier's names (a reference count, no copy).
        metrics::counter!(
            "palisade_ratelimit_decisions_total",
            "outcome" => outcome,
            "policy" => metrics::SharedString::from(Arc::clone(policy.name_arc())),
            "tier" => metrics::SharedString::from(Arc::clone(tier)),
            "source" => decision.source.as_str(),
        )
        .increment(1);
        tracing::trace!(
            allowed = decision.allowed,
            source = decision.source.as_str(),
            "decided"
        );
        decision
    }

    fn on_failure(&self, key: &str, policy: &Policy, cost: u64, error: &Error) -> Decision {
        let backend = self.inner.store.backend_name();
        let kind = match error {
            Error::Timeout(_) => "timeout",
            Error::Backend { .. } => "backend",
            Error::Protocol(_) => "protocol",
            _ => "other",
        };
        metrics::counter!(
            "palisade_ratelimit_backend_errors_total",
            "backend" => backend,
            "kind" => kind,
            "policy" => policy.name().to_owned(),
        )
        .increment(1);
        let mode = self.inner.failure_mode;
        tracing::warn!(%error, backend, policy = policy.name(), failure_mode = mode.as_str(), "rate-limit store failed");
        match (mode, &self.inner.fallback) {
            (FailureMode::FallbackToMemory, Some(fallback)) => {
                let mut d = fallback.acquire_sync(key, policy, cost);
                d.source = DecisionSource::Fallback;
                d
            }
            (FailureMode::FailClosed, _) => Decision::uncounted(false),
            _ => Decision::uncounted(true),
        }
    }
}

/// Builds a [`RateLimiter`].
#[derive(Debug)]
pub struct RateLimiterBuilder {
    store: Arc<dyn Store>,
    failure_mode: FailureMode,
    timeout: Option<Duration>,
    fallback: Option<MemoryStore>,
}

impl RateLimiterBuilder {
    /// What to do when the store fails (default [`FailureMode::FailOpen`]).
    #[must_use]
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// Per-call store timeout (default [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No timeout (only sensible for the memory store).
    #[must_use]
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// The in-memory store used by [`FailureMode::FallbackToMemory`] (default: a fresh
    /// [`MemoryStore`]); pass one to bound it or give it a fake clock.
    #[must_use]
    pub fn fallback_store(mut self, store: MemoryStore) -> Self {
        self.fallback = Some(store);
        self
    }

    /// Build the limiter.
    pub fn build(self) -> RateLimiter {
        let fallback = match self.failure_mode {
            FailureMode::FallbackToMemory => Some(self.fallback.unwrap_or_default()),
            _ => None,
        };
        RateLimiter {
            inner: Arc::new(Inner {
                store: self.store,
                failure_mode: self.failure_mode,
                timeout: self.timeout,
                fallback,
            }),
        }
    }
}
