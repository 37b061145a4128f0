//! Quality evaluation: how often the cache serves a right answer to a paraphrase, and how
//! often it serves a wrong one to a trap, for an embedder, a threshold and a guard.
//!
//! The crate ships its labelled pair set ([`TRAPS`], from `tests/data/traps.tsv`): each pair
//! is a cached prompt and a new prompt, labelled `hit` (a paraphrase: the cached answer is
//! right) or `miss` (a trap: negation, number, date, entity swap, scope or opposite action).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::guard::{GuardConfig, PromptFeatures};
use crate::index::dot;
use crate::key::normalize_prompt;

/// The labelled pair set shipped with the crate (tab-separated: category, expected,
/// cached prompt, new prompt; `#` starts a comment line).
pub const TRAPS: &str = include_str!("../tests/data/traps.tsv");

/// One labelled pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledPair {
    /// `paraphrase`, `negation`, `number`, `date`, `entity`, `scope`, `antonym`, …
    pub category: String,
    /// Whether serving the cached answer for `new` is right.
    pub should_hit: bool,
    /// The prompt whose answer is cached.
    pub cached: String,
    /// The prompt looked up.
    pub new: String,
}

/// Parse a pair set in the [`TRAPS`] format.
///
/// # Errors
/// [`Error::InvalidConfig`] naming the first malformed line.
pub fn parse_pairs(text: &str) -> Result<Vec<LabelledPair>> {
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [category, expected, cached, new] = fields[..] else {
            return Err(Error::InvalidConfig(format!(
                "line {}: expected 4 tab-separated fields",
                n + 1
            )));
        };
        let should_hit = match expected {
            "hit" => true,
            "miss" => false,
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "line {}: expected `hit` or `miss`",
                    n + 1
                )));
            }
        };
        pairs.push(LabelledPair {
            category: category.to_owned(),
            should_hit,
            cached: cached.to_owned(),
            new: new.to_owned(),
        });
    }
    Ok(pairs)
}

/// A pair with its similarity and what the guard says, computed once per embedder.
#[derive(Clone, Debug)]
pub struct ScoredPair {
    /// The pair.
    pub pair: LabelledPair,
    /// Whether the normalised prompts are equal (an exact hit).
    pub exact: bool,
    /// Cosine similarity of the embeddings.
    pub similarity: f32,
    /// Whether the guard (with the configuration given to [`score`]) vetoes the pair.
    pub vetoed: bool,
}

/// Embed and guard-check every pair.
///
/// # Errors
/// Embedder errors, and bad prompts in the set.
pub async fn score(
    embedder: &dyn Embedder,
    pairs: &[LabelledPair],
    guard: &GuardConfig,
) -> Result<Vec<ScoredPair>> {
    let mut scored = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let a = normalize_prompt(&pair.cached, usize::MAX)?;
        let b = normalize_prompt(&pair.new, usize::MAX)?;
        let vectors = embedder.embed_batch(&[&a, &b]).await?;
        let similarity = dot(&vectors[0], &vectors[1]);
        let vetoed = PromptFeatures::extract(&pair.new)
            .veto(&PromptFeatures::extract(&pair.cached), guard)
            .is_some();
        scored.push(ScoredPair {
            pair: pair.clone(),
            exact: a == b,
            similarity,
            vetoed,
        });
    }
    Ok(scored)
}

/// Served / total for one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryResult {
    /// Pairs in the category.
    pub pairs: usize,
    /// Pairs the cache would serve.
    pub served: usize,
}

impl CategoryResult {
    /// `served / pairs`.
    pub fn rate(&self) -> f64 {
        if self.pairs == 0 {
            0.0
        } else {
            self.served as f64 / self.pairs as f64
        }
    }
}

/// Results of one threshold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The threshold.
    pub threshold: f32,
    /// Whether the guard ran.
    pub guard: bool,
    /// Per category.
    pub categories: BTreeMap<String, CategoryResult>,
}

impl Report {
    /// Share of `hit` pairs served (true hits).
    pub fn hit_rate(&self) -> f64 {
        self.categories
            .get("paraphrase")
            .map_or(0.0, CategoryResult::rate)
    }

    /// Share of `miss` pairs served (false hits), all trap categories together.
    pub fn false_hit_rate(&self) -> f64 {
        let (served, pairs) = self
            .categories
            .iter()
            .filter(|(c, _)| c.as_str() != "paraphrase")
            .fold((0, 0), |(s, p), (_, r)| (s + r.served, p + r.pairs));
        if pairs == 0 {
            0.0
        } else {
            served as f64 / pairs as f64
        }
    }
}

/// What the cache would serve at `threshold`, with or without the guard.
pub fn evaluate(scored: &[ScoredPair], threshold: f32, guard: bool) -> Report {
    let mut report = Report {
        threshold,
        guard,
        categories: BTreeMap::new(),
    };
    for s in scored {
        let served =
            s.exact || (threshold < 1.0 && s.similarity >= threshold && !(guard && s.vetoed));
        let category = report
            .categories
            .entry(s.pair.category.clone())
            .or_default();
        category.pairs += 1;
        category.served += usize::from(served);
    }
    report
}

/// A Markdown table of reports: one row per report, one column per category.
pub fn markdown_table(reports: &[Report]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let categories: Vec<&String> = first.categories.keys().collect();
    let mut out = String::from("| threshold | guard |");
    for c in &categories {
        out.push_str(&format!(" {c} (n={}) |", first.categories[*c].pairs));
    }
    out.push_str(" true hits | false hits |\n|---|---|");
    for _ in &categories {
        out.push_str("---|");
    }
    out.push_str("---|---|\n");
    for r in reports {
        out.push_str(&format!(
            "| {:.2} | {} |",
            r.threshold,
            if r.guard { "on" } else { "off" }
        ));
        for c in &categories {
            let v = r.categories.get(*c).copied().unwrap_or_default();
            out.push_str(&format!(" {:.0}% |", v.rate() * 100.0));
        }
        out.push_str(&format!(
            " {:.1}% | {:.1}% |\n",
            r.hit_rate() * 100.0,
            r.false_hit_rate() * 100.0
        ));
    }
    out
}
