//! The public conformance suite of [`Store`]: one async function per behaviour every
//! backend must have, checked through the [`SemanticCache`] API and the raw `Store` API.
//! The crate runs it against memory, a standalone Redis, a 3-master Redis Cluster and a TLS
//! Redis; a store written outside this crate can run it too.
//!
//! Each case takes a fresh store (`Arc<dyn Store>`), uses tenants `t1`…`t3` and may run in
//! any order. [`store_conformance_tests!`](crate::store_conformance_tests) writes one
//! `#[tokio::test]` per case:
//!
//! ```
//! use palisade_semantic_cache::testing::Fixture;
//! use palisade_semantic_cache::MemoryStore;
//!
//! async fn memory() -> Fixture {
//!     Fixture::new(MemoryStore::default())
//! }
//!
//! // In a test file: one test per case, each on a fresh store.
//! palisade_semantic_cache::store_conformance_tests!(memory());
//! # fn main() {}
//! ```
//!
//! The macro needs `tokio` (features `macros`, `rt-multi-thread`) among the caller's
//! dev-dependencies. Backends that learn vectors asynchronously (the Redis store's event
//! stream) are given [`settle`] after writes.
#![allow(clippy::missing_panics_doc)]

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::store::SearchQuery;
use crate::{
    CacheKey, Error, FakeClock, HitKind, InsertOptions, Invalidation, Lookup, MissReason,
    NamespacePolicy, Partition, SemanticCache, SemanticCacheBuilder, Store, Tag, Tenant, Usage,
};

/// A cache over `store` with the suite's namespaces: `chat` (60 s TTL, threshold 0.75),
/// `short` (5 s, 0.75) and `exact` (exact matches only), reading time from `clock`.
pub fn cache(store: Arc<dyn Store>, clock: &FakeClock) -> SemanticCache {
    builder(store, clock).build().unwrap()
}

/// The suite's settings, for tests that add their own.
pub fn builder(store: Arc<dyn Store>, clock: &FakeClock) -> SemanticCacheBuilder {
    SemanticCache::builder()
        .shared_store(store)
        .clock(clock.clone())
        .namespace(
            "chat",
            NamespacePolicy::with_ttl(Duration::from_secs(60)).threshold(0.75),
        )
        .namespace(
            "short",
            NamespacePolicy::with_ttl(Duration::from_secs(5)).threshold(0.75),
        )
        .namespace(
            "exact",
            NamespacePolicy::exact_only(Duration::from_secs(60)),
        )
}

/// A key of `tenant`, namespace `ns` and model `model-a`.
pub fn key(tenant: &str, ns: &str, prompt: &str) -> CacheKey {
    CacheKey::new(tenant, ns, "model-a", prompt).unwrap()
}

fn usage() -> Usage {
    Usage {
        input_tokens: 100,
        output_tokens: 50,
        cost: 0.01,
    }
}

/// Give eventually consistent backends (a Redis index fed by a stream) time to catch up.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// Conformance case `exact_hit_needs_no_embedding`.
pub async fn exact_hit_needs_no_embedding(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    c.insert(
        &key("t1", "chat", "How do I reset my password?"),
        "Settings > Security",
        usage(),
    )
    .await
    .unwrap();
    let embeds = c.stats().embed_calls;
    let hit = c
        .lookup(&key("t1", "chat", "  how do i RESET my password "))
        .await
        .unwrap()
        .hit()
        .unwrap();
    assert_eq!(hit.kind, HitKind::Exact);
    assert_eq!(hit.similarity, 1.0);
    assert_eq!(hit.entry.response, b"Settings > Security");
    assert_eq!(
        c.stats().embed_calls,
        embeds,
        "the exact path must not embed"
    );
    assert_eq!(c.stats().exact_hits, 1);
    assert_eq!(c.stats().input_tokens_saved, 100);
}

/// Conformance case `semantic_hit_within_threshold`.
pub async fn semantic_hit_within_threshold(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    c.insert(
        &key("t1", "chat", "How do I reset my password?"),
        "Settings > Security",
        usage(),
    )
    .await
    .unwrap();
    settle().await;
    let hit = c
        .lookup(&key("t1", "chat", "how can I reset my password"))
        .await
        .unwrap()
        .hit()
        .unwrap();
    assert_eq!(hit.kind, HitKind::Semantic);
    assert!(
        hit.similarity >= 0.75 && hit.similarity < 1.0,
        "{}",
        hit.similarity
    );
    let unrelated = c
        .lookup(&key("t1", "chat", "What is the weather in Oslo?"))
        .await
        .unwrap();
    assert!(matches!(
        unrelated,
        Lookup::Miss {
            reason: MissReason::NoMatch,
            ..
        }
    ));
    assert_eq!(c.stats().semantic_hits, 1);
}

/// Conformance case `guard_vetoes_near_opposites`.
pub async fn guard_vetoes_near_opposites(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    c.insert(
        &key("t1", "chat", "Cancel my subscription"),
        "cancelled",
        usage(),
    )
    .await
    .unwrap();
    c.insert(
        &key("t1", "chat", "Refund 20 dollars to my card"),
        "refunded 20",
        usage(),
    )
    .await
    .unwrap();
    settle().await;
    let lookup = c
        .lookup(&key("t1", "chat", "Don't cancel my subscription"))
        .await
        .unwrap();
    assert!(
        matches!(
            lookup,
            Lookup::Miss {
                reason: MissReason::Vetoed,
                ..
            }
        ),
        "{lookup:?}"
    );
    let lookup = c
        .lookup(&key("t1", "chat", "Refund 200 dollars to my card"))
        .await
        .unwrap();
    assert!(
        matches!(
            lookup,
            Lookup::Miss {
                reason: MissReason::Vetoed,
                ..
            }
        ),
        "{lookup:?}"
    );
    assert_eq!(c.stats().vetoed, 2);
}

/// Conformance case `exact_only_namespace_never_embeds`.
pub async fn exact_only_namespace_never_embeds(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    c.insert(&key("t1", "exact", "user profile 42"), "{}", usage())
        .await
        .unwrap();
    assert!(
        c.lookup(&key("t1", "exact", "user profile 42"))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        !c.lookup(&key("t1", "exact", "the user profile 42"))
            .await
            .unwrap()
            .is_hit()
    );
    assert_eq!(c.stats().embed_calls, 0);
}

/// Conformance case `tenants_namespaces_models_and_contexts_never_mix`.
pub async fn tenants_namespaces_models_and_contexts_never_mix(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    let prompt = "How do I reset my password?";
    c.insert(&key("t1", "chat", prompt), "t1 answer", usage())
        .await
        .unwrap();
    settle().await;
    assert!(!c.lookup(&key("t2", "chat", prompt)).await.unwrap().is_hit());
    assert!(
        !c.lookup(&key("t2", "chat", "how can I reset my password"))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        !c.lookup(&key("t1", "other", prompt))
            .await
            .unwrap()
            .is_hit()
    );
    let other_model = CacheKey::new("t1", "chat", "model-b", prompt).unwrap();
    assert!(!c.lookup(&other_model).await.unwrap().is_hit());
    let other_context = key("t1", "chat", prompt)
        .with_context(crate::ContextHasher::new().system("be brief").finish());
    assert!(!c.lookup(&other_context).await.unwrap().is_hit());
    assert!(c.lookup(&key("t1", "chat", prompt)).await.unwrap().is_hit());
}

/// Conformance case `ttl_expires_with_the_fake_clock`.
pub async fn ttl_expires_with_the_fake_clock(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    c.insert(
        &key("t1", "short", "What is our refund policy?"),
        "30 days",
        usage(),
    )
    .await
    .unwrap();
    c.insert(
        &key("t1", "chat", "What is our refund policy?"),
        "30 days",
        usage(),
    )
    .await
    .unwrap();
    settle().await;
    clock.advance(Duration::from_secs(4));
    assert!(
        c.lookup(&key("t1", "short", "What is our refund policy?"))
            .await
            .unwrap()
            .is_hit()
    );
    clock.advance(Duration::from_secs(2));
    assert!(
        !c.lookup(&key("t1", "short", "What is our refund policy?"))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        !c.lookup(&key("t1", "short", "what's our refund policy"))
            .await
            .unwrap()
            .is_hit()
    );
    // The namespace with a 60 s TTL still has it.
    assert!(
        c.lookup(&key("t1", "chat", "What is our refund policy?"))
            .await
            .unwrap()
            .is_hit()
    );
    // A per-insert TTL overrides the namespace's.
    let opts = InsertOptions {
        ttl: Some(Duration::from_secs(1)),
        ..InsertOptions::default()
    };
    c.insert_with(&key("t1", "chat", "brief one"), "x", usage(), opts)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    assert!(
        !c.lookup(&key("t1", "chat", "brief one"))
            .await
            .unwrap()
            .is_hit()
    );
}

/// Conformance case `invalidation_by_entry_tag_namespace_and_tenant`.
pub async fn invalidation_by_entry_tag_namespace_and_tenant(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    let tag = Tag::new("user:42").unwrap();
    let tagged = InsertOptions {
        tags: vec![tag.clone()],
        ..InsertOptions::default()
    };
    c.insert_with(
        &key("t1", "chat", "my workout plan"),
        "a",
        usage(),
        tagged.clone(),
    )
    .await
    .unwrap();
    c.insert_with(
        &key("t1", "exact", "my calories today"),
        "b",
        usage(),
        tagged.clone(),
    )
    .await
    .unwrap();
    c.insert_with(
        &key("t2", "chat", "my workout plan"),
        "c",
        usage(),
        tagged.clone(),
    )
    .await
    .unwrap();
    c.insert(&key("t1", "chat", "gym opening hours"), "d", usage())
        .await
        .unwrap();
    settle().await;

    // Tag: both of t1's namespaces, not t2.
    let removed = c
        .invalidate_tag(&Tenant::new("t1").unwrap(), &tag)
        .await
        .unwrap();
    assert_eq!(removed, 2);
    settle().await;
    assert!(
        !c.lookup(&key("t1", "chat", "my workout plan"))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        !c.lookup(&key("t1", "exact", "my calories today"))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        c.lookup(&key("t2", "chat", "my workout plan"))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        c.lookup(&key("t1", "chat", "gym opening hours"))
            .await
            .unwrap()
            .is_hit()
    );

    // Entry.
    assert_eq!(
        c.invalidate_key(&key("t1", "chat", "Gym opening hours"))
            .await
            .unwrap(),
        1
    );
    settle().await;
    assert!(
        !c.lookup(&key("t1", "chat", "gym opening hours"))
            .await
            .unwrap()
            .is_hit()
    );

    // Namespace.
    c.insert(&key("t1", "chat", "pool opening hours"), "e", usage())
        .await
        .unwrap();
    c.insert(&key("t1", "exact", "pool opening hours"), "f", usage())
        .await
        .unwrap();
    c.invalidate(Invalidation::Namespace(
        Partition::new("t1", "chat").unwrap(),
    ))
    .await
    .unwrap();
    settle().await;
    assert!(
        !c.lookup(&key("t1", "chat", "pool opening hours"))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        c.lookup(&key("t1", "exact", "pool opening hours"))
            .await
            .unwrap()
            .is_hit()
    );

    // Tenant.
    c.invalidate(Invalidation::Tenant(Tenant::new("t1").unwrap()))
        .await
        .unwrap();
    settle().await;
    assert!(
        !c.lookup(&key("t1", "exact", "pool opening hours"))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        c.lookup(&key("t2", "chat", "my workout plan"))
            .await
            .unwrap()
            .is_hit()
    );
}

/// Conformance case `embedder_version_change_is_a_miss`.
pub async fn embedder_version_change_is_a_miss(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let old = cache(Arc::clone(&store), &clock);
    old.insert(
        &key("t1", "chat", "How do I reset my password?"),
        "x",
        usage(),
    )
    .await
    .unwrap();
    settle().await;
    let config = crate::HashingConfig {
        dimension: 256,
        ..Default::default()
    };
    let new = SemanticCache::builder()
        .shared_store(Arc::clone(&store))
        .clock(clock.clone())
        .embedder(crate::HashingEmbedder::new(config).unwrap())
        .namespace(
            "chat",
            NamespacePolicy::with_ttl(Duration::from_secs(60)).threshold(0.5),
        )
        .build()
        .unwrap();
    // A paraphrase needs the vectors: the old ones are of another version and never compared.
    assert!(
        !new.lookup(&key("t1", "chat", "how can I reset my password"))
            .await
            .unwrap()
            .is_hit()
    );
    // Clean-up removes them.
    assert_eq!(new.invalidate_stale_embeddings().await.unwrap(), 1);
    settle().await;
    assert!(
        !old.lookup(&key("t1", "chat", "How do I reset my password?"))
            .await
            .unwrap()
            .is_hit()
    );
}

/// Conformance case `bad_input_is_a_typed_error`.
pub async fn bad_input_is_a_typed_error(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(Arc::clone(&store), &clock);
    assert!(matches!(
        c.lookup(&key("t1", "chat", "")).await,
        Err(Error::EmptyPrompt)
    ));
    assert!(matches!(
        c.lookup(&key("t1", "chat", " \n\t ")).await,
        Err(Error::EmptyPrompt)
    ));
    let huge = "a".repeat(1 << 20);
    assert!(matches!(
        c.lookup(&key("t1", "chat", &huge)).await,
        Err(Error::PromptTooLarge { .. })
    ));
    assert!(matches!(
        c.insert(&key("t1", "chat", &huge), "x", usage()).await,
        Err(Error::PromptTooLarge { .. })
    ));
    // Raw store: bad query vectors.
    c.insert(&key("t1", "chat", "something"), "x", usage())
        .await
        .unwrap();
    settle().await;
    let partition = Partition::new("t1", "chat").unwrap();
    let scope = key("t1", "chat", "something").scope().id();
    let embedder = c.embedder().version().to_owned();
    let query = |vector: &'static [f32]| SearchQuery {
        partition: &partition,
        scope,
        embedder: &embedder,
        vector,
        limit: 1,
        min_similarity: 0.0,
        now_ms: 0,
    };
    assert!(matches!(
        store.search(query(&[1.0, 2.0])).await,
        Err(Error::DimensionMismatch {
            expected: 384,
            actual: 2
        })
    ));
    static NAN: [f32; 384] = [f32::NAN; 384];
    assert!(matches!(
        store.search(query(&NAN)).await,
        Err(Error::NonFiniteVector)
    ));
}

/// Conformance case `usage_counts_entries_per_partition`.
pub async fn usage_counts_entries_per_partition(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    for i in 0..3 {
        c.insert(&key("t1", "chat", &format!("question {i}")), "x", usage())
            .await
            .unwrap();
    }
    c.insert(&key("t2", "chat", "question 0"), "x", usage())
        .await
        .unwrap();
    let u = c
        .usage(&Partition::new("t1", "chat").unwrap())
        .await
        .unwrap();
    assert_eq!(u.entries, 3);
    let u = c
        .usage(&Partition::new("t3", "chat").unwrap())
        .await
        .unwrap();
    assert_eq!(u.entries, 0);
}

/// Conformance case `replacing_an_entry_keeps_one`.
pub async fn replacing_an_entry_keeps_one(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    c.insert(&key("t1", "chat", "What is the answer?"), "old", usage())
        .await
        .unwrap();
    c.insert(&key("t1", "chat", "what is the answer"), "new", usage())
        .await
        .unwrap();
    settle().await;
    let hit = c
        .lookup(&key("t1", "chat", "What is the answer"))
        .await
        .unwrap()
        .hit()
        .unwrap();
    assert_eq!(hit.entry.response, b"new");
    assert_eq!(
        c.usage(&Partition::new("t1", "chat").unwrap())
            .await
            .unwrap()
            .entries,
        1
    );
    let hit = c
        .lookup(&key("t1", "chat", "so what is the answer then"))
        .await
        .unwrap();
    if let Some(hit) = hit.hit() {
        assert_eq!(hit.entry.response, b"new");
    }
}

/// A store under test and whatever must live as long as the test (a server, a cluster).
pub struct Fixture {
    store: Arc<dyn Store>,
    _keep: Vec<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// A fixture for `store`.
    pub fn new(store: impl Store + 'static) -> Self {
        Self {
            store: Arc::new(store),
            _keep: Vec::new(),
        }
    }

    /// Keep `guard` (a server handle) alive as long as the fixture.
    #[must_use]
    pub fn keep_alive(mut self, guard: impl Any + Send + Sync) -> Self {
        self._keep.push(Box::new(guard));
        self
    }

    /// The store, shared.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

/// One `#[tokio::test]` per conformance case, each on a fresh fixture from `$fixture` (an
/// expression of type `impl Future<Output = Fixture>`, evaluated once per test).
#[macro_export]
macro_rules! store_conformance_tests {
    ($fixture:expr) => {
        $crate::__store_conformance_cases!($fixture;
            exact_hit_needs_no_embedding,
            semantic_hit_within_threshold,
            guard_vetoes_near_opposites,
            exact_only_namespace_never_embeds,
            tenants_namespaces_models_and_contexts_never_mix,
            ttl_expires_with_the_fake_clock,
            invalidation_by_entry_tag_namespace_and_tenant,
            embedder_version_change_is_a_miss,
            bad_input_is_a_typed_error,
            usage_counts_entries_per_partition,
            replacing_an_entry_keeps_one,
            hostile_tenant_names_stay_apart,
            get_or_compute_stores_once,
            a_reachable_store_is_healthy
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_cases {
    ($fixture:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture: $crate::testing::Fixture = $fixture.await;
                $crate::testing::$case(fixture.store()).await;
            }
        )*
    };
}

/// Every case in turn, each on a fresh store from `make`.
pub async fn run_all_cases<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Fixture>,
{
    macro_rules! each {
        ($($case:ident),*) => { $( $case(make().await.store()).await; )* };
    }
    each!(
        exact_hit_needs_no_embedding,
        semantic_hit_within_threshold,
        guard_vetoes_near_opposites,
        exact_only_namespace_never_embeds,
        tenants_namespaces_models_and_contexts_never_mix,
        ttl_expires_with_the_fake_clock,
        invalidation_by_entry_tag_namespace_and_tenant,
        embedder_version_change_is_a_miss,
        bad_input_is_a_typed_error,
        usage_counts_entries_per_partition,
        replacing_an_entry_keeps_one,
        hostile_tenant_names_stay_apart,
        get_or_compute_stores_once,
        a_reachable_store_is_healthy
    );
}

/// Tenant names that try to escape or collide in a key format stay apart.
pub async fn hostile_tenant_names_stay_apart(store: Arc<dyn Store>) {
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    let tenants = ["x", "x}", "{x", "x:e:", "x%7D", "*", "x\u{0}y", "x:{y}:e:0"];
    for t in tenants {
        c.insert(&key(t, "chat", "same prompt everywhere"), t, usage())
            .await
            .unwrap();
    }
    settle().await;
    for t in tenants {
        let hit = c
            .lookup(&key(t, "chat", "same prompt everywhere"))
            .await
            .unwrap()
            .hit()
            .unwrap();
        assert_eq!(hit.entry.response, t.as_bytes());
    }
    c.invalidate(Invalidation::Tenant(Tenant::new("x").unwrap()))
        .await
        .unwrap();
    settle().await;
    assert!(
        !c.lookup(&key("x", "chat", "same prompt everywhere"))
            .await
            .unwrap()
            .is_hit()
    );
    for t in &tenants[1..] {
        assert!(
            c.lookup(&key(t, "chat", "same prompt everywhere"))
                .await
                .unwrap()
                .is_hit(),
            "{t}"
        );
    }
}

/// Twenty concurrent identical requests compute once, and the result is stored.
pub async fn get_or_compute_stores_once(store: Arc<dyn Store>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let clock = FakeClock::default();
    let c = cache(store, &clock);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, calls) = (c.clone(), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            c.get_or_compute(&key("t1", "chat", "Summarise the report"), || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::io::Error>(crate::Computed::new("summary", usage()))
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        let served = t.await.unwrap();
        assert_eq!(served.entry.response, b"summary");
        assert!(served.stored);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.in_flight(), 0);
    assert!(
        c.lookup(&key("t1", "chat", "summarise the report"))
            .await
            .unwrap()
            .is_hit()
    );
}

/// A store whose backend answers reports itself healthy (and stays so across calls).
pub async fn a_reachable_store_is_healthy(store: Arc<dyn Store>) {
    store.health().await.expect("a reachable store is healthy");
    store.health().await.expect("and stays healthy");
}
