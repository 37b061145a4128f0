//! The semantic cache: exact fast path, nearest neighbour, lexical guard, single-flight.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::calibration::{Calibrations, FeedbackConfig, Recorded};
use crate::clock::{Clock, SystemClock};
use crate::embed::{Embedder, HashingEmbedder, LexicalFloor, check_vector};
use crate::entry::{Entry, Hit, HitKind, Lookup, MissReason, Usage};
use crate::error::{BoxError, ComputeError, Error, Result};
use crate::fallback::Fallback;
use crate::guard::{self, GuardConfig, PromptFeatures};
use crate::key::{
    CacheKey, EntryId, Namespace, Partition, ScopeId, Tag, Tenant, entry_id, normalize_prompt,
};
use crate::memory::{MemoryConfig, MemoryStore};
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{Invalidation, PartitionUsage, SearchQuery, Store};

/// The default similarity threshold (cosine, on unit vectors) of a namespace, and the
/// built-in [`HashingEmbedder`]'s [`Embedder::recommended_threshold`]: with the full guard
/// it served 50.5 % of the should-hit pairs and 0.1 % of the traps on the tuning part of
/// the held-out quality set (`data/quality/`); the test part's figures are in
/// `docs/semantic-cache.md`. It is this low only because the guard vetoes every pair whose
/// content words differ: with the guard off, or its `substitutions` check off, use 0.90
/// or more. MiniLM has its own (`minilm::MINILM_THRESHOLD`), applied by the builder.
pub const DEFAULT_THRESHOLD: f32 = 0.70;

/// The default TTL of a namespace: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The default longest prompt accepted, in bytes: 32 KiB.
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 32 * 1024;

/// What the cache does when its store fails ([`Error::is_backend`]: Redis down, refused,
/// timed out). Chosen once on the builder ([`SemanticCacheBuilder::failure_mode`]).
///
/// | mode | lookup | `get_or_compute` | insert | invalidate |
/// |---|---|---|---|---|
/// | `FailOpen` (default) | a miss ([`MissReason::BackendUnavailable`]) | the provider is called and its answer returned (`stored: false`) | the error | the error |
/// | `FailClosed` | the error | the error, the provider is not called | the error | the error |
/// | `FallbackToMemory` | answered by a local [`MemoryStore`] | as a lookup, then cached locally | stored locally | applied locally, the error returned and the invalidation replayed before the backend serves again |
///
/// A cache exists to save money, not to guard anything, so failing open is the safe
/// default: an outage costs provider calls, never answers. Invalidation never fails open:
/// an invalidation the backend did not apply is always an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureMode {
    /// A store error is a miss: the provider is called and its answer returned.
    #[default]
    FailOpen,
    /// A store error is returned to the caller.
    FailClosed,
    /// A store error sends the operation to a local [`MemoryStore`] (bounded by
    /// [`SemanticCacheBuilder::fallback_memory`]); invalidations the backend missed are
    /// replayed on it before it serves again.
    FallbackToMemory,
}

/// How one namespace caches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NamespacePolicy {
    /// How long an entry lives (default one hour; `"1h"`, `"90s"` in configuration files).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Lowest cosine similarity (on unit vectors, in `[-1, 1]`) served as a semantic hit;
    /// `1.0` or more means exact matches only, and no embedding is ever computed.
    pub threshold: f32,
    /// Whether the lexical guard may veto semantic hits (default on).
    pub guard: bool,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            threshold: DEFAULT_THRESHOLD,
            guard: true,
        }
    }
}

impl NamespacePolicy {
    /// A policy with this TTL and the default threshold.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            ..Self::default()
        }
    }

    /// Exact matches only, with this TTL (for values that are not prompts).
    pub fn exact_only(ttl: Duration) -> Self {
        Self {
            ttl,
            threshold: 1.0,
            guard: true,
        }
    }

    /// The same policy with another threshold.
    #[must_use]
    pub fn threshold(mut self, threshold: f32) -> Self {
        self.threshold = threshold;
        self
    }

    setters! {
        plain { ttl: Duration, guard: bool }
    }

    fn check(&self) -> Result<()> {
        if self.ttl.is_zero() {
            return Err(Error::InvalidConfig(
                "a namespace's ttl must be above zero".into(),
            ));
        }
        if !self.threshold.is_finite() || self.threshold < -1.0 {
            return Err(Error::InvalidConfig(
                "a threshold must be a finite number >= -1".into(),
            ));
        }
        Ok(())
    }

    fn exact_only_policy(&self) -> bool {
        self.threshold >= 1.0
    }
}

/// Settings of a [`SemanticCache`]; serde-friendly for TOML/JSON configuration (unknown
/// fields are refused, durations are written `"1h"`). In code: `default()` and the setters.
///
/// ```
/// use palisade_semantic_cache::{CacheConfig, NamespacePolicy};
/// use std::time::Duration;
///
/// let config = CacheConfig::default()
///     .candidates(8)
///     .namespace("faq", NamespacePolicy::default().ttl(Duration::from_secs(86_400)));
/// assert_eq!(config.namespaces["faq"].ttl, Duration::from_secs(86_400));
/// let read: CacheConfig = serde_json::from_str(r#"{"candidates": 8, "namespaces": {"faq": {"ttl": "1day"}}}"#)?;
/// assert_eq!(read, config);
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// A struct literal does not compile outside this crate (`#[non_exhaustive]`: a new setting
/// is not a breaking change):
///
/// ```compile_fail
/// let config = palisade_semantic_cache::CacheConfig { candidates: 8, ..Default::default() };
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Policy of namespaces not listed in `namespaces`.
    pub default_policy: NamespacePolicy,
    /// Policy per namespace name.
    pub namespaces: HashMap<String, NamespacePolicy>,
    /// Longest prompt accepted, in bytes (default 32 KiB).
    pub max_prompt_bytes: usize,
    /// Which guard checks run.
    pub guard: GuardConfig,
    /// How many nearest neighbours are checked against the guard before giving up (default 4).
    pub candidates: usize,
    /// What a store failure does (default [`FailureMode::FailOpen`]).
    pub failure_mode: FailureMode,
    /// How [`SemanticCache::feedback`] raises a namespace's threshold.
    pub feedback: FeedbackConfig,
    /// A second, lexical way to a semantic hit just under the threshold ([`LexicalFloor`];
    /// `None`: none). The builder sets the embedder's
    /// [`Embedder::recommended_lexical_floor`] unless it is given explicitly.
    pub lexical_floor: Option<LexicalFloor>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            default_policy: NamespacePolicy::default(),
            namespaces: HashMap::new(),
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            guard: GuardConfig::default(),
            candidates: 4,
            failure_mode: FailureMode::default(),
            feedback: FeedbackConfig::default(),
            lexical_floor: None,
        }
    }
}

impl CacheConfig {
    setters! {
        plain {
            default_policy: NamespacePolicy,
            max_prompt_bytes: usize,
            guard: GuardConfig,
            candidates: usize,
            failure_mode: FailureMode,
            feedback: FeedbackConfig,
            lexical_floor: Option<LexicalFloor>,
        }
    }

    /// Sets the policy of the namespace called `name` (in [`namespaces`](Self::namespaces)).
    #[must_use]
    pub fn namespace(mut self, name: impl Into<String>, policy: NamespacePolicy) -> Self {
        self.namespaces.insert(name.into(), policy);
        self
    }
}

/// Options of one insert.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct InsertOptions {
    /// Tags for invalidation.
    pub tags: Vec<Tag>,
    /// TTL instead of the namespace's.
    pub ttl: Option<Duration>,
}

impl InsertOptions {
    setters! {
        plain { tags: Vec<Tag> }
        optional { ttl: Duration }
    }
}

/// What a computation passed to [`SemanticCache::get_or_compute`] returns.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Computed {
    /// The response to cache and return.
    pub response: Vec<u8>,
    /// What producing it cost.
    pub usage: Usage,
    /// Tags for invalidation.
    pub tags: Vec<Tag>,
}

impl Computed {
    /// A computed response with its usage and no tags.
    pub fn new(response: impl Into<Vec<u8>>, usage: Usage) -> Self {
        Self {
            response: response.into(),
            usage,
            tags: Vec::new(),
        }
    }

    /// A computed serde value, stored as JSON (read it back with [`Entry::response_json`]).
    ///
    /// # Errors
    /// [`Error::Serialization`] when `value` cannot be encoded.
    pub fn json<T: Serialize>(value: &T, usage: Usage) -> Result<Self> {
        Ok(Self::new(serde_json::to_vec(value)?, usage))
    }

    /// The same response with tags for invalidation.
    #[must_use]
    pub fn with_tags(mut self, tags: Vec<Tag>) -> Self {
        self.tags = tags;
        self
    }
}

/// Where a [`Served`] response came from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Source {
    /// A cache hit of this kind and similarity.
    Cache {
        /// Exact or semantic.
        kind: HitKind,
        /// Cosine similarity (1.0 for exact).
        similarity: f32,
    },
    /// This call ran the computation.
    Computed,
    /// Another concurrent call with the same key ran the computation; this one waited.
    Joined,
}

/// A response from [`SemanticCache::get_or_compute`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Served {
    /// The entry (cached, or just computed).
    pub entry: Arc<Entry>,
    /// Where it came from.
    pub source: Source,
    /// Whether the entry is in the store: `false` when a computed response could not be
    /// inserted (the backend failed). The response is still returned — it was paid for —
    /// and the failure is counted in [`StatsSnapshot::insert_failures`], the
    /// `palisade_semantic_cache_insert_failures_total` counter and a WARN log.
    pub stored: bool,
}

impl Served {
    /// The cache hit this response was, if it was one (for
    /// [`SemanticCache::feedback`]).
    pub fn hit(&self) -> Option<Hit> {
        match self.source {
            Source::Cache { kind, similarity } => Some(Hit {
                entry: Arc::clone(&self.entry),
                kind,
                similarity,
            }),
            Source::Computed | Source::Joined => None,
        }
    }
}

type Flight = Arc<OnceCell<(Arc<Entry>, bool)>>;

struct Inner {
    store: Arc<dyn Store>,
    embedder: Arc<dyn Embedder>,
    clock: Arc<dyn Clock>,
    config: CacheConfig,
    stats: Stats,
    flights: Mutex<HashMap<EntryId, Flight>>,
    calibrations: Calibrations,
    /// The [`LexicalFloor`]'s signal (present when the configuration has a floor).
    lexical: Option<(LexicalFloor, HashingEmbedder)>,
}

/// A cache of AI responses keyed by meaning. Cheap to clone (one `Arc`); clones share
/// entries, statistics and in-flight computations.
///
/// A lookup first tries the normalised prompt exactly (no embedding), then the nearest
/// neighbours inside the key's scope (tenant, namespace, model, context) above the
/// namespace's threshold, each checked by the lexical guard.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use palisade_semantic_cache::{CacheKey, SemanticCache, Usage};
/// let cache = SemanticCache::in_memory();
/// let key = CacheKey::new("acme", "support", "gpt-4o-mini", "How do I reset my password?")?;
/// cache.insert(&key, "Open Settings > Security.", Usage::default()).await?;
///
/// let again = CacheKey::new("acme", "support", "gpt-4o-mini", "how do I reset my password")?;
/// assert!(cache.lookup(&again).await?.is_hit());
/// let other_tenant = CacheKey::new("globex", "support", "gpt-4o-mini", "How do I reset my password?")?;
/// assert!(!cache.lookup(&other_tenant).await?.is_hit());
/// # Ok::<(), palisade_semantic_cache::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct SemanticCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for SemanticCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemanticCache")
            .field("store", &self.inner.store)
            .field("embedder", &self.inner.embedder.version())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Builds a [`SemanticCache`].
#[derive(Default)]
pub struct SemanticCacheBuilder {
    store: Option<Arc<dyn Store>>,
    embedder: Option<Arc<dyn Embedder>>,
    clock: Option<Arc<dyn Clock>>,
    config: CacheConfig,
    fallback_memory: MemoryConfig,
    /// Whether the default policy's threshold was set by the caller (through
    /// [`default_policy`](Self::default_policy), [`config`](Self::config) or
    /// [`threshold`](Self::threshold)); if not, the embedder's recommendation applies.
    explicit_threshold: bool,
    /// Whether the lexical floor was set by the caller (through [`config`](Self::config)
    /// or [`lexical_floor`](Self::lexical_floor)); if not, the embedder's recommendation
    /// applies.
    explicit_lexical_floor: bool,
}

impl fmt::Debug for SemanticCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemanticCacheBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SemanticCacheBuilder {
    /// The backend (default: a [`MemoryStore`] with default bounds).
    #[must_use]
    pub fn store(mut self, store: impl Store + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The backend, shared.
    #[must_use]
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The embedder (default: [`HashingEmbedder::default`]).
    #[must_use]
    pub fn embedder(mut self, embedder: impl Embedder + 'static) -> Self {
        self.embedder = Some(Arc::new(embedder));
        self
    }

    /// The embedder, shared.
    #[must_use]
    pub fn shared_embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    /// The clock (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// All settings at once (the default policy's threshold included: the embedder's
    /// recommendation no longer applies).
    #[must_use]
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self.explicit_threshold = true;
        self.explicit_lexical_floor = true;
        self
    }

    /// The second, lexical way to a semantic hit ([`LexicalFloor`]; `None` turns it off).
    /// Without this (or [`config`](Self::config)), the embedder's
    /// [`Embedder::recommended_lexical_floor`] applies: none for the built-in hashing
    /// embedder, `minilm::MINILM_LEXICAL_FLOOR` (0.75 / 0.10) for MiniLM.
    #[must_use]
    pub fn lexical_floor(mut self, floor: Option<LexicalFloor>) -> Self {
        self.config.lexical_floor = floor;
        self.explicit_lexical_floor = true;
        self
    }

    /// The similarity threshold of namespaces without their own policy. Without this (or
    /// [`default_policy`](Self::default_policy) / [`config`](Self::config)) the cache uses
    /// the embedder's [`Embedder::recommended_threshold`]: 0.70 for the built-in hashing
    /// embedder, `MINILM_THRESHOLD` (0.90) for MiniLM.
    #[must_use]
    pub fn threshold(mut self, threshold: f32) -> Self {
        self.config.default_policy.threshold = threshold;
        self.explicit_threshold = true;
        self
    }

    /// The policy of one namespace.
    #[must_use]
    pub fn namespace(mut self, name: impl Into<String>, policy: NamespacePolicy) -> Self {
        self.config.namespaces.insert(name.into(), policy);
        self
    }

    /// The policy of namespaces without their own (its threshold replaces the embedder's
    /// recommendation).
    #[must_use]
    pub fn default_policy(mut self, policy: NamespacePolicy) -> Self {
        self.config.default_policy = policy;
        self.explicit_threshold = true;
        self
    }

    /// Which guard checks run.
    #[must_use]
    pub fn guard(mut self, guard: GuardConfig) -> Self {
        self.config.guard = guard;
        self
    }

    /// How [`SemanticCache::feedback`] calibrates thresholds (default
    /// [`FeedbackConfig::default`]: a 95 % bound on 2 % wrong hits).
    #[must_use]
    pub fn feedback(mut self, feedback: FeedbackConfig) -> Self {
        self.config.feedback = feedback;
        self
    }

    /// What a store failure does (default [`FailureMode::FailOpen`]).
    #[must_use]
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.config.failure_mode = mode;
        self
    }

    /// Bounds of the local store [`FailureMode::FallbackToMemory`] answers from (default
    /// [`MemoryConfig::default`]).
    #[must_use]
    pub fn fallback_memory(mut self, config: MemoryConfig) -> Self {
        self.fallback_memory = config;
        self
    }

    /// Longest prompt accepted, in bytes.
    #[must_use]
    pub fn max_prompt_bytes(mut self, max: usize) -> Self {
        self.config.max_prompt_bytes = max;
        self
    }

    /// The cache.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero TTL, a non-finite threshold, zero candidates or
    /// a zero prompt limit.
    pub fn build(mut self) -> Result<SemanticCache> {
        let embedder = self
            .embedder
            .take()
            .unwrap_or_else(|| Arc::new(HashingEmbedder::default()));
        if !self.explicit_threshold {
            self.config.default_policy.threshold = embedder.recommended_threshold();
        }
        if !self.explicit_lexical_floor {
            self.config.lexical_floor = embedder.recommended_lexical_floor();
        }
        if let Some(floor) = &self.config.lexical_floor {
            floor.check()?;
        }
        self.config.default_policy.check()?;
        for policy in self.config.namespaces.values() {
            policy.check()?;
        }
        self.config.feedback.check()?;
        if self.config.candidates == 0 || self.config.max_prompt_bytes == 0 {
            return Err(Error::InvalidConfig(
                "candidates and max_prompt_bytes must be above 0".into(),
            ));
        }
        let mut store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::default()));
        if self.config.failure_mode == FailureMode::FallbackToMemory {
            let memory = MemoryStore::new(self.fallback_memory)?;
            store = Arc::new(Fallback::new(store, memory));
        }
        Ok(SemanticCache {
            inner: Arc::new(Inner {
                store,
                embedder,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                stats: Stats::default(),
                flights: Mutex::new(HashMap::new()),
                calibrations: Calibrations::default(),
                lexical: self
                    .config
                    .lexical_floor
                    .map(|floor| (floor, HashingEmbedder::default())),
                config: self.config,
            }),
        })
    }
}

struct Prepared<'a> {
    key: &'a CacheKey,
    scope: ScopeId,
    id: EntryId,
    normalized: String,
    policy: &'a NamespacePolicy,
}

/// One caller's share of a flight: the only reference the caller holds to the cell (so the
/// count below is exact), and the clean-up when the caller is done — finished, failed,
/// panicked (the guard drops while unwinding) or cancelled (the future is dropped).
struct FlightGuard<'a> {
    flights: &'a Mutex<HashMap<EntryId, Flight>>,
    id: EntryId,
    cell: Flight,
}

impl<'a> FlightGuard<'a> {
    /// Join the flight of `id`, or start one.
    fn join(flights: &'a Mutex<HashMap<EntryId, Flight>>, id: EntryId) -> Self {
        let mut map = flights.lock().unwrap_or_else(PoisonError::into_inner);
        let cell = Arc::clone(map.entry(id).or_default());
        Self { flights, id, cell }
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        let ours = flights
            .get(&self.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // References are only taken under the map's lock, one per caller, held by its guard:
        // two left means the map's and ours, nobody else is waiting. A finished flight goes
        // at once (later callers read the store; waiters keep their own reference).
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            flights.remove(&self.id);
        }
    }
}

impl SemanticCache {
    /// A builder.
    pub fn builder() -> SemanticCacheBuilder {
        SemanticCacheBuilder::default()
    }

    /// A cache in memory with the built-in hashing embedder and default settings.
    pub fn in_memory() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid")
    }

    /// The policy that applies to `namespace`.
    pub fn policy(&self, namespace: &Namespace) -> &NamespacePolicy {
        self.inner
            .config
            .namespaces
            .get(namespace.as_str())
            .unwrap_or(&self.inner.config.default_policy)
    }

    /// Tell the cache whether a semantic hit it served was right (`correct`) or a wrong
    /// answer. Wrong hits raise the hit's namespace's threshold; see
    /// [`FeedbackConfig`] for the rule and its bound.
    ///
    /// The namespace keeps its last [`FeedbackConfig::max_samples`] judgements. While some
    /// are wrong, its threshold is the lowest similarity above which the one-sided Wilson
    /// upper bound (95 % by default) of the wrong share is at most
    /// [`FeedbackConfig::target_error`] (2 % by default), or just above the most similar
    /// wrong hit when no cut is certified yet; never below the namespace's own policy.
    /// Right hits alone never lower a threshold. Exact hits are not judged (nothing about
    /// them is a threshold's doing) and are ignored, as is feedback on further namespaces
    /// once [`FeedbackConfig::max_namespaces`] have some.
    ///
    /// Calibration lives in this process (shared by the cache's clones), not in the store:
    /// every instance learns from the feedback it is given. Feedback is trusted input: call
    /// this from a judge you trust (a user's thumbs-down, an evaluation job), since wrong
    /// verdicts raise a threshold for every tenant of the namespace. Cost: one write lock
    /// and a sort of the namespace's judgements (`O(n log n)`, n ≤ `max_samples`).
    ///
    /// Returns the namespace's learned threshold after this feedback (`None` while no hit
    /// was judged wrong, or when the feedback was ignored).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use palisade_semantic_cache::{CacheKey, HitKind, SemanticCache, Usage};
    /// let cache = SemanticCache::in_memory();
    /// let cached = CacheKey::new("acme", "support", "m", "How do I reset my password?")?;
    /// cache.insert(&cached, "Open Settings > Security.", Usage::default()).await?;
    ///
    /// let asked = CacheKey::new("acme", "support", "m", "How can I reset my password?")?;
    /// let hit = cache.lookup(&asked).await?.hit().expect("a semantic hit");
    /// assert_eq!(hit.kind, HitKind::Semantic);
    /// // The answer was judged wrong: the namespace now needs more than this similarity.
    /// let learned = cache.feedback(&hit, false).expect("a raised threshold");
    /// assert!(learned > hit.similarity);
    /// assert!(!cache.lookup(&asked).await?.is_hit());
    /// # Ok::<(), palisade_semantic_cache::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn feedback(&self, hit: &Hit, correct: bool) -> Option<f32> {
        if hit.kind != HitKind::Semantic {
            return None;
        }
        let namespace = &hit.entry.scope.partition.namespace;
        let inner = &self.inner;
        let recorded = inner.calibrations.record(
            namespace.as_str(),
            hit.similarity,
            correct,
            &inner.config.feedback,
        );
        inner.stats.feedback(namespace, correct);
        match recorded {
            Recorded::Kept(threshold) => {
                if let Some(t) = threshold {
                    inner.stats.calibrated(namespace, t);
                    tracing::debug!(
                        namespace = %namespace,
                        correct,
                        threshold = t,
                        "feedback calibrated the namespace's threshold"
                    );
                }
                threshold
            }
            Recorded::NamespaceLimit => {
                tracing::debug!(
                    namespace = %namespace,
                    "feedback ignored: FeedbackConfig::max_namespaces reached"
                );
                None
            }
        }
    }

    /// The threshold feedback taught `namespace`, if it raised one (see
    /// [`feedback`](Self::feedback)); lookups use the higher of it and the policy's.
    pub fn calibrated_threshold(&self, namespace: &Namespace) -> Option<f32> {
        self.inner.calibrations.threshold(namespace.as_str())
    }

    /// Forget the feedback `namespace` received (after its prompts or answers changed);
    /// whether it had any.
    pub fn forget_feedback(&self, namespace: &Namespace) -> bool {
        self.inner.calibrations.forget(namespace.as_str())
    }

    /// The similarity a semantic hit needs in `namespace`: its policy's threshold, or the
    /// one feedback taught it when higher.
    fn effective_threshold(&self, namespace: &Namespace, policy: &NamespacePolicy) -> f32 {
        self.inner
            .calibrations
            .threshold(namespace.as_str())
            .map_or(policy.threshold, |t| t.max(policy.threshold))
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.inner.embedder
    }

    /// The backend.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The settings.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// A snapshot of the statistics (no I/O).
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Computations of [`get_or_compute`](Self::get_or_compute) running right now (distinct
    /// keys). Drops back to zero when they finish, fail, panic or are cancelled: a
    /// steadily growing value is a leak.
    pub fn in_flight(&self) -> usize {
        self.inner
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the cache's backend answers right now (one `PING` for Redis; always `Ok` in
    /// memory). Under [`FailureMode::FallbackToMemory`] this is the primary's health: lookups
    /// keep working from memory while it says Redis is down.
    ///
    /// # Errors
    /// [`Error::Backend`] or [`Error::Timeout`] when the backend does not answer.
    pub async fn health(&self) -> Result<()> {
        self.inner.store.health().await
    }

    /// Entries and bytes held for a partition.
    ///
    /// # Errors
    /// [`Error::Backend`] when the backend fails.
    pub async fn usage(&self, partition: &Partition) -> Result<PartitionUsage> {
        self.inner.store.usage(partition).await
    }

    fn prepare<'a>(&'a self, key: &'a CacheKey) -> Result<Prepared<'a>> {
        let normalized = normalize_prompt(key.prompt(), self.inner.config.max_prompt_bytes)?;
        let scope = key.scope().id();
        Ok(Prepared {
            key,
            scope,
            id: entry_id(scope, &normalized),
            normalized,
            policy: self.policy(&key.partition().namespace),
        })
    }

    /// Embed one text, timed and checked.
    ///
    /// # Errors
    /// [`Error::Embedder`], or a vector error when the embedder returns a bad vector.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let started = Instant::now();
        let vector = self.inner.embedder.embed(text).await?;
        self.inner.stats.embedded(started.elapsed());
        check_vector(&vector, self.inner.embedder.dimension())?;
        Ok(vector)
    }

    /// Look a key up: exact match, then nearest neighbours checked by the guard.
    ///
    /// Costs one store read when the exact path hits; otherwise one embedding and one
    /// search (unless the namespace is exact-only).
    ///
    /// # Errors
    /// [`Error::EmptyPrompt`], [`Error::PromptTooLarge`], embedder and backend errors.
    #[tracing::instrument(name = "semantic_cache.lookup", level = "debug", skip_all, fields(tenant = %key.partition().tenant, namespace = %key.partition().namespace))]
    pub async fn lookup(&self, key: &CacheKey) -> Result<Lookup> {
        let prepared = self.prepare(key)?;
        Ok(self.lookup_prepared(&prepared).await?.0)
    }

    async fn lookup_prepared(&self, p: &Prepared<'_>) -> Result<(Lookup, Option<Vec<f32>>)> {
        let inner = &self.inner;
        let namespace = &p.key.partition().namespace;
        let now = crate::clock::now_ms(inner.clock.as_ref());
        let exact = match inner.store.get(p.key.partition(), &p.id, now).await {
            Ok(found) => found,
            Err(e) => return Ok((self.failed_open("get", namespace, e)?, None)),
        };
        if let Some(entry) = exact {
            inner.stats.hit(namespace, HitKind::Exact, 1.0, entry.usage);
            tracing::debug!(kind = "exact", "cache hit");
            return Ok((
                Lookup::Hit(Hit {
                    entry,
                    kind: HitKind::Exact,
                    similarity: 1.0,
                }),
                None,
            ));
        }
        if p.policy.exact_only_policy() {
            inner.stats.miss(namespace, &[]);
            return Ok((
                Lookup::Miss {
                    reason: MissReason::NoMatch,
                    best_similarity: None,
                },
                None,
            ));
        }
        let vector = self.embed(&p.normalized).await?;
        let threshold = self.effective_threshold(namespace, p.policy);
        let lowest = inner
            .lexical
            .as_ref()
            .map_or(threshold, |(floor, _)| threshold - floor.margin);
        let searched = inner
            .store
            .search(SearchQuery {
                partition: p.key.partition(),
                scope: p.scope,
                embedder: inner.embedder.version(),
                vector: &vector,
                limit: inner.config.candidates,
                min_similarity: lowest,
                now_ms: now,
            })
            .await;
        let found = match searched {
            Ok(found) => found,
            Err(e) => return Ok((self.failed_open("search", namespace, e)?, Some(vector))),
        };
        let best_similarity = found.first().map(|(_, s)| *s);
        let mut vetoes = Vec::new();
        let query_features =
            (p.policy.guard && !found.is_empty()).then(|| PromptFeatures::extract(p.key.prompt()));
        let mut query_lexical: Option<Vec<f32>> = None;
        for (entry, similarity) in found {
            if similarity < threshold
                && !self.lexically_near(
                    &p.normalized,
                    &mut query_lexical,
                    &entry,
                    threshold,
                    similarity,
                )
            {
                continue;
            }
            let veto = match &query_features {
                Some(features) => {
                    guard::judge(
                        inner.embedder.as_ref(),
                        features,
                        &PromptFeatures::extract(&entry.prompt),
                        &inner.config.guard,
                    )
                    .await?
                }
                None => None,
            };
            if let Some(reason) = veto {
                tracing::debug!(
                    similarity,
                    reason = reason.as_str(),
                    "semantic hit vetoed by the guard"
                );
                vetoes.push(reason);
                continue;
            }
            inner
                .stats
                .hit(namespace, HitKind::Semantic, similarity, entry.usage);
            tracing::debug!(kind = "semantic", similarity, "cache hit");
            return Ok((
                Lookup::Hit(Hit {
                    entry,
                    kind: HitKind::Semantic,
                    similarity,
                }),
                Some(vector),
            ));
        }
        inner.stats.miss(namespace, &vetoes);
        let reason = if vetoes.is_empty() {
            MissReason::NoMatch
        } else {
            MissReason::Vetoed
        };
        Ok((
            Lookup::Miss {
                reason,
                best_similarity,
            },
            Some(vector),
        ))
    }

    /// Whether a candidate under the threshold is in the [`LexicalFloor`]'s window and its
    /// prompt lexically near the query (the query's hashing vector made once, on demand).
    fn lexically_near(
        &self,
        query: &str,
        query_lexical: &mut Option<Vec<f32>>,
        entry: &Entry,
        threshold: f32,
        similarity: f32,
    ) -> bool {
        let Some((floor, hashing)) = &self.inner.lexical else {
            return false;
        };
        if similarity < threshold - floor.margin {
            return false;
        }
        let Ok(cached) = normalize_prompt(&entry.prompt, usize::MAX) else {
            return false;
        };
        let query = query_lexical.get_or_insert_with(|| hashing.embed_sync(query));
        let lexical = crate::index::dot(query, &hashing.embed_sync(&cached));
        floor.admits(threshold, similarity, lexical)
    }

    /// A backend error during a lookup: a miss under [`FailureMode::FailOpen`], the error
    /// otherwise.
    fn failed_open(&self, op: &'static str, namespace: &Namespace, error: Error) -> Result<Lookup> {
        if !(error.is_backend() && self.inner.config.failure_mode == FailureMode::FailOpen) {
            return Err(error);
        }
        tracing::warn!(
            op,
            error = &error as &dyn std::error::Error,
            "semantic cache backend failed; failing open (miss)"
        );
        self.inner.stats.backend_error(op);
        self.inner.stats.miss(namespace, &[]);
        Ok(Lookup::Miss {
            reason: MissReason::BackendUnavailable,
            best_similarity: None,
        })
    }

    /// Cache a response for `key` with the namespace's TTL and no tags.
    ///
    /// # Errors
    /// Bad prompt, embedder and backend errors.
    pub async fn insert(
        &self,
        key: &CacheKey,
        response: impl Into<Vec<u8>>,
        usage: Usage,
    ) -> Result<Arc<Entry>> {
        self.insert_with(key, response, usage, InsertOptions::default())
            .await
    }

    /// Cache a response with tags and/or another TTL.
    ///
    /// # Errors
    /// Bad prompt, zero TTL, embedder and backend errors.
    #[tracing::instrument(name = "semantic_cache.insert", level = "debug", skip_all, fields(tenant = %key.partition().tenant, namespace = %key.partition().namespace))]
    pub async fn insert_with(
        &self,
        key: &CacheKey,
        response: impl Into<Vec<u8>>,
        usage: Usage,
        options: InsertOptions,
    ) -> Result<Arc<Entry>> {
        let prepared = self.prepare(key)?;
        self.insert_prepared(&prepared, response.into(), usage, options, None)
            .await
    }

    async fn insert_prepared(
        &self,
        p: &Prepared<'_>,
        response: Vec<u8>,
        usage: Usage,
        options: InsertOptions,
        vector: Option<Vec<f32>>,
    ) -> Result<Arc<Entry>> {
        let ttl = options.ttl.unwrap_or(p.policy.ttl);
        if ttl.is_zero() {
            return Err(Error::InvalidConfig("ttl must be above zero".into()));
        }
        let vector = match vector {
            _ if p.policy.exact_only_policy() => Vec::new(),
            Some(v) => v,
            None => self.embed(&p.normalized).await?,
        };
        let entry = self.entry(p, response, usage, options.tags, vector, ttl);
        self.store_insert(Arc::clone(&entry), ttl).await?;
        self.inner.stats.insert(&p.key.partition().namespace);
        Ok(entry)
    }

    fn entry(
        &self,
        p: &Prepared<'_>,
        response: Vec<u8>,
        usage: Usage,
        tags: Vec<Tag>,
        vector: Vec<f32>,
        ttl: Duration,
    ) -> Arc<Entry> {
        let now = crate::clock::now_ms(self.inner.clock.as_ref());
        Arc::new(Entry {
            id: p.id,
            scope: p.key.scope().clone(),
            prompt: p.key.prompt().to_owned(),
            response,
            usage,
            tags,
            vector,
            embedder: self.inner.embedder.version().to_owned(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl.as_millis() as u64),
        })
    }

    async fn store_insert(&self, entry: Arc<Entry>, ttl: Duration) -> Result<()> {
        self.inner.store.insert(entry, ttl).await
    }

    /// Cache what a computation returned. The response was paid for, so it is returned
    /// whatever happens here: an embedding or store failure only means it is not stored
    /// (counted, logged at WARN, `stored: false`).
    async fn keep_computed(
        &self,
        p: &Prepared<'_>,
        computed: Computed,
        vector: Option<Vec<f32>>,
    ) -> (Arc<Entry>, bool) {
        let ttl = p.policy.ttl;
        let vector = match vector {
            _ if p.policy.exact_only_policy() => Ok(Vec::new()),
            Some(v) => Ok(v),
            None => self.embed(&p.normalized).await,
        };
        let namespace = &p.key.partition().namespace;
        let (vector, failed) = match vector {
            Ok(v) => (v, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let entry = self.entry(
            p,
            computed.response,
            computed.usage,
            computed.tags,
            vector,
            ttl,
        );
        let failed = match failed {
            Some(e) => Some(e),
            None => self.store_insert(Arc::clone(&entry), ttl).await.err(),
        };
        match failed {
            None => {
                self.inner.stats.insert(namespace);
                (entry, true)
            }
            Some(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "semantic cache could not store a computed response; returning it uncached"
                );
                self.inner.stats.insert_failed(namespace);
                (entry, false)
            }
        }
    }

    /// Serve `key` from the cache, or run `compute` once, cache its result and return it.
    ///
    /// Concurrent calls with the same normalised prompt in the same scope share one run of
    /// `compute` (single-flight): the others wait and get [`Source::Joined`]. When `compute`
    /// fails, its error is returned to its caller and a waiting caller runs its own.
    ///
    /// # Errors
    /// [`Error::Provider`] with `compute`'s error, and everything [`lookup`](Self::lookup)
    /// and [`insert`](Self::insert) return. [`try_get_or_compute`](Self::try_get_or_compute)
    /// keeps `compute`'s error typed instead.
    #[tracing::instrument(name = "semantic_cache.get_or_compute", level = "debug", skip_all, fields(tenant = %key.partition().tenant, namespace = %key.partition().namespace))]
    pub async fn get_or_compute<F, Fut, E>(&self, key: &CacheKey, compute: F) -> Result<Served>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Computed, E>>,
        E: Into<BoxError>,
    {
        self.serve_or_compute(key, || async {
            compute().await.map_err(|e| Error::Provider(e.into()))
        })
        .await
    }

    /// [`get_or_compute`](Self::get_or_compute) that hands `compute`'s error back as it
    /// was, in [`ComputeError::Compute`], and the cache's own in [`ComputeError::Cache`]:
    /// the way to run a call through a circuit breaker (or any guard with a typed error)
    /// inside the computation and still tell its rejection from the provider's failure.
    /// Same cost and single-flight as `get_or_compute`.
    ///
    /// ```
    /// use palisade_semantic_cache::{CacheKey, ComputeError, Computed, SemanticCache, Usage};
    ///
    /// #[derive(Debug)]
    /// struct Busy; // a typed error of the computation, e.g. a circuit breaker's rejection
    /// # impl std::fmt::Display for Busy {
    /// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("busy") }
    /// # }
    /// # impl std::error::Error for Busy {}
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = SemanticCache::in_memory();
    /// let key = CacheKey::new("acme", "support", "gpt-4o-mini", "How do I reset my password?")?;
    /// let served = cache
    ///     .try_get_or_compute(&key, || async { Err::<Computed, _>(Busy) })
    ///     .await;
    /// assert!(matches!(served, Err(ComputeError::Compute(Busy))));
    ///
    /// let served = cache
    ///     .try_get_or_compute(&key, || async {
    ///         Ok::<_, Busy>(Computed::new("Use the reset link.", Usage::default()))
    ///     })
    ///     .await?;
    /// assert_eq!(served.entry.response_text(), Some("Use the reset link."));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ComputeError::Compute`] with `compute`'s error (nothing is cached), and
    /// [`ComputeError::Cache`] with everything [`lookup`](Self::lookup) and
    /// [`insert`](Self::insert) return.
    #[tracing::instrument(name = "semantic_cache.get_or_compute", level = "debug", skip_all, fields(tenant = %key.partition().tenant, namespace = %key.partition().namespace))]
    pub async fn try_get_or_compute<F, Fut, E>(
        &self,
        key: &CacheKey,
        compute: F,
    ) -> Result<Served, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Computed, E>>,
        E: Send,
    {
        // The typed error waits here while the single-flight machinery carries a marker.
        let failed: Mutex<Option<E>> = Mutex::new(None);
        let served = self
            .serve_or_compute(key, || async {
                compute().await.map_err(|e| {
                    *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    Error::Provider("the computation failed".into())
                })
            })
            .await;
        match served {
            Ok(served) => Ok(served),
            Err(error) => Err(
                match failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
                    Some(e) => ComputeError::Compute(e),
                    None => ComputeError::Cache(error),
                },
            ),
        }
    }

    async fn serve_or_compute<F, Fut>(&self, key: &CacheKey, compute: F) -> Result<Served>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Computed>>,
    {
        let prepared = self.prepare(key)?;
        let (lookup, vector) = self.lookup_prepared(&prepared).await?;
        if let Lookup::Hit(hit) = lookup {
            return Ok(Served {
                entry: hit.entry,
                source: Source::Cache {
                    kind: hit.kind,
                    similarity: hit.similarity,
                },
                stored: true,
            });
        }
        let flight = FlightGuard::join(&self.inner.flights, prepared.id);
        let ran = AtomicBool::new(false);
        let entry = flight
            .cell
            .get_or_try_init(|| async {
                ran.store(true, Ordering::Relaxed);
                self.inner
                    .stats
                    .compute(&prepared.key.partition().namespace);
                let computed = compute().await?;
                Ok::<_, Error>(self.keep_computed(&prepared, computed, vector).await)
            })
            .await?;
        let source = if ran.load(Ordering::Relaxed) {
            Source::Computed
        } else {
            Source::Joined
        };
        Ok(Served {
            entry: Arc::clone(&entry.0),
            source,
            stored: entry.1,
        })
    }

    /// Invalidate entries.
    ///
    /// # Errors
    /// [`Error::Backend`] when the backend fails.
    #[tracing::instrument(name = "semantic_cache.invalidate", level = "debug", skip(self))]
    pub async fn invalidate(&self, what: Invalidation) -> Result<u64> {
        let removed = self.inner.store.invalidate(&what).await?;
        metrics::counter!(crate::stats::names::INVALIDATIONS, "kind" => what.kind())
            .increment(removed);
        Ok(removed)
    }

    /// Invalidate every entry of `tenant` tagged `tag` (in all its namespaces).
    ///
    /// # Errors
    /// [`Error::Backend`] when the backend fails.
    pub async fn invalidate_tag(&self, tenant: &Tenant, tag: &Tag) -> Result<u64> {
        self.invalidate(Invalidation::Tag {
            tenant: tenant.clone(),
            tag: tag.clone(),
        })
        .await
    }

    /// Invalidate the entry `key` would hit exactly.
    ///
    /// # Errors
    /// Bad prompt, [`Error::Backend`].
    pub async fn invalidate_key(&self, key: &CacheKey) -> Result<u64> {
        let prepared = self.prepare(key)?;
        self.invalidate(Invalidation::Entry {
            partition: key.partition().clone(),
            id: prepared.id,
        })
        .await
    }

    /// Drop entries made by another embedder version than the current one.
    ///
    /// # Errors
    /// [`Error::Backend`] when the backend fails.
    pub async fn invalidate_stale_embeddings(&self) -> Result<u64> {
        self.invalidate(Invalidation::EmbedderOtherThan(
            self.inner.embedder.version().to_owned(),
        ))
        .await
    }
}
