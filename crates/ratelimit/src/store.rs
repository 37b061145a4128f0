//! The backend trait: [`Store`].

use std::sync::Arc;

use async_trait::async_trait;

use crate::decision::Decision;
use crate::error::Result;
use crate::quota::Policy;

/// Where counters live. A store operation is a whole decision that the backend runs
/// atomically (in memory under one lock per key, in Redis as one Lua script call), so many
/// instances sharing one Redis admit exactly what the policy allows.
///
/// The trait uses `#[async_trait]` (boxed futures) so that it is object safe: a limiter
/// holds an `Arc<dyn Store>` and switching memory to Redis changes one constructor. One
/// allocation per call is small next to a Redis round trip.
///
/// `key` is any string (user id, API key, IP address, …); stores must keep hostile keys
/// (braces, colons, newlines, very long, any Unicode) apart from each other.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Count a request of `cost` units against every quota of `policy` for `key`. Admitted
    /// only when every quota admits it; a denial consumes from no quota.
    ///
    /// # Errors
    /// Backend failures ([`Error::Backend`](crate::Error::Backend),
    /// [`Error::Protocol`](crate::Error::Protocol)).
    async fn acquire(&self, key: &str, policy: &Policy, cost: u64) -> Result<Decision>;

    /// What a request of cost 1 would get now, consuming nothing; `remaining` is what is
    /// left now.
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire).
    async fn peek(&self, key: &str, policy: &Policy) -> Result<Decision>;

    /// Give `cost` units back to every quota of `policy` for `key` (for example when the
    /// guarded call was never made). Never raises a quota above its capacity.
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire).
    async fn refund(&self, key: &str, policy: &Policy, cost: u64) -> Result<()>;

    /// Forget everything counted for `key` under `policy`. States counted under another
    /// form of the policy's name that cannot read `policy`'s (another algorithm, number of
    /// quotas, or a window algorithm's period) are left to expire on their own.
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire).
    async fn reset(&self, key: &str, policy: &Policy) -> Result<()>;

    /// A short name for metrics and logs (`memory`, `redis`).
    fn backend_name(&self) -> &'static str;

    /// Whether the backend answers right now, for a `/health` endpoint: `Ok(())` from a store
    /// that needs no server (the default); the Redis store sends one `PING` (within its
    /// timeout, if it has one) and returns the error an operation would get.
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire).
    async fn health(&self) -> Result<()> {
        Ok(())
    }

    /// [`acquire`](Self::acquire) for a store that decides without waiting (in memory):
    /// `Some` answer right away, without the boxed future an `async_trait` call allocates.
    /// The default, `None`, sends callers to `acquire`; a store wrapping another may
    /// forward. [`RateLimiter`](crate::RateLimiter) asks here first.
    fn acquire_now(&self, key: &str, policy: &Policy, cost: u64) -> Option<Result<Decision>> {
        let _ = (key, policy, cost);
        None
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn acquire(&self, key: &str, policy: &Policy, cost: u64) -> Result<Decision> {
        (**self).acquire(key, policy, cost).await
    }
    async fn peek(&self, key: &str, policy: &Policy) -> Result<Decision> {
        (**self).peek(key, policy).await
    }
    async fn refund(&self, key: &str, policy: &Policy, cost: u64) -> Result<()> {
        (**self).refund(key, policy, cost).await
    }
    async fn reset(&self, key: &str, policy: &Policy) -> Result<()> {
        (**self).reset(key, policy).await
    }
    fn backend_name(&self) -> &'static str {
        (**self).backend_name()
    }
    async fn health(&self) -> Result<()> {
        (**self).health().await
    }
    fn acquire_now(&self, key: &str, policy: &Policy, cost: u64) -> Option<Result<Decision>> {
        (**self).acquire_now(key, policy, cost)
    }
}
