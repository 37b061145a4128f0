//! Cache-level behaviour that does not depend on the backend: single-flight, the cached
//! provider, the typed value cache and the tenant-isolation property.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use palisade_semantic_cache::CallGuard;
use palisade_semantic_cache::{
    BoxError, CacheKey, CachedProvider, Completion, CompletionRequest, Computed, LlmProvider,
    Partition, Pricing, SemanticCache, Source, Usage, ValueCache,
};
use proptest::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_identical_prompts_make_one_call() {
    let cache = SemanticCache::in_memory();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let cache = cache.clone();
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            let key = CacheKey::new("t1", "chat", "m", "Summarise the quarterly report").unwrap();
            cache
                .get_or_compute(&key, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(Computed::new("summary", Usage::new(10, 5, 0.1)))
                })
                .await
                .unwrap()
        }));
    }
    let mut sources = Vec::new();
    for t in tasks {
        let served = t.await.unwrap();
        assert_eq!(served.entry.response, b"summary");
        sources.push(served.source);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        sources.iter().filter(|s| **s == Source::Computed).count(),
        1
    );
    assert_eq!(cache.stats().computes, 1);
}

#[tokio::test]
async fn a_failed_computation_is_not_cached_and_is_retried() {
    let cache = SemanticCache::in_memory();
    let key = CacheKey::new("t1", "chat", "m", "flaky question").unwrap();
    let err = cache
        .get_or_compute(&key, || async {
            Err::<Computed, _>(std::io::Error::other("provider down"))
        })
        .await
        .unwrap_err();
    assert!(err.is_transient());
    let served = cache
        .get_or_compute(&key, || async {
            Ok::<_, std::io::Error>(Computed::new("ok", Usage::default()))
        })
        .await
        .unwrap();
    assert_eq!(served.source, Source::Computed);
    let served = cache
        .get_or_compute(&key, || async {
            Ok::<_, std::io::Error>(Computed::new("again", Usage::default()))
        })
        .await
        .unwrap();
    assert!(matches!(served.source, Source::Cache { .. }));
    assert_eq!(served.entry.response, b"ok");
}

#[derive(Debug, Default)]
struct FakeLlm {
    calls: AtomicUsize,
}

#[async_trait]
impl LlmProvider for FakeLlm {
    fn model(&self) -> &str {
        "fake-1"
    }

    fn pricing(&self) -> Pricing {
        Pricing::new(0.001, 0.002)
    }

    async fn complete(&self, request: &CompletionRequest) -> Result<Completion, BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Completion::new(
            format!("answer to {}", request.prompt),
            100,
            50,
        ))
    }
}

#[tokio::test]
async fn cached_provider_records_cost_and_serves_hits() {
    let provider = CachedProvider::new(FakeLlm::default(), SemanticCache::in_memory());
    let p = Partition::new("acme", "chat").unwrap();
    let req = CompletionRequest::new("What is the refund policy?");
    let first = provider.complete(&p, &req).await.unwrap();
    assert_eq!(first.source, Source::Computed);
    assert!((first.usage.cost - 0.2).abs() < 1e-9);
    let second = provider
        .complete(&p, &CompletionRequest::new("what is the refund policy"))
        .await
        .unwrap();
    assert!(matches!(second.source, Source::Cache { .. }));
    assert_eq!(second.text, "answer to What is the refund policy?");
    // Another system prompt is another context: no hit.
    let mut other = req.clone();
    other.system = Some("Answer in French.".into());
    assert_eq!(
        provider.complete(&p, &other).await.unwrap().source,
        Source::Computed
    );
    assert_eq!(provider.provider().calls.load(Ordering::SeqCst), 2);
    assert!((provider.spent().cost - 0.4).abs() < 1e-9);
    let stats = provider.cache().stats();
    assert!((stats.cost_saved - 0.2).abs() < 1e-9);
    assert_eq!(stats.input_tokens_saved, 100);

    let batch = provider
        .complete_batch(
            &p,
            &[
                CompletionRequest::new("one thing"),
                CompletionRequest::new("What is the refund policy?"),
            ],
        )
        .await;
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].as_ref().unwrap().source, Source::Computed);
    assert!(matches!(
        batch[1].as_ref().unwrap().source,
        Source::Cache { .. }
    ));
}

#[tokio::test]
async fn call_guard_wraps_provider_calls() {
    use futures::future::BoxFuture;
    let refused = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&refused);
    let open_breaker = move |_call: BoxFuture<'static, Result<Completion, BoxError>>| -> BoxFuture<'static, Result<Completion, BoxError>> {
        r.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err::<Completion, BoxError>("circuit open".into()) })
    };
    fn assert_guard(_: &impl CallGuard) {}
    assert_guard(&open_breaker);
    let provider = CachedProvider::new(FakeLlm::default(), SemanticCache::in_memory())
        .with_call_guard(open_breaker);
    let p = Partition::new("acme", "chat").unwrap();
    let err = provider
        .complete(&p, &CompletionRequest::new("hello there"))
        .await
        .unwrap_err();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("circuit open"), "{cause}");
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    assert_eq!(provider.provider().calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn value_cache_is_tenant_scoped_with_namespace_ttl() {
    let cache: ValueCache<String> = ValueCache::builder(100, Duration::from_secs(60))
        .namespace_ttl("rag", Duration::from_millis(50))
        .build();
    let a = Partition::new("a", "rag").unwrap();
    let b = Partition::new("b", "rag").unwrap();
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>("ctx".to_owned())
    };
    cache.get_or_try_insert_with(&a, "doc", load).await.unwrap();
    cache.get_or_try_insert_with(&a, "doc", load).await.unwrap();
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get(&b, "doc").await, None);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        cache.get(&a, "doc").await,
        None,
        "the rag namespace's TTL is 50 ms"
    );
    cache.insert(&a, "x", "1".into()).await;
    cache.insert(&b, "x", "2".into()).await;
    cache.invalidate_tenant(a.tenant()).await;
    assert_eq!(cache.get(&a, "x").await, None);
    assert_eq!(cache.get(&b, "x").await.as_deref(), Some("2"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random tenants insert random prompts; every lookup (exact or semantic, with the
    /// threshold at its loosest) only ever returns the looking tenant's own entries.
    #[test]
    fn tenants_never_see_each_others_entries(
        inserts in proptest::collection::vec((0usize..4, "[a-d ]{1,12}"), 1..30),
        lookups in proptest::collection::vec((0usize..4, "[a-d ]{1,12}"), 1..30),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let cache = SemanticCache::builder()
                .default_policy(palisade_semantic_cache::NamespacePolicy::default().threshold(-1.0))
                .guard(palisade_semantic_cache::guard::GuardConfig::disabled())
                .build()
                .unwrap();
            let tenants = ["alpha", "beta", "gamma", "delta"];
            for (t, prompt) in &inserts {
                let key = CacheKey::new(tenants[*t], "ns", "m", prompt.as_str()).unwrap();
                match cache.insert(&key, tenants[*t], Usage::default()).await {
                    Ok(_) | Err(palisade_semantic_cache::Error::EmptyPrompt) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            for (t, prompt) in &lookups {
                let key = CacheKey::new(tenants[*t], "ns", "m", prompt.as_str()).unwrap();
                if let Ok(lookup) = cache.lookup(&key).await
                    && let Some(hit) = lookup.hit()
                {
                    assert_eq!(hit.entry.scope.partition.tenant.as_str(), tenants[*t]);
                    assert_eq!(hit.entry.response, tenants[*t].as_bytes());
                }
            }
        });
    }
}

#[derive(Debug)]
struct EmbeddingLlm;

#[async_trait]
impl LlmProvider for EmbeddingLlm {
    fn model(&self) -> &str {
        "embed-1"
    }

    fn pricing(&self) -> Pricing {
        Pricing::default()
    }

    async fn complete(&self, _: &CompletionRequest) -> Result<Completion, BoxError> {
        Err("not used".into())
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BoxError> {
        // Vectors from text length: a NaN for the text "nan", a wrong size for "short".
        Ok(texts
            .iter()
            .map(|t| match *t {
                "nan" => vec![f32::NAN, 1.0, 0.0],
                "short" => vec![1.0],
                _ => vec![t.len() as f32, 1.0, 2.0],
            })
            .collect())
    }
}

#[tokio::test]
async fn provider_embedder_checks_and_normalises_vectors() {
    use palisade_semantic_cache::{Embedder, Error, ProviderEmbedder};
    let e = ProviderEmbedder::new(Arc::new(EmbeddingLlm), 3, "embed-1");
    let v = e.embed("hello").await.unwrap();
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-6);
    assert!(matches!(e.embed("nan").await, Err(Error::NonFiniteVector)));
    assert!(matches!(
        e.embed("short").await,
        Err(Error::DimensionMismatch {
            expected: 3,
            actual: 1
        })
    ));
    // And a cache built on it rejects the same bad vectors with the same typed errors.
    let cache = SemanticCache::builder().embedder(e).build().unwrap();
    let key = CacheKey::new("t", "n", "m", "nan").unwrap();
    assert!(matches!(
        cache.lookup(&key).await,
        Err(Error::NonFiniteVector)
    ));
}

#[tokio::test]
async fn json_responses_round_trip() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Answer {
        text: String,
        sources: Vec<u32>,
    }
    let cache = SemanticCache::in_memory();
    let key = CacheKey::new("t", "n", "m", "what is in doc 7").unwrap();
    let answer = Answer {
        text: "policy".into(),
        sources: vec![7],
    };
    let served = cache
        .get_or_compute(&key, || async { Computed::json(&answer, Usage::default()) })
        .await
        .unwrap();
    assert_eq!(served.entry.response_json::<Answer>().unwrap(), answer);
}

/// Review finding: the single-flight map kept an entry for every failed, panicked or
/// cancelled computation (the guard counted three references where it expected two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_forgets_failed_panicked_and_cancelled_computations() {
    let cache = SemanticCache::in_memory();
    // Failed.
    for i in 0..10 {
        let key = CacheKey::new("t1", "chat", "m", format!("failing question {i}")).unwrap();
        let err = cache
            .get_or_compute(&key, || async {
                Err::<Computed, _>(std::io::Error::other("provider down"))
            })
            .await
            .unwrap_err();
        assert!(err.is_transient());
    }
    assert_eq!(cache.in_flight(), 0, "failed computations stay in the map");
    // Panicked (in a task, as a panicking handler would).
    let c = cache.clone();
    let panicked = tokio::spawn(async move {
        let key = CacheKey::new("t1", "chat", "m", "panicking question").unwrap();
        let _ = c
            .get_or_compute(&key, || async {
                panic!("the provider client panicked");
                #[allow(unreachable_code)]
                Ok::<_, std::io::Error>(Computed::default())
            })
            .await;
    })
    .await;
    assert!(panicked.is_err());
    assert_eq!(
        cache.in_flight(),
        0,
        "a panicked computation stays in the map"
    );
    // Cancelled (the caller's request was dropped mid-call), with and without a waiter.
    for waiters in [0usize, 3] {
        let key = CacheKey::new("t1", "chat", "m", format!("slow question {waiters}")).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..=waiters {
            let (c, key) = (cache.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_millis(30),
                    c.get_or_compute(&key, || async {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok::<_, std::io::Error>(Computed::default())
                    }),
                )
                .await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            cache.in_flight(),
            0,
            "a cancelled computation stays in the map"
        );
    }
    // The key still works afterwards.
    let key = CacheKey::new("t1", "chat", "m", "failing question 0").unwrap();
    let served = cache
        .get_or_compute(&key, || async {
            Ok::<_, std::io::Error>(Computed::new("ok", Usage::default()))
        })
        .await
        .unwrap();
    assert_eq!(served.source, Source::Computed);
    assert_eq!(cache.in_flight(), 0);
}

/// A store whose inserts fail (Redis refusing writes: OOM, read-only replica, timeout),
/// everything else served by memory.
#[derive(Debug, Default)]
struct RefusesInserts(palisade_semantic_cache::MemoryStore);

#[async_trait]
impl palisade_semantic_cache::Store for RefusesInserts {
    async fn insert(
        &self,
        _: Arc<palisade_semantic_cache::Entry>,
        _: Duration,
    ) -> palisade_semantic_cache::Result<()> {
        Err(palisade_semantic_cache::Error::backend(
            std::io::Error::other("OOM command not allowed"),
            true,
        ))
    }
    async fn get(
        &self,
        p: &Partition,
        id: &palisade_semantic_cache::EntryId,
        now: u64,
    ) -> palisade_semantic_cache::Result<Option<Arc<palisade_semantic_cache::Entry>>> {
        self.0.get(p, id, now).await
    }
    async fn search(
        &self,
        q: palisade_semantic_cache::SearchQuery<'_>,
    ) -> palisade_semantic_cache::Result<Vec<(Arc<palisade_semantic_cache::Entry>, f32)>> {
        self.0.search(q).await
    }
    async fn invalidate(
        &self,
        what: &palisade_semantic_cache::Invalidation,
    ) -> palisade_semantic_cache::Result<u64> {
        self.0.invalidate(what).await
    }
    async fn usage(
        &self,
        p: &Partition,
    ) -> palisade_semantic_cache::Result<palisade_semantic_cache::PartitionUsage> {
        self.0.usage(p).await
    }
}

/// Review finding: a computed (paid-for) response was lost when the cache insert failed,
/// and every waiting caller paid for its own. Now the response is returned to all of them,
/// marked as not stored, and the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_for_response_survives_a_failed_insert() {
    let cache = SemanticCache::builder()
        .store(RefusesInserts::default())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (cache, calls) = (cache.clone(), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            let key = CacheKey::new("t1", "chat", "m", "Summarise the annual report").unwrap();
            cache
                .get_or_compute(&key, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(Computed::new("summary", Usage::default()))
                })
                .await
        }));
    }
    for t in tasks {
        let served = t.await.unwrap().expect("the computed response is returned");
        assert_eq!(served.entry.response, b"summary");
        assert!(!served.stored, "the insert failed, the response says so");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "waiters must not pay again"
    );
    assert_eq!(cache.stats().insert_failures, 1);
    assert_eq!(cache.stats().inserts, 0);
    assert_eq!(cache.in_flight(), 0);
}

#[test]
fn config_reads_humantime_durations_and_refuses_unknown_fields() {
    use palisade_semantic_cache::{CacheConfig, FailureMode};
    let config: CacheConfig = serde_json::from_str(
        r#"{"default_policy": {"ttl": "90s"}, "failure_mode": "fallback_to_memory",
            "namespaces": {"chat": {"ttl": "1h", "threshold": 0.85}}}"#,
    )
    .unwrap();
    assert_eq!(config.default_policy.ttl, Duration::from_secs(90));
    assert_eq!(config.namespaces["chat"].ttl, Duration::from_secs(3600));
    assert_eq!(config.failure_mode, FailureMode::FallbackToMemory);
    assert_eq!(CacheConfig::default().failure_mode, FailureMode::FailOpen);
    assert!(serde_json::from_str::<CacheConfig>(r#"{"candidate": 4}"#).is_err());
    assert!(serde_json::from_str::<CacheConfig>(r#"{"default_policy": {"tll": "1h"}}"#).is_err());
}

/// The lexical floor (issue 15): a candidate under the threshold by at most the margin is
/// served when the prompts are lexically near (default hashing embedder), the guard still
/// judging it; the window moves with a namespace's threshold. The hashing embedder stands in
/// for the model here (its similarity is then both signals); `tests/minilm.rs` checks MiniLM.
#[tokio::test]
async fn a_lexical_floor_serves_near_repeats_just_under_the_threshold() {
    use palisade_semantic_cache::{
        HashingEmbedder, LexicalFloor, Lookup, MissReason, NamespacePolicy,
    };
    let cached = "How do I reset my password on the web app?";
    let near = "how do i reset my pasword on the web app";
    let trap = "How do I not reset my password on the web app?";
    let h = HashingEmbedder::default();
    let sim = |a: &str, b: &str| -> f32 {
        let (x, y) = (h.embed_sync(a), h.embed_sync(b));
        x.iter().zip(&y).map(|(p, q)| p * q).sum()
    };
    // normalize_prompt lowercases and trims: the near-repeat still differs in a word.
    let s = sim(&cached.to_lowercase(), near);
    assert!(s < 0.99, "{s}");
    let threshold = s + 0.05;
    let floor = LexicalFloor::new(s - 0.01, 0.10).unwrap();
    let build = |floor: Option<LexicalFloor>| {
        SemanticCache::builder()
            .threshold(threshold)
            .namespace("strict", NamespacePolicy::default().threshold(s + 0.15))
            .lexical_floor(floor)
            .build()
            .unwrap()
    };
    let key = |ns: &str, p: &str| CacheKey::new("t1", ns, "m", p).unwrap();
    for (cache, served) in [(build(None), false), (build(Some(floor)), true)] {
        for ns in ["faq", "strict"] {
            cache
                .insert(&key(ns, cached), "Settings > Security.", Usage::default())
                .await
                .unwrap();
        }
        let found = cache.lookup(&key("faq", near)).await.unwrap();
        assert_eq!(found.is_hit(), served, "{found:?}");
        if let Some(hit) = found.hit() {
            assert!(
                (hit.similarity - s).abs() < 1e-3,
                "the model's similarity is reported"
            );
        }
        // Under a stricter namespace's threshold by more than the margin: no hit.
        assert!(!cache.lookup(&key("strict", near)).await.unwrap().is_hit());
        // A trap in the window is judged by the guard as any candidate.
        if served {
            let t = sim(&cached.to_lowercase(), &trap.to_lowercase());
            assert!(t >= threshold - 0.10, "the trap is in the window: {t}");
            let missed = cache.lookup(&key("faq", trap)).await.unwrap();
            assert!(
                matches!(
                    missed,
                    Lookup::Miss {
                        reason: MissReason::Vetoed,
                        ..
                    }
                ),
                "{missed:?}"
            );
        }
    }
    // The built-in hashing embedder recommends no floor; a bad floor is refused.
    assert_eq!(SemanticCache::in_memory().config().lexical_floor, None);
    assert!(LexicalFloor::new(1.5, 0.1).is_err() && LexicalFloor::new(0.9, -0.1).is_err());
}
