//! Hit rate and false-hit rate of the semantic cache on its labelled pair set, per category,
//! for the built-in hashing embedder, with and without the lexical guard.
//!
//! `cargo run --example semantic_cache_quality` (add `--features candle` for MiniLM rows,
//! after `crates/semantic-cache/scripts/fetch-minilm.sh`).

use palisade::semantic_cache::quality::{TRAPS, evaluate, markdown_table, parse_pairs, score};
use palisade::semantic_cache::{GuardConfig, HashingEmbedder};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pairs = parse_pairs(TRAPS)?;
    println!("{} labelled pairs", pairs.len());
    let scored = score(&HashingEmbedder::default(), &pairs, &GuardConfig::default()).await?;
    let mut reports = Vec::new();
    for guard in [false, true] {
        for threshold in [0.50, 0.60, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.0] {
            reports.push(evaluate(&scored, threshold, guard));
        }
    }
    println!("HashingEmbedder (default settings):\n");
    println!("{}", markdown_table(&reports));

    // all-MiniLM-L6-v2, with `--features candle` and the model fetched by
    // crates/semantic-cache/scripts/fetch-minilm.sh (or PALISADE_MINILM_DIR set).
    #[cfg(feature = "candle")]
    {
        let minilm = palisade::semantic_cache::minilm::MiniLmEmbedder::from_env()?;
        let scored = score(&minilm, &pairs, &GuardConfig::default()).await?;
        let mut reports = Vec::new();
        for guard in [false, true] {
            for threshold in [0.60, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.0] {
                reports.push(evaluate(&scored, threshold, guard));
            }
        }
        println!("all-MiniLM-L6-v2 (candle):\n");
        println!("{}", markdown_table(&reports));
    }
    Ok(())
}
