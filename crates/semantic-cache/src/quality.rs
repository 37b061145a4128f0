//! Quality evaluation: how often the cache serves a right answer to a paraphrase, and how
//! often it serves a wrong one to a trap, for an embedder, a threshold and a guard.
//!
//! Two pair sets exist:
//! - the held-out set in the repository's `crates/semantic-cache/data/quality/`
//!   (`tune.tsv`, `test.tsv`: 3,299 pairs from three independent sources, split once by
//!   family; `threshold.tsv`: 1,209 pairs of 32 template families of its own; read them
//!   with [`parse_set`]). The guard was tuned on the tune part, the thresholds chosen on the
//!   threshold part; the published figures are the test part's.
//! - [`TRAPS`], the crate's first 345 pairs, which the original guard was tuned on (kept for
//!   regression tests; its figures are in-sample).
//!
//! The decision evaluated here is the cache's own: [`evaluate_with`] applies
//! [`PromptFeatures::veto`] and the substitution check of [`guard::judge`] to
//! precomputed similarities, and a test checks that it agrees with lookups through
//! [`SemanticCache`](crate::SemanticCache).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::embed::{Embedder, HashingEmbedder, LexicalFloor};
use crate::error::{Error, Result};
use crate::guard::{self, GuardConfig, PromptFeatures, VetoReason};
use crate::index::dot;
use crate::key::normalize_prompt;

/// The crate's first labelled pair set (tab-separated: category, expected, cached prompt,
/// new prompt; `#` starts a comment line). In-sample for the guard: see the module docs.
pub const TRAPS: &str = include_str!("../tests/data/traps.tsv");

/// One labelled pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LabelledPair {
    /// Where the pair comes from (`templates`, `chatterbot`, `wordnet`; `traps` for
    /// [`TRAPS`]).
    pub source: String,
    /// The family it belongs to (a template, a question group, a synset): the unit of the
    /// tune/test split.
    pub family: String,
    /// `paraphrase`, `near_repeat`, `negation`, `opposite`, `number`, `date`, `entity`,
    /// `scope`, `role` (and `antonym` in [`TRAPS`]).
    pub category: String,
    /// Whether serving the cached answer for `new` is right.
    pub should_hit: bool,
    /// The prompt whose answer is cached.
    pub cached: String,
    /// The prompt looked up.
    pub new: String,
}

fn expected(value: &str, line: usize) -> Result<bool> {
    match value {
        "hit" => Ok(true),
        "miss" => Ok(false),
        _ => Err(Error::InvalidConfig(format!(
            "line {line}: expected `hit` or `miss`"
        ))),
    }
}

fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
}

/// Parse a pair set in the [`TRAPS`] format (4 columns).
///
/// # Errors
/// [`Error::InvalidConfig`] naming the first malformed line.
pub fn parse_pairs(text: &str) -> Result<Vec<LabelledPair>> {
    let mut pairs = Vec::new();
    for (n, line) in data_lines(text) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [category, hit, cached, new] = fields[..] else {
            return Err(Error::InvalidConfig(format!(
                "line {n}: expected 4 tab-separated fields"
            )));
        };
        pairs.push(LabelledPair {
            source: "traps".to_owned(),
            family: category.to_owned(),
            category: category.to_owned(),
            should_hit: expected(hit, n)?,
            cached: cached.to_owned(),
            new: new.to_owned(),
        });
    }
    Ok(pairs)
}

/// Parse a part of the held-out set (6 columns: source, family, category, expected,
/// cached prompt, new prompt).
///
/// # Errors
/// [`Error::InvalidConfig`] naming the first malformed line.
pub fn parse_set(text: &str) -> Result<Vec<LabelledPair>> {
    let mut pairs = Vec::new();
    for (n, line) in data_lines(text) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [source, family, category, hit, cached, new] = fields[..] else {
            return Err(Error::InvalidConfig(format!(
                "line {n}: expected 6 tab-separated fields"
            )));
        };
        pairs.push(LabelledPair {
            source: source.to_owned(),
            family: family.to_owned(),
            category: category.to_owned(),
            should_hit: expected(hit, n)?,
            cached: cached.to_owned(),
            new: new.to_owned(),
        });
    }
    Ok(pairs)
}

/// The trap kind a category is reported under, as issue 15 groups them: `negation`
/// (negation, opposite, antonym), `entity`, `number/date`, `scope` (scope, role); `None`
/// for the categories that should hit.
pub fn trap_group(category: &str) -> Option<&'static str> {
    match category {
        "paraphrase" | "near_repeat" => None,
        "negation" | "opposite" | "antonym" => Some("negation"),
        "number" | "date" => Some("number/date"),
        "scope" | "role" => Some("scope"),
        _ => Some("entity"),
    }
}

/// A pair with what the decision needs, computed once per embedder.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ScoredPair {
    /// The pair.
    pub pair: LabelledPair,
    /// Whether the normalised prompts are equal (an exact hit).
    pub exact: bool,
    /// Cosine similarity of the embeddings of the normalised prompts.
    pub similarity: f32,
    /// Whether the guard with the configuration given to [`score`] vetoes the pair
    /// (lexical checks and the substitution check).
    pub vetoed: bool,
    /// Features of the new prompt.
    pub query: PromptFeatures,
    /// Features of the cached prompt.
    pub cached: PromptFeatures,
    /// Similarity of the differing spans when the prompts substitute words
    /// ([`PromptFeatures::substitution`]).
    pub span_similarity: Option<f32>,
    /// The embedder's [`Embedder::recommended_span_similarity`].
    pub span_floor: f32,
    /// Cosine of the normalised prompts under the default [`HashingEmbedder`] (the
    /// [`LexicalFloor`]'s signal).
    pub lexical_similarity: f32,
    /// The embedder's [`Embedder::recommended_lexical_floor`].
    pub lexical_floor: Option<LexicalFloor>,
}

/// Embed and guard-check every pair (each distinct text is embedded once).
///
/// # Errors
/// Embedder errors, and bad prompts in the set.
pub async fn score(
    embedder: &dyn Embedder,
    pairs: &[LabelledPair],
    guard_config: &GuardConfig,
) -> Result<Vec<ScoredPair>> {
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    let mut todo: Vec<String> = Vec::new();
    let mut normalized = Vec::with_capacity(pairs.len());
    let mut spans = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let a = normalize_prompt(&pair.cached, usize::MAX)?;
        let b = normalize_prompt(&pair.new, usize::MAX)?;
        let query = PromptFeatures::extract(&pair.new);
        let cached = PromptFeatures::extract(&pair.cached);
        let span = query.substitution(&cached);
        for text in [&a, &b] {
            if !vectors.contains_key(text) {
                vectors.insert(text.clone(), Vec::new());
                todo.push(text.clone());
            }
        }
        normalized.push((a, b, query, cached));
        spans.push(span);
    }
    for chunk in todo.chunks(64) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let embedded = embedder.embed_batch(&texts).await?;
        for (text, vector) in chunk.iter().zip(embedded) {
            vectors.insert(text.clone(), vector);
        }
    }
    let span_floor = embedder.recommended_span_similarity();
    let lexical_floor = embedder.recommended_lexical_floor();
    let hashing = HashingEmbedder::default();
    let mut span_scores: HashMap<(String, String), f32> = HashMap::new();
    let mut scored = Vec::with_capacity(pairs.len());
    for ((pair, (a, b, query, cached)), span) in pairs.iter().zip(normalized).zip(spans) {
        let similarity = dot(&vectors[&a], &vectors[&b]);
        let lexical_similarity = dot(&hashing.embed_sync(&a), &hashing.embed_sync(&b));
        let span_similarity = match span {
            Some(key) => Some(match span_scores.get(&key) {
                Some(s) => *s,
                None => {
                    // The cache's own span judge, as `guard::judge` calls it.
                    let s = embedder.span_similarity(&key.0, &key.1).await?;
                    span_scores.insert(key, s);
                    s
                }
            }),
            None => None,
        };
        let mut s = ScoredPair {
            pair: pair.clone(),
            exact: a == b,
            similarity,
            vetoed: false,
            query,
            cached,
            span_similarity,
            span_floor,
            lexical_similarity,
            lexical_floor,
        };
        s.vetoed = s.veto(guard_config).is_some();
        scored.push(s);
    }
    Ok(scored)
}

impl ScoredPair {
    /// What [`guard::judge`] decides for this pair under `config`, from the precomputed
    /// span similarity.
    pub fn veto(&self, config: &GuardConfig) -> Option<VetoReason> {
        if let Some(reason) = self.query.veto(&self.cached, config) {
            return Some(reason);
        }
        let floor = self.query.substitution_floor(
            &self.cached,
            config.substitution_similarity.unwrap_or(self.span_floor),
        );
        match self.span_similarity {
            Some(s) if config.substitutions && s < floor => Some(VetoReason::Substitution),
            _ => None,
        }
    }

    /// Whether the cache serves the cached answer at `threshold` with this guard (`None`:
    /// guard off) and the pair's [`lexical_floor`](Self::lexical_floor).
    pub fn served(&self, threshold: f32, guard_config: Option<&GuardConfig>) -> bool {
        self.exact
            || (threshold < 1.0
                && (self.similarity >= threshold
                    || self.lexical_floor.is_some_and(|f| {
                        f.admits(threshold, self.similarity, self.lexical_similarity)
                    }))
                && guard_config.is_none_or(|g| self.veto(g).is_none()))
    }
}

/// Served / total for one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
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

    fn add(&mut self, served: bool) {
        self.pairs += 1;
        self.served += usize::from(served);
    }
}

/// Results of one setting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// What was measured (`"minilm, guard, 0.85"`).
    pub label: String,
    /// The threshold.
    pub threshold: f32,
    /// Whether the guard ran.
    pub guard: bool,
    /// Per category.
    pub categories: BTreeMap<String, CategoryResult>,
    /// Per trap group ([`trap_group`]).
    pub groups: BTreeMap<String, CategoryResult>,
    /// Pairs that should hit.
    pub hits: CategoryResult,
    /// Traps.
    pub traps: CategoryResult,
    /// Per source: (should hit, traps).
    pub sources: BTreeMap<String, (CategoryResult, CategoryResult)>,
}

impl Report {
    /// Share of pairs that should hit which are served (true hits).
    pub fn hit_rate(&self) -> f64 {
        self.hits.rate()
    }

    /// Share of traps served (false hits).
    pub fn false_hit_rate(&self) -> f64 {
        self.traps.rate()
    }
}

/// What the cache would serve at `threshold` with the default guard or none.
pub fn evaluate(scored: &[ScoredPair], threshold: f32, guard: bool) -> Report {
    let config = GuardConfig::default();
    let mut report = evaluate_with(scored, threshold, guard.then_some(&config));
    report.label = format!("{threshold:.2}, guard {}", if guard { "on" } else { "off" });
    report
}

/// What the cache would serve at `threshold` with this guard (`None`: guard off).
pub fn evaluate_with(
    scored: &[ScoredPair],
    threshold: f32,
    guard_config: Option<&GuardConfig>,
) -> Report {
    let mut report = Report {
        label: format!("{threshold:.2}"),
        threshold,
        guard: guard_config.is_some(),
        ..Report::default()
    };
    for s in scored {
        let served = s.served(threshold, guard_config);
        report
            .categories
            .entry(s.pair.category.clone())
            .or_default()
            .add(served);
        let source = report.sources.entry(s.pair.source.clone()).or_default();
        if s.pair.should_hit {
            report.hits.add(served);
            source.0.add(served);
        } else {
            report.traps.add(served);
            source.1.add(served);
            let group = trap_group(&s.pair.category).unwrap_or("entity");
            report
                .groups
                .entry(group.to_owned())
                .or_default()
                .add(served);
        }
    }
    report
}

/// A Markdown table of reports: one row per report, one column per category.
pub fn markdown_table(reports: &[Report]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let categories: Vec<&String> = first.categories.keys().collect();
    let mut out = String::from("| setting |");
    for c in &categories {
        out.push_str(&format!(" {c} (n={}) |", first.categories[*c].pairs));
    }
    out.push_str(" true hits | false hits |\n|---|");
    for _ in &categories {
        out.push_str("---|");
    }
    out.push_str("---|---|\n");
    for r in reports {
        out.push_str(&format!("| {} |", r.label));
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

/// A Markdown table in the shape: true hits, false hits, and the share of each trap
/// group served.
pub fn summary_table(reports: &[Report]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let groups: Vec<&String> = first.groups.keys().collect();
    let mut out = format!(
        "| setting | true hits (n={}) | false hits (n={}) |",
        first.hits.pairs, first.traps.pairs
    );
    for g in &groups {
        out.push_str(&format!(" {g} (n={}) |", first.groups[*g].pairs));
    }
    out.push_str("\n|---|---|---|");
    for _ in &groups {
        out.push_str("---|");
    }
    out.push('\n');
    for r in reports {
        out.push_str(&format!(
            "| {} | {:.1}% | {:.1}% |",
            r.label,
            r.hit_rate() * 100.0,
            r.false_hit_rate() * 100.0
        ));
        for g in &groups {
            let v = r.groups.get(*g).copied().unwrap_or_default();
            out.push_str(&format!(" {:.1}% |", v.rate() * 100.0));
        }
        out.push('\n');
    }
    out
}

/// A Markdown table of true and false hits per source for one report.
pub fn source_table(report: &Report) -> String {
    let mut out = String::from("| source | true hits | false hits |\n|---|---|---|\n");
    for (source, (hits, traps)) in &report.sources {
        out.push_str(&format!(
            "| {source} | {:.1}% of {} | {:.1}% of {} |\n",
            hits.rate() * 100.0,
            hits.pairs,
            traps.rate() * 100.0,
            traps.pairs
        ));
    }
    out
}

/// The cache's decision for one pair through [`guard::judge`] (for checking that
/// [`ScoredPair::served`] agrees with it).
///
/// # Errors
/// Embedder errors.
pub async fn judge_pair(
    embedder: &dyn Embedder,
    pair: &LabelledPair,
    config: &GuardConfig,
) -> Result<Option<VetoReason>> {
    guard::judge(
        embedder,
        &PromptFeatures::extract(&pair.new),
        &PromptFeatures::extract(&pair.cached),
        config,
    )
    .await
}
