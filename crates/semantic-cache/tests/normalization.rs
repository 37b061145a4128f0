//! The exact path's normalisation must not merge prompts that mean different things.
//!
//! Found in review (issue 15): NFKC folding turned "What is 2²?" into "what is 22" and
//! "10⁶ bytes" into "106 bytes", and exact hits skip the guard, so one was served the
//! other's answer. Superscripts, subscripts, fractions and circled digits stay distinct;
//! full-width forms, compatibility spaces and ligatures still fold.

use palisade_semantic_cache::normalize_prompt;
use palisade_semantic_cache::{CacheKey, HitKind, Lookup, SemanticCache, Usage};

fn norm(prompt: &str) -> String {
    normalize_prompt(prompt, 1024).unwrap()
}

#[test]
fn compatibility_characters_that_change_meaning_stay_distinct() {
    for (a, b) in [
        ("What is 2²?", "what is 22"),
        ("10⁶ bytes", "106 bytes"),
        ("H₂O", "h2o"),
        ("add ½ cup", "add 1/2 cup"),
        ("step ①", "step 1"),
        ("x³ + 1", "x3 + 1"),
    ] {
        assert_ne!(
            norm(a),
            norm(b),
            "{a:?} and {b:?} must not be one exact key"
        );
    }
}

#[test]
fn width_spaces_and_ligatures_still_fold() {
    assert_eq!(norm("Ｆｕｌｌ\u{3000}width"), "full width");
    assert_eq!(norm("ＷＨＡＴ　ＩＳ　ＲＵＳＴ？"), "what is rust");
    assert_eq!(norm("the \u{FB01}le"), "the file");
    assert_eq!(norm("non\u{00A0}breaking"), "non breaking");
    // Canonical equivalents are one key: precomposed é and e + combining acute.
    assert_eq!(norm("caf\u{00E9}"), norm("cafe\u{0301}"));
}

async fn served(cached: &str, asked: &str) -> Lookup {
    let cache = SemanticCache::in_memory();
    let key = |p: &str| CacheKey::new("t", "chat", "m", p).unwrap();
    cache
        .insert(&key(cached), "answer", Usage::default())
        .await
        .unwrap();
    cache.lookup(&key(asked)).await.unwrap()
}

#[tokio::test]
async fn a_superscript_is_never_an_exact_hit_for_a_digit() {
    for (cached, asked) in [("What is 2²?", "what is 22"), ("10⁶ bytes", "106 bytes")] {
        let lookup = served(cached, asked).await;
        assert!(
            !lookup.is_hit(),
            "{asked:?} was served the answer to {cached:?}: {lookup:?}"
        );
        let lookup = served(asked, cached).await;
        assert!(
            !lookup.is_hit(),
            "{cached:?} was served the answer to {asked:?}: {lookup:?}"
        );
    }
}

#[tokio::test]
async fn full_width_prompts_are_still_exact_hits() {
    let lookup = served("What is Rust?", "ＷＨＡＴ　ＩＳ　ＲＵＳＴ？").await;
    assert!(
        matches!(&lookup, Lookup::Hit(hit) if hit.kind == HitKind::Exact),
        "{lookup:?}"
    );
}
