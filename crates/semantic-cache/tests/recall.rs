//! recall@1 of the approximate index against the exact flat index, for neighbours above the
//! similarity threshold: the only neighbours a cache ever serves.
//!
//! A debug build checks a smaller set (1,200 32-d vectors, the graph from 200 rows on); the
//! CI step `semantic-cache: recall and soak` runs it in release on 50k 384-d vectors with
//! the default switch to the graph ([`ANN_MIN_ROWS`]).

use palisade_semantic_cache::EntryId;
use palisade_semantic_cache::index::tests_support::Rng;
use palisade_semantic_cache::index::{ANN_MIN_ROWS, FlatIndex, VectorIndex, dot};

const THRESHOLD: f32 = 0.80;

fn id(n: usize) -> EntryId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(n as u64).to_le_bytes());
    EntryId::from_bytes(b)
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = dot(&v, &v).sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Prompts cluster by topic: 200 topics, each row its topic plus as much noise (rows of
/// one topic sit at about 0.5 from each other, the hard case for a graph).
fn rows(n: usize, dim: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    let topics: Vec<Vec<f32>> = (0..200).map(|_| rng.unit_vector(dim)).collect();
    (0..n)
        .map(|i| {
            let noise = rng.unit_vector(dim);
            normalized(
                topics[i % 200]
                    .iter()
                    .zip(&noise)
                    .map(|(t, e)| t + e)
                    .collect(),
            )
        })
        .collect()
}

/// A rephrasing of `row`: similarity between about 0.75 and 0.99 depending on `mix`.
fn near(row: &[f32], mix: f32, rng: &mut Rng) -> Vec<f32> {
    let noise = rng.unit_vector(row.len());
    normalized(row.iter().zip(&noise).map(|(r, e)| r + mix * e).collect())
}

/// What the stores do with an approximate result: re-score exactly, keep the best above
/// the threshold.
fn best(index: &VectorIndex, rows: &[Vec<f32>], query: &[f32]) -> Option<EntryId> {
    index
        .search(query, 4, THRESHOLD)
        .unwrap()
        .into_iter()
        .map(|n| {
            let i = u64::from_le_bytes(n.id.as_bytes()[..8].try_into().unwrap()) as usize;
            (n.id, dot(&rows[i], query))
        })
        .filter(|(_, s)| *s >= THRESHOLD)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(id, _)| id)
}

fn recall(
    index: &VectorIndex,
    flat: &FlatIndex,
    rows: &[Vec<f32>],
    queries: &[Vec<f32>],
) -> (f64, usize) {
    let mut asked = 0;
    let mut found = 0;
    for q in queries {
        let Some(truth) = flat.search(q, 1, THRESHOLD).unwrap().first().map(|n| n.id) else {
            continue;
        };
        asked += 1;
        if best(index, rows, q) == Some(truth) {
            found += 1;
        }
    }
    (found as f64 / asked.max(1) as f64, asked)
}

#[test]
fn approximate_search_finds_the_exact_neighbour_above_the_threshold() {
    let (n, dim, switch) = if cfg!(debug_assertions) {
        (1_200, 32, 200)
    } else {
        (50_000, 384, ANN_MIN_ROWS)
    };
    let mut rng = Rng(0x5eed);
    let rows = rows(n, dim, &mut rng);
    let mut index = VectorIndex::with_ann_min_rows(dim, switch);
    let mut flat = FlatIndex::new(dim);
    for (i, r) in rows.iter().enumerate() {
        index.insert(id(i), r).unwrap();
        flat.insert(id(i), r).unwrap();
    }
    assert!(index.is_approximate());
    let queries: Vec<Vec<f32>> = (0..1_000)
        .map(|q| {
            let mix = 0.15 + 0.6 * (q % 10) as f32 / 10.0;
            near(&rows[(q * 7_919) % n], mix, &mut rng)
        })
        .collect();
    let (r, asked) = recall(&index, &flat, &rows, &queries);
    assert!(
        asked >= 500,
        "only {asked} queries have a neighbour above {THRESHOLD}"
    );
    assert!(r >= 0.99, "recall@1 {r:.4} over {asked} queries");

    // Churn: a third expires and comes back as new entries; removed ids never come back.
    for i in (0..n).step_by(3) {
        assert!(index.remove(&id(i)));
        flat.remove(&id(i));
    }
    for q in &queries {
        for hit in index.search(q, 4, -1.0).unwrap() {
            assert!(flat.contains(&hit.id), "a removed id was returned");
        }
    }
    for i in (0..n).step_by(3) {
        index.insert(id(i), &rows[i]).unwrap();
        flat.insert(id(i), &rows[i]).unwrap();
    }
    let (r, asked) = recall(&index, &flat, &rows, &queries);
    assert!(
        r >= 0.99,
        "after churn: recall@1 {r:.4} over {asked} queries"
    );
}

#[test]
fn small_partitions_stay_exact_and_shrunk_ones_go_back_to_flat() {
    let dim = 16;
    let mut rng = Rng(3);
    let mut index = VectorIndex::with_ann_min_rows(dim, 400);
    for i in 0..399 {
        index.insert(id(i), &rng.unit_vector(dim)).unwrap();
    }
    assert!(!index.is_approximate());
    // Past the switch the graph is built a few rows per operation, then takes over.
    for i in 399..600 {
        index.insert(id(i), &rng.unit_vector(dim)).unwrap();
    }
    assert!(index.is_approximate());
    assert_eq!(index.len(), 600);
    for i in 0..599 {
        assert!(index.remove(&id(i)));
    }
    assert!(!index.is_approximate());
    assert_eq!(index.len(), 1);
    assert_eq!(
        index.search(&rng.unit_vector(dim), 4, -1.0).unwrap()[0].id,
        id(599)
    );
}
