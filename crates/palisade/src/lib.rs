//! Resilience for Rust services that sit in front of expensive or fragile things: LLM
//! providers, databases and third-party APIs.
//!
//! `palisade` is the facade over the Palisade crates. Each crate is one cargo feature and is
//! re-exported under a short module name; every crate works in memory on one machine and
//! shares its state through Redis across many instances, behind the same trait.
//!
//! | feature | module | crate |
//! |---|---|---|
//! | `redis` | — | the Redis backend of every enabled crate (default) |
//! | `tower` | — | the tower layers of every enabled crate (default) |
//! | `ratelimit` | [`ratelimit`] | [`palisade-ratelimit`](https://docs.rs/palisade-ratelimit): token bucket, GCRA, fixed/sliding windows, multi-window quotas, tiers, headers, 429 layer (default) |
//! | `circuit-breaker` | [`circuit_breaker`] | [`palisade-circuit-breaker`](https://docs.rs/palisade-circuit-breaker): lock-free breaker with count/time windows, slow calls, half-open probes, registry, tower layer, state shared through Redis (default) |
//! | `semantic-cache` | [`semantic_cache`] | [`palisade-semantic-cache`](https://docs.rs/palisade-semantic-cache): AI response cache keyed by meaning with exact fast path, lexical guard, tenant isolation, single-flight, Redis backend (default) |
//! | `migrate` | [`migrate`] | [`palisade-migrate`](https://docs.rs/palisade-migrate): versioned PostgreSQL/Redis migrations with a lease lock that works through PgBouncer, encrypted backups restored on failure, expand/contract phases (default) |
//! | `secret-store` | [`secret_store`] | [`palisade-secret-store`](https://docs.rs/palisade-secret-store): secrets that never print (zeroized, redacted, scrubbed from logs), env/file/memory/encrypted-Redis providers in a fallback chain, TTL cache that bridges outages, encrypted snapshot, rotation (default) |
//! | `apikey` | [`apikey`] | [`palisade-apikey`](https://docs.rs/palisade-apikey): API keys with a checksummed format, HMAC-SHA256 at rest, scopes, expiry, revocation, rotation with grace, credits, audit, HS256 tokens, tower layer, Redis backend (default) |
//! | `candle` | — | all-MiniLM-L6-v2 embeddings for the semantic cache (heavy build) |
//! | `http` | — | OpenAI-compatible HTTP embedder for the semantic cache |
//! | `vault` | — | HashiCorp Vault KV v2 provider for the secret store |
//! | `azure` | — | Azure Key Vault provider for the secret store |
//! | `full` | — | everything above |
//!
//! The crates arrive one by one; see the repository's `CHANGELOG.md` for what has landed.
//!
//! ```
//! // Everything Palisade exposes hangs off this crate's modules.
//! let _ = palisade::VERSION;
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The version of the `palisade` facade.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `deadpool_redis` crate whose pools every Redis backend takes (`RedisStore::new(pool)`),
/// re-exported so a service builds its pool with the very version the crates were built
/// against: `palisade::deadpool_redis::Config::from_url(url).create_pool(…)`.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use deadpool_redis;

/// The `redis` crate the Redis backends speak (the one `deadpool_redis` re-exports), for
/// the few public signatures that name its types (`ratelimit::RedisConnection::Multiplexed`,
/// TLS clients built with `redis::Client::build_with_tls`) and for reading what the backends
/// wrote: `palisade::redis::cmd("SCAN")`.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use deadpool_redis::redis;

/// The attribute every backend trait is declared with (`ratelimit::Store`,
/// `circuit_breaker::Store`, `semantic_cache::Store`, …): put `#[palisade::async_trait]` on
/// an `impl` of one of them to write a store of your own.
pub use async_trait::async_trait;

// -- ratelimit --
#[cfg(feature = "ratelimit")]
#[cfg_attr(docsrs, doc(cfg(feature = "ratelimit")))]
#[doc(inline)]
pub use palisade_ratelimit as ratelimit;

// -- circuit-breaker --
#[cfg(feature = "circuit-breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
#[doc(inline)]
pub use palisade_circuit_breaker as circuit_breaker;

// -- semantic-cache --
#[cfg(feature = "semantic-cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "semantic-cache")))]
#[doc(inline)]
pub use palisade_semantic_cache as semantic_cache;

// -- secret-store --
#[cfg(feature = "secret-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "secret-store")))]
#[doc(inline)]
pub use palisade_secret_store as secret_store;

// -- apikey --
#[cfg(feature = "apikey")]
#[cfg_attr(docsrs, doc(cfg(feature = "apikey")))]
#[doc(inline)]
pub use palisade_apikey as apikey;

// -- migrate --
#[cfg(feature = "migrate")]
#[cfg_attr(docsrs, doc(cfg(feature = "migrate")))]
#[doc(inline)]
pub use palisade_migrate as migrate;

/// The README and every guide in `docs/`, compiled as doc tests (`cargo test --doc`) so a
/// snippet that drifts from the API fails CI. Only seen by rustdoc's test collection.
#[cfg(all(
    doctest,
    feature = "redis",
    feature = "tower",
    feature = "ratelimit",
    feature = "circuit-breaker",
    feature = "semantic-cache",
    feature = "secret-store",
    feature = "apikey",
    feature = "migrate"
))]
pub mod guides {
    #[doc = include_str!("../../../README.md")]
    pub struct Readme;
    #[doc = include_str!("../../../docs/architecture.md")]
    pub struct Architecture;
    #[doc = include_str!("../../../docs/ratelimit.md")]
    pub struct RateLimit;
    #[doc = include_str!("../../../docs/circuit-breaker.md")]
    pub struct CircuitBreaker;
    #[doc = include_str!("../../../docs/semantic-cache.md")]
    pub struct SemanticCache;
    #[doc = include_str!("../../../docs/apikey.md")]
    pub struct ApiKey;
    #[doc = include_str!("../../../docs/secret-store.md")]
    pub struct SecretStore;
    #[doc = include_str!("../../../docs/migrate.md")]
    pub struct Migrate;
    // Not docs/benchmarks.md nor docs/seed-systems.md: no Rust in them, only shell commands,
    // output and tables (a fence without a language would be compiled as Rust).
}
