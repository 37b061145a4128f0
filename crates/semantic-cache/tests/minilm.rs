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

/// The test part at the threshold MiniLM recommends (which the builder applies by itself).
///
/// Issue 15's goal is at most 2 % of traps served with at least half of the should-hit
/// pairs. It is NOT met at the recommended threshold: with the decision frozen (guard levers
/// chosen on the tuning part, the threshold, 0.90, on the threshold part by its stated rule)
/// the test part gave 49.3 % true hits and 1.3 % false hits (docs/semantic-cache.md; at
/// 0.80 before: 52.3 % / 2.5 %). The bounds below hold the crate to that measurement (with
/// a small margin), so a regression fails here.
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
        r.label = format!("guard, {t:.2}");
        reports.push(r);
    }
    println!("{}", summary_table(&reports));
    // The rows of scripts/quality-plot.py's CSV (the example writes the same with QUALITY_CSV).
    for r in reports
        .iter()
        .filter(|r| !r.label.starts_with("guard before"))
    {
        println!(
            "minilm,test,{},{},{:.4},{:.4}",
            r.threshold,
            r.guard,
            r.hit_rate(),
            r.false_hit_rate()
        );
    }
    let recommended = evaluate(&scored, MINILM_THRESHOLD, true);
    println!("{}", markdown_table(std::slice::from_ref(&recommended)));
    println!("{}", source_table(&recommended));
    println!(
        "issue 15 goal (<= 2.0 % false hits with >= 50 % true hits): {}",
        if recommended.false_hit_rate() <= 0.02 && recommended.hit_rate() >= 0.5 {
            "met"
        } else {
            "NOT met"
        }
    );
    assert!(
        recommended.false_hit_rate() <= 0.02 && recommended.hit_rate() >= 0.48,
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
