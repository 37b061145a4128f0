//! Rate limiting for Rust services: five algorithms, multi-window quotas, weighted costs,
//! in memory or exact across many instances through Redis.
//!
//! * [`Quota`] (`Quota::per_minute(60)`), [`Algorithm`] and [`Policy`] say what is enforced;
//!   a policy checks several named quotas together and a denial by one consumes from none.
//! * [`Store`] is where counters live: [`MemoryStore`] (bounded, exact under concurrency) or
//!   `RedisStore` (feature `redis`: one Lua script call per decision, server time, Redis
//!   Cluster ready).
//! * [`RateLimiter`] puts a store behind a per-call timeout and a [`FailureMode`].
//! * [`rules`] picks key, tier, policy and cost per HTTP request; [`headers`] renders
//!   `RateLimit`/`RateLimit-Policy`, `X-RateLimit-*` and `Retry-After`; `layer` (feature
//!   `tower`) answers 429 in front of any tower/axum service.
//!
//! ```
//! use palisade_ratelimit::{Algorithm, MemoryStore, Policy, Quota, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> palisade_ratelimit::Result<()> {
//! let policy = Policy::builder("api")
//!     .algorithm(Algorithm::SlidingWindowCounter)
//!     .quota("per_minute", Quota::per_minute(2))
//!     .quota("per_hour", Quota::per_hour(100))
//!     .build()?;
//! let limiter = RateLimiter::new(MemoryStore::new());
//!
//! assert!(limiter.acquire("user:42", &policy, 1).await.allowed);
//! assert!(limiter.acquire("user:42", &policy, 1).await.allowed);
//! let third = limiter.acquire("user:42", &policy, 1).await;
//! assert!(!third.allowed);
//! assert!(third.retry_after().is_some());
//! // Each quota reports its own state.
//! assert_eq!(third.quota(1).unwrap().remaining, 98);
//! # Ok(()) }
//! ```
//!
//! See the repository's `docs/ratelimit.md` for choosing an algorithm, the accuracy of
//! each, tiers, failure modes, headers and Redis Cluster. Metric names are listed on
//! [`RateLimiter`].
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
// The crate contract: every public type that may grow is `#[non_exhaustive]`; the few that
// are complete by nature say so with an `allow` and a reason. (Restriction lints, so they are
// turned on here rather than for the whole workspace.)
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

pub mod algorithm;
mod clock;
mod decision;
mod error;
pub mod headers;
mod key;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod layer;
mod lease;
mod leased;
mod limiter;
mod memory;
mod quota;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
pub mod rules;
mod store;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use crate::clock::{Clock, FakeClock, SystemClock};
pub use crate::decision::{Decision, DecisionSource, QuotaDecision};
pub use crate::error::{BoxError, Error, Result};
pub use crate::lease::{Lease, LeaseCall, LeaseRequest, LeaseReturn, ReleaseCall};
pub use crate::leased::{LeaseConfig, LeasedStore, LeasedStoreBuilder};
pub use crate::limiter::{DEFAULT_TIMEOUT, FailureMode, RateLimiter, RateLimiterBuilder};
pub use crate::memory::{DEFAULT_MAX_KEYS, MemoryStore, MemoryStoreBuilder, Subject};
pub use crate::quota::{
    Algorithm, MAX_LIMIT, MAX_PERIOD, MAX_QUOTAS, NamedQuota, Policy, PolicyBuilder, Quota,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use crate::redis::{RedisConnection, RedisStore};
pub use crate::store::Store;

/// The `redis` crate this backend is built against (its types appear in
/// [`RedisConnection`]).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use ::redis as redis_crate;
/// The `deadpool_redis` crate whose pools [`RedisStore`] takes.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use deadpool_redis;
