//! The quality evaluation on the shipped pair set: the defaults must keep false hits rare
//! and still serve paraphrases.

use palisade_semantic_cache::quality::{TRAPS, evaluate, markdown_table, parse_pairs, score};
use palisade_semantic_cache::{DEFAULT_THRESHOLD, GuardConfig, HashingEmbedder};

#[tokio::test]
async fn default_threshold_and_guard_on_the_trap_set() {
    let pairs = parse_pairs(TRAPS).unwrap();
    assert!(pairs.len() >= 300, "{} pairs", pairs.len());
    let scored = score(&HashingEmbedder::default(), &pairs, &GuardConfig::default())
        .await
        .unwrap();
    let mut reports = Vec::new();
    for guard in [false, true] {
        for t in [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95] {
            reports.push(evaluate(&scored, t, guard));
        }
    }
    println!("{}", markdown_table(&reports));
    let with_guard = evaluate(&scored, DEFAULT_THRESHOLD, true);
    let without = evaluate(&scored, DEFAULT_THRESHOLD, false);
    println!(
        "default {DEFAULT_THRESHOLD}: {:.3} true, {:.3} false (guard off: {:.3} false)",
        with_guard.hit_rate(),
        with_guard.false_hit_rate(),
        without.false_hit_rate()
    );
    assert!(
        with_guard.false_hit_rate() <= 0.02,
        "{}",
        with_guard.false_hit_rate()
    );
    assert!(with_guard.hit_rate() >= 0.5, "{}", with_guard.hit_rate());
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
}

#[tokio::test]
#[ignore = "diagnostic listing, run by hand"]
async fn list_mistakes() {
    let pairs = parse_pairs(TRAPS).unwrap();
    let scored = score(&HashingEmbedder::default(), &pairs, &GuardConfig::default())
        .await
        .unwrap();
    for s in &scored {
        let served = s.exact || (s.similarity >= DEFAULT_THRESHOLD && !s.vetoed);
        if served != s.pair.should_hit {
            println!(
                "{:.3} vetoed={} {} | {} | {}",
                s.similarity, s.vetoed, s.pair.category, s.pair.cached, s.pair.new
            );
        }
    }
}
