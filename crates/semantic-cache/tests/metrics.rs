//! The documented metric names and labels are the ones emitted, through the per-namespace
//! handles the cache registers once.

use palisade_semantic_cache::names;
use palisade_semantic_cache::{CacheKey, SemanticCache, Usage};

#[test]
fn lookups_savings_and_vetoes_are_exported_per_namespace() {
    let lines = palisade_testkit::record_metrics(|| async move {
        let cache = SemanticCache::in_memory();
        let key = |ns: &str, prompt: &str| CacheKey::new("acme", ns, "m", prompt).unwrap();
        let usage = Usage::new(10, 5, 0.25);
        cache
            .insert(&key("support", "Cancel my subscription"), "ok", usage)
            .await
            .unwrap();
        // Two exact hits, one vetoed near-opposite, one plain miss in another namespace.
        for _ in 0..2 {
            let hit = cache
                .lookup(&key("support", "cancel my subscription"))
                .await;
            assert!(hit.unwrap().is_hit());
        }
        let opposite = key("support", "Don't cancel my subscription");
        assert!(!cache.lookup(&opposite).await.unwrap().is_hit());
        let elsewhere = key("billing", "Cancel my subscription");
        assert!(!cache.lookup(&elsewhere).await.unwrap().is_hit());
    });

    let seen = lines;
    let has = |line: String| assert!(seen.contains(&line), "{line} not in {seen:#?}");
    has(format!(
        "{}{{namespace=support,outcome=exact_hit}} 2",
        names::LOOKUPS
    ));
    has(format!(
        "{}{{namespace=support,outcome=vetoed}} 1",
        names::LOOKUPS
    ));
    has(format!(
        "{}{{namespace=billing,outcome=miss}} 1",
        names::LOOKUPS
    ));
    has(format!(
        "{}{{kind=input,namespace=support}} 20",
        names::TOKENS_SAVED
    ));
    has(format!(
        "{}{{kind=output,namespace=support}} 10",
        names::TOKENS_SAVED
    ));
    has(format!(
        "{}{{namespace=support}} 500000",
        names::COST_SAVED_MICROS
    ));
    has(format!("{}{{namespace=support}} 2", names::HIT_SIMILARITY));
    has(format!("{}{{namespace=support}} 1", names::INSERTS));
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("{}{{reason=", names::VETOES))),
        "{seen:#?}"
    );
}
