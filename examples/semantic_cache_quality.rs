//! How often the semantic cache serves a right answer to a paraphrase (true hits), and how
//! often a wrong one to a trap (false hits), on the held-out quality set in
//! `crates/semantic-cache/data/quality/`: its TUNING part (guard rules were chosen by
//! looking at it), its THRESHOLD part (the thresholds were chosen on it, by a rule stated in
//! advance, from aggregate figures) and its TEST part (nothing was tuned on it: its figures
//! are the ones to quote). Per trap kind, per threshold, per category and per source.
//!
//! ```sh
//! cargo run --example semantic_cache_quality
//! # MiniLM rows too, after crates/semantic-cache/scripts/fetch-minilm.sh:
//! cargo run --release --example semantic_cache_quality --features candle
//! # and a CSV of every setting, for scripts/quality-plot.py:
//! QUALITY_CSV=target/semantic-cache-quality.csv cargo run --example semantic_cache_quality
//! ```

use std::fmt::Write as _;

use palisade::semantic_cache::guard::GuardConfig;
use palisade::semantic_cache::quality::{
    Report, ScoredPair, evaluate_with, markdown_table, parse_set, score, source_table,
    summary_table,
};
use palisade::semantic_cache::{Embedder, HashingEmbedder};

const TUNE: &str = include_str!("../crates/semantic-cache/data/quality/tune.tsv");
const TEST: &str = include_str!("../crates/semantic-cache/data/quality/test.tsv");
const THRESHOLD: &str = include_str!("../crates/semantic-cache/data/quality/threshold.tsv");

/// Every setting of one embedder on one part: no guard, and the full guard, per threshold,
/// with the embedder's recommended lexical floor (MiniLM's; the hashing embedder has none);
/// for an embedder with a floor, the guard's rows again without it.
fn settings(scored: &[ScoredPair], thresholds: &[f32]) -> Vec<Report> {
    let guard = GuardConfig::default();
    let without: Vec<ScoredPair> = scored
        .iter()
        .cloned()
        .map(|mut s| {
            s.lexical_floor = None;
            s
        })
        .collect();
    let floor = scored.iter().any(|s| s.lexical_floor.is_some());
    let mut reports = Vec::new();
    let mut rows = vec![
        ("no guard", scored, None),
        (
            if floor {
                "guard + lexical floor"
            } else {
                "guard"
            },
            scored,
            Some(&guard),
        ),
    ];
    if floor {
        rows.push(("guard, no lexical floor", &without[..], Some(&guard)));
    }
    for (name, set, config) in rows {
        for t in thresholds {
            let mut r = evaluate_with(set, *t, config);
            r.label = format!("{name}, {t:.2}");
            reports.push(r);
        }
    }
    reports
}

async fn report(
    embedder: &dyn Embedder,
    name: &str,
    thresholds: &[f32],
    csv: &mut String,
) -> Result<(), Box<dyn std::error::Error>> {
    let recommended = embedder.recommended_threshold();
    for (part, text) in [("tune", TUNE), ("threshold", THRESHOLD), ("test", TEST)] {
        let pairs = parse_set(text)?;
        let scored = score(embedder, &pairs, &GuardConfig::default()).await?;
        let reports = settings(&scored, thresholds);
        println!("### {name}, {part} part ({} pairs)\n", pairs.len());
        println!("{}", summary_table(&reports));
        let at = evaluate_with(&scored, recommended, Some(&GuardConfig::default()));
        println!(
            "Per category, guard on, {recommended:.2} (the embedder's recommended threshold and lexical floor):\n"
        );
        println!("{}", markdown_table(std::slice::from_ref(&at)));
        println!("{}", source_table(&at));
        for r in &reports {
            // The rows without the lexical floor are a series of their own in the plot.
            let series = if r.label.contains("no lexical floor") {
                format!("{name}-nofloor")
            } else {
                name.to_owned()
            };
            writeln!(
                csv,
                "{series},{part},{},{},{:.4},{:.4}",
                r.threshold,
                r.guard,
                r.hit_rate(),
                r.false_hit_rate()
            )?;
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "Quality of the semantic cache on crates/semantic-cache/data/quality/: quote the TEST part.\n"
    );
    let mut csv = String::from("embedder,part,threshold,guard,true_hits,false_hits\n");
    report(
        &HashingEmbedder::default(),
        "hashing",
        &[0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95],
        &mut csv,
    )
    .await?;

    // all-MiniLM-L6-v2, with `--features candle` and the model fetched by
    // crates/semantic-cache/scripts/fetch-minilm.sh (or PALISADE_MINILM_DIR set).
    #[cfg(feature = "candle")]
    {
        let minilm = palisade::semantic_cache::minilm::MiniLmEmbedder::from_env()?;
        report(
            &minilm,
            "minilm",
            &[0.70, 0.75, 0.80, 0.85, 0.90, 0.95],
            &mut csv,
        )
        .await?;
    }
    #[cfg(not(feature = "candle"))]
    println!("(MiniLM rows: add `--features candle` after scripts/fetch-minilm.sh)");

    if let Some(path) = std::env::var_os("QUALITY_CSV") {
        std::fs::write(&path, csv)?;
        println!("wrote {}", path.to_string_lossy());
    }
    Ok(())
}
