//! Feedback calibration through the public API: wrong hits raise a namespace's threshold (and
//! only that namespace's), and the cut feedback certifies holds on traffic it never saw.

use std::time::Duration;

use async_trait::async_trait;
use palisade_semantic_cache::{
    CacheKey, Embedder, FeedbackConfig, HitKind, Lookup, Namespace, NamespacePolicy, Result,
    SemanticCache, Source, Usage,
};

/// Puts every prompt at a chosen cosine from the cached prompt: `"cached"` is `e0`, and
/// `"ask <s> <n>"` is `s·e0 + sqrt(1 - s²)·e1`, so its similarity to `"cached"` is `s`.
#[derive(Debug)]
struct AtSimilarity;

fn vector(text: &str) -> Vec<f32> {
    let mut v = vec![0.0; 4];
    let s: f32 = text
        .strip_prefix("ask ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    v[0] = s;
    v[1] = (1.0 - s * s).max(0.0).sqrt();
    v
}

#[async_trait]
impl Embedder for AtSimilarity {
    fn dimension(&self) -> usize {
        4
    }
    fn version(&self) -> &str {
        "at-similarity-test"
    }
    async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| vector(t)).collect())
    }
}

const OWN_THRESHOLD: f32 = 0.70;

/// A cache whose namespaces `a` and `b` serve anything at or above 0.70 without the guard
/// (the prompts here are not words), each holding the prompt `"cached"`.
async fn cache(feedback: FeedbackConfig) -> SemanticCache {
    let policy = NamespacePolicy::default()
        .ttl(Duration::from_secs(3600))
        .threshold(OWN_THRESHOLD)
        .guard(false);
    let cache = SemanticCache::builder()
        .embedder(AtSimilarity)
        .default_policy(policy)
        .feedback(feedback)
        .build()
        .unwrap();
    for ns in ["a", "b"] {
        cache
            .insert(&key(ns, "cached"), "the answer", Usage::default())
            .await
            .unwrap();
    }
    cache
}

fn key(namespace: &str, prompt: &str) -> CacheKey {
    CacheKey::new("acme", namespace, "m", prompt).unwrap()
}

fn ask(s: f32, n: usize) -> String {
    format!("ask {s:.5} {n}")
}

#[tokio::test]
async fn a_wrong_hit_raises_its_namespace_threshold_and_no_other() {
    let cache = cache(FeedbackConfig::default()).await;
    let hit = cache.lookup(&key("a", &ask(0.82, 0))).await.unwrap().hit();
    let hit = hit.expect("0.82 is above the namespace's 0.70");
    assert_eq!(hit.kind, HitKind::Semantic);

    // Right hits alone never move the threshold.
    assert_eq!(cache.feedback(&hit, true), None);
    assert_eq!(
        cache.calibrated_threshold(&Namespace::new("a").unwrap()),
        None
    );

    let learned = cache.feedback(&hit, false).expect("a raised threshold");
    assert!(learned > 0.82 && learned < 0.821, "{learned}");
    assert_eq!(
        cache.calibrated_threshold(&Namespace::new("a").unwrap()),
        Some(learned)
    );
    // The same prompt, and anything less similar, is a miss now; more similar still hits.
    assert!(
        !cache
            .lookup(&key("a", &ask(0.82, 1)))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        !cache
            .lookup(&key("a", &ask(0.75, 2)))
            .await
            .unwrap()
            .is_hit()
    );
    assert!(
        cache
            .lookup(&key("a", &ask(0.83, 3)))
            .await
            .unwrap()
            .is_hit()
    );
    // Namespace b learned nothing.
    assert!(
        cache
            .lookup(&key("b", &ask(0.75, 4)))
            .await
            .unwrap()
            .is_hit()
    );
    assert_eq!(
        cache.calibrated_threshold(&Namespace::new("b").unwrap()),
        None
    );

    // Forgetting restores the policy's threshold.
    assert!(cache.forget_feedback(&Namespace::new("a").unwrap()));
    assert!(
        cache
            .lookup(&key("a", &ask(0.75, 5)))
            .await
            .unwrap()
            .is_hit()
    );
}

#[tokio::test]
async fn exact_hits_are_not_judged_and_served_responses_can_be() {
    let cache = cache(FeedbackConfig::default()).await;
    let exact = cache
        .lookup(&key("a", "cached"))
        .await
        .unwrap()
        .hit()
        .unwrap();
    assert_eq!(exact.kind, HitKind::Exact);
    assert_eq!(cache.feedback(&exact, false), None);
    assert_eq!(
        cache.calibrated_threshold(&Namespace::new("a").unwrap()),
        None
    );

    // A response from get_or_compute carries its hit.
    let served = cache
        .get_or_compute(&key("a", &ask(0.9, 0)), || async {
            Ok::<_, std::io::Error>(palisade_semantic_cache::Computed::default())
        })
        .await
        .unwrap();
    assert!(matches!(served.source, Source::Cache { .. }));
    let hit = served.hit().expect("served from the cache");
    assert!(cache.feedback(&hit, false).unwrap() > 0.9);
}

#[tokio::test]
async fn feedback_beyond_the_namespace_limit_is_ignored() {
    let cache = cache(FeedbackConfig::default().max_namespaces(1)).await;
    let a = cache
        .lookup(&key("a", &ask(0.8, 0)))
        .await
        .unwrap()
        .hit()
        .unwrap();
    let b = cache
        .lookup(&key("b", &ask(0.8, 0)))
        .await
        .unwrap()
        .hit()
        .unwrap();
    assert!(cache.feedback(&a, false).is_some());
    assert_eq!(cache.feedback(&b, false), None);
    assert!(
        cache
            .lookup(&key("b", &ask(0.8, 1)))
            .await
            .unwrap()
            .is_hit()
    );
}

#[test]
fn bad_feedback_settings_are_refused() {
    for bad in [
        FeedbackConfig::default().target_error(0.0),
        FeedbackConfig::default().z(f64::NAN),
        FeedbackConfig::default().max_samples(0),
    ] {
        assert!(SemanticCache::builder().feedback(bad).build().is_err());
    }
}

/// splitmix64: a fixed seed makes the simulated traffic the same on every run.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Simulated traffic: similarities uniform in [0.70, 1.00); a hit below 0.88 is a wrong
/// answer a quarter of the time, between 0.88 and 0.93 three times in a hundred, above
/// never. Served as-is that is about 15 % wrong answers.
fn draw(rng: &mut Rng) -> (f32, bool) {
    let s = 0.70 + 0.30 * rng.next_f32();
    let wrong_rate = if s < 0.88 {
        0.25
    } else if s < 0.93 {
        0.03
    } else {
        0.0
    };
    (s, rng.next_f32() >= wrong_rate)
}

/// Serve `n` simulated lookups from namespace `a`; returns (served, served wrong), and
/// judges every served hit through `feedback` when `learn` is set.
async fn traffic(cache: &SemanticCache, rng: &mut Rng, n: usize, learn: bool) -> (usize, usize) {
    let (mut served, mut wrong) = (0, 0);
    for i in 0..n {
        let (s, correct) = draw(rng);
        if let Lookup::Hit(hit) = cache.lookup(&key("a", &ask(s, i))).await.unwrap() {
            served += 1;
            wrong += usize::from(!correct);
            if learn {
                cache.feedback(&hit, correct);
            }
        }
    }
    (served, wrong)
}

#[tokio::test]
async fn certified_cuts_hold_on_held_out_traffic() {
    let config = FeedbackConfig::default();
    let cache = cache(config.clone()).await;
    let mut rng = Rng(15);

    // Before any feedback the namespace serves everything above 0.70: many wrong answers.
    let (served, wrong) = traffic(&cache, &mut rng, 4000, false).await;
    let before = wrong as f64 / served as f64;
    assert!(before > 0.10, "{before}");

    // Learn from judged hits...
    traffic(&cache, &mut rng, 6000, true).await;
    let learned = cache
        .calibrated_threshold(&Namespace::new("a").unwrap())
        .expect("wrong hits raised the threshold");
    // ...a cut that is neither the policy's nor everything-misses.
    assert!(learned > 0.85 && learned < 0.95, "{learned}");

    // ...and it holds on traffic that was never judged.
    let (served, wrong) = traffic(&cache, &mut rng, 20_000, false).await;
    let after = wrong as f64 / served as f64;
    println!(
        "wrong answers served: {before:.3} before feedback, {after:.4} after (threshold {learned:.4}, {served} of 20000 served)"
    );
    assert!(
        after <= config.target_error,
        "held out: {wrong} wrong of {served} served ({after:.4}) at {learned}"
    );
    assert!(served > 20_000 / 6, "the cut still serves hits: {served}");
}
