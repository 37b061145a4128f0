//! Hit, miss and savings statistics, kept in atomics and exported as `metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use metrics::{Counter, Histogram};

use serde::{Deserialize, Serialize};

use crate::entry::{HitKind, Usage};
use crate::guard::VetoReason;
use crate::key::Namespace;

/// Upper bounds of the similarity histogram's buckets (served semantic hits); exact hits
/// land in the last bucket (`1.0`).
pub const SIMILARITY_BUCKETS: [f32; 10] = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0];

/// Metric names, stable across releases. Labels: `namespace` on all lookup metrics.
pub mod names {
    /// Counter, label `outcome` = `exact_hit` | `semantic_hit` | `miss` | `vetoed`.
    pub const LOOKUPS: &str = "palisade_semantic_cache_lookups_total";
    /// Counter, label `reason` = `negation` | `number` | `entity` | `antonym` | `scope`.
    pub const VETOES: &str = "palisade_semantic_cache_guard_vetoes_total";
    /// Histogram of the similarity of served hits.
    pub const HIT_SIMILARITY: &str = "palisade_semantic_cache_hit_similarity";
    /// Counter, label `kind` = `input` | `output`: tokens a hit saved.
    pub const TOKENS_SAVED: &str = "palisade_semantic_cache_tokens_saved_total";
    /// Counter of money saved by hits, in millionths of the provider's currency unit.
    pub const COST_SAVED_MICROS: &str = "palisade_semantic_cache_cost_saved_micros_total";
    /// Counter of entries inserted.
    pub const INSERTS: &str = "palisade_semantic_cache_inserts_total";
    /// Counter of computed responses `get_or_compute` returned but could not store.
    pub const INSERT_FAILURES: &str = "palisade_semantic_cache_insert_failures_total";
    /// Counter of embedding calls (one per batch).
    pub const EMBEDDINGS: &str = "palisade_semantic_cache_embeddings_total";
    /// Histogram of embedding time in seconds.
    pub const EMBED_SECONDS: &str = "palisade_semantic_cache_embed_seconds";
    /// Counter, label `kind` = `entry` | `tag` | `namespace` | `tenant` | `embedder`: entries removed.
    pub const INVALIDATIONS: &str = "palisade_semantic_cache_invalidations_total";
    /// Counter of provider (compute) calls made by `get_or_compute`.
    pub const COMPUTES: &str = "palisade_semantic_cache_computes_total";
    /// Counter, label `op` = `get` | `search`: backend failures a lookup answered as a miss
    /// ([`crate::FailureMode::FailOpen`]).
    pub const BACKEND_ERRORS: &str = "palisade_semantic_cache_backend_errors_total";
    /// Counter, label `verdict` = `correct` | `wrong`: semantic hits judged through
    /// [`crate::SemanticCache::feedback`].
    pub const FEEDBACK: &str = "palisade_semantic_cache_feedback_total";
    /// Gauge: the threshold feedback taught the namespace (set when feedback raises one).
    pub const CALIBRATED_THRESHOLD: &str = "palisade_semantic_cache_calibrated_threshold";
    /// Counter, label `op`: backend failures answered from the memory fallback
    /// ([`crate::FailureMode::FallbackToMemory`]).
    pub const FALLBACKS: &str = "palisade_semantic_cache_fallbacks_total";
}

#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn add(&self, value: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Live counters of one cache (shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    exact_hits: AtomicU64,
    semantic_hits: AtomicU64,
    misses: AtomicU64,
    vetoed: AtomicU64,
    inserts: AtomicU64,
    insert_failures: AtomicU64,
    backend_errors: AtomicU64,
    computes: AtomicU64,
    embed_calls: AtomicU64,
    embed_nanos: AtomicU64,
    input_tokens_saved: AtomicU64,
    output_tokens_saved: AtomicU64,
    cost_saved: AtomicF64,
    histogram: [AtomicU64; SIMILARITY_BUCKETS.len()],
    by_namespace: NamespaceHandles,
}

/// Most namespaces whose metric handles are kept; lookups in further namespaces build
/// their handles on each call (correct, only slower), so a flood of namespaces cannot grow
/// memory without bound.
const MAX_CACHED_NAMESPACES: usize = 1024;

/// The `metrics` handles of one namespace's lookup metrics, registered once.
///
/// Building a labelled metric key allocates; the exact-hit path is a few hundred
/// nanoseconds, so paying that five times per lookup would double it. Handles are bound to
/// the recorder installed when a namespace is first seen: install the recorder before
/// traffic, as the `metrics` crate recommends.
#[derive(Debug)]
struct NamespaceMetrics {
    exact_hits: Counter,
    semantic_hits: Counter,
    misses: Counter,
    vetoed: Counter,
    similarity: Histogram,
    input_tokens_saved: Counter,
    output_tokens_saved: Counter,
    cost_saved_micros: Counter,
}

impl NamespaceMetrics {
    fn register(namespace: &Namespace) -> Self {
        let ns = namespace.metric_label();
        let lookups = |outcome: &'static str| metrics::counter!(names::LOOKUPS, "namespace" => ns.clone(), "outcome" => outcome);
        Self {
            exact_hits: lookups("exact_hit"),
            semantic_hits: lookups("semantic_hit"),
            misses: lookups("miss"),
            vetoed: lookups("vetoed"),
            similarity: metrics::histogram!(names::HIT_SIMILARITY, "namespace" => ns.clone()),
            input_tokens_saved: metrics::counter!(names::TOKENS_SAVED, "namespace" => ns.clone(), "kind" => "input"),
            output_tokens_saved: metrics::counter!(names::TOKENS_SAVED, "namespace" => ns.clone(), "kind" => "output"),
            cost_saved_micros: metrics::counter!(names::COST_SAVED_MICROS, "namespace" => ns),
        }
    }
}

#[derive(Debug, Default)]
struct NamespaceHandles(RwLock<HashMap<Namespace, Arc<NamespaceMetrics>>>);

impl NamespaceHandles {
    fn get(&self, namespace: &Namespace) -> Arc<NamespaceMetrics> {
        // A poisoned lock only means another thread panicked while inserting a handle: the
        // map is still valid, so keep using it.
        let map = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(handles) = map.get(namespace) {
            return Arc::clone(handles);
        }
        let full = map.len() >= MAX_CACHED_NAMESPACES;
        drop(map);
        let handles = Arc::new(NamespaceMetrics::register(namespace));
        if !full {
            self.0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(namespace.clone())
                .or_insert_with(|| Arc::clone(&handles));
        }
        handles
    }
}

fn bucket(similarity: f32) -> usize {
    SIMILARITY_BUCKETS
        .iter()
        .position(|b| similarity <= *b)
        .unwrap_or(SIMILARITY_BUCKETS.len() - 1)
}

impl Stats {
    pub(crate) fn hit(&self, namespace: &Namespace, kind: HitKind, similarity: f32, saved: Usage) {
        match kind {
            HitKind::Exact => &self.exact_hits,
            HitKind::Semantic => &self.semantic_hits,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.histogram[bucket(similarity)].fetch_add(1, Ordering::Relaxed);
        self.input_tokens_saved
            .fetch_add(saved.input_tokens, Ordering::Relaxed);
        self.output_tokens_saved
            .fetch_add(saved.output_tokens, Ordering::Relaxed);
        if saved.cost.is_finite() && saved.cost > 0.0 {
            self.cost_saved.add(saved.cost);
        }
        let m = self.by_namespace.get(namespace);
        match kind {
            HitKind::Exact => &m.exact_hits,
            HitKind::Semantic => &m.semantic_hits,
        }
        .increment(1);
        m.similarity.record(f64::from(similarity));
        m.input_tokens_saved.increment(saved.input_tokens);
        m.output_tokens_saved.increment(saved.output_tokens);
        if saved.cost.is_finite() && saved.cost > 0.0 {
            m.cost_saved_micros.increment((saved.cost * 1e6) as u64);
        }
    }

    pub(crate) fn miss(&self, namespace: &Namespace, vetoes: &[VetoReason]) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        let m = self.by_namespace.get(namespace);
        if vetoes.is_empty() {
            m.misses.increment(1);
        } else {
            self.vetoed.fetch_add(1, Ordering::Relaxed);
            m.vetoed.increment(1);
        }
        for reason in vetoes {
            metrics::counter!(names::VETOES, "reason" => reason.as_str()).increment(1);
        }
    }

    pub(crate) fn insert(&self, namespace: &Namespace) {
        self.inserts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::INSERTS, "namespace" => namespace.metric_label()).increment(1);
    }

    pub(crate) fn insert_failed(&self, namespace: &Namespace) {
        self.insert_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::INSERT_FAILURES, "namespace" => namespace.metric_label())
            .increment(1);
    }

    pub(crate) fn feedback(&self, namespace: &Namespace, correct: bool) {
        let verdict = if correct { "correct" } else { "wrong" };
        metrics::counter!(names::FEEDBACK, "namespace" => namespace.metric_label(), "verdict" => verdict)
            .increment(1);
    }

    pub(crate) fn calibrated(&self, namespace: &Namespace, threshold: f32) {
        metrics::gauge!(names::CALIBRATED_THRESHOLD, "namespace" => namespace.metric_label())
            .set(f64::from(threshold));
    }

    pub(crate) fn backend_error(&self, op: &'static str) {
        self.backend_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::BACKEND_ERRORS, "op" => op).increment(1);
    }

    pub(crate) fn compute(&self, namespace: &Namespace) {
        self.computes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::COMPUTES, "namespace" => namespace.metric_label()).increment(1);
    }

    pub(crate) fn embedded(&self, elapsed: std::time::Duration) {
        self.embed_calls.fetch_add(1, Ordering::Relaxed);
        self.embed_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        metrics::counter!(names::EMBEDDINGS).increment(1);
        metrics::histogram!(names::EMBED_SECONDS).record(elapsed.as_secs_f64());
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            exact_hits: load(&self.exact_hits),
            semantic_hits: load(&self.semantic_hits),
            misses: load(&self.misses),
            vetoed: load(&self.vetoed),
            inserts: load(&self.inserts),
            insert_failures: load(&self.insert_failures),
            backend_errors: load(&self.backend_errors),
            computes: load(&self.computes),
            embed_calls: load(&self.embed_calls),
            embed_time_ms: load(&self.embed_nanos) as f64 / 1e6,
            input_tokens_saved: load(&self.input_tokens_saved),
            output_tokens_saved: load(&self.output_tokens_saved),
            cost_saved: self.cost_saved.get(),
            similarity_histogram: SIMILARITY_BUCKETS
                .iter()
                .zip(&self.histogram)
                .map(|(bound, count)| (*bound, load(count)))
                .collect(),
        }
    }
}

/// A copy of a cache's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Hits on the normalised prompt.
    pub exact_hits: u64,
    /// Hits by meaning.
    pub semantic_hits: u64,
    /// Lookups that served nothing (including vetoed ones).
    pub misses: u64,
    /// Misses where the lexical guard vetoed at least one candidate above the threshold.
    pub vetoed: u64,
    /// Entries inserted.
    pub inserts: u64,
    /// Computed responses `get_or_compute` returned but could not store (backend failure).
    pub insert_failures: u64,
    /// Lookups answered as a miss because the backend failed (fail-open).
    pub backend_errors: u64,
    /// Provider calls made by `get_or_compute` (after single-flight).
    pub computes: u64,
    /// Embedding calls.
    pub embed_calls: u64,
    /// Total time spent embedding, in milliseconds.
    pub embed_time_ms: f64,
    /// Prompt tokens not sent to the provider thanks to hits.
    pub input_tokens_saved: u64,
    /// Completion tokens not generated thanks to hits.
    pub output_tokens_saved: u64,
    /// Money saved by hits, in the provider's currency.
    pub cost_saved: f64,
    /// `(upper bound, count)` of the similarity of served hits.
    pub similarity_histogram: Vec<(f32, u64)>,
}

impl StatsSnapshot {
    /// Lookups counted.
    pub fn lookups(&self) -> u64 {
        self.exact_hits + self.semantic_hits + self.misses
    }

    /// Hits over lookups, `0.0` before any lookup.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.lookups();
        if lookups == 0 {
            0.0
        } else {
            (self.exact_hits + self.semantic_hits) as f64 / lookups as f64
        }
    }

    /// The low-hit-rate signal: `true` once at least `min_lookups` were counted and the hit
    /// rate is below `min_rate`, a sign that the cache costs more (embeddings, memory) than
    /// it saves, or that the threshold is too strict.
    pub fn low_hit_rate(&self, min_lookups: u64, min_rate: f64) -> bool {
        self.lookups() >= min_lookups && self.hit_rate() < min_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_and_signals() {
        let stats = Stats::default();
        let ns = Namespace::new("ns").unwrap();
        stats.hit(
            &ns,
            HitKind::Exact,
            1.0,
            Usage {
                input_tokens: 10,
                output_tokens: 5,
                cost: 0.25,
            },
        );
        stats.hit(
            &ns,
            HitKind::Semantic,
            0.93,
            Usage {
                input_tokens: 1,
                output_tokens: 1,
                cost: 0.25,
            },
        );
        for _ in 0..8 {
            stats.miss(&ns, &[]);
        }
        stats.miss(&ns, &[VetoReason::Negation]);
        let s = stats.snapshot();
        assert_eq!(
            (s.exact_hits, s.semantic_hits, s.misses, s.vetoed),
            (1, 1, 9, 1)
        );
        assert_eq!(s.input_tokens_saved, 11);
        assert!((s.cost_saved - 0.5).abs() < 1e-12);
        assert_eq!(s.similarity_histogram[7], (0.95, 1));
        assert_eq!(s.similarity_histogram[9], (1.0, 1));
        assert!(s.low_hit_rate(10, 0.5));
        assert!(!s.low_hit_rate(100, 0.5));
    }
}
