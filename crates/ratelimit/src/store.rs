//! The backend trait: [`Store`].

use std::sync::Arc;

use async_trait::async_trait;

use crate::decision::Decision;
use crate::error::Result;
use crate::lease::{Lease, LeaseCall, LeaseRequest, LeaseReturn, ReleaseCall};
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

    /// One lease call of a [`LeasedStore`](crate::LeasedStore), atomic like `acquire`:
    /// count a request of `request.cost` units (paid first with the `held` units the store
    /// still finds valid; a denial by any quota takes nothing), then take up to
    /// `request.want` more units from every quota for the caller to spend on its own, at
    /// most `max_share_permille`/1000 of what each quota has left. Granted units are counted
    /// at once, as if admitted. The sliding-window log is never leased.
    ///
    /// The default, for a store that does not lease, is an exact `acquire` of the cost that
    /// grants nothing ([`Lease::exact`]): a `LeasedStore` over such a store decides every
    /// request through it. The memory and Redis stores lease (Redis in one script call).
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire).
    async fn lease(&self, key: &str, policy: &Policy, request: &LeaseRequest) -> Result<Lease> {
        Ok(Lease::exact(self.acquire(key, policy, request.cost).await?))
    }

    /// Give back `units` of a lease granted at `granted_at` (store time, µs) that the
    /// caller will never spend: the window algorithms take them back when the lease's
    /// windows are still current (units of a past window belong to it); the bucket
    /// algorithms do not here (a bucket that refilled meanwhile would take them above what
    /// it allows; [`release_for`](Self::release_for) gives them back less that refill).
    /// The default does nothing (nothing was leased).
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire).
    async fn release(&self, key: &str, policy: &Policy, units: u64, granted_at: u64) -> Result<()> {
        let _ = (key, policy, units, granted_at);
        Ok(())
    }

    /// [`release`](Self::release) by the instance that leased them, named by the `owner`
    /// of its [`LeaseRequest`]s (see [`LeaseReturn`]): a store that keeps a ledger of the leases outstanding
    /// (Redis) takes them off the owner's record, and gives them back only while that
    /// record stands (once its TTL passed the store reclaimed it, these units with it).
    /// The default is `release`.
    ///
    /// # Errors
    /// As for [`acquire`](Self::acquire).
    async fn release_for(&self, key: &str, policy: &Policy, give: &LeaseReturn) -> Result<()> {
        self.release(key, policy, give.units, give.granted_at).await
    }

    /// Many keys' [`lease`](Self::lease) calls at once, one answer per call in order: what
    /// a [`LeasedStore`](crate::LeasedStore) sends when several keys need the store at the
    /// same moment. Each call is atomic on its own key as `lease` is; the batch is not
    /// atomic as a whole, and one call's failure is its own answer.
    ///
    /// The default runs the calls concurrently through `lease`. The Redis store sends them
    /// in one script call per algorithm and Redis Cluster slot (per algorithm on a single
    /// node), all at once.
    async fn lease_many(&self, calls: &[LeaseCall<'_>]) -> Vec<Result<Lease>> {
        futures::future::join_all(
            calls
                .iter()
                .map(|c| self.lease(c.key, c.policy, &c.request)),
        )
        .await
    }

    /// Many [`release_for`](Self::release_for) calls at once, one answer per call in order,
    /// as [`lease_many`](Self::lease_many) (the Redis store puts them in its batch script
    /// too).
    async fn release_many(&self, gives: &[ReleaseCall<'_>]) -> Vec<Result<()>> {
        futures::future::join_all(
            gives
                .iter()
                .map(|g| self.release_for(g.key, g.policy, &g.give)),
        )
        .await
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
    async fn lease(&self, key: &str, policy: &Policy, request: &LeaseRequest) -> Result<Lease> {
        (**self).lease(key, policy, request).await
    }
    async fn release(&self, key: &str, policy: &Policy, units: u64, granted_at: u64) -> Result<()> {
        (**self).release(key, policy, units, granted_at).await
    }
    async fn release_for(&self, key: &str, policy: &Policy, give: &LeaseReturn) -> Result<()> {
        (**self).release_for(key, policy, give).await
    }
    async fn lease_many(&self, calls: &[LeaseCall<'_>]) -> Vec<Result<Lease>> {
        (**self).lease_many(calls).await
    }
    async fn release_many(&self, gives: &[ReleaseCall<'_>]) -> Vec<Result<()>> {
        (**self).release_many(gives).await
    }
}
