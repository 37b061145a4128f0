//! The `candle` MiniLM embedder: golden values and the quality table. Needs the model files:
//! run `crates/semantic-cache/scripts/fetch-minilm.sh` first (or set `PALISADE_MINILM_DIR`).
//! A missing model fails these tests with that instruction; it never skips them.
#![cfg(feature = "candle")]

use std::path::PathBuf;

use palisade_semantic_cache::guard::GuardConfig;
use palisade_semantic_cache::minilm::{
    MINILM_DIR_ENV, MINILM_SPAN_SIMILARITY, MINILM_THRESHOLD, MiniLmEmbedder,
};
use palisade_semantic_cache::quality::{
    TRAPS, evaluate, evaluate_with, markdown_table, parse_pairs, parse_set, score, source_table,
    summary_table,
};
use palisade_semantic_cache::{Embedder, SemanticCache};

fn model_dir() -> PathBuf {
    std::env::var_os(MINILM_DIR_ENV).map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.model-cache/all-MiniLM-L6-v2"
            ))
        },
        PathBuf::from,
    )
}

fn embedder() -> MiniLmEmbedder {
    let dir = model_dir();
    MiniLmEmbedder::from_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "all-MiniLM-L6-v2 not found in {} ({e}); run crates/semantic-cache/scripts/fetch-minilm.sh or set {MINILM_DIR_ENV}",
            dir.display()
        )
    })
}

#[tokio::test]
async fn golden_vector_matches_sentence_transformers() {
    let v = embedder()
        .embed("This is an example sentence")
        .await
        .unwrap();
    assert_eq!(v.len(), 384);
    let expected = [0.0677, 0.0635, 0.0487, 0.0793];
    for (got, want) in v.iter().zip(expected) {
        assert!(
            (got - want).abs() < 5e-4,
            "got {:?}, want {expected:?}",
            &v[..4]
        );
    }
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
}

/// The span check reads MiniLM's own word-piece table instead of running the model on the
/// spans; the async trait method (what `guard::judge` calls) gives the same value.
#[tokio::test]
async fn span_similarity_uses_static_word_pieces() {
    let minilm = embedder();
    let same = minilm.span_similarity_sync("Update", "update").unwrap();
    assert!((same - 1.0).abs() < 1e-5, "{same}");
    let pair = minilm.span_similarity_sync("adults", "children").unwrap();
    assert!(pair < MINILM_SPAN_SIMILARITY, "adults/children {pair}");
    assert_eq!(
        minilm.span_similarity("adults", "children").await.unwrap(),
        pair
    );
    // Nothing to compare is never alike.
    assert_eq!(minilm.span_similarity_sync("", "update").unwrap(), 0.0);
    assert_eq!(minilm.word_vectors("two words").unwrap().len(), 2);
}

const TEST: &str = include_str!("../data/quality/test.tsv");

/// The test part at the threshold and lexical floor MiniLM recommends (which the builder
/// applies by itself).
///
/// Issue 15's goal is at most 2 % of traps served with at least half of the should-hit
/// pairs. With the decision frozen (guard levers and the lexical floor's range chosen on the
/// tuning part, the threshold, 0.90, and the floor's lexical value, 0.75, on the threshold
/// part by stated rules) the test part gave **53.7 % true hits and 1.3 % false hits**: met
/// (without the floor 49.3 % / 1.3 %, not met; docs/semantic-cache.md). The bounds below
/// hold the crate to that measurement (with a small margin), so a regression fails here.
#[tokio::test]
async fn minilm_quality_on_the_test_part() {
    let minilm = embedder();
    assert_eq!(minilm.recommended_threshold(), MINILM_THRESHOLD);
    let cache = SemanticCache::builder()
        .embedder(minilm.clone())
        .build()
        .unwrap();
    assert_eq!(cache.config().default_policy.threshold, MINILM_THRESHOLD);
    let pairs = parse_set(TEST).unwrap();
    let scored = score(&minilm, &pairs, &GuardConfig::default())
        .await
        .unwrap();
    let old_guard = GuardConfig::default()
        .lexicon(false)
        .roles(false)
        .substitutions(false);
    let mut reports = Vec::new();
    for (name, guard) in [
        ("no guard", None),
        ("guard before issue 15", Some(&old_guard)),
    ] {
        for t in [0.80, 0.85, 0.90, 0.95] {
            let mut r = evaluate_with(&scored, t, guard);
            r.label = format!("{name}, {t:.2}");
            reports.push(r);
        }
    }
    for t in [0.70, 0.75, 0.80, 0.85, 0.90, 0.95] {
        let mut r = evaluate(&scored, t, true);
        r.label = format!("guard + lexical floor, {t:.2}");
        reports.push(r);
    }
    // The same decision without the lexical floor (MiniLM's before issue 15's third round).
    let without: Vec<_> = scored
        .iter()
        .cloned()
        .map(|mut s| {
            s.lexical_floor = None;
            s
        })
        .collect();
    for t in [0.70, 0.75, 0.80, 0.85, 0.90, 0.95] {
        let mut r = evaluate(&without, t, true);
        r.label = format!("guard, no lexical floor, {t:.2}");
        reports.push(r);
    }
    println!("{}", summary_table(&reports));
    // The rows of scripts/quality-plot.py's CSV (the example writes the same with QUALITY_CSV).
    for r in reports
        .iter()
        .filter(|r| !r.label.starts_with("guard before"))
    {
        println!(
            "{},test,{},{},{:.4},{:.4}",
            if r.label.contains("no lexical floor") {
                "minilm-nofloor"
            } else {
                "minilm"
            },
            r.threshold,
            r.guard,
            r.hit_rate(),
            r.false_hit_rate()
        );
    }
    let recommended = evaluate(&scored, MINILM_THRESHOLD, true);
    let mut before = evaluate(&without, MINILM_THRESHOLD, true);
    before.label = format!("{MINILM_THRESHOLD:.2}, no lexical floor");
    println!("{}", markdown_table(&[recommended.clone(), before.clone()]));
    println!("{}", source_table(&recommended));
    println!("{}", source_table(&before));
    println!(
        "issue 15 goal (<= 2.0 % false hits with >= 50 % true hits): {}",
        if recommended.false_hit_rate() <= 0.02 && recommended.hit_rate() >= 0.5 {
            "met"
        } else {
            "NOT met"
        }
    );
    assert!(
        recommended.false_hit_rate() <= 0.02 && recommended.hit_rate() >= 0.52,
        "at {MINILM_THRESHOLD}: {:.3} true hits, {:.3} false hits",
        recommended.hit_rate(),
        recommended.false_hit_rate()
    );
}

#[tokio::test]
async fn minilm_on_the_first_trap_set() {
    let pairs = parse_pairs(TRAPS).unwrap();
    let scored = score(&embedder(), &pairs, &GuardConfig::default())
        .await
        .unwrap();
    let recommended = evaluate(&scored, MINILM_THRESHOLD, true);
    println!("{}", summary_table(std::slice::from_ref(&recommended)));
    assert!(recommended.false_hit_rate() <= 0.02);
    // Without the guard the same threshold is not safe: the guard is doing real work.
    assert!(evaluate(&scored, MINILM_THRESHOLD, false).false_hit_rate() > 0.2);
}

/// Near-repeats (a greeting or a "please" more) that MiniLM places under its threshold are
/// served through the lexical floor the builder takes from the embedder (before the floor
/// they were misses), and traps as near are not. Pairs written for this test, in none of the
/// quality set's parts.
#[tokio::test]
async fn near_repeats_under_the_threshold_are_served_by_the_lexical_floor() {
    use palisade_semantic_cache::minilm::MINILM_LEXICAL_FLOOR;
    use palisade_semantic_cache::{CacheKey, Usage};
    let minilm = embedder();
    assert_eq!(
        minilm.recommended_lexical_floor(),
        Some(MINILM_LEXICAL_FLOOR)
    );
    let cache = SemanticCache::builder()
        .embedder(minilm.clone())
        .build()
        .unwrap();
    assert_eq!(cache.config().lexical_floor, Some(MINILM_LEXICAL_FLOOR));
    let pairs = [
        ("do you sleep", "do you sleep, please", true),
        ("Can you sing", "Can you sing, please", true),
        (
            "What is a heat pump",
            "Can you help? What is a heat pump",
            true,
        ),
        (
            "Is it safe to run every day?",
            "Can you help? Is it safe to run every day",
            true,
        ),
        (
            "Define photosynthesis",
            "Hey, define photosynthesis please",
            true,
        ),
        (
            "Book a taxi to the station for 6pm",
            "Can you help? Book a taxi to the station for 6pm",
            true,
        ),
        (
            "Should I water my tomato plants every day?",
            "Hey, should I not water my tomato plants every day",
            false,
        ),
        ("do you sleep", "do you not sleep, please", false),
        (
            "Book a taxi to the station for 6pm",
            "Can you help? Book a taxi to the station for 7pm",
            false,
        ),
    ];
    // The same cache without the floor: what the crate did before it.
    let before = SemanticCache::builder()
        .embedder(minilm.clone())
        .lexical_floor(None)
        .build()
        .unwrap();
    let mut under = 0;
    let mut wrong = Vec::new();
    for (i, (cached, new, hit)) in pairs.into_iter().enumerate() {
        let tenant = format!("t{i}");
        let key = |p: &str| CacheKey::new(&tenant, "faq", "m", p).unwrap();
        cache
            .insert(&key(cached), "answer", Usage::default())
            .await
            .unwrap();
        let (a, b) = (
            cache.embed(&cached.to_lowercase()).await.unwrap(),
            cache.embed(&new.to_lowercase()).await.unwrap(),
        );
        let s: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let served = cache.lookup(&key(new)).await.unwrap().is_hit();
        before
            .insert(&key(cached), "answer", Usage::default())
            .await
            .unwrap();
        let served_before = before.lookup(&key(new)).await.unwrap().is_hit();
        assert_eq!(served_before, hit && s >= MINILM_THRESHOLD, "{new}");
        println!("{s:.3} served={served} expected={hit} | {cached} | {new}");
        if hit && s < MINILM_THRESHOLD {
            under += 1;
        }
        if served != hit {
            wrong.push((cached, new, s));
        }
    }
    assert!(
        under >= 2,
        "the test needs near-repeats under the threshold: {under}"
    );
    assert!(wrong.is_empty(), "{wrong:?}");
}
