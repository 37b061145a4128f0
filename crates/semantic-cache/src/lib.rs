//! A cache of AI responses keyed by meaning, whose hits can be trusted.
//!
//! A lookup key has an **exact part** — tenant, namespace, model and a digest of the
//! context (system prompt, history, tools, parameters) — and a **semantic part**, the
//! prompt. A lookup:
//!
//! 1. tries the normalised prompt exactly (one hash-map read, no embedding);
//! 2. embeds the prompt and scans the index partition of the exact part for neighbours
//!    above the namespace's cosine threshold (`1.0` = exact only);
//! 3. runs the [lexical guard](guard) on each candidate, which vetoes prompts that differ
//!    in negation, numbers/dates/amounts, named entities/identifiers, opposite words or
//!    scope — "Cancel my subscription" never gets the answer to "Don't cancel my
//!    subscription".
//!
//! Tenant and namespace are part of the key type and of the index partition: no API
//! returns or removes another tenant's entries.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use palisade_semantic_cache::{CacheKey, Computed, SemanticCache, Source, Usage};
//!
//! let cache = SemanticCache::in_memory();
//! let key = CacheKey::new("acme", "support", "gpt-4o-mini", "Cancel my subscription")?;
//! let served = cache
//!     .get_or_compute(&key, || async {
//!         // Call the model here.
//!         Ok::<_, std::io::Error>(Computed::new("Done: cancelled.", Usage::new(12, 4, 0.0002)))
//!     })
//!     .await?;
//! assert_eq!(served.source, Source::Computed);
//!
//! // The opposite request is close in wording but is never served that answer.
//! let opposite = CacheKey::new("acme", "support", "gpt-4o-mini", "Don't cancel my subscription")?;
//! assert!(!cache.lookup(&opposite).await?.is_hit());
//! assert_eq!(cache.stats().misses, 2);
//! # Ok::<(), palisade_semantic_cache::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Features
//! - `redis` (default): [`RedisStore`] (standalone, TLS or Cluster), entries shared by all instances.
//! - `candle` (off): `minilm::MiniLmEmbedder`, all-MiniLM-L6-v2 from local
//!   files (fetched by `scripts/fetch-minilm.sh`).
//! - `http` (off): `http::HttpEmbedder` for OpenAI-compatible `/embeddings`
//!   services.
//!
//! # Metrics
//! See [`names`] for the metric names and labels.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The crate contract: every public type that may grow is `#[non_exhaustive]`; the few that
// are complete by nature say so with an `allow` and a reason. (Restriction lints, so they are
// turned on here rather than for the whole workspace.)
#![warn(clippy::exhaustive_enums, clippy::exhaustive_structs)]

/// Chainable setters named after the fields they set (as ratelimit's `LeaseConfig`), so a
/// `#[non_exhaustive]` configuration is still written in one expression:
/// `CacheConfig::default().candidates(8)`. `plain` fields take their value; `optional`
/// fields (`Option<T>`) take a `T` and set `Some`.
macro_rules! setters {
    (plain { $($field:ident: $ty:ty),* $(,)? } $(optional { $($opt:ident: $oty:ty),* $(,)? })?) => {
        $(
            #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
            #[must_use]
            pub fn $field(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
        $($(
            #[doc = concat!("Sets [`", stringify!($opt), "`](Self::", stringify!($opt), ") to `Some`.")]
            #[must_use]
            pub fn $opt(mut self, $opt: $oty) -> Self {
                self.$opt = Some($opt);
                self
            }
        )*)?
    };
}

mod cache;
mod calibration;
mod clock;
mod embed;
mod entry;
mod error;
mod fallback;
pub mod guard;
mod hnsw;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod index;
mod key;
mod lexicon;
#[cfg(feature = "redis")]
mod local;
mod memory;
#[cfg(feature = "candle")]
#[cfg_attr(docsrs, doc(cfg(feature = "candle")))]
pub mod minilm;
mod provider;
pub mod quality;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
mod stats;
mod store;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod value;

pub use cache::{
    CacheConfig, Computed, DEFAULT_MAX_PROMPT_BYTES, DEFAULT_THRESHOLD, DEFAULT_TTL, FailureMode,
    InsertOptions, NamespacePolicy, SemanticCache, SemanticCacheBuilder, Served, Source,
};
pub use calibration::FeedbackConfig;
pub use clock::{Clock, FakeClock, SystemClock};
pub use embed::{Embedder, HashingConfig, HashingEmbedder, LexicalFloor, check_vector, normalize};
pub use entry::{Entry, Hit, HitKind, Lookup, MissReason, Usage};
pub use error::{BoxError, ComputeError, Error, Result};
#[allow(deprecated)]
pub use fallback::{FallbackStore, MAX_PENDING_INVALIDATIONS};
pub use key::{
    CacheKey, ContextHash, ContextHasher, EntryId, MAX_IDENTIFIER_BYTES, Namespace, Partition,
    Scope, ScopeId, Tag, Tenant, encode_key_part, entry_id, normalize_prompt,
};
pub use memory::{MemoryConfig, MemoryStore};
pub use provider::{
    BoxFuture, CachedCompletion, CachedProvider, CallGuard, Completion, CompletionRequest,
    LlmProvider, Message, Pricing, ProviderEmbedder,
};
pub use stats::{SIMILARITY_BUCKETS, StatsSnapshot, names};
pub use store::{Invalidation, PartitionUsage, SearchQuery, Store};
pub use value::{ValueCache, ValueCacheBuilder};

/// The `deadpool_redis` crate whose pools [`RedisStore::new`] and [`RedisStore::cluster`]
/// take, so that callers build them with the same version.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use deadpool_redis;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisConfig, RedisStore};
