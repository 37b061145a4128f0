//! The quality evaluation. The held-out set (`data/quality/`) was split once, by family,
//! into a tuning part and a test part, and a third part of its own families (the threshold
//! part) was written later; the guard was chosen on the tuning part, the thresholds on the
//! threshold part. These tests report the test part's figures and hold the crate to them.

use std::collections::HashSet;

use palisade_semantic_cache::guard::GuardConfig;
use palisade_semantic_cache::quality::{
    LabelledPair, TRAPS, evaluate, evaluate_with, parse_pairs, parse_set, score, source_table,
    summary_table,
};
use palisade_semantic_cache::{
    CacheKey, DEFAULT_THRESHOLD, Embedder, HashingEmbedder, SemanticCache, Usage,
};

const TUNE: &str = include_str!("../data/quality/tune.tsv");
const TEST: &str = include_str!("../data/quality/test.tsv");
const THRESHOLD: &str = include_str!("../data/quality/threshold.tsv");

#[test]
fn the_held_out_set_is_large_split_by_family_and_from_several_sources() {
    let tune = parse_set(TUNE).unwrap();
    let test = parse_set(TEST).unwrap();
    assert!(
        tune.len() + test.len() >= 2000,
        "{} pairs",
        tune.len() + test.len()
    );
    let families = |p: &[LabelledPair]| -> HashSet<String> {
        p.iter()
            .map(|x| format!("{}/{}", x.source, x.family))
            .collect()
    };
    assert!(
        families(&tune).is_disjoint(&families(&test)),
        "a family is in both parts"
    );
    // The threshold part: its own template families, none in the other parts, no pair of
    // theirs, every trap kind, about half should hit.
    let threshold = parse_set(THRESHOLD).unwrap();
    assert!(threshold.len() >= 600, "{} pairs", threshold.len());
    let threshold_families = families(&threshold);
    assert!(
        threshold_families.len() >= 25,
        "{}",
        threshold_families.len()
    );
    assert!(threshold_families.is_disjoint(&families(&tune)));
    assert!(threshold_families.is_disjoint(&families(&test)));
    let categories: HashSet<&str> = threshold.iter().map(|p| p.category.as_str()).collect();
    for c in [
        "paraphrase",
        "near_repeat",
        "negation",
        "opposite",
        "entity",
        "number",
        "date",
        "scope",
        "role",
    ] {
        assert!(categories.contains(c), "no {c} pairs in the threshold part");
    }
    let hits = threshold.iter().filter(|p| p.should_hit).count();
    assert!((0.4..=0.65).contains(&(hits as f64 / threshold.len() as f64)));
    let other_pairs: HashSet<(&str, &str)> = tune
        .iter()
        .chain(&test)
        .map(|p| (p.cached.as_str(), p.new.as_str()))
        .collect();
    assert!(
        threshold
            .iter()
            .all(|p| !other_pairs.contains(&(p.cached.as_str(), p.new.as_str())))
    );
    for part in [&tune, &test] {
        let sources: HashSet<&str> = part.iter().map(|p| p.source.as_str()).collect();
        assert_eq!(sources.len(), 3, "{sources:?}");
        let hits = part.iter().filter(|p| p.should_hit).count();
        let share = hits as f64 / part.len() as f64;
        assert!((0.4..=0.65).contains(&share), "{share}");
    }
    // No pair of the test part appears in the tuning part.
    let tune_pairs: HashSet<(&str, &str)> = tune
        .iter()
        .map(|p| (p.cached.as_str(), p.new.as_str()))
        .collect();
    assert!(
        test.iter()
            .all(|p| !tune_pairs.contains(&(p.cached.as_str(), p.new.as_str())))
    );
}

/// The goal for the default offline embedder: at most 5 % of the test part's traps served.
#[tokio::test]
async fn hashing_embedder_on_the_test_part() {
    let pairs = parse_set(TEST).unwrap();
    let embedder = HashingEmbedder::default();
    assert_eq!(embedder.recommended_threshold(), DEFAULT_THRESHOLD);
    let scored = score(&embedder, &pairs, &GuardConfig::default())
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
        for t in [0.80, 0.90] {
            let mut r = evaluate_with(&scored, t, guard);
            r.label = format!("{name}, {t:.2}");
            reports.push(r);
        }
    }
    for t in [0.60, DEFAULT_THRESHOLD, 0.80, 0.90] {
        let mut r = evaluate(&scored, t, true);
        r.label = format!("guard, {t:.2}");
        reports.push(r);
    }
    println!("{}", summary_table(&reports));
    // The rows of scripts/quality-plot.py's CSV (the example writes the same with QUALITY_CSV).
    for guard in [false, true] {
        for t in [0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95] {
            let r = evaluate(&scored, t, guard);
            println!(
                "hashing,test,{t},{guard},{:.4},{:.4}",
                r.hit_rate(),
                r.false_hit_rate()
            );
        }
    }
    let default = evaluate(&scored, DEFAULT_THRESHOLD, true);
    println!("{}", source_table(&default));
    assert!(
        default.false_hit_rate() <= 0.05,
        "{:.3} of traps served",
        default.false_hit_rate()
    );
    // The figure measured when the decision was frozen (docs/semantic-cache.md), less a
    // margin: a change that loses many true hits must show up here.
    assert!(default.hit_rate() >= 0.52, "{:.3}", default.hit_rate());
}

/// The evaluation decides exactly as the cache does: every pair of the tuning part looked
/// up through `SemanticCache` (cached prompt inserted, new prompt looked up) gets the same
/// answer as `ScoredPair::served`.
#[tokio::test]
async fn the_evaluation_agrees_with_lookups_through_the_cache() {
    let pairs = parse_set(TUNE).unwrap();
    let embedder = HashingEmbedder::default();
    let scored = score(&embedder, &pairs, &GuardConfig::default())
        .await
        .unwrap();
    let cache = SemanticCache::builder().embedder(embedder).build().unwrap();
    assert_eq!(
        cache.config().default_policy.threshold,
        DEFAULT_THRESHOLD,
        "the builder applies the embedder's recommended threshold"
    );
    let mut disagreements = Vec::new();
    for (i, s) in scored.iter().enumerate() {
        let tenant = format!("pair-{i}");
        let key = |p: &str| CacheKey::new(&tenant, "q", "m", p).unwrap();
        cache
            .insert(&key(&s.pair.cached), "answer", Usage::default())
            .await
            .unwrap();
        let served = cache.lookup(&key(&s.pair.new)).await.unwrap().is_hit();
        if served != s.served(DEFAULT_THRESHOLD, Some(&GuardConfig::default())) {
            disagreements.push((s.pair.cached.clone(), s.pair.new.clone(), served));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// The crate's first pair set, which the original guard was tuned on (in-sample).
#[tokio::test]
async fn the_first_trap_set_stays_safe() {
    let pairs = parse_pairs(TRAPS).unwrap();
    assert!(pairs.len() >= 300, "{} pairs", pairs.len());
    let scored = score(&HashingEmbedder::default(), &pairs, &GuardConfig::default())
        .await
        .unwrap();
    let with_guard = evaluate(&scored, DEFAULT_THRESHOLD, true);
    let without = evaluate(&scored, DEFAULT_THRESHOLD, false);
    println!("{}", summary_table(&[with_guard.clone(), without.clone()]));
    assert!(
        with_guard.false_hit_rate() <= 0.02,
        "{}",
        with_guard.false_hit_rate()
    );
    assert!(
        without.false_hit_rate() > with_guard.false_hit_rate(),
        "the guard must matter"
    );
}

#[test]
fn malformed_pair_files_are_errors() {
    assert!(parse_pairs("paraphrase\thit\tonly three").is_err());
    assert!(parse_pairs("paraphrase\tmaybe\ta\tb").is_err());
    assert_eq!(
        parse_pairs("# comment\n\nx\tmiss\ta\tb\n").unwrap().len(),
        1
    );
    assert!(parse_set("a\tb\tc\thit\tx").is_err());
    assert!(parse_set("a\tb\tc\tperhaps\tx\ty").is_err());
    assert_eq!(parse_set("s\tf\tc\thit\tx\ty\n").unwrap().len(), 1);
}
