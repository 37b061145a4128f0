//! Semantic cache benchmarks: the exact-match fast path, the flat scan against the HNSW
//! graph (the crossover, and 100k rows), full semantic lookups at 10k / 100k entries (1M
//! with `PALISADE_BENCH_1M=1`: building it takes minutes), insert, embedder throughput.
//!
//! `cargo bench -p palisade --bench semantic_cache`
//!
//! There is no Rust semantic-cache crate among the workspace's dependencies to measure in
//! the same run; the flat index is compared with the plain iterator dot product it replaces
//! (`naive_scan`), the baseline any hand-written cache starts from, and the graph with the
//! flat scan it replaces above `ANN_MIN_ROWS`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use palisade::semantic_cache::guard::GuardConfig;
use palisade::semantic_cache::index::{FlatIndex, HnswIndex, dot};
use palisade::semantic_cache::{
    CacheKey, EntryId, HashingEmbedder, MemoryConfig, MemoryStore, NamespacePolicy, SemanticCache,
    Usage,
};

const DIM: usize = 384;

/// xorshift64*: deterministic unit vectors without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn unit_vector(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM).map(|_| self.next_f32()).collect();
        let norm = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

fn id(n: usize) -> EntryId {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(n as u64).to_le_bytes());
    EntryId::from_bytes(bytes)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn exact_hit(c: &mut Criterion) {
    let rt = runtime();
    let cache = SemanticCache::in_memory();
    let key = CacheKey::new(
        "acme",
        "support",
        "gpt-4o-mini",
        "How do I reset my password?",
    )
    .unwrap();
    rt.block_on(cache.insert(&key, "Settings > Security", Usage::default()))
        .unwrap();
    let mut group = c.benchmark_group("semantic_cache/exact_hit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("memory", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.lookup(black_box(&key)).await.unwrap()) });
    });
    group.finish();
}

fn index_search(c: &mut Criterion) {
    let mut group = c.benchmark_group("semantic_cache/index_search_384d");
    for n in [1_000usize, 10_000, 100_000] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
        let rows: Vec<Vec<f32>> = (0..n).map(|_| rng.unit_vector()).collect();
        let mut index = FlatIndex::new(DIM);
        for (i, row) in rows.iter().enumerate() {
            index.insert(id(i), row).unwrap();
        }
        let query = rng.unit_vector();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("flat_index", n), &n, |b, _| {
            b.iter(|| black_box(index.search(black_box(&query), 4, 0.0).unwrap()));
        });
        group.bench_with_input(BenchmarkId::new("naive_scan", n), &n, |b, _| {
            b.iter(|| {
                let mut best = (0usize, f32::MIN);
                for (i, row) in rows.iter().enumerate() {
                    let s: f32 = row.iter().zip(&query).map(|(x, y)| x * y).sum();
                    if s > best.1 {
                        best = (i, s);
                    }
                }
                black_box(best)
            });
        });
    }
    group.finish();
}

/// `n` random unit rows in a flat index and a graph, and a query near one of them.
struct Crossover {
    flat: FlatIndex,
    graph: HnswIndex,
    query: Vec<f32>,
}

impl Crossover {
    fn build(n: usize) -> Self {
        let mut rng = Rng(0x51ed ^ n as u64);
        let rows: Vec<Vec<f32>> = (0..n).map(|_| rng.unit_vector()).collect();
        let mut flat = FlatIndex::new(DIM);
        for (i, row) in rows.iter().enumerate() {
            flat.insert(id(i), row).unwrap();
        }
        let started = std::time::Instant::now();
        let mut graph = HnswIndex::new(DIM);
        for (i, row) in rows.iter().enumerate() {
            graph.insert(id(i), row).unwrap();
        }
        // A rephrasing of a stored prompt: what a semantic hit looks like.
        let query = {
            let noise = rng.unit_vector();
            let mut q: Vec<f32> = rows[n / 2]
                .iter()
                .zip(&noise)
                .map(|(a, b)| a + 0.5 * b)
                .collect();
            let norm = dot(&q, &q).sqrt();
            q.iter_mut().for_each(|x| *x /= norm);
            q
        };
        eprintln!(
            "crossover {n}: graph built in {:.1} s, {} bytes/row; flat {} bytes/row",
            started.elapsed().as_secs_f64(),
            graph.approx_bytes() / n,
            DIM * 4 + 16
        );
        Self { flat, graph, query }
    }
}

/// Flat scan against the graph over the same random unit vectors: where the graph starts
/// to pay (`ANN_MIN_ROWS`), and at 100k rows (1M with `PALISADE_BENCH_1M=1`). Rows are
/// built on the first call of a routine (criterion calls it only for selected rows, and
/// again for each sample: hence the `Option`).
fn crossover(c: &mut Criterion) {
    let mut group = c.benchmark_group("semantic_cache/crossover_384d");
    let mut sizes = vec![1_000usize, 2_000, 4_000, 8_000, 16_000, 100_000];
    if std::env::var_os("PALISADE_BENCH_1M").is_some() {
        sizes.push(1_000_000);
    }
    for n in sizes {
        let mut built: Option<Crossover> = None;
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("flat", n), &n, |b, _| {
            let x = built.get_or_insert_with(|| Crossover::build(n));
            b.iter(|| black_box(x.flat.search(black_box(&x.query), 4, 0.8).unwrap()));
        });
        group.bench_with_input(BenchmarkId::new("hnsw", n), &n, |b, _| {
            let x = built.get_or_insert_with(|| Crossover::build(n));
            b.iter(|| black_box(x.graph.search(black_box(&x.query), 8, 0.78).unwrap()));
        });
    }
    group.finish();
}

/// A memory-store cache holding `n` templated prompts in one partition (threshold 0, so
/// every lookup goes through its candidates), and how long filling it took.
fn filled_cache(rt: &tokio::runtime::Runtime, n: usize) -> (SemanticCache, std::time::Duration) {
    let store = MemoryStore::new(
        MemoryConfig::default()
            .max_entries(n as u64 + 1_000)
            .max_bytes(1 << 40),
    )
    .unwrap();
    let cache = SemanticCache::builder()
        .store(store)
        .default_policy(NamespacePolicy::default().threshold(0.0))
        .guard(GuardConfig::default())
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let prompt = format!("question {i} about order {} and invoice {}", i * 7, i % 13);
            let key = CacheKey::new("acme", "support", "m", prompt).unwrap();
            cache
                .insert(&key, "answer", Usage::default())
                .await
                .unwrap();
        }
    });
    (cache, started.elapsed())
}

fn lookup_key() -> CacheKey {
    CacheKey::new(
        "acme",
        "support",
        "m",
        "a question about an order and an invoice",
    )
    .unwrap()
}

/// `SEMANTIC_CACHE_DRIVE=<entries>:<lookups>`: fill a cache, time that many semantic
/// lookups one by one and print the median and percentiles; no benchmark runs. A driver for
/// `perf record` and for repeated wall-clock runs on a shared machine.
fn drive(spec: &str) {
    let (n, lookups) = spec.split_once(':').expect("<entries>:<lookups>");
    let n: usize = n.parse().expect("a count of entries");
    let lookups: usize = lookups.parse().expect("a count of lookups");
    let rt = runtime();
    let (cache, fill) = filled_cache(&rt, n);
    eprintln!("filled {n} entries in {:.1} s", fill.as_secs_f64());
    let key = lookup_key();
    let mut times: Vec<f64> = (0..lookups)
        .map(|_| {
            let started = std::time::Instant::now();
            black_box(rt.block_on(cache.lookup(black_box(&key))).unwrap());
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{lookups} lookups at {n} entries: median {:.0} us, p10 {:.0} us, p90 {:.0} us, p99 {:.0} us",
        at(0.5),
        at(0.1),
        at(0.9),
        at(0.99)
    );
}

fn semantic_lookup(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("semantic_cache/semantic_lookup");
    group.sample_size(20);
    let mut sizes = vec![1_000usize, 10_000, 100_000];
    if std::env::var_os("PALISADE_BENCH_1M").is_some() {
        sizes.push(1_000_000);
    }
    for n in sizes {
        // Filled on the routine's first call (criterion calls it only for a selected row,
        // and again for each sample): `-- semantic_lookup/memory/10000` fills 10k only.
        let key = lookup_key();
        let mut filled: Option<SemanticCache> = None;
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("memory", n), &n, |b, _| {
            let cache = filled.get_or_insert_with(|| {
                let (cache, fill) = filled_cache(&rt, n);
                eprintln!("semantic_lookup {n}: filled in {:.1} s", fill.as_secs_f64());
                cache
            });
            b.to_async(&rt)
                .iter(|| async { black_box(cache.lookup(black_box(&key)).await.unwrap()) });
        });
    }
    group.finish();
}

fn insert(c: &mut Criterion) {
    let rt = runtime();
    let cache = SemanticCache::in_memory();
    let mut group = c.benchmark_group("semantic_cache/insert");
    group.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    group.bench_function("memory", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let key = CacheKey::new("acme", "support", "m", format!("prompt number {n}")).unwrap();
            let cache = &cache;
            async move {
                black_box(
                    cache
                        .insert(&key, "answer", Usage::default())
                        .await
                        .unwrap(),
                )
            }
        });
    });
    group.finish();
}

fn embedder(c: &mut Criterion) {
    let embedder = HashingEmbedder::default();
    let prompt = "How do I reset my password if I no longer have access to my email address?";
    let mut group = c.benchmark_group("semantic_cache/embedder");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hashing_384", |b| {
        b.iter(|| black_box(embedder.embed_sync(black_box(prompt))));
    });
    group.finish();
}

/// all-MiniLM-L6-v2 on the CPU (facade feature `candle`, model fetched by
/// `crates/semantic-cache/scripts/fetch-minilm.sh`): one prompt, and a batch of 16.
#[cfg(feature = "candle")]
fn minilm(c: &mut Criterion) {
    use palisade::semantic_cache::Embedder;
    use palisade::semantic_cache::minilm::{MINILM_DIR_ENV, MiniLmEmbedder};

    let dir = std::env::var_os(MINILM_DIR_ENV).map_or_else(
        || {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.model-cache/all-MiniLM-L6-v2"
            ))
        },
        std::path::PathBuf::from,
    );
    let embedder = match MiniLmEmbedder::from_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "skipping the MiniLM bench: {e} (run crates/semantic-cache/scripts/fetch-minilm.sh)"
            );
            return;
        }
    };
    let prompt = "How do I reset my password if I no longer have access to my email address?";
    let owned: Vec<String> = (0..16).map(|i| format!("{prompt} (case {i})")).collect();
    let batch: Vec<&str> = owned.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("semantic_cache/embedder");
    group.throughput(Throughput::Elements(1));
    group.bench_function("minilm_l6_v2", |b| {
        b.iter(|| black_box(rt.block_on(embedder.embed(black_box(prompt))).unwrap()));
    });
    group.throughput(Throughput::Elements(16));
    group.bench_function("minilm_l6_v2_batch16", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(embedder.embed_batch(black_box(&batch)))
                    .unwrap(),
            )
        });
    });
    group.finish();
}

#[cfg(not(feature = "candle"))]
fn minilm(_: &mut Criterion) {}

/// The whole decision on one candidate beyond the query's embedding: the guard's features of
/// both prompts, its lexical checks, and the substitution check, which compares the two
/// differing spans (`for children` / `for adults`) with `Embedder::span_similarity` (two
/// span embeddings with the hashing embedder, MiniLM's static word-piece vectors with it). `lexical` stops before the spans;
/// `hashing` and (feature `candle`) `minilm` are the whole decision with that embedder;
/// `lexical_floor` is what the lexical floor adds for a candidate under the threshold.
/// The exact-hit path runs none of this.
fn decision(c: &mut Criterion) {
    use palisade::semantic_cache::Embedder;
    use palisade::semantic_cache::guard::{PromptFeatures, judge};

    let cached = "What is a good dose of vitamin D for adults in winter?";
    let query = "What is a good dose of vitamin D for children in winter?";
    let config = GuardConfig::default();
    let rt = runtime();
    let mut group = c.benchmark_group("semantic_cache/decision");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lexical", |b| {
        b.iter(|| {
            let q = PromptFeatures::extract(black_box(query));
            let e = PromptFeatures::extract(black_box(cached));
            black_box((q.veto(&e, &config), q.substitution(&e)))
        });
    });
    // The lexical floor's part (issue 15) for a candidate just under the threshold: the
    // cached prompt normalised, both prompts' hashing vectors (the query's is made once per
    // lookup; counted here per candidate, the worst case), their cosine. Added to the
    // model's row for such a candidate; nothing for one above the threshold.
    let hashing = HashingEmbedder::default();
    let floor = palisade::semantic_cache::LexicalFloor::new(0.9, 0.1).unwrap();
    group.bench_function("lexical_floor", |b| {
        b.iter(|| {
            let e =
                palisade::semantic_cache::normalize_prompt(black_box(cached), usize::MAX).unwrap();
            let (x, y) = (hashing.embed_sync(black_box(query)), hashing.embed_sync(&e));
            let lexical: f32 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
            black_box(floor.admits(0.9, 0.85, lexical))
        });
    });
    #[cfg_attr(not(feature = "candle"), allow(unused_mut))]
    let mut embedders: Vec<(&str, Box<dyn Embedder>)> =
        vec![("hashing", Box::new(HashingEmbedder::default()))];
    #[cfg(feature = "candle")]
    if let Ok(minilm) = palisade::semantic_cache::minilm::MiniLmEmbedder::from_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.model-cache/all-MiniLM-L6-v2"
    )) {
        embedders.push(("minilm", Box::new(minilm)));
    }
    for (name, embedder) in &embedders {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let q = PromptFeatures::extract(black_box(query));
                let e = PromptFeatures::extract(black_box(cached));
                black_box(
                    rt.block_on(judge(embedder.as_ref(), &q, &e, &config))
                        .unwrap(),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    exact_hit,
    index_search,
    crossover,
    semantic_lookup,
    insert,
    embedder,
    minilm,
    decision
);
fn main() {
    if let Ok(spec) = std::env::var("SEMANTIC_CACHE_DRIVE") {
        drive(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
