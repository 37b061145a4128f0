//! The `candle` MiniLM embedder: golden values and the quality table. Needs the model files:
//! run `crates/semantic-cache/scripts/fetch-minilm.sh` first (or set `PALISADE_MINILM_DIR`).
//! A missing model fails these tests with that instruction; it never skips them.
#![cfg(feature = "candle")]

use std::path::PathBuf;

use palisade_semantic_cache::minilm::{MINILM_DIR_ENV, MINILM_THRESHOLD, MiniLmEmbedder};
use palisade_semantic_cache::quality::{TRAPS, evaluate, markdown_table, parse_pairs, score};
use palisade_semantic_cache::{Embedder, GuardConfig};

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

#[tokio::test]
async fn minilm_quality_on_the_trap_set() {
    let pairs = parse_pairs(TRAPS).unwrap();
    let scored = score(&embedder(), &pairs, &GuardConfig::default())
        .await
        .unwrap();
    let mut reports = Vec::new();
    for guard in [false, true] {
        for t in [0.70, 0.75, 0.80, 0.85, 0.90, 0.95] {
            reports.push(evaluate(&scored, t, guard));
        }
    }
    println!("{}", markdown_table(&reports));
    // The target, at the threshold the docs recommend: at most 2 % of traps served
    // with at least 50 % true hits.
    let recommended = evaluate(&scored, MINILM_THRESHOLD, true);
    assert!(
        recommended.false_hit_rate() <= 0.02 && recommended.hit_rate() >= 0.5,
        "at {MINILM_THRESHOLD}: {:.3} true hits, {:.3} false hits",
        recommended.hit_rate(),
        recommended.false_hit_rate()
    );
    // Without the guard the same threshold is not safe: the guard is doing real work.
    assert!(evaluate(&scored, MINILM_THRESHOLD, false).false_hit_rate() > 0.2);
}
